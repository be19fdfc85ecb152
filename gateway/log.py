"""Logging: one structlog pipeline for our lines and for the libraries' stdlib logging.

Every line carries ``ts`` (RFC 3339 with the gateway's UTC offset), ``level``, ``event``
and ``component``. Under systemd stdout is not a terminal, so lines are JSON, one per
line, which journald stores as they are; on a terminal they are rendered for people.
The pipeline is a list of small processors (structlog's model) so later parts, such as
the outbox's log uploader, plug in as one more processor.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from datetime import datetime, tzinfo
from typing import Literal, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

__all__ = ["add_component", "configure_logging", "get_logger", "is_enabled", "set_level"]

LogFormat = Literal["auto", "json", "console"]

# Libraries that chatter at INFO about things operators need not see.
_QUIET_LIBRARIES = ("aiohttp.access",)


class _Timestamper:
    """Stamp ``ts`` in the gateway's time zone, with its offset, to the millisecond."""

    __slots__ = ("_tz",)

    def __init__(self, tz: tzinfo | None) -> None:
        self._tz = tz

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        event_dict["ts"] = (
            datetime.now(self._tz).astimezone(self._tz).isoformat(timespec="milliseconds")
        )
        return event_dict


def add_component(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """Name the part of the daemon that logged: our own bind it, libraries get their name."""
    if "component" not in event_dict:
        record = event_dict.get("_record")
        name = record.name if isinstance(record, logging.LogRecord) else None
        event_dict["component"] = name or "gateway"
    return event_dict


def _shared_processors(tz: tzinfo | None, sinks: Sequence[Processor]) -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
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
    return structlog.processors.JSONRenderer(ensure_ascii=False, default=repr)


def configure_logging(
    *,
    level: str = "INFO",
    fmt: LogFormat = "auto",
    stream: TextIO | None = None,
    tz: tzinfo | None = None,
    sinks: Sequence[Processor] = (),
) -> None:
    """Route structlog and stdlib logging into one handler on ``stream`` (stdout).

    ``sinks`` are processors that see every finished line before it is rendered (the
    outbox's log uploader). Safe to call again: the previous handler is replaced.
    """
    stream = stream if stream is not None else sys.stdout
    shared = _shared_processors(tz, sinks)
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            _renderer(fmt, stream),
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.set_name("village-gateway")
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "village-gateway"]:
        root.removeHandler(old)
    root.addHandler(handler)
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    set_level(level)


def set_level(level: str) -> None:
    """Change the level at run time (``log.level`` on reload, the ``log.level`` command)."""
    numeric = logging.getLevelNamesMapping()[level.upper()]
    logging.getLogger().setLevel(numeric)
    for name in _QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))


def is_enabled(component: str, level: int) -> bool:
    """Whether a line of ``level`` from ``component`` would be kept.

    For hot paths (every command): a structlog call that the level then filters out
    still binds and runs the first processors, about 15 µs here, and so does asking the
    lazy structlog logger; the stdlib logger underneath answers in well under one.
    """
    return logging.getLogger(component).isEnabledFor(level)


def get_logger(component: str, **context: object) -> structlog.stdlib.BoundLogger:
    """A logger whose every line names ``component``."""
    # Initial values keep the logger lazy: modules create theirs at import time, before
    # configure_logging() has run, and must still get the configured pipeline.
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(
        component, component=component, **context
    )
    return logger
