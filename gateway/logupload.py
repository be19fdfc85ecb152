"""Log upload: a structlog processor that copies log lines into the outbox's ``logs``.

It sits in the shared processor chain (see :mod:`gateway.log`), so our lines and the
libraries' alike are seen. Lines below ``log.upload_level`` stay local. A burst is
rate-limited per minute with one summary line for what was held back; long values are
cut with a marker; values JSON cannot hold become their ``repr``. Lines logged before
the outbox is open (start-up) are kept in memory and handed over when it opens. Lines
marked ``local_only=True`` never go up.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from structlog.typing import EventDict, WrappedLogger

from gateway.outbox import Outbox

__all__ = ["LOCAL_ONLY", "MAX_FIELD_CHARS", "LogUploader"]

LOCAL_ONLY = "local_only"
"""A log line with this key set true stays in the journal and is never uploaded: it
carries a secret meant for whoever stands at the Pi (the web UI's one-time setup code)."""

MAX_FIELD_CHARS = 2048
"""A value longer than this is truncated before upload (the local line keeps it whole)."""
_EARLY_LINES = 2000
_META_KEYS = frozenset({"_record", "_from_structlog"})


def _truncate(value: object) -> object:
    if isinstance(value, (bool, int, float)) or value is None:
        return value
    text = value if isinstance(value, str) else repr(value)
    if len(text) <= MAX_FIELD_CHARS:
        return text if not isinstance(value, (list, dict)) else value
    return f"{text[:MAX_FIELD_CHARS]}…[truncated {len(text) - MAX_FIELD_CHARS} chars]"


_LEVELS = logging.getLevelNamesMapping()
"""Level names to numbers, once: the stdlib hands out a fresh copy at every call."""


class LogUploader:
    """The processor; thread-safe, never raises, never changes the line it sees."""

    def __init__(
        self,
        *,
        level: str = "INFO",
        per_minute: int = 120,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._threshold = logging.getLevelNamesMapping()[level.upper()]
        self._per_minute = per_minute
        self._clock = clock
        self._lock = threading.Lock()
        self._outbox: Outbox | None = None
        self._early: deque[dict[str, Any]] = deque(maxlen=_EARLY_LINES)
        self._window_start = clock()
        self._sent_in_window = 0
        self._suppressed = 0

    def set_level(self, level: str) -> None:
        """Change ``log.upload_level`` at run time."""
        self._threshold = logging.getLevelNamesMapping()[level.upper()]

    def attach(self, outbox: Outbox | None) -> None:
        """Start writing into ``outbox`` (None detaches, at shutdown)."""
        with self._lock:
            self._outbox = outbox
            if outbox is not None:
                while self._early:
                    outbox.append_nowait("logs", self._early.popleft())

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        level = _LEVELS.get(str(event_dict.get("level", "")).upper(), 0)
        # ``local_only=True`` marks a line for the journal alone (the web setup code).
        if level >= self._threshold and not event_dict.get(LOCAL_ONLY):
            with contextlib.suppress(Exception):  # logging must never break the caller
                self._take(event_dict)
        return event_dict

    def _take(self, event_dict: EventDict) -> None:
        with self._lock:
            now = self._clock()
            if now - self._window_start >= 60:
                if self._suppressed:
                    self._write(
                        {
                            "ts": event_dict.get("ts"),
                            "level": "warning",
                            "component": "log",
                            "event": "logs.suppressed",
                            "count": self._suppressed,
                            "per_minute": self._per_minute,
                        }
                    )
                self._window_start, self._sent_in_window, self._suppressed = now, 0, 0
            if self._sent_in_window >= self._per_minute:
                self._suppressed += 1  # counted before any copy: a burst costs little
                return
            self._sent_in_window += 1
            self._write({k: _truncate(v) for k, v in event_dict.items() if k not in _META_KEYS})

    def _write(self, record: dict[str, Any]) -> None:
        if self._outbox is None:
            self._early.append(record)
        else:
            self._outbox.append_nowait("logs", record)
