"""The MQTT link and the outbox together, against a real mosquitto that goes away."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from structlog.testing import capture_logs

from gateway.component import Backoff, Health
from gateway.config import Settings, load_settings
from gateway.daemon.app import App
from gateway.outbox import Outbox
from gateway.schemas import Batch as BatchSchema
from gateway.schemas import OfflineStatus, OnlineStatus
from gateway.state import StateStore
from gateway.uplink.link import Link, TokenBucket, connection_lost, full_jitter
from tests.conftest import REPO, Broker, ConfigFile, Daemon, clean_env
from tests.test_app import running, wait_for

pytestmark = pytest.mark.slow


@dataclass
class Seen:
    """Everything a commune-side subscriber received, decoded."""

    messages: list[tuple[str, Any, bool]] = field(default_factory=list)

    def on(self, suffix: str) -> list[Any]:
        """Payloads received on topics ending with ``suffix``."""
        return [payload for topic, payload, _ in self.messages if topic.endswith(suffix)]

    def records(self, stream: str) -> list[dict[str, Any]]:
        """Every record of every batch on ``P/ID/<stream>``, in arrival order."""
        return [record for batch in self.on("/" + stream) for record in batch["records"]]


@asynccontextmanager
async def subscriber(broker: Broker, pattern: str) -> AsyncIterator[Seen]:
    """A commune-side client on ``pattern`` that survives broker restarts.

    Its session is persistent (one client id, no clean start): what the gateway publishes
    while this client is still reconnecting is queued for it by the broker, as for the
    real commune, instead of being lost to the test (seen once: the gateway was back
    first after an outage and its backlog went to nobody).
    """
    seen = Seen()
    subscribed = asyncio.Event()
    identifier = f"commune-{uuid.uuid4().hex[:8]}"

    async def listen() -> None:
        while True:
            try:
                async with aiomqtt.Client(
                    broker.host, broker.port, identifier=identifier, clean_session=False
                ) as client:
                    await client.subscribe(pattern, qos=1)
                    subscribed.set()
                    async for message in client.messages:
                        raw = message.payload
                        assert isinstance(raw, bytes)
                        seen.messages.append((message.topic.value, json.loads(raw), message.retain))
            except aiomqtt.MqttError:
                await asyncio.sleep(0.2)

    task = asyncio.create_task(listen())
    await asyncio.wait_for(subscribed.wait(), 10)
    try:
        yield seen
    finally:
        task.cancel()


def settings_for(config_file: ConfigFile, broker: Broker, **mqtt: str) -> tuple[Settings, str]:
    """A configuration on the test broker, with a gateway id no other test uses."""
    gateway = f"test.{uuid.uuid4().hex[:8]}"
    config_file.mqtt_port = broker.port
    extra = "".join(f"{key} = {value}\n" for key, value in mqtt.items())
    config_file.write({'id = "test.gw1"': f'id = "{gateway}"', "[mqtt]\n": f"[mqtt]\n{extra}"})
    return load_settings(config_file.path), gateway


async def test_presence_state_and_clean_stop(broker: Broker, config_file: ConfigFile) -> None:
    """On connect the gateway says it is online (retained, with version, start time, boot
    count and clock state) and publishes its system state retained; on a clean stop it
    says offline at once instead of leaving it to the will."""
    settings, gateway = settings_for(config_file, broker)
    async with subscriber(broker, f"vg/v1/{gateway}/#") as seen:
        app = App(settings, backoff=Backoff(initial_s=0.1), rng=random.Random(11))  # noqa: S311 - reproducible jitter
        async with running(app):
            await wait_for(lambda: any(p.get("online") for p in seen.on("/status")), 10)
            await wait_for(lambda: bool(seen.on("/state/system")), 10)
        await wait_for(lambda: seen.on("/status")[-1].get("online") is False, 5)
    online = OnlineStatus.model_validate(next(p for p in seen.on("/status") if p.get("online")))
    assert online.boot_count == 1
    assert online.ts.endswith("+07:00"), "timestamps are in gateway.timezone, not the machine's"
    OfflineStatus.model_validate(seen.on("/status")[-1])
    system = seen.on("/state/system")[0]
    assert {"version", "uptime_s", "clock_synced", "outbox", "link"} <= system.keys()
    async with subscriber(broker, f"vg/v1/{gateway}/status") as late:
        await wait_for(lambda: bool(late.messages), 5)
        _, payload, was_retained = late.messages[0]
        assert was_retained
        assert payload["online"] is False


async def test_outage_loses_nothing_and_keeps_order(
    broker: Broker, config_file: ConfigFile
) -> None:
    """Records appended before, during and after a 60 s broker outage all arrive, in seq
    order per stream, with no gaps; a record seen twice carries an already delivered seq.
    Meanwhile the gateway retries calmly (bounded by its backoff, never a storm) and is
    back within one backoff step of the broker's return."""
    settings, gateway = settings_for(config_file, broker, max_backoff_s="10")
    async with subscriber(broker, f"vg/v1/{gateway}/events") as seen:
        app = App(settings, backoff=Backoff(initial_s=0.1), rng=random.Random(11))  # noqa: S311 - reproducible jitter
        async with running(app):
            assert app.outbox is not None
            # Appends in one burst share commits (each one alone waits the 100 ms window).
            await asyncio.gather(
                *(app.outbox.append("events", {"type": "test", "n": n}) for n in range(200))
            )
            await wait_for(
                lambda: sum(r.get("type") == "test" for r in seen.records("events")) >= 200, 15
            )
            assert app.link is not None
            broker.stop()
            attempts_before = app.link.stats.attempts
            try:
                await asyncio.gather(
                    *(
                        app.outbox.append("events", {"type": "test", "n": n})
                        for n in range(200, 700)
                    )
                )
                await asyncio.sleep(60)
            finally:
                broker.start()
            attempts = app.link.stats.attempts - attempts_before
            # Full jitter over up to 10 s averages ~14 attempts a minute (21 was seen);
            # a retry storm would be hundreds.
            assert 3 <= attempts <= 30, f"{attempts} connection attempts in a 60 s outage"
            returned = asyncio.get_running_loop().time()
            await wait_for(lambda: app.link is not None and app.link.stats.connected, 25)
            # One backoff step (at most 10 s) and the time a busy machine takes to connect.
            assert asyncio.get_running_loop().time() - returned <= 12
            await asyncio.gather(
                *(app.outbox.append("events", {"type": "test", "n": n}) for n in range(700, 800))
            )
            await wait_for(
                lambda: (
                    len({r["seq"] for r in seen.records("events") if r.get("type") == "test"})
                    >= 800
                ),
                30,
            )
            assert app.link.stats.connects >= 2
    records = seen.records("events")
    seqs = [r["seq"] for r in records]
    first_seen: dict[int, int] = {}
    delivered = 0
    for seq in seqs:
        if seq <= delivered:
            assert seq in first_seen, f"duplicate {seq} was never delivered before"
            continue
        assert seq == delivered + 1, f"gap: {delivered} then {seq}"
        first_seen[seq] = 1
        delivered = seq
    # The daemon adds events of its own (a hotspot coming up …): the test's 800 are among
    # them, in their order, and the stream as a whole has no gap.
    unique = sorted({r["seq"]: r for r in records}.values(), key=lambda r: r["seq"])
    assert delivered == unique[-1]["seq"] >= 800
    assert [r["n"] for r in unique if r.get("type") == "test"] == list(range(800))
    batches = seen.on("/events")
    for batch in batches:
        BatchSchema.model_validate(batch)
    assert any(len(batch["records"]) > 1 for batch in batches), "records were not batched"
    assert all(batch["gateway"] == gateway and batch["stream"] == "events" for batch in batches)


