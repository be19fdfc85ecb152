"""Schedules: sun times at Ha Tinh, desired relay states, broadcasts, clock jumps, the
words a village head types, nights across midnight, and one rule for config and command."""

from __future__ import annotations

import asyncio
import json
import unicodedata
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import astral.sun
import pytest
from astral import Observer
from gpiozero.pins.mock import MockFactory
from structlog.testing import capture_logs

from gateway.cli import main as cli_main
from gateway.commands import Dispatcher
from gateway.component import Health
from gateway.config import (
    BroadcastSchedule,
    RelayConfig,
    RelaySchedule,
    SchedulesSection,
    load_settings,
)
from gateway.errors import ConfigError
from gateway.events import EventHub
from gateway.lighting.bank import RelayBank
from gateway.lighting.handlers import Control
from gateway.lighting.schedules import (
    ScheduleError,
    Scheduler,
    Sun,
    SunError,
    desired_states,
    due_broadcasts,
    next_change,
    resolve,
)
from gateway.outbox import Outbox
from gateway.schedule_rules import WEEKDAYS, TimeFormatError, parse_time
from gateway.state import StateStore

LAT, LON, ZONE = 18.34, 105.9, "Asia/Ho_Chi_Minh"
TZ = ZoneInfo(ZONE)
NIGHT = [
    RelaySchedule(relay="street", on="sunset+10m", off="22:30"),
    RelaySchedule(relay="street", on="04:45", off="sunrise-15m"),
]
YARD = RelaySchedule(
    relay="yard", on="18:00", off="20:00", days=["mon", "tue", "wed", "thu", "fri"]
)
NEWS = BroadcastSchedule(at="06:00", clip="morning-news")


def at(day: date, hh: int, mm: int, ss: int = 0) -> datetime:
    """An aware local instant at Ha Tinh."""
    return datetime(day.year, day.month, day.day, hh, mm, ss, tzinfo=TZ)


MONDAY = date(2026, 12, 21)  # winter solstice: sunset 17:25:03, sunrise 06:23:36
SUNDAY = date(2026, 12, 20)


@pytest.fixture
def sun() -> Sun:
    """The sun over the village."""
    return Sun(latitude=LAT, longitude=LON, timezone=ZONE)


@dataclass
class FakeClock:
    """A wall clock that can jump and a monotonic clock that cannot."""

    wall_s: float
    mono_s: float = 5_000.0

    def wall(self) -> float:
        return self.wall_s

    def monotonic(self) -> float:
        return self.mono_s

    def advance(self, seconds: float) -> None:
        """Time passes: both clocks move."""
        self.wall_s += seconds
        self.mono_s += seconds

    def jump(self, seconds: float) -> None:
        """The wall clock is stepped (NTP sync, an operator): monotonic does not move."""
        self.wall_s += seconds


