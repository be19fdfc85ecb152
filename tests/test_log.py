"""Logging: one pipeline for our lines and the libraries', JSON or human-readable."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import threading
import zoneinfo
from datetime import UTC, datetime, timedelta

import pytest
from structlog.testing import capture_logs

from gateway.log import (
    configure_logging,
    get_logger,
    holding_lines,
    info_off_the_hot_path,
    is_enabled,
    set_level,
)


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    """The JSON objects written to ``stream``."""
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_for_our_logs_and_for_libraries() -> None:
    """Our structlog lines and a library's stdlib logging both come out as JSON with ts,
    level, event and component; a library's logger name becomes its component."""
    stream = io.StringIO()
    configure_logging(fmt="json", stream=stream, tz=zoneinfo.ZoneInfo("Asia/Ho_Chi_Minh"))
    get_logger("relays").info("relay.switched", relay="yard", on=True)
    logging.getLogger("aiomqtt").warning("connection lost: %s", "timeout")
    ours, library = lines(stream)
    assert ours["component"] == "relays"
    assert ours["event"] == "relay.switched"
    assert ours["level"] == "info"
    assert ours["relay"] == "yard"
    assert str(ours["ts"]).endswith("+07:00")
    assert library["component"] == "aiomqtt"
    assert library["event"] == "connection lost: timeout"
    assert library["level"] == "warning"
    assert "ts" in library


def test_vietnamese_text_stays_readable_and_odd_values_do_not_crash() -> None:
    """Labels in Vietnamese are written as UTF-8, not escaped; a value JSON cannot hold
    is written as its repr instead of losing the line."""
    stream = io.StringIO()
    configure_logging(fmt="json", stream=stream)
    get_logger("web").info("label.changed", label="Đèn sân", raw=b"\xff", obj=object())
    (line,) = lines(stream)
    assert line["label"] == "Đèn sân"
    assert "Đèn sân" in stream.getvalue()
    assert line["raw"] == repr(b"\xff")


def test_level_changes_at_run_time() -> None:
    """set_level (what a reload of log.level does) takes effect on the next line, for
    loggers created before the change too."""
    stream = io.StringIO()
    log = get_logger("app")
    configure_logging(level="INFO", fmt="json", stream=stream)
    log.debug("hidden")
    set_level("DEBUG")
    log.debug("shown")
    assert [line["event"] for line in lines(stream)] == ["shown"]


def test_is_enabled_answers_as_the_line_would_be_filtered() -> None:
    """The hot path's shortcut agrees with what is logged, also after a level change."""
    stream = io.StringIO()
    log = get_logger("commands")
    configure_logging(level="WARNING", fmt="json", stream=stream)
    assert not is_enabled("commands", logging.INFO)
    assert is_enabled("commands", logging.WARNING)
    set_level("INFO")
    assert is_enabled("commands", logging.INFO)
    log.info("command.handled")
    assert [line["event"] for line in lines(stream)] == ["command.handled"]


def test_console_format_is_for_people() -> None:
    """On a terminal (or with format = "console") lines are plain text with the event
    and the key=value pairs."""
    stream = io.StringIO()
    configure_logging(fmt="console", stream=stream)
    get_logger("hotspots").warning("hotspot.down", hotspot="hall")
    text = stream.getvalue()
    assert "hotspot.down" in text
    assert "hotspot=hall" in text
    assert not text.startswith("{")


def test_reconfiguring_replaces_the_handler() -> None:
    """Configuring twice (tests, reloads) leaves one handler: no line is written twice."""
    first, second = io.StringIO(), io.StringIO()
    configure_logging(fmt="json", stream=first)
    configure_logging(fmt="json", stream=second)
    get_logger("app").info("once")
    assert first.getvalue() == ""
    assert len(lines(second)) == 1


def test_a_logger_made_before_configuration_follows_it() -> None:
    """Modules make their loggers at import time; configuring later (and again, as the
    tests and a restart of the pipeline do) still sends their lines to the new stream
    with the new time zone."""
    early = get_logger("relays", relay="yard")
    first, second = io.StringIO(), io.StringIO()
    configure_logging(fmt="json", stream=first, tz=zoneinfo.ZoneInfo("UTC"))
    early.info("relay.switched", on=True)
    configure_logging(fmt="json", stream=second, tz=zoneinfo.ZoneInfo("Asia/Ho_Chi_Minh"))
    early.info("relay.switched", on=False)
    (one,), (two,) = lines(first), lines(second)
    assert one["relay"] == two["relay"] == "yard"
    assert str(one["ts"]).endswith("+00:00")
    assert str(two["ts"]).endswith("+07:00")


