"""Log pipeline: lines/s through gateway.log against json.dumps of the same fields.

The baseline is the floor any JSON logger must pay: one dict serialised and written.
Our pipeline adds the level filter, context, component and timestamp. Three figures:
our own INFO line alone (the issue's ≤ 3x), the same with the daemon's sinks attached
(the outbox's log uploader at its default level, the web UI's log tap), and a
library's line through the stdlib route, which keeps its LogRecord and is not the hot
path.
"""

from __future__ import annotations

import io
import json
import logging
import zoneinfo
from collections.abc import Callable, Sequence

from structlog.typing import Processor

from bench.common import best_rate
from gateway.log import configure_logging, get_logger
from gateway.logupload import LogUploader
from gateway.web.live import LogTap

LINES = 20_000


def run() -> list[str]:
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

    zone = zoneinfo.ZoneInfo("Asia/Ho_Chi_Minh")
    stream = io.StringIO()

    def through(sinks: Sequence[Processor], line: Callable[[int], None]) -> Callable[[], None]:
        def work() -> None:
            configure_logging(fmt="json", stream=stream, tz=zone, sinks=sinks)
            stream.seek(0)
            stream.truncate()
            for i in range(LINES):
                line(i)

        return work

    log = get_logger("relays")
    library = logging.getLogger("aiomqtt")

    def ours(i: int) -> None:
        log.info("relay.switched", relay="yard", on=True, n=i)

    def theirs(i: int) -> None:
        library.info("relay.switched %s", i)

    baseline = best_rate(bare, LINES)
    alone = best_rate(through((), ours), LINES)
    with_sinks = best_rate(through((LogUploader(), LogTap()), ours), LINES)
    stdlib = best_rate(through((), theirs), LINES)
    configure_logging(level="WARNING", fmt="json", stream=stream)
    return [
        f"log pipeline: {alone:,.0f} lines/s vs bare json.dumps {baseline:,.0f} lines/s"
        f" -> {baseline / alone:.1f}x the bare cost per line",
        f"log pipeline with the daemon's sinks: {with_sinks:,.0f} lines/s"
        f" -> {baseline / with_sinks:.1f}x",
        f"log pipeline, a library's stdlib line: {stdlib:,.0f} lines/s -> {baseline / stdlib:.1f}x",
    ]
