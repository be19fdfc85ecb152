"""Downlink: what to do with a message on a command topic before the Dispatcher sees it.

Two rules the Dispatcher cannot know about, because they concern MQTT itself:

- A *retained* command is ignored and logged: it would be delivered again at every
  reconnect and switch the relay each time.
- A group command for a group this gateway is not in is ignored (it can arrive through
  a wide subscription or a misconfigured bridge); the commune gets no reply from us.

Each accepted command is dispatched in a task of its own, so the link reads the next
message while the last one's event and reply are being stored; the Dispatcher still runs
commands one at a time, in order. At most ``MAX_PENDING`` are in flight: beyond that the
link stops reading (and the broker holds the rest).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from gateway.commands import Dispatcher
from gateway.log import get_logger
from gateway.mqtt import Topics

__all__ = ["Downlink"]

_log = get_logger("downlink")

MAX_PENDING = 32
"""Commands dispatched but not yet stored, before the link waits."""


class Downlink:
    """The link's command handler: filters, then dispatches with source ``mqtt``."""

    def __init__(self, dispatcher: Dispatcher, topics: Topics, groups: Iterable[str]) -> None:
        self._dispatcher = dispatcher
        self._own = topics.cmd
        self._groups = {topics.group_cmd(group) for group in groups}
        self._slots = asyncio.Semaphore(MAX_PENDING)
        self._pending: set[asyncio.Task[None]] = set()

    async def __call__(self, topic: str, payload: bytes, retained: bool) -> None:
        """Handle one message from ``P/ID/cmd`` or ``P/group/G/cmd``."""
        if topic != self._own and topic not in self._groups:
            _log.info("command.foreign_topic_ignored", topic=topic)
            return
        if retained:
            _log.warning(
                "command.retained_ignored",
                topic=topic,
                bytes=len(payload),
                note="a retained command would run again at every reconnect; publish "
                "commands without the retain flag",
            )
            return
        await self._slots.acquire()
        task = asyncio.create_task(self._dispatch(payload), name="command")
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _dispatch(self, payload: bytes) -> None:
        try:
            await self._dispatcher.dispatch(payload, "mqtt")
        finally:
            self._slots.release()
