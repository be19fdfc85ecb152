"""Schedules: relays follow intervals of desired state, broadcasts are moments.

A relay schedule says "on from ``sunset+10m`` to ``22:30``" (or "from ``hoàng hôn`` to
``05:00``": an ``off`` before ``on`` ends the next morning, so one row lights the night);
at any instant the desired state of every scheduled relay can be computed from the clock
alone, so after a boot, a power cut or a clock jump a relay simply takes the state the
schedule gives for *now*, also after midnight inside yesterday's interval. What a valid
schedule is lives in :mod:`gateway.schedule_rules`, shared with the configuration.
A broadcast schedule is a moment ("06:00 on weekdays"); one missed by less than
``schedules.grace_s`` plays late, an older one is skipped and logged.

The Pi has no real-time clock: it boots on a stale clock and jumps when NTP syncs. The
:class:`Scheduler` compares wall-clock and monotonic progress on every tick, re-evaluates
at once when they disagree, and keeps a high-water mark per broadcast on disk so that a
backwards jump (or a restart) never plays the same moment twice.

Sun times come from astral at the gateway's coordinates, in the gateway's time zone (see
:class:`~gateway.schedule_rules.Sun`, which refuses astral's UTC trap).
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from gateway.component import Component, Health, wait_for_event
from gateway.config import BroadcastSchedule, RelaySchedule, SchedulesSection
from gateway.errors import GatewayError
from gateway.files import write_atomic
from gateway.log import get_logger
from gateway.schedule_rules import (
    RuleProblem,
    Sun,
    SunError,
    SunTimes,
    TimeFormatError,
    TimeOfDay,
    check_schedules,
    parse_time,
)

__all__ = [
    "Due",
    "ScheduleError",
    "Scheduler",
    "Sun",
    "SunError",
    "SunTimes",
    "desired_states",
    "due_broadcasts",
    "next_change",
    "resolve",
]

_log = get_logger("schedules")

_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
HORIZON_DAYS = 8
"""How far :func:`next_change` looks ahead, and how far back a forward jump is examined."""
ON_TIME_S = 2.0
"""A broadcast started within this many seconds of its moment is on time, not late."""
JUMP_S = 5.0
"""Wall and monotonic clocks disagreeing by more than this over one tick is a jump."""
_FUTURE_MARK = timedelta(days=1)
"""A played-mark further ahead of the clock than this was written by a wrong clock."""


class ScheduleError(GatewayError, ValueError):
    """Schedules given to :meth:`Scheduler.replace` are invalid; lists every problem."""

    key = "bad_args"

    def __init__(self, problems: list[RuleProblem]) -> None:
        self.problems = problems
        lines = [f"invalid schedules ({len(problems)} problem(s)):"]
        lines += [f"  - {problem}" for problem in problems]
        super().__init__("\n".join(lines))


_HOUR = timedelta(hours=1)


@functools.lru_cache(maxsize=512)
def _parsed(expr: str) -> TimeOfDay:
    return parse_time(expr)


def resolve(expr: str, day: date, sun: Sun) -> datetime:
    """The instant ``expr`` ("HH:MM", "sunset+10m", "hoàng hôn + 10 phút") names on the
    local ``day``."""
    try:
        return _parsed(expr).resolve(day, sun)
    except TimeFormatError as exc:
        raise ScheduleError([RuleProblem(exc.reason, "time", None, None, str(exc))]) from None


class _Once:
    """Remembers keys already logged, so a recurring condition is logged once."""

    __slots__ = ("_seen",)

    def __init__(self) -> None:
        self._seen: set[object] = set()

    def first(self, key: object) -> bool:
        if key in self._seen:
            return False
        if len(self._seen) >= 1024:
            self._seen.clear()
        self._seen.add(key)
        return True


def _weekday(day: date) -> str:
    return _WEEKDAYS[day.weekday()]


def _intervals(
    schedules: Sequence[RelaySchedule], day: date, sun: Sun
) -> list[tuple[str, datetime, datetime]]:
    """The ``[on, off)`` intervals that start on ``day``, as (relay, on, off); an off
    that is not after its on is the next morning's (the interval crosses midnight)."""
    found = []
    for schedule in schedules:
        if _weekday(day) not in schedule.days:
            continue
        on, off = resolve(schedule.on, day, sun), resolve(schedule.off, day, sun)
        if off <= on:
            off = resolve(schedule.off, day + timedelta(days=1), sun)
        found.append((schedule.relay, on, off))
    return found


def _local(at: datetime, sun: Sun) -> datetime:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"an aware datetime is needed, got {at.isoformat()}")
    return at.astimezone(sun.tz)


