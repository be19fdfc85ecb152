"""The broker fixture itself: a real mosquitto that tests can take away and bring back."""

from __future__ import annotations

import asyncio

import aiomqtt
import pytest

from tests.conftest import Broker


async def round_trip(broker: Broker) -> bytes:
    """Publish one QoS 1 message and receive it back through the broker."""
    async with aiomqtt.Client(broker.host, broker.port, identifier="fixture-test") as client:
        await client.subscribe("vg/v1/fixture/#", qos=1)
        await client.publish("vg/v1/fixture/ping", b'{"ping": 1}', qos=1)
        async with asyncio.timeout(5):
            async for message in client.messages:
                return bytes(message.payload)
    raise AssertionError("no message")


@pytest.mark.slow
async def test_broker_can_be_stopped_and_restarted(broker: Broker) -> None:
    """Messages flow; with the broker stopped connecting fails like an outage; after a
    restart on the same port they flow again."""
    assert await round_trip(broker) == b'{"ping": 1}'
    broker.stop()
    try:
        with pytest.raises(aiomqtt.MqttError):
            async with aiomqtt.Client(broker.host, broker.port, timeout=2):
                pass
    finally:
        broker.start()
    assert await round_trip(broker) == b'{"ping": 1}'
