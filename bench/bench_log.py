"""Log pipeline: lines/s through gateway.log against json.dumps of the same fields.

The baseline is the floor any JSON logger must pay: one dict serialised and written.
Our pipeline adds the level filter, context, component, timestamp and stdlib routing.
"""

from __future__ import annotations

import io
import json
import zoneinfo

from bench.common import best_rate
from gateway.log import configure_logging, get_logger

LINES = 20_000


def run() -> str:
    """Measure both and return the ratio line."""
    sink = io.StringIO()

    def bare() -> None:
        sink.seek(0)
        sink.truncate()
        for i in range(LINES):
            fields = {
                "component": "relays",
                "relay": "yard",
                "on": True,
                "n": i,
                "event": "relay.switched",
                "level": "info",
                "ts": "2026-11-28T18:00:00.000+07:00",
            }
            sink.write(json.dumps(fields, ensure_ascii=False) + "\n")

    stream = io.StringIO()
    configure_logging(fmt="json", stream=stream, tz=zoneinfo.ZoneInfo("Asia/Ho_Chi_Minh"))
    log = get_logger("relays")

    def ours() -> None:
        stream.seek(0)
        stream.truncate()
        for i in range(LINES):
            log.info("relay.switched", relay="yard", on=True, n=i)

    baseline = best_rate(bare, LINES)
    measured = best_rate(ours, LINES)
    return (
        f"log pipeline: {measured:,.0f} lines/s vs bare json.dumps {baseline:,.0f} lines/s"
        f" -> {baseline / measured:.1f}x the bare cost per line"
    )
