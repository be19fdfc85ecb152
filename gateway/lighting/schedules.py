"""Schedules: relays follow intervals of desired state, broadcasts are moments.

A relay schedule says "on from ``sunset+10m`` to ``22:30``"; at any instant the desired
state of every scheduled relay can be computed from the clock alone, so after a boot, a
power cut or a clock jump a relay simply takes the state the schedule gives for *now*.
A broadcast schedule is a moment ("06:00 on weekdays"); one missed by less than
``schedules.grace_s`` plays late, an older one is skipped and logged.

The Pi has no real-time clock: it boots on a stale clock and jumps when NTP syncs. The
:class:`Scheduler` compares wall-clock and monotonic progress on every tick, re-evaluates
at once when they disagree, and keeps a high-water mark per broadcast on disk so that a
backwards jump (or a restart) never plays the same moment twice.

Sun times come from astral at the gateway's coordinates, in the gateway's time zone: with
astral's default (UTC) the dates shift and sunrise comes out after sunset in Vietnam, so
:class:`Sun` checks that sunrise is before sunset and refuses otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import astral.sun
from astral import Observer
from pydantic import BaseModel, ValidationError

from gateway.component import Component, Health
from gateway.config import BroadcastSchedule, RelaySchedule, SchedulesSection
from gateway.errors import ConfigProblem, GatewayError
from gateway.files import write_atomic
from gateway.log import get_logger

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
_EXPR = re.compile(r"^(?:(?P<h>[01]\d|2[0-3]):(?P<m>[0-5]\d)|(?P<sun>sunrise|sunset)"
                   r"(?:(?P<sign>[+-])(?P<off>\d{1,3})m)?)$")  # fmt: skip
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

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        lines = [f"invalid schedules ({len(problems)} problem(s)):"]
        lines += [f"  - {problem}" for problem in problems]
        super().__init__("\n".join(lines))


class SunError(GatewayError, ValueError):
    """Sun times at this place and date are missing or implausible (sunrise after sunset)."""

    key = "schedules.sun"


@dataclass(frozen=True, slots=True)
class SunTimes:
    """Sunrise and sunset of one local day, aware, in the gateway's time zone."""

    sunrise: datetime
    sunset: datetime


class Sun:
    """Sunrise and sunset at one place, computed by astral in the place's own time zone."""

    __slots__ = ("_cache", "_observer", "tz")

    def __init__(self, *, latitude: float, longitude: float, timezone: str | tzinfo) -> None:
        self.tz: tzinfo = ZoneInfo(timezone) if isinstance(timezone, str) else timezone
        self._observer = Observer(latitude=latitude, longitude=longitude)
        self._cache: dict[date, SunTimes] = {}

    def times(self, day: date) -> SunTimes:
        """Sunrise and sunset of the local ``day``; raises :class:`SunError` if implausible."""
        cached = self._cache.get(day)
        if cached is not None:
            return cached
        where = f"({self._observer.latitude}, {self._observer.longitude}) on {day}"
        try:
            # The tz must be passed: astral's default is UTC, which shifts the day.
            found = astral.sun.sun(self._observer, date=day, tzinfo=self.tz)
        except ValueError as exc:
            raise SunError(f"no sunrise or sunset at {where}: {exc}") from None
        times = SunTimes(sunrise=found["sunrise"], sunset=found["sunset"])
        if not times.sunrise < times.sunset:
            _log.error(
                "sun.implausible",
                day=day.isoformat(),
                sunrise=times.sunrise.isoformat(),
                sunset=times.sunset.isoformat(),
                tz=str(self.tz),
            )
            raise SunError(
                f"sunrise {times.sunrise.isoformat()} is not before sunset "
                f"{times.sunset.isoformat()} at {where} in time zone {self.tz}; "
                "is the time zone right?"
            )
        if len(self._cache) >= 64:
            self._cache.clear()
        self._cache[day] = times
        return times


def resolve(expr: str, day: date, sun: Sun) -> datetime:
    """The instant ``expr`` ("HH:MM", "sunset+10m", "sunrise-15m") names on the local ``day``."""
    match = _EXPR.fullmatch(expr)
    if match is None:
        raise ScheduleError([ConfigProblem(repr(expr), "not a time of day")])
    if match["h"] is not None:
        return datetime(
            day.year, day.month, day.day, int(match["h"]), int(match["m"]), tzinfo=sun.tz
        )
    times = sun.times(day)
    base = times.sunrise if match["sun"] == "sunrise" else times.sunset
    minutes = int(match["off"] or 0) * (-1 if match["sign"] == "-" else 1)
    return (base + timedelta(minutes=minutes)).replace(microsecond=0)


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


