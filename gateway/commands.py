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
import functools
import hashlib
import hmac
import json
import logging
import re
import sqlite3
import threading
import time
import uuid
import zoneinfo
from collections.abc import Awaitable, Callable, Mapping, Sequence
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
from gateway.errors import ConfigError, GatewayError
from gateway.events import EventHub
from gateway.log import HeldLines, get_logger, holding_lines, is_enabled
from gateway.outbox import PAGE_CACHE_KIB, Outbox, Stream, encode_record

__all__ = [
    "PRIORITIES",
    "Command",
    "CommandError",
    "Dispatcher",
    "Handler",
    "LongJob",
    "Redelivered",
    "Reply",
    "Source",
    "TokenBucket",
    "command_id_of",
    "decode",
    "read_signing_key",
]

_COMPONENT = "commands"
_log = get_logger(_COMPONENT)

PRIORITIES = ("emergency", "live", "announcement", "scheduled", "background")
Priority = Literal["emergency", "live", "announcement", "scheduled", "background"]
Source = Literal["mqtt", "web", "schedule", "pa"]
_SOURCES = ("mqtt", "web", "schedule", "pa")
Status = Literal["accepted", "done", "rejected", "failed", "expired", "duplicate"]
ID_PATTERN = r"^[A-Za-z0-9._:-]{1,64}$"
_ID = re.compile(ID_PATTERN)
MAX_DEPTH = 32
"""Deeper JSON is refused: no command needs it, and deep nesting is an attack."""
KEEP_IDS = 10_000
KEEP_SECONDS = 24 * 3600


