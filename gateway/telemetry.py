"""Telemetry: a metric sample every ``telemetry.interval_s``, into the outbox.

psutil reads the numbers (it has wheels for the Pi's aarch64 and armv7); the CPU
temperature comes from the board's thermal zone where it has one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from gateway.component import Component, Health
from gateway.outbox import Outbox

__all__ = ["THERMAL_ZONE", "Telemetry", "sample"]

THERMAL_ZONE = Path("/sys/class/thermal/thermal_zone0/temp")


def _cpu_temperature_c(zone: Path = THERMAL_ZONE) -> float | None:
    try:
        return round(int(zone.read_text().strip()) / 1000, 1)
    except (OSError, ValueError):
        return None


def sample(state_dir: Path, started: float) -> dict[str, Any]:
    """One telemetry sample: CPU, load, memory, disk free of the state folder, temperature."""
    memory = psutil.virtual_memory()
    disk = psutil.disk_usage(str(state_dir))
    load1, load5, load15 = psutil.getloadavg()
    return {
        "type": "telemetry",
        "cpu_pct": psutil.cpu_percent(interval=None),
        "load": [round(load1, 2), round(load5, 2), round(load15, 2)],
        "mem_used_pct": memory.percent,
        "mem_available_mb": round(memory.available / 1e6, 1),
        "disk_free_mb": round(disk.free / 1e6, 1),
        "cpu_temp_c": _cpu_temperature_c(),
        "uptime_s": round(time.monotonic() - started, 1),
    }


class Telemetry(Component):
    """Appends one sample per interval to the ``telemetry`` stream."""

    name = "telemetry"
    critical = False

    def __init__(
        self,
        outbox: Outbox,
        *,
        state_dir: Path,
        interval_s: float,
        extra: Callable[[], dict[str, Any]],
    ) -> None:
        self._outbox = outbox
        self._state_dir = state_dir
        self._interval_s = interval_s
        self._extra = extra
        self._started = time.monotonic()

    async def run(self, health: Health) -> None:
        """Sample, append, sleep; the first CPU reading primes psutil's counter."""
        psutil.cpu_percent(interval=None)
        while True:
            await asyncio.sleep(self._interval_s)
            record = sample(self._state_dir, self._started) | self._extra()
            await self._outbox.append("telemetry", record)
            health.beat()
