"""What the outbox stores and hands out: streams, batches, statistics, record JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Final, Literal, get_args

__all__ = [
    "DELIVERY_ORDER",
    "DROP_ORDER",
    "STREAMS",
    "Batch",
    "OutboxStats",
    "Stream",
    "encode_record",
]

Stream = Literal["replies", "events", "telemetry", "logs"]
STREAMS: Final[tuple[Stream, ...]] = get_args(Stream)
DELIVERY_ORDER: Final[tuple[Stream, ...]] = ("replies", "events", "telemetry", "logs")
"""Which stream the uplink drains first: a reply never waits behind 100k log lines."""
DROP_ORDER: Final[tuple[Stream, ...]] = ("logs", "telemetry", "events", "replies")
"""Which stream gives way first when the outbox is full."""


@dataclass(frozen=True, slots=True)
class Batch:
    """Consecutive records of one stream, ready to publish as one message."""

    stream: Stream
    first_seq: int
    last_seq: int
    bodies: tuple[str, ...]

    def payload(self, gateway: str, epoch: int) -> bytes:
        """The batch message of PROTOCOL.md, built from the stored JSON without parsing."""
        head = json.dumps({"gateway": gateway, "stream": self.stream, "epoch": epoch})
        return f'{head[:-1]}, "records": [{",".join(self.bodies)}]}}'.encode()


@dataclass(slots=True)
class OutboxStats:
    """What the ``system`` state and ``/metrics`` show about the outbox."""

    depth: dict[Stream, int] = field(default_factory=dict)
    bytes: dict[Stream, int] = field(default_factory=dict)
    dropped: dict[Stream, int] = field(default_factory=dict)
    last_seq: dict[Stream, int] = field(default_factory=dict)
    oldest_age_s: float | None = None
    disk_bytes: int = 0
    epoch: int = 1
    appended: int = 0
    commits: int = 0

    def total_depth(self) -> int:
        """Records waiting, all streams together."""
        return sum(self.depth.values())


def encode_record(record: dict[str, Any]) -> str:
    """JSON text of a record; values JSON cannot hold become their ``repr``."""
    return json.dumps(record, ensure_ascii=False, default=repr, separators=(",", ":"))
