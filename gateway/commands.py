"""Commands: the envelope and every v1 type as models, the Reply, and the one Dispatcher.

MQTT, the web API and the scheduler all hand their commands to :class:`Dispatcher`;
nothing switches a relay or plays a sound any other way. The dispatcher checks size,
JSON, shape, signature and rate, answers ``duplicate`` for an id it has run (ids are
kept in SQLite across restarts, at least 24 h or 10,000 ids), ``expired`` for a command
whose ``issued_at + ttl_s`` has passed (judged only while the clock is synchronised),
runs the handler for the type from a table, and produces exactly one final Reply.
Every command is logged as an event, whoever sent it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import re
import sqlite3
import time
import uuid
import zoneinfo
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from gateway.clock import now_iso
from gateway.config import BroadcastSchedule, RelaySchedule
from gateway.errors import GatewayError
from gateway.log import get_logger, is_enabled
from gateway.outbox import Stream

__all__ = [
    "PRIORITIES",
    "Command",
    "CommandError",
    "Dispatcher",
    "Handler",
    "Reply",
    "Source",
]

_COMPONENT = "commands"
_log = get_logger(_COMPONENT)

PRIORITIES = ("emergency", "live", "announcement", "scheduled", "background")
Priority = Literal["emergency", "live", "announcement", "scheduled", "background"]
Source = Literal["mqtt", "web", "schedule", "pa"]
Status = Literal["accepted", "done", "rejected", "failed", "expired", "duplicate"]
ID_PATTERN = r"^[A-Za-z0-9._:-]{1,64}$"
_ID = re.compile(ID_PATTERN)
MAX_DEPTH = 32
"""Deeper JSON is refused: no command needs it, and deep nesting is an attack."""
KEEP_IDS = 10_000
KEEP_SECONDS = 24 * 3600


class CommandError(GatewayError):
    """A handler refuses: ``key`` is the PROTOCOL.md ``error.code`` (e.g. unknown_target)."""

    def __init__(self, key: str, message: str, *, command_id: str | None = None) -> None:
        super().__init__(message)
        self.key = key
        self.command_id = command_id
        """The id to answer with; None when the payload did not carry a valid one."""


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class RelaySetArgs(_Args):
    """``relay.set``: switch, optionally for a while."""

    relay: str = Field(min_length=1, max_length=32)
    on: bool
    for_s: float | None = Field(default=None, gt=0, le=86_400)


class RelayAutoArgs(_Args):
    """``relay.auto``: hand the relay back to its schedule."""

    relay: str = Field(min_length=1, max_length=32)


class ScheduleSetArgs(_Args):
    """``schedule.set``: replace all schedules atomically."""

    model_config = ConfigDict(extra="forbid", strict=False)

    schedules: list[RelaySchedule] = Field(max_length=200)
    broadcasts: list[BroadcastSchedule] = Field(default_factory=list, max_length=200)
    timezone: str | None = None
    """The zone the sender meant the times in; must be the gateway's own if given."""

    @field_validator("timezone")
    @classmethod
    def _zone_exists(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                zoneinfo.ZoneInfo(value)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown time zone {value!r}") from None
        return value


class PaPlayArgs(_Args):
    """``pa.play``: a stored clip or a stream URL, by priority."""

    clip: str | None = Field(default=None, min_length=1, max_length=64)
    url: str | None = Field(default=None, pattern=r"^https?://", max_length=2048)
    priority: Priority = "announcement"
    volume: int | None = Field(default=None, ge=0, le=100)
    repeat: int = Field(default=1, ge=1, le=20)
    chime: bool = False
    resume: bool = True
    """Cut off by a higher priority: play on from where it was (True) or drop it."""

    @model_validator(mode="after")
    def _one_source(self) -> PaPlayArgs:
        if (self.clip is None) == (self.url is None):
            raise ValueError("give exactly one of clip or url")
        return self


class PaStopArgs(_Args):
    """``pa.stop``."""

    scope: Literal["current", "all"] = "current"


class PaVolumeArgs(_Args):
    """``pa.volume``."""

    volume: int = Field(ge=0, le=100)


class PaClipFetchArgs(_Args):
    """``pa.clip.fetch``."""

    name: str = Field(min_length=1, max_length=64)
    url: str = Field(pattern=r"^https?://", max_length=2048)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class NoArgs(_Args):
    """Types that take no arguments."""


class LogLevelArgs(_Args):
    """``log.level``."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"]


ARGS: Mapping[str, type[_Args]] = {
    "relay.set": RelaySetArgs,
    "relay.auto": RelayAutoArgs,
    "schedule.set": ScheduleSetArgs,
    "pa.play": PaPlayArgs,
    "pa.stop": PaStopArgs,
    "pa.volume": PaVolumeArgs,
    "pa.clip.fetch": PaClipFetchArgs,
    "hotspots.probe": NoArgs,
    "system.ping": NoArgs,
    "log.level": LogLevelArgs,
}
"""Every v1 command type and the model of its ``args``."""


class Command(BaseModel):
    """The envelope: ``id``, ``type``, ``args``, optional ``issued_at`` and ``ttl_s``."""

    model_config = ConfigDict(extra="forbid")

    id: Annotated[str, Field(pattern=ID_PATTERN)]
    type: str
    args: dict[str, Any]
    issued_at: datetime | None = None
    ttl_s: int | None = Field(default=None, ge=1, le=7 * 24 * 3600)
    sig: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")


@dataclass(frozen=True, slots=True)
class Reply:
    """The one final answer to a command (or ``accepted`` before a long one)."""

    id: str | None
    status: Status
    result: dict[str, Any] | None = None
    error_code: str | None = None
    error_message: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The JSON of PROTOCOL.md: id, status, ts, result?, error?."""
        body: dict[str, Any] = {"id": self.id, "status": self.status, "ts": now_iso("milliseconds")}
        if self.result is not None:
            body["result"] = self.result
        if self.error_code is not None:
            body["error"] = {"code": self.error_code, "message": self.error_message}
        return body


Handler = Callable[[BaseModel, Source], Awaitable[dict[str, Any]]]
"""Runs one command type: gets the validated args and the source, returns the result."""


def _depth(value: object) -> int:
    """Nesting depth of parsed JSON, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if isinstance(item, dict):
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, level + 1) for v in item)
    return deepest


def canonical(command: Mapping[str, Any]) -> bytes:
    """The bytes an HMAC signs: the command without ``sig``, keys sorted, no spaces."""
    unsigned = {k: v for k, v in command.items() if k != "sig"}
    return json.dumps(unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sign(command: Mapping[str, Any], key: bytes) -> str:
    """The ``sig`` a commune server puts on a command (hex HMAC-SHA256 of canonical())."""
    return hmac.new(key, canonical(command), hashlib.sha256).hexdigest()


class _SeenIds:
    """Command ids already run, in SQLite: kept 24 h or the newest 10,000, whichever is more."""

    def __init__(self, path: Path) -> None:
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode = WAL")
        # NORMAL (no fsync per id): an id survives any process crash; only a power cut in
        # the instant after a command ran may forget it. Halves the command round trip.
        self._conn.execute("PRAGMA synchronous = NORMAL")
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS seen (id TEXT PRIMARY KEY, at REAL NOT NULL)"
        )
        self._lock = asyncio.Lock()
        self._added = 0

    def _claim(self, command_id: str, now: float) -> bool:
        """Record the id; False if it was there already. Committed before running."""
        try:
            self._conn.execute("INSERT INTO seen (id, at) VALUES (?, ?)", (command_id, now))
        except sqlite3.IntegrityError:
            return False
        self._added += 1
        return True

    def _prune(self, now: float) -> None:
        self._conn.execute(
            "DELETE FROM seen WHERE at < ? AND id NOT IN "
            "(SELECT id FROM seen ORDER BY at DESC LIMIT ?)",
            (now - KEEP_SECONDS, KEEP_IDS),
        )

    async def claim(self, command_id: str, now: float) -> bool:
        """Record the id on the event loop; prune old ids in a thread now and then.

        The insert is one WAL append without fsync (tens of microseconds), cheaper than
        the hop to a thread and back that it used to take on every command; the prune
        scans the table, so it stays off the loop.
        """
        async with self._lock:
            claimed = self._claim(command_id, now)
            if claimed and self._added % 500 == 0:
                await asyncio.to_thread(self._prune, now)
            return claimed

    def close(self) -> None:
        """Close the database."""
        self._conn.close()


class _RateLimit:
    """Per source: at most ``rate`` commands a second, bursts of ``burst``."""

    def __init__(self, rate: float, burst: float) -> None:
        self._rate, self._burst = rate, burst
        self._tokens: dict[str, float] = {}
        self._last: dict[str, float] = {}

    def allow(self, source: str, now: float) -> bool:
        tokens = min(
            self._burst,
            self._tokens.get(source, self._burst)
            + (now - self._last.get(source, now)) * self._rate,
        )
        self._last[source] = now
        if tokens < 1:
            self._tokens[source] = tokens
            return False
        self._tokens[source] = tokens - 1
        return True


class Dispatcher:
    """Validates, deduplicates, expires, runs, replies, logs. The one command path."""

    def __init__(
        self,
        *,
        state_dir: Path,
        handlers: Mapping[str, Handler],
        record: Callable[[list[tuple[Stream, dict[str, Any]]]], Awaitable[object]],
        clock_synced: Callable[[], bool],
        default_ttl_s: int = 300,
        max_bytes: int = 64 * 1024,
        hmac_key: bytes | None = None,
        rate_per_s: float = 20.0,
        burst: float = 100.0,
        wall: Callable[[], float] = time.time,
        on_mqtt_reply: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self._seen = _SeenIds(state_dir / "commands.db")
        self._handlers = dict(handlers)
        self._record = record
        self._clock_synced = clock_synced
        self._default_ttl_s = default_ttl_s
        self._max_bytes = max_bytes
        self._hmac_key = hmac_key
        self._rate = _RateLimit(rate_per_s, burst)
        self._wall = wall
        self._on_mqtt_reply = on_mqtt_reply
        self._turn = asyncio.Lock()
        self.counts: dict[tuple[str, str, str], int] = {}
        """Commands handled by (type, source, status), for ``/metrics``."""

    def close(self) -> None:
        """Close the id store."""
        self._seen.close()

    async def dispatch(self, payload: bytes | Mapping[str, Any], source: Source) -> Reply:
        """Run one command from ``source``; always returns its one final Reply."""
        started = time.monotonic()
        command_type: str | None = None
        # One command runs at a time, in the order they arrived (the lock is fair), from
        # every source; storing the event and reply happens after the turn is passed on,
        # so the fsync of one command does not hold up the next.
        async with self._turn:
            try:
                command, args = self._parse(payload, source)
                command_type = command.type
                reply = await self._run(command, args, source)
            except CommandError as exc:
                reply = Reply(exc.command_id, "rejected", None, exc.key, str(exc))
        await self._log(reply, command_type, source, time.monotonic() - started)
        return reply

    def _parse(
        self, payload: bytes | Mapping[str, Any], source: Source
    ) -> tuple[Command, BaseModel]:
        data = self._decode(payload)
        raw_id = data.get("id")
        command_id = raw_id if isinstance(raw_id, str) and _ID.fullmatch(raw_id) else None
        try:
            return self._validate(data, source)
        except CommandError as exc:
            exc.command_id = command_id
            raise

    def _validate(self, data: dict[str, Any], source: Source) -> tuple[Command, BaseModel]:
        if not self._rate.allow(source, time.monotonic()):
            raise CommandError(
                "rate_limited", f"more than the allowed commands per second from {source}"
            )
        if self._hmac_key is not None:
            self._check_signature(data)
        try:
            command = Command.model_validate(data)
        except ValidationError as exc:
            raise CommandError("bad_command", _first_error(exc)) from None
        model = ARGS.get(command.type)
        if model is None:
            raise CommandError(
                "unknown_type", f"unknown type {command.type!r}; one of {', '.join(ARGS)}"
            )
        try:
            args = model.model_validate(command.args)
        except ValidationError as exc:
            raise CommandError("bad_args", _first_error(exc)) from None
        return command, args

    def _decode(self, payload: bytes | Mapping[str, Any]) -> dict[str, Any]:
        if isinstance(payload, Mapping):
            data: object = dict(payload)
        else:
            if len(payload) > self._max_bytes:
                raise CommandError(
                    "too_large",
                    f"{len(payload)} bytes; at most {self._max_bytes} (commands.max_bytes)",
                )
            try:
                data = json.loads(payload.decode("utf-8"))
            except UnicodeDecodeError as exc:
                raise CommandError("bad_json", f"not UTF-8 (byte {exc.start})") from None
            except RecursionError:
                raise CommandError("bad_json", f"nested deeper than {MAX_DEPTH} levels") from None
            except json.JSONDecodeError as exc:
                raise CommandError("bad_json", f"not JSON: {exc.msg} at {exc.pos}") from None
        if not isinstance(data, dict):
            raise CommandError(
                "bad_command", f"a command is a JSON object, not {type(data).__name__}"
            )
        # JSON cannot nest deeper than it has brackets: most commands need no walk.
        shallow = (
            not isinstance(payload, Mapping)
            and payload.count(b"{") + payload.count(b"[") <= MAX_DEPTH
        )
        if not shallow and _depth(data) > MAX_DEPTH:
            raise CommandError("bad_command", f"nested deeper than {MAX_DEPTH} levels")
        return data

    def _check_signature(self, data: Mapping[str, Any]) -> None:
        assert self._hmac_key is not None  # noqa: S101 - only called with a key
        given = data.get("sig")
        if not isinstance(given, str) or not hmac.compare_digest(given, sign(data, self._hmac_key)):
            raise CommandError("forbidden", "missing or invalid signature (commands.hmac_key_file)")

    async def _run(self, command: Command, args: BaseModel, source: Source) -> Reply:
        if command.issued_at is not None and self._clock_synced():
            issued = command.issued_at
            if issued.tzinfo is None:
                raise CommandError("bad_command", "issued_at needs a UTC offset")
            ttl = command.ttl_s if command.ttl_s is not None else self._default_ttl_s
            now = datetime.fromtimestamp(self._wall(), UTC)
            if now > issued + timedelta(seconds=ttl):
                return Reply(
                    command.id,
                    "expired",
                    None,
                    "expired",
                    f"issued at {issued.isoformat()}, valid for {ttl} s",
                )
        if not await self._seen.claim(command.id, self._wall()):
            return Reply(command.id, "duplicate", None, "duplicate", "this id was already run")
        handler = self._handlers.get(command.type)
        if handler is None:
            return Reply(
                command.id,
                "failed",
                None,
                "not_available",
                f"{command.type} is not available on this gateway yet",
            )
        try:
            result = await handler(args, source)
        except CommandError as exc:
            return Reply(command.id, "rejected", None, exc.key, str(exc))
        except Exception as exc:  # a handler bug must still get its one reply
            _log.error("command.handler_crashed", id=command.id, type=command.type, exc_info=exc)
            return Reply(command.id, "failed", None, "internal", f"{type(exc).__name__}: {exc}")
        return Reply(command.id, "done", result)

    async def _log(
        self, reply: Reply, command_type: str | None, source: Source, took: float
    ) -> None:
        event = {
            "type": "command",
            "id": reply.id,
            "command": command_type,
            "source": source,
            "status": reply.status,
            "took_ms": round(took * 1000, 1),
        }
        if reply.error_code is not None:
            event["error"] = reply.error_code
        key = (command_type or "unknown", source, reply.status)
        self.counts[key] = self.counts.get(key, 0) + 1
        if is_enabled(_COMPONENT, logging.INFO):
            _log.info("command.handled", **event)
        # The event and the reply in one commit, without the group-commit window: the
        # commune waits for the reply, and two commits would cost it two fsyncs.
        records: list[tuple[Stream, dict[str, Any]]] = [("events", event)]
        if source == "mqtt":
            body = reply.as_dict()
            if self._on_mqtt_reply is not None:
                # The link claims it now and publishes it once stored (Link.expect_reply).
                self._on_mqtt_reply(body)
            records.append(("replies", body))
        await self._record(records)


def _first_error(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False)
    parts = []
    for item in errors[:3]:
        where = ".".join(str(p) for p in item["loc"]) or "(command)"
        message = "unknown field" if item["type"] == "extra_forbidden" else item["msg"]
        parts.append(f"{where}: {message}")
    return "; ".join(parts)


def new_id(source: Source) -> str:
    """An id for a command whose sender left it out (the web UI may)."""
    return f"{source}-{uuid.uuid4().hex[:16]}"
