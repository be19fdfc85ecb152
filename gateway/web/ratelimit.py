"""Login rate limit per client address, with a lockout that doubles each time.

``web.login_max_attempts`` wrong passwords (or setup codes) in a row lock the address
out for ``web.login_lockout_s``; every wrong try after a lockout ends locks it again for
twice as long, up to ``web.login_max_lockout_s``. While locked, nothing is checked at
all, not even a right password, so guessing does not go faster by trying during the
lockout. A success clears the address. The clock is injectable for tests.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["LoginLimiter"]

MAX_ADDRESSES = 10_000
"""Tracked addresses; the least recently seen are forgotten beyond this (bounds memory)."""


@dataclass(slots=True)
class _Record:
    failures: int = 0
    lockouts: int = 0
    locked_until: float = 0.0


class LoginLimiter:
    """Counts failures per address; says how long an address must still wait."""

    def __init__(
        self,
        *,
        max_attempts: int,
        lockout_s: float,
        max_lockout_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max_attempts = max_attempts
        self._lockout_s = lockout_s
        self._max_lockout_s = max_lockout_s
        self._clock = clock
        self._records: OrderedDict[str, _Record] = OrderedDict()

    def retry_after(self, address: str) -> int | None:
        """Whole seconds ``address`` must still wait, or None when it may try now."""
        record = self._records.get(address)
        if record is None:
            return None
        left = record.locked_until - self._clock()
        return math.ceil(left) if left > 0 else None

    def failure(self, address: str) -> int | None:
        """Count a wrong try; returns the lockout in seconds if this one starts it."""
        record = self._records.pop(address, None) or _Record()
        self._records[address] = record  # most recent last
        while len(self._records) > MAX_ADDRESSES:
            self._records.popitem(last=False)
        record.failures += 1
        if record.failures < self._max_attempts and record.lockouts == 0:
            return None
        # First lockout after max_attempts; once locked before, every miss locks again.
        growth = float(2 ** min(record.lockouts, 40))
        seconds = min(self._max_lockout_s, self._lockout_s * growth)
        record.lockouts += 1
        record.locked_until = self._clock() + seconds
        return math.ceil(seconds)

    def success(self, address: str) -> None:
        """A right password: forget the address's history."""
        self._records.pop(address, None)

    def locked(self) -> int:
        """How many addresses are locked out right now (for /metrics)."""
        now = self._clock()
        return sum(1 for r in self._records.values() if r.locked_until > now)
