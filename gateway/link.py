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
import contextlib
import json
import random
import time
from collections.abc import Awaitable, Callable
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
from gateway.mqtt import Topics, describe_error, make_client
from gateway.outbox import DELIVERY_ORDER, Batch, Outbox, Stream, encode_record
from gateway.state import StateStore

__all__ = ["CommandHandler", "Link", "LinkStats", "TokenBucket", "full_jitter"]

_log = get_logger("link")

CommandHandler = Callable[[str, bytes, bool], Awaitable[None]]
"""Called with (topic, payload, retained) for each message on a command topic."""

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


def _first_leaf(group: BaseExceptionGroup[aiomqtt.MqttError]) -> aiomqtt.MqttError:
    """The first MqttError inside (possibly nested) task-group errors."""
    first = group.exceptions[0]
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    return first


def full_jitter(failures: int, *, cap_s: float, rng: random.Random) -> float:
    """Uniform in [0, min(cap, 2**failures)] seconds, at least 0.5 s.

    Full jitter spreads a thousand gateways that lost the same broker over the whole
    window instead of having them come back in waves.
    """
    return max(0.5, rng.uniform(0, min(cap_s, 2.0**failures)))


BATCH_LINGER_S = 0.05
"""After an idle spell, how long events, telemetry and logs wait to gather a batch."""

_FROM_MEMORY_WAIT_S = 5.0
"""How long the reply loop waits for a reply's publish from memory before sending it."""

