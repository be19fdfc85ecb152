"""What the page sees live: state changes, events and log lines over one WebSocket.

Every message is encoded to JSON once and queued to each connected page. A page that
falls behind by more than :data:`QUEUE_LIMIT` messages is disconnected instead of
buffering without end on a Pi: it reconnects by itself and its ``hello`` carries the
whole state again. Recent events stay in a bounded ring (with the outbox's ``seq``) so
``GET /api/v1/events?after=SEQ`` can fill the gap after a reconnect. Log lines come
from a structlog processor (:class:`LogTap`), the same hook the log uploader uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSCloseCode, web
from structlog.typing import EventDict, WrappedLogger

from gateway.clock import now_iso
from gateway.log import get_logger
from gateway.state import StateStore

__all__ = ["LOG_TAP", "QUEUE_LIMIT", "EventRing", "LiveHub", "LogTap", "encode"]

_log = get_logger("web")

QUEUE_LIMIT = 512
"""Messages queued for one page before it counts as too slow and is disconnected."""
EVENTS_KEPT = 1000
_MAX_FIELD_CHARS = 2048
_PRIVATE_EVENTS = frozenset({"web.setup_code"})
"""Log lines that never go to a page: the setup code is for whoever reads the journal."""


def encode(message: Mapping[str, Any]) -> str:
    """JSON text for the wire (values JSON cannot hold become their ``str``)."""
    return json.dumps(message, ensure_ascii=False, separators=(",", ":"), default=str)


class EventRing:
    """The newest :data:`EVENTS_KEPT` events, each with a strictly growing ``seq``."""

    def __init__(self, maxlen: int = EVENTS_KEPT) -> None:
        self._events: deque[dict[str, Any]] = deque(maxlen=maxlen)
        self.last_seq = 0

    def add(self, event: Mapping[str, Any], seq: int | None = None) -> dict[str, Any]:
        """Keep ``event``; ``seq`` is the outbox's when known, else the next number.

        Concurrent appends can finish out of order; a ``seq`` not above the last one is
        replaced by the next number so readers' ``after=`` never skips an event.
        """
        seq = seq if seq is not None and seq > self.last_seq else self.last_seq + 1
        self.last_seq = seq
        record = {"seq": seq, "ts": event.get("ts") or now_iso("milliseconds")}
        record.update((k, v) for k, v in event.items() if k not in ("seq", "ts"))
        self._events.append(record)
        return record

    def after(self, seq: int, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` events with a seq above ``seq``, oldest first (newest last)."""
        newer = [e for e in self._events if e["seq"] > seq]
        return newer[-limit:] if len(newer) > limit else newer


@dataclass(eq=False)
class _Page:
    """One connected WebSocket and what is waiting to be sent to it."""

    session: str | None
    """The key of the session it was opened with; None for a public status viewer."""
    queue: asyncio.Queue[str | None] = field(default_factory=asyncio.Queue)
    overflowed: bool = False

    def offer(self, text: str) -> None:
        if self.overflowed:
            return
        if self.queue.qsize() >= QUEUE_LIMIT:
            self.overflowed = True
            self.queue.put_nowait(None)  # tells the writer to hang up
            return
        self.queue.put_nowait(text)