class CommandError(GatewayError):
    """A handler refuses: ``key`` is the PROTOCOL.md ``error.code`` (e.g. unknown_target).

    ``detail`` is the reply's optional ``error.detail``: ``{"reason", "field", "row"?,
    ...params}``, what a user interface needs to say the refusal in its own language and
    to mark the wrong field (docs/protocol.md lists the reasons). Rows count from 1.
    """

    def __init__(
        self,
        key: str,
        message: str,
        *,
        command_id: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.key = key
        self.command_id = command_id
        """The id to answer with; None when the payload did not carry a valid one."""
        self.detail = dict(detail) if detail is not None else None


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

    # Rows are judged by gateway.schedule_rules (reason codes, 1-based rows), not here.
    schedules: list[Any]
    broadcasts: list[Any] = Field(default_factory=list)
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

    name: str = Field(max_length=256)
    """An id, or a natural name that becomes the clip's label (the store judges it)."""
    url: str = Field(pattern=r"^https?://", max_length=2048)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class PaClipDeleteArgs(_Args):
    """``pa.clip.delete`` (an addition): remove a stored clip by its id."""

    clip: str = Field(min_length=1, max_length=128)


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
    "pa.clip.delete": PaClipDeleteArgs,
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
    error_detail: dict[str, Any] | None = None
    """``error.detail`` (an addition to PROTOCOL.md): reason code, field, row, params."""

    @classmethod
    def refused(cls, command_id: str | None, error: CommandError) -> Reply:
        """The ``rejected`` reply to ``error``, its detail included."""
        return cls(command_id, "rejected", None, error.key, str(error), error.detail)

    def as_dict(self) -> dict[str, Any]:
        """The JSON of PROTOCOL.md: id, status, ts, result?, error? (with detail?)."""
        body: dict[str, Any] = {"id": self.id, "status": self.status, "ts": now_iso("milliseconds")}
        if self.result is not None:
            body["result"] = self.result
        if self.error_code is not None:
            body["error"] = {"code": self.error_code, "message": self.error_message}
            if self.error_detail is not None:
                body["error"]["detail"] = self.error_detail
        return body


@dataclass(frozen=True, slots=True)
class LongJob:
    """What a handler returns for work that takes long (a download and its decode check).

    The Dispatcher answers ``accepted`` at once (with ``accepted`` as its result), runs
    ``work`` in the background, and answers its result (or its CommandError) as the
    final reply. Other commands, to the same target too, do not wait for it.
    """

    work: Awaitable[dict[str, Any]]
    accepted: dict[str, Any] | None = None


Handler = Callable[[BaseModel, Source], Awaitable[dict[str, Any] | LongJob]]
"""Runs one command type: gets the validated args and the source, returns the result
(or a :class:`LongJob` whose result is the final reply)."""


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


MIN_KEY_BYTES = 32
"""A shorter signing key can be guessed offline from one captured signed command."""


def read_signing_key(path: Path, *, name: str, error: type[ConfigError] = ConfigError) -> bytes:
    """The signing key in ``path``: its bytes, surrounding whitespace (a trailing
    newline) stripped, at least ``MIN_KEY_BYTES``. The daemon (``commands.hmac_key_file``)
    and ``send --hmac-key-file`` read it alike; ``error`` names ``name`` in its message."""
    try:
        key = path.read_bytes().strip()
    except OSError as exc:
        raise error.single(name, f"{path} cannot be read: {exc.strerror or exc}") from None
    if not key:
        raise error.single(name, f"{path} is empty")
    if len(key) < MIN_KEY_BYTES:
        raise error.single(
            name,
            f"{path} holds {len(key)} bytes; a signing key needs at least {MIN_KEY_BYTES} "
            f"(e.g. `head -c 32 /dev/urandom | base64 > {path.name}`)",
        )
    return key


def sign(command: Mapping[str, Any], key: bytes) -> str:
    """The ``sig`` a commune server puts on a command (hex HMAC-SHA256 of canonical())."""
    return hmac.new(key, canonical(command), hashlib.sha256).hexdigest()


class _Journal:
    """Command ids already claimed, and the commands not yet answered, in SQLite.

    Ids are kept 24 h or the newest 10,000, whichever is more (PROTOCOL.md). A command
    claimed ``durably`` keeps its payload here until its reply is stored: a crash before
    that leaves it to :meth:`Dispatcher.recover`, which runs it after the restart. That
    is what lets the MQTT adapter acknowledge a command (PUBACK) once it is claimed.

    ``synchronous = NORMAL`` in WAL mode: a claim is one append to the WAL without an
    fsync (tens of microseconds, on the event loop); it survives any crash of the process,
    and only a power cut in the instant after may forget it. Checkpoints, which do fsync,
    run in a thread (``wal_autocheckpoint`` is off on the loop's connection).

    :meth:`answered` runs in the outbox's writer thread, on the loop's connection: a
    second connection would contend for SQLite's write lock, whose busy handler sleeps
    for a millisecond or more; the lock here holds the loop for one short UPDATE at most.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn = self._connect()
        self._lock = threading.Lock()
        self._conn.execute("PRAGMA wal_autocheckpoint = 0")
        self._conn.executescript(
            """
            CREATE TABLE IF NOT EXISTS claims (
                id TEXT PRIMARY KEY, at REAL NOT NULL, digest TEXT,
                source TEXT, reply_up INTEGER NOT NULL DEFAULT 0, command BLOB
            );
            CREATE INDEX IF NOT EXISTS claims_open ON claims (at) WHERE command IS NOT NULL;
            """
        )
        if self._conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'seen'"
        ).fetchone():
            # The first layout kept bare ids in ``seen``; they still count as run.
            self._conn.execute("INSERT OR IGNORE INTO claims (id, at) SELECT id, at FROM seen")
            self._conn.execute("DROP TABLE seen")
        self._added = 0
        self._closed = False
        self._upkeep: asyncio.Task[None] | None = None

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.execute(f"PRAGMA cache_size = -{PAGE_CACHE_KIB}")
        return conn

    def claim(self, claim: _Claim, now: float) -> bool:
        """Record the id (and, if durable, the command); False if it was there already."""
        try:
            with self._lock:
                self._conn.execute(
                    "INSERT INTO claims (id, at, digest, source, reply_up, command) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (claim.id, now, claim.digest, claim.source, claim.reply_up, claim.payload),
                )
        except sqlite3.IntegrityError:
            return False
        self._added += 1
        if self._added % 500 == 0 and (self._upkeep is None or self._upkeep.done()):
            self._upkeep = asyncio.get_running_loop().create_task(
                asyncio.to_thread(self._prune, now), name="commands-journal-upkeep"
            )
        return True

    def digest_of(self, command_id: str) -> str | None:
        """The sha256 of the bytes claimed under ``command_id`` (None: never claimed, or
        claimed before digests were kept)."""
        with self._lock:
            row = self._conn.execute(
                "SELECT digest FROM claims WHERE id = ?", (command_id,)
            ).fetchone()
        return None if row is None else row[0]

    def answered(self, command_id: str) -> None:
        """The command's reply is stored: forget its payload. From any thread; after
        :meth:`close` it does nothing (the next start finds the reply and closes it)."""
        with self._lock:
            if self._closed:
                return
            self._conn.execute("UPDATE claims SET command = NULL WHERE id = ?", (command_id,))

    def open_claims(self) -> list[_Claim]:
        """Commands claimed durably and never answered, oldest first."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, digest, source, reply_up, command FROM claims "
                "WHERE command IS NOT NULL ORDER BY at, rowid"
            ).fetchall()
        return [_Claim(r[0], r[1], r[2], bool(r[3]), r[4]) for r in rows]

    def _prune(self, now: float) -> None:
        conn = self._connect()
        try:
            conn.execute(
                "DELETE FROM claims WHERE at < ? AND command IS NULL AND id NOT IN "
                "(SELECT id FROM claims ORDER BY at DESC LIMIT ?)",
                (now - KEEP_SECONDS, KEEP_IDS),
            )
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            conn.close()

    def close(self) -> None:
        """Close the database."""
        if self._upkeep is not None:
            self._upkeep.cancel()
        with self._lock:
            self._closed = True
            self._conn.close()


