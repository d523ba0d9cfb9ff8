"""A real record process: deadline watch, duplicates, late and malformed messages, events."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from linewatch.record.deadlines import MAX_SEQ_GAP
from linewatch.reports.export import Query, load
from linewatch.store.rows import JSON_COLUMNS, verdict_row
from linewatch.store.schema import open_writer
from linewatch.store.writer import insert_verdicts
from linewatch.wire import (
    KIND_ALARM,
    KIND_ANNOUNCE,
    KIND_VERDICT,
    KIND_VERDICT_BATCH,
    KIND_VERDICTS,
    Alarm,
    FrameHeader,
    Verdict,
    decode_verdict_group,
    encode_verdict_batch,
    now_ns,
)
from tests import conftest
from tests.conftest import db_rows, wait_for


class RecordRig(conftest.RecordRig):
    """record with a 300 ms deadline, every event kind subscribed; parts of one camera and stream."""

    def __init__(self, tmp: Path):
        super().__init__(tmp, {"deadline_ms": 300})

    def header(self, seq: int) -> FrameHeader:
        return FrameHeader("cam0", "s1", seq, f"p{seq}", now_ns(), now_ns(), 4, 4, 1, "uint8", "Mono8")

    def verdict(self, seq: int, final: str = "PASS") -> Verdict:
        h = self.header(seq)
        return Verdict("cam0", "s1", seq, f"p{seq}", final, "model", t_capture_ns=h.t_capture_ns)  # type: ignore[arg-type]

    def rows(self) -> list[Any]:
        return db_rows(self.cfg.data_dir, "SELECT * FROM inspections ORDER BY seq")


@pytest.fixture
def rec(tmp_path: Path) -> Iterator[RecordRig]:
    r = RecordRig(tmp_path)
    yield r
    r.close()
    r.ctx.term()


def test_announced_frame_without_verdict_fails_by_timeout_and_late_verdict_is_ignored(rec: RecordRig) -> None:
    rec.push.send_multipart([KIND_ANNOUNCE, rec.header(0).to_bytes()])
    rows = wait_for(rec.rows, 5, "the timeout row")
    assert (rows[0]["seq"], rows[0]["final"], rows[0]["decided_by"]) == (0, "FAIL", "timeout")
    assert "no verdict within 300 ms" in json.loads(rows[0]["reasons"])[0]
    rec.push.send_multipart([KIND_VERDICT, rec.verdict(0).to_bytes()])
    rec.push.send_multipart([KIND_VERDICT, rec.verdict(1).to_bytes()])
    wait_for(lambda: len(rec.rows()) == 2, 5, "the second row")
    time.sleep(0.2)
    assert [(r["seq"], r["final"]) for r in rec.rows()] == [(0, "FAIL"), (1, "PASS")]


def test_malformed_messages_are_refused_and_record_keeps_going(rec: RecordRig) -> None:
    for parts in ([b"bogus", b"{}"], [KIND_VERDICT, b"{not json"], [KIND_VERDICT, b'{"camera": "cam0"}'],
                  [KIND_ANNOUNCE], [KIND_ALARM, b'{"source": "x"}']):
        rec.push.send_multipart(parts)
    rec.push.send_multipart([KIND_VERDICT, rec.verdict(5, "FAIL").to_bytes()])
    rows = wait_for(rec.rows, 5, "the good verdict")
    assert [(r["seq"], r["final"]) for r in rows] == [(5, "FAIL")]
    assert rec.proc.poll() is None


def test_a_verdict_batch_is_recorded_row_by_row_and_a_bad_item_fails_only_its_own_part(rec: RecordRig) -> None:
    good = [rec.verdict(seq, final) for seq, final in ((0, "PASS"), (1, "FAIL"), (3, "PASS"))]
    bad = rec.verdict(2).__dict__ | {"final": "MAYBE"}
    batch = orjson.loads(encode_verdict_batch(good))
    rec.push.send_multipart([KIND_ANNOUNCE, rec.header(2).to_bytes()])
    rec.push.send_multipart([KIND_VERDICT_BATCH, orjson.dumps([*batch[:2], bad, batch[2]])])
    rec.push.send_multipart([KIND_VERDICT_BATCH, b"[1, 2"])
    rec.push.send_multipart([KIND_VERDICT_BATCH, b'{"camera": "cam0"}'])
    huge = orjson.dumps(rec.verdict(4).__dict__ | {"t_sent_ns": 12345}).replace(b"12345", str(2**64).encode())
    rec.push.send_multipart([KIND_VERDICT, huge])
    rows = wait_for(lambda: len(rec.rows()) == 5 and rec.rows(), 5, "five rows")
    assert [(r["seq"], r["final"], r["decided_by"]) for r in rows] == [
        (0, "PASS", "model"), (1, "FAIL", "model"), (2, "FAIL", "not_inspected"), (3, "PASS", "model"),
        (4, "FAIL", "not_inspected")]
    why = "malformed verdict: verdict batch: item 2: verdict: Invalid enum value 'MAYBE' - at `$.final`"
    assert why in rows[2]["reasons"]
    assert rows[2]["t_capture_ns"] > 0  # the announced part keeps its capture time
    assert "<= 9223372036854775807 - at `$.t_sent_ns`" in rows[4]["reasons"]
    assert rec.proc.poll() is None


def test_a_sequence_jump_is_alarmed_not_watched_as_a_million_lost_frames(rec: RecordRig) -> None:
    rec.push.send_multipart([KIND_VERDICT, rec.verdict(5).to_bytes()])
    rec.push.send_multipart([KIND_VERDICT, rec.verdict(5 + 1_000_000).to_bytes()])
    rows = wait_for(lambda: len(rec.rows()) >= 7 and rec.rows(), 5, "the rows")
    time.sleep(0.5)
    assert len(rec.rows()) == 7  # seqs 0-4 (a gap at the start), 5 and the jump's frame; no million rows
    alarms = db_rows(rec.cfg.data_dir, "SELECT kind, message FROM alarms")
    assert [a["kind"] for a in alarms] == ["sequence_jump"] and "from 5 to 1000005" in alarms[0]["message"]
    assert rows[-1]["seq"] == 1_000_005 and rec.proc.poll() is None
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(rec.cfg.run_dir / "metrics"))  # type: ignore[no-untyped-call]
    counted = {s.labels["kind"]: s.value for m in registry.collect() for s in m.samples
               if s.name == "linewatch_alarms_total"}
    assert counted == {"sequence_jump": 1}  # record's own alarm, counted once


def test_rows_and_alarms_are_published_after_commit(rec: RecordRig) -> None:
    rec.push.send_multipart([KIND_ALARM, Alarm("test", "demo", "something happened").to_bytes()])
    rec.push.send_multipart([KIND_VERDICT, rec.verdict(9, "REVIEW").to_bytes()])
    seen: dict[bytes, Any] = {}
    while len(seen) < 2:
        assert rec.sub.poll(5000), f"only got {list(seen)}"
        kind, payload = rec.sub.recv_multipart()
        seen[kind] = decode_verdict_group(payload) if kind == KIND_VERDICTS else json.loads(payload)
    assert [(r["seq"], r["final"], r["reasons"]) for r in seen[KIND_VERDICTS]] == [(9, "REVIEW", [])]
    assert seen[b"alarm"]["kind"] == "demo"
    alarms = db_rows(rec.cfg.data_dir, "SELECT * FROM alarms")
    assert [a["message"] for a in alarms] == ["something happened"]


def test_stage_times_reach_the_row_its_commit_the_event_the_export_and_the_histograms(rec: RecordRig) -> None:
    t = now_ns()
    stages = {"acquire": 0.4, "transport": 0.3, "queue": 0.1, "preprocess": 0.2, "inference": 1.0, "failsafe": 0.05}
    v = Verdict("cam0", "s1", 3, "p3", "PASS", "model", t_capture_ns=t - 5_000_000, t_decided_ns=t - 2_000_000,
                timings_ms=stages, probs={"good": 0.9, "defect": 0.1})
    rec.push.send_multipart([KIND_VERDICT, v.to_bytes()])
    assert rec.sub.poll(5000)
    kind, payload = rec.sub.recv_multipart()
    events = decode_verdict_group(payload)
    assert kind == KIND_VERDICTS and [e["seq"] for e in events] == [3]
    event = events[0]
    commits = wait_for(lambda: db_rows(rec.cfg.data_dir, "SELECT * FROM commits"), 5, "the commit row")
    row, commit = rec.rows()[0], commits[0]
    assert row["commit_id"] == commit["id"] == event["commit_id"] and commit["rows"] == 1
    assert row["t_recorded_ns"] <= commit["t_committed_ns"] == event["t_committed_ns"] <= commit["t_published_ns"]
    assert event["record_ms"] == pytest.approx((commit["t_committed_ns"] - v.t_decided_ns) / 1e6)
    assert event["record_ms"] >= 2.0
    assert event["event_ms"] is None  # known only once the event is sent: the REST API and the export have it
    assert (row["acquire_ms"], row["transport_ms"], row["queue_ms"], row["failsafe_ms"]) == (0.4, 0.3, 0.1, 0.05)
    assert (event["acquire_ms"], event["inference_ms"]) == (0.4, 1.0)
    counted = decode_verdict_group(payload, json_columns=False)[0]  # plc's way: only counts, no JSON parsing
    assert event["probs"] == {"good": 0.9, "defect": 0.1} and json.loads(counted["probs"]) == event["probs"]
    assert {k: v for k, v in counted.items() if k not in JSON_COLUMNS} \
        == {k: v for k, v in event.items() if k not in JSON_COLUMNS}

    exported = load(rec.cfg.data_dir, Query(0, 2**62)).rows[0]
    assert exported["t_committed_ns"] == commit["t_committed_ns"] and exported["record_ms"] == event["record_ms"]
    assert exported["event_ms"] == (commit["t_published_ns"] - commit["t_committed_ns"]) / 1e6

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(rec.cfg.run_dir / "metrics"))  # type: ignore[no-untyped-call]
    counts = {s.labels["stage"]: s.value for m in registry.collect() for s in m.samples
              if s.name == "linewatch_stage_seconds_count"}
    assert counts == {"record": 1, "event": 1}


def test_deadline_watch_fails_only_the_frames_still_undecided(rec: RecordRig) -> None:
    for seq in range(6):
        rec.push.send_multipart([KIND_ANNOUNCE, rec.header(seq).to_bytes()])
    for seq in (1, 4):
        rec.push.send_multipart([KIND_VERDICT, rec.verdict(seq).to_bytes()])
    rows = wait_for(lambda: len(rec.rows()) == 6 and rec.rows(), 5, "six rows")
    assert [(r["seq"], r["decided_by"]) for r in rows] == [
        (0, "timeout"), (1, "model"), (2, "timeout"), (3, "timeout"), (4, "model"), (5, "timeout")]
    time.sleep(0.5)  # no second row for any frame once its deadline has passed
    assert len(rec.rows()) == 6


def test_holes_left_by_a_crash_are_recorded_when_record_starts_again(rec: RecordRig) -> None:
    """Parts in flight when the box went down leave holes below a stream's highest seq: each ends as a row."""
    rec.close()
    db = open_writer(rec.cfg.data_dir)
    stored = [("s2", seq) for seq in (0, 1, 3, 4, 7)] + [("jump", 0), ("jump", MAX_SEQ_GAP + 5)]
    insert_verdicts(db, [verdict_row(Verdict("cam0", stream, seq, f"p{seq}", "PASS", "model", t_capture_ns=now_ns()),
                                     now_ns()) for stream, seq in stored])
    db.close()
    rec.start()
    wait_for(lambda: len(rec.rows()) == len(stored) + 3, 5, "rows for the holes")
    time.sleep(0.5)
    holes = db_rows(rec.cfg.data_dir, "SELECT stream, seq, final, decided_by FROM inspections "
                                      "WHERE decided_by != 'model' ORDER BY stream, seq")
    assert [tuple(r) for r in holes] == [("s2", 2, "FAIL", "not_inspected"), ("s2", 5, "FAIL", "not_inspected"),
                                         ("s2", 6, "FAIL", "not_inspected")]  # the jump's numbers are no holes
