"""Log upload: the real structlog pipeline copies log lines into a real outbox's ``logs``.

Every test configures logging exactly as the daemon does (``configure_logging`` with the
uploader as a sink), writes the local lines to a string buffer, and reads back what was
committed to an outbox in the test's own folder.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from gateway.log import configure_logging, get_logger
from gateway.logupload import MAX_FIELD_CHARS, LogUploader
from gateway.outbox import Outbox


@pytest.fixture(autouse=True)
def _restore_stdlib_logging() -> Iterator[None]:
    """Take our handler (and its uploader) off the root logger after each test."""
    root = logging.getLogger()
    level = root.level
    yield
    for handler in [h for h in root.handlers if h.get_name() == "village-gateway"]:
        root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture
async def outbox(tmp_path: Path) -> AsyncIterator[Outbox]:
    """A real outbox with a short commit window, closed after the test."""
    opened = await Outbox.open(tmp_path / "outbox", max_bytes=1_000_000, commit_window_s=0.01)
    try:
        yield opened
    finally:
        await opened.close()


def local_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    """The JSON lines the daemon would have written to its journal."""
    return [json.loads(line) for line in stream.getvalue().splitlines()]


async def uploaded(outbox: Outbox, *, at_least: int, within_s: float = 5.0) -> list[dict[str, Any]]:
    """The committed ``logs`` records, once there are ``at_least`` of them (bounded wait)."""
    async with asyncio.timeout(within_s):
        while True:
            batch = await outbox.read("logs", after_seq=0, max_records=10_000, max_bytes=1 << 30)
            records = [] if batch is None else [json.loads(body) for body in batch.bodies]
            if len(records) >= at_least:
                return records
            await asyncio.sleep(0.02)


async def settle(outbox: Outbox) -> None:
    """Wait until everything queued so far is committed (an urgent marker goes last)."""
    await outbox.append("events", {"type": "test.marker"}, urgent=True)


def setup(uploader: LogUploader, *, level: str = "INFO") -> io.StringIO:
    """Configure the daemon's logging with ``uploader`` as its sink; returns the local stream."""
    stream = io.StringIO()
    configure_logging(level=level, fmt="json", stream=stream, sinks=[uploader])
    return stream


async def test_info_lines_go_up_and_debug_lines_stay_local(outbox: Outbox) -> None:
    """With the journal at DEBUG and the upload level at INFO, an INFO and a WARNING line
    arrive in the outbox's logs stream with their time stamp, level, event and component,
    while a DEBUG line is written locally but never uploaded."""
    uploader = LogUploader(level="INFO")
    uploader.attach(outbox)
    stream = setup(uploader, level="DEBUG")
    log = get_logger("relays")
    log.debug("relay.poll", relay="yard")
    log.info("relay.switched", relay="yard", on=True)
    log.warning("relay.stuck", relay="amplifier")
    await settle(outbox)
    records = await uploaded(outbox, at_least=2)
    uploader.attach(None)
    assert [r["event"] for r in records] == ["relay.switched", "relay.stuck"]
    switched, stuck = records
    assert switched["level"] == "info"
    assert switched["component"] == "relays"
    assert switched["relay"] == "yard"
    assert switched["on"] is True
    assert stuck["level"] == "warning"
    assert all(datetime.fromisoformat(r["ts"]).tzinfo is not None for r in records)
    assert [r["seq"] for r in records] == [1, 2]
    assert [line["event"] for line in local_lines(stream)] == [
        "relay.poll",
        "relay.switched",
        "relay.stuck",
    ]


async def test_a_local_only_line_stays_in_the_journal(outbox: Outbox) -> None:
    """A line marked local_only (the web setup code) is written locally at WARNING but
    never reaches the outbox, while the lines around it do."""
    uploader = LogUploader(level="INFO")
    uploader.attach(outbox)
    stream = setup(uploader)
    log = get_logger("web")
    log.info("web.before")
    log.warning("web.setup_code", code="123456", local_only=True)
    log.info("web.after")
    await settle(outbox)
    records = await uploaded(outbox, at_least=2)
    uploader.attach(None)
    assert [r["event"] for r in records] == ["web.before", "web.after"]
    assert "123456" not in json.dumps(records)
    assert "web.setup_code" in [line["event"] for line in local_lines(stream)]


