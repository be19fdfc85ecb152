"""Command round trip over a real broker: publish → final reply, one after another.

The gateway (the real App, in this process, on a private mosquitto) answers 1,000
commands; the baseline is a bare echo client on the same broker in the same run that
answers each command at once (TCP_NODELAY on both, as ARCHITECTURE.md's fair-baseline
note asks). The ratio of p50s is the cost of the whole command path: validation,
deduplication in SQLite, the handler, the event and the reply through the outbox.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
import uuid
from pathlib import Path

import aiomqtt

from bench.common import p
from gateway.app import App
from gateway.config import Settings
from gateway.mqtt import TCP_NODELAY_OPTION
from tests.conftest import Broker, free_port

COMMANDS = 1_000


async def _round_trips(
    broker: Broker, cmd_topic: str, reply_topic: str, type_: str, args: dict[str, object]
) -> list[float]:
    times: list[float] = []
    async with aiomqtt.Client(
        broker.host, broker.port, socket_options=[TCP_NODELAY_OPTION]
    ) as commune:
        await commune.subscribe(reply_topic, qos=1)
        messages = commune.messages.__aiter__()
        for n in range(COMMANDS):
            command_id = f"b-{uuid.uuid4().hex[:8]}-{n}"
            body = json.dumps({"id": command_id, "type": type_, "args": args}).encode()
            started = time.perf_counter()
            await commune.publish(cmd_topic, body, qos=1)
            while True:
                message = await messages.__anext__()
                raw = message.payload
                assert isinstance(raw, bytes)
                if json.loads(raw).get("id") == command_id:
                    break
            times.append(time.perf_counter() - started)
    return times


async def _echo(broker: Broker, cmd_topic: str, reply_topic: str, ready: asyncio.Event) -> None:
    async with aiomqtt.Client(
        broker.host, broker.port, socket_options=[TCP_NODELAY_OPTION]
    ) as echo:
        await echo.subscribe(cmd_topic, qos=1)
        ready.set()
        async for message in echo.messages:
            raw = message.payload
            assert isinstance(raw, bytes)
            reply = {"id": json.loads(raw)["id"], "status": "done", "ts": "now"}
            await echo.publish(reply_topic, json.dumps(reply).encode(), qos=1)


async def run() -> str:
    """Measure both and return the ratio line."""
    with tempfile.TemporaryDirectory() as workdir:
        broker = Broker(Path(workdir))
        broker.start()
        try:
            ready = asyncio.Event()
            echo = asyncio.create_task(_echo(broker, "bench/echo/cmd", "bench/echo/reply", ready))
            await ready.wait()
            bare = await _round_trips(
                broker,
                "bench/echo/cmd",
                "bench/echo/reply",
                "relay.set",
                {"relay": "yard", "on": True},
            )
            echo.cancel()
            gateway = f"bench.{uuid.uuid4().hex[:6]}"
            settings = Settings.model_validate(
                {
                    "gateway": {"id": gateway, "state_dir": f"{workdir}/state"},
                    "mqtt": {"host": "127.0.0.1", "port": broker.port},
                    "relays": {"yard": {"pin": 17, "min_switch_interval_s": 0}},
                    "web": {"host": "127.0.0.1", "port": free_port()},
                    "log": {"level": "WARNING"},
                }
            )
            app = App(settings)
            task = asyncio.create_task(app.run())
            await app.started.wait()
            while app.link is None or not app.link.stats.connected:  # noqa: ASYNC110 - a stat
                await asyncio.sleep(0.05)
            handled = "relay.set" if "relay.set" in app.handled_types() else "system.ping"
            args: dict[str, object] = (
                {"relay": "yard", "on": True} if handled == "relay.set" else {}
            )
            ours = await _round_trips(
                broker, f"vg/v1/{gateway}/cmd", f"vg/v1/{gateway}/reply", handled, args
            )
            app.request_stop()
            await task
        finally:
            broker.stop()
    return (
        f"command round trip ({handled}, {COMMANDS} in a row): p50 {p(ours, 50) * 1e3:.2f} ms,"
        f" p99 {p(ours, 99) * 1e3:.2f} ms vs bare echo p50 {p(bare, 50) * 1e3:.2f} ms,"
        f" p99 {p(bare, 99) * 1e3:.2f} ms -> p50 {p(ours, 50) / p(bare, 50):.2f}x"
    )
