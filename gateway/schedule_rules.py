"""The rules a schedule must follow, in one place: ``schedule.set`` and the configuration
(``check-config`` and start-up) both call :func:`check_schedules`, so they cannot disagree.

A time of day is written as an operator would say it: ``"18:30"`` (or ``"18h30"``), or
the sun with an offset in minutes, in English (``"sunset+10m"``, ``"sunrise-15m"``) or in
Vietnamese (``"hoàng hôn + 10 phút"``, ``"bình minh-15 phút"``), in any case, with or
without spaces, in Unicode NFC or NFD form. :func:`parse_time` turns each into one
:class:`TimeOfDay` whose :meth:`~TimeOfDay.canonical` form (``"sunset+10m"``) is what is
stored and shown to other programs.

An interval whose ``off`` comes before its ``on`` crosses midnight: on at sunset, off at
05:00 next morning, as one row. A row whose order flips during the year (``sunset`` to
``18:00`` in Ha Tinh: before sunset in winter, after it in summer) would be a short
evening in one season and nearly a whole day in the other; it is refused with its own
reason rather than guessed at.

Each problem carries a stable reason code, the list it is in, its 1-based row and the
parameters a user interface needs to say it in its own language
(:meth:`RuleProblem.detail`); the English message is for logs and ``check-config``.
This module imports nothing from the rest of the package but the error root and the
log, so the configuration can use it without an import loop.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, tzinfo
from typing import Any, Literal
from zoneinfo import ZoneInfo

import astral.sun
from astral import Observer

from gateway.errors import GatewayError
from gateway.log import get_logger

__all__ = [
    "MAX_ROWS",
    "MAX_SUN_OFFSET_MIN",
    "REASONS",
    "WEEKDAYS",
    "RuleProblem",
    "Sun",
    "SunError",
    "SunTimes",
    "TimeFormatError",
    "TimeOfDay",
    "Verdict",
    "check_schedules",
    "parse_days",
    "parse_time",
]

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_VI_WEEKDAYS = {"t2": "mon", "t3": "tue", "t4": "wed", "t5": "thu", "t6": "fri", "t7": "sat"}
_VI_WEEKDAYS["cn"] = "sun"
MAX_SUN_OFFSET_MIN = 180
"""An offset from sunrise or sunset is at most three hours either way; a larger one is
almost certainly a typo (``999``) and would put a "sunset" light at midnight."""
MAX_ROWS = 200
"""Rows per list, as ``schedule.set`` has always allowed."""
SCAN_DAYS = 366
"""Rules that depend on the sun are checked on every day of the coming year."""
PRIORITIES = ("scheduled", "announcement", "background")
MAX_CLIP_ID = 64

REASONS = {
    "time_format": "not a time of day",
    "sun_offset_range": "an offset from the sun beyond the limit",
    "unknown_relay": "no relay of that name",
    "days_format": "days not a list of weekdays",
    "overlap": "two rows of one relay overlap",
    "empty_interval": "on and off at the same moment",
    "order_varies": "off is before on on some days of the year and after it on others",
    "missing_key": "a required key is missing",
    "unknown_key": "a key that rows do not have",
    "bad_row": "a row that is not an object",
    "bad_value": "a value of the wrong kind or out of range",
    "too_many_rows": "more rows than a list may hold",
    "sun_unavailable": "no plausible sunrise and sunset here (time zone or coordinates)",
    "timezone_mismatch": "times meant in another time zone than the gateway's",
}
"""Every reason code a schedule problem may carry, with what it means."""

_log = get_logger("schedules")

_SPACE = re.compile(r"\s+")
_CLOCK = re.compile(r"(?P<h>\d{1,2})(?::(?P<m>\d{2})|h(?P<hm>\d{2})?)")
_SUN_WORDS = {
    "sunset": "sunset",
    "sunrise": "sunrise",
    "hoang hon": "sunset",
    "binh minh": "sunrise",
}
_SUN = re.compile(
    r"(?P<word>sunset|sunrise|hoang hon|binh minh)"
    r"(?:(?P<sign>[+-])(?P<n>\d{1,4})(?P<unit>m|min|phut|p|h|gio)?)?"
)
_MINUS = str.maketrans({"\u2212": "-", "\u2013": "-", "\u2014": "-", "\uff0b": "+"})


class SunError(GatewayError, ValueError):
    """Sun times at this place and date are missing or implausible (sunrise after sunset)."""

    key = "schedules.sun"


class TimeFormatError(GatewayError, ValueError):
    """A time of day that cannot be read; ``reason`` and ``params`` say why."""

    key = "bad_args"

    def __init__(self, reason: str, message: str, **params: object) -> None:
        super().__init__(message)
        self.reason = reason
        self.params = params


@dataclass(frozen=True, slots=True)
class SunTimes:
    """Sunrise and sunset of one local day, aware, in the gateway's time zone."""

    sunrise: datetime
    sunset: datetime