def desired_states(
    schedules: Sequence[RelaySchedule],
    at: datetime,
    sun: Sun,
    relay_names: Collection[str] | None = None,
) -> dict[str, bool]:
    """For every relay with a schedule (and in ``relay_names`` if given): on at ``at``?"""
    local = _local(at, sun)
    names = {schedule.relay for schedule in schedules}
    if relay_names is not None:
        names &= set(relay_names)
    desired = dict.fromkeys(sorted(names), False)
    for start in (local.date() - timedelta(days=1), local.date()):  # yesterday's may run on
        for relay, on, off in _intervals(schedules, start, sun):
            if relay in desired and on <= local < off:
                desired[relay] = True
    return desired


def next_change(schedules: Sequence[RelaySchedule], after: datetime, sun: Sun) -> datetime | None:
    """The first instant after ``after`` where some relay's desired state changes.

    Looks ahead :data:`HORIZON_DAYS` days; None when nothing changes in that time.
    Touching intervals of one relay (18:00-20:00, 20:00-22:00) make no change at 20:00.
    """
    local = _local(after, sun)
    spans: dict[str, list[tuple[datetime, datetime]]] = {}
    edges: set[datetime] = set()
    for offset in range(-1, HORIZON_DAYS + 1):
        for relay, on, off in _intervals(schedules, local.date() + timedelta(days=offset), sun):
            spans.setdefault(relay, []).append((on, off))
            edges.update(edge for edge in (on, off) if edge > local)
    for edge in sorted(edges):
        for relay_spans in spans.values():
            before = any(on < edge <= off for on, off in relay_spans)
            at = any(on <= edge < off for on, off in relay_spans)
            if before != at:
                return edge
    return None


@dataclass(frozen=True, slots=True)
class Due:
    """A broadcast moment to play now: ``late`` when it is played after its moment."""

    schedule: BroadcastSchedule
    at: datetime
    late: bool
    late_s: float


def due_broadcasts(
    broadcasts: Sequence[BroadcastSchedule],
    since: datetime,
    until: datetime,
    sun: Sun,
    grace_s: float,
) -> list[Due]:
    """The moments in ``(since, until]`` to play at ``until``, oldest first.

    A moment missed by at most ``grace_s`` plays late; an older one is skipped and logged.
    Only the last :data:`HORIZON_DAYS` days before ``until`` are examined.
    """
    start, end = _local(since, sun), _local(until, sun)
    if end <= start:
        return []
    first = max(start.date(), end.date() - timedelta(days=HORIZON_DAYS))
    due = []
    for offset in range((end.date() - first).days + 1):
        day = first + timedelta(days=offset)
        for schedule in broadcasts:
            if _weekday(day) not in schedule.days:
                continue
            moment = resolve(schedule.at, day, sun)
            if not start < moment <= end:
                continue
            missed_s = (end - moment).total_seconds()
            if missed_s <= max(grace_s, ON_TIME_S):
                due.append(Due(schedule, moment, missed_s > ON_TIME_S, missed_s))
            else:
                _log.warning(
                    "broadcast.skipped",
                    clip=schedule.clip,
                    at=moment.isoformat(),
                    missed_by_s=round(missed_s, 1),
                    grace_s=grace_s,
                )
    return sorted(due, key=lambda item: item.at)


def _write_json_atomic(path: Path, data: object) -> None:
    """Replace ``path`` with ``data`` as JSON so a power cut leaves the old or the new file."""
    write_atomic(path, json.dumps(data, ensure_ascii=False, indent=1, sort_keys=True))


def _broadcast_key(schedule: BroadcastSchedule) -> str:
    return json.dumps(schedule.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))