async def test_replies_go_before_a_log_backlog(broker: Broker, config_file: ConfigFile) -> None:
    """With thousands of log lines waiting, a reply appended later is still published
    before the backlog has drained: replies are never stuck behind logs."""
    settings, gateway = settings_for(config_file, broker, max_msgs_per_s="20")
    async with subscriber(broker, f"vg/v1/{gateway}/#") as seen:
        app = App(settings, backoff=Backoff(initial_s=0.1), rng=random.Random(11))  # noqa: S311 - reproducible jitter
        async with running(app):
            assert app.outbox is not None
            await asyncio.gather(
                *(app.outbox.append("logs", {"event": "x" * 300, "n": n}) for n in range(20_000))
            )
            await app.outbox.append("replies", {"id": "c-1", "status": "done"}, urgent=True)
            await wait_for(lambda: bool(seen.on("/reply")), 10)
            logs_before_reply = len(seen.records("logs"))
    assert seen.on("/reply")[0]["id"] == "c-1"
    assert logs_before_reply < 20_000


async def test_command_sent_while_away_arrives_after_reconnect(
    broker: Broker, config_file: ConfigFile, tmp_path: Any
) -> None:
    """A QoS 1 command published while the gateway was disconnected, within the session
    expiry, is delivered when it connects again (persistent session)."""
    settings, gateway = settings_for(config_file, broker)
    received: list[tuple[str, bytes]] = []

    async def on_command(topic: str, payload: bytes, retained: bool) -> None:
        received.append((topic, payload))

    outbox = await Outbox.open(tmp_path / "link-state", commit_window_s=0.01)
    state = StateStore()

    def make_link() -> Link:
        return Link(
            settings,
            outbox,
            state,
            on_command=on_command,
            started_at="now",
            boot_count=1,
            clock_synced=lambda: False,
            rng=random.Random(3),  # noqa: S311 - reproducible reconnect jitter
        )

    link = make_link()
    task = asyncio.create_task(link.run(Health("link", critical=False, heartbeat_timeout_s=None)))
    await wait_for(lambda: link.stats.connected, 10)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    async with aiomqtt.Client(broker.host, broker.port) as commune:
        await commune.publish(f"vg/v1/{gateway}/cmd", b'{"id": "c-away"}', qos=1)
        await commune.publish("vg/v1/group/commune.test/cmd", b'{"id": "g-away"}', qos=1)
    link = make_link()
    task = asyncio.create_task(link.run(Health("link", critical=False, heartbeat_timeout_s=None)))
    await wait_for(lambda: len(received) >= 2, 10)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await outbox.close()
    assert {payload for _, payload in received} == {b'{"id": "c-away"}', b'{"id": "g-away"}'}