class Sun:
    """Sunrise and sunset at one place, computed by astral in the place's own time zone."""

    __slots__ = ("_cache", "_observer", "_seconds", "tz")

    def __init__(self, *, latitude: float, longitude: float, timezone: str | tzinfo) -> None:
        self.tz: tzinfo = ZoneInfo(timezone) if isinstance(timezone, str) else timezone
        self._observer = Observer(latitude=latitude, longitude=longitude)
        self._cache: dict[date, SunTimes] = {}
        self._seconds: dict[date, tuple[int, int]] = {}

    def day_seconds(self, day: date) -> tuple[int, int]:
        """Sunrise and sunset of ``day`` in whole seconds after local midnight (by the wall
        clock): what the rules compare over a whole year, without building datetimes."""
        found = self._seconds.get(day)
        if found is None:
            times = self.times(day)
            rise, sets = times.sunrise.astimezone(self.tz), times.sunset.astimezone(self.tz)
            found = (
                rise.hour * 3600 + rise.minute * 60 + rise.second,
                sets.hour * 3600 + sets.minute * 60 + sets.second,
            )
            if len(self._seconds) >= 800:
                self._seconds.clear()
            self._seconds[day] = found
        return found

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
        if len(self._cache) >= 400:  # a year's scan and then some
            self._cache.clear()
        self._cache[day] = times
        return times


@dataclass(frozen=True, slots=True)
class TimeOfDay:
    """A parsed time: a clock time (``hour``, ``minute``) or the sun plus ``offset_min``."""

    sun: Literal["sunrise", "sunset"] | None
    hour: int = 0
    minute: int = 0
    offset_min: int = 0

    def canonical(self) -> str:
        """The stored form: ``"18:30"``, ``"sunset"``, ``"sunset+10m"``, ``"sunrise-15m"``."""
        if self.sun is None:
            return f"{self.hour:02d}:{self.minute:02d}"
        if self.offset_min == 0:
            return self.sun
        return f"{self.sun}{self.offset_min:+d}m"

    def resolve(self, day: date, sun: Sun) -> datetime:
        """The instant this time names on the local ``day`` (whole seconds)."""
        if self.sun is None:
            return datetime(day.year, day.month, day.day, self.hour, self.minute, tzinfo=sun.tz)
        times = sun.times(day)
        base = times.sunrise if self.sun == "sunrise" else times.sunset
        return (base + timedelta(minutes=self.offset_min)).replace(microsecond=0)

    def seconds(self, day: date, sun: Sun) -> int:
        """Seconds after the local midnight of ``day`` (may pass 86,400 past midnight)."""
        if self.sun is None:
            return self.hour * 3600 + self.minute * 60
        sunrise_s, sunset_s = sun.day_seconds(day)
        return (sunset_s if self.sun == "sunset" else sunrise_s) + self.offset_min * 60


