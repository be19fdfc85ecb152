"""Downlink: what to do with a message on a command topic before the Dispatcher sees it.

Two rules the Dispatcher cannot know about, because they concern MQTT itself:

- A *retained* command is ignored and logged: it would be delivered again at every
  reconnect and switch the relay each time.
- A group command for a group this gateway is not in is ignored (it can arrive through
  a wide subscription or a misconfigured bridge); the commune gets no reply from us.
"""

from __future__ import annotations

from collections.abc import Iterable

from gateway.commands import Dispatcher
from gateway.log import get_logger
from gateway.mqtt import Topics

__all__ = ["Downlink"]

_log = get_logger("downlink")


class Downlink:
    """The link's command handler: filters, then dispatches with source ``mqtt``."""

    def __init__(self, dispatcher: Dispatcher, topics: Topics, groups: Iterable[str]) -> None:
        self._dispatcher = dispatcher
        self._own = topics.cmd
        self._groups = {topics.group_cmd(group) for group in groups}

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
        await self._dispatcher.dispatch(payload, "mqtt")
