"""The group committer on a real SQLite file: groups, their commit rows, monotonic latency."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from linewatch.clock import mono_ns
from linewatch.config.line import RecordConfig
from linewatch.record.committer import GroupCommitter
from linewatch.store.queries import open_reader
from linewatch.store.rows import ROW_COLUMNS, verdict_values
from linewatch.store.schema import open_writer
from linewatch.wire import Verdict


def rig(tmp_path: Path, **rc: Any) -> tuple[GroupCommitter, list[tuple[int, list[tuple[Any, ...]], int]]]:
    published: list[tuple[int, list[tuple[Any, ...]], int]] = []
    committer = GroupCommitter(open_writer(tmp_path), RecordConfig(**rc), "model.onnx", 1,
                               lambda cid, rows, t: published.append((cid, rows, t)), lambda exc: False)
    return committer, published


def values(seq: int, t_capture_ns: int = 0) -> tuple[Any, ...]:
    return verdict_values(Verdict("cam0", "s1", seq, f"p{seq}", "PASS", "model", t_capture_ns=t_capture_ns))


def stored(tmp_path: Path, sql: str) -> list[sqlite3.Row]:
    conn = open_reader(tmp_path)
    try:
        return list(conn.execute(sql))
    finally:
        conn.close()


def test_a_group_is_what_has_arrived_and_its_commit_row_rides_with_the_next(tmp_path: Path) -> None:
    c, published = rig(tmp_path, commit_ms=10_000, commit_rows=3)
    c.add(values(0), None)
    c.add(values(1), None)
    c.tick(drained=False)  # more may be coming, and neither commit_rows nor commit_ms is reached
    assert published == [] and stored(tmp_path, "SELECT seq FROM inspections") == []
    c.tick(drained=True)  # nothing waits: a group does not wait for company
    assert [(cid, [r[ROW_COLUMNS.index("seq")] for r in rows]) for cid, rows, _ in published] == [(1, [0, 1])]
    assert stored(tmp_path, "SELECT * FROM commits") == []  # no second commit for the group
    for seq in range(2, 6):
        c.add(values(seq), None)
    c.tick(drained=False)  # commit_rows reached: one group of 3, one row left gathered
    assert [cid for cid, _, _ in published] == [1, 2] and len(c.gathered) == 1
    commits = stored(tmp_path, "SELECT * FROM commits")
    assert [(r["id"], r["rows"]) for r in commits] == [(1, 2)]  # written in group 2's transaction
    assert commits[0]["t_committed_ns"] == published[0][2] <= commits[0]["t_published_ns"]
    rows = stored(tmp_path, "SELECT seq, commit_id FROM inspections ORDER BY seq")
    assert [tuple(r) for r in rows] == [(0, 1), (1, 1), (2, 2), (3, 2), (4, 2)]


def test_the_last_commit_row_goes_alone_after_commit_ms(tmp_path: Path) -> None:
    c, _ = rig(tmp_path, commit_ms=20)
    c.add(values(0), None)
    c.tick(drained=True)
    assert stored(tmp_path, "SELECT * FROM commits") == []
    time.sleep(0.03)
    c.tick(drained=True)
    assert [r["id"] for r in stored(tmp_path, "SELECT * FROM commits")] == [1]


def test_latency_and_recorded_time_follow_the_monotonic_clock_not_the_wall(tmp_path: Path) -> None:
    c, _ = rig(tmp_path)
    captured_wall = 10**18  # a wall clock an hour (or a year) away from now changes nothing
    c.add(values(0, captured_wall), mono_ns() - 5_000_000)  # captured 5 ms ago on the monotonic clock
    c.add(values(1, 0), None)  # never announced: no capture time, no latency
    c.commit()
    r0, r1 = stored(tmp_path, "SELECT t_recorded_ns, latency_ms FROM inspections ORDER BY seq")
    assert 5.0 <= r0["latency_ms"] < 1000.0
    assert abs(r0["t_recorded_ns"] - captured_wall - r0["latency_ms"] * 1e6) < 2  # the same monotonic span
    assert r1["latency_ms"] is None and r1["t_recorded_ns"] > 0


def test_past_held_rows_a_row_is_lost_and_counted_not_gathered(tmp_path: Path) -> None:
    c, _ = rig(tmp_path, held_rows=1000)
    for seq in range(1001):
        c.add(values(seq), None)
    assert len(c.gathered) == 1000 and c.rows_lost == 1