def _fold(text: str) -> str:
    """Lowercase, without diacritics (đ → d), spaces collapsed: how words are compared."""
    decomposed = unicodedata.normalize("NFD", text).replace("đ", "d").replace("Đ", "D")
    bare = "".join(c for c in decomposed if not unicodedata.combining(c))
    return _SPACE.sub(" ", bare.translate(_MINUS)).strip().lower()


_TIME_HINT = (
    "write HH:MM (18:30), or sunset/sunrise (hoàng hôn/bình minh) with an offset in "
    "minutes (sunset+10m, hoàng hôn + 10 phút)"
)


def parse_time(value: object) -> TimeOfDay:
    """Read a time of day; raise :class:`TimeFormatError` (``time_format`` or
    ``sun_offset_range``) with a message that never quotes a pattern."""
    if not isinstance(value, str) or not value.strip() or len(value) > 64:
        raise TimeFormatError("time_format", f"not a time of day; {_TIME_HINT}")
    folded = _fold(value)
    tight = folded.replace(" ", "")
    clock = _CLOCK.fullmatch(tight)
    if clock is not None:
        hour = int(clock["h"])
        minute = int(clock["m"] or clock["hm"] or 0)
        if hour > 23 or minute > 59:
            raise TimeFormatError(
                "time_format",
                f"must be a time HH:MM from 00:00 to 23:59 (got {hour:02d}:{minute:02d})",
            )
        return TimeOfDay(None, hour, minute)
    # The sun words keep their inner space ("hoang hon"); everything else is squeezed.
    squeezed = folded
    for word in ("hoang hon", "binh minh"):
        squeezed = re.sub(r"\s*".join(word.split()), word, squeezed)
    squeezed = re.sub(r"\s+(?=[+-])|(?<=[+-])\s+|(?<=\d)\s+(?=[a-z])", "", squeezed)
    sun = _SUN.fullmatch(squeezed)
    if sun is None:
        raise TimeFormatError("time_format", f"not a time of day; {_TIME_HINT}")
    minutes = int(sun["n"] or 0) * (60 if sun["unit"] in {"h", "gio"} else 1)
    if sun["sign"] == "-":
        minutes = -minutes
    if abs(minutes) > MAX_SUN_OFFSET_MIN:
        raise TimeFormatError(
            "sun_offset_range",
            f"an offset of {abs(minutes)} minutes from {_SUN_WORDS[sun['word']]}; "
            f"at most {MAX_SUN_OFFSET_MIN}",
            minutes=minutes,
            max=MAX_SUN_OFFSET_MIN,
        )
    which: Literal["sunrise", "sunset"] = (
        "sunset" if _SUN_WORDS[sun["word"]] == "sunset" else "sunrise"
    )
    return TimeOfDay(which, offset_min=minutes)


def parse_days(value: object) -> list[str]:
    """Weekdays (``mon``…``sun``, or ``T2``…``T7``, ``CN``) in week order, each once;
    raise :class:`TimeFormatError` (``days_format``) for anything else."""
    hint = "days is a list of mon, tue, wed, thu, fri, sat, sun (or T2 to T7, CN)"
    if not isinstance(value, list | tuple) or not value:
        raise TimeFormatError("days_format", f"{hint}, with at least one day")
    found = set()
    for item in value:
        word = _fold(item).replace(" ", "") if isinstance(item, str) else ""
        word = _VI_WEEKDAYS.get(word) or _LONG_DAYS.get(word) or word
        if word not in WEEKDAYS:
            raise TimeFormatError("days_format", f"{hint}; not a weekday in the list")
        found.add(word)
    return [day for day in WEEKDAYS if day in found]


_LONG_DAYS = {
    "monday": "mon",
    "tuesday": "tue",
    "wednesday": "wed",
    "thursday": "thu",
    "friday": "fri",
    "saturday": "sat",
    "sunday": "sun",
}


