"""Logging: structlog's own path for our lines, stdlib routing for the libraries' lines.

Every line carries ``ts`` (RFC 3339 with the gateway's UTC offset), ``level``, ``event``
and ``component``. Under systemd stdout is not a terminal, so lines are JSON, one per
line, which journald stores as they are; on a terminal they are rendered for people.
The pipeline is a list of small processors (structlog's model) so later parts, such as
the outbox's log uploader, plug in as one more processor.

Why two routes into one stream: our own lines are the daemon's hot path (every command
logs one at INFO), so they take structlog's native route, a bound logger that filters
by level before it builds anything and runs the processors straight into the output.
Routing them through the stdlib as well (a ``LogRecord``, the caller lookup, a second
record for the formatter) cost 8-16x a bare ``json.dumps`` per line. Libraries log
through the stdlib; their lines go through the same processors via structlog's
``ProcessorFormatter`` and end in the same output, under the same lock, so the two never
interleave inside a line.

Our loggers are bound once, when :func:`get_logger` is called (usually at import time),
and read the pipeline through one list and one output object that
:func:`configure_logging` changes in place; that is also how structlog's
``capture_logs`` reaches them in tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from datetime import datetime, tzinfo
from typing import Literal, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

__all__ = [
    "GatewayLogger",
    "HeldLines",
    "add_component",
    "configure_logging",
    "get_logger",
    "holding_lines",
    "info_off_the_hot_path",
    "is_enabled",
    "reset_logging",
    "set_level",
]

LogFormat = Literal["auto", "json", "console"]

# Libraries that chatter at INFO about things operators need not see.
_QUIET_LIBRARIES = ("aiohttp.access",)

_DEBUG, _INFO, _WARNING, _ERROR, _CRITICAL = (
    logging.DEBUG,
    logging.INFO,
    logging.WARNING,
    logging.ERROR,
    logging.CRITICAL,
)


class _Threshold:
    """The lowest level our own lines are kept at (``log.level``); one shared int."""

    __slots__ = ("level",)

    def __init__(self) -> None:
        self.level = _INFO


_THRESHOLD = _Threshold()


class _Output:
    """Where finished lines go: one stream, one lock, one line per write.

    Our lines arrive here as structlog's wrapped logger (``msg`` and the level names);
    the libraries' lines arrive through :class:`_OutputHandler`. Each line is flushed at
    once: under systemd stdout is a pipe, and a line held in a buffer is lost in a crash.
    """

    __slots__ = ("lock", "stream")

    def __init__(self) -> None:
        self.stream: TextIO | None = None  # None: whatever sys.stdout is at the time
        self.lock = threading.Lock()

    def msg(self, message: str) -> None:
        """Write one finished line."""
        stream = self.stream or sys.stdout
        with self.lock:
            stream.write(message + "\n")
            stream.flush()

    debug = info = warning = error = critical = msg


_OUTPUT = _Output()


class _OutputHandler(logging.Handler):
    """The stdlib's end of the pipeline: formats a library's record, writes it to our output."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            _OUTPUT.msg(self.format(record))
        except Exception:  # the stdlib's own convention: report, never raise
            self.handleError(record)


class GatewayLogger(structlog.BoundLoggerBase):
    """Our bound logger: a level check first, then the processors, then the output.

    A filtered line costs one comparison. The level is the process-wide ``log.level``
    (changed at run time by :func:`set_level`); components do not have levels of their own.
    """

    def debug(self, event: str, **kw: object) -> None:
        """Log at DEBUG."""
        if _THRESHOLD.level > _DEBUG:
            return
        self._proxy_to_logger("debug", event, **kw)

    def info(self, event: str, **kw: object) -> None:
        """Log at INFO."""
        if _THRESHOLD.level > _INFO:
            return
        self._proxy_to_logger("info", event, **kw)

    def warning(self, event: str, **kw: object) -> None:
        """Log at WARNING."""
        if _THRESHOLD.level > _WARNING:
            return
        self._proxy_to_logger("warning", event, **kw)

    def error(self, event: str, **kw: object) -> None:
        """Log at ERROR."""
        if _THRESHOLD.level > _ERROR:
            return
        self._proxy_to_logger("error", event, **kw)

    def exception(self, event: str, **kw: object) -> None:
        """Log at ERROR with the exception being handled (its traceback in ``exception``)."""
        if _THRESHOLD.level > _ERROR:
            return
        kw.setdefault("exc_info", True)
        self._proxy_to_logger("error", event, **kw)

    def critical(self, event: str, **kw: object) -> None:
        """Log at CRITICAL."""
        if _THRESHOLD.level > _CRITICAL:
            return
        self._proxy_to_logger("critical", event, **kw)


