"""The outbox in-process: durable, ordered, bounded, and honest about what it dropped."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from gateway.commands import _Journal
from gateway.outbox import PAGE_CACHE_KIB, Batch, Outbox, Stream


async def drain(outbox: Outbox, stream: Stream, *, ack: bool = True) -> list[dict[str, Any]]:
    """Read every committed record of ``stream`` in order (acknowledging each batch)."""
    records: list[dict[str, Any]] = []
    after = 0
    while (
        batch := await outbox.read(
            stream,
            after_seq=after,
            max_records=500,
            max_bytes=1 << 20,
        )
    ) is not None:
        records += [json.loads(body) for body in batch.bodies]
        after = batch.last_seq
        if ack:
            outbox.acknowledge(batch)
    return records


async def test_append_returns_growing_seqs_that_survive_a_restart(tmp_path: Path) -> None:
    """Each append returns its seq once committed; after a restart, and even after the
    outbox was emptied, numbering goes on where it stopped: a seq is never reused."""
    outbox = await Outbox.open(tmp_path, commit_window_s=0.01)
    seqs = [await outbox.append("events", {"type": "relay.switched", "n": n}) for n in range(3)]
    assert seqs == [1, 2, 3]
    assert [r["n"] for r in await drain(outbox, "events")] == [0, 1, 2]
    await outbox.close()

    reopened = await Outbox.open(tmp_path, commit_window_s=0.01)
    assert reopened.stats().depth["events"] == 0
    assert await reopened.append("events", {"type": "after"}) == 4
    assert await reopened.append("logs", {"event": "first log"}) == 1  # per stream
    await reopened.close()


async def test_records_carry_seq_and_ts_and_keep_their_fields(tmp_path: Path) -> None:
    """A stored record is the caller's fields plus seq and an RFC 3339 ts; Vietnamese
    text stays as it is; a value JSON cannot hold is stored as its repr."""
    outbox = await Outbox.open(tmp_path, commit_window_s=0.01)
    await outbox.append("events", {"label": "Đèn sân", "odd": object()})
    (record,) = await drain(outbox, "events")
    assert record["seq"] == 1
    assert record["label"] == "Đèn sân"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d", str(record["ts"]))
    assert str(record["odd"]).startswith("<object object")
    await outbox.close()


async def test_unknown_stream_is_refused(tmp_path: Path) -> None:
    """A typo in a stream name is an error at the call, not a record lost later."""
    outbox = await Outbox.open(tmp_path)
    with pytest.raises(ValueError, match="unknown stream 'event'"):
        await outbox.append("event", {})  # type: ignore[arg-type]
    await outbox.close()


async def test_group_commit_shares_transactions(tmp_path: Path) -> None:
    """A burst of appends shares a few commits (few fsyncs for the SD card) while each
    append still returns only after its commit."""
    outbox = await Outbox.open(tmp_path, commit_window_s=0.05)
    seqs = await asyncio.gather(*(outbox.append("telemetry", {"n": n}) for n in range(1000)))
    assert sorted(seqs) == list(range(1, 1001))
    assert outbox.stats().commits <= 20
    await outbox.close()


async def test_urgent_reply_does_not_wait_for_the_window(tmp_path: Path) -> None:
    """With a long commit window, a reply (urgent) is still committed at once."""
    outbox = await Outbox.open(tmp_path, commit_window_s=2.0)
    started = time.monotonic()
    await outbox.append("replies", {"id": "c-1", "status": "done"}, urgent=True)
    assert time.monotonic() - started < 1.0
    await outbox.close()


async def test_batches_are_bounded_ordered_and_resumable(tmp_path: Path) -> None:
    """A read returns consecutive seqs, bounded by count and bytes; reading after the
    last seq handed out continues without gaps or repeats; the payload is valid JSON."""
    outbox = await Outbox.open(tmp_path, commit_window_s=0.01)
    await asyncio.gather(*(outbox.append("logs", {"event": "x" * 100, "n": n}) for n in range(50)))
    first = await outbox.read("logs", after_seq=0, max_records=20, max_bytes=1 << 20)
    assert first is not None
    assert (first.first_seq, first.last_seq, len(first.bodies)) == (1, 20, 20)
    small = await outbox.read("logs", after_seq=20, max_records=100, max_bytes=500)
    assert small is not None
    assert small.first_seq == 21
    assert 1 <= len(small.bodies) <= 4
    payload = json.loads(first.payload("gw1", outbox.epoch))
    assert payload["gateway"] == "gw1"
    assert payload["stream"] == "logs"
    assert [r["seq"] for r in payload["records"]] == list(range(1, 21))
    await outbox.close()


async def test_sqlite_page_cache_is_bounded_on_every_long_lived_connection(
    tmp_path: Path,
) -> None:
    """SQLite's default cache (2,000 KiB a connection) fills during a long outage's drain
    and stays in the daemon's RSS; the outbox's writer and reader and the command
    journal each keep at most PAGE_CACHE_KIB (bench/bench_footprint.py measures it)."""
    outbox = await Outbox.open(tmp_path / "outbox")
    journal = _Journal(tmp_path / "journal.db")
    try:
        connections = [outbox._write_conn, outbox._read_conn, journal._conn]
        sizes = [
            conn.execute("PRAGMA cache_size").fetchone()[0]
            for conn in connections
            if conn is not None
        ]
        assert sizes == [-PAGE_CACHE_KIB] * 3
        assert PAGE_CACHE_KIB <= 512
    finally:
        journal.close()
        await outbox.close()


async def test_acknowledged_records_are_deleted(tmp_path: Path) -> None:
    """Only acknowledged batches leave the outbox; unacknowledged ones stay for resend."""
    outbox = await Outbox.open(tmp_path, commit_window_s=0.01)
    for n in range(10):
        await outbox.append("events", {"n": n})
    batch = await outbox.read("events", after_seq=0, max_records=4, max_bytes=1 << 20)
    assert isinstance(batch, Batch)
    outbox.acknowledge(batch)
    await outbox.append("events", {"n": 10})  # the delete rides on this commit
    assert outbox.stats().depth["events"] == 7
    left = await drain(outbox, "events", ack=False)
    assert [r["seq"] for r in left] == list(range(5, 12))
    await outbox.close()


async def test_full_outbox_drops_logs_then_telemetry_then_events(tmp_path: Path) -> None:
    """Past max_bytes, the oldest logs go first, then telemetry, then events; replies
    last. Every drop is counted and reported as an outbox.dropped event, and the files
    stay within max_bytes + 10 %, also after a restart."""
    max_bytes = 1_000_000
    outbox = await Outbox.open(tmp_path, max_bytes=max_bytes, commit_window_s=0.01)
    filler = "z" * 400
    for n in range(300):
        await outbox.append("replies", {"id": f"c-{n}", "pad": filler}, urgent=True)
    for n in range(600):
        await outbox.append("events", {"n": n, "pad": filler})
    await asyncio.gather(*(outbox.append("telemetry", {"n": n, "pad": filler}) for n in range(600)))
    await asyncio.gather(*(outbox.append("logs", {"n": n, "pad": filler}) for n in range(3000)))
    stats = outbox.stats()
    assert stats.dropped["logs"] > 0
    assert stats.dropped["replies"] == 0
    assert stats.dropped["events"] == 0
    logs = await drain(outbox, "logs", ack=False)
    assert logs[-1]["n"] == 2999, "the newest logs are kept, the oldest dropped"
    assert logs[0]["n"] > 0
    await outbox.append("events", {"n": "flush"})  # the drop report is queued behind
    reports = [
        e for e in await drain(outbox, "events", ack=False) if e.get("type") == "outbox.dropped"
    ]
    assert reports
    assert reports[0]["reason"] == "full"
    assert reports[0]["counts"]["logs"] > 0
    # More events than the budget holds: telemetry goes entirely before any event.
    await asyncio.gather(
        *(outbox.append("events", {"n": n, "pad": filler}) for n in range(600, 2600))
    )
    stats = outbox.stats()
    assert stats.depth["logs"] == 0
    assert stats.depth["telemetry"] == 0
    assert stats.dropped["events"] > 0
    assert stats.dropped["replies"] == 0
    assert stats.depth["replies"] == 300
    await outbox.close()
    disk = sum(p.stat().st_size for p in tmp_path.glob("outbox.db*"))
    assert disk <= max_bytes * 1.1

    reopened = await Outbox.open(tmp_path, max_bytes=max_bytes, commit_window_s=0.01)
    assert reopened.stats().dropped == stats.dropped
    await asyncio.gather(*(reopened.append("logs", {"n": n, "pad": filler}) for n in range(500)))
    await reopened.close()
    disk = sum(p.stat().st_size for p in tmp_path.glob("outbox.db*"))
    assert disk <= max_bytes * 1.1


async def test_garbage_file_is_moved_aside_not_deleted(tmp_path: Path) -> None:
    """A file that is not a database is renamed *.corrupt-<time>, kept byte for byte; a
    new outbox starts in a new epoch and says so with an event."""
    garbage = b"this is not sqlite\x00" * 100
    (tmp_path / "outbox.db").write_bytes(garbage)
    outbox = await Outbox.open(tmp_path, commit_window_s=0.01)
    (moved,) = tmp_path.glob("outbox.db.corrupt-*")
    assert moved.read_bytes() == garbage
    assert outbox.epoch >= 2
    assert await outbox.append("events", {"type": "after"}) == 2
    events = await drain(outbox, "events")
    assert events[0]["type"] == "outbox.corrupt"
    assert events[0]["moved_to"] == moved.name
    await outbox.close()


async def test_start_with_a_full_outbox_is_quick(tmp_path: Path) -> None:
    """Opening an outbox holding tens of megabytes reads counters, not records: it is
    ready in well under 5 s."""
    outbox = await Outbox.open(tmp_path, max_bytes=64 << 20, commit_window_s=0.05)
    pad = "p" * 900
    for chunk in range(20):
        await asyncio.gather(
            *(outbox.append("logs", {"n": chunk * 2000 + n, "pad": pad}) for n in range(2000))
        )
    await outbox.close()
    started = time.monotonic()
    reopened = await Outbox.open(tmp_path, max_bytes=64 << 20)
    took = time.monotonic() - started
    assert reopened.stats().depth["logs"] == 40_000
    assert took < 5
    await reopened.close()


async def test_oldest_age_counts_only_undelivered_records(tmp_path: Path) -> None:
    """The age of the oldest waiting record (shown in state/system and /metrics) follows
    the clock, and is None once everything was delivered."""
    now = [1000.0]
    outbox = await Outbox.open(tmp_path, commit_window_s=0.01, clock=lambda: now[0])
    await outbox.append("logs", {"n": 1})
    now[0] += 30
    await outbox.append("events", {"n": 2})
    now[0] += 12
    assert await outbox.refresh_oldest_age() == 42
    assert outbox.stats().oldest_age_s == 42
    await drain(outbox, "logs")
    await drain(outbox, "events")
    await outbox.flush()
    assert await outbox.refresh_oldest_age() is None
    await outbox.close()


async def test_append_now_commits_at_once_in_the_writer_thread(tmp_path: Path) -> None:
    """A command's events and reply are stored in one transaction, at once (not after the
    group-commit window), by the writer thread: the event loop never runs the fsync."""
    outbox = await Outbox.open(tmp_path, commit_window_s=5.0)
    loop_thread = threading.get_ident()
    committed_in: list[int] = []
    original = outbox._commit_ops

    def spy(*args: Any) -> Any:
        committed_in.append(threading.get_ident())
        return original(*args)

    outbox._commit_ops = spy  # type: ignore[method-assign,assignment]
    started = time.monotonic()
    seqs = await outbox.append_now(
        [("events", {"type": "command", "id": "c-1"}), ("replies", {"id": "c-1"})]
    )
    assert time.monotonic() - started < 1.0
    assert seqs == [1, 1]
    assert outbox.stats().commits == 1
    assert committed_in
    assert loop_thread not in committed_in
    assert [r["id"] for r in await drain(outbox, "replies")] == ["c-1"]
    assert [r["type"] for r in await drain(outbox, "events")] == ["command"]
    await outbox.close()


async def test_after_commit_runs_in_the_writer_once_the_records_are_readable(
    tmp_path: Path,
) -> None:
    """``after_commit`` (the command journal forgetting an answered command) runs in the
    writer thread, after the records are committed and the loop told, before the
    writer's next commit; one that raises is logged and the writer goes on."""
    outbox = await Outbox.open(tmp_path, commit_window_s=5.0)
    seen: list[tuple[int, int]] = []
    done = threading.Event()

    def follow_up() -> None:
        seen.append((threading.get_ident(), outbox.stats().commits))
        done.set()

    def broken() -> None:
        raise RuntimeError("a bug in the follow-up")

    with capture_logs() as captured:
        assert await outbox.append_now([("replies", {"id": "c-1"})], after_commit=broken) == [1]
        assert await outbox.append_now([("replies", {"id": "c-2"})], after_commit=follow_up) == [2]
        assert await asyncio.to_thread(done.wait, 5)
    ((thread, commits),) = seen
    assert thread != threading.get_ident()
    assert commits == 2, "called after its own commit, before any later one"
    assert [r["id"] for r in await drain(outbox, "replies")] == ["c-1", "c-2"]
    failures = [line for line in captured if line["event"] == "outbox.after_commit_failed"]
    assert failures
    assert "a bug in the follow-up" in failures[0]["error"]
    await outbox.close()