@dataclass(frozen=True, slots=True)
class RuleProblem:
    """One thing wrong with a set of schedules: where (list, 1-based row, key) and why."""

    reason: str
    field: str
    """The list (``schedules``, ``broadcasts``; ``schedules.relays`` in the config)."""
    row: int | None
    """1-based row in that list; None for a problem of the whole list."""
    key: str | None
    """The key of the row (``on``, ``off``, ``relay``, ``days``, ``at``...)."""
    message: str
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def detail(self) -> dict[str, Any]:
        """The reply's ``error.detail``: reason, field, row, key and the parameters."""
        out: dict[str, Any] = {"reason": self.reason, "field": self.field}
        if self.row is not None:
            out["row"] = self.row
        if self.key is not None:
            out["key"] = self.key
        out.update(self.params)
        return out

    @property
    def where(self) -> str:
        """``schedules row 3, on``: the place in words, rows counted from 1."""
        parts = [self.field if self.row is None else f"{self.field} row {self.row}"]
        if self.key is not None:
            parts.append(self.key)
        return ", ".join(parts)

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass(frozen=True, slots=True)
class Verdict:
    """What :func:`check_schedules` found: the rows in canonical form, and every problem."""

    relays: list[dict[str, Any]]
    broadcasts: list[dict[str, Any]]
    problems: list[RuleProblem]

    @property
    def ok(self) -> bool:
        """No problem at all."""
        return not self.problems


@dataclass(slots=True)
class _Row:
    """A relay row that passed the checks of its own keys."""

    number: int
    relay: str
    on: TimeOfDay
    off: TimeOfDay
    days: list[str]


_RELAY_KEYS = {"relay", "on", "off", "days"}
_BROADCAST_KEYS = {"at", "clip", "days", "priority", "volume"}


def _as_mapping(item: object) -> Mapping[str, Any] | None:
    if isinstance(item, Mapping):
        return item
    dump = getattr(item, "model_dump", None)
    if callable(dump):
        dumped = dump()
        return dumped if isinstance(dumped, Mapping) else None
    return None