@dataclass(frozen=True, slots=True)
class _Claim:
    id: str
    digest: str | None
    source: str | None
    reply_up: bool
    payload: bytes | None


class TokenBucket:
    """At most ``rate`` a second, in bursts of ``burst``; ``allow`` never waits.

    The MQTT adapter keeps one per kind of sender (signed, unsigned, malformed), so a
    flood of one kind cannot spend the others' tokens.
    """

    def __init__(
        self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._rate, self._burst, self._clock = rate, burst, clock
        self._tokens = burst
        self._last = clock()

    def allow(self) -> bool:
        """Take a token if there is one."""
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


LANES: Mapping[str, Callable[[BaseModel], str | None]] = {
    "relay.set": lambda args: f"relay:{getattr(args, 'relay', '')}",
    "relay.auto": lambda args: f"relay:{getattr(args, 'relay', '')}",
    "schedule.set": lambda args: "schedule",
    "pa.play": lambda args: "pa",
    "pa.stop": lambda args: "pa",
    "pa.volume": lambda args: "pa",
    "pa.clip.fetch": lambda args: "pa",
    "pa.clip.delete": lambda args: "pa",
    "log.level": lambda args: "log",
}
"""Which commands must keep their order: those with the same lane run one after the
other, in the order they came; different lanes (and types not listed) run side by side.
A long job (``pa.clip.fetch``) holds its lane only until it is ``accepted``."""


class Dispatcher:
    """Validates, deduplicates, expires, runs, replies, logs. The one command path.

    Source-neutral: what belongs to a source (MQTT signatures, rate limits and PUBACKs;
    web sessions) is settled by its adapter before :meth:`submit`. The adapter says where
    the reply goes: ``reply_up`` stores it in the outbox's ``replies`` stream with the
    command's events, in one transaction, and the uplink publishes it (its one
    publisher); without it the reply only goes back to the caller.
    """

    def __init__(
        self,
        *,
        state_dir: Path,
        handlers: Mapping[str, Handler],
        outbox: Outbox,
        events: EventHub,
        clock_synced: Callable[[], bool],
        default_ttl_s: int = 300,
        max_bytes: int = 64 * 1024,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._journal = _Journal(state_dir / "commands.db")
        self._handlers = dict(handlers)
        self._outbox = outbox
        self._events = events
        self._clock_synced = clock_synced
        self._default_ttl_s = default_ttl_s
        self.max_bytes = max_bytes
        self._wall = wall
        self._lanes: dict[str, asyncio.Lock] = {}
        self._running: set[asyncio.Future[Reply]] = set()
        self.counts: dict[tuple[str, str, str], int] = {}
        """Commands handled by (type, source, status), for ``/metrics``."""

    def close(self) -> None:
        """Stop what still runs (it is run again after a restart) and close the journal."""
        for task in list(self._running):
            task.cancel()
        self._journal.close()

    def handled_types(self) -> list[str]:
        """The command types this gateway runs (others answer ``not_available``)."""
        return list(self._handlers)

    async def dispatch(
        self, payload: bytes | Mapping[str, Any], source: Source, *, reply_up: bool = False
    ) -> Reply:
        """Run one command from ``source``; returns its final Reply once it is stored."""
        return await self.submit(payload, source, reply_up=reply_up)

    def submit(
        self,
        payload: bytes | Mapping[str, Any],
        source: Source,
        *,
        reply_up: bool = False,
        durable: bool = False,
        decoded: dict[str, Any] | None = None,
    ) -> asyncio.Future[Reply]:
        """Admit one command now, run it soon; the future resolves to its final Reply.

        Everything that decides whether it runs happens before this returns: decoding,
        validation, the ttl, and the claim of its id. With ``durable`` the command itself
        is kept in the journal until its reply is stored, so the caller may acknowledge
        it to its sender as soon as this returns (MQTT: the PUBACK). ``decoded`` is
        ``payload`` already parsed by the adapter (it is not parsed twice).
        """
        started = time.monotonic()
        data = decoded
        try:
            if data is None:
                data = self._decode(payload)
            command, args = self._validate(data)
        except CommandError as exc:
            reply = Reply.refused(exc.command_id, exc)
            return self._answer_now(reply, _known_type(data), source, reply_up, started)
        verdict = self._judge(command, payload, data, source, reply_up=reply_up, durable=durable)
        if verdict is not None:
            return self._answer_now(verdict, command.type, source, reply_up, started)
        return self._start(command, args, source, reply_up, started)

    def refuse(self, error: CommandError, source: Source, *, reply_up: bool) -> None:
        """Answer a command its adapter refused (bad signature, rate limited, not JSON).

        Stored within the group-commit window, not at once: a flood of junk must not
        cost an fsync per message.
        """
        reply = Reply.refused(error.command_id, error)
        event = self._event(reply, None, source, 0.0)
        self._outbox.append_nowait(
            "events", event, on_stored=lambda seq: self._events.stored(event, seq)
        )
        if reply_up:
            self._outbox.append_nowait("replies", reply.as_dict())

    async def recover(self) -> int:
        """Run the commands that were claimed durably but never answered (the daemon
        stopped or crashed in between), oldest first; returns how many.

        A command whose reply did reach the outbox before the crash is only closed.
        """
        claims = self._journal.open_claims()
        if not claims:
            return 0
        stored = await self._outbox.reply_ids()
        replies: list[asyncio.Future[Reply]] = []
        for claim in claims:
            if claim.id in stored or claim.payload is None:
                self._journal.answered(claim.id)
                continue
            source: Source = claim.source if claim.source in _SOURCES else "mqtt"  # type: ignore[assignment]
            replies.append(self._resume(claim, source))
        _log.info("commands.recovered", count=len(replies), closed=len(claims) - len(replies))
        await asyncio.gather(*replies, return_exceptions=True)
        return len(replies)

    def _resume(self, claim: _Claim, source: Source) -> asyncio.Future[Reply]:
        started = time.monotonic()
        assert claim.payload is not None  # noqa: S101 - open claims keep their payload
        try:
            command, args = self._validate(self._decode(claim.payload))
        except CommandError as exc:
            reply = Reply.refused(claim.id, exc)
            return self._answer_now(reply, None, source, claim.reply_up, started)
        expired = self._expired(command)
        if expired is not None:
            self._journal.answered(claim.id)
            return self._answer_now(expired, command.type, source, claim.reply_up, started)
        return self._start(command, args, source, claim.reply_up, started)

    def _start(
        self, command: Command, args: BaseModel, source: Source, reply_up: bool, started: float
    ) -> asyncio.Future[Reply]:
        """Run the admitted command in a task of its own (stopped by :meth:`close`)."""
        task = asyncio.get_running_loop().create_task(
            self._execute(command, args, source, reply_up, started), name=f"command {command.id}"
        )
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        return task

    # -- admission ----------------------------------------------------------------------

    def _judge(
        self,
        command: Command,
        payload: bytes | Mapping[str, Any],
        data: Mapping[str, Any],
        source: Source,
        *,
        reply_up: bool,
        durable: bool,
    ) -> Reply | None:
        """``expired`` or ``duplicate``, or None after claiming the id (it runs)."""
        expired = self._expired(command)
        if expired is not None:
            return expired
        raw = payload if isinstance(payload, bytes) else encode_record(dict(data)).encode()
        digest = hashlib.sha256(raw).hexdigest()
        claim = _Claim(command.id, digest, source, reply_up, raw if durable else None)
        if self._journal.claim(claim, self._wall()):
            return None
        if durable and self._journal.digest_of(command.id) == digest:
            # The same bytes again under the same id: the broker redelivering a message
            # whose PUBACK was lost, or a resend. Its one reply is stored or on its way.
            raise Redelivered(command.id)
        return Reply(command.id, "duplicate", None, "duplicate", "this id was already run")

    def _expired(self, command: Command) -> Reply | None:
        if command.issued_at is None or not self._clock_synced():
            return None
        issued = command.issued_at
        ttl = command.ttl_s if command.ttl_s is not None else self._default_ttl_s
        now = datetime.fromtimestamp(self._wall(), UTC)
        if now <= issued + timedelta(seconds=ttl):
            return None
        return Reply(
            command.id,
            "expired",
            None,
            "expired",
            f"issued at {issued.isoformat()}, valid for {ttl} s",
        )

    def _validate(self, data: dict[str, Any]) -> tuple[Command, BaseModel]:
        command_id = command_id_of(data)
        try:
            command = Command.model_validate(data)
        except ValidationError as exc:
            raise CommandError("bad_command", _first_error(exc), command_id=command_id) from None
        if command.issued_at is not None and command.issued_at.tzinfo is None:
            raise CommandError("bad_command", "issued_at needs a UTC offset", command_id=command_id)
        model = ARGS.get(command.type)
        if model is None:
            raise CommandError(
                "unknown_type",
                f"unknown type {command.type!r}; one of {', '.join(ARGS)}",
                command_id=command_id,
            )
        try:
            args = model.model_validate(command.args)
        except ValidationError as exc:
            raise CommandError(
                "bad_args", _first_error(exc), command_id=command_id, detail=_first_detail(exc)
            ) from None
        return command, args

    def _decode(self, payload: bytes | Mapping[str, Any]) -> dict[str, Any]:
        if isinstance(payload, Mapping):
            return dict(payload)
        return decode(payload, self.max_bytes)

    # -- running ------------------------------------------------------------------------

    async def _execute(
        self, command: Command, args: BaseModel, source: Source, reply_up: bool, started: float
    ) -> Reply:
        lane_of = LANES.get(command.type)
        lane = self._lane(lane_of(args)) if lane_of is not None else None
        job: LongJob | None = None
        if lane is not None:
            await lane.acquire()
        try:
            with self._events.collecting() as events, holding_lines() as lines:
                reply, job = await self._run(command, args, source)
            # Queued for the commit while still in the lane: replies of one lane are
            # stored, and so published, in the order the commands came.
            stored = self._store(reply, command.type, source, reply_up, started, events, lines)
        finally:
            if lane is not None:
                lane.release()
        await stored
        if job is None:
            return reply
        return await self._finish_job(command, job, source, reply_up, started)

    async def _finish_job(
        self, command: Command, job: LongJob, source: Source, reply_up: bool, started: float
    ) -> Reply:
        with self._events.collecting() as events, holding_lines() as lines:
            try:
                result = await job.work
            except CommandError as exc:
                reply = Reply.refused(command.id, exc)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a job's bug must still get its one reply
                _log.error("command.job_crashed", id=command.id, type=command.type, exc_info=exc)
                reply = Reply(
                    command.id, "failed", None, "internal", f"{type(exc).__name__}: {exc}"
                )
            else:
                reply = Reply(command.id, "done", result)
        await self._store(reply, command.type, source, reply_up, started, events, lines)
        return reply

    def _lane(self, name: str | None) -> asyncio.Lock | None:
        if name is None:
            return None
        lane = self._lanes.get(name)
        if lane is None:
            if len(self._lanes) > 256:  # relay names come from config; keep it bounded
                self._lanes = {k: v for k, v in self._lanes.items() if v.locked()}
            lane = self._lanes[name] = asyncio.Lock()
        return lane

    async def _run(
        self, command: Command, args: BaseModel, source: Source
    ) -> tuple[Reply, LongJob | None]:
        handler = self._handlers.get(command.type)
        if handler is None:
            return (
                Reply(
                    command.id,
                    "failed",
                    None,
                    "not_available",
                    f"{command.type} is not available on this gateway yet",
                ),
                None,
            )
        try:
            result = await handler(args, source)
        except CommandError as exc:
            return Reply.refused(command.id, exc), None
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a handler bug must still get its one reply
            _log.error("command.handler_crashed", id=command.id, type=command.type, exc_info=exc)
            return Reply(
                command.id, "failed", None, "internal", f"{type(exc).__name__}: {exc}"
            ), None
        if isinstance(result, LongJob):
            return Reply(command.id, "accepted", result.accepted), result
        return Reply(command.id, "done", result), None

    # -- the one way out ----------------------------------------------------------------

    def _answer_now(
        self,
        reply: Reply,
        command_type: str | None,
        source: Source,
        reply_up: bool,
        started: float,
    ) -> asyncio.Future[Reply]:
        stored = self._store(reply, command_type, source, reply_up, started, [], HeldLines())
        return asyncio.ensure_future(_after(stored, reply))

    def _store(  # noqa: PLR0917 - one command's facts, in the order they are known
        self,
        reply: Reply,
        command_type: str | None,
        source: Source,
        reply_up: bool,
        started: float,
        events: list[dict[str, Any]],
        lines: HeldLines,
    ) -> Awaitable[None]:
        """Queue the command's event, its handler's events and (``reply_up``) its reply
        for one commit, at once; the returned awaitable ends once they are stored.

        The log lines of the command (its handler's, held in ``lines``, and its own
        ``command.handled``) are written after the commit: written now, they would hold
        the interpreter while the writer thread needs it to start the commit."""
        event = self._event(reply, command_type, source, time.monotonic() - started)
        records: list[tuple[Stream, dict[str, Any]]] = [("events", event)]
        records += [("events", e) for e in events]
        if reply_up:
            records.append(("replies", reply.as_dict()))
        answered = None
        if reply_up and reply.id is not None and reply.status != "accepted":
            # The journal forgets the command once its reply is stored, in the writer
            # thread while the reply is being published: before the reply can be purged
            # from the outbox (a crash until then finds the reply there and does not run
            # the command again), and not on the loop before the reply leaves.
            answered = functools.partial(self._journal.answered, reply.id)
        try:
            commit = self._outbox.append_now(records, after_commit=answered)
        except (RuntimeError, ValueError) as exc:  # closed, or a record too large
            lines.write()
            _log.error("command.not_stored", id=reply.id, error=str(exc))
            return _done()
        if is_enabled(_COMPONENT, logging.INFO):
            lines.add(_log, "command.handled", event)
        return self._stored(commit, reply, [event, *events], lines)

    async def _stored(
        self,
        commit: Awaitable[list[int]],
        reply: Reply,
        events: list[dict[str, Any]],
        lines: HeldLines,
    ) -> None:
        try:
            seqs = await commit
        except OSError as exc:
            # What the handler did stands (a relay that switched did switch); only the
            # record of it is missing. The caller still gets the true reply.
            lines.write()
            _log.error("command.not_stored", id=reply.id, status=reply.status, error=str(exc))
            return
        except asyncio.CancelledError:
            lines.write()
            raise
        lines.write()
        for event, seq in zip(events, seqs, strict=False):
            self._events.stored(event, seq)

    def _event(
        self, reply: Reply, command_type: str | None, source: Source, took: float
    ) -> dict[str, Any]:
        event: dict[str, Any] = {
            "type": "command",
            "id": reply.id,
            "command": command_type,
            "source": source,
            "status": reply.status,
            "took_ms": round(took * 1000, 1),
        }
        if reply.error_code is not None:
            event["error"] = reply.error_code
        if reply.error_detail is not None:
            # The events page says why in words from it, as a reply's refusal does.
            event["detail"] = reply.error_detail
        key = (command_type or "unknown", source, reply.status)
        self.counts[key] = self.counts.get(key, 0) + 1
        return event


class Redelivered(GatewayError):  # noqa: N818 - a signal, not a failure
    """:meth:`Dispatcher.submit` saw the same command again (same id, same bytes) while
    it was claimed durably: acknowledge it to the sender, answer nothing more."""

    def __init__(self, command_id: str) -> None:
        super().__init__(f"command {command_id} delivered again")
        self.command_id = command_id


async def _after(stored: Awaitable[None], reply: Reply) -> Reply:
    await stored
    return reply


async def _done() -> None:
    return None


def command_id_of(data: Mapping[str, Any]) -> str | None:
    """The command's id if it is a valid one (a refusal is answered with it), else None."""
    raw = data.get("id")
    return raw if isinstance(raw, str) and _ID.fullmatch(raw) else None


def decode(payload: bytes, max_bytes: int) -> dict[str, Any]:
    """A command's JSON object from its bytes, or a CommandError (too_large, bad_json,
    bad_command) carrying its id when one could be read."""
    if len(payload) > max_bytes:
        raise CommandError(
            "too_large", f"{len(payload)} bytes; at most {max_bytes} (commands.max_bytes)"
        )
    try:
        data: object = json.loads(payload.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise CommandError("bad_json", f"not UTF-8 (byte {exc.start})") from None
    except RecursionError:
        raise CommandError("bad_json", f"nested deeper than {MAX_DEPTH} levels") from None
    except json.JSONDecodeError as exc:
        raise CommandError("bad_json", f"not JSON: {exc.msg} at {exc.pos}") from None
    if not isinstance(data, dict):
        raise CommandError("bad_command", f"a command is a JSON object, not {type(data).__name__}")
    # JSON cannot nest deeper than it has brackets: most commands need no walk.
    if payload.count(b"{") + payload.count(b"[") > MAX_DEPTH and _depth(data) > MAX_DEPTH:
        raise CommandError(
            "bad_command", f"nested deeper than {MAX_DEPTH} levels", command_id=command_id_of(data)
        )
    return data


def _where(loc: Sequence[int | str]) -> str:
    """A validation error's place in words, list rows counted from 1 (``schedules row 2``)."""
    parts: list[str] = []
    for part in loc:
        if isinstance(part, int) and parts:
            parts[-1] += f" row {part + 1}"
        else:
            parts.append(str(part))
    return ".".join(parts) or "(command)"


def _first_error(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False)
    parts = []
    for item in errors[:3]:
        message = "unknown field" if item["type"] == "extra_forbidden" else item["msg"]
        parts.append(f"{_where(item['loc'])}: {message}")
    return "; ".join(parts)


_PYDANTIC_REASONS = {"extra_forbidden": "unknown_key", "missing": "missing_key"}


def _first_detail(exc: ValidationError) -> dict[str, Any]:
    """``error.detail`` of the first validation error: reason, field and 1-based row."""
    item = exc.errors(include_url=False)[0]
    loc = [part for part in item["loc"] if not isinstance(part, int)]
    rows = [part for part in item["loc"] if isinstance(part, int)]
    detail: dict[str, Any] = {
        "reason": _PYDANTIC_REASONS.get(item["type"], "bad_value"),
        "field": str(loc[0]) if loc else "args",
    }
    if rows:
        detail["row"] = rows[0] + 1
    if len(loc) > 1:
        detail["key"] = ".".join(str(part) for part in loc[1:])
    return detail


def _known_type(data: object) -> str | None:
    """The type a command refused before it ran says it is, if it is one of ours: its
    event then names it ("relay.set refused: on is missing"), not "a command"."""
    kind = data.get("type") if isinstance(data, dict) else None
    return kind if isinstance(kind, str) and kind in ARGS else None


def new_id(source: Source) -> str:
    """An id for a command whose sender left it out (the web UI may)."""
    return f"{source}-{uuid.uuid4().hex[:16]}"
