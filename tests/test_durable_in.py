"""Durable in: a command the gateway acknowledged to the broker is never lost.

1,500 QoS 1 commands are queued for a running gateway, which is then killed (SIGKILL,
as a power cut would do to the process) or stopped (SIGTERM) while it works through
them. After a restart every command has exactly one final reply: those it had claimed
are run from its journal, those it had not are still with the broker, which delivers
them again to the gateway's persistent session.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from collections.abc import Callable

import aiomqtt
import pytest

from tests.conftest import Broker, ConfigFile, Daemon, wait_online
from tests.test_link import settings_for, subscriber

pytestmark = pytest.mark.slow

COMMANDS = 1500
CRASH_AFTER = 100  # replies seen before the stop
FINAL = {"done", "rejected", "failed", "expired", "duplicate"}


def _command(n: int) -> bytes:
    # Switching relay commands and pings, as a commune's busy evening would send.
    if n % 3 == 0:
        return f'{{"id": "q-{n}", "type": "system.ping", "args": {{}}}}'.encode()
    on = "true" if n % 2 else "false"
    return (
        f'{{"id": "q-{n}", "type": "relay.set", "args": {{"relay": "yard", "on": {on}}}}}'.encode()
    )


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
async def test_every_acknowledged_command_gets_exactly_one_final_reply(
    broker: Broker,
    config_file: ConfigFile,
    start_daemon: Callable[..., Daemon],
    stop: signal.Signals,
) -> None:
    """Queue 1,500 commands, stop the gateway after its first 100 replies, start it again: each
    command id gets exactly one final reply, none is lost."""
    _, gateway = settings_for(config_file, broker)
    config_file.path.write_text(
        config_file.path.read_text() + "\n[commands]\nmax_per_s = 100000\nburst = 100000\n",
        encoding="utf-8",
    )
    args = ("--config", str(config_file.path))
    daemon = start_daemon(*args, web_port=config_file.web_port)
    daemon.wait_healthy()
    await wait_online(broker, gateway)
    topic = f"vg/v1/{gateway}/cmd"
    async with subscriber(broker, f"vg/v1/{gateway}/reply") as seen:
        async with aiomqtt.Client(broker.host, broker.port, identifier="commune-q") as commune:

            async def queue_all() -> None:
                for first in range(0, COMMANDS, 100):
                    await asyncio.gather(
                        *(
                            commune.publish(topic, _command(n), qos=1)
                            for n in range(first, min(first + 100, COMMANDS))
                        )
                    )

            publishing = asyncio.create_task(queue_all())
            # The crash comes while the gateway is in the middle of the work: once it
            # has answered a few, whether or not the commune has finished queueing
            # (the broker keeps the rest for the gateway's persistent session).
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if len(seen.on("/reply")) >= CRASH_AFTER:
                    break
                await asyncio.sleep(0.005)
            answered_before = len(seen.on("/reply"))
            daemon.signal(stop)
            daemon.process.wait(timeout=15)
            await publishing
        assert answered_before < COMMANDS, "the gateway finished before the stop: no test"
        restarted = start_daemon(*args, web_port=config_file.web_port)
        restarted.wait_healthy(within_s=30)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ids = {r["id"] for r in seen.on("/reply") if r.get("status") in FINAL}
            if len(ids) >= COMMANDS:
                break
            await asyncio.sleep(0.2)
        # Give a second reply to any id the chance to show up before counting.
        await asyncio.sleep(1.0)
    # A reply published just before the crash, whose PUBACK the outbox had not yet
    # recorded, is published again after the restart: the same record with the same
    # seq (at least once, PROTOCOL.md), which the commune drops. A second *answer*
    # would be a second record, with a seq of its own.
    records = {(r["id"], r["seq"]) for r in seen.on("/reply") if r.get("status") in FINAL}
    finals = Counter(command_id for command_id, _ in records)
    missing = sorted({f"q-{n}" for n in range(COMMANDS)} - set(finals))
    twice = sorted(command_id for command_id, count in finals.items() if count > 1)
    assert not missing, f"{len(missing)} commands never answered, e.g. {missing[:5]}"
    assert not twice, f"{len(twice)} commands answered twice, e.g. {twice[:5]}"
    statuses = Counter(r["status"] for r in seen.on("/reply") if r.get("status") in FINAL)
    assert sum(finals.values()) == COMMANDS
    assert set(statuses) <= {"done", "expired"}, statuses
