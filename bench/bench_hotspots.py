"""Hotspot monitor CPU: 50 hotspots probed every second, against bare asyncio probes.

The targets (an aiohttp server answering ``/status`` and taking TCP connects) run in a
child process, so neither side's figure includes the server's work. Each side runs
for ``VG_BENCH_HOTSPOT_S`` seconds (60 by default, as the issue asks) in this process:
first the bare loop — per hotspot a task that every second opens and closes a TCP
connection and GETs the page with aiohttp (plus an icmplib ping when unprivileged ping
is permitted) — then the daemon's :class:`HotspotMonitor` doing the same probes with
hysteresis, rolling windows and state publishing. CPU is process time over wall time
(% of one core); RSS growth is the monitor phase's resident size at the end minus
after its first cycles.
"""

from __future__ import annotations

import asyncio
import os
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import aiohttp
import icmplib  # type: ignore[import-untyped]

from gateway.component import Health
from gateway.config import HotspotConfig, HttpProbe, IcmpProbe, TcpProbe, UplinkSection
from gateway.hotspots import HotspotMonitor, icmp_permission
from gateway.hotspots.probes import new_http_session
from gateway.state import StateStore

HOTSPOTS = 50
INTERVAL_S = 1.0
TIMEOUT_S = 0.8
WARMUP_S = 3.0
LOOPBACK = "127.0.0.1"

_SERVER = textwrap.dedent("""\
    import asyncio, sys
    from aiohttp import web

    async def status(request):
        return web.Response(text="ok")

    async def main():
        app = web.Application()
        app.router.add_get("/status", status)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        print(runner.addresses[0][1], flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())
""")


def _duration_s() -> float:
    return float(os.environ.get("VG_BENCH_HOTSPOT_S", "60"))


class _Meter:
    """Process CPU time and wall time since :meth:`start`."""

    def __init__(self) -> None:
        self._cpu = self._wall = 0.0

    def start(self) -> None:
        self._cpu, self._wall = time.process_time(), time.perf_counter()

    def core_pct(self) -> float:
        return 100 * (time.process_time() - self._cpu) / (time.perf_counter() - self._wall)


async def _bare(port: int, icmp: bool, duration_s: float) -> float:
    """The same probes as a plain loop; returns CPU in % of one core after warm-up."""
    url = f"http://{LOOPBACK}:{port}/status"

    async def tcp() -> None:
        _, writer = await asyncio.wait_for(asyncio.open_connection(LOOPBACK, port), TIMEOUT_S)
        writer.close()
        await writer.wait_closed()

    async def http(session: aiohttp.ClientSession) -> None:
        timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
        async with session.get(url, timeout=timeout) as response:
            assert response.status == 200

    async def hotspot(session: aiohttp.ClientSession) -> None:
        next_at = time.monotonic()
        while True:
            calls: list[Any] = [tcp(), http(session)]
            if icmp:
                calls.append(icmplib.async_ping(LOOPBACK, count=3, interval=0.1, privileged=False))
            await asyncio.gather(*calls)
            next_at += INTERVAL_S
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    async with new_http_session() as session:
        tasks = [asyncio.create_task(hotspot(session)) for _ in range(HOTSPOTS)]
        await asyncio.sleep(WARMUP_S)
        meter = _Meter()
        meter.start()
        await asyncio.sleep(duration_s)
        pct = meter.core_pct()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return pct


async def _monitor(port: int, icmp: bool, duration_s: float) -> tuple[float, float, int]:
    """The daemon's monitor; returns CPU %, RSS growth in MB, and cycles run."""
    probes: list[Any] = [
        TcpProbe(kind="tcp", port=port, timeout_s=TIMEOUT_S),
        HttpProbe(kind="http", url=f"http://{LOOPBACK}:{port}/status", timeout_s=TIMEOUT_S),
    ]
    if icmp:
        probes.append(IcmpProbe(kind="icmp", timeout_s=TIMEOUT_S))
    config = HotspotConfig(host=LOOPBACK, interval_s=INTERVAL_S, probes=probes)

    def sink(event: dict[str, Any]) -> None:
        del event

    state = StateStore()
    monitor = HotspotMonitor(
        {f"ap{i:02d}": config for i in range(HOTSPOTS)},
        UplinkSection(),
        state=state,
        on_event=sink,
        permission=icmp_permission(),
    )
    health = Health("hotspots", critical=False, heartbeat_timeout_s=None)
    task = asyncio.create_task(monitor.run(health))
    await asyncio.sleep(WARMUP_S)
    rss_before = _rss_bytes()
    cycles_before = _cycles(monitor)
    meter = _Meter()
    meter.start()
    await asyncio.sleep(duration_s)
    pct = meter.core_pct()
    rss_growth_mb = (_rss_bytes() - rss_before) / 1e6
    cycles = _cycles(monitor) - cycles_before
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    down = [n for n, h in monitor.snapshot()["hotspots"].items() if h["state"] != "up"]
    assert not down, f"hotspots not up on loopback: {down}"
    return pct, rss_growth_mb, cycles


def _rss_bytes() -> int:
    """This process's resident set, from ``/proc/self/statm`` (pages)."""
    resident = int(Path("/proc/self/statm").read_text().split()[1])
    return resident * os.sysconf("SC_PAGE_SIZE")


def _cycles(monitor: HotspotMonitor) -> int:
    return sum(h["cycles"] for h in monitor.snapshot()["hotspots"].values())


async def run() -> str:
    """Run both sides and return the ratio line."""
    duration_s = _duration_s()
    icmp = icmp_permission().permitted
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _SERVER, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert server.stdout is not None
        port = int(await server.stdout.readline())
        bare = await _bare(port, icmp, duration_s)
        daemon, rss_growth_mb, cycles = await _monitor(port, icmp, duration_s)
    finally:
        server.terminate()
        await server.wait()
    probes = "tcp+http" + ("+icmp" if icmp else " (no ping permission: icmp left out)")
    expected = HOTSPOTS * duration_s / INTERVAL_S
    return (
        f"hotspots: {HOTSPOTS} x {probes} every {INTERVAL_S:g} s for {duration_s:g} s: "
        f"monitor {daemon:.1f} % of a core vs bare asyncio {bare:.1f} % "
        f"= {daemon / bare:.2f}x; {cycles}/{expected:.0f} cycles; "
        f"RSS growth {rss_growth_mb * 1000:+.0f} kB"
    )


if __name__ == "__main__":
    print(asyncio.run(run()))
