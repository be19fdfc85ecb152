"""The event loop's lag: a blocked loop shows up in the figures and in ``/metrics``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest
from prometheus_client import generate_latest

from gateway.component import Health
from gateway.looplag import LoopLag, LoopLagStats
from gateway.metrics import build_registry


async def _until(condition: Callable[[], bool], within_s: float = 10.0) -> None:
    """Poll ``condition`` on the loop until it holds; fail after ``within_s``."""
    async with asyncio.timeout(within_s):
        while True:
            if condition():
                return
            await asyncio.sleep(0.005)


@pytest.fixture
async def running() -> AsyncIterator[LoopLag]:
    """A LoopLag waking every 10 ms, running on the test's own loop."""
    lag = LoopLag(interval_s=0.01)
    task = asyncio.create_task(lag.run(Health(lag.name, lag.critical, lag.heartbeat_timeout_s)))
    yield lag
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_blocking_call_shows_as_lag(running: LoopLag) -> None:
    """Someone calls something that blocks the loop for 200 ms: the next wake-up comes
    that much late, and p99 and max say so (with fewer than 100 samples, p99 is the
    max), as does the max since start."""
    await _until(lambda: running.stats().count >= 5)
    before = running.stats().count
    time.sleep(0.2)  # the blocking call under test
    await _until(lambda: running.stats().count > before)
    stats = running.stats()
    assert stats.window < 100
    assert stats.max >= 0.15
    assert stats.p99 >= 0.15
    assert stats.max_ever >= 0.15
    assert stats.total >= 0.15


async def test_an_idle_loop_shows_little_lag(running: LoopLag) -> None:
    """Nothing blocks the loop: the typical wake-up is late by far less than a
    stall would make it (the bound is generous: test machines are busy)."""
    await _until(lambda: running.stats().count >= 30)
    stats = running.stats()
    assert stats.p50 < 0.05
    assert 0 <= stats.p50 <= stats.p99 <= stats.max <= stats.max_ever


def test_quantiles_cover_the_window_and_the_max_since_start_stays() -> None:
    """Samples older than the window leave the quantiles; the max since start, the
    count and the sum keep them, so a stall between two scrapes is never lost."""
    now = [1000.0]
    lag = LoopLag(window_s=60, clock=lambda: now[0])
    lag.record(2.0)
    for n in range(1, 101):
        now[0] += 0.05
        lag.record(n / 1000)
    stats = lag.stats()
    assert (stats.window, stats.max, stats.max_ever) == (101, 2.0, 2.0)
    now[0] += 55.01  # the stall (at t=1000) is now 60.01 s old: out of the window
    stats = lag.stats()
    assert (stats.p50, stats.p99, stats.max) == (0.05, 0.099, 0.1)
    assert (stats.window, stats.count, stats.max_ever) == (100, 101, 2.0)
    assert stats.total == pytest.approx(2.0 + sum(range(1, 101)) / 1000)
    now[0] += 60.0
    assert lag.stats() == LoopLagStats(0.0, 0.0, 0.0, 2.0, 101, stats.total, 0)


def test_metrics_show_a_summary_with_the_max_as_quantile_1() -> None:
    """``/metrics`` has ``vg_loop_lag_seconds`` as a summary (quantiles 0.5, 0.99 and 1,
    ``_sum`` and ``_count``) and the max since start; without the LoopLag, neither."""
    lag = LoopLag()
    for ms in (1, 2, 3, 250):
        lag.record(ms / 1000)

    def scrape(loop_lag: Callable[[], LoopLagStats | None] | None) -> str:
        registry = build_registry(
            version="test",
            started=time.monotonic(),
            healths=list,
            outbox=lambda: None,
            link=lambda: None,
            loop_lag=loop_lag,
        )
        return generate_latest(registry).decode()

    text = scrape(lag.stats)
    assert "# TYPE vg_loop_lag_seconds summary" in text
    assert 'vg_loop_lag_seconds{quantile="0.5"} 0.002' in text
    assert 'vg_loop_lag_seconds{quantile="0.99"} 0.25' in text
    assert 'vg_loop_lag_seconds{quantile="1"} 0.25' in text
    assert "vg_loop_lag_seconds_count 4.0" in text
    assert "vg_loop_lag_max_seconds 0.25" in text
    assert "vg_loop_lag" not in scrape(None)
    assert "vg_loop_lag" not in scrape(lambda: None)
