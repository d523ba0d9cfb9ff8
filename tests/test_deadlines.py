"""The deadline watch on its own: the caller's monotonic time decides what is due, nothing else."""

from __future__ import annotations

from linewatch.record.deadlines import MAX_SEQ_GAP, DeadlineWatch
from linewatch.wire import FrameHeader

MS = 1_000_000


def header(seq: int, mono: int | None, stream: str = "s1") -> FrameHeader:
    # a wall-clock capture time far from the monotonic one: only the monotonic time may count
    return FrameHeader("cam0", stream, seq, f"p{seq}", 10**18, 10**18, 4, 4, 1, "uint8", "Mono8",
                       t_capture_mono_ns=mono)


def test_an_announced_part_is_due_its_deadline_after_capture_on_the_monotonic_clock() -> None:
    w = DeadlineWatch(300)
    w.announced(header(0, mono=1000 * MS), now=1010 * MS)
    assert w.due(1299 * MS) == [] and (("cam0", "s1", 0)) in w
    (due,) = w.due(1300 * MS)
    assert (due.key, due.decided_by, due.header) == (("cam0", "s1", 0), "timeout", header(0, 1000 * MS))
    assert "no verdict within 300 ms of capture" in due.reason
    assert w.due(10**12) == [] and not w.has_row(due.key)  # due once; its row is the caller's to write
    assert w.settle(due.key) and len(w) == 0 and w.has_row(due.key)


def test_a_header_without_a_monotonic_capture_time_is_due_from_receipt() -> None:
    w = DeadlineWatch(300)
    w.announced(header(0, mono=None), now=5000 * MS)
    assert w.due(5299 * MS) == [] and len(w.due(5300 * MS)) == 1


def test_a_settled_part_is_never_due_and_a_late_verdict_is_known_as_late() -> None:
    w = DeadlineWatch(300)
    w.announced(header(0, mono=0), now=0)
    assert w.settle(("cam0", "s1", 0)) and w.has_row(("cam0", "s1", 0))
    assert w.due(10**12) == []
    assert not w.settle(("cam0", "s1", 0))  # a second row for the part is refused
    w.announced(header(0, mono=0), now=0)  # re-announced after its row: not watched again
    assert len(w) == 0


def test_skipped_seqs_are_watched_as_lost_parts_and_a_huge_jump_is_reported_instead() -> None:
    w = DeadlineWatch(300)
    assert w.seen(("cam0", "s1", 0), 0) is None and w.settle(("cam0", "s1", 0))
    assert w.seen(("cam0", "s1", 3), 100 * MS) is None
    assert sorted(w.header(k) is None for k in (("cam0", "s1", 1), ("cam0", "s1", 2))) == [True, True]
    assert len(w) == 2 and w.due(399 * MS) == []
    lost = w.due(400 * MS)
    assert [(d.key[2], d.decided_by, d.header) for d in lost] == [(1, "not_inspected", None),
                                                                  (2, "not_inspected", None)]
    assert "sequence gap" in lost[0].reason
    assert all(w.settle(d.key) for d in lost) and len(w) == 0
    jump = w.seen(("cam0", "s1", 3 + MAX_SEQ_GAP + 1), 0)
    assert jump is not None and "seq jumped from 3" in jump and len(w) == 0
    assert w.seen(("cam0", "other", 5), 0) is None and len(w) == 5  # a new stream: 0-4 were never seen


def test_the_watch_continues_from_the_stored_last_seq_and_abandons_what_is_left() -> None:
    w = DeadlineWatch(300, {("cam0", "s1"): 9})
    w.seen(("cam0", "s1", 11), 0)  # 10 was lost while record was down
    w.announced(header(11, mono=0), now=0)
    left = w.abandon("line stopped before a verdict arrived")
    assert sorted(d.key[2] for d in left) == [10, 11] and all(w.settle(d.key) for d in left) and len(w) == 0
    assert {d.reason for d in left} == {"line stopped before a verdict arrived"}


def test_parts_known_lost_are_watched_like_a_gap_unless_recorded_or_pending() -> None:
    w = DeadlineWatch(300)
    w.announced(header(5, mono=0), now=0)
    w.settle(("cam0", "s1", 4))
    w.lost([("cam0", "s1", 3), ("cam0", "s1", 4), ("cam0", "s1", 5)], now=100 * MS)
    assert len(w) == 2 and w.header(("cam0", "s1", 5)) is not None  # 4 has its row, 5 keeps its own deadline
    assert [(d.key[2], d.decided_by) for d in w.due(400 * MS)] == [(5, "timeout"), (3, "not_inspected")]


def test_memory_follows_the_parts_in_flight_not_the_parts_seen() -> None:
    """A day of parts leaves one watermark per stream, not a key per part; late verdicts stay late."""
    w = DeadlineWatch(300)
    for seq in range(100_000):
        w.seen(("cam0", "s1", seq), 0)
        assert w.settle(("cam0", "s1", seq))
    assert w._above == {} and w._watermark == {("cam0", "s1"): 99_999}
    assert not w.settle(("cam0", "s1", 5))  # a verdict a hundred thousand parts late is still no second row
    w.seen(("cam0", "s1", 100_002), 0)  # 100,000 and 100,001 in flight
    assert w.settle(("cam0", "s1", 100_002)) and w._above == {("cam0", "s1"): {100_002}}
    assert w.settle(("cam0", "s1", 100_001)) and w.settle(("cam0", "s1", 100_000)) and w._above == {}


def test_holes_below_the_stored_watermark_are_watched_when_record_starts() -> None:
    w = DeadlineWatch(300, {("cam0", "s1"): 9})
    assert w.has_row(("cam0", "s1", 4))  # stored before the restart, as far as the watch knows
    w.lost([("cam0", "s1", 4)], now=0)
    assert not w.has_row(("cam0", "s1", 4)) and [d.key for d in w.due(300 * MS)] == [("cam0", "s1", 4)]
    assert w.settle(("cam0", "s1", 4)) and not w.settle(("cam0", "s1", 4))
