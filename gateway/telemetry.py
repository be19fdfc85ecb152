"""Telemetry: a metric sample every ``telemetry.interval_s``, into the outbox.

The numbers come from the kernel through the standard library: ``/proc/stat`` (CPU),
``/proc/meminfo`` (memory), :func:`os.getloadavg` and :func:`shutil.disk_usage`; the CPU
temperature from the board's thermal zone where it has one. psutil read the same files
for us before; reading them here keeps its ~1 MB out of a Pi Zero's memory (the
gateway runs on Linux only). The figures are computed as psutil computed them, so the
``telemetry`` records mean what they meant.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.component import Component, Health
from gateway.outbox import Outbox

__all__ = ["MEMINFO", "PROC_STAT", "THERMAL_ZONE", "CpuMeter", "Telemetry", "memory_use", "sample"]

THERMAL_ZONE = Path("/sys/class/thermal/thermal_zone0/temp")
MEMINFO = Path("/proc/meminfo")
PROC_STAT = Path("/proc/stat")


def _cpu_temperature_c(zone: Path = THERMAL_ZONE) -> float | None:
    try:
        return round(int(zone.read_text().strip()) / 1000, 1)
    except (OSError, ValueError):
        return None


def memory_use(meminfo: Path = MEMINFO) -> tuple[float, float]:
    """(% used, MB available): used is what is not available (``MemTotal`` minus
    ``MemAvailable``, the kernel's own estimate that counts reclaimable cache as free),
    as ``free`` and psutil count it."""
    kib: dict[str, int] = {}
    for line in meminfo.read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("MemTotal", "MemAvailable"):
            kib[key] = int(rest.split()[0])
    total, available = kib["MemTotal"] * 1024, kib["MemAvailable"] * 1024
    return round(100 * (total - available) / total, 1), round(available / 1e6, 1)


class CpuMeter:
    """System-wide CPU use, in % of all cores, between two readings of the ``cpu`` line
    of ``/proc/stat``: busy is every kind of time except idle and iowait (a core waiting
    for the SD card does nothing); guest time is already inside user and nice, so it is
    taken out of the total rather than counted twice."""

    def __init__(self, stat: Path = PROC_STAT) -> None:
        self._stat = stat
        self._last = self._read()

    def _read(self) -> tuple[int, int]:
        """(busy, total) clock ticks since boot."""
        with self._stat.open() as lines:
            ticks = [int(value) for value in lines.readline().split()[1:11]]
        ticks += [0] * (10 - len(ticks))  # older kernels have fewer columns
        _user, _nice, _system, idle, iowait, _irq, _softirq, _steal, guest, guest_nice = ticks
        total = sum(ticks) - guest - guest_nice
        return total - idle - iowait, total

    def percent(self) -> float:
        """Use since the previous call (or since this meter was made); 0.0 when no
        time has passed."""
        busy, total = self._read()
        last_busy, last_total = self._last
        self._last = (busy, total)
        if busy <= last_busy or total <= last_total:
            return 0.0
        return round(100 * (busy - last_busy) / (total - last_total), 1)


def sample(state_dir: Path, started: float, cpu: CpuMeter) -> dict[str, Any]:
    """One telemetry sample: CPU, load, memory, disk free of the state folder, temperature."""
    mem_used_pct, mem_available_mb = memory_use()
    disk = shutil.disk_usage(state_dir)
    load1, load5, load15 = os.getloadavg()
    return {
        "type": "telemetry",
        "cpu_pct": cpu.percent(),
        "load": [round(load1, 2), round(load5, 2), round(load15, 2)],
        "mem_used_pct": mem_used_pct,
        "mem_available_mb": mem_available_mb,
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
        """Sample, append, sleep; each CPU figure covers the interval before it."""
        cpu = CpuMeter()
        while True:
            await asyncio.sleep(self._interval_s)
            record = sample(self._state_dir, self._started, cpu) | self._extra()
            await self._outbox.append("telemetry", record)
            health.beat()
