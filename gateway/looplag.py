"""How late the event loop runs: the one figure that shows a blocked loop.

Everything in the daemon (relays, replies, the web UI, the watchdog ping) shares one
asyncio event loop, so a slow call made on it (an fsync on a worn SD card, a big JSON
dump, a DNS lookup) delays all of them at once, yet shows up in no single component's
figures. :class:`LoopLag` asks the loop for a wake-up every ``interval_s`` and records
how much later than asked it ran. A loop that keeps up wakes it within a millisecond or
so; a call that holds the loop for 200 ms makes the next wake-up 200 ms late.

The samples of the last ``window_s`` seconds give the p50/p99/max that ``/metrics``
shows (``vg_loop_lag_seconds``), so a scrape says how the loop did lately rather than
since boot; the largest lag since start is kept beside them, so a single stall between
two scrapes is not lost.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.component import Component, Health

if TYPE_CHECKING:
    from gateway.config import Settings

__all__ = ["INTERVAL_S", "WINDOW_S", "LoopLag", "LoopLagStats"]

INTERVAL_S = 0.5
"""Two wake-ups a second. A stall of half a second or more always shows; a shorter one
shows in proportion to its length (a 100 ms stall in one sample of five), which over a
minute of a loop that stalls often is still a true p99 (120 samples in the window).
Every wake-up of an idle daemon costs CPU, about 0.3 ms of it on the development machine
(epoll, the timer heap, the thread switch): side by side, the demo took 0.28 % of a core
with the sampler at 5 Hz and 0.16 % at 1 Hz; 20 Hz had cost more than everything else
it does together. Issue #16 asks for at most 0.3 %, on a Pi Zero 2 W."""
WINDOW_S = 60.0
"""The quantiles cover this many seconds: one Prometheus scrape interval or more."""


@dataclass(frozen=True, slots=True)
class LoopLagStats:
    """Lag figures in seconds: quantiles and max over the window, and since start."""

    p50: float
    p99: float
    max: float
    """The largest lag in the window."""
    max_ever: float
    """The largest lag since the component started, window or not."""
    count: int
    """Samples taken since start (the Prometheus summary's ``_count``)."""
    total: float
    """Sum of every sample's lag since start (the summary's ``_sum``)."""
    window: int
    """Samples in the window, which the quantiles come from."""


class LoopLag(Component):
    """Measures the event loop's lag by asking it for a wake-up every ``interval_s``.

    ``clock`` must be the clock ``asyncio.sleep`` follows (the loop's, which is
    ``time.monotonic`` by default); tests inject one to feed :meth:`record` samples at
    chosen times.
    """

    name = "looplag"
    critical = False
    """Only a measurement: if it crashes, the daemon is no less able to switch lights."""

    def __init__(
        self,
        *,
        interval_s: float = INTERVAL_S,
        window_s: float = WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval_s <= 0 or window_s <= 0:
            raise ValueError("interval_s and window_s must be positive")
        self._interval_s = interval_s
        self._window_s = window_s
        self._clock = clock
        self._samples: deque[tuple[float, float]] = deque()
        """(when, lag) pairs of the last ``window_s`` seconds, oldest first."""
        self._max_ever = 0.0
        self._count = 0
        self._total = 0.0

    async def run(self, health: Health) -> None:
        """Ask for a wake-up every ``interval_s`` and record how late each came, until
        cancelled.

        The wake-up is a plain timer callback (``call_later``), not a task sleeping: one
        turn of the loop per sample instead of two, and no future or task step, which
        matters because it is what an idle daemon does most often.
        """
        loop = asyncio.get_running_loop()
        failed: asyncio.Future[None] = loop.create_future()
        handle: asyncio.TimerHandle | None = None

        def schedule() -> asyncio.TimerHandle:
            return loop.call_later(self._interval_s, tick, self._clock() + self._interval_s)

        def tick(due: float) -> None:
            nonlocal handle
            try:
                woke = self._clock()
                self.record(max(0.0, woke - due), now=woke)
                health.beat()
                handle = schedule()
            except Exception as exc:  # handed to the supervisor: run() raises it
                if not failed.done():
                    failed.set_exception(exc)

        handle = schedule()
        try:
            await failed
        finally:
            if handle is not None:
                handle.cancel()

    def record(self, lag_s: float, *, now: float | None = None) -> None:
        """Add one sample taken at ``now`` (the clock's current time when omitted)."""
        when = self._clock() if now is None else now
        self._samples.append((when, lag_s))
        self._count += 1
        self._total += lag_s
        self._max_ever = max(self._max_ever, lag_s)
        self._forget_before(when - self._window_s)

    def stats(self) -> LoopLagStats:
        """The figures now; quantiles are 0 while the window is empty.

        Sorting the window on each call is fine: a scrape every few seconds sorts
        ``window_s / interval_s`` (120) floats, well under a millisecond.
        """
        self._forget_before(self._clock() - self._window_s)
        lags = sorted(lag for _, lag in self._samples)
        return LoopLagStats(
            p50=_quantile(lags, 0.5),
            p99=_quantile(lags, 0.99),
            max=lags[-1] if lags else 0.0,
            max_ever=self._max_ever,
            count=self._count,
            total=self._total,
            window=len(lags),
        )

    def summary(self) -> str | None:
        """Nothing for systemd's STATUS line unless the loop is struggling."""
        p99 = self.stats().p99
        return f"loop lag p99 {p99 * 1e3:.0f} ms" if p99 >= 0.1 else None

    async def reload(self, settings: Settings) -> list[str]:
        """Nothing to reload: the interval and window are not configuration."""
        del settings
        return []

    def _forget_before(self, oldest: float) -> None:
        while self._samples and self._samples[0][0] < oldest:
            self._samples.popleft()


def _quantile(ordered: list[float], q: float) -> float:
    """The nearest-rank ``q`` quantile of ``ordered`` (0 when empty).

    Nearest rank, not interpolation: the figure is then a lag that was really measured,
    and with fewer than 100 samples the p99 is the max, so a stall shows at full size
    instead of being averaged with its neighbour.
    """
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]
