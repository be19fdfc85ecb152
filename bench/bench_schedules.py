"""Schedule rules: one ``check_schedules`` call against a year of bare sun times.

The baseline is the floor of any rule that looks at the coming year: astral's sunrise
and sunset for 366 days at the village, nothing else. ``check_schedules`` adds reading
the times (Vietnamese words, NFC/NFD), the empty/order checks of every row on every day
and the overlap sweep of every relay. Measured for the demo's three rows and for the
worst ``schedule.set`` allowed: 200 sun-based rows, two per relay.
"""

from __future__ import annotations

from datetime import date, timedelta

import astral.sun
from astral import Observer

from bench.common import best_rate
from gateway.schedule_rules import SCAN_DAYS, Sun, check_schedules

LAT, LON, ZONE = 18.34, 105.9, "Asia/Ho_Chi_Minh"
TODAY = date(2026, 12, 3)
DEMO = [
    {"relay": "yard", "on": "sunset+10m", "off": "22:30"},
    {"relay": "yard", "on": "04:45", "off": "sunrise-15m"},
    {"relay": "road", "on": "hoàng hôn", "off": "23:00"},
]
WORST = [
    {"relay": f"r{i // 2}", "on": "hoàng hôn + 10 phút", "off": "22:30"}
    if i % 2 == 0
    else {"relay": f"r{i // 2}", "on": "04:45", "off": "bình minh - 15 phút"}
    for i in range(200)
]


def run() -> list[str]:
    """Measure the baseline and both sets; return one ratio line per set."""
    sun = Sun(latitude=LAT, longitude=LON, timezone=ZONE)
    observer = Observer(latitude=LAT, longitude=LON)

    def bare() -> None:
        for offset in range(SCAN_DAYS + 1):
            astral.sun.sun(observer, date=TODAY + timedelta(days=offset), tzinfo=sun.tz)

    baseline = 1 / best_rate(bare, 1, rounds=3)
    lines = []
    for name, rows in (("demo, 3 rows", DEMO), ("worst, 200 rows", WORST)):

        def ours(rows: list[dict[str, str]] = rows) -> None:
            fresh = Sun(latitude=LAT, longitude=LON, timezone=ZONE)  # no sun times cached
            verdict = check_schedules(rows, [], sun=fresh, today=TODAY)
            assert verdict.ok, verdict.problems

        measured = 1 / best_rate(ours, 1, rounds=3)
        lines.append(
            f"schedule rules ({name}): {measured * 1000:.0f} ms per check vs a bare year of "
            f"sun times {baseline * 1000:.0f} ms -> {measured / baseline:.1f}x"
        )
    return lines