class LiveHub:
    """Fans state, events and logs out to every connected page."""

    def __init__(self, state: StateStore, ring: EventRing | None = None) -> None:
        self._state = state
        self.ring = ring or EventRing()
        self._pages: set[_Page] = set()
        self.session_alive: Callable[[str], bool] = lambda key: True
        """Whether a page's session still holds (set by the server to the session store)."""
        self.dropped = 0
        """Pages disconnected for being too slow (for /metrics)."""

    @property
    def clients(self) -> int:
        """Pages connected right now."""
        return len(self._pages)

    def event(self, event: Mapping[str, Any], seq: int | None = None) -> dict[str, Any]:
        """Keep an event in the ring and push it to every page."""
        record = self.ring.add(event, seq)
        self._fan_out({"kind": "event", "event": record}, logs_only=False)
        return record

    def state(self, component: str, snapshot: Mapping[str, Any]) -> None:
        """Push one component's new snapshot to every page."""
        self._fan_out(
            {"kind": "state", "component": component, "snapshot": snapshot}, logs_only=False
        )

    @property
    def watching(self) -> bool:
        """Whether any page is open; read from any thread (a line logged just as the
        first page opens may be missed, which a live view can afford)."""
        return bool(self._pages)

    def log(self, record: Mapping[str, Any]) -> None:
        """Push a log line to the pages of logged-in operators."""
        self._fan_out({"kind": "log", "record": record}, logs_only=True)

    def _fan_out(self, message: Mapping[str, Any], *, logs_only: bool) -> None:
        """Encode ``message`` once for every page; with no page open (most of the
        time, and on every command) nothing is encoded at all."""
        if not self._pages:
            return
        text = encode(message)
        for page in self._pages:
            if page.session is not None or not logs_only:
                page.offer(text)

    def recheck(self) -> None:
        """Hang up on pages whose session ended (logout, password change)."""
        for page in self._pages:
            if page.session is not None and not self.session_alive(page.session):
                page.queue.put_nowait(None)

    async def watch_state(self) -> None:
        """Forever: push each component whose snapshot changed (latest only)."""
        seen = self._state.versions()
        while True:
            versions = await self._state.wait_changed(seen)
            for component, version in versions.items():
                if seen.get(component) != version:
                    self.state(component, self._state.snapshot(component) or {})
            seen = versions

    async def serve(
        self, ws: web.WebSocketResponse, hello: Mapping[str, Any], *, session: str | None
    ) -> None:
        """Run one page's connection: hello first, then everything queued, until it goes.

        The page is registered before ``hello`` is sent, so no change between the two is
        lost (at worst a snapshot arrives twice). Log lines go only to logged-in pages.
        """
        page = _Page(session)
        self._pages.add(page)
        reader = asyncio.create_task(self._read_until_closed(ws, page), name="web.ws.reader")
        try:
            await ws.send_str(encode({**hello, "last_seq": self.ring.last_seq}))
            while True:
                text = await page.queue.get()
                if text is None or (session is not None and not self.session_alive(session)):
                    break
                await ws.send_str(text)
        except (ConnectionError, RuntimeError):
            pass  # the page went away while we wrote
        finally:
            self._pages.discard(page)
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            if page.overflowed and not ws.closed:
                self.dropped += 1
                _log.info("web.ws_too_slow", queued=QUEUE_LIMIT)
                await ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=b"too slow; reconnect")
            elif not ws.closed:
                await ws.close()

    @staticmethod
    async def _read_until_closed(ws: web.WebSocketResponse, page: _Page) -> None:
        """Pages send nothing but pings (answered by aiohttp); wake the writer at the end."""
        try:
            async for _message in ws:
                pass
        finally:
            page.queue.put_nowait(None)


def _short(value: object) -> object:
    if isinstance(value, (bool, int, float)) or value is None:
        return value
    text = value if isinstance(value, str) else repr(value)
    if len(text) <= _MAX_FIELD_CHARS:
        return text
    return f"{text[:_MAX_FIELD_CHARS]}…"


_LEVELS = logging.getLevelNamesMapping()
"""Level names to numbers, once: the stdlib hands out a fresh copy at every call."""


class LogTap:
    """A structlog processor that copies INFO-and-up lines to a :class:`LiveHub`.

    It sits in the shared chain beside the log uploader (see :mod:`gateway.log`), so
    libraries' lines are seen too. Lines may come from any thread; they are handed to
    the hub's loop with ``call_soon_threadsafe``. Never raises, never changes the line.
    """

    def __init__(self, level: int = logging.INFO) -> None:
        self._level = level
        self._lock = threading.Lock()
        self._hub: LiveHub | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def attach(self, hub: LiveHub | None, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Start (or, with None, stop) copying lines to ``hub`` on ``loop``."""
        with self._lock:
            self._hub, self._loop = hub, loop

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        hub, loop = self._hub, self._loop
        # With no page open (nearly always) a line costs nothing here: before, every
        # line was copied and handed over through the loop's self-pipe (a syscall and a
        # wake-up of the loop per line, a third of a logged command's cost).
        if hub is None or loop is None or not hub.watching:
            return event_dict
        with contextlib.suppress(Exception):  # logging must never break the caller
            name = str(event_dict.get("level", "")).upper()
            level = _LEVELS.get(name, 0)
            if level >= self._level and event_dict.get("event") not in _PRIVATE_EVENTS:
                record = {k: _short(v) for k, v in event_dict.items() if not str(k).startswith("_")}
                loop.call_soon_threadsafe(hub.log, record)
        return event_dict


LOG_TAP = LogTap()
"""The one tap the daemon's logging is configured with (``gateway.cli``)."""
