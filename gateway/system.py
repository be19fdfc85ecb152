"""The ``system`` component: version, uptime, clock, outbox and link, as one snapshot.

The Pi has no real-time clock; until NTP has synchronised, timestamps are wrong and
command expiry must not be judged. systemd-timesyncd marks a synchronised clock by
creating ``/run/systemd/timesync/synchronized``; that file is what we look at.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from gateway import __version__
from gateway.component import Component, Health
from gateway.state import StateStore

__all__ = ["TIMESYNC_MARKER", "SystemMonitor", "clock_synced"]

TIMESYNC_MARKER = Path("/run/systemd/timesync/synchronized")


def clock_synced(marker: Path = TIMESYNC_MARKER) -> bool:
    """True once systemd-timesyncd has synchronised the clock since boot."""
    return marker.exists()


class SystemMonitor(Component):
    """Refreshes the ``system`` snapshot every ``interval_s``; a cheap heartbeat too."""

    name = "system"
    critical = False
    heartbeat_timeout_s = 120.0

    def __init__(
        self,
        state: StateStore,
        *,
        details: Callable[[], dict[str, Any]],
        refresh: Callable[[], Awaitable[object]] | None = None,
        interval_s: float = 30.0,
        marker: Path = TIMESYNC_MARKER,
    ) -> None:
        self._state = state
        self._details = details
        self._refresh = refresh
        self._interval_s = interval_s
        self._marker = marker
        self._started = time.monotonic()

    def measure(self) -> dict[str, Any]:
        """The snapshot of PROTOCOL.md: version, uptime_s, clock_synced, outbox, link."""
        return {
            "version": __version__,
            "uptime_s": round(time.monotonic() - self._started, 1),
            "clock_synced": clock_synced(self._marker),
            **self._details(),
        }

    async def run(self, health: Health) -> None:
        """Publish the snapshot at start and then every interval."""
        while True:
            if self._refresh is not None:
                await self._refresh()  # figures that need a query, e.g. the oldest record
            await self._state.set("system", self.measure())
            health.beat()
            await asyncio.sleep(self._interval_s)