def test_backoff_is_bounded_and_jittered() -> None:
    """Over a two-minute outage with the default 60 s cap, full-jitter backoff makes
    about ten attempts (never a storm), and the delays differ between gateways."""
    counts = []
    for seed in range(500):
        rng = random.Random(seed)  # noqa: S311 - reproducible jitter
        elapsed, attempts, failures = 0.0, 1, 0
        while True:
            failures += 1
            elapsed += full_jitter(failures, cap_s=60, rng=rng)
            if elapsed > 120:
                break
            attempts += 1
        counts.append(attempts)
    assert sum(counts) / len(counts) <= 10
    assert max(counts) <= 16
    assert len(set(counts)) > 1


async def test_token_bucket_paces_publishes() -> None:
    """The replay pacer lets a burst through, then holds to the configured rate."""
    now = [0.0]
    bucket = TokenBucket(rate=10, burst=5, clock=lambda: now[0])
    for _ in range(5):
        await bucket.take()
    waiter = asyncio.create_task(bucket.take())
    await asyncio.sleep(0)
    assert not waiter.done()
    now[0] += 0.1
    await asyncio.wait_for(waiter, 1)


def _start_writer(
    state_dir: Path, broker: Broker, gateway: str, round_no: int, *, drain: bool = False
) -> subprocess.Popen[str]:
    args = [
        sys.executable,
        "-m",
        "tests.kill_writer",
        str(state_dir),
        str(broker.port),
        gateway,
        str(round_no),
    ]
    return subprocess.Popen(
        [*args, "--drain"] if drain else args,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=clean_env(),
    )


