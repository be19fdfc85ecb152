"""Timestamps carry the village's offset, whatever zone the Pi itself was left in."""

from __future__ import annotations

import re
from datetime import datetime

from gateway.clock import local_iso, now_iso, set_zone

RFC3339 = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3})?[+-]\d\d:\d\d"


def test_gateway_zone_is_used_for_every_timestamp() -> None:
    """With gateway.timezone Asia/Ho_Chi_Minh, now and stored times end in +07:00."""
    set_zone("Asia/Ho_Chi_Minh")
    assert now_iso().endswith("+07:00")
    assert re.fullmatch(RFC3339, now_iso("milliseconds"))
    assert local_iso(1_795_900_000) == "2026-11-29T04:06:40+07:00"


def test_without_a_zone_the_machines_own_is_used() -> None:
    """Small tools (send, watch) that have no gateway config use the machine's zone."""
    set_zone(None)
    assert now_iso().endswith(datetime.now().astimezone().isoformat()[-6:])