class _Checker:
    """Collects the problems of one call of :func:`check_schedules`."""

    def __init__(self, relay_field: str, broadcast_field: str) -> None:
        self.relay_field = relay_field
        self.broadcast_field = broadcast_field
        self.problems: list[RuleProblem] = []

    def add(
        self,
        reason: str,
        list_field: str,
        row: int | None,
        key: str | None,
        message: str,
        **params: object,
    ) -> None:
        self.problems.append(RuleProblem(reason, list_field, row, key, message, params))

    def keys(
        self,
        raw: Mapping[str, Any],
        allowed: set[str],
        required: tuple[str, ...],
        where: tuple[str, int],
    ) -> bool:
        list_field, number = where
        ok = True
        for key in sorted(set(raw) - allowed, key=str):
            self.add("unknown_key", list_field, number, str(key), "unknown key", name=str(key))
            ok = False
        for key in required:
            if key not in raw:
                self.add("missing_key", list_field, number, key, "required key is missing")
                ok = False
        return ok

    def time(self, raw: Mapping[str, Any], key: str, where: tuple[str, int]) -> TimeOfDay | None:
        try:
            return parse_time(raw[key])
        except TimeFormatError as exc:
            value = raw[key] if isinstance(raw[key], str) else repr(raw[key])
            self.add(exc.reason, where[0], where[1], key, str(exc), value=value, **exc.params)
            return None

    def days(self, raw: Mapping[str, Any], where: tuple[str, int]) -> list[str] | None:
        if "days" not in raw:
            return list(WEEKDAYS)
        try:
            return parse_days(raw["days"])
        except TimeFormatError as exc:
            self.add(exc.reason, where[0], where[1], "days", str(exc))
            return None

    def relay_row(
        self, number: int, item: object, relay_names: Collection[str] | None
    ) -> _Row | None:
        where = (self.relay_field, number)
        raw = _as_mapping(item)
        if raw is None:
            self.add(
                "bad_row",
                self.relay_field,
                number,
                None,
                "a row is an object with relay, on, off, days",
            )
            return None
        if not self.keys(raw, _RELAY_KEYS, ("relay", "on", "off"), where):
            return None
        relay = raw["relay"]
        ok = True
        if not isinstance(relay, str) or (relay_names is not None and relay not in relay_names):
            known = ", ".join(sorted(relay_names)) if relay_names is not None else ""
            self.add(
                "unknown_relay",
                self.relay_field,
                number,
                "relay",
                f"no relay of that name (relays: {known or 'none'})",
                relay=relay if isinstance(relay, str) else repr(relay),
            )
            ok = False
        on, off, days = (
            self.time(raw, "on", where),
            self.time(raw, "off", where),
            self.days(raw, where),
        )
        if not ok or on is None or off is None or days is None:
            return None
        assert isinstance(relay, str)  # noqa: S101 - checked above
        return _Row(number, relay, on, off, days)

    def broadcast_row(self, number: int, item: object) -> dict[str, Any] | None:
        where = (self.broadcast_field, number)
        raw = _as_mapping(item)
        if raw is None:
            self.add(
                "bad_row",
                self.broadcast_field,
                number,
                None,
                "a row is an object with at, clip, days",
            )
            return None
        if not self.keys(raw, _BROADCAST_KEYS, ("at", "clip"), where):
            return None
        at, days = self.time(raw, "at", where), self.days(raw, where)
        ok = at is not None and days is not None
        clip = raw["clip"]
        if not isinstance(clip, str) or not 1 <= len(clip) <= MAX_CLIP_ID:
            self.add(
                "bad_value", where[0], number, "clip", f"a clip id of 1 to {MAX_CLIP_ID} characters"
            )
            ok = False
        priority = raw.get("priority", "scheduled")
        if priority not in PRIORITIES:
            self.add(
                "bad_value",
                where[0],
                number,
                "priority",
                f"priority is one of {', '.join(PRIORITIES)}",
            )
            ok = False
        volume = raw.get("volume")
        if volume is not None and (
            isinstance(volume, bool) or not isinstance(volume, int) or not 0 <= volume <= 100
        ):
            self.add(
                "bad_value", where[0], number, "volume", "volume is a whole number from 0 to 100"
            )
            ok = False
        if not ok or at is None or days is None:
            return None
        row: dict[str, Any] = {
            "at": at.canonical(),
            "clip": clip,
            "days": days,
            "priority": priority,
        }
        row["volume"] = volume
        return row

    def year(self, rows: list[_Row], sun: Sun, today: date) -> None:
        """The rules that need the calendar: an interval never empty, an order that holds
        all year, and no overlap between rows of one relay."""
        spans: dict[str, list[tuple[int, int, int, date]]] = {}
        per_relay: dict[str, int] = {}
        for row in rows:
            per_relay[row.relay] = per_relay.get(row.relay, 0) + 1
        for row in rows:
            try:
                found = _row_spans(row, sun, today, overlap=per_relay[row.relay] > 1)
            except SunError as exc:
                self.add("sun_unavailable", self.relay_field, row.number, "on", str(exc))
                continue
            if isinstance(found, RuleProblem):
                self.problems.append(found)
                continue
            spans.setdefault(row.relay, []).extend(found)
        for relay, items in spans.items():
            items.sort()
            reported: set[tuple[int, int]] = set()
            latest: tuple[int, int] | None = None  # (off, row) of the longest so far
            for start, end, number, day in items:
                if latest is not None and start < latest[0] and latest[1] != number:
                    pair = (min(latest[1], number), max(latest[1], number))
                    if pair not in reported:
                        reported.add(pair)
                        self.add(
                            "overlap",
                            self.relay_field,
                            pair[1],
                            None,
                            f"overlaps row {pair[0]} of relay {relay} (first on {day.isoformat()})",
                            other_row=pair[0],
                            relay=relay,
                            date=day.isoformat(),
                        )
                if latest is None or end > latest[0]:
                    latest = (end, number)