class Scheduler(Component):
    """Drives the relays' desired state and the scheduled broadcasts from the clock.

    ``apply`` receives the full desired map (relay name → on) at start, at every change,
    after a clock jump, after :meth:`replace` and when a hold ends; ``play`` receives a
    due broadcast and its moment. Time comes from ``wall`` and ``monotonic`` only.
    """

    name = "schedules"
    critical = False
    heartbeat_timeout_s = 60.0

    def __init__(
        self,
        section: SchedulesSection,
        *,
        timezone: str,
        latitude: float,
        longitude: float,
        state_dir: Path,
        apply: Callable[[dict[str, bool]], Awaitable[None]],
        play: Callable[[BroadcastSchedule, datetime], Awaitable[None]],
        clock_synced: Callable[[], bool],
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        tick_s: float = 1.0,
    ) -> None:
        self._section = section
        self._sun = Sun(latitude=latitude, longitude=longitude, timezone=timezone)
        self._schedules_path = Path(state_dir) / "schedules.json"
        self._played_path = Path(state_dir) / "broadcasts.json"
        self._apply = apply
        self._play = play
        self._clock_synced = clock_synced
        self._wall = wall
        self._monotonic = monotonic
        self._tick_s = tick_s
        self._wake = asyncio.Event()
        # The configuration was judged by the same rules; this puts it in canonical form
        # (and refuses a section built without load_settings that breaks them).
        self._relays, self._broadcasts = self.validate(section.relays, section.broadcasts)
        self._source = "config"
        self._load_schedules()
        self._played: dict[str, datetime] = self._load_played()
        self._future_logged = _Once()
        self._applied: dict[str, bool] | None = None
        self._dirty = True
        self._holding = False
        self._checked_until: datetime | None = None
        self._readings: tuple[float, float] | None = None
        self._last_jump_s: float | None = None
        self._next: datetime | None = None
        self._next_known: tuple[object, datetime, datetime | None] | None = None

    # -- persistence -------------------------------------------------------------------

    def _load_schedules(self) -> None:
        try:
            raw = json.loads(self._schedules_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            _log.error("schedules.load_failed", path=str(self._schedules_path), error=str(exc))
            return
        if not isinstance(raw, dict):
            _log.error(
                "schedules.load_failed", path=str(self._schedules_path), error="not an object"
            )
            return
        try:
            relays, broadcasts = self.validate(raw.get("relays", []), raw.get("broadcasts", []))
        except ScheduleError as exc:
            _log.error("schedules.load_failed", path=str(self._schedules_path), error=str(exc))
            return
        self._relays, self._broadcasts = relays, broadcasts
        self._source = "command"

    def _load_played(self) -> dict[str, datetime]:
        try:
            raw = json.loads(self._played_path.read_text(encoding="utf-8"))
            return {key: datetime.fromisoformat(at) for key, at in raw["played"].items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            _log.error("broadcasts.load_failed", path=str(self._played_path), error=str(exc))
            return {}

    def _save_played(self, now: datetime) -> None:
        oldest = now - timedelta(days=HORIZON_DAYS)
        self._played = {key: at for key, at in self._played.items() if at >= oldest}
        data = {"played": {key: at.isoformat() for key, at in self._played.items()}}
        _write_json_atomic(self._played_path, data)

    # -- public surface ----------------------------------------------------------------

    @property
    def holding(self) -> bool:
        """True while ``when_unsynced = "hold"`` keeps the schedule from acting."""
        return self._section.when_unsynced == "hold" and not self._clock_synced()

    @property
    def relays(self) -> list[RelaySchedule]:
        """The relay schedules in force."""
        return list(self._relays)

    @property
    def broadcasts(self) -> list[BroadcastSchedule]:
        """The broadcast schedules in force."""
        return list(self._broadcasts)

    def now(self) -> datetime:
        """The wall clock as an aware datetime in the gateway's time zone."""
        return datetime.fromtimestamp(self._wall(), self._sun.tz)

    def desired_now(self) -> dict[str, bool]:
        """What the schedules want for each scheduled relay right now (for power_on=schedule).

        This is the schedule's answer on the clock there is; check :attr:`holding` to
        know whether the scheduler itself would act on it.
        """
        return desired_states(self._relays, self.now(), self._sun)

    def validate(
        self,
        relays: Sequence[RelaySchedule | Mapping[str, Any]],
        broadcasts: Sequence[BroadcastSchedule | Mapping[str, Any]],
        *,
        relay_names: Collection[str] | None = None,
    ) -> tuple[list[RelaySchedule], list[BroadcastSchedule]]:
        """Check a whole new set of schedules by :func:`~gateway.schedule_rules.check_schedules`
        (the configuration's rules too) and return it in canonical form; raise
        :class:`ScheduleError` listing every problem. ``relay_names``: the relays there are."""
        verdict = check_schedules(
            relays, broadcasts, sun=self._sun, today=self.now().date(), relay_names=relay_names
        )
        if verdict.problems:
            raise ScheduleError(verdict.problems)
        try:
            return (
                [RelaySchedule.model_validate(row) for row in verdict.relays],
                [BroadcastSchedule.model_validate(row) for row in verdict.broadcasts],
            )
        except ValidationError as exc:  # the rules let through what the models refuse: a bug
            raise ScheduleError(
                [RuleProblem("bad_value", "schedules", None, None, str(exc))]
            ) from None

    async def replace(
        self,
        relays: Sequence[RelaySchedule | Mapping[str, Any]],
        broadcasts: Sequence[BroadcastSchedule | Mapping[str, Any]],
        *,
        relay_names: Collection[str] | None = None,
    ) -> None:
        """Replace every schedule at once (``schedule.set``), persist, re-evaluate now.

        Invalid input raises :class:`ScheduleError` and changes nothing.
        """
        # A year of sun times for up to 200 rows is a fraction of a second on a Pi:
        # judged in a thread, so relays and the PA are not held up meanwhile.
        new_relays, new_broadcasts = await asyncio.to_thread(
            functools.partial(self.validate, relays, broadcasts, relay_names=relay_names)
        )
        data = {
            "relays": [item.model_dump(mode="json") for item in new_relays],
            "broadcasts": [item.model_dump(mode="json") for item in new_broadcasts],
        }
        await asyncio.to_thread(_write_json_atomic, self._schedules_path, data)
        self._relays, self._broadcasts, self._source = new_relays, new_broadcasts, "command"
        self._dirty = True
        self._wake.set()
        _log.info("schedules.replaced", relays=len(new_relays), broadcasts=len(new_broadcasts))

    def snapshot(self) -> dict[str, Any]:
        """The state of the schedules for status pages and the state topic."""
        return {
            "source": self._source,
            "relays": len(self._relays),
            "broadcasts": len(self._broadcasts),
            "when_unsynced": self._section.when_unsynced,
            "clock_synced": self._clock_synced(),
            "holding": self._holding,
            "desired": dict(self._applied) if self._applied is not None else None,
            "next_change": self._next.isoformat() if self._next is not None else None,
            "last_jump_s": self._last_jump_s,
        }

    # -- the loop ----------------------------------------------------------------------

    async def run(self, health: Health) -> None:
        """Evaluate, then sleep until the next change, a tick, or :meth:`replace`."""
        self._dirty = True
        while True:
            self._wake.clear()
            delay = await self.step()
            health.beat()
            await wait_for_event(self._wake, delay)

    async def step(self) -> float:
        """One evaluation on the current clock; returns the seconds until the next one."""
        wall, mono = self._wall(), self._monotonic()
        jumped = self._detect_jump(wall, mono)
        now = datetime.fromtimestamp(wall, self._sun.tz)
        grace = timedelta(seconds=max(self._section.grace_s, ON_TIME_S))
        if self._checked_until is None:
            self._checked_until = now - grace
        elif now < self._checked_until:
            self._checked_until = now  # went back: the played-marks guard against repeats
        holding = self.holding
        if holding != self._holding:
            self._holding = holding
            if holding:
                _log.warning("schedules.held", reason="clock not synchronised")
            else:
                _log.info("schedules.resumed")
                self._dirty = True
        if holding:
            self._checked_until = now
        else:
            desired = desired_states(self._relays, now, self._sun)
            if self._dirty or jumped or desired != self._applied:
                self._applied, self._dirty = desired, False
                await self._apply(desired)
                _log.info("schedules.applied", desired=desired, at=now.isoformat())
            await self._fire(now)
        self._next = self._next_change(now, jumped=jumped)
        delay = self._tick_s
        if self._next is not None:
            delay = min(delay, max(0.0, (self._next - now).total_seconds()))
        return delay

    def _next_change(self, now: datetime, *, jumped: bool) -> datetime | None:
        """:func:`next_change`, worked out again only when the answer may have moved.

        The scheduler steps every second (broadcast moments, clock jumps); looking days
        ahead through every row at each step was most of an idle gateway's CPU. The
        answer stands until that moment passes, the rows are replaced or the clock
        jumps (or, when nothing changes within the horizon, for an hour).
        """
        known = self._next_known
        if known is not None and not jumped:
            rows, computed_at, found = known
            still = rows is self._relays and computed_at <= now
            if still and (now < found if found is not None else now - computed_at < _HOUR):
                return found
        found = next_change(self._relays, now, self._sun)
        self._next_known = (self._relays, now, found)
        return found

    def _detect_jump(self, wall: float, mono: float) -> bool:
        previous, self._readings = self._readings, (wall, mono)
        if previous is None:
            return False
        jump_s = (wall - previous[0]) - (mono - previous[1])
        if abs(jump_s) <= JUMP_S:
            return False
        self._last_jump_s = round(jump_s, 1)
        _log.warning("clock.jumped", jump_s=self._last_jump_s)
        return True

    async def _fire(self, now: datetime) -> None:
        since = self._checked_until or now
        for schedule in self._broadcasts:
            key = _broadcast_key(schedule)
            mark = self._played.get(key)
            if mark is not None and mark > now + _FUTURE_MARK:
                if self._future_logged.first(key):
                    _log.warning(
                        "broadcast.mark_ignored", clip=schedule.clip, mark=mark.isoformat()
                    )
                mark = None
            start = since if mark is None else max(since, mark)
            for due in due_broadcasts([schedule], start, now, self._sun, self._section.grace_s):
                # Mark before playing: after a crash a moment is lost rather than repeated.
                self._played[key] = due.at
                await asyncio.to_thread(self._save_played, now)
                _log.info(
                    "broadcast.due", clip=schedule.clip, at=due.at.isoformat(), late_s=due.late_s
                )
                try:
                    await self._play(schedule, due.at)
                except Exception as exc:  # one failed clip must not stop the schedule
                    _log.error("broadcast.failed", clip=schedule.clip, error=str(exc))
        self._checked_until = now
