"""Login rate limit per client address, with a lockout that doubles each time.

``web.login_max_attempts`` wrong passwords (or setup codes) lock the address out for
``web.login_lockout_s``; every wrong try soon after a lockout ends locks it again for
twice as long, up to ``web.login_max_lockout_s``. While locked, nothing is checked at
all, not even a right password, so guessing does not go faster by trying during the
lockout. A success clears the address.

Races: an attempt is counted as wrong the moment it starts (:meth:`LoginLimiter.begin`,
before the handler awaits the body or the hash) and only a right password takes it back;
an address has at most one attempt in flight, so parallel guesses get no more tries than
serial ones.

Decay: wrong tries are forgotten gradually: each weighs half as much after
``web.login_max_lockout_s`` of quiet (time neither trying nor locked), so behind a NAT
one wrong try an hour never adds up to a lockout.

Memory: at most :data:`MAX_ADDRESSES` addresses are tracked. Beyond that the oldest
addresses that are *not* locked are forgotten first; locked ones only when nothing else
is left (soonest-ending first), so a flood of new addresses cannot wipe a lockout.

The clock is injectable for tests.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["MAX_ADDRESSES", "LoginLimiter", "address_key"]

MAX_ADDRESSES = 10_000
"""Tracked addresses; beyond this the oldest unlocked ones are forgotten (bounds memory)."""
_PRUNE_TO = 0.9
"""Pruning makes room for a tenth more at once, so it runs rarely even under a flood."""
_FORGOTTEN = 0.05
"""A record whose weight decayed below this is as good as new."""


def address_key(address: str) -> str:
    """What the limit counts by: the address, or for IPv6 its /64 network (one phone or
    one home can pick any address in its /64, so counting those one by one is no limit)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is None:
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip.ipv4_mapped) if isinstance(ip, ipaddress.IPv6Address) else str(ip)


@dataclass(slots=True)
class _Record:
    score: float = 0.0
    """Wrong tries, each decaying with time (a float: 5.0 right after five)."""
    since: float = 0.0
    """When ``score`` was last brought up to date."""
    locked_until: float = 0.0
    in_flight: bool = False


class LoginLimiter:
    """Counts failures per address; says how long an address must still wait."""

    def __init__(
        self,
        *,
        max_attempts: int,
        lockout_s: float,
        max_lockout_s: float,
        clock: Callable[[], float] = time.monotonic,
        max_addresses: int = MAX_ADDRESSES,
    ) -> None:
        self._max_attempts = max_attempts
        self._lockout_s = lockout_s
        self._max_lockout_s = max_lockout_s
        self._half_life_s = max_lockout_s
        self._clock = clock
        self._max_addresses = max_addresses
        self._records: OrderedDict[str, _Record] = OrderedDict()

    def __len__(self) -> int:
        return len(self._records)

    def _decayed(self, record: _Record, now: float) -> float:
        """The record's weight now; locked time is not quiet time."""
        quiet = now - max(record.since, record.locked_until)
        if quiet <= 0 or record.score == 0:
            return record.score
        return record.score * math.pow(0.5, quiet / self._half_life_s)

    def retry_after(self, address: str) -> int | None:
        """Whole seconds ``address`` must still wait, or None when it may try now."""
        record = self._records.get(address)
        if record is None:
            return None
        left = record.locked_until - self._clock()
        return math.ceil(left) if left > 0 else None

    def begin(self, address: str) -> int | None:
        """Start an attempt: counted as wrong from now on (see :meth:`end`).

        Returns the seconds to wait instead when the address is locked out, or 1 when it
        already has an attempt in flight; then nothing started and nothing is counted.
        """
        now = self._clock()
        record = self._records.get(address)
        if record is not None:
            if record.locked_until > now:
                return math.ceil(record.locked_until - now)
            if record.in_flight:
                return 1
            self._records.move_to_end(address)
        else:
            record = _Record()
            self._records[address] = record
            if len(self._records) > self._max_addresses:
                self._prune(now, keep=address)
        record.score = self._decayed(record, now) + 1
        record.since = now
        record.in_flight = True
        return None

    def end(self, address: str, *, ok: bool | None) -> int | None:
        """Finish an attempt: ``ok`` True clears the address, False keeps the failure
        (returns the lockout in seconds if it starts one), None takes it back (the
        request never got to a check: a malformed body)."""
        record = self._records.get(address)
        if record is None:
            return None
        record.in_flight = False
        if ok:
            del self._records[address]
            return None
        if ok is None:
            record.score = max(0.0, record.score - 1)
            return None
        # Rounded: a try right after a lockout ended still counts as one more (5 → 6).
        excess = round(record.score) - self._max_attempts
        if excess < 0:
            return None
        seconds = min(self._max_lockout_s, self._lockout_s * 2.0 ** min(excess, 40))
        now = self._clock()
        record.locked_until = now + seconds
        record.since = now
        return math.ceil(seconds)

    def failure(self, address: str) -> int | None:
        """Count a wrong try at once (begin and end); returns the lockout it starts."""
        if self.begin(address) is not None:
            return self.retry_after(address)
        return self.end(address, ok=False)

    def success(self, address: str) -> None:
        """A right password: forget the address's history."""
        self._records.pop(address, None)

    def locked(self) -> int:
        """How many addresses are locked out right now (for /metrics)."""
        now = self._clock()
        return sum(1 for r in self._records.values() if r.locked_until > now)

    def _prune(self, now: float, *, keep: str) -> None:
        """Forget addresses down to :data:`_PRUNE_TO` of the cap: first those whose
        tries have decayed away, then the oldest unlocked ones, and only when every one
        left is locked, the locks that end soonest."""
        target = int(self._max_addresses * _PRUNE_TO)

        def idle(key: str, record: _Record) -> bool:
            return key != keep and not record.in_flight and record.locked_until <= now

        for key, record in list(self._records.items()):
            if idle(key, record) and self._decayed(record, now) < _FORGOTTEN:
                del self._records[key]
        for key, record in list(self._records.items()):  # oldest first
            if len(self._records) <= target:
                return
            if idle(key, record):
                del self._records[key]
        if len(self._records) <= self._max_addresses:
            return
        locked = sorted(
            (r.locked_until, k) for k, r in self._records.items() if k != keep and not r.in_flight
        )
        for _, key in locked[: len(self._records) - target]:
            del self._records[key]
