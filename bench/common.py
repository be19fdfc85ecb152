"""Timing helpers shared by the benchmarks."""

from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable, Callable


def best_rate(work: Callable[[], None], count: int, rounds: int = 5) -> float:
    """Operations per second of ``work`` (which does ``count`` operations), best of rounds.

    The best round is the one least disturbed by the machine's other load.
    """
    best = 0.0
    for _ in range(rounds):
        started = time.perf_counter()
        work()
        best = max(best, count / (time.perf_counter() - started))
    return best


async def latencies(call: Callable[[], Awaitable[object]], count: int) -> list[float]:
    """Seconds each of ``count`` sequential calls took."""
    out = []
    for _ in range(count):
        started = time.perf_counter()
        await call()
        out.append(time.perf_counter() - started)
    return out


def p(values: list[float], percent: int) -> float:
    """The ``percent`` percentile of ``values`` (the max when there are too few for
    quantiles, 0 when there are none)."""
    if len(values) < 2:
        return max(values, default=0.0)
    return statistics.quantiles(values, n=100)[percent - 1]


def ms(seconds: float | None) -> str:
    """Seconds as milliseconds for a figures line; ``n/a`` for None."""
    return "n/a" if seconds is None else f"{seconds * 1e3:.1f} ms"
