"""The bare baseline of the command round trip: an MQTT client that answers each command.

Run as its own process (``python -m bench.echo HOST PORT CMD_TOPIC REPLY_TOPIC``) so it
is measured the same way as the daemon, which is also a process of its own. It prints
``ready`` once subscribed.
"""

from __future__ import annotations

import asyncio
import json
import sys

import aiomqtt

from gateway.mqtt import TCP_NODELAY_OPTION


async def echo(host: str, port: int, cmd_topic: str, reply_topic: str) -> None:
    """Answer every command on ``cmd_topic`` with ``done`` on ``reply_topic``, at once."""
    async with aiomqtt.Client(host, port, socket_options=[TCP_NODELAY_OPTION]) as client:
        await client.subscribe(cmd_topic, qos=1)
        print("ready", flush=True)
        async for message in client.messages:
            raw = message.payload
            assert isinstance(raw, bytes)
            reply = {"id": json.loads(raw)["id"], "status": "done", "ts": "now"}
            await client.publish(reply_topic, json.dumps(reply).encode(), qos=1)


if __name__ == "__main__":
    host, port, cmd, reply = sys.argv[1:5]
    asyncio.run(echo(host, int(port), cmd, reply))