_CLAIMED_MAX = 1000
"""Replies published from memory that the reply loop has not passed yet (a bound)."""


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
        self._claimed: dict[str, asyncio.Future[bool]] = {}
        """Replies (by id) about to be stored, to be published from memory once stored."""
        self._from_memory: dict[int, asyncio.Future[bool]] = {}
        """Stored replies (by seq) published from memory: the reply loop skips reading them."""
        self._replies_known = outbox.stats().last_seq.get("replies", 0)
        """Every stored reply up to this seq has been through :meth:`reply_stored` (or was
        stored before this process started): the reply loop sends nothing past it."""
        self._replies_seen = asyncio.Event()

    def expect_reply(self, reply_id: object) -> None:
        """A reply with this id is about to be stored; it will be published from memory.

        The commune waits for each reply, and reading it back from the outbox (a wake-up
        of the reply loop and a hop to the reader thread) was most of a command's round
        trip. So the link claims the reply before it is stored; :meth:`reply_stored`
        publishes it the moment its commit returns, and the reply loop, should it read
        the stored copy first, waits for that publish instead of sending it twice. A
        reply is still never published before it is stored (ARCHITECTURE.md:
        acknowledged means stored).
        """
        if (
            self._client is None
            or not isinstance(reply_id, str)
            or reply_id in self._claimed
            or len(self._claimed) >= _CLAIMED_MAX
        ):
            return
        self._claimed[reply_id] = asyncio.get_running_loop().create_future()

    async def reply_stored(self, reply: dict[str, Any], seq: int) -> None:
        """The outbox committed ``reply`` as ``seq``: publish it now if it was claimed.

        Returns once the broker has it, or the publish failed (the reply loop then sends
        the stored copy). The bookkeeping and the publish itself happen before the first
        wait, in the caller's turn of the event loop: a task of its own would start a
        turn later, behind whatever the commit woke.
        """
        self._replies_known = max(self._replies_known, seq)
        self._replies_seen.set()
        reply_id = reply.get("id")
        sent = self._claimed.pop(reply_id, None) if isinstance(reply_id, str) else None
        client = self._client
        if sent is None:
            return
        if client is None:
            sent.set_result(False)
            return
        if len(self._from_memory) >= _CLAIMED_MAX:
            self._from_memory.clear()  # stale entries only; the loop then reads and sends
        self._from_memory[seq] = sent
        body = encode_record({"seq": seq, **reply}).encode()
        await self._publish_stored(client, body, sent, seq)

    async def _publish_stored(
        self, client: aiomqtt.Client, body: bytes, sent: asyncio.Future[bool], seq: int
    ) -> None:
        """Publish a stored reply from memory; once the broker has it, it is acknowledged
        here, so the reply loop has nothing left to do for it but move its cursor."""
        try:
            await client.publish(self.topics.reply, body, qos=1, timeout=30)
        except (aiomqtt.MqttError, TimeoutError) as exc:
            _log.info("link.reply_not_sent", reason=describe_error(exc), then="from the outbox")
            sent.set_result(False)
        except BaseException:
            sent.set_result(False)
            raise
        else:
            sent.set_result(True)
            self._sent_upto["replies"] = max(self._sent_upto["replies"], seq)
            self._acknowledge(Batch("replies", seq, seq, ()))

    def _skip_published_from_memory(self, cursor: dict[Stream, int]) -> None:
        """Move the cursor over the stored replies that :meth:`reply_stored` has
        published (and acknowledged); stop at one still on its way or that failed."""
        while (seq := cursor["replies"] + 1) in self._from_memory:
            sent = self._from_memory[seq]
            if not sent.done() or not sent.result():
                return  # on its way, or failed: then the copy is read and sent as usual
            del self._from_memory[seq]
            cursor["replies"] = seq

    def _replies_on_their_way(self, cursor: dict[Stream, int]) -> bool:
        """True if every stored reply past the cursor is being published from memory:
        nothing for the reply loop to read until one of them fails (the loop's one-second
        look catches that) or another reply is stored."""
        last = self._outbox.last_seq("replies")
        return all(
            (sent := self._from_memory.get(seq)) is not None and not sent.done()
            for seq in range(cursor["replies"] + 1, last + 1)
        )

    async def _published_from_memory(self, seq: int) -> bool:
        """True once the stored reply ``seq`` went out through :meth:`reply_stored`."""
        sent = self._from_memory.pop(seq, None)
        if sent is None:
            return False
        try:
            async with asyncio.timeout(_FROM_MEMORY_WAIT_S):
                return await asyncio.shield(sent)
        except TimeoutError:
            return False

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
            except* aiomqtt.MqttError as errors:
                raise _first_leaf(errors) from None
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
        async for message in client.messages:
            payload = message.payload
            raw = payload if isinstance(payload, bytes) else str(payload).encode()
            if self._on_command is None:
                _log.info(
                    "link.command_ignored", topic=message.topic.value, note="no command handler yet"
                )
                continue
            await self._on_command(message.topic.value, raw, message.retain)

    async def _publish_state(self, client: aiomqtt.Client) -> None:
        """Republish every snapshot after connecting, then each change."""
        seen: dict[str, int] = {}
        while True:
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
            if bucket is None:
                # Replies: most go out from memory (reply_stored), so most wake-ups here
                # only move the cursor; reading starts at the first one that did not.
                self._skip_published_from_memory(cursor)
                if self._replies_on_their_way(cursor):
                    await self._outbox.wait_for_records(version, 1.0)
                    continue
            batch = await self._next_batch(streams, cursor)
            if (
                batch is not None
                and batch.stream == "replies"
                and batch.first_seq > self._replies_known
                and self._claimed
            ):
                # Committed a moment ago while a claimed reply is on its way to
                # reply_stored, which decides whether it goes out from memory: ask again
                # after that, instead of sending it a second time.
                self._replies_seen.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_FROM_MEMORY_WAIT_S):
                        await self._replies_seen.wait()
                self._replies_known = max(self._replies_known, batch.first_seq)
                continue
            if batch is None:
                await self._outbox.wait_for_records(version, 1.0)
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
                if await self._published_from_memory(batch.first_seq):
                    return  # reply_stored acknowledged it
                topic, payload = self.topics.reply, batch.bodies[0].encode()
            else:
                topic = getattr(self.topics, batch.stream)
                payload = batch.payload(self._settings.gateway.id, epoch)
            await client.publish(topic, payload, qos=1, timeout=30)
        finally:
            slots.release()
        self._acknowledge(batch)
