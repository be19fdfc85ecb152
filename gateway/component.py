"""Components and their supervision: one crashing part must not take the others down.

A :class:`Component` owns one piece of the gateway (the relays, the hotspot monitor, the
MQTT link …) and runs as one long-lived coroutine. :func:`supervise` runs it, restarts it
with capped exponential backoff when it raises, and keeps a :class:`Health` record that
``/healthz``, ``/metrics`` and the systemd watchdog read. A *critical* component that is
down or hung stops the watchdog pings, so systemd restarts the whole daemon; a
non-critical one is only reported.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from gateway.log import get_logger

if TYPE_CHECKING:
    from gateway.config import Settings

__all__ = ["Backoff", "Component", "EventSink", "Health", "supervise", "wait_for_event"]

Clock = Callable[[], float]
EventSink = Callable[[dict[str, Any]], None]
"""Where a component sends its events: :meth:`gateway.events.EventHub.emit`. Synchronous
on purpose: a component never waits for storage (the hub queues, the outbox commits off
the event loop), so a relay switch is not held up by a disk."""
State = Literal["starting", "running", "backoff", "stopped"]


async def wait_for_event(event: asyncio.Event, timeout_s: float) -> bool:
    """Wait until ``event`` is set or ``timeout_s`` has passed; True if it was set.

    What a component's loop does between two rounds, so an idle daemon does it most
    often. ``asyncio.wait_for`` wraps ``event.wait()`` in a task of its own, and its
    timeout then cancels that task and waits for it: four turns of the loop and a task
    object per round. A timeout around the wait in this task takes one timer and two.
    """
    try:
        async with asyncio.timeout(timeout_s):
            await event.wait()
    except TimeoutError:
        return False
    return True


@dataclass(slots=True)
class Health:
    """What the supervisor knows about one component."""

    name: str
    critical: bool
    heartbeat_timeout_s: float | None
    clock: Clock = time.monotonic
    state: State = "starting"
    restarts: int = 0
    last_error: str | None = None
    last_beat: float = field(default=0.0)

    def beat(self) -> None:
        """Called by the component from its loop: "I am still making progress"."""
        self.last_beat = self.clock()

    def problem(self) -> str | None:
        """Why this component is not healthy, or None when it is."""
        if self.state != "running":
            return f"{self.name} {self.state}"
        timeout = self.heartbeat_timeout_s
        if timeout is not None and self.clock() - self.last_beat > timeout:
            return f"{self.name} hung ({self.clock() - self.last_beat:.0f}s without progress)"
        return None

    def as_dict(self) -> dict[str, object]:
        """The JSON form shown by ``/healthz``."""
        return {
            "state": self.state,
            "healthy": self.problem() is None,
            "critical": self.critical,
            "restarts": self.restarts,
            "last_error": self.last_error,
        }


class Component(ABC):
    """One long-running part of the daemon.

    Subclasses set ``name`` and ``critical`` and implement :meth:`run`, which calls
    ``health.beat()`` at least every ``heartbeat_timeout_s`` seconds when that is set.
    """

    name: str
    critical: bool = False
    heartbeat_timeout_s: float | None = None

    @abstractmethod
    async def run(self, health: Health) -> None:
        """Do the work until cancelled. Raising makes the supervisor restart it."""

    def summary(self) -> str | None:
        """A few words for systemd's STATUS line ("4/5 hotspots up"), or None."""
        return None

    async def reload(self, settings: Settings) -> list[str]:
        """Apply a new configuration; return the changed keys that need a restart."""
        del settings
        return []


@dataclass(slots=True)
class Backoff:
    """Capped exponential delays: 1, 2, 4 … up to ``cap`` seconds."""

    initial_s: float = 1.0
    cap_s: float = 30.0
    healthy_after_s: float = 60.0
    """A run that lasted this long resets the delay to ``initial_s``."""

    def delay(self, attempt: int) -> float:
        """Delay before restart number ``attempt`` (1-based) in a row."""
        return float(min(self.cap_s, self.initial_s * 2 ** (attempt - 1)))


async def supervise(
    component: Component,
    health: Health,
    *,
    backoff: Backoff | None = None,
    clock: Clock = time.monotonic,
) -> None:
    """Run ``component`` forever, restarting it after each crash. Ends when cancelled."""
    backoff = backoff or Backoff()
    log = get_logger("supervisor", target=component.name)
    in_a_row = 0
    while True:
        health.state = "running"
        health.beat()
        started = clock()
        try:
            await component.run(health)
        except asyncio.CancelledError:
            health.state = "stopped"
            raise
        except Exception as exc:  # the point is to survive any crash
            error = f"{type(exc).__name__}: {exc}"
            log.error("component.crashed", error=error, exc_info=exc)
        else:
            error = "returned unexpectedly"
            log.error("component.crashed", error=error)
        health.last_error = error
        in_a_row = 1 if clock() - started >= backoff.healthy_after_s else in_a_row + 1
        delay = backoff.delay(in_a_row)
        health.state = "backoff"
        health.restarts += 1
        log.warning("component.restarting", in_s=delay, restarts=health.restarts)
        await asyncio.sleep(delay)
