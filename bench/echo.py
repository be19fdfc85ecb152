"""The bare baseline of the command round trip: an MQTT client that answers each command.

Run as its own process (``python -m bench.echo HOST PORT CMD_TOPIC REPLY_TOPIC``) so it
is measured the same way as the daemon, which is also a process of its own. It prints
``ready`` once subscribed.

It measures its own event loop's lag the way the daemon does (a
:class:`gateway.looplag.LoopLag` beside it, so it also carries that small cost), and
answers a command of type ``bench.lag`` with the figures: the bare baseline of the
daemon's ``vg_loop_lag_seconds``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys

import aiomqtt

from gateway.component import Health
from gateway.looplag import LoopLag
from gateway.uplink.client import TCP_NODELAY_OPTION

LAG = "bench.lag"


async def echo(host: str, port: int, cmd_topic: str, reply_topic: str) -> None:
    """Answer every command on ``cmd_topic`` with ``done`` on ``reply_topic``, at once."""
    lag = LoopLag()
    health = Health(lag.name, lag.critical, lag.heartbeat_timeout_s)
    async with (
        asyncio.TaskGroup() as tasks,
        aiomqtt.Client(host, port, socket_options=[TCP_NODELAY_OPTION]) as client,
    ):
        tasks.create_task(lag.run(health))
        await client.subscribe(cmd_topic, qos=1)
        print("ready", flush=True)
        async for message in client.messages:
            raw = message.payload
            assert isinstance(raw, bytes)
            command = json.loads(raw)
            reply = {"id": command["id"], "status": "done", "ts": "now"}
            if command.get("type") == LAG:
                reply["result"] = dataclasses.asdict(lag.stats())
            await client.publish(reply_topic, json.dumps(reply).encode(), qos=1)


if __name__ == "__main__":
    host, port, cmd, reply = sys.argv[1:5]
    asyncio.run(echo(host, int(port), cmd, reply))