async def test_append_now_takes_waiting_records_along_in_order(tmp_path: Path) -> None:
    """Log lines waiting for the window came first: a command's commit takes them along,
    numbered before its own records, and does not wait for the window."""
    outbox = await Outbox.open(tmp_path, commit_window_s=5.0)
    for n in range(10):
        outbox.append_nowait("events", {"n": n})
    started = time.monotonic()
    assert await outbox.append_now([("events", {"n": 10})]) == [11]
    assert time.monotonic() - started < 1.0
    assert outbox.stats().commits == 1
    assert [r["n"] for r in await drain(outbox, "events")] == list(range(11))
    await outbox.close()


async def test_append_now_queues_behind_a_large_backlog(tmp_path: Path) -> None:
    """With much waiting (a log burst), the writer commits it in groups, and the
    command's records after it: still in order, still without waiting for the window."""
    outbox = await Outbox.open(tmp_path, commit_window_s=5.0)
    for n in range(2000):
        outbox.append_nowait("logs", {"event": "burst", "n": n, "pad": "x" * 100})
    outbox.append_nowait("events", {"n": 0})
    started = time.monotonic()
    assert await outbox.append_now([("events", {"n": 1})]) == [2]
    assert time.monotonic() - started < 5.0
    assert [r["n"] for r in await drain(outbox, "events")] == [0, 1]
    assert len(await drain(outbox, "logs")) == 2000
    await outbox.close()


