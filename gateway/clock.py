"""Timestamps as the protocol wants them: RFC 3339 with the village's UTC offset.

A Pi is often left on UTC by the installer; the commune reads times in Vietnam. Every
timestamp the gateway produces (records, replies, state, presence) goes through here, in
the zone of ``gateway.timezone``, which the App sets once at start. Logs use the same
zone (``gateway.log``).
"""

from __future__ import annotations

from datetime import datetime, tzinfo
from typing import Literal
from zoneinfo import ZoneInfo

__all__ = ["local_iso", "now_iso", "set_zone", "zone"]

_zone: tzinfo | None = None
"""None means the machine's local zone (before the App set one, or in small tools)."""


def set_zone(name: str | None) -> None:
    """Use the IANA zone ``name`` (``gateway.timezone``) for every timestamp from now on."""
    global _zone  # noqa: PLW0603 - one setting for the process, like logging's
    _zone = ZoneInfo(name) if name else None


def zone() -> tzinfo | None:
    """The zone timestamps are written in (None: the machine's)."""
    return _zone


def local_iso(timestamp: float, timespec: Literal["seconds", "milliseconds"] = "seconds") -> str:
    """A POSIX timestamp as RFC 3339 in the gateway's zone."""
    return datetime.fromtimestamp(timestamp, _zone).astimezone(_zone).isoformat(timespec=timespec)


def now_iso(timespec: Literal["seconds", "milliseconds"] = "seconds") -> str:
    """Now, as RFC 3339 in the gateway's zone."""
    return datetime.now(_zone).astimezone(_zone).isoformat(timespec=timespec)
