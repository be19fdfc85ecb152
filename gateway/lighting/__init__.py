"""Lighting: the relay bank on gpiozero, its schedules, and their command handlers.

- :mod:`gateway.lighting.bank`: the relays themselves (power-on policies, timers,
  minimum interval, interlocks, the boot-glitch guard, the state file), and the
  narrow :meth:`~gateway.lighting.bank.RelayBank.drive` port the PA's amplifier uses.
- :mod:`gateway.lighting.schedules`: intervals of desired state and broadcast moments.
- :mod:`gateway.lighting.handlers`: builds the bank and the scheduler as a pair
  (:class:`Control`) and serves ``relay.set``, ``relay.auto`` and ``schedule.set``.
"""

from gateway.lighting.bank import RelayBank, RelayError
from gateway.lighting.handlers import Control
from gateway.lighting.schedules import ScheduleError, Scheduler

__all__ = ["Control", "RelayBank", "RelayError", "ScheduleError", "Scheduler"]
