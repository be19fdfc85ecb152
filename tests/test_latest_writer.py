"""The relay state file's writer: off the event loop, latest text wins, paced."""

from __future__ import annotations

import threading
from pathlib import Path

from gateway.files import LatestWriter


def test_a_burst_is_one_write_of_the_newest_text(tmp_path: Path) -> None:
    """100 changes in a row cost one or two writes (each is two fsyncs on an SD card),
    and the file ends with the newest text."""
    errors: list[OSError] = []
    writer = LatestWriter(tmp_path / "state.json", on_error=errors.append, delay_s=0.05)
    for n in range(100):
        writer.write(f"{n}")
    assert writer.flush()
    assert (tmp_path / "state.json").read_text() == "99"
    assert 1 <= writer.writes <= 2
    writer.close()
    assert errors == []


def test_close_writes_what_waits(tmp_path: Path) -> None:
    """A change given just before the stop is on disk after close(), delay or not."""
    writer = LatestWriter(tmp_path / "state.json", on_error=lambda e: None, delay_s=30)
    writer.write("last")
    writer.close()
    assert (tmp_path / "state.json").read_text() == "last"


def test_a_failed_write_is_reported_not_raised(tmp_path: Path) -> None:
    """The relay switched whether or not the card took the file: the writer reports the
    failure to its owner (who logs it) and goes on."""
    reported = threading.Event()
    errors: list[OSError] = []

    def on_error(error: OSError) -> None:
        errors.append(error)
        reported.set()

    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the folder should be")
    writer = LatestWriter(blocked / "state.json", on_error=on_error, delay_s=0)
    writer.write("x")
    assert reported.wait(10)
    assert isinstance(errors[0], OSError)
    writer.close()
