"""Downlink: the MQTT adapter of the command path, everything about a command that is
particular to MQTT, settled before the Dispatcher sees it.

- A *retained* command is ignored and logged: it would be delivered again at every
  reconnect and switch the relay each time.
- A group command for a group this gateway is not in is ignored (it can arrive through
  a wide subscription or a misconfigured bridge); the commune gets no reply from us.
- **Admission.** With ``commands.hmac_key_file`` set, the signature is checked first,
  before anything costs a token, and a signed command must carry ``issued_at`` (without
  it a captured command could be replayed once its id is forgotten). Rate limits are
  kept per kind of sender: signed commands, unsigned ones, and payloads that are not
  even a command each have a bucket of their own, so a flood of junk cannot starve the
  commune's signed commands. A refusal is stored within the group-commit window, not
  with an fsync each, and past its bucket a refusal is only counted.
- **Durable in.** :meth:`Downlink.__call__` returns once the Dispatcher has claimed the
  command durably (its id and bytes in the journal); only then does the link send the
  PUBACK. A crash before leaves the message with the broker, which delivers it again.
- **Bounded.** At most ``MAX_RUNNING`` commands from MQTT run (or wait for their lane)
  at once; past that the next one is neither claimed nor acknowledged until one ends,
  so a burst waits at the broker (whose Receive Maximum stops it sending more), not in
  this process's memory.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from gateway.commands import (
    CommandError,
    Dispatcher,
    Redelivered,
    Reply,
    TokenBucket,
    command_id_of,
    decode,
    sign,
)
from gateway.log import get_logger
from gateway.uplink.client import Topics

__all__ = ["Downlink"]

_log = get_logger("downlink")

MAX_RUNNING = 32
"""Commands from MQTT claimed but not answered yet, before the link stops reading."""

_FLOOD_REPORT_S = 10.0
"""At most one log line this often about refusals dropped past their bucket."""


class Downlink:
    """The link's command handler: filters, admits, then submits with source ``mqtt``."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        topics: Topics,
        groups: Iterable[str],
        *,
        hmac_key: bytes | None = None,
        rate_per_s: float = 20.0,
        burst: float = 100.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._dispatcher = dispatcher
        self._own = topics.cmd
        self._groups = {topics.group_cmd(group) for group in groups}
        self._key = hmac_key
        self._buckets = {
            kind: TokenBucket(rate_per_s, burst, clock) for kind in ("signed", "unsigned", "junk")
        }
        self._clock = clock
        self.dropped = 0
        """Refusals not answered because their sender was past its rate limit."""
        self._reported_at = -_FLOOD_REPORT_S
        self._unreported = 0
        self._slots = asyncio.Semaphore(MAX_RUNNING)

    async def __call__(self, topic: str, payload: bytes, retained: bool) -> None:
        """Handle one message from ``P/ID/cmd`` or ``P/group/G/cmd``; returns once the
        link may acknowledge it. Raises if it could not be claimed (the link then does
        not acknowledge it, and the broker keeps it)."""
        await self._slots.acquire()
        try:
            running = self._admit(topic, payload, retained)
        except BaseException:
            self._slots.release()
            raise
        if running is None:
            self._slots.release()
        else:
            running.add_done_callback(lambda _: self._slots.release())

    def _admit(  # noqa: PLR0911 - one return per way a message is settled
        self, topic: str, payload: bytes, retained: bool
    ) -> asyncio.Future[Reply] | None:
        """Filter, check and submit; the running command, or None if none was started."""
        if topic != self._own and topic not in self._groups:
            _log.info("command.foreign_topic_ignored", topic=topic)
            return None
        if retained:
            _log.warning(
                "command.retained_ignored",
                topic=topic,
                bytes=len(payload),
                note="a retained command would run again at every reconnect; publish "
                "commands without the retain flag",
            )
            return None
        try:
            data = decode(payload, self._dispatcher.max_bytes)
        except CommandError as exc:
            self._refuse(exc, "junk")
            return None
        kind = "unsigned"
        if self._key is not None:
            problem = self._signature_problem(data)
            if problem is not None:
                self._refuse(problem, "junk")
                return None
            kind = "signed"
        if not self._buckets[kind].allow():
            refusal = CommandError(
                "rate_limited",
                f"more than the allowed {kind} commands per second (commands.rate_per_s)",
                command_id=command_id_of(data),
            )
            self._refuse(refusal, "junk")
            return None
        try:
            return self._dispatcher.submit(
                payload, "mqtt", reply_up=True, durable=True, decoded=data
            )
        except Redelivered as again:
            _log.info("command.redelivered", id=again.command_id)
            return None

    def _signature_problem(self, data: Mapping[str, Any]) -> CommandError | None:
        assert self._key is not None  # noqa: S101 - only called with a key
        given = data.get("sig")
        command_id = command_id_of(data)
        if not isinstance(given, str) or not hmac.compare_digest(given, sign(data, self._key)):
            return CommandError(
                "forbidden",
                "missing or invalid signature (commands.hmac_key_file)",
                command_id=command_id,
            )
        if data.get("issued_at") is None:
            return CommandError(
                "bad_command",
                "a signed command needs issued_at (so that it cannot be replayed later)",
                command_id=command_id,
            )
        return None

    def _refuse(self, error: CommandError, kind: str) -> None:
        if self._buckets[kind].allow():
            self._dispatcher.refuse(error, "mqtt", reply_up=True)
            return
        self.dropped += 1
        self._unreported += 1
        now = self._clock()
        if now - self._reported_at >= _FLOOD_REPORT_S:
            _log.warning(
                "command.flood_dropped",
                count=self._unreported,
                last_error=error.key,
                note="refusals past the rate limit are counted, not answered",
            )
            self._reported_at, self._unreported = now, 0
