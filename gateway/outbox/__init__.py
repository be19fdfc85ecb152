"""The outbox: every record that goes up is stored durably first, and deleted only after
the broker acknowledged the batch that carried it.

Why it looks like this:

- **SQLite in WAL mode with ``synchronous=FULL``**: a commit is on the SD card when it
  returns, so a power cut loses nothing that :meth:`Outbox.append` returned for.
- **Group commit.** Appends wait up to ``commit_window_s`` so that many share one
  transaction and one fsync (SD cards wear out). A reply is urgent and ends the window
  at once. Deletes after PUBACK ride along in the next transaction.
- **Sequence numbers** per stream only grow: the last one is kept in the ``counters``
  table in the same transaction as the records, so it survives restarts and an emptied
  outbox. If the file had to be replaced (corrupt), the ``epoch`` goes up instead, and
  every batch carries it, so the server can tell a new numbering from a replay.
- **Deletes are deferred.** An acknowledged batch only moves the stream's ``delivered``
  mark; rows are deleted when the stream is delivered to its end (one cheap DELETE of
  whole pages) or when the delivered part grows large. Measured on these machines this
  halves the bytes the card sees per record (see ``bench/bench_uplink.py``).
- **Bounded.** Past ``max_bytes`` the oldest records are dropped by class: logs first,
  then telemetry, then events, replies last; every drop is counted and reported.
- **One writer thread** commits everything that may wait; reads for the uplink use a
  second connection in a second thread, and see only committed records: a record is
  never published before it is durable, so a crash can never make a ``seq`` mean two
  things.
- **The event loop never waits for a disk.** Every commit is the writer thread's; a
  command's records (:meth:`Outbox.append_now`) end the group-commit window at once. On
  an SD card whose fsync takes 15-50 ms the web UI, the PA player and the probes keep
  running meanwhile. (An earlier design committed commands on the loop to save the
  thread hop; a slow card then stalled everything.)
- **Fresh records are read from memory.** The writer keeps the newest committed records
  of each stream (a bounded tail); the uplink reads them from there without a hop to the
  reader thread, so a reply leaves as soon as its commit returns.
- **Acknowledgements ride along** on the next commit, whoever makes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from gateway.clock import now_iso
from gateway.files import write_atomic
from gateway.log import get_logger
from gateway.outbox.pending import Ack, Append, Assigned, Flush, Pending
from gateway.outbox.records import (
    DELIVERY_ORDER,
    DROP_ORDER,
    STREAMS,
    Batch,
    OutboxStats,
    Stream,
    encode_record,
)
from gateway.outbox.tail import Tail

__all__ = [
    "DELIVERY_ORDER",
    "DROP_ORDER",
    "PAGE_CACHE_KIB",
    "Batch",
    "Outbox",
    "OutboxStats",
    "Stream",
    "encode_record",
]

_STREAM_ID: Final[dict[Stream, int]] = {name: i for i, name in enumerate(STREAMS)}
_DB_NAME = "outbox.db"
_EPOCH_NAME = "outbox.epoch"
_DISK_OVERHEAD = 1.35
"""Pages, B-tree and WAL around the payload: the byte budget is max_bytes / this."""
_DROP_REPORT_INTERVAL_S = 10.0

PAGE_CACHE_KIB: Final = 256
"""SQLite's own page cache per long-lived connection (outbox writer and reader, command
journal). SQLite's default, 2,000 KiB each, fills during a long outage's drain and is
never given back: +3.0 to +4.7 MB of RSS kept after 100,000 records went up, against
+1.2 MB at 256 KiB, at the same drain rate (bench/bench_footprint.py prints both).
The kernel's page cache still holds the file, so a page SQLite drops costs a ``pread``,
not a read from the card. A Pi Zero 2 W has 512 MB."""

_log = get_logger("outbox")

# One table per stream with seq as the rowid: appends go to the right edge and drops and
# deletes take from the left, so pages stay packed and freed pages are reused whole.
_TABLE: Final[dict[Stream, str]] = {name: f"records_{name}" for name in STREAMS}
_SCHEMA = (
    "".join(
        f"CREATE TABLE IF NOT EXISTS {table} "
        "(seq INTEGER PRIMARY KEY, created REAL NOT NULL, body TEXT NOT NULL);\n"
        for table in _TABLE.values()
    )
    + """
