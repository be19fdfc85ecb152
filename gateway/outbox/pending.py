"""The queue between whoever appends and the writer thread that commits.

Appends, acknowledgements and flushes wait here until the writer takes them for one
transaction; see :class:`Pending` for when it is woken.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gateway.outbox.records import Stream

__all__ = ["MAX_GROUP", "Ack", "Append", "Assigned", "Flush", "Pending"]

MAX_GROUP = 5000
"""At most this many operations share one transaction."""


@dataclass(slots=True)
class Append:
    stream: Stream
    fields: str
    """The record as JSON text *without* its seq, e.g. ``{"ts": ..., "type": ...}``."""
    urgent: bool
    waiter: asyncio.Future[int] | None
    """Resolved in the event loop with the record's seq once it is committed."""
    on_stored: Callable[[int], None] | None = None
    """Called in the event loop with the record's seq once it is committed."""
    after_commit: Callable[[], None] | None = None
    """Called in the writer thread once the record is committed and the event loop told,
    before the writer's next commit (which may purge the record once delivered)."""


@dataclass(slots=True)
class Ack:
    stream: Stream
    first_seq: int
    last_seq: int


@dataclass(slots=True)
class Flush:
    done: Callable[[], None]


Assigned = list[tuple[Append, int]]
"""Per committed append: the append and its seq, -1 if the commit failed."""


class Pending:
    """What waits for a commit, shared by the writer thread and commits on the loop.

    Whoever commits takes the oldest operations while holding the connection lock, so
    records are committed (and numbered) in the order they were appended, whichever
    thread commits them. The writer is woken only when it has something to decide: the
    first operation after an idle spell (to start the window), an urgent one, a full
    group, acknowledgements left waiting, or the stop.
    """

    def __init__(self, window_s: float, group_bytes: int) -> None:
        self._window = window_s
        self._group_bytes = group_bytes
        self._changed = threading.Condition(threading.Lock())
        self._ops: list[Append | Flush] = []
        self._bytes = 0
        self._urgent = False
        self._since = 0.0
        """When the oldest waiting operation came: the window runs from there."""
        self._acks: list[Ack] = []
        self._acks_due = False
        self.stopping = False

    def add(self, op: Append | Flush) -> None:
        """Queue ``op``; from any thread."""
        size = len(op.fields) if isinstance(op, Append) else 0
        urgent = isinstance(op, Append) and op.urgent
        with self._changed:
            wake = not self._ops or urgent
            if not self._ops:
                self._since = time.monotonic()
            self._ops.append(op)
            self._bytes += size
            self._urgent = self._urgent or urgent
            if wake or self._full():
                self._changed.notify()

    def add_many(self, ops: Sequence[Append]) -> None:
        """Queue ``ops`` together (one command's records); from any thread."""
        with self._changed:
            if not self._ops:
                self._since = time.monotonic()
            self._ops.extend(ops)
            self._bytes += sum(len(op.fields) for op in ops)
            self._urgent = self._urgent or any(op.urgent for op in ops)
            self._changed.notify()

    def add_ack(self, ack: Ack) -> None:
        """Keep ``ack`` for the next commit, whoever makes it; wakes nobody."""
        with self._changed:
            self._acks.append(ack)

    def acks_due(self) -> None:
        """Acknowledgements have waited long enough: have the writer commit them."""
        with self._changed:
            if self._acks:
                self._acks_due = True
                self._changed.notify()

    def stop(self) -> None:
        """Have the writer commit everything left, then end."""
        with self._changed:
            self.stopping = True
            self._changed.notify()

    def wait_until_due(self) -> None:
        """In the writer: block until a commit is due (window over, urgent, full, …)."""
        with self._changed:
            while (delay := self._delay()) != 0:
                self._changed.wait(delay)

    def _delay(self) -> float | None:
        if self.stopping or self._acks_due:
            return 0
        if not self._ops:
            return None
        if self._urgent or self._full():
            return 0
        return max(0.0, self._since + self._window - time.monotonic())

    def _full(self) -> bool:
        return len(self._ops) >= MAX_GROUP or self._bytes >= self._group_bytes

    def take(self) -> tuple[list[Append | Flush], list[Ack]]:
        """The oldest operations for one transaction, and every acknowledgement waiting.
        Call it holding the connection lock.

        A transaction holds at most a twentieth of the byte budget, so the file never
        grows far past the budget before the drop policy runs at its end.
        """
        with self._changed:
            count, size = 0, 0
            for op in self._ops:
                if count >= MAX_GROUP or (count and size >= self._group_bytes):
                    break
                count += 1
                size += len(op.fields) if isinstance(op, Append) else 0
            ops = self._ops[:count]
            del self._ops[:count]
            self._bytes -= size
            self._urgent = any(isinstance(op, Append) and op.urgent for op in self._ops)
            return ops, self._take_acks()

    def _take_acks(self) -> list[Ack]:
        acks, self._acks = self._acks, []
        self._acks_due = False
        return acks

    def empty(self) -> bool:
        """Nothing left to commit."""
        with self._changed:
            return not self._ops and not self._acks
