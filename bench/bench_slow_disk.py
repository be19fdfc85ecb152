"""Commands on a slow SD card: every fsync takes 15 ms longer, 20 relay.set a second.

A worn or cheap SD card can take tens of milliseconds per fsync. The daemon runs under
``strace`` with the fsync and fdatasync system calls delayed by 15 ms on their way back
(``-e inject=…:delay_exit=15000``; ``--seccomp-bpf`` stops only those calls, so the rest
of the daemon runs at full speed), and the commune sends a switching ``relay.set`` every
50 ms over MQTT, each on time whether or not the last was answered, so a daemon that
waits for the card shows up as queueing. Two figures:

- the round trip, publish → final reply, p50 (target ≤ 35 ms: about two delayed fsyncs
  at most on the way to a reply);
- the event loop's lag p99 from the daemon's own ``/metrics``
  (``vg_loop_lag_seconds{quantile="0.99"}``, over the last minute; target ≤ 5 ms: an
  fsync made on the loop would hold everything else up for 15 ms).

The bare baseline is the echo client (``bench.echo``) under the same strace, sent the
same commands at the same pace at the same time: its round trip, and its own loop lag,
measured the same way. The run lasts a little longer than the lag's window
(``VG_BENCH_SLOW_DISK_S`` shortens it; the window then still holds the start-up).
"""

from __future__ import annotations

import asyncio
import os

from bench.common import ms, p
from bench.rig import Commune, paced, rig, scrape
from gateway.looplag import WINDOW_S
from gateway.uplink.client import Topics

DELAY_US = 15_000
RATE_PER_S = 20.0
WARM_UP_S = 5.0
"""Sent and not measured: the fresh outbox's first WAL growth, the first connections."""
DURATION_S = float(os.environ.get("VG_BENCH_SLOW_DISK_S", WINDOW_S + 5))
TARGET_P50_S = 0.035
TARGET_LAG_S = 0.005
STRACE = "/usr/bin/strace"


def strace_prefix() -> list[str]:
    """The strace command line that delays every fsync and fdatasync by 15 ms."""
    return [
        STRACE,
        "-f",
        "--seccomp-bpf",
        "-qq",
        "-o",
        os.devnull,
        "-e",
        "trace=fsync,fdatasync",
        "-e",
        f"inject=fsync,fdatasync:delay_exit={DELAY_US}",
    ]


async def run() -> str:
    """Measure the daemon and the echo side by side; return the figures line."""
    if not os.access(STRACE, os.X_OK):
        return f"slow disk: skipped, {STRACE} is missing (Debian package strace)"
    async with rig(prefix=strace_prefix()) as bench:
        gateway = bench.gateway
        async with Commune.connect(bench.broker, [bench.echo, gateway.topics]) as commune:
            await _side_by_side(commune, gateway.topics, bench.echo, WARM_UP_S)
            (ours, our_lost), (bare, bare_lost) = await _side_by_side(
                commune, gateway.topics, bench.echo, DURATION_S
            )
            lag = await scrape(gateway.base, "vg_loop_lag_seconds", 'quantile="0.99"')
            _, echo_reply = await commune.call(bench.echo, "bench.lag", {})
    bare_lag = float(echo_reply["result"]["p99"]) if echo_reply else None
    lost = f", unanswered: {our_lost} vs {bare_lost} bare" if our_lost or bare_lost else ""
    head = (
        f"slow disk (fsync +{DELAY_US // 1000} ms, {RATE_PER_S:.0f} switching relay.set/s"
        f" for {DURATION_S:.0f} s{lost}):"
    )
    return (
        f"{head} round trip p50 {ms(p(ours, 50))} (target <= {ms(TARGET_P50_S)}),"
        f" p99 {ms(p(ours, 99))} vs bare echo p50 {ms(p(bare, 50))}"
        f" -> {p(ours, 50) / p(bare, 50):.1f}x; {_lag_figure(lag, bare_lag)}"
    )


async def _side_by_side(
    commune: Commune, ours: Topics, bare: Topics, duration_s: float
) -> tuple[tuple[list[float], int], tuple[list[float], int]]:
    """Both paced at once, the echo half a period later, so the two sides see the same
    machine but never send at the same moment."""

    async def later() -> tuple[list[float], int]:
        await asyncio.sleep(0.5 / RATE_PER_S)
        return await paced(commune, bare, RATE_PER_S, duration_s)

    return await asyncio.gather(paced(commune, ours, RATE_PER_S, duration_s), later())


def _lag_figure(lag: float | None, bare_lag: float | None) -> str:
    bare = f"bare echo {ms(bare_lag)}" if bare_lag is not None else "bare echo n/a"
    if lag is None:
        return (
            "loop lag: vg_loop_lag_seconds is not in the daemon's /metrics"
            f" (LoopLag not wired into gateway/daemon/app.py yet); {bare}"
        )
    ratio = f" -> {lag / bare_lag:.1f}x" if bare_lag else ""
    return f"loop lag p99 {ms(lag)} (target <= {ms(TARGET_LAG_S)}) vs {bare}{ratio}"