async def test_a_library_line_from_stdlib_logging_goes_up(outbox: Outbox) -> None:
    """A warning a library writes through the standard logging module (aiomqtt here) is
    uploaded like our own lines, named after the library's logger."""
    uploader = LogUploader(level="INFO")
    uploader.attach(outbox)
    setup(uploader)
    logging.getLogger("aiomqtt").warning("connection lost: %s", "timeout")
    (record,) = await uploaded(outbox, at_least=1)
    uploader.attach(None)
    assert record["component"] == "aiomqtt"
    assert record["event"] == "connection lost: timeout"
    assert record["level"] == "warning"
    assert "_record" not in record
    assert "_from_structlog" not in record


async def test_a_huge_field_is_cut_for_upload_but_kept_whole_locally(outbox: Outbox) -> None:
    """A 1 MB value (a dumped response, say) goes up cut to MAX_FIELD_CHARS with a marker
    that says how much was cut; the outbox takes the record although it holds records of
    at most a tenth of that; the local journal line still holds all of it."""
    assert outbox.max_record_bytes < 1_000_000, "the outbox would take the whole field anyway"
    uploader = LogUploader(level="INFO")
    uploader.attach(outbox)
    stream = setup(uploader)
    huge = "ă" * 1_000_000
    get_logger("web").error("request.failed", body=huge, status=502)
    (record,) = await uploaded(outbox, at_least=1)
    uploader.attach(None)
    cut = 1_000_000 - MAX_FIELD_CHARS
    assert record["body"] == "ă" * MAX_FIELD_CHARS + f"…[truncated {cut} chars]"
    assert record["status"] == 502
    (line,) = local_lines(stream)
    assert line["body"] == huge


async def test_values_json_cannot_hold_go_up_as_their_repr(outbox: Outbox) -> None:
    """An object and raw bytes in a log line do not lose the line: each is uploaded as
    its repr, next to the ordinary fields."""
    uploader = LogUploader(level="INFO")
    uploader.attach(outbox)
    setup(uploader)
    thing, raw = object(), b"\xff\x00ok"
    get_logger("pa").info("clip.decoded", thing=thing, raw=raw, frames=48_000)
    (record,) = await uploaded(outbox, at_least=1)
    uploader.attach(None)
    assert record["thing"] == repr(thing)
    assert record["raw"] == repr(raw)
    assert record["frames"] == 48_000


async def test_a_burst_is_limited_per_minute_and_summarised(outbox: Outbox) -> None:
    """With a limit of 10 lines a minute, a burst of 50 lines uploads the first 10; once
    the minute is over the next line brings one ``logs.suppressed`` record saying 40
    lines were held back, followed by the line itself."""
    now = [1000.0]
    uploader = LogUploader(level="INFO", per_minute=10, clock=lambda: now[0])
    uploader.attach(outbox)
    stream = setup(uploader)
    log = get_logger("hotspots")
    for n in range(50):
        now[0] += 0.5
        log.info("hotspot.flap", n=n)
    await settle(outbox)
    burst = await uploaded(outbox, at_least=10)
    assert [r["n"] for r in burst] == list(range(10))
    now[0] += 60
    log.info("hotspot.calm")
    records = await uploaded(outbox, at_least=12)
    uploader.attach(None)
    summary, calm = records[10:]
    assert summary["event"] == "logs.suppressed"
    assert summary["count"] == 40
    assert summary["per_minute"] == 10
    assert summary["level"] == "warning"
    assert calm["event"] == "hotspot.calm"
    assert len(local_lines(stream)) == 51, "the local journal must keep every line"


async def test_lines_before_the_outbox_opens_are_kept_and_delivered(tmp_path: Path) -> None:
    """At boot during an outage, lines logged before the outbox is open are held and
    written into it as soon as it is attached, ahead of later lines and in order; they
    are durable like any other record (still there after the outbox is reopened)."""
    uploader = LogUploader(level="INFO")
    setup(uploader)
    log = get_logger("app")
    log.info("boot.started", boot=1)
    logging.getLogger("aiomqtt").warning("broker unreachable")
    folder = tmp_path / "outbox"
    outbox = await Outbox.open(folder, commit_window_s=0.01)
    uploader.attach(outbox)
    log.info("boot.outbox_open")
    first = await uploaded(outbox, at_least=3)
    uploader.attach(None)
    await outbox.close()
    assert [r["event"] for r in first] == [
        "boot.started",
        "broker unreachable",
        "boot.outbox_open",
    ]
    assert [r["seq"] for r in first] == [1, 2, 3]
    reopened = await Outbox.open(folder, commit_window_s=0.01)
    try:
        again = await uploaded(reopened, at_least=3)
    finally:
        await reopened.close()
    assert again == first
