"""The pieces the daemon benchmarks share: the daemon and the bare echo as processes of
their own on a private broker, a commune-side MQTT client that times commands, the web
login, and reading a figure from ``/metrics``.

Everything listens on and talks to 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt

from gateway.uplink.client import TCP_NODELAY_OPTION, Topics
from gateway.web.auth import PasswordFile
from tests.conftest import Broker, clean_env, free_port, terminate

PASSWORD = "bench password"  # noqa: S105 - a throwaway state folder's password

GATEWAY_CONFIG = """
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
# The benchmarks send as fast as replies come back; the default limit (20/s) would turn
# most of them into rate_limited replies.
[commands]
max_per_s = 100000
burst = 100000
"""
"""The daemon as the benchmarks run it: one relay that may switch at any pace, the log
at its default level (INFO), as in the field. ``extra`` TOML is appended."""


def start(args: Sequence[str], log: Path, *, prefix: Sequence[str] = ()) -> subprocess.Popen[bytes]:
    """``python ARGS`` as a process of its own (behind ``prefix``, e.g. strace), output
    to ``log``."""
    with log.open("wb") as output:
        return subprocess.Popen(
            [*prefix, sys.executable, *args],
            stdout=output,
            stderr=subprocess.STDOUT,
            env=clean_env(),
        )


async def start_listening(args: Sequence[str], log: Path, port: int) -> subprocess.Popen[bytes]:
    """``python ARGS``, a server, once something accepts connections on ``port``."""
    process = start(args, log)
    async with asyncio.timeout(30):
        while True:
            if process.poll() is not None:
                output = await asyncio.to_thread(log.read_text, errors="replace")
                raise RuntimeError(f"server exited:\n{output}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)
            else:
                writer.close()
                return process


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM and reap ``process``. Behind strace, the signal goes to the traced child
    (strace itself would only detach), and strace ends when the child does."""
    args = process.args
    if isinstance(args, list) and Path(str(args[0])).name == "strace":
        with contextlib.suppress(OSError):
            children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text()
            for child in children.split():
                os.kill(int(child), signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)
    terminate(process)


async def wait_for_line(log: Path, text: str, process: subprocess.Popen[bytes]) -> None:
    """Wait until ``process`` wrote ``text`` to ``log``; raise if it exits first."""
    for _ in range(600):
        output = await asyncio.to_thread(log.read_text, errors="replace")
        if text in output:
            return
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited: {output}")
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{process.args!r} never printed {text!r}")


async def wait_online(broker: Broker, status_topic: str) -> None:
    """Wait for the retained ``online: true`` presence on ``status_topic``."""
    async with aiomqtt.Client(broker.host, broker.port) as client:
        await client.subscribe(status_topic, qos=1)
        async with asyncio.timeout(30):
            async for message in client.messages:
                raw = message.payload
                if isinstance(raw, bytes) and json.loads(raw).get("online") is True:
                    return


async def start_echo(
    broker: Broker, workdir: Path, *, prefix: Sequence[str] = ()
) -> tuple[subprocess.Popen[bytes], Topics]:
    """The bare baseline, ``bench.echo``, subscribed and ready."""
    log = workdir / "echo.log"
    topics = Topics("b", "echo")
    args = ["-m", "bench.echo", broker.host, str(broker.port), topics.cmd, topics.reply]
    echo = start(args, log, prefix=prefix)
    await wait_for_line(log, "ready", echo)
    return echo, topics


@dataclass(frozen=True, slots=True)
class Gateway:
    """The daemon under test, online on the broker."""

    process: subprocess.Popen[bytes]
    topics: Topics
    base: str
    """Its web server, ``http://127.0.0.1:PORT``."""
    state_dir: Path


async def start_gateway(
    broker: Broker, workdir: Path, *, extra: str = "", prefix: Sequence[str] = ()
) -> Gateway:
    """The real daemon (``python -m gateway run``) with :data:`GATEWAY_CONFIG` and
    ``extra``, once it is online. Its web UI's password is :data:`PASSWORD`."""
    gateway = f"bench.{uuid.uuid4().hex[:6]}"
    config = workdir / "gateway.toml"
    web_port = free_port()
    state_dir = workdir / "state"
    PasswordFile(state_dir).write(PASSWORD)
    text = GATEWAY_CONFIG.format(
        gateway=gateway, state_dir=state_dir, port=broker.port, web_port=web_port
    )
    config.write_text(text + extra)
    process = start(
        ["-m", "gateway", "run", "--config", str(config)], workdir / "d.log", prefix=prefix
    )
    topics = Topics("vg/v1", gateway)
    try:
        await wait_online(broker, topics.status)
    except BaseException:
        stop(process)
        raise
    return Gateway(process, topics, f"http://127.0.0.1:{web_port}", state_dir)


@dataclass(frozen=True, slots=True)
class Rig:
    """A private broker with the bare echo and the daemon on it, in a scratch folder."""

    workdir: Path
    broker: Broker
    echo: Topics
    gateway: Gateway
    processes: list[subprocess.Popen[bytes]]
    """Stopped at the end, in order; a benchmark may add its own."""


