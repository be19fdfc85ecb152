"""Health with hysteresis: turn a stream of cycle outcomes into a calm state.

A *cycle* runs every probe of one target once and ends in one :class:`Outcome`: good,
failed (with the first failing probe's reason), or unjudged (the uplink is down and every
probe of the target needs it). :class:`Hysteresis` turns outcomes into a state:

- ``down`` after ``fail_threshold`` failed cycles in a row;
- ``up`` after ``recover_threshold`` good cycles in a row (from ``down`` or ``unknown``);
- ``degraded`` instead of ``up`` while :class:`Quality` finds the recent cycles too lossy,
  too slow or flapping (see the module constants); up ↔ degraded needs no count, the
  quality window is the smoothing;
- ``unknown`` at start and whenever a cycle cannot be judged.

Only a change of state is a :class:`Transition`; everything else is silent.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from itertools import pairwise
from typing import Literal

from gateway.hotspots.probes import percentile

__all__ = [
    "DEGRADED_LOSS_PCT",
    "DEGRADED_P95_MS",
    "FLAP_LIMIT",
    "QUALITY_CYCLES",
    "HealthState",
    "Hysteresis",
    "Outcome",
    "Quality",
    "Transition",
]

HealthState = Literal["up", "down", "degraded", "unknown"]

DEGRADED_LOSS_PCT = 20.0
"""Mean ICMP loss over the quality window at or above which a target is degraded."""
DEGRADED_P95_MS = 500.0
"""p95 round trip over the quality window at or above which a target is degraded."""
QUALITY_CYCLES = 5
"""How many recent cycles the quality judgement looks at."""
FLAP_LIMIT = 3
"""Good↔failed changes within the quality window that make a target degraded."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """The verdict of one cycle. ``ok`` None means "could not be judged"."""

    ok: bool | None
    reason: str | None = None
    rtts_ms: tuple[float, ...] = ()
    loss_pct: float | None = None


@dataclass(frozen=True, slots=True)
class Transition:
    """A change of state, the one thing that makes an event."""

    previous: HealthState
    state: HealthState
    reason: str | None


class Quality:
    """The last :data:`QUALITY_CYCLES` judged cycles, and whether they look degraded."""

    __slots__ = ("_cycles",)

    def __init__(self) -> None:
        self._cycles: deque[Outcome] = deque(maxlen=QUALITY_CYCLES)

    def add(self, outcome: Outcome) -> None:
        """Remember a judged cycle (unjudged ones are not quality data)."""
        if outcome.ok is not None:
            self._cycles.append(outcome)

    def clear(self) -> None:
        """Forget: a new period (after down or unknown) starts with a clean slate."""
        self._cycles.clear()

    def flips(self) -> int:
        """Good↔failed changes between consecutive cycles in the window."""
        oks = [cycle.ok for cycle in self._cycles]
        return sum(a != b for a, b in pairwise(oks))

    def degraded_reason(self) -> str | None:
        """Why the window is degraded ("flapping", "loss 33%", "p95 612 ms") or None."""
        if self.flips() >= FLAP_LIMIT:
            return "flapping"
        losses = [c.loss_pct for c in self._cycles if c.ok and c.loss_pct is not None]
        if losses and (loss := sum(losses) / len(losses)) >= DEGRADED_LOSS_PCT:
            return f"loss {loss:.0f}%"
        rtts = [rtt for c in self._cycles if c.ok for rtt in c.rtts_ms]
        p95 = percentile(rtts, 0.95)
        if p95 is not None and p95 >= DEGRADED_P95_MS:
            return f"p95 {p95:.0f} ms"
        return None


class Hysteresis:
    """The state of one target, moved only by enough agreeing cycles."""

    __slots__ = (
        "_fails",
        "_goods",
        "_last_ok",
        "fail_threshold",
        "flaps",
        "outages",
        "quality",
        "reason",
        "recover_threshold",
        "state",
    )

    def __init__(self, *, fail_threshold: int, recover_threshold: int) -> None:
        self.fail_threshold = fail_threshold
        self.recover_threshold = recover_threshold
        self.state: HealthState = "unknown"
        self.reason: str | None = "starting"
        self.flaps = 0
        """Good↔failed changes of consecutive judged cycles, ever (hysteresis hides them)."""
        self.outages = 0
        """Times the target went down."""
        self.quality = Quality()
        self._fails = 0
        self._goods = 0
        self._last_ok: bool | None = None

    def feed(self, outcome: Outcome) -> Transition | None:
        """Take one cycle's outcome; return the transition it caused, if any."""
        if outcome.ok is None:
            self._fails = self._goods = 0
            self.quality.clear()
            return self._move("unknown", outcome.reason)
        if self._last_ok is not None and self._last_ok != outcome.ok:
            self.flaps += 1
        self._last_ok = outcome.ok
        self.quality.add(outcome)
        if not outcome.ok:
            self._fails += 1
            self._goods = 0
            if self._fails >= self.fail_threshold:
                return self._move("down", outcome.reason)
            degraded = self.quality.degraded_reason()
            if self.state == "up" and degraded is not None:
                return self._move("degraded", degraded)
            return None
        self._goods += 1
        self._fails = 0
        degraded = self.quality.degraded_reason()
        target: HealthState = "degraded" if degraded is not None else "up"
        if self.state in {"down", "unknown"} and self._goods < self.recover_threshold:
            return None
        return self._move(target, degraded)

    def _move(self, state: HealthState, reason: str | None) -> Transition | None:
        if state == self.state:
            if state != "up":
                self.reason = reason  # a degraded or down target's reason may evolve
            return None
        transition = Transition(self.state, state, reason)
        self.state = state
        self.reason = reason
        if state == "down":
            self.outages += 1
        if state in {"down", "unknown"}:
            self.quality.clear()
        return transition
