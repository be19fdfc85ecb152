"""The in-memory tail the uplink reads fresh records from."""

from __future__ import annotations

from gateway.outbox.tail import TAIL_RECORDS, Tail


def filled(seqs: range) -> Tail:
    tail = Tail()
    tail.extend([(seq, 0.0, f"body-{seq}") for seq in seqs])
    return tail


def test_reads_the_records_right_after_the_cursor_in_order() -> None:
    tail = filled(range(1, 11))
    assert tail.read(after_seq=7, max_records=10, max_bytes=10_000) == [
        (8, "body-8"),
        (9, "body-9"),
        (10, "body-10"),
    ]
    assert tail.read(after_seq=3, max_records=2, max_bytes=10_000) == [(4, "body-4"), (5, "body-5")]
    assert tail.read(after_seq=10, max_records=1, max_bytes=10_000) == []


def test_a_byte_limit_still_gives_at_least_one_record() -> None:
    tail = filled(range(1, 4))
    assert tail.read(after_seq=0, max_records=10, max_bytes=1) == [(1, "body-1")]
    assert tail.read(after_seq=0, max_records=10, max_bytes=11) == [(1, "body-1")]
    assert tail.read(after_seq=0, max_records=10, max_bytes=12) == [(1, "body-1"), (2, "body-2")]


def test_none_when_the_next_record_fell_out_of_the_tail() -> None:
    """The reader must go to the file: the tail no longer holds what comes next."""
    tail = filled(range(1, TAIL_RECORDS + 50))
    assert tail.read(after_seq=10, max_records=1, max_bytes=10_000) is None
    assert tail.read(after_seq=60, max_records=1, max_bytes=10_000) == [(61, "body-61")]
    tail.clear()
    assert tail.read(after_seq=0, max_records=1, max_bytes=10_000) is None


def test_gaps_in_seq_are_skipped_not_waited_for() -> None:
    """Streams share one seq counter, so a stream's seqs have gaps."""
    tail = Tail()
    tail.extend([(seq, 0.0, str(seq)) for seq in (2, 5, 9)])
    assert tail.read(after_seq=1, max_records=5, max_bytes=100) == [(2, "2"), (5, "5"), (9, "9")]
    assert tail.read(after_seq=5, max_records=5, max_bytes=100) == [(9, "9")]