_written_at: ContextVar[float | None] = ContextVar("log_line_written_at", default=None)
"""The time a held line was asked for; the time stamper uses it instead of now."""


class _Timestamper:
    """Stamp ``ts`` in the gateway's time zone, with its offset, to the millisecond.

    The date, time and offset are formatted once per second (a ``datetime`` with a zone
    costs more than the rest of a line's processors together); the milliseconds are
    added to that text. The cache is one tuple, swapped whole, so threads may share it.
    """

    __slots__ = ("_cache", "_tz")

    def __init__(self, tz: tzinfo | None) -> None:
        self._tz = tz
        self._cache: tuple[int, str, str] = (-1, "", "")

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        now = _written_at.get() or time.time()
        second, head, offset = self._cache
        if int(now) != second:
            second = int(now)
            moment = datetime.fromtimestamp(second, self._tz)
            if self._tz is None:
                moment = moment.astimezone()
            text = moment.isoformat()
            head, offset = text[:19], text[19:]
            self._cache = (second, head, offset)
        event_dict["ts"] = f"{head}.{int((now - second) * 1000):03d}{offset}"
        return event_dict


def add_component(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """Name the part of the daemon that logged: our own bind it, libraries get their name."""
    if "component" not in event_dict:
        record = event_dict.get("_record")
        name = record.name if isinstance(record, logging.LogRecord) else None
        event_dict["component"] = name or "gateway"
    return event_dict


class _JsonLine:
    """Render the line as one JSON object; a value JSON cannot hold becomes its repr.

    One encoder, built once: ``json.dumps`` with options builds a new one per call.
    """

    __slots__ = ("_encode",)

    def __init__(self) -> None:
        self._encode = json.JSONEncoder(ensure_ascii=False, default=repr).encode

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> str:
        return self._encode(event_dict)


def _shared_processors(tz: tzinfo | None, sinks: Sequence[Processor]) -> list[Processor]:
    # No contextvars merge: the gateway binds context on its loggers, and copying the
    # whole context on every line was the chain's most expensive step.
    return [
        structlog.stdlib.add_log_level,
        add_component,
        _Timestamper(tz),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
        *sinks,
    ]


def _renderer(fmt: LogFormat, stream: TextIO) -> Processor:
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    if fmt == "console":
        return structlog.dev.ConsoleRenderer(colors=stream.isatty())
    return _JsonLine()


_PIPELINE: list[Processor] = []
"""Our lines' processors. Changed in place only, because bound loggers hold this list."""


def _install(
    processors: list[Processor], stream: TextIO | None, handler: logging.Handler | None
) -> None:
    _PIPELINE[:] = processors
    _OUTPUT.stream = stream
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "village-gateway"]:
        root.removeHandler(old)
    if handler is not None:
        handler.set_name("village-gateway")
        root.addHandler(handler)
    # structlog's own configuration names the same list, so structlog.get_logger() and
    # structlog.testing.capture_logs see and change the pipeline our loggers run.
    structlog.configure(
        processors=_PIPELINE,
        logger_factory=lambda *args: _OUTPUT,
        wrapper_class=GatewayLogger,
        cache_logger_on_first_use=False,
    )


def configure_logging(
    *,
    level: str = "INFO",
    fmt: LogFormat = "auto",
    stream: TextIO | None = None,
    tz: tzinfo | None = None,
    sinks: Sequence[Processor] = (),
) -> None:
    """Send our lines and the libraries' into one ``stream`` (stdout), through one chain.

    ``sinks`` are processors that see every finished line before it is rendered (the
    outbox's log uploader, the web UI's log tap). Safe to call again: the output, the
    chain and the level are replaced, for loggers made before the call too.
    """
    stream = stream if stream is not None else sys.stdout
    shared = _shared_processors(tz, sinks)
    renderer = _renderer(fmt, stream)
    handler = _OutputHandler()
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    _install([*shared, renderer], stream, handler)
    set_level(level)