def _row_spans(
    row: _Row, sun: Sun, today: date, *, overlap: bool
) -> list[tuple[int, int, int, date]] | RuleProblem:
    """The row's intervals over the coming year, in seconds from ``today``'s midnight
    (only when another row of its relay may ``overlap`` it), or the problem that makes
    the row unusable. A row of two clock times is the same every day: one day is enough."""
    spans = []
    crosses: bool | None = None
    fixed = row.on.sun is None and row.off.sun is None
    days = SCAN_DAYS
    if fixed and not overlap:
        days = 0
        if row.on == row.off:
            return RuleProblem(
                "empty_interval", "", row.number, "off", "off is at the same moment as on", {}
            )
    for offset in range(days):
        day = today + timedelta(days=offset)
        if WEEKDAYS[day.weekday()] not in row.days:
            continue
        on_s, off_s = row.on.seconds(day, sun), row.off.seconds(day, sun)
        if on_s == off_s:
            return RuleProblem(
                "empty_interval",
                "",
                row.number,
                "off",
                f"off is at the same moment as on (on {day.isoformat()})",
                {"date": day.isoformat()},
            )
        crossing = off_s < on_s
        if crosses is None:
            crosses = crossing
        elif crossing != crosses:
            return RuleProblem(
                "order_varies",
                "",
                row.number,
                "off",
                f"off is {'before' if crossing else 'after'} on from {day.isoformat()} but "
                f"{'after' if crossing else 'before'} it earlier in the year: choose times whose "
                "order holds all year",
                {"date": day.isoformat()},
            )
        if not overlap:
            continue
        base = offset * 86_400
        end = (
            base + 86_400 + row.off.seconds(day + timedelta(days=1), sun)
            if crossing
            else base + off_s
        )
        spans.append((base + on_s, end, row.number, day))
    return spans


def check_schedules(
    relays: object,
    broadcasts: object,
    *,
    sun: Sun,
    today: date,
    relay_names: Collection[str] | None = None,
    relay_field: str = "schedules",
    broadcast_field: str = "broadcasts",
) -> Verdict:
    """Judge a whole set of schedules; every problem is listed, none stops the others.

    ``relay_names`` is the set of configured relays (None: not checked). ``today`` is the
    first day of the year scanned for rules that depend on the sun. The field names are
    how the caller names the two lists (``schedules.relays`` in the configuration).
    """
    checker = _Checker(relay_field, broadcast_field)
    rows: list[_Row] = []
    relay_items = _rows(checker, relays, relay_field)
    for number, item in enumerate(relay_items, start=1):
        row = checker.relay_row(number, item, relay_names)
        if row is not None:
            rows.append(row)
    done_broadcasts = []
    for number, item in enumerate(_rows(checker, broadcasts, broadcast_field), start=1):
        broadcast = checker.broadcast_row(number, item)
        if broadcast is not None:
            done_broadcasts.append(broadcast)
    checker.year(rows, sun, today)
    problems = [
        problem if problem.field else _with_field(problem, relay_field)
        for problem in checker.problems
    ]
    problems.sort(key=lambda p: (p.field != relay_field, p.row or 0))
    done_relays = [
        {"relay": row.relay, "on": row.on.canonical(), "off": row.off.canonical(), "days": row.days}
        for row in rows
    ]
    return Verdict(done_relays, done_broadcasts, problems)


def _with_field(problem: RuleProblem, list_field: str) -> RuleProblem:
    return RuleProblem(
        problem.reason, list_field, problem.row, problem.key, problem.message, problem.params
    )


def _rows(checker: _Checker, items: object, list_field: str) -> Sequence[object]:
    if items is None:
        return []
    if not isinstance(items, list | tuple):
        checker.add("bad_value", list_field, None, None, "a list of rows")
        return []
    if len(items) > MAX_ROWS:
        checker.add(
            "too_many_rows", list_field, None, None, f"at most {MAX_ROWS} rows", max=MAX_ROWS
        )
        return []
    return items