@dataclass
class Rig:
    """Everything a Scheduler talks to, recorded."""

    clock: FakeClock
    state_dir: Path
    synced: bool = True
    applied: list[dict[str, bool]] = field(default_factory=list)
    played: list[tuple[str, datetime]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def apply(self, desired: dict[str, bool]) -> None:
        self.applied.append(dict(desired))
        self.changed.set()

    async def play(self, schedule: BroadcastSchedule, moment: datetime) -> None:
        self.played.append((schedule.clip, moment))
        self.changed.set()

    def make(self, section: SchedulesSection, *, tick_s: float = 0.01) -> Scheduler:
        return Scheduler(
            section,
            timezone=ZONE,
            latitude=LAT,
            longitude=LON,
            state_dir=self.state_dir,
            apply=self.apply,
            play=self.play,
            clock_synced=lambda: self.synced,
            wall=self.clock.wall,
            monotonic=self.clock.monotonic,
            tick_s=tick_s,
        )


def rig_at(moment: datetime, state_dir: Path) -> Rig:
    return Rig(clock=FakeClock(moment.timestamp()), state_dir=state_dir)


async def eventually(rig: Rig, condition: Callable[[], bool], timeout_s: float = 2.0) -> None:
    """Wait (in real time, briefly) until the scheduler's calls make ``condition`` hold."""
    async with asyncio.timeout(timeout_s):
        while not condition():
            rig.changed.clear()
            await rig.changed.wait()


def events(logs: Iterable[Mapping[str, Any]], name: str) -> list[Mapping[str, Any]]:
    return [line for line in logs if line["event"] == name]


class TestSun:
    @pytest.mark.parametrize(
        "day",
        [date(2026, 6, 21), date(2026, 12, 21), date(2026, 3, 20)],
        ids=["june-solstice", "december-solstice", "march-equinox"],
    )
    def test_edges_match_astral_and_are_plausible(self, sun: Sun, day: date) -> None:
        """An installer checks that the lights at Ha Tinh follow the real sun on the longest
        day, the shortest day and the equinox of 2026: our sunrise and sunset agree with
        astral's own calculation within a minute, and they are plausible on a local wall
        clock (sunrise between 05:00 and 07:00, sunset between 17:00 and 19:00, on that very
        date). The plausibility part is what catches astral's default UTC, which puts
        sunrise after sunset."""
        times = sun.times(day)
        reference = astral.sun.sun(Observer(latitude=LAT, longitude=LON), date=day, tzinfo=TZ)
        assert abs((times.sunrise - reference["sunrise"]).total_seconds()) < 60
        assert abs((times.sunset - reference["sunset"]).total_seconds()) < 60
        sunrise, sunset = times.sunrise.astimezone(TZ), times.sunset.astimezone(TZ)
        assert sunrise.date() == day
        assert sunset.date() == day
        assert at(day, 5, 0) < sunrise < at(day, 7, 0)
        assert at(day, 17, 0) < sunset < at(day, 19, 0)
        assert sunrise < sunset

    def test_utc_trap_is_refused(self) -> None:
        """Someone configures the gateway with the time zone "UTC" while it stands in Ha
        Tinh: astral then gives a sunrise after the sunset of the same day. Rather than
        switching the lights at nonsense times, the gateway refuses with an error that says
        sunrise is not before sunset and asks whether the time zone is right."""
        utc_sun = Sun(latitude=LAT, longitude=LON, timezone="UTC")
        with capture_logs() as logs, pytest.raises(SunError, match="time zone"):
            utc_sun.times(date(2026, 6, 21))
        assert events(logs, "sun.implausible")

    def test_resolve_clock_and_sun_expressions(self, sun: Sun) -> None:
        """An operator writes times as "22:30", "sunset+10m" or "sunrise-15m": each turns
        into an aware instant on the given local day, ten minutes after sunset or fifteen
        before sunrise; a malformed expression is refused."""
        times = sun.times(MONDAY)
        assert resolve("22:30", MONDAY, sun) == at(MONDAY, 22, 30)
        assert resolve("sunset+10m", MONDAY, sun) == (times.sunset + timedelta(minutes=10)).replace(
            microsecond=0
        )
        assert resolve("sunrise-15m", MONDAY, sun) == (
            times.sunrise - timedelta(minutes=15)
        ).replace(microsecond=0)
        assert resolve("sunset", MONDAY, sun).utcoffset() == timedelta(hours=7)
        assert resolve("hoàng hôn + 10 phút", MONDAY, sun) == resolve("sunset+10m", MONDAY, sun)
        with pytest.raises(ScheduleError):
            resolve("25:00", MONDAY, sun)


class TestDesiredStates:
    def test_night_lighting_and_weekdays(self, sun: Sun) -> None:
        """The street lights are on from ten minutes after sunset to 22:30 and from 04:45 to
        fifteen minutes before sunrise; the yard light from 18:00 to 20:00 on weekdays only.
        At each moment of the shortest day the desired state is what a villager expects,
        off edges are exclusive, and on a Sunday the yard stays dark."""
        schedules = [*NIGHT, YARD]
        cases = [
            (at(MONDAY, 12, 0), {"street": False, "yard": False}),
            (at(MONDAY, 17, 35, 2), {"street": False, "yard": False}),
            (at(MONDAY, 17, 35, 3), {"street": True, "yard": False}),
            (at(MONDAY, 18, 0), {"street": True, "yard": True}),
            (at(MONDAY, 20, 0), {"street": True, "yard": False}),
            (at(MONDAY, 22, 29, 59), {"street": True, "yard": False}),
            (at(MONDAY, 22, 30), {"street": False, "yard": False}),
            (at(MONDAY, 4, 44), {"street": False, "yard": False}),
            (at(MONDAY, 4, 45), {"street": True, "yard": False}),
            (at(MONDAY, 6, 8, 35), {"street": True, "yard": False}),
            (at(MONDAY, 6, 8, 36), {"street": False, "yard": False}),
            (at(SUNDAY, 19, 0), {"street": True, "yard": False}),
        ]
        for moment, expected in cases:
            assert desired_states(schedules, moment, sun) == expected, moment

    def test_relay_names_filter_and_utc_input(self, sun: Sun) -> None:
        """Only relays that have a schedule (and, when given, that the board knows) appear;
        an instant given in UTC is judged on the village's local day."""
        moment = at(MONDAY, 19, 0).astimezone(ZoneInfo("UTC"))
        assert desired_states([*NIGHT, YARD], moment, sun, relay_names=["yard", "amp"]) == {
            "yard": True
        }
        assert desired_states([], moment, sun) == {}

    def test_one_row_lights_the_night_across_midnight(self, sun: Sun) -> None:
        """ "Bật lúc hoàng hôn, tắt lúc 05:00" is one row: the yard is on from Monday's
        sunset (17:25:03) through midnight until 05:00 on Tuesday, off from then on. A
        Sunday-only row still holds after Sunday's midnight (its interval started Sunday)
        and does not start again on Monday evening."""
        night = [RelaySchedule(relay="yard", on="hoàng hôn", off="05:00")]
        tuesday = MONDAY + timedelta(days=1)
        cases = [
            (at(MONDAY, 17, 25, 2), False),
            (at(MONDAY, 17, 25, 3), True),
            (at(MONDAY, 23, 59, 59), True),
            (at(tuesday, 0, 0), True),
            (at(tuesday, 2, 0), True),
            (at(tuesday, 4, 59, 59), True),
            (at(tuesday, 5, 0), False),
            (at(tuesday, 12, 0), False),
        ]
        for moment, expected in cases:
            assert desired_states(night, moment, sun) == {"yard": expected}, moment
        sundays = [RelaySchedule(relay="yard", on="sunset", off="05:00", days=["sun"])]
        assert desired_states(sundays, at(MONDAY, 2, 0), sun) == {"yard": True}
        assert desired_states(sundays, at(MONDAY, 19, 0), sun) == {"yard": False}
        assert next_change(sundays, at(MONDAY, 2, 0), sun) == at(MONDAY, 5, 0)


class TestNextChange:
    def test_next_edges(self, sun: Sun) -> None:
        """The scheduler wakes exactly at the next edge: at noon that is ten minutes after
        sunset, at 22:30 it is 04:45 the next morning, and with no schedules there is none.
        Two touching intervals of one relay (18:00-20:00 and 20:00-22:00) make no edge at
        20:00."""
        evening = sun.times(MONDAY).sunset + timedelta(minutes=10)
        assert next_change(NIGHT, at(MONDAY, 12, 0), sun) == evening.replace(microsecond=0)
        assert next_change(NIGHT, at(MONDAY, 22, 30), sun) == at(MONDAY + timedelta(1), 4, 45)
        assert next_change([], at(MONDAY, 12, 0), sun) is None
        touching = [
            RelaySchedule(relay="hall", on="18:00", off="20:00"),
            RelaySchedule(relay="hall", on="20:00", off="22:00"),
        ]
        assert next_change(touching, at(MONDAY, 19, 0), sun) == at(MONDAY, 22, 0)

    def test_weekday_only_schedule_skips_the_weekend(self, sun: Sun) -> None:
        """After Friday's yard interval ends, the next change is Monday 18:00, found by
        looking ahead across the weekend."""
        friday = date(2026, 12, 25)
        assert next_change([YARD], at(friday, 21, 0), sun) == at(friday + timedelta(3), 18, 0)


class TestDueBroadcasts:
    def test_on_time_late_and_skipped(self, sun: Sun) -> None:
        """The 06:00 news plays on time when the clock passes 06:00; if the gateway only
        notices a minute later (grace 5 minutes) it plays late; if it was missed by ten
        minutes it is skipped and the log says by how much."""
        day = MONDAY
        on_time = due_broadcasts([NEWS], at(day, 5, 59, 59), at(day, 6, 0, 1), sun, 300)
        assert [(d.at, d.late) for d in on_time] == [(at(day, 6, 0), False)]
        late = due_broadcasts([NEWS], at(day, 5, 59), at(day, 6, 1), sun, 300)
        assert [(d.at, d.late, d.late_s) for d in late] == [(at(day, 6, 0), True, 60.0)]
        with capture_logs() as logs:
            assert due_broadcasts([NEWS], at(day, 5, 59), at(day, 6, 10), sun, 300) == []
        skipped = events(logs, "broadcast.skipped")
        assert [line["missed_by_s"] for line in skipped] == [600.0]
        assert due_broadcasts([NEWS], at(day, 6, 1), at(day, 5, 0), sun, 300) == []


class TestScheduler:
    async def test_apply_at_start_and_at_the_edge(self, tmp_path: Path) -> None:
        """At start the relays get the schedule's state for now; one second later the clock
        crosses ten minutes after sunset and `apply` is called with the street light on.
        Holding a manual override past the edge is the relay bank's job; this only checks
        that the new desired state arrives at the edge."""
        rig = rig_at(at(MONDAY, 17, 35, 2), tmp_path)
        scheduler = rig.make(SchedulesSection(relays=NIGHT))
        delay = await scheduler.step()
        assert rig.applied == [{"street": False}]
        assert 0 < delay <= 0.01
        await scheduler.step()
        assert len(rig.applied) == 1  # nothing changed, nothing applied
        rig.clock.advance(1)
        await scheduler.step()
        assert rig.applied[-1] == {"street": True}
        assert scheduler.desired_now() == {"street": True}
        snapshot = scheduler.snapshot()
        assert snapshot["next_change"] == at(MONDAY, 22, 30).isoformat()
        assert snapshot["clock_synced"] is True
        assert (snapshot["relays"], snapshot["broadcasts"]) == (2, 0)

    async def test_next_change_follows_new_rows_and_a_clock_set_back(self, tmp_path: Path) -> None:
        """The next edge is remembered between steps, yet a ``schedule.set`` and a clock
        set back by hours both give the right one at the next step."""
        rig = rig_at(at(MONDAY, 12, 0), tmp_path)
        scheduler = rig.make(SchedulesSection(relays=[YARD]))
        await scheduler.step()
        assert scheduler.snapshot()["next_change"] == at(MONDAY, 18, 0).isoformat()
        rig.clock.advance(1)
        await scheduler.step()
        assert scheduler.snapshot()["next_change"] == at(MONDAY, 18, 0).isoformat()
        await scheduler.replace([{"relay": "yard", "on": "13:00", "off": "14:00"}], [])
        await scheduler.step()
        assert scheduler.snapshot()["next_change"] == at(MONDAY, 13, 0).isoformat()
        rig.clock.advance(3600 * 1.5)  # 13:30: on, the next edge is the off
        await scheduler.step()
        assert scheduler.snapshot()["next_change"] == at(MONDAY, 14, 0).isoformat()
        rig.clock.advance(-3600 * 3)  # set back to 10:30
        await scheduler.step()
        assert scheduler.snapshot()["next_change"] == at(MONDAY, 13, 0).isoformat()

    async def test_forward_jump_sets_every_relay_within_one_tick(self, tmp_path: Path) -> None:
        """The gateway boots at 15:00 on a stale clock; NTP then steps it three hours
        forward to 18:00. Without any simulated time passing after the jump, the running
        scheduler logs the jump with its size and switches the street and yard lights to
        their scheduled state (both on)."""
        rig = rig_at(at(MONDAY, 15, 0), tmp_path)
        scheduler = rig.make(SchedulesSection(relays=[*NIGHT, YARD]))
        task = asyncio.create_task(scheduler.run(Health("schedules", False, None)))
        try:
            await eventually(rig, lambda: len(rig.applied) == 1)
            assert rig.applied[0] == {"street": False, "yard": False}
            with capture_logs() as logs:
                rig.clock.jump(3 * 3600)
                await eventually(rig, lambda: len(rig.applied) == 2)
        finally:
            task.cancel()
        assert rig.applied[1] == {"street": True, "yard": True}
        assert [line["jump_s"] for line in events(logs, "clock.jumped")] == [10800.0]
        assert scheduler.snapshot()["last_jump_s"] == 10800.0

    async def test_backward_jump_never_plays_twice(self, tmp_path: Path) -> None:
        """The 06:00 news plays once. The clock is then stepped back an hour and runs
        through 06:00 again: the news does not play a second time, not even after the
        daemon restarts on the same state directory within the grace window. A gateway
        with a fresh state directory would play it late, so the mark on disk is what
        prevents the repeat."""
        rig = rig_at(at(MONDAY, 5, 59, 59), tmp_path)
        section = SchedulesSection(broadcasts=[NEWS], grace_s=300)
        scheduler = rig.make(section)
        await scheduler.step()
        rig.clock.advance(2)
        await scheduler.step()
        assert rig.played == [("morning-news", at(MONDAY, 6, 0))]
        rig.clock.jump(-3600)
        for _ in range(7):
            await scheduler.step()
            rig.clock.advance(600)
        assert len(rig.played) == 1
        assert json.loads((tmp_path / "broadcasts.json").read_text())["played"]

        rig.clock.wall_s = at(MONDAY, 6, 0, 30).timestamp()
        restarted = rig.make(section)
        await restarted.step()
        assert len(rig.played) == 1

        fresh = Rig(clock=rig.clock, state_dir=tmp_path / "fresh")
        await fresh.make(section).step()
        assert fresh.played == [("morning-news", at(MONDAY, 6, 0))]

    async def test_grace_window_plays_late_once(self, tmp_path: Path) -> None:
        """After a power cut the gateway comes back at 06:01, one minute after the news
        (grace five minutes): the news plays late, once, however often the scheduler
        wakes afterwards."""
        rig = rig_at(at(MONDAY, 6, 1), tmp_path)
        scheduler = rig.make(SchedulesSection(broadcasts=[NEWS], grace_s=300))
        for _ in range(3):
            await scheduler.step()
            rig.clock.advance(1)
        assert rig.played == [("morning-news", at(MONDAY, 6, 0))]

    async def test_missed_beyond_grace_is_skipped(self, tmp_path: Path) -> None:
        """At 05:59 the clock jumps eleven minutes ahead: the 06:00 news was missed by ten
        minutes, more than the five-minute grace, so it is not played and the log says
        it was skipped."""
        rig = rig_at(at(MONDAY, 5, 59), tmp_path)
        scheduler = rig.make(SchedulesSection(broadcasts=[NEWS], grace_s=300))
        await scheduler.step()
        with capture_logs() as logs:
            rig.clock.jump(11 * 60)
            await scheduler.step()
            await scheduler.step()
        assert rig.played == []
        assert len(events(logs, "broadcast.skipped")) == 1

    async def test_a_moment_skipped_by_a_wrong_jump_plays_when_the_clock_comes_back(
        self, tmp_path: Path
    ) -> None:
        """At 05:50 the clock is wrongly stepped to 06:20, so the 06:00 news is skipped as
        too old; NTP then sets it back to 05:55. When the real 06:00 comes the news plays,
        on time: only played moments are remembered, skipped ones are not."""
        rig = rig_at(at(MONDAY, 5, 50), tmp_path)
        scheduler = rig.make(SchedulesSection(broadcasts=[NEWS], grace_s=300))
        await scheduler.step()
        rig.clock.jump(30 * 60)
        await scheduler.step()
        rig.clock.jump(-25 * 60)
        await scheduler.step()
        assert rig.played == []
        rig.clock.advance(5 * 60)
        await scheduler.step()
        assert rig.played == [("morning-news", at(MONDAY, 6, 0))]

    async def test_replace_persists_and_survives_restart(self, tmp_path: Path) -> None:
        """The commune sends `schedule.set` with a street-light interval and a Monday
        broadcast: the relays take the new state at once, the schedules are written to the
        state directory, and a restarted scheduler uses them instead of the configured
        ones."""
        rig = rig_at(at(MONDAY, 19, 0), tmp_path)
        section = SchedulesSection(relays=[YARD])
        scheduler = rig.make(section)
        await scheduler.step()
        assert rig.applied == [{"yard": True}]
        await scheduler.replace(
            [{"relay": "street", "on": "sunset+10m", "off": "22:30"}],
            [{"at": "06:00", "clip": "news", "days": ["mon"]}],
        )
        await scheduler.step()
        assert rig.applied[-1] == {"street": True}
        stored = json.loads((tmp_path / "schedules.json").read_text())
        assert stored["relays"][0]["on"] == "sunset+10m"
        assert not (tmp_path / "schedules.json.tmp").exists()

        restarted = rig.make(section)
        assert [item.relay for item in restarted.relays] == ["street"]
        assert [item.clip for item in restarted.broadcasts] == ["news"]
        assert restarted.snapshot()["source"] == "command"

    async def test_replace_rejects_invalid_input_as_a_whole(self, tmp_path: Path) -> None:
        """A `schedule.set` with a bad time, an offset of 999 minutes, a row whose order
        flips during the year, two overlapping rows and a broadcast without a clip is
        refused as a whole: every problem is named by its list, its row counted from 1
        and a reason code, and the schedules in force and on disk are the old ones. A row
        from sunset to sunrise is not a problem: it crosses midnight."""
        rig = rig_at(at(MONDAY, 19, 0), tmp_path)
        scheduler = rig.make(SchedulesSection(relays=[YARD]))
        await scheduler.replace([YARD], [NEWS])
        before = (tmp_path / "schedules.json").read_text()
        with pytest.raises(ScheduleError) as caught:
            await scheduler.replace(
                [
                    {"relay": "street", "on": "25:00", "off": "22:30"},
                    {"relay": "street", "on": "hoàng hôn + 999 phút", "off": "22:30"},
                    {"relay": "porch", "on": "sunset", "off": "18:00"},
                    {"relay": "yard", "on": "sunset", "off": "sunrise"},
                    {"relay": "yard", "on": "04:00", "off": "05:00"},
                ],
                [{"at": "06:00"}],
            )
        found = [(p.field, p.row, p.key, p.reason) for p in caught.value.problems]
        assert found == [
            ("schedules", 1, "on", "time_format"),
            ("schedules", 2, "on", "sun_offset_range"),
            ("schedules", 3, "off", "order_varies"),
            ("schedules", 5, None, "overlap"),
            ("broadcasts", 1, "clip", "missing_key"),
        ]
        assert caught.value.problems[3].params["other_row"] == 4
        assert caught.value.key == "bad_args"
        assert "row 1" in str(caught.value)
        assert ".0" not in str(caught.value)
        assert scheduler.relays == [YARD]
        assert scheduler.broadcasts == [NEWS]
        assert (tmp_path / "schedules.json").read_text() == before

    async def test_replace_wakes_the_loop_at_once(self, tmp_path: Path) -> None:
        """Even with a long tick, a `schedule.set` takes effect immediately: the running
        scheduler is woken and applies the new desired state."""
        rig = rig_at(at(MONDAY, 19, 0), tmp_path)
        scheduler = rig.make(SchedulesSection(relays=[YARD]), tick_s=60)
        task = asyncio.create_task(scheduler.run(Health("schedules", False, None)))
        try:
            await eventually(rig, lambda: len(rig.applied) == 1)
            await scheduler.replace([RelaySchedule(relay="yard", on="20:00", off="21:00")], [])
            await eventually(rig, lambda: len(rig.applied) == 2)
        finally:
            task.cancel()
        assert rig.applied == [{"yard": True}, {"yard": False}]

    async def test_hold_waits_for_a_synced_clock(self, tmp_path: Path) -> None:
        """With `when_unsynced = "hold"` and no NTP sync yet, the scheduler neither switches
        relays nor plays broadcasts, and says so once in the log; when the clock is synced
        it applies the schedule at once."""
        rig = rig_at(at(MONDAY, 17, 59, 59), tmp_path)
        rig.synced = False
        section = SchedulesSection(
            when_unsynced="hold",
            relays=[YARD],
            broadcasts=[NEWS.model_copy(update={"at": "18:00"})],
        )
        scheduler = rig.make(section)
        with capture_logs() as logs:
            await scheduler.step()
            rig.clock.advance(2)
            await scheduler.step()
        assert rig.applied == []
        assert rig.played == []
        assert len(events(logs, "schedules.held")) == 1
        assert scheduler.snapshot()["holding"] is True
        rig.synced = True
        await scheduler.step()
        assert rig.applied == [{"yard": True}]

    async def test_run_acts_on_an_unsynced_clock(self, tmp_path: Path) -> None:
        """With the default `when_unsynced = "run"`, an unsynced clock is used as it is:
        the yard light follows it."""
        rig = rig_at(at(MONDAY, 18, 30), tmp_path)
        rig.synced = False
        scheduler = rig.make(SchedulesSection(relays=[YARD]))
        await scheduler.step()
        assert rig.applied == [{"yard": True}]
        assert scheduler.snapshot()["clock_synced"] is False


class TestTimeWords:
    @pytest.mark.parametrize(
        ("written", "canonical"),
        [
            ("18:30", "18:30"),
            ("6:05", "06:05"),
            ("18h30", "18:30"),
            ("sunset+10m", "sunset+10m"),
            ("Sunset + 10 m", "sunset+10m"),
            ("sunrise-15m", "sunrise-15m"),
            ("hoàng hôn + 10 phút", "sunset+10m"),
            ("Hoàng  Hôn+10 phút", "sunset+10m"),
            ("bình minh-15 phút", "sunrise-15m"),
            ("BÌNH MINH \u2212 1 giờ", "sunrise-60m"),  # a typographic minus
            ("hoàng hôn", "sunset"),
        ],
    )
    def test_english_and_vietnamese_words_in_nfc_and_nfd(
        self, written: str, canonical: str
    ) -> None:
        """A village head types the time as they say it, in Vietnamese or in the English
        tokens, with any spacing and case, on a phone that may send composed (NFC) or
        decomposed (NFD) accents: each is read as the same time and stored in one form."""
        for form in ("NFC", "NFD"):
            assert parse_time(unicodedata.normalize(form, written)).canonical() == canonical

    @pytest.mark.parametrize(
        ("written", "reason"),
        [
            ("24:00", "time_format"),
            ("12:60", "time_format"),
            (r"^(?:[01]\d|2[0-3]):[0-5]\d$", "time_format"),
            ("hoàng hôn + 999 phút", "sun_offset_range"),
            ("sunset+181m", "sun_offset_range"),
            ("tối", "time_format"),
            ("", "time_format"),
        ],
    )
    def test_bad_times_have_a_reason_and_no_pattern(self, written: str, reason: str) -> None:
        """A time that cannot be read is refused with its reason code; the message tells
        how to write one and never shows a regular expression."""
        with pytest.raises(TimeFormatError) as caught:
            parse_time(written)
        assert caught.value.reason == reason
        assert "(?:" not in str(caught.value)
        assert "[0-5]" not in str(caught.value)


class TestAcrossMidnight:
    async def test_scheduler_switches_on_at_sunset_and_off_next_morning(
        self, tmp_path: Path
    ) -> None:
        """With one row "on at hoàng hôn, off at 05:00", the running scheduler (on an
        injected clock) switches the yard on at Monday's sunset, keeps it on through
        midnight, and switches it off at 05:00 on Tuesday, waking exactly at each edge."""
        rig = rig_at(at(MONDAY, 17, 0), tmp_path)
        scheduler = rig.make(
            SchedulesSection(relays=[RelaySchedule(relay="yard", on="hoàng hôn", off="05:00")])
        )
        await scheduler.step()
        assert rig.applied == [{"yard": False}]
        sunset = resolve("sunset", MONDAY, sun_here())
        assert scheduler.snapshot()["next_change"] == sunset.isoformat()
        rig.clock.advance((sunset - at(MONDAY, 17, 0)).total_seconds())
        await scheduler.step()
        assert rig.applied[-1] == {"yard": True}
        tuesday = MONDAY + timedelta(days=1)
        assert scheduler.snapshot()["next_change"] == at(tuesday, 5, 0).isoformat()
        rig.clock.advance((at(tuesday, 0, 30) - sunset).total_seconds())
        await scheduler.step()
        assert rig.applied[-1] == {"yard": True}
        assert len(rig.applied) == 2  # midnight is no edge
        rig.clock.advance((at(tuesday, 5, 0) - at(tuesday, 0, 30)).total_seconds())
        await scheduler.step()
        assert rig.applied[-1] == {"yard": False}
        assert scheduler.relays[0].on == "sunset"  # stored in the canonical form

    def test_power_on_schedule_after_midnight_is_on(self, tmp_path: Path) -> None:
        """The power comes back at 02:00 on Tuesday. The yard relay's power-on policy is
        `schedule` and its one row lights it from sunset to 05:00: the pin is driven on
        at once, before anything else runs, because 02:00 is inside Monday's interval."""
        rig = rig_at(at(MONDAY + timedelta(days=1), 2, 0), tmp_path)
        scheduler = rig.make(
            SchedulesSection(relays=[RelaySchedule(relay="yard", on="sunset", off="05:00")])
        )
        factory = MockFactory()
        bank = RelayBank(
            {"yard": RelayConfig(pin=17, power_on="schedule")},
            state_dir=tmp_path,
            state=StateStore(),
            on_event=lambda event: None,
            pin_factory=factory,
            expected_factory=None,
        )
        try:
            bank.open(scheduler.desired_now())
            assert bank.is_on("yard") is True
            assert factory.pin(17).state is False  # active low: on is the low level
        finally:
            bank.close(shutdown=False)
            factory.reset()


def sun_here() -> Sun:
    return Sun(latitude=LAT, longitude=LON, timezone=ZONE)


CONFIG = """
[gateway]
id = "g-rules"
state_dir = "{state_dir}"
latitude = 18.34
longitude = 105.9
timezone = "Asia/Ho_Chi_Minh"

[relays.yard]
pin = 17
power_on = "schedule"

[relays.street]
pin = 27

[schedules]
relays = [{rows}]
"""


def toml_rows(rows: list[Any]) -> str:
    """Rows as TOML inline tables (JSON strings and lists are valid TOML)."""
    tables = []
    for row in rows:
        if not isinstance(row, dict):
            tables.append(json.dumps(row, ensure_ascii=False))
            continue
        pairs = ", ".join(
            f"{key} = {json.dumps(value, ensure_ascii=False)}" for key, value in row.items()
        )
        tables.append(f"{{ {pairs} }}")
    return ", ".join(tables)


def write_config(path: Path, state_dir: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text(CONFIG.format(state_dir=state_dir, rows=toml_rows(rows)), encoding="utf-8")
    return path


@dataclass
class Gateway:
    """A Control (relay bank and scheduler) behind a real Dispatcher and outbox."""

    control: Control
    dispatcher: Dispatcher
    state_dir: Path

    async def schedule_set(self, args: dict[str, Any]) -> dict[str, Any]:
        command = {"id": f"web-{uuid.uuid4().hex[:8]}", "type": "schedule.set", "args": args}
        reply = await self.dispatcher.dispatch(command, "web")
        return reply.as_dict()


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    """The gateway's command path for schedules, configured with a good night row."""
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    good = [{"relay": "yard", "on": "sunset+10m", "off": "22:30"}]
    settings = load_settings(write_config(tmp_path / "gateway.toml", state_dir, good))
    control = Control(settings, state=StateStore(), on_event=lambda event: None, demo=True)
    outbox = await Outbox.open(state_dir / "outbox", commit_window_s=0.01)
    dispatcher = Dispatcher(
        state_dir=state_dir,
        handlers=control.handlers(),
        outbox=outbox,
        events=EventHub(outbox, lambda event, seq: None),
        clock_synced=lambda: True,
    )
    control.open(dispatcher.dispatch)
    try:
        yield Gateway(control, dispatcher, state_dir)
    finally:
        dispatcher.close()
        control.close()
        await outbox.close()


NIGHT_ROW = {"relay": "yard", "on": "hoàng hôn", "off": "05:00"}
REGEX = r"^([01]\d|2[0-3]):[0-5]\d$"


@dataclass(frozen=True)
class Bad:
    """Rows with one mistake, and what the reply must say about it."""

    what: str
    rows: list[Any]
    reason: str
    row: int
    key: str | None
    code: str = "bad_args"


BAD_ROWS = [
    Bad("regex", [NIGHT_ROW, NIGHT_ROW | {"relay": "street", "on": REGEX}], "time_format", 2, "on"),
    Bad("24:00", [NIGHT_ROW | {"on": "18:00", "off": "24:00"}], "time_format", 1, "off"),
    Bad("offset", [NIGHT_ROW | {"on": "hoàng hôn + 999 phút"}], "sun_offset_range", 1, "on"),
    Bad("relay", [NIGHT_ROW, NIGHT_ROW | {"relay": "moon"}], "unknown_relay", 2, "relay",
        "unknown_target"),
    Bad("days", [NIGHT_ROW | {"days": ["mon", "someday"]}], "days_format", 1, "days"),
    Bad("no days", [NIGHT_ROW | {"days": []}], "days_format", 1, "days"),
    Bad("overlap", [NIGHT_ROW, NIGHT_ROW | {"on": "04:00", "off": "06:00"}], "overlap", 2, None),
    Bad("same", [NIGHT_ROW | {"on": "18:00", "off": "18:00"}], "empty_interval", 1, "off"),
    Bad("flips", [NIGHT_ROW | {"on": "sunset", "off": "18:00"}], "order_varies", 1, "off"),
    Bad("key", [NIGHT_ROW | {"colour": "red"}], "unknown_key", 1, "colour"),
    Bad("missing", [{"relay": "yard", "on": "18:00"}], "missing_key", 1, "off"),
    Bad("row", [NIGHT_ROW, "18:00-22:00"], "bad_row", 2, None),
]  # fmt: skip


class TestScheduleSetReplies:
    @pytest.mark.parametrize("case", BAD_ROWS, ids=[case.what for case in BAD_ROWS])
    async def test_bad_rows_are_rejected_with_reason_and_row(
        self, gateway: Gateway, case: Bad
    ) -> None:
        """The phone sends schedules with one wrong row: the reply is `rejected` with the
        protocol's code, a message that names the row counted from 1 (never a pattern,
        never a 0-based index) and `error.detail` giving the reason, the list, the row and
        the key so the page can mark it; the schedules in force and on disk stay."""
        before = (
            (gateway.state_dir / "schedules.json").read_bytes()
            if (gateway.state_dir / "schedules.json").exists()
            else None
        )
        in_force = gateway.control.scheduler.relays
        reply = await gateway.schedule_set({"schedules": case.rows})
        assert reply["status"] == "rejected"
        error = reply["error"]
        assert error["code"] == case.code
        detail = error["detail"]
        assert (detail["reason"], detail["field"]) == (case.reason, "schedules")
        assert (detail["row"], detail.get("key")) == (case.row, case.key)
        assert detail["problems"][0]["reason"] == case.reason
        assert f"row {case.row}" in error["message"]
        assert "(?:" not in error["message"]
        assert "[0-5]" not in error["message"]
        assert "schedules.0" not in error["message"]
        assert "row 0" not in error["message"]
        assert gateway.control.scheduler.relays == in_force
        after = gateway.state_dir / "schedules.json"
        assert (after.read_bytes() if after.exists() else None) == before

    async def test_night_row_and_vietnamese_words_are_saved(self, gateway: Gateway) -> None:
        """ "Bật lúc hoàng hôn, tắt lúc 05:00" and "bình minh - 15 phút" are accepted as
        they are typed and stored in the canonical form the state shows."""
        reply = await gateway.schedule_set(
            {
                "schedules": [
                    {"relay": "yard", "on": "hoàng hôn", "off": "05:00"},
                    {
                        "relay": "street",
                        "on": "04:45",
                        "off": "bình minh - 15 phút",
                        "days": ["T2", "CN"],
                    },
                ]
            }
        )
        assert reply["status"] == "done", reply
        stored = json.loads((gateway.state_dir / "schedules.json").read_text())
        assert stored["relays"] == [
            {"relay": "yard", "on": "sunset", "off": "05:00", "days": list(WEEKDAYS)},
            {"relay": "street", "on": "04:45", "off": "sunrise-15m", "days": ["mon", "sun"]},
        ]

    async def test_foreign_timezone_has_its_reason(self, gateway: Gateway) -> None:
        """Times meant in another zone are refused with `timezone_mismatch`."""
        reply = await gateway.schedule_set({"schedules": [NIGHT_ROW], "timezone": "UTC"})
        assert reply["error"]["detail"]["reason"] == "timezone_mismatch"


class TestOneRuleForConfigAndCommand:
    @pytest.mark.parametrize(
        "rows",
        [
            [NIGHT_ROW],
            [NIGHT_ROW | {"on": "sunset+10m", "off": "22:30"},
             NIGHT_ROW | {"on": "04:45", "off": "bình minh-15 phút"}],
            *[case.rows for case in BAD_ROWS],
        ],
    )  # fmt: skip
    async def test_check_config_and_schedule_set_agree(
        self, gateway: Gateway, tmp_path: Path, rows: list[dict[str, Any]]
    ) -> None:
        """The same rows, written in the configuration file and sent as `schedule.set`,
        get the same verdict: both accepted, or both refused with the same reasons on the
        same rows (the configuration names them `schedules.relays row N`)."""
        path = write_config(tmp_path / "same.toml", gateway.state_dir, rows)
        try:
            load_settings(path)
        except ConfigError as exc:
            from_config = [(p.reason, p.key) for p in exc.problems]
        else:
            from_config = []
        reply = await gateway.schedule_set({"schedules": rows})
        if reply["status"] == "done":
            from_command = []
        else:
            from_command = [
                (
                    p["reason"],
                    f"schedules.relays row {p['row']}" + (f", {p['key']}" if "key" in p else ""),
                )
                for p in reply["error"]["detail"]["problems"]
            ]
        assert from_config == from_command

    def test_check_config_prints_the_row_counted_from_one(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """`village-gateway check-config` on a file whose second schedule row says
        "hoàng hôn + 999 phút" exits 2 and names row 2 and the limit in words."""
        rows = [
            NIGHT_ROW | {"relay": "street"},
            {"relay": "yard", "on": "hoàng hôn + 999 phút", "off": "22:00"},
        ]
        path = write_config(tmp_path / "bad.toml", tmp_path, rows)
        assert cli_main(["check-config", str(path)]) == 2
        err = capsys.readouterr().err
        assert (
            "schedules.relays row 2, on: an offset of 999 minutes from sunset; at most 180" in err
        )
        assert "relays.1" not in err
