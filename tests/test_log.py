"""Logging: one pipeline for our lines and the libraries', JSON or human-readable."""

from __future__ import annotations

import io
import json
import logging
import zoneinfo

from gateway.log import configure_logging, get_logger, is_enabled, set_level


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
