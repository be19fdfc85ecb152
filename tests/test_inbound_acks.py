"""Inbound acknowledgements: the link sends a command's PUBACK only once it is claimed.

Against a real mosquitto: a command whose handler could not claim it (it raised) is not
acknowledged, so the broker delivers it again on the next connection of the persistent
session; one that was claimed is acknowledged and never comes back.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import aiomqtt
import pytest

from gateway.component import Health
from gateway.outbox import Outbox
from gateway.state import StateStore
from gateway.uplink.link import Link
from tests.conftest import Broker, ConfigFile, wait_online
from tests.test_app import wait_for
from tests.test_link import settings_for

pytestmark = pytest.mark.slow


async def test_a_command_not_claimed_is_not_acknowledged_and_comes_again(
    broker: Broker, config_file: ConfigFile, tmp_path: Path
) -> None:
    """First connection: the handler fails to claim ``a-1`` (no PUBACK) and claims
    ``a-2``. Second connection: the broker delivers ``a-1`` again, not ``a-2``. Third:
    nothing comes again."""
    settings, gateway = settings_for(config_file, broker)
    delivered: list[bytes] = []
    failing = {b'{"id": "a-1"}'}

    async def on_command(topic: str, payload: bytes, retained: bool) -> None:
        delivered.append(payload)
        if payload in failing:
            raise OSError("the journal could not be written")

    outbox = await Outbox.open(tmp_path / "link-state", commit_window_s=0.01)

    async def connection(until: int) -> None:
        link = Link(
            settings,
            outbox,
            StateStore(),
            on_command=on_command,
            started_at="now",
            boot_count=1,
            clock_synced=lambda: False,
            rng=random.Random(5),  # noqa: S311 - reproducible reconnect jitter
        )
        task = asyncio.create_task(
            link.run(Health("link", critical=False, heartbeat_timeout_s=None))
        )
        try:
            await wait_for(lambda: link.stats.connected, 10)
            if not until:
                # Online is said only once the command topics are subscribed.
                await wait_online(broker, gateway)
            if until:
                await wait_for(lambda: len(delivered) >= until, 10)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    await connection(0)  # the persistent session and its subscriptions exist now
    async with aiomqtt.Client(broker.host, broker.port) as commune:
        await commune.publish(f"vg/v1/{gateway}/cmd", b'{"id": "a-1"}', qos=1)
        await commune.publish(f"vg/v1/{gateway}/cmd", b'{"id": "a-2"}', qos=1)
    await connection(2)
    assert delivered == [b'{"id": "a-1"}', b'{"id": "a-2"}']
    failing.clear()  # the journal works again
    await connection(3)
    assert delivered[2:] == [b'{"id": "a-1"}']
    # a-2 was acknowledged, and now a-1 too: the next connection gets nothing but a
    # marker published after them, which proves the session delivered all it kept.
    marker = b'{"id": "marker"}'
    async with aiomqtt.Client(broker.host, broker.port) as commune:
        await commune.publish(f"vg/v1/{gateway}/cmd", marker, qos=1)
    await connection(4)
    assert delivered[3:] == [marker]
    await outbox.close()
