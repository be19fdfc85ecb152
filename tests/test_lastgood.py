"""Never dark: a config broken by a power cut or a typo runs on the last good one, loudly."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gateway.lastgood import FILE_NAME, recall
from gateway.outbox import Outbox
from tests.conftest import ConfigFile, Daemon

pytestmark = pytest.mark.slow


def noon_zone() -> str:
    """An IANA zone where it is between 12:00 and 13:00 now: the schedules below then
    have a known answer (yard on, porch off) without touching the daemon's clock."""
    offset = 12 - datetime.now(UTC).hour  # hours east of UTC, -11 .. +12
    return f"Etc/GMT{-offset:+d}"  # the Etc zones' sign is the POSIX one, inverted


SCHEDULED = """
[relays.porch]
pin = 23
power_on = "schedule"

[[schedules.relays]]
relay = "yard"
on = "06:00"
off = "18:00"

[[schedules.relays]]
relay = "porch"
on = "00:00"
off = "01:00"
"""


def write_scheduled(config: ConfigFile) -> str:
    """The base config with a noon zone, public state, and two scheduled relays."""
    config.write(
        {
            'groups = ["commune.test"]': f'groups = ["commune.test"]\ntimezone = "{noon_zone()}"',
            "pin = 17\n": 'pin = 17\npower_on = "schedule"\n',
            '[web]\nhost = "127.0.0.1"': '[web]\nhost = "127.0.0.1"\npublic_status = true',
        },
        extra=SCHEDULED,
    )
    return config.path.read_text(encoding="utf-8")


def state(daemon: Daemon) -> dict[str, Any]:
    status, body = daemon.get("/api/v1/state")
    assert status == 200, body
    return body


def wait_for(daemon: Daemon, check: Callable[[dict[str, Any]], bool], within_s: float = 10) -> None:
    deadline = time.monotonic() + within_s
    while not check(state(daemon)):
        assert time.monotonic() < deadline, daemon.output()
        time.sleep(0.05)


def relays_follow_schedule(body: dict[str, Any]) -> bool:
    relays = body.get("relays", {}).get("relays", {})
    return relays.get("yard", {}).get("on") is True and relays.get("porch", {}).get("on") is False


def settled(body: dict[str, Any]) -> bool:
    """Relays on their schedule, and the system snapshot published (the web state has a
    component's key only once it has one, a moment after start)."""
    return relays_follow_schedule(body) and "system" in body


def events(state_dir: Path) -> list[dict[str, Any]]:
    """Every event in the outbox, read with the daemon stopped."""

    async def read() -> list[dict[str, Any]]:
        outbox = await Outbox.open(state_dir)
        try:
            batch = await outbox.read("events", after_seq=0, max_records=10_000, max_bytes=10**8)
            return [json.loads(body) for body in batch.bodies] if batch else []
        finally:
            await outbox.close()

    return asyncio.run(read())


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda text: text[: len(text) // 2], id="truncated"),
        pytest.param(lambda text: text.replace("pin = 23", "pni = 23"), id="typo"),
    ],
)
def test_a_damaged_config_runs_on_the_last_good_one(
    config_file: ConfigFile,
    start_daemon: Callable[..., Daemon],
    damage: Callable[[str], str],
) -> None:
    """A start with a good file keeps it; a restart after the file is truncated (power cut
    mid-edit) or mistyped runs on that copy: relays follow their schedule, the system
    state says config_status "last_good" with the problems, an event and an ERROR line
    tell of it. Fixing the file and reloading ends it."""
    good = write_scheduled(config_file)
    args = ("--config", str(config_file.path))
    first = start_daemon(*args, web_port=config_file.web_port)
    first.wait_healthy()
    wait_for(first, settled)
    assert state(first)["system"]["config_status"] == "ok"
    assert first.stop()[0] == 0
    copy = recall(config_file.state_dir)
    assert copy is not None
    assert copy.text == good
    assert copy.source == str(config_file.path)

    config_file.path.write_text(damage(good), encoding="utf-8")
    second = start_daemon(*args, web_port=config_file.web_port)
    second.wait_healthy()
    wait_for(second, settled)
    system = state(second)["system"]
    assert system["config_status"] == "last_good"
    problems = {problem["key"]: problem["message"] for problem in system["config_problems"]}
    if "pni" in damage("pin = 23"):
        assert problems == {
            "relays.porch.pni": "unknown key (did you mean pin?)",
            "relays.porch.pin": "required key is missing",
        }
    else:
        assert list(problems) == [str(config_file.path)]
        assert problems[str(config_file.path)].startswith("invalid TOML")
    fallback = [ln for ln in second.log_lines() if ln["event"] == "config.fallback"]
    assert [ln["level"] for ln in fallback] == ["error"], second.output()

    config_file.path.write_text(good, encoding="utf-8")
    second.signal(signal.SIGHUP)
    wait_for(second, lambda body: body["system"]["config_status"] == "ok", within_s=10)
    assert state(second)["system"]["config_problems"] == []
    assert second.stop()[0] == 0
    told = [e for e in events(config_file.state_dir) if e["type"] == "system.config_fallback"]
    assert len(told) == 1
    assert told[0]["problems"] == system["config_problems"]
    assert told[0]["config"] == str(config_file.path)


def test_a_damaged_last_good_copy_is_not_used(config_file: ConfigFile) -> None:
    """A copy whose text does not match its checksum (a bad sector) is ignored."""
    from gateway.lastgood import remember  # noqa: PLC0415

    config_file.state_dir.mkdir()
    text = config_file.path.read_text(encoding="utf-8")
    remember(config_file.state_dir, config_file.path, text)
    assert recall(config_file.state_dir) is not None
    stored = config_file.state_dir / FILE_NAME
    stored.write_text(stored.read_text().replace("test.gw1", "test.gw2"))
    assert recall(config_file.state_dir) is None