CREATE TABLE IF NOT EXISTS counters (
    stream   INTEGER PRIMARY KEY,
    last_seq INTEGER NOT NULL DEFAULT 0,
    depth    INTEGER NOT NULL DEFAULT 0,
    bytes    INTEGER NOT NULL DEFAULT 0,
    dropped  INTEGER NOT NULL DEFAULT 0,
    delivered INTEGER NOT NULL DEFAULT 0
);
"""
)


class Outbox:
    """A durable, bounded, ordered queue of records per stream. Use :meth:`open`."""

    def __init__(
        self,
        folder: Path,
        *,
        max_bytes: int,
        commit_window_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.folder = folder
        self.path = folder / _DB_NAME
        self.max_bytes = max_bytes
        self._budget = int(max_bytes / _DISK_OVERHEAD)
        self._group_bytes = max(4096, self._budget // 20)
        self.max_record_bytes = max(1024, self._budget // 8)
        self._window = commit_window_s
        self._clock = clock
        self._pending = Pending(commit_window_s, self._group_bytes)
        self._ack_timer: asyncio.TimerHandle | None = None
        self._write_conn: sqlite3.Connection | None = None
        self._tails: dict[Stream, Tail] = {name: Tail() for name in STREAMS}
        self._inserted: dict[Stream, list[tuple[int, float, str]]] = {}
        """The rows of the transaction being committed (writer thread only)."""
        self._fresh: list[tuple[dict[Stream, list[tuple[int, float, str]]], set[Stream]]] = []
        """Committed rows (and streams that dropped records) not yet made visible to
        readers; handed from the writer thread to the loop with the commit's notice."""
        self._fresh_lock = threading.Lock()
        self._visible = dict.fromkeys(STREAMS, 0)
        """Per stream, the newest seq readers may see: set in the event loop only after
        the commit's waiters and callbacks ran, so that what a command's ``on_stored``
        records (its journal entry closed) happens before its reply can be published."""
        self._writer: threading.Thread | None = None
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox-read")
        self._read_conn: sqlite3.Connection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.version = 0
        """Goes up (in the event loop) after every commit that added records."""
        self._waiters: set[asyncio.Future[None]] = set()
        self._closed = False
        # Mirrors of the counters table, updated by the writer after each commit.
        self._last_seq = dict.fromkeys(STREAMS, 0)
        self._depth = dict.fromkeys(STREAMS, 0)
        self._bytes = dict.fromkeys(STREAMS, 0)
        self._dropped = dict.fromkeys(STREAMS, 0)
        self._delivered = dict.fromkeys(STREAMS, 0)
        """Per stream: every record up to this seq was acknowledged by the broker."""
        self._delivered_bytes = dict.fromkeys(STREAMS, 0)
        """Bytes of delivered records not yet deleted (deletes are deferred, see _purge)."""
        self._early_acks: dict[Stream, dict[int, int]] = {name: {} for name in STREAMS}
        self._unreported_drops: dict[Stream, int] = {}
        self._last_drop_report = 0.0
        self.epoch = 1
        self.appended = 0
        self.commits = 0
        self.recovered_from: Path | None = None
        self._oldest_age: float | None = None
        self._failing = False
        self.failed_commits = 0

    # -- opening ----------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        folder: Path,
        *,
        max_bytes: int = 64 * 1024 * 1024,
        commit_window_s: float = 0.1,
        clock: Callable[[], float] = time.time,
    ) -> Outbox:
        """Open (or create) the outbox in ``folder``; a corrupt file is moved aside."""
        outbox = cls(folder, max_bytes=max_bytes, commit_window_s=commit_window_s, clock=clock)
        outbox._loop = asyncio.get_running_loop()
        write_conn = await asyncio.to_thread(outbox._open_write_connection)
        outbox._write_conn = write_conn
        await asyncio.get_running_loop().run_in_executor(outbox._reader, outbox._open_reader)
        outbox._writer = threading.Thread(
            target=outbox._write_loop, args=(write_conn,), name="outbox-write", daemon=True
        )
        outbox._writer.start()
        if outbox.recovered_from is not None:
            outbox.append_nowait(
                "events",
                {
                    "ts": now_iso("milliseconds"),
                    "type": "outbox.corrupt",
                    "moved_to": outbox.recovered_from.name,
                    "epoch": outbox.epoch,
                },
                urgent=True,
            )
        return outbox

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.execute(f"PRAGMA cache_size = -{PAGE_CACHE_KIB}")
        return conn

    def _open_write_connection(self) -> sqlite3.Connection:
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            conn = self._prepare()
        except sqlite3.DatabaseError as exc:
            self._move_aside(exc)
            conn = self._prepare()
        return conn

    def _prepare(self) -> sqlite3.Connection:
        fresh = not self.path.exists()
        conn = self._connect()
        try:
            conn.execute("PRAGMA journal_mode = WAL").fetchone()
            conn.execute("PRAGMA synchronous = FULL")
            # Debian builds SQLite with secure_delete on, which overwrites every freed
            # page: twice the writes on an SD card for log lines nobody needs erased.
            conn.execute("PRAGMA secure_delete = OFF")
            # Keep the WAL small against the budget: it is part of what the card holds.
            pages = max(64, min(1000, self.max_bytes // 4096 // 8))
            conn.execute(f"PRAGMA wal_autocheckpoint = {pages}")
            conn.execute(f"PRAGMA journal_size_limit = {pages * 4096}")
            conn.executescript(_SCHEMA)
            for stream, stream_id in _STREAM_ID.items():
                conn.execute("INSERT OR IGNORE INTO counters (stream) VALUES (?)", (stream_id,))
                row = conn.execute(
                    "SELECT last_seq, depth, bytes, dropped, delivered FROM counters "
                    "WHERE stream = ?",
                    (stream_id,),
                ).fetchone()
                self._last_seq[stream], self._depth[stream], self._bytes[stream] = row[:3]
                self._visible[stream] = self._last_seq[stream]
                self._dropped[stream], self._delivered[stream] = row[3:]
                self._delivered_bytes[stream] = conn.execute(
                    f"SELECT COALESCE(SUM(LENGTH(body)), 0) FROM {_TABLE[stream]} "  # noqa: S608
                    "WHERE seq <= ?",
                    (self._delivered[stream],),
                ).fetchone()[0]
            # A cheap proof the records B-tree is readable, not a full integrity scan
            # (that would take seconds on a full card at boot).
            for table in _TABLE.values():
                conn.execute(f"SELECT seq FROM {table} ORDER BY seq LIMIT 1").fetchall()  # noqa: S608
        except sqlite3.DatabaseError:
            conn.close()
            raise
        self.epoch = self._read_epoch(bump=fresh)
        return conn

    def _read_epoch(self, *, bump: bool) -> int:
        """The numbering epoch; a new database after an old one existed starts a new one."""
        path = self.folder / _EPOCH_NAME
        try:
            epoch = int(path.read_text().strip() or "0")
        except (FileNotFoundError, ValueError):
            epoch = 0
        previous = epoch
        if self.recovered_from is not None:
            epoch = max(epoch, 1) + 1  # the moved-aside file numbered in the old epoch
        elif bump or epoch == 0:
            epoch += 1
        if epoch != previous:
            write_atomic(path, f"{epoch}\n")
        return epoch

    def _move_aside(self, error: sqlite3.DatabaseError) -> None:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        target = self.path.with_name(f"{_DB_NAME}.corrupt-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            source = Path(f"{self.path}{suffix}")
            if source.exists():
                source.replace(Path(f"{target}{suffix}"))
        self.recovered_from = target
        _log.error(
            "outbox.corrupt",
            error=str(error),
            moved_to=str(target),
            note="a new outbox was started; the old file is kept for recovery",
        )

    def _open_reader(self) -> None:
        self._read_conn = self._connect()

    # -- appending --------------------------------------------------------------------

    async def append(self, stream: Stream, record: dict[str, Any], *, urgent: bool = False) -> int:
        """Store ``record`` in ``stream``; returns its ``seq`` once it is committed.

        ``record`` gets ``ts`` if it has none. ``urgent`` commits without waiting for the
        group-commit window (replies).
        """
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending.add(self._encode(stream, record, urgent=urgent, waiter=future))
        return await future

    def append_now(
        self,
        records: Sequence[tuple[Stream, dict[str, Any]]],
        *,
        on_stored: Callable[[int], None] | None = None,
        after_commit: Callable[[], None] | None = None,
    ) -> asyncio.Future[list[int]]:
        """Store ``records`` in one transaction, at once; the future gives their seqs
        once committed.

        For a command's events and reply: the commune waits for the reply, so no
        group-commit window. The records are queued before this returns (so calls keep
        their order); the writer thread commits (the event loop never waits for the
        disk), older waiting records first. Raises ValueError for a record too large and
        RuntimeError once closed. ``on_stored`` is called in the event loop with the last
        record's seq once committed, before any reader can see the records.
        ``after_commit`` is called in the writer thread once they are committed and the
        loop told, before the writer's next commit: for bookkeeping that must come before
        the records can be purged (a purge needs their delivery, acknowledged in a later
        commit) but must not delay their delivery. It must be quick and must not raise.
        """
        loop = asyncio.get_running_loop()
        last = len(records) - 1
        ops = [
            self._encode(stream, record, urgent=n == last, waiter=loop.create_future())
            for n, (stream, record) in enumerate(records)
        ]
        if ops:
            ops[-1].on_stored = on_stored
            ops[-1].after_commit = after_commit
        self._pending.add_many(ops)
        return asyncio.gather(*(op.waiter for op in ops if op.waiter is not None))

    def append_nowait(
        self,
        stream: Stream,
        record: dict[str, Any],
        *,
        urgent: bool = False,
        on_stored: Callable[[int], None] | None = None,
    ) -> None:
        """Queue ``record`` from any thread; committed within the window. For logs and
        events. ``on_stored`` is called in the event loop with the seq once committed."""
        op = self._encode(stream, record, urgent=urgent, waiter=None)
        op.on_stored = on_stored
        self._pending.add(op)

    def _encode(
        self,
        stream: Stream,
        record: dict[str, Any],
        *,
        urgent: bool,
        waiter: asyncio.Future[int] | None,
    ) -> Append:
        if self._closed:
            raise RuntimeError("the outbox is closed")
        if stream not in _STREAM_ID:
            raise ValueError(f"unknown stream {stream!r}; one of {', '.join(STREAMS)}")
        if "ts" not in record:
            record = {"ts": now_iso("milliseconds"), **record}
        fields = encode_record(record)
        if len(fields) > self.max_record_bytes:
            raise ValueError(
                f"record of {len(fields)} bytes is larger than the outbox takes "
                f"({self.max_record_bytes} bytes with outbox.max_mb = {self.max_bytes / 1e6:g})"
            )
        return Append(stream, fields, urgent, waiter)

    # -- the writer thread ------------------------------------------------------------

    def _write_loop(self, conn: sqlite3.Connection) -> None:
        try:
            while True:
                self._pending.wait_until_due()
                ops, acks = self._pending.take()
                if ops or acks:
                    assigned = self._commit(conn, ops, acks)
                    self._notify(assigned)
                    self._after_commit(assigned)
                if self._pending.stopping and self._pending.empty():
                    break
        finally:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            conn.close()

    def _after_commit(self, assigned: Assigned) -> None:
        """From the writer thread, after telling the loop: the appends' own follow-up."""
        for op, seq in assigned:
            if seq >= 0 and op.after_commit is not None:
                try:
                    op.after_commit()
                except Exception as exc:  # a bug there must not stop the writer
                    _log.error("outbox.after_commit_failed", error=f"{type(exc).__name__}: {exc}")

    def _notify(self, assigned: Assigned) -> None:
        """From the writer thread: one wake-up of the event loop for a whole commit."""
        if assigned and self._loop is not None:
            self._loop.call_soon_threadsafe(self._committed, assigned)

    def _commit(
        self, conn: sqlite3.Connection, ops: list[Append | Flush], acks: list[Ack]
    ) -> Assigned:
        """One transaction; never raises (a failure comes back as seq -1 for each append),
        because either committer must outlive any one batch."""
        try:
            return self._commit_ops(conn, ops, acks)
        except Exception as exc:
            return self._commit_failed(f"{type(exc).__name__}: {exc}", ops)
        finally:
            for op in ops:
                if isinstance(op, Flush):
                    op.done()

    def _commit_ops(
        self, conn: sqlite3.Connection, ops: list[Append | Flush], acks: list[Ack]
    ) -> Assigned:
        appends = [op for op in ops if isinstance(op, Append)]
        if not appends and not acks:
            return []
        last_seq, depth, size = dict(self._last_seq), dict(self._depth), dict(self._bytes)
        dropped: dict[Stream, int] = {}
        assigned: Assigned = []
        delivered, delivered_bytes = dict(self._delivered), dict(self._delivered_bytes)
        conn.execute("BEGIN IMMEDIATE")
        try:
            for ack in acks:
                self._advance(conn, ack, delivered, delivered_bytes, depth)
            self._purge(conn, delivered, delivered_bytes, last_seq, size, full=False)
            assigned = self._insert(conn, appends, last_seq, depth, size)
            if sum(size.values()) > self._budget:
                self._purge(conn, delivered, delivered_bytes, last_seq, size, full=True)
            if sum(size.values()) > self._budget:
                dropped = self._drop_oldest(conn, delivered, depth, size)
            conn.executemany(
                "UPDATE counters SET last_seq = ?, depth = ?, bytes = ?, dropped = ?, "
                "delivered = ? WHERE stream = ?",
                [
                    (
                        last_seq[name],
                        depth[name],
                        size[name],
                        self._dropped[name] + dropped.get(name, 0),
                        delivered[name],
                        stream_id,
                    )
                    for name, stream_id in _STREAM_ID.items()
                ],
            )
            conn.execute("COMMIT")
            with self._fresh_lock:
                self._fresh.append((self._inserted, set(dropped)))
        except sqlite3.Error as exc:
            # SQLite may have rolled back already (disk full, I/O error): a second
            # ROLLBACK would raise and take the writer thread down with it.
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            return self._commit_failed(str(exc), ops)
        if self._failing:
            self._failing = False
            _log.warning("outbox.commit_recovered")
        self._last_seq, self._depth, self._bytes = last_seq, depth, size
        self._delivered, self._delivered_bytes = delivered, delivered_bytes
        for stream, count in dropped.items():
            self._dropped[stream] += count
            self._unreported_drops[stream] = self._unreported_drops.get(stream, 0) + count
        self.appended += len(assigned)
        self.commits += 1
        self._report_drops()
        return assigned

    def _commit_failed(self, error: str, ops: list[Append | Flush]) -> Assigned:
        """Fail every waiting append of the batch and log, once per run of failures: the
        log line itself goes into the outbox and would fail again (a full disk would
        otherwise feed on its own errors)."""
        self._early_acks = {name: {} for name in STREAMS}  # resent after a reconnect
        self.failed_commits += 1
        if not self._failing:
            self._failing = True
            _log.error(
                "outbox.commit_failed",
                error=error,
                records=len(ops),
                note="appends fail until the next successful commit",
            )
        # Nobody may wait forever on a record that was not stored.
        return [(op, -1) for op in ops if isinstance(op, Append)]

    def _insert(
        self,
        conn: sqlite3.Connection,
        appends: list[Append],
        last_seq: dict[Stream, int],
        depth: dict[Stream, int],
        size: dict[Stream, int],
    ) -> Assigned:
        """Number and insert the appends; returns (waiter, seq) for each."""
        now = self._clock()
        rows: dict[Stream, list[tuple[int, float, str]]] = {name: [] for name in STREAMS}
        assigned = []
        for op in appends:
            seq = last_seq[op.stream] + 1
            last_seq[op.stream] = seq
            body = f'{{"seq":{seq},{op.fields[1:]}'  # fields always hold at least "ts"
            rows[op.stream].append((seq, now, body))
            depth[op.stream] += 1
            size[op.stream] += len(body)
            assigned.append((op, seq))
        for stream, stream_rows in rows.items():
            if stream_rows:
                conn.executemany(
                    f"INSERT INTO {_TABLE[stream]} (seq, created, body) VALUES (?, ?, ?)",  # noqa: S608
                    stream_rows,
                )
        self._inserted = rows
        return assigned

    def _advance(
        self,
        conn: sqlite3.Connection,
        ack: Ack,
        delivered: dict[Stream, int],
        delivered_bytes: dict[Stream, int],
        depth: dict[Stream, int],
    ) -> None:
        """Move the stream's delivered mark over every contiguous acknowledged batch."""
        early = self._early_acks[ack.stream]
        early[ack.first_seq] = max(ack.last_seq, early.get(ack.first_seq, 0))
        mark = delivered[ack.stream]
        new_mark = mark
        while True:
            reach = [last for first, last in early.items() if first <= new_mark + 1]
            if not reach:
                break
            for first in [f for f in early if f <= new_mark + 1]:
                del early[first]
            new_mark = max(new_mark, *reach)
        if new_mark == mark:
            return
        count, length = conn.execute(
            f"SELECT COUNT(*), COALESCE(SUM(LENGTH(body)), 0) FROM {_TABLE[ack.stream]} "  # noqa: S608
            "WHERE seq > ? AND seq <= ?",
            (mark, new_mark),
        ).fetchone()
        delivered[ack.stream] = new_mark
        delivered_bytes[ack.stream] += length
        depth[ack.stream] -= count

    def _purge(
        self,
        conn: sqlite3.Connection,
        delivered: dict[Stream, int],
        delivered_bytes: dict[Stream, int],
        last_seq: dict[Stream, int],
        size: dict[Stream, int],
        *,
        full: bool,
    ) -> None:
        """Delete delivered records, as cheaply for the SD card as the state allows.

        A stream delivered to its end is emptied with one unconditional DELETE, which
        SQLite does by freeing whole pages (no row-by-row B-tree rebalancing: a fifth of
        the writes, measured). A partly delivered stream is only cut when the budget is
        short (``full``): until then its delivered rows cost disk space the file has
        reserved anyway, and no writes.
        """
        for stream, table in _TABLE.items():
            if delivered_bytes[stream] == 0 and size[stream] == 0:
                continue
            if delivered[stream] >= last_seq[stream]:
                conn.execute(f"DELETE FROM {table}")  # noqa: S608
                size[stream] = 0
            elif full:
                conn.execute(f"DELETE FROM {table} WHERE seq <= ?", (delivered[stream],))  # noqa: S608
                size[stream] -= delivered_bytes[stream]
            else:
                continue
            delivered_bytes[stream] = 0

    def _drop_oldest(
        self,
        conn: sqlite3.Connection,
        delivered: dict[Stream, int],
        depth: dict[Stream, int],
        size: dict[Stream, int],
    ) -> dict[Stream, int]:
        """Delete the oldest records, logs first … replies last, until within budget."""
        dropped: dict[Stream, int] = {}
        for stream in DROP_ORDER:
            excess = sum(size.values()) - self._budget
            if excess <= 0:
                break
            table = _TABLE[stream]
            # Oldest first, as many as cover the excess (plus a little slack so a full
            # outbox does not drop one record per append).
            target = excess + self._budget // 50
            cursor = conn.execute(
                f"SELECT seq, LENGTH(body) FROM {table} WHERE seq > ? ORDER BY seq",  # noqa: S608
                (delivered[stream],),
            )
            freed, count, last = 0, 0, None
            for seq, length in cursor:
                freed += length
                count += 1
                last = seq
                if freed >= target:
                    break
            cursor.close()
            if last is None:
                continue
            conn.execute(f"DELETE FROM {table} WHERE seq <= ?", (last,))  # noqa: S608
            depth[stream] -= count
            size[stream] -= freed
            dropped[stream] = count
        return dropped

    def _report_drops(self) -> None:
        """One ``outbox.dropped`` event per interval, with counts by stream and reason."""
        if not self._unreported_drops:
            return
        now = time.monotonic()
        if now - self._last_drop_report < _DROP_REPORT_INTERVAL_S:
            return
        counts, self._unreported_drops = self._unreported_drops, {}
        self._last_drop_report = now
        _log.warning("outbox.dropped", counts=counts, reason="full", max_bytes=self.max_bytes)
        self._pending.add(
            Append(
                "events",
                encode_record(
                    {
                        "ts": now_iso("milliseconds"),
                        "type": "outbox.dropped",
                        "counts": counts,
                        "reason": "full",
                    }
                ),
                urgent=False,
                waiter=None,
            )
        )

    # -- reading for the uplink -------------------------------------------------------

    def _committed(self, assigned: Assigned) -> None:
        """In the event loop, after a commit: wake the readers if records were added,
        then resolve the appends' waiters (a seq below zero means the commit failed).

        The readers first: the uplink's publisher then runs before what the appenders do
        next, and a command's reply leaves before the command's own bookkeeping.
        """
        added = False
        for op, seq in assigned:
            if seq >= 0:
                added = True
                if op.on_stored is not None:
                    op.on_stored(seq)
        self._show_fresh()
        if added:
            self._bump_version()
        for op, seq in assigned:
            future = op.waiter
            if future is None or future.done():
                continue
            if seq < 0:
                future.set_exception(OSError("the outbox could not commit the record"))
            else:
                future.set_result(seq)

    def _show_fresh(self) -> None:
        """Make the records committed since the last call readable from the tails."""
        with self._fresh_lock:
            fresh, self._fresh = self._fresh, []
        for rows, dropped in fresh:
            for stream, stream_rows in rows.items():
                if stream in dropped:
                    self._tails[stream].clear()
                elif stream_rows:
                    self._tails[stream].extend(stream_rows)
                if stream_rows:
                    self._visible[stream] = max(self._visible[stream], stream_rows[-1][0])

    def _bump_version(self) -> None:
        self.version += 1
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def wait_for_records(self, seen_version: int, timeout_s: float) -> None:
        """Return once ``version`` differs from ``seen_version`` (or after ``timeout_s``).

        Read ``version`` before reading records: a commit in between is then not missed.
        Any number of readers may wait at once.
        """
        if self.version != seen_version:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.add(waiter)
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await waiter
        finally:
            self._waiters.discard(waiter)

    async def read(
        self, stream: Stream, *, after_seq: int, max_records: int, max_bytes: int
    ) -> Batch | None:
        """The next committed records of ``stream`` after ``after_seq``, in seq order.

        From the in-memory tail when it holds the next record (no thread hop), else
        from the file in the reader thread.
        """
        after_seq = max(after_seq, self._delivered[stream])
        max_records = min(max_records, self._visible[stream] - after_seq)
        if max_records <= 0:
            return None
        fresh = self._tails[stream].read(after_seq, max_records, max_bytes)
        if fresh:
            return Batch(stream, fresh[0][0], fresh[-1][0], tuple(body for _, body in fresh))
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._reader, self._read, stream, after_seq, max_records, max_bytes
        )

    def _read(
        self, stream: Stream, after_seq: int, max_records: int, max_bytes: int
    ) -> Batch | None:
        assert self._read_conn is not None  # noqa: S101 - opened in open()
        after_seq = max(after_seq, self._delivered[stream])
        cursor = self._read_conn.execute(
            f"SELECT seq, body FROM {_TABLE[stream]} WHERE seq > ? ORDER BY seq LIMIT ?",  # noqa: S608
            (after_seq, max_records),
        )
        seqs: list[int] = []
        bodies: list[str] = []
        total = 0
        for seq, body in cursor:
            if bodies and total + len(body) > max_bytes:
                break
            seqs.append(seq)
            bodies.append(body)
            total += len(body)
        cursor.close()
        if not bodies:
            return None
        return Batch(stream, seqs[0], seqs[-1], tuple(bodies))

    async def reply_ids(self) -> set[str]:
        """The ids of the replies still in the file, delivered or not: after a crash,
        the commands whose reply was stored need not run again."""

        def query() -> set[str]:
            assert self._read_conn is not None  # noqa: S101 - opened in open()
            rows = self._read_conn.execute(
                f"SELECT json_extract(body, '$.id') FROM {_TABLE['replies']}"  # noqa: S608
            ).fetchall()
            return {row[0] for row in rows if isinstance(row[0], str)}

        return await asyncio.get_running_loop().run_in_executor(self._reader, query)

    def acknowledge(self, batch: Batch) -> None:
        """The broker has the batch: mark it delivered in the next transaction. Call it
        from the event loop."""
        self._pending.add_ack(Ack(batch.stream, batch.first_seq, batch.last_seq))
        # The next commit takes it along, whoever makes it. Only if none comes within the
        # window is the writer woken for it: waking it at every PUBACK would cost a
        # thread switch just as the next command comes in.
        if self._ack_timer is None and self._loop is not None:
            self._ack_timer = self._loop.call_later(self._window, self._wake_for_acks)

    def _wake_for_acks(self) -> None:
        self._ack_timer = None
        self._pending.acks_due()

    async def flush(self) -> None:
        """Wait until everything queued so far (appends and acknowledgements) is committed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()

        def done() -> None:
            loop.call_soon_threadsafe(_resolve_flush, future)

        self._pending.add(Flush(done))
        await future

    def delivered(self, stream: Stream) -> int:
        """Every record of ``stream`` up to this seq has been acknowledged."""
        return self._delivered[stream]

    def last_seq(self, stream: Stream) -> int:
        """The seq of the newest committed record of ``stream`` (0 if it never had one).

        Lets a reader skip asking the reader thread when nothing new was committed.
        """
        return self._visible[stream]

    # -- statistics and closing -------------------------------------------------------

    def stats(self) -> OutboxStats:
        """Counters as of the last commit, and the files' size on disk."""
        disk = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                disk += Path(f"{self.path}{suffix}").stat().st_size
        return OutboxStats(
            depth=dict(self._depth),
            bytes={name: self._bytes[name] - self._delivered_bytes[name] for name in STREAMS},
            dropped=dict(self._dropped),
            last_seq=dict(self._last_seq),
            disk_bytes=disk,
            epoch=self.epoch,
            appended=self.appended,
            commits=self.commits,
            oldest_age_s=self._oldest_age,
        )

    async def refresh_oldest_age(self) -> float | None:
        """Measure the age in seconds of the oldest record waiting (any stream).

        A query, so it is not done on every ``stats()``: the ``system`` component calls
        this on its beat and ``stats()`` reports the last value.
        """
        loop = asyncio.get_running_loop()

        def query() -> float | None:
            assert self._read_conn is not None  # noqa: S101 - opened in open()
            ages = [
                row[0]
                for stream, table in _TABLE.items()
                if (
                    row := self._read_conn.execute(
                        f"SELECT created FROM {table} WHERE seq > ? ORDER BY seq LIMIT 1",  # noqa: S608
                        (self._delivered[stream],),
                    ).fetchone()
                )
                is not None
            ]
            return self._clock() - min(ages) if ages else None

        self._oldest_age = await loop.run_in_executor(self._reader, query)
        return self._oldest_age

    async def close(self) -> None:
        """Commit what is queued, checkpoint, and close both connections."""
        if self._closed:
            return
        self._closed = True
        if self._ack_timer is not None:
            self._ack_timer.cancel()
        self._pending.stop()  # the writer commits what is left, acknowledgements too
        if self._writer is not None:
            await asyncio.to_thread(self._writer.join)
        if self._read_conn is not None:
            conn = self._read_conn
            await asyncio.get_running_loop().run_in_executor(self._reader, conn.close)
        self._reader.shutdown(wait=True)


def _resolve_flush(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
