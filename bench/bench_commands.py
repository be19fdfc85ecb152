"""Command round trip over a real broker: publish → final reply, one after another.

The gateway (the real daemon, ``python -m gateway run``, on a private mosquitto) answers
1,000 commands; the baseline is a bare echo client on the same broker in the same run
that answers each command at once (TCP_NODELAY on both, as ARCHITECTURE.md's
fair-baseline note asks). Both answer from a process of their own, as they would in the
field, so neither shares an event loop or the GIL with the client that measures. The
ratio of p50s is the cost of the whole command path: validation, deduplication in
SQLite, the handler, the event and the reply (published at once, stored in the outbox).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiomqtt

from bench.common import p
from gateway.mqtt import TCP_NODELAY_OPTION
from tests.conftest import Broker, clean_env, free_port, terminate

COMMANDS = 1_000


async def _round_trips(
    broker: Broker, cmd_topic: str, reply_topic: str, type_: str, args: dict[str, object]
) -> list[float]:
    """Publish → final reply, one after another; every reply must be ``done``."""
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
                reply = json.loads(raw)
                if reply.get("id") == command_id:
                    if reply.get("status") != "done":
                        raise RuntimeError(f"benchmark command not done: {reply}")
                    break
            times.append(time.perf_counter() - started)
    return times


def _start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as output:
        return subprocess.Popen(
            [sys.executable, *args], stdout=output, stderr=subprocess.STDOUT, env=clean_env()
        )


async def _wait_for_line(log: Path, text: str, process: subprocess.Popen[bytes]) -> None:
    for _ in range(600):
        output = await asyncio.to_thread(log.read_text, errors="replace")
        if text in output:
            return
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited: {output}")
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{process.args!r} never printed {text!r}")


async def _wait_online(broker: Broker, status_topic: str) -> None:
    async with aiomqtt.Client(broker.host, broker.port) as client:
        await client.subscribe(status_topic, qos=1)
        async with asyncio.timeout(30):
            async for message in client.messages:
                raw = message.payload
                if isinstance(raw, bytes) and json.loads(raw).get("online") is True:
                    return


CONFIG = """
[gateway]
id = "{gateway}"
state_dir = "{state_dir}"
[mqtt]
host = "127.0.0.1"
port = {port}
[relays.yard]
pin = 17
min_switch_interval_s = 0
[web]
host = "127.0.0.1"
port = {web_port}
[log]
level = "WARNING"
# The benchmark sends as fast as replies come back; the default limit (20/s) would turn
# most of them into rate_limited replies.
[commands]
max_per_s = 100000
burst = 100000
"""


async def run() -> str:
    """Measure both, each answering from a process of its own, and return the ratio line."""
    with tempfile.TemporaryDirectory() as name:
        workdir = Path(name)
        broker = Broker(workdir)
        broker.start()
        processes: list[subprocess.Popen[bytes]] = []
        try:
            echo_log = workdir / "echo.log"
            echo = _start(
                ["-m", "bench.echo", broker.host, str(broker.port), "b/echo/cmd", "b/echo/reply"],
                echo_log,
            )
            processes.append(echo)
            await _wait_for_line(echo_log, "ready", echo)
            args: dict[str, object] = {"relay": "yard", "on": True}
            bare = await _round_trips(broker, "b/echo/cmd", "b/echo/reply", "relay.set", args)
            terminate(echo)

            gateway = f"bench.{uuid.uuid4().hex[:6]}"
            config = workdir / "gateway.toml"
            config.write_text(
                CONFIG.format(
                    gateway=gateway,
                    state_dir=workdir / "state",
                    port=broker.port,
                    web_port=free_port(),
                )
            )
            daemon = _start(["-m", "gateway", "run", "--config", str(config)], workdir / "d.log")
            processes.append(daemon)
            await _wait_online(broker, f"vg/v1/{gateway}/status")
            ours = await _round_trips(
                broker, f"vg/v1/{gateway}/cmd", f"vg/v1/{gateway}/reply", "relay.set", args
            )
        finally:
            for process in processes:
                terminate(process)
            broker.stop()
    return (
        f"command round trip (relay.set, {COMMANDS} in a row): p50 {p(ours, 50) * 1e3:.2f} ms,"
        f" p99 {p(ours, 99) * 1e3:.2f} ms vs bare echo p50 {p(bare, 50) * 1e3:.2f} ms,"
        f" p99 {p(bare, 99) * 1e3:.2f} ms -> p50 {p(ours, 50) / p(bare, 50):.2f}x"
    )