def test_timestamps_have_milliseconds_and_the_offset() -> None:
    """The cached per-second text still gives each line its own milliseconds, in the
    RFC 3339 shape the journal readers parse."""
    stream = io.StringIO()
    configure_logging(fmt="json", stream=stream, tz=zoneinfo.ZoneInfo("Asia/Ho_Chi_Minh"))
    log = get_logger("app")
    for n in range(3):
        log.info("tick", n=n)
    for line in lines(stream):
        stamp = datetime.fromisoformat(str(line["ts"]))
        assert stamp.utcoffset() == timedelta(hours=7)
        assert abs((datetime.now(UTC) - stamp).total_seconds()) < 60
        assert len(str(line["ts"])) == len("2026-12-03T20:28:44.123+07:00")


def test_exception_carries_the_traceback() -> None:
    """``log.exception`` inside an except block writes the error level and the traceback."""
    stream = io.StringIO()
    configure_logging(fmt="json", stream=stream)
    boards: dict[str, int] = {}
    try:
        boards["relay board gone"]
    except KeyError:
        get_logger("relays").exception("relay.failed", relay="yard")
    (line,) = lines(stream)
    assert line["level"] == "error"
    assert "KeyError: 'relay board gone'" in str(line["exception"])


def test_our_lines_and_library_lines_never_share_a_line() -> None:
    """Threads logging through both routes at once (ours and a library's stdlib logger)
    give whole JSON lines, each once."""
    stream = io.StringIO()
    configure_logging(fmt="json", stream=stream)
    ours, library = get_logger("relays"), logging.getLogger("aiomqtt")

    def burst(n: int) -> None:
        for i in range(200):
            if n % 2:
                ours.info("ours", i=i)
            else:
                library.warning("theirs %d", i)

    threads = [threading.Thread(target=burst, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    parsed = lines(stream)
    assert len(parsed) == 800
    assert sum(1 for line in parsed if line["event"] == "ours") == 400


def test_capture_logs_sees_loggers_made_at_import_time() -> None:
    """structlog's test helper reaches our bound loggers (the suite relies on it)."""
    configure_logging(fmt="json", stream=io.StringIO())
    log = get_logger("hotspots")
    with capture_logs() as captured:
        log.warning("hotspot.down", hotspot="hall")
    assert captured == [
        {
            "component": "hotspots",
            "hotspot": "hall",
            "event": "hotspot.down",
            "log_level": "warning",
        }
    ]


def test_lines_held_for_a_command_are_written_when_it_says() -> None:
    """Inside :func:`holding_lines` (a command's handler) a line off the hot path waits
    until the holder writes it, in order; at WARNING it is not even kept."""
    stream = io.StringIO()
    configure_logging(fmt="json", stream=stream)
    log = get_logger("relays")
    with holding_lines() as held:
        info_off_the_hot_path(log, "relay.switched", relay="yard", on=True)
        info_off_the_hot_path(log, "relay.switched", relay="hall", on=False)
        assert stream.getvalue() == ""
    assert stream.getvalue() == ""
    held.write()
    assert [(line["event"], line["relay"]) for line in lines(stream)] == [
        ("relay.switched", "yard"),
        ("relay.switched", "hall"),
    ]
    set_level("WARNING")
    with holding_lines() as held:
        info_off_the_hot_path(log, "relay.switched", relay="yard", on=True)
    held.write()
    assert len(lines(stream)) == 2


async def test_lines_off_the_hot_path_without_a_holder_follow_the_step() -> None:
    """Without a command holding them (a timer, or a task the handler started after its
    block ended) the line is written once the loop's current step is over; without a
    loop, at once."""
    stream = io.StringIO()
    configure_logging(fmt="json", stream=stream)
    log = get_logger("relays")
    with holding_lines() as held:
        pass
    info_off_the_hot_path(log, "relay.switched", relay="yard")
    assert stream.getvalue() == "", "written before the step ended"
    await asyncio.sleep(0)
    assert [line["relay"] for line in lines(stream)] == ["yard"]
    held.write()
    assert len(lines(stream)) == 1
    await asyncio.to_thread(info_off_the_hot_path, log, "relay.switched", relay="hall")
    assert [line["relay"] for line in lines(stream)] == ["yard", "hall"]


def test_a_held_line_keeps_the_time_it_was_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    """A line held while a command ran (a PA command's amplifier switch, seconds before
    its reply) is stamped with the moment it was asked for, not the moment it is written;
    lines written meanwhile keep their own time."""
    stream = io.StringIO()
    configure_logging(fmt="json", stream=stream, tz=UTC)
    log = get_logger("relays")
    clock = [1_800_000_000.25]
    monkeypatch.setattr("gateway.log.time.time", lambda: clock[0])
    with holding_lines() as held:
        info_off_the_hot_path(log, "relay.switched", relay="amp")
    clock[0] += 2.5
    log.info("pa.started")
    held.write()
    stamps = {line["event"]: line["ts"] for line in lines(stream)}
    assert stamps["relay.switched"] == "2027-01-15T08:00:00.250+00:00"
    assert stamps["pa.started"] == "2027-01-15T08:00:02.750+00:00"
