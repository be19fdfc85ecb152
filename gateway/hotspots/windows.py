"""Rolling windows: availability over 1 h and 24 h, RTT p50/p95 and loss over 1 h.

Memory is fixed however long the daemon runs and however often it probes: the last hour
is 60 one-minute buckets, the last day 288 five-minute buckets, both in a
``deque(maxlen=…)``. Round-trip times go into a sparse log-scale histogram per minute
(bins about 10 % wide), so a percentile is read to within one bin without keeping a
single sample.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["DAY_BUCKETS", "HOUR_BUCKETS", "RollingWindows"]

HOUR_BUCKETS = 60
"""One-minute buckets kept for the last hour."""
DAY_BUCKETS = 288
"""Five-minute buckets kept for the last 24 hours."""
_DAY_BUCKET_S = 300
_MINUTE_S = 60

_BIN_BASE_MS = 0.05
_BIN_GROWTH = 1.1
_MAX_BIN = 160  # 0.05 ms * 1.1**160 is about 200 s: beyond any probe timeout


def _bin(rtt_ms: float) -> int:
    if rtt_ms <= _BIN_BASE_MS:
        return 0
    return min(_MAX_BIN, int(math.log(rtt_ms / _BIN_BASE_MS, _BIN_GROWTH)) + 1)


def _bin_value(index: int) -> float:
    """A representative RTT for a bin: the geometric middle of its bounds."""
    if index == 0:
        return _BIN_BASE_MS
    return float(_BIN_BASE_MS * _BIN_GROWTH ** (index - 0.5))


@dataclass(slots=True)
class _Minute:
    index: int
    good: int = 0
    total: int = 0
    loss_sum: float = 0.0
    loss_n: int = 0
    rtt_bins: dict[int, int] = field(default_factory=dict)


@dataclass(slots=True)
class _Slot:
    index: int
    good: int = 0
    total: int = 0


class RollingWindows:
    """Cycle outcomes of one target, bucketed by the (monotonic) time they happened."""

    __slots__ = ("_day", "_hour")

    def __init__(self) -> None:
        self._hour: deque[_Minute] = deque(maxlen=HOUR_BUCKETS)
        self._day: deque[_Slot] = deque(maxlen=DAY_BUCKETS)

    def add(
        self, now: float, *, ok: bool, rtts_ms: Iterable[float] = (), loss_pct: float | None = None
    ) -> None:
        """Record one judged cycle at monotonic time ``now``."""
        minute_index = int(now // _MINUTE_S)
        if not self._hour or self._hour[-1].index != minute_index:
            self._hour.append(_Minute(minute_index))
        minute = self._hour[-1]
        minute.total += 1
        minute.good += ok
        if loss_pct is not None:
            minute.loss_sum += loss_pct
            minute.loss_n += 1
        for rtt in rtts_ms:
            key = _bin(rtt)
            minute.rtt_bins[key] = minute.rtt_bins.get(key, 0) + 1
        slot_index = int(now // _DAY_BUCKET_S)
        if not self._day or self._day[-1].index != slot_index:
            self._day.append(_Slot(slot_index))
        slot = self._day[-1]
        slot.total += 1
        slot.good += ok

    def _recent_minutes(self, now: float) -> list[_Minute]:
        first = int(now // _MINUTE_S) - HOUR_BUCKETS + 1
        return [minute for minute in self._hour if minute.index >= first]

    def availability(self, now: float) -> dict[str, float | None]:
        """Share of good cycles, in %, over the last hour and day (None without data)."""
        hour = self._recent_minutes(now)
        first_slot = int(now // _DAY_BUCKET_S) - DAY_BUCKETS + 1
        day = [slot for slot in self._day if slot.index >= first_slot]
        return {
            "1h": _share(sum(m.good for m in hour), sum(m.total for m in hour)),
            "24h": _share(sum(s.good for s in day), sum(s.total for s in day)),
        }

    def rtt_ms(self, now: float) -> dict[str, float | None]:
        """p50 and p95 of the round trips of the last hour, to within one bin."""
        merged: dict[int, int] = {}
        for minute in self._recent_minutes(now):
            for key, count in minute.rtt_bins.items():
                merged[key] = merged.get(key, 0) + count
        return {"p50": _quantile(merged, 0.5), "p95": _quantile(merged, 0.95)}

    def loss_pct(self, now: float) -> float | None:
        """Mean ICMP loss of the last hour, in %, or None when no ping ran."""
        minutes = self._recent_minutes(now)
        n = sum(m.loss_n for m in minutes)
        return round(sum(m.loss_sum for m in minutes) / n, 1) if n else None

    def sizes(self) -> tuple[int, int, int]:
        """Buckets in the hour, buckets in the day, histogram bins held: for tests."""
        return len(self._hour), len(self._day), sum(len(m.rtt_bins) for m in self._hour)


def _share(good: int, total: int) -> float | None:
    return round(100 * good / total, 2) if total else None


def _quantile(bins: dict[int, int], q: float) -> float | None:
    total = sum(bins.values())
    if not total:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for key in sorted(bins):
        seen += bins[key]
        if seen >= rank:
            return round(_bin_value(key), 2)
    return None  # pragma: no cover - rank <= total always hits
