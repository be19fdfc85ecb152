"""The newest committed records of a stream, kept in memory for the uplink."""

from __future__ import annotations

import threading
from collections import deque

__all__ = ["TAIL_RECORDS", "Tail"]

TAIL_RECORDS = 256
"""Newest committed records kept in memory per stream for the uplink (see Tail)."""


class Tail:
    """The newest committed records of one stream, in memory: what the uplink reads next
    is almost always here, and reading it costs no hop to the reader thread.

    Filled by the writer thread right after each COMMIT, read on the event loop, hence
    the lock. A drop of old records clears it (what it holds may be gone from the file).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: deque[tuple[int, str]] = deque(maxlen=TAIL_RECORDS)

    def extend(self, rows: list[tuple[int, float, str]]) -> None:
        with self._lock:
            self._records.extend((seq, body) for seq, _, body in rows)

    def clear(self) -> None:
        with self._lock:
            self._records.clear()

    def read(
        self, after_seq: int, max_records: int, max_bytes: int
    ) -> list[tuple[int, str]] | None:
        """Records after ``after_seq`` if the tail holds the very next one, else None.

        Walks from the newest end: the uplink asks for what was just committed, so it
        touches only those records, not the whole tail before them.
        """
        with self._lock:
            if not self._records or self._records[0][0] > after_seq + 1:
                return None
            newer: list[tuple[int, str]] = []
            for record in reversed(self._records):
                if record[0] <= after_seq:
                    break
                newer.append(record)
        newer.reverse()
        taken: list[tuple[int, str]] = []
        total = 0
        for seq, body in newer:
            if len(taken) >= max_records or (taken and total + len(body) > max_bytes):
                break
            taken.append((seq, body))
            total += len(body)
        return taken
