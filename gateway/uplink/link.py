"""The MQTT link: one session with the commune broker, for as long as the daemon runs.

It owns the one :class:`aiomqtt.Client` of the daemon. On every connection it announces
presence (retained ``online: true``; the will says ``online: false``), subscribes to the
gateway's and its groups' command topics, republishes the retained state snapshots and
drains the outbox. When the connection fails it waits with full-jitter exponential
backoff (1 s doubling up to ``mqtt.max_backoff_s``) and tries again, forever.

Delivery: records go out in ``seq`` order per stream, many per message, several QoS 1
messages in flight, replies before events before telemetry before logs. A batch leaves
the outbox only after its PUBACK. After a reconnect, anything not acknowledged is sent
again: the server may then see a ``seq`` twice, never a gap.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import aiomqtt
from paho.mqtt.subscribeoptions import SubscribeOptions

from gateway import __version__
from gateway.clock import now_iso
from gateway.component import Component, Health
from gateway.config import Settings
from gateway.errors import ConfigError
from gateway.log import get_logger
from gateway.outbox import DELIVERY_ORDER, Batch, Outbox, Stream
from gateway.state import StateStore
from gateway.uplink.client import Topics, acknowledge, describe_error, make_client

__all__ = ["CommandHandler", "Link", "LinkStats", "TokenBucket", "connection_lost", "full_jitter"]

_log = get_logger("link")

CommandHandler = Callable[[str, bytes, bool], Awaitable[None]]
"""Called with (topic, payload, retained) for each message on a command topic; returns
once the command is claimed durably (then the link sends its PUBACK), raises if it could
not be (no PUBACK: the broker keeps the message and delivers it again)."""

RECEIVE_MAXIMUM = 32
"""Commands the broker may have on their way to us unacknowledged (MQTT 5 Receive
Maximum): with PUBACKs sent only once a command is claimed, this bounds what a burst can
hold in memory; the rest waits at the broker."""

MAX_INFLIGHT = 8
BATCH_MAX_RECORDS = 500
BATCH_MAX_BYTES = 128 * 1024
"""Below the 128 KiB message limit of the strictest common cloud brokers."""


class TokenBucket:
    """Paces publishes to ``rate`` per second with bursts of ``burst``."""

    def __init__(
        self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._rate = rate
        self._burst = burst
        self._tokens = burst
        self._clock = clock
        self._last = clock()

    async def take(self) -> None:
        """Wait until one token is available, then use it."""
        while True:
            now = self._clock()
            self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
            self._last = now
            if self._tokens >= 1:
                self._tokens -= 1
                return
            await asyncio.sleep((1 - self._tokens) / self._rate)


@dataclass(slots=True)
class LinkStats:
    """What ``state/system`` and ``/metrics`` report about the link."""

    connected: bool = False
    connects: int = 0
    attempts: int = 0
    failures: int = 0
    last_error: str | None = None
    connected_since: str | None = None
    published_batches: int = 0
    published_records: int = 0
    resent_records: int = 0

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "connected": self.connected,
            "connects": self.connects,
            "attempts": self.attempts,
            "failures": self.failures,
            "last_error": self.last_error,
            "connected_since": self.connected_since,
            "published_batches": self.published_batches,
            "published_records": self.published_records,
            "resent_records": self.resent_records,
        }


def connection_lost(group: BaseExceptionGroup[BaseException]) -> aiomqtt.MqttError | None:
    """The first MqttError in a session's task-group errors (nested too), or None.

    Whatever else the group holds is logged: it happened as the connection went, and
    reconnecting is still the answer, but it must not pass unseen.
    """
    lost, others = group.split(aiomqtt.MqttError)
    if lost is None:
        return None
    if others is not None:
        for error in _leaves(others):
            _log.warning(
                "link.error_with_lost_connection", error=f"{type(error).__name__}: {error}"
            )
    first = next(_leaves(lost))
    assert isinstance(first, aiomqtt.MqttError)  # noqa: S101 - split() kept only these
    return first


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for error in group.exceptions:
        if isinstance(error, BaseExceptionGroup):
            yield from _leaves(error)
        else:
            yield error


def full_jitter(failures: int, *, cap_s: float, rng: random.Random) -> float:
    """Uniform in [0, min(cap, 2**failures)] seconds, at least 0.5 s.

    Full jitter spreads a thousand gateways that lost the same broker over the whole
    window instead of having them come back in waves.
    """
    return max(0.5, rng.uniform(0, min(cap_s, 2.0**failures)))


STATE_LINGER_S = 0.05
"""How long a changed snapshot waits before it is published (see Link._publish_state)."""

BATCH_LINGER_S = 0.05
"""After an idle spell, how long events, telemetry and logs wait to gather a batch."""
IDLE_RECHECK_S = 30.0
"""How long a drain loop with nothing to send sleeps before looking again on its own.
Every commit that makes records visible wakes it at once (the outbox's version), so this
is only a safety net; at 1 s the two loops were two of an idle daemon's few wake-ups a
second."""


def _raise_if_cancelled() -> None:
    """Honour a cancellation that a publish swallowed.

    aiomqtt waits for a PUBACK with ``asyncio.wait_for``, which in Python 3.11 drops a
    cancellation that arrives just as the PUBACK does. A loop that then goes on to wait
    for the next change would wait forever, and the daemon's shutdown with it (seen in
    tests: SIGTERM hung after ``app.stopping``).
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class Link(Component):
    """The daemon's MQTT session; restartable, never fatal to the rest."""

    name = "link"
    critical = False

    def __init__(
        self,
        settings: Settings,
        outbox: Outbox,
        state: StateStore,
        *,
        on_command: CommandHandler | None = None,
        started_at: str,
        boot_count: int,
        clock_synced: Callable[[], bool],
        rng: random.Random | None = None,
    ) -> None:
        self._settings = settings
        self._outbox = outbox
        self._state = state
        self._on_command = on_command
        self._started_at = started_at
        self._boot_count = boot_count
        self._clock_synced = clock_synced
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self.topics = Topics(settings.mqtt.topic_prefix, settings.gateway.id)
        self.stats = LinkStats()
        self._sent_upto: dict[Stream, int] = dict.fromkeys(DELIVERY_ORDER, 0)
        self._client: aiomqtt.Client | None = None
        # Room for the largest command the Dispatcher answers (too_large included) and
        # its topic; the broker drops anything bigger instead of sending it to us.
        self._max_packet_bytes = 2 * settings.commands.max_bytes + 4096

    def _acknowledge(self, batch: Batch) -> None:
        """The broker has ``batch``: let the outbox mark it delivered, and count it."""
        self._outbox.acknowledge(batch)
        self.stats.published_batches += 1
        self.stats.published_records += len(batch.bodies) or 1

    def summary(self) -> str:
        """For systemd's STATUS line."""
        queued = self._outbox.stats().total_depth()
        link = "MQTT online" if self.stats.connected else "MQTT offline"
        return f"{link} · {queued} queued"

    def backoff_s(self, failures: int) -> float:
        """Seconds to wait after ``failures`` failed attempts in a row."""
        return full_jitter(failures, cap_s=self._settings.mqtt.max_backoff_s, rng=self._rng)

    async def run(self, health: Health) -> None:
        """Connect, serve, and reconnect with backoff, until cancelled."""
        failures = 0
        while True:
            health.beat()
            self.stats.attempts += 1
            try:
                await self._session()
            except ConfigError as exc:
                self.stats.last_error = str(exc)
                _log.error("link.config_problem", problems=[str(p) for p in exc.problems])
            except aiomqtt.MqttError as exc:
                reason = describe_error(exc)
                if self.stats.connected or reason != self.stats.last_error:
                    _log.warning("link.disconnected", reason=reason)
                self.stats.last_error = reason
            finally:
                if self.stats.connected:
                    failures = 0
                self.stats.connected = False
                self._client = None
            failures += 1
            self.stats.failures += 1
            delay = self.backoff_s(failures)
            _log.info("link.retry", in_s=round(delay, 1), attempt=failures)
            await asyncio.sleep(delay)

    def _will(self) -> aiomqtt.Will:
        return aiomqtt.Will(self.topics.status, json.dumps({"online": False}), qos=1, retain=True)

    def _presence(self, online: bool) -> bytes:
        payload: dict[str, Any] = {"online": online, "ts": now_iso()}
        if online:
            payload |= {
                "version": __version__,
                "started_at": self._started_at,
                "boot_count": self._boot_count,
                "clock_synced": self._clock_synced(),
                "outbox": self._outbox.stats().total_depth(),
            }
        return json.dumps(payload, ensure_ascii=False).encode()

    async def _session(self) -> None:
        client = make_client(
            self._settings.mqtt,
            identifier=f"vg-{self._settings.gateway.id}",
            will=self._will(),
            persistent_session=True,
            manual_ack=True,
            receive_maximum=RECEIVE_MAXIMUM,
            max_packet_bytes=self._max_packet_bytes,
        )
        async with client:
            self._client = client
            self.stats.connected = True
            self.stats.connects += 1
            self.stats.connected_since = now_iso()
            self.stats.last_error = None
            _log.info(
                "link.connected",
                broker=f"{self._settings.mqtt.host}:{self._settings.mqtt.port}",
                connects=self.stats.connects,
            )
            topics = [self.topics.cmd] + [
                self.topics.group_cmd(g) for g in self._settings.gateway.groups
            ]
            if self._settings.mqtt.protocol == "5":
                # Keep the retain flag of live messages too, so a command published with
                # retain set is recognised (and refused) at once, not only at reconnect.
                options = SubscribeOptions(qos=1, retainAsPublished=True)
                await client.subscribe([(topic, options) for topic in topics])
            else:
                await client.subscribe([(topic, 1) for topic in topics])
            # "online" only once subscribed: a commune that sends a command the moment it
            # sees us online must not have it dropped by the broker for want of a
            # subscription (the first session of a new gateway id has none stored).
            await client.publish(self.topics.status, self._presence(True), qos=1, retain=True)
            try:
                async with asyncio.TaskGroup() as group:
                    group.create_task(self._receive(client))
                    group.create_task(self._publish_state(client))
                    group.create_task(self._drain(client))
            except BaseExceptionGroup as errors:
                # A lost broker surfaces as an MqttError in one task while another may
                # fail differently on the dead client at the same moment; raised from an
                # ``except*`` the MqttError would come out wrapped with that one, and the
                # link would crash instead of reconnecting. The others are logged.
                lost = connection_lost(errors)
                if lost is None:
                    raise
                raise lost from None
            finally:
                self._client = None

    async def publish_offline(self) -> None:
        """On a clean stop, say so at once instead of waiting for the will."""
        client = self._client
        if client is None:
            return
        try:
            async with asyncio.timeout(1):
                await client.publish(self.topics.status, self._presence(False), qos=1, retain=True)
        except (aiomqtt.MqttError, TimeoutError) as exc:
            _log.info("link.offline_not_sent", reason=describe_error(exc))

    async def _receive(self, client: aiomqtt.Client) -> None:
        """Hand each command to the handler, and acknowledge it once it is claimed.

        paho would acknowledge a QoS 1 message as soon as aiomqtt queued it, before our
        code has even seen it; the client is made with manual acknowledgements instead
        (:func:`gateway.uplink.client.make_client`), and the PUBACK leaves here. A message whose
        claim failed is not acknowledged: the broker delivers it again after a reconnect.

        The PUBACK is sent from the loop's next round rather than at once: the claim is
        already in the journal, and the command's first step (a relay switched, its reply
        handed to the writer thread) goes first, so the acknowledgement's send overlaps
        the reply's fsync instead of delaying it.
        """
        loop = asyncio.get_running_loop()
        async for message in client.messages:
            payload = message.payload
            raw = payload if isinstance(payload, bytes) else str(payload).encode()
            if self._on_command is None:
                _log.info(
                    "link.command_ignored", topic=message.topic.value, note="no command handler yet"
                )
            else:
                try:
                    await self._on_command(message.topic.value, raw, message.retain)
                except Exception as exc:
                    _log.error(
                        "link.command_not_claimed",
                        topic=message.topic.value,
                        error=f"{type(exc).__name__}: {exc}",
                        note="not acknowledged: the broker delivers it again after a reconnect",
                    )
                    continue
            loop.call_soon(acknowledge, client, message)

    async def _publish_state(self, client: aiomqtt.Client) -> None:
        """Republish every snapshot after connecting, then each change.

        A change is published ``STATE_LINGER_S`` after it happened: the reply of the
        command that made it goes out first (the commune waits for that one), and a burst
        of changes becomes one retained message per component.
        """
        seen: dict[str, int] = {}
        first = True
        while True:
            if not first:
                await asyncio.sleep(STATE_LINGER_S)
            first = False
            versions = self._state.versions()
            for component, version in versions.items():
                if seen.get(component) != version:
                    snapshot = self._state.snapshot(component)
                    body = json.dumps(snapshot, ensure_ascii=False, default=repr).encode()
                    await client.publish(self.topics.state(component), body, qos=1, retain=True)
                    _raise_if_cancelled()
            seen = versions
            await self._state.wait_changed(seen)

    async def _drain(self, client: aiomqtt.Client) -> None:
        """Publish the outbox in order, many records per message, several in flight.

        Replies have a loop of their own, unpaced: one per command, and the commune is
        waiting. Events, telemetry and logs share a paced loop, in that order of priority.
        """
        # Resend whatever was not acknowledged: start from each stream's delivered mark.
        cursor = {stream: self._outbox.delivered(stream) for stream in DELIVERY_ORDER}
        resend_upto = dict(self._sent_upto)
        rate = self._settings.mqtt.max_msgs_per_s
        async with asyncio.TaskGroup() as group:
            group.create_task(
                self._drain_streams(client, ("replies",), cursor, resend_upto, group, bucket=None)
            )
            group.create_task(
                self._drain_streams(
                    client,
                    tuple(s for s in DELIVERY_ORDER if s != "replies"),
                    cursor,
                    resend_upto,
                    group,
                    bucket=TokenBucket(rate, burst=max(1.0, rate)),
                )
            )

    async def _drain_streams(
        self,
        client: aiomqtt.Client,
        streams: tuple[Stream, ...],
        cursor: dict[Stream, int],
        resend_upto: dict[Stream, int],
        group: asyncio.TaskGroup,
        *,
        bucket: TokenBucket | None,
    ) -> None:
        slots = asyncio.Semaphore(MAX_INFLIGHT)
        epoch = self._outbox.epoch
        while True:
            _raise_if_cancelled()
            version = self._outbox.version
            batch = await self._next_batch(streams, cursor)
            if batch is None:
                await self._outbox.wait_for_records(version, IDLE_RECHECK_S)
                if bucket is not None and self._outbox.version != version:
                    # Events come in small bursts (a command's event, a relay's switch):
                    # wait a moment so they leave as one message, and a reply is not
                    # queued behind them on the socket.
                    await asyncio.sleep(BATCH_LINGER_S)
                continue
            stream = batch.stream
            cursor[stream] = batch.last_seq
            again = min(batch.last_seq, resend_upto[stream]) - batch.first_seq + 1
            self.stats.resent_records += max(0, again)
            self._sent_upto[stream] = max(self._sent_upto[stream], batch.last_seq)
            if bucket is not None:
                await bucket.take()
            await slots.acquire()
            group.create_task(self._send(client, batch, epoch, slots))

    async def _next_batch(
        self, streams: tuple[Stream, ...], cursor: dict[Stream, int]
    ) -> Batch | None:
        for stream in streams:
            if cursor[stream] >= self._outbox.last_seq(stream):
                continue  # nothing committed past the cursor: no hop to the reader thread
            # A reply is one message of its own (PROTOCOL.md); other streams batch.
            limit = 1 if stream == "replies" else BATCH_MAX_RECORDS
            batch = await self._outbox.read(
                stream, after_seq=cursor[stream], max_records=limit, max_bytes=BATCH_MAX_BYTES
            )
            if batch is not None:
                return batch
        return None

    async def _send(
        self, client: aiomqtt.Client, batch: Batch, epoch: int, slots: asyncio.Semaphore
    ) -> None:
        try:
            if batch.stream == "replies":
                topic, payload = self.topics.reply, batch.bodies[0].encode()
            else:
                topic = getattr(self.topics, batch.stream)
                payload = batch.payload(self._settings.gateway.id, epoch)
            await client.publish(topic, payload, qos=1, timeout=30)
        finally:
            slots.release()
        self._acknowledge(batch)