@contextlib.asynccontextmanager
async def rig(*, extra: str = "", prefix: Sequence[str] = ()) -> AsyncIterator[Rig]:
    """The echo, then the daemon (``extra`` TOML, both behind ``prefix``), both ready;
    everything stopped and removed afterwards."""
    with tempfile.TemporaryDirectory() as name:
        workdir = Path(name)
        broker = Broker(workdir)
        broker.start()
        processes: list[subprocess.Popen[bytes]] = []
        try:
            echo, echo_topics = await start_echo(broker, workdir, prefix=prefix)
            processes.append(echo)
            gateway = await start_gateway(broker, workdir, extra=extra, prefix=prefix)
            processes.append(gateway.process)
            yield Rig(workdir, broker, echo_topics, gateway, processes)
        finally:
            for process in processes:
                stop(process)
            broker.stop()


class Commune:
    """The commune's side: one MQTT client that sends commands and times their replies.

    A reader task routes each reply to the command it answers, so commands can be sent
    at a fixed pace (open loop) whatever the replies do. The first reply counts: for a
    long command that is ``accepted``.
    """

    def __init__(self, client: aiomqtt.Client) -> None:
        self._client = client
        self._waiting: dict[str, asyncio.Future[tuple[float, dict[str, Any]]]] = {}

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, broker: Broker, replies: Sequence[Topics]) -> AsyncIterator[Commune]:
        """Connected and subscribed to the reply topics of ``replies``."""
        async with aiomqtt.Client(
            broker.host, broker.port, socket_options=[TCP_NODELAY_OPTION]
        ) as client:
            await client.subscribe([(topics.reply, 1) for topics in replies])
            commune = cls(client)
            reader = asyncio.create_task(commune._read())
            try:
                yield commune
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader

    async def _read(self) -> None:
        async for message in self._client.messages:
            raw = message.payload
            assert isinstance(raw, bytes)
            reply = json.loads(raw)
            waiter = self._waiting.pop(str(reply.get("id")), None)
            if waiter is not None and not waiter.done():
                waiter.set_result((time.perf_counter(), reply))

    async def call(
        self, topics: Topics, kind: str, args: dict[str, Any], *, within_s: float = 30.0
    ) -> tuple[float | None, dict[str, Any] | None]:
        """Send one command; (seconds to its first reply, the reply), or (None, None)
        when nothing came within ``within_s``."""
        command_id = f"b-{uuid.uuid4().hex[:12]}"
        waiter: asyncio.Future[tuple[float, dict[str, Any]]] = asyncio.Future()
        self._waiting[command_id] = waiter
        body = {"id": command_id, "type": kind, "args": args}
        started = time.perf_counter()
        await self._client.publish(topics.cmd, json.dumps(body).encode(), qos=1)
        try:
            async with asyncio.timeout(within_s):
                answered, reply = await waiter
        except TimeoutError:
            self._waiting.pop(command_id, None)
            return None, None
        return answered - started, reply


def switching(n: int) -> dict[str, Any]:
    """``relay.set`` arguments that switch the relay every time (on, off, on …)."""
    return {"relay": "yard", "on": n % 2 == 0}


async def paced(
    commune: Commune, topics: Topics, rate_per_s: float, duration_s: float
) -> tuple[list[float], int]:
    """Switching ``relay.set`` at a fixed ``rate_per_s`` for ``duration_s``, each sent on
    time whether or not the last has been answered (a slow gateway then shows as
    queueing). Returns the round trips and how many got no reply within 30 s."""
    count = round(rate_per_s * duration_s)
    first = time.perf_counter()
    calls = []
    for n in range(count):
        await asyncio.sleep(max(0.0, first + n / rate_per_s - time.perf_counter()))
        calls.append(asyncio.create_task(commune.call(topics, "relay.set", switching(n))))
    times = []
    for seconds, reply in await asyncio.gather(*calls):
        if seconds is None or reply is None:
            continue
        if reply.get("status") != "done":
            raise RuntimeError(f"benchmark command not done: {reply}")
        times.append(seconds)
    return times, count - len(times)


async def login(base: str) -> dict[str, str]:
    """Log in to the daemon's web UI like a phone; the headers a request then needs."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{base}/api/v1/login", json={"password": PASSWORD}, headers={"Origin": base}
        ) as response,
    ):
        if response.status != 200:
            raise RuntimeError(f"login: {response.status} {await response.text()}")
        token = response.cookies["vg_session"].value
        csrf = (await response.json())["csrf"]
    return {"Cookie": f"vg_session={token}", "X-CSRF-Token": csrf, "Origin": base}


async def scrape(base: str, name: str, labels: str = "") -> float | None:
    """The value of ``name{labels}`` in ``base``'s ``/metrics``, None when absent.

    ``labels`` is written as in the exposition: ``quantile="0.99"``.
    """
    async with aiohttp.ClientSession() as session, session.get(f"{base}/metrics") as response:
        text = await response.text()
    wanted = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        key, _, value = line.rpartition(" ")
        if key == wanted:
            return float(value)
    return None
