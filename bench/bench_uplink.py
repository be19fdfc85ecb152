"""Uplink benchmarks: drain, ingest, wear, and reply latency under a backlog.

Each figure is a ratio against a bare baseline measured in the same run on the same
machine and broker (a real mosquitto on loopback with TCP_NODELAY):

- drain: 100,000 buffered records delivered by the Link, records/s, against a bare
  aiomqtt client publishing the same records one per message at QoS 1, with as many in
  flight as paho allows (the fastest honest one-per-message publisher);
- ingest: durable appends/s through the Outbox (group commit), against plain sqlite3
  inserting the same rows with one commit per row (WAL, synchronous=FULL, as durable);
- wear: bytes written to storage per record over append + deliver + delete
  (``/proc/self/io`` write_bytes), as a multiple of the payload bytes;
- reply p95: from appending a reply to the commune receiving it, while the backlog drains.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiomqtt

from bench.common import p
from gateway.component import Health
from gateway.config import Settings
from gateway.outbox import Outbox, encode_record
from gateway.state import StateStore
from gateway.uplink.client import TCP_NODELAY_OPTION
from gateway.uplink.link import Link
from tests.conftest import Broker

RECORDS = 100_000
INGEST = 20_000
REPLIES = 40


def _record(n: int) -> dict[str, Any]:
    return {
        "ts": "2026-11-28T18:00:00.000+07:00",
        "type": "relay.switched",
        "relay": "yard",
        "on": n % 2 == 0,
        "source": "schedule",
        "n": n,
    }


@contextlib.contextmanager
def _disk_dir() -> Iterator[Path]:
    """A folder on a real block device (tmpfs writes never reach write_bytes), removed
    afterwards with everything in it."""
    base = Path("/var/tmp")  # noqa: S108 - a benchmark's scratch space, removed after
    with tempfile.TemporaryDirectory(
        prefix="vg-bench-", dir=base if base.exists() else None
    ) as name:
        yield Path(name)


def _write_bytes() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


def _settings(state_dir: Path, port: int, gateway: str) -> Settings:
    return Settings.model_validate(
        {
            "gateway": {"id": gateway, "state_dir": str(state_dir)},
            "mqtt": {"host": "127.0.0.1", "port": port},
            "log": {"level": "WARNING"},
        }
    )


async def _count_received(
    broker: Broker,
    pattern: str,
    done: Callable[[int], bool],
    ready: asyncio.Event,
    stamps: dict[str, float],
) -> None:
    async with aiomqtt.Client(
        broker.host,
        broker.port,
        socket_options=[TCP_NODELAY_OPTION],
        max_queued_incoming_messages=0,
    ) as client:
        await client.subscribe(pattern, qos=1)
        ready.set()
        received = 0
        async for message in client.messages:
            raw = message.payload
            assert isinstance(raw, bytes)
            if message.topic.value.endswith("/reply"):
                stamps[json.loads(raw)["id"]] = time.perf_counter()
                continue
            body = json.loads(raw)
            received += len(body["records"]) if "records" in body else 1
            if done(received):
                return


async def bare_publisher(broker: Broker, bodies: list[bytes]) -> float:
    """records/s for one QoS 1 message per record, paho's in-flight window kept full."""
    topic = f"bench/bare/{uuid.uuid4().hex[:6]}"
    ready = asyncio.Event()
    receiver = asyncio.create_task(
        _count_received(broker, topic, lambda n: n >= len(bodies), ready, {})
    )
    await ready.wait()
    async with aiomqtt.Client(
        broker.host, broker.port, socket_options=[TCP_NODELAY_OPTION]
    ) as client:
        slots = asyncio.Semaphore(20)  # paho's default max_inflight_messages, kept full

        async def publish(body: bytes) -> None:
            async with slots:
                await client.publish(topic, body, qos=1)

        started = time.perf_counter()
        async with asyncio.TaskGroup() as group:
            for body in bodies:
                await slots.acquire()  # start each as soon as a slot frees
                slots.release()
                group.create_task(publish(body))
        await receiver
        return len(bodies) / (time.perf_counter() - started)


async def link_drain(broker: Broker, count: int) -> tuple[float, float, list[float]]:
    """(records/s draining ``count`` buffered records, write amplification, reply latencies)."""
    with _disk_dir() as state_dir:
        return await _drain_in(state_dir, broker, count)


