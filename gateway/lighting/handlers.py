"""Control: the relay bank and the scheduler, built together, and their command handlers.

They are built as a pair because each needs the other: a relay whose power-on policy is
``schedule`` takes what the scheduler says for *now* before the first pin is driven, and
the scheduler hands every later change to the bank. Scheduled broadcasts go through the
Dispatcher like any other command (source ``schedule``), so they are logged the same way.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from gpiozero.pins.mock import MockFactory
from pydantic import BaseModel

from gateway.commands import (
    CommandError,
    Handler,
    RelayAutoArgs,
    RelaySetArgs,
    ScheduleSetArgs,
    Source,
)
from gateway.component import EventSink
from gateway.config import BroadcastSchedule, Settings
from gateway.lighting.bank import RelayBank, RelayError
from gateway.lighting.schedules import ScheduleError, Scheduler
from gateway.state import StateStore
from gateway.system import clock_synced

__all__ = ["Control"]

Dispatch = Callable[[dict[str, Any], Source], Awaitable[object]]


class Control:
    """Owns the RelayBank and the Scheduler of one daemon."""

    def __init__(
        self,
        settings: Settings,
        *,
        state: StateStore,
        on_event: EventSink,
        demo: bool,
    ) -> None:
        self._dispatch: Dispatch | None = None
        self._relay_names = set(settings.relays)
        self._timezone = settings.gateway.timezone
        wanted = os.environ.get("GPIOZERO_PIN_FACTORY", "lgpio")
        # The demo and the tests run on gpiozero's own mock pins, one factory per daemon.
        simulated = demo or wanted == "mock"
        gateway = settings.gateway
        self.relays = RelayBank(
            settings.relays,
            state_dir=gateway.state_dir,
            state=state,
            on_event=on_event,
            pin_factory=MockFactory() if simulated else None,
            expected_factory=None if simulated else wanted,
        )
        self.scheduler = Scheduler(
            settings.schedules,
            timezone=gateway.timezone,
            latitude=gateway.latitude,
            longitude=gateway.longitude,
            state_dir=gateway.state_dir,
            apply=self.relays.apply_schedule,
            play=self._play,
            clock_synced=clock_synced,
        )

    def open(self, dispatch: Dispatch) -> None:
        """Drive the pins for the first time (before READY); later broadcasts use ``dispatch``."""
        self._dispatch = dispatch
        self.relays.open(self.scheduler.desired_now())

    def close(self) -> None:
        """Each relay to its ``shutdown`` state; called on SIGTERM, not left to atexit."""
        self.relays.close()

    def handlers(self) -> dict[str, Handler]:
        """The relay and schedule command types."""
        return {
            "relay.set": self._relay_set,
            "relay.auto": self._relay_auto,
            "schedule.set": self._schedule_set,
        }

    async def _play(self, schedule: BroadcastSchedule, at: datetime) -> None:
        if self._dispatch is None:
            return
        args: dict[str, Any] = {"clip": schedule.clip, "priority": schedule.priority}
        if schedule.volume is not None:
            args["volume"] = schedule.volume
        command = {
            "id": f"schedule-{schedule.clip}-{int(at.timestamp())}",
            "type": "pa.play",
            "args": args,
        }
        await self._dispatch(command, "schedule")

    async def _relay_set(self, args: BaseModel, source: Source) -> dict[str, Any]:
        assert isinstance(args, RelaySetArgs)  # noqa: S101 - the dispatcher validated it
        try:
            return await self.relays.set(args.relay, args.on, for_s=args.for_s, source=source)
        except RelayError as exc:
            raise CommandError(exc.key, str(exc)) from exc

    async def _relay_auto(self, args: BaseModel, source: Source) -> dict[str, Any]:
        assert isinstance(args, RelayAutoArgs)  # noqa: S101 - the dispatcher validated it
        try:
            return await self.relays.auto(args.relay, source=source)
        except RelayError as exc:
            raise CommandError(exc.key, str(exc)) from exc

    async def _schedule_set(self, args: BaseModel, source: Source) -> dict[str, Any]:
        assert isinstance(args, ScheduleSetArgs)  # noqa: S101 - the dispatcher validated it
        if args.timezone is not None and args.timezone != self._timezone:
            raise CommandError(
                "bad_args",
                f"schedules are in the gateway's time zone {self._timezone}, not {args.timezone}",
                detail={
                    "reason": "timezone_mismatch",
                    "field": "timezone",
                    "timezone": self._timezone,
                },
            )
        try:
            await self.scheduler.replace(
                args.schedules, args.broadcasts, relay_names=self._relay_names
            )
        except ScheduleError as exc:
            raise _refusal(exc) from exc
        return {"relays": len(args.schedules), "broadcasts": len(args.broadcasts)}


def _refusal(error: ScheduleError) -> CommandError:
    """The reply to refused schedules: the first problem's detail, and every problem.

    The code stays PROTOCOL.md's: ``unknown_target`` when the first problem is a relay
    that does not exist, ``bad_args`` otherwise; ``detail.problems`` lists them all so a
    user interface can mark every wrong row at once.
    """
    first = error.problems[0]
    code = "unknown_target" if first.reason == "unknown_relay" else "bad_args"
    detail = first.detail()
    detail["problems"] = [problem.detail() for problem in error.problems]
    return CommandError(code, str(error), detail=detail)