async def test_kill_9_rounds_lose_nothing_and_never_reuse_a_seq(
    broker: Broker, tmp_path: Path
) -> None:
    """Ten times: a writer appends and delivers, and is killed with SIGKILL at a random
    moment. Every record whose append had returned is delivered in the end, and no seq
    ever names two different records."""
    gateway = f"test.kill{uuid.uuid4().hex[:6]}"
    state_dir = tmp_path / "state"
    rng = random.Random(9)  # noqa: S311 - reproducible kill moments
    promised: list[int] = []
    async with subscriber(broker, f"vg/v1/{gateway}/events") as seen:
        for round_no in range(10):
            writer = _start_writer(state_dir, broker, gateway, round_no)
            await asyncio.sleep(rng.uniform(0.3, 1.2))
            writer.send_signal(signal.SIGKILL)
            output, _ = await asyncio.to_thread(writer.communicate)
            promised += [int(line) for line in output.split()]
        assert len(promised) > 100, "the writer hardly ran; the test proves nothing"
        assert promised == sorted(set(promised)), "a seq was handed out twice"
        drainer = _start_writer(state_dir, broker, gateway, 99, drain=True)
        try:
            await wait_for(lambda: set(promised) <= {r["seq"] for r in seen.records("events")}, 60)
        finally:
            drainer.kill()
            drainer.wait()
    by_seq: dict[int, set[str]] = {}
    for record in seen.records("events"):
        by_seq.setdefault(record["seq"], set()).add(record["uid"])
    assert all(len(uids) == 1 for uids in by_seq.values()), "a seq named two records"


async def test_kill_9_leaves_online_false_within_1_5_keepalive(
    broker: Broker, config_file: ConfigFile, start_daemon: Callable[..., Daemon]
) -> None:
    """kill -9 of the daemon: the broker publishes the will, and the retained status says
    online: false within 1.5 x keepalive; a restarted daemon says online: true again."""
    _, gateway = settings_for(config_file, broker, keepalive_s="5")
    async with subscriber(broker, f"vg/v1/{gateway}/status") as seen:
        daemon = start_daemon("--config", str(config_file.path), web_port=config_file.web_port)
        await wait_for(lambda: any(p.get("online") for p in seen.on("/status")), 15)
        daemon.process.send_signal(signal.SIGKILL)
        daemon.process.wait()
        await wait_for(lambda: seen.on("/status")[-1] == {"online": False}, 7.5)
        restarted = start_daemon("--config", str(config_file.path), web_port=config_file.web_port)
        await wait_for(lambda: seen.on("/status")[-1].get("online") is True, 15)
        assert seen.on("/status")[-1]["boot_count"] == 2
        assert restarted.stop()[0] == 0


def test_a_lost_connection_is_found_among_other_errors_of_the_session() -> None:
    """The broker went away: one task saw the MqttError, another failed differently at
    the same moment. The link must still see a lost connection (and reconnect), not a
    crash; a group without an MqttError is not one."""
    lost = aiomqtt.MqttError("Disconnected during message iteration")
    group = BaseExceptionGroup(
        "session", [RuntimeError("ack on a dead client"), ExceptionGroup("drain", [lost])]
    )
    with capture_logs() as logs:
        assert connection_lost(group) is lost
    assert [line["event"] for line in logs] == ["link.error_with_lost_connection"]
    assert "RuntimeError: ack on a dead client" in str(logs[0]["error"])
    assert connection_lost(ExceptionGroup("bug", [ValueError("x")])) is None