async def test_fresh_records_are_read_from_memory(tmp_path: Path) -> None:
    """The uplink's next records come from the in-memory tail, without the reader
    thread; older ones (after a restart) from the file; both the same."""
    outbox = await Outbox.open(tmp_path, commit_window_s=0.01)
    await outbox.append_now([("replies", {"id": f"c-{n}"}) for n in range(3)])
    in_memory = await outbox.read("replies", after_seq=0, max_records=10, max_bytes=1 << 20)
    await outbox.close()
    reopened = await Outbox.open(tmp_path, commit_window_s=0.01)
    from_file = await reopened.read("replies", after_seq=0, max_records=10, max_bytes=1 << 20)
    assert in_memory is not None
    assert in_memory == from_file
    assert (in_memory.first_seq, in_memory.last_seq) == (1, 3)
    assert await reopened.reply_ids() == {"c-0", "c-1", "c-2"}
    await reopened.close()


async def test_acknowledgements_are_committed_without_other_appends(tmp_path: Path) -> None:
    """An acknowledgement rides on the next commit; with none coming, the writer commits
    it after the window, and at close at the latest: delivered records stay delivered."""
    outbox = await Outbox.open(tmp_path, commit_window_s=0.05)
    await outbox.append_now([("events", {"n": n}) for n in range(3)])
    batch = await outbox.read("events", after_seq=0, max_records=10, max_bytes=1 << 20)
    assert batch is not None
    outbox.acknowledge(batch)
    commits = outbox.stats().commits
    for _ in range(100):
        if outbox.stats().commits > commits:
            break
        await asyncio.sleep(0.02)
    assert outbox.stats().depth["events"] == 0

    await outbox.append_now([("events", {"n": 3})])
    last = await outbox.read("events", after_seq=3, max_records=10, max_bytes=1 << 20)
    assert last is not None
    outbox.acknowledge(last)
    await outbox.close()  # at once: the acknowledgement must not be lost
    reopened = await Outbox.open(tmp_path)
    assert reopened.delivered("events") == 4
    assert reopened.stats().depth["events"] == 0
    await reopened.close()