_empty_logged = _Once()


def _weekday(day: date) -> str:
    return _WEEKDAYS[day.weekday()]


def _intervals(
    schedules: Sequence[RelaySchedule], day: date, sun: Sun
) -> list[tuple[str, datetime, datetime]]:
    """The non-empty ``[on, off)`` intervals of ``day``, as (relay, on, off)."""
    found = []
    for schedule in schedules:
        if _weekday(day) not in schedule.days:
            continue
        on, off = resolve(schedule.on, day, sun), resolve(schedule.off, day, sun)
        if off <= on:
            if _empty_logged.first((schedule.relay, schedule.on, schedule.off, day)):
                _log.warning(
                    "schedule.empty",
                    relay=schedule.relay,
                    on=schedule.on,
                    off=schedule.off,
                    day=day.isoformat(),
                    resolved_on=on.isoformat(),
                    resolved_off=off.isoformat(),
                )
            continue
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
    for relay, on, off in _intervals(schedules, local.date(), sun):
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
    for offset in range(HORIZON_DAYS + 1):
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


_Model = TypeVar("_Model", bound=BaseModel)


def _validate_list(
    model: type[_Model], items: Sequence[_Model | Mapping[str, Any]], where: str
) -> tuple[list[tuple[int, _Model]], list[ConfigProblem]]:
    """Validate every item; return the valid ones with their index, and every problem."""
    valid: list[tuple[int, _Model]] = []
    problems = []
    for index, item in enumerate(items):
        try:
            valid.append((index, item if isinstance(item, model) else model.model_validate(item)))
        except ValidationError as exc:
            for error in exc.errors(include_url=False):
                key = ".".join([where, str(index), *(str(part) for part in error["loc"])])
                message = error["msg"].removeprefix("Value error, ")
                if error["type"] == "extra_forbidden":
                    message = "unknown key"
                elif error["type"] not in {"value_error", "missing"}:
                    message += f" (got {error['input']!r})"
                problems.append(ConfigProblem(key, message))
    return valid, problems


def _never_on(schedule: RelaySchedule, sun: Sun, today: date) -> bool:
    """True when the interval is empty on every day of the coming year (e.g. sunset→sunrise)."""
    for offset in range(0, 366, 7):
        day = today + timedelta(days=offset)
        if resolve(schedule.off, day, sun) > resolve(schedule.on, day, sun):
            return False
    return True


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
        self._relays: list[RelaySchedule] = list(section.relays)
        self._broadcasts: list[BroadcastSchedule] = list(section.broadcasts)
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
        relays, problems = _validate_list(RelaySchedule, raw.get("relays", []), "relays")
        broadcasts, more = _validate_list(
            BroadcastSchedule, raw.get("broadcasts", []), "broadcasts"
        )
        if problems or more:
            _log.error(
                "schedules.load_failed",
                path=str(self._schedules_path),
                error=str(ScheduleError(problems + more)),
            )
            return
        self._relays = [item for _, item in relays]
        self._broadcasts = [item for _, item in broadcasts]
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
    ) -> tuple[list[RelaySchedule], list[BroadcastSchedule]]:
        """Check a whole new set of schedules; raise :class:`ScheduleError` listing all problems."""
        valid_relays, problems = _validate_list(RelaySchedule, relays, "relays")
        valid_broadcasts, more = _validate_list(BroadcastSchedule, broadcasts, "broadcasts")
        problems += more
        today = self.now().date()
        for index, schedule in valid_relays:
            if _never_on(schedule, self._sun, today):
                problems.append(
                    ConfigProblem(
                        f"relays.{index}",
                        f"off ({schedule.off}) is never after on ({schedule.on}) here; an "
                        "interval does not cross midnight: use two entries",
                    )
                )
        if problems:
            raise ScheduleError(problems)
        return [item for _, item in valid_relays], [item for _, item in valid_broadcasts]

    async def replace(
        self,
        relays: Sequence[RelaySchedule | Mapping[str, Any]],
        broadcasts: Sequence[BroadcastSchedule | Mapping[str, Any]],
    ) -> None:
        """Replace every schedule at once (``schedule.set``), persist, re-evaluate now.

        Invalid input raises :class:`ScheduleError` and changes nothing.
        """
        new_relays, new_broadcasts = self.validate(relays, broadcasts)
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
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=delay)

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
        self._next = next_change(self._relays, now, self._sun)
        delay = self._tick_s
        if self._next is not None:
            delay = min(delay, max(0.0, (self._next - now).total_seconds()))
        return delay

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
