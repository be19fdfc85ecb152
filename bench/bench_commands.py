"""Command round trip over a real broker: publish → final reply, one after another.

The gateway (the real daemon, ``python -m gateway run``, on a private mosquitto) answers
1,000 commands; the baseline is a bare echo client on the same broker in the same run
that answers each command at once (TCP_NODELAY on both, as ARCHITECTURE.md's
fair-baseline note asks). Both answer from a process of their own, as they would in the
field, so neither shares an event loop or the GIL with the client that measures. The
ratio of p50s is the cost of the whole command path: validation, deduplication in
SQLite, the handler, the event and the reply (stored in the outbox, then published).

These machines are noisy over seconds, so the two are measured in alternating rounds of
``ROUND`` commands, not one after the other, and the ratio is the median over the pairs
of rounds of (gateway p50 / echo p50): a slow spell of a second or two then spoils a
pair or two, not the figure. The p50s of the whole run are printed beside it.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiomqtt

from bench.common import p
from gateway.mqtt import TCP_NODELAY_OPTION, Topics
from tests.conftest import Broker, clean_env, free_port, terminate

COMMANDS = 1_000
ROUND = 50
WARM_UP = 500
"""Round trips per side before measuring. A fresh outbox's WAL file grows with its first
~330 commands, and an fdatasync that grows a file costs about twice one that overwrites
(~0.75 vs ~0.4 ms here); a gateway that has run for minutes reuses its WAL, and that
steady state is what is measured. The echo gets the same warm-up."""

ARGS: dict[str, object] = {"relay": "yard", "on": True}


async def _round_trips(
    commune: aiomqtt.Client, cmd_topic: str, count: int, times: list[float]
) -> None:
    """``count`` commands, each published once the last one's reply is in; every reply
    must be ``done``. Appends each publish → reply time to ``times``."""
    messages = commune.messages.__aiter__()
    for n in range(count):
        command_id = f"b-{uuid.uuid4().hex[:8]}-{n}"
        body = json.dumps({"id": command_id, "type": "relay.set", "args": ARGS}).encode()
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


async def _alternate(
    broker: Broker, echo: Topics, ours: Topics
) -> list[tuple[list[float], list[float]]]:
    """Rounds of ``ROUND`` commands to the echo, then as many to the gateway, until each
    has answered ``COMMANDS``. Returns (echo times, gateway times) per pair of rounds."""
    pairs: list[tuple[list[float], list[float]]] = []
    async with aiomqtt.Client(
        broker.host, broker.port, socket_options=[TCP_NODELAY_OPTION]
    ) as commune:
        await commune.subscribe([(echo.reply, 1), (ours.reply, 1)])
        await _round_trips(commune, echo.cmd, WARM_UP, [])
        await _round_trips(commune, ours.cmd, WARM_UP, [])
        for _ in range(COMMANDS // ROUND):
            bare_times: list[float] = []
            our_times: list[float] = []
            await _round_trips(commune, echo.cmd, ROUND, bare_times)
            await _round_trips(commune, ours.cmd, ROUND, our_times)
            pairs.append((bare_times, our_times))
    return pairs


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
    # The benchmarks before this one leave hundreds of MB of writeback behind; the
    # gateway's fsyncs would queue behind it and the echo's would not (it has none).
    os.sync()
    with tempfile.TemporaryDirectory() as name:
        workdir = Path(name)
        broker = Broker(workdir)
        broker.start()
        processes: list[subprocess.Popen[bytes]] = []
        try:
            echo_log = workdir / "echo.log"
            echo_topics = Topics("b", "echo")
            echo = _start(
                [
                    "-m",
                    "bench.echo",
                    broker.host,
                    str(broker.port),
                    echo_topics.cmd,
                    echo_topics.reply,
                ],
                echo_log,
            )
            processes.append(echo)
            await _wait_for_line(echo_log, "ready", echo)
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
            gateway_topics = Topics("vg/v1", gateway)
            await _wait_online(broker, gateway_topics.status)
            pairs = await _alternate(broker, echo_topics, gateway_topics)
        finally:
            for process in processes:
                terminate(process)
            broker.stop()
    ratios = [statistics.median(ours) / statistics.median(bare) for bare, ours in pairs]
    bare = [t for pair in pairs for t in pair[0]]
    ours = [t for pair in pairs for t in pair[1]]
    return (
        f"command round trip (relay.set, {COMMANDS} in {len(pairs)} rounds of {ROUND}):"
        f" p50 {p(ours, 50) * 1e3:.2f} ms, p99 {p(ours, 99) * 1e3:.2f} ms"
        f" vs bare echo p50 {p(bare, 50) * 1e3:.2f} ms, p99 {p(bare, 99) * 1e3:.2f} ms"
        f" (whole run {p(ours, 50) / p(bare, 50):.2f}x) -> p50 {statistics.median(ratios):.2f}x"
        f" (median of paired rounds, {min(ratios):.2f}-{max(ratios):.2f})"
    )
