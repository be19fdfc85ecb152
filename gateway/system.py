"""The ``system`` component: uptime, load and whether the clock can be trusted.

The Pi has no real-time clock; until NTP has synchronised, timestamps are wrong and
command expiry must not be judged. systemd-timesyncd marks a synchronised clock by
creating ``/run/systemd/timesync/synchronized``; that file is what we look at.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from gateway import __version__
from gateway.component import Component, Health

__all__ = ["TIMESYNC_MARKER", "SystemMonitor", "clock_synced"]

TIMESYNC_MARKER = Path("/run/systemd/timesync/synchronized")


def clock_synced(marker: Path = TIMESYNC_MARKER) -> bool:
    """True once systemd-timesyncd has synchronised the clock since boot."""
    return marker.exists()


class SystemMonitor(Component):
    """Keeps the ``system`` snapshot fresh; a cheap heartbeat for the watchdog."""

    name = "system"
    critical = False
    heartbeat_timeout_s = 30.0

    def __init__(self, *, interval_s: float = 5.0, marker: Path = TIMESYNC_MARKER) -> None:
        self._interval_s = interval_s
        self._marker = marker
        self._started = time.monotonic()
        self.snapshot: dict[str, Any] = self._measure()

    def _measure(self) -> dict[str, Any]:
        load1, load5, load15 = os.getloadavg()
        return {
            "version": __version__,
            "uptime_s": round(time.monotonic() - self._started, 1),
            "clock_synced": clock_synced(self._marker),
            "load": [load1, load5, load15],
        }

    async def run(self, health: Health) -> None:
        """Refresh the snapshot every few seconds."""
        while True:
            self.snapshot = self._measure()
            health.beat()
            await asyncio.sleep(self._interval_s)