async def _drain_in(
    state_dir: Path, broker: Broker, count: int
) -> tuple[float, float, list[float]]:
    gateway = f"bench.{uuid.uuid4().hex[:6]}"
    outbox = await Outbox.open(state_dir)
    writes_before = _write_bytes()
    payload_bytes = 0
    for start in range(0, count, 5000):
        records = [_record(n) for n in range(start, min(count, start + 5000))]
        payload_bytes += sum(len(encode_record(r)) for r in records)
        await asyncio.gather(*(outbox.append("events", r) for r in records))
    ready = asyncio.Event()
    stamps: dict[str, float] = {}
    receiver = asyncio.create_task(
        _count_received(broker, f"vg/v1/{gateway}/#", lambda n: n >= count, ready, stamps)
    )
    await ready.wait()
    link = Link(
        _settings(state_dir, broker.port, gateway),
        outbox,
        StateStore(),
        started_at="bench",
        boot_count=1,
        clock_synced=lambda: False,
    )
    started = time.perf_counter()
    delivering = asyncio.create_task(link.run(Health("link", False, None)))
    sent: dict[str, float] = {}
    for i in range(REPLIES):  # replies while the backlog drains
        await asyncio.sleep(0.02)
        reply_id = f"r-{i}"
        sent[reply_id] = time.perf_counter()
        await outbox.append("replies", {"id": reply_id, "status": "done"}, urgent=True)
    await receiver
    rate = count / (time.perf_counter() - started)
    await asyncio.sleep(0.5)  # let the last deletes commit
    delivering.cancel()
    await asyncio.gather(delivering, return_exceptions=True)
    await outbox.close()
    amplification = (_write_bytes() - writes_before) / payload_bytes
    latencies = [stamps[k] - sent[k] for k in sent if k in stamps]
    return rate, amplification, latencies


async def ingest_rates(count: int) -> tuple[float, float]:
    """(outbox appends/s, plain sqlite3 one-commit-per-row inserts/s)."""
    with _disk_dir() as folder:
        return await _ingest_in(folder, count)


async def _ingest_in(folder: Path, count: int) -> tuple[float, float]:
    records = [_record(n) for n in range(count)]
    outbox = await Outbox.open(folder / "outbox")
    started = time.perf_counter()
    await asyncio.gather(*(outbox.append("events", r) for r in records))
    ours = count / (time.perf_counter() - started)
    await outbox.close()

    def plain() -> float:
        conn = sqlite3.connect(folder / "plain.db", isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("CREATE TABLE r (seq INTEGER PRIMARY KEY, body TEXT)")
        bodies = [encode_record(r) for r in records[: count // 10]]
        begun = time.perf_counter()
        for body in bodies:
            conn.execute("BEGIN")
            conn.execute("INSERT INTO r (body) VALUES (?)", (body,))
            conn.execute("COMMIT")
        conn.close()
        return len(bodies) / (time.perf_counter() - begun)

    return ours, await asyncio.to_thread(plain)


async def run() -> list[str]:
    """Run all uplink benchmarks against one private broker."""
    with tempfile.TemporaryDirectory() as workdir:
        broker = Broker(Path(workdir))
        broker.start()
        try:
            bodies = [encode_record(_record(n)).encode() for n in range(RECORDS // 5)]
            bare = await bare_publisher(broker, bodies)
            drain, amplification, latencies = await link_drain(broker, RECORDS)
        finally:
            broker.stop()
    ours, plain = await ingest_rates(INGEST)
    return [
        f"drain: {drain:,.0f} records/s vs bare one-per-message QoS 1 {bare:,.0f} records/s"
        f" -> {drain / bare:.1f}x",
        f"ingest: {ours:,.0f} durable appends/s vs sqlite3 commit-per-row {plain:,.0f}/s"
        f" -> {ours / plain:.1f}x",
        f"wear: {amplification:.2f}x the payload bytes written per record"
        " (append + deliver + delete)",
        f"reply while 100k drain: p50 {statistics.median(latencies) * 1e3:.0f} ms,"
        f" p95 {p(latencies, 95) * 1e3:.0f} ms ({len(latencies)}/{REPLIES} replies)",
    ]
