"""The events hub: one synchronous ``emit`` for every component's events.

A component (the relay bank, the PA player, the hotspot monitor) calls
:meth:`EventHub.emit` and goes on at once: it never waits for storage and never spawns a
task for it. The hub decides where the event goes:

- While a command runs, the events its handler causes (a relay switched) are
  *collected* for that command (:meth:`EventHub.collecting`): the Dispatcher stores them
  with the command's own event and its reply in one transaction, so the commune never
  sees a reply whose effects are not stored, and one fsync covers all of it.
- Any other event (a timer fired, a hotspot went down) is queued in the outbox's
  ``events`` stream, committed within the group-commit window.

Either way, once an event is stored the live feed (the web UI's WebSocket) gets it with
its ``seq``. Which command an event belongs to is a :class:`contextvars.ContextVar`, so it
follows the handler's own task and nothing else: tasks a handler starts (a clip that
plays on) inherit the variable, but a collection that has ended takes no more events,
and those go to the outbox on their own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any

from gateway.clock import now_iso
from gateway.outbox import Outbox

__all__ = ["EventHub", "Feed"]

Feed = Callable[[dict[str, Any], int | None], None]
"""The live feed: gets each event with its seq once stored."""


class _Collection:
    """The events of one running command."""

    __slots__ = ("events", "open")

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.open = True


_current: ContextVar[_Collection | None] = ContextVar("command_events", default=None)


class EventHub:
    """Where components send their events; sinks are the outbox and the live feed."""

    def __init__(self, outbox: Outbox, feed: Feed) -> None:
        self._outbox = outbox
        self._feed = feed

    def emit(self, event: dict[str, Any]) -> None:
        """Take one event; never blocks, never raises for storage reasons."""
        if "ts" not in event:
            event = {"ts": now_iso("milliseconds"), **event}
        collection = _current.get()
        if collection is not None and collection.open:
            collection.events.append(event)
            return
        self._outbox.append_nowait("events", event, on_stored=lambda seq: self._feed(event, seq))

    def stored(self, event: dict[str, Any], seq: int | None) -> None:
        """An event stored by someone else (the Dispatcher's commit): pass it to the feed."""
        self._feed(event, seq)

    @contextlib.contextmanager
    def collecting(self) -> Iterator[list[dict[str, Any]]]:
        """Collect the events emitted in this context (a command's handler) into a list.

        The caller stores them. Once the block ends, the collection is closed: an event
        a task started by the handler emits later goes to the outbox by itself.
        """
        collection = _Collection()
        token = _current.set(collection)
        try:
            yield collection.events
        finally:
            collection.open = False
            _current.reset(token)