def _unconfigured() -> None:
    # Before configure_logging (the short CLI commands, tests): structlog's defaults,
    # every level, human lines on whatever stdout is; libraries keep the stdlib's own.
    _install(
        [*_shared_processors(None, ()), structlog.dev.ConsoleRenderer(colors=False)], None, None
    )
    _THRESHOLD.level = logging.NOTSET


def reset_logging() -> None:
    """Back to the state before :func:`configure_logging`, for loggers made before too.

    For tests, which each start from scratch; structlog's own ``reset_defaults`` alone
    would leave our loggers holding a pipeline structlog no longer knows.
    """
    structlog.reset_defaults()
    _unconfigured()


def set_level(level: str) -> None:
    """Change the level at run time (``log.level`` on reload, the ``log.level`` command)."""
    numeric = logging.getLevelNamesMapping()[level.upper()]
    _THRESHOLD.level = numeric
    logging.getLogger().setLevel(numeric)
    for name in _QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))


def is_enabled(component: str, level: int) -> bool:
    """Whether a line of ``level`` from our ``component`` would be kept.

    Lets a hot path skip building a line's fields; the level is process-wide, so
    ``component`` only documents the call site.
    """
    return level >= _THRESHOLD.level


def get_logger(component: str, **context: object) -> GatewayLogger:
    """A logger whose every line names ``component``.

    Bound here, once, to the pipeline list and the output that :func:`configure_logging`
    changes in place: modules create theirs at import time, before logging is configured.
    """
    return GatewayLogger(_OUTPUT, _PIPELINE, {"component": component, **context})


_unconfigured()


class HeldLines:
    """INFO lines that a command's hot path asked for, kept until its reply is stored.

    A line is a write to the journal's pipe and some rendering: written while a command
    runs, it holds the event loop (and the interpreter lock) while the writer thread
    waits to commit the command's reply. The Dispatcher holds them instead and writes them
    once the reply is on its way (:meth:`write`). Each line keeps the time it was asked
    for as its ``ts`` (a PA command's amplifier switch may be seconds older than its reply).
    """

    __slots__ = ("_lines", "open")

    def __init__(self) -> None:
        self._lines: list[tuple[float, GatewayLogger, str, dict[str, object]]] = []
        self.open = True

    def add(self, logger: GatewayLogger, event: str, fields: dict[str, object]) -> None:
        """Keep one INFO line for :meth:`write`, stamped now."""
        self._lines.append((time.time(), logger, event, fields))

    def write(self) -> None:
        """Write the kept lines, in the order they came, each with its own time."""
        lines, self._lines = self._lines, []
        for at, logger, event, fields in lines:
            token = _written_at.set(at)
            try:
                logger.info(event, **fields)
            finally:
                _written_at.reset(token)


_held: ContextVar[HeldLines | None] = ContextVar("held_log_lines", default=None)


@contextlib.contextmanager
def holding_lines() -> Iterator[HeldLines]:
    """Hold the lines :func:`info_off_the_hot_path` writes in this context (a command's
    handler) for the caller, who writes them later. Once the block ends it takes no more:
    a task the handler started logs on its own."""
    held = HeldLines()
    token = _held.set(held)
    try:
        yield held
    finally:
        held.open = False
        _held.reset(token)


def info_off_the_hot_path(logger: GatewayLogger, event: str, **fields: object) -> None:
    """An INFO line that must not delay what is being done: held for the running
    command (:func:`holding_lines`), else written once the event loop's current step is
    over, else (no loop) at once."""
    if not is_enabled("", logging.INFO):
        return
    held = _held.get()
    if held is not None and held.open:
        held.add(logger, event, fields)
        return
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        logger.info(event, **fields)
    else:
        loop.call_soon(lambda: logger.info(event, **fields))
