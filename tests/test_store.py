"""The store on real SQLite files: migrations, grouped inserts, one row per frame, readers."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from linewatch.messages import Alarm, Verdict
from linewatch.store import (
    insert_alarm,
    insert_verdicts,
    open_reader,
    open_writer,
    register_model,
    row_to_api,
    verdict_row,
)


def _rows(n: int, stream: str = "s") -> list[dict]:
    out = []
    for seq in range(n):
        v = Verdict("cam0", stream, seq, f"p{seq}", "PASS", "model", reasons=[], probs={"good": 1.0, "defect": 0.0},
                    t_capture_ns=1_000_000, timings_ms={"queue": 0.1, "inference": 1.0}, truth={"label": "good"})
        out.append(verdict_row(v, 3_000_000))
    return out


def test_schema_wal_and_migrations_recorded(tmp_path: Path) -> None:
    db = open_writer(tmp_path)
    assert db.journal_mode == "wal"
    assert {"inspections", "alarms", "models", "schema_migrations"} <= set(db.table_names())
    assert [r["version"] for r in db["schema_migrations"].rows] == [1]
    db.close()
    db = open_writer(tmp_path)  # reopening does not re-run migrations
    assert db["schema_migrations"].count == 1


def test_grouped_insert_keeps_one_row_per_frame(tmp_path: Path) -> None:
    db = open_writer(tmp_path)
    assert insert_verdicts(db, _rows(2000)) == 2000
    assert insert_verdicts(db, _rows(10)) == 0  # same (camera, stream, seq): first row wins
    assert insert_verdicts(db, _rows(10, stream="t")) == 10
    reader = open_reader(tmp_path)
    assert reader.execute("SELECT count(*) FROM inspections").fetchone()[0] == 2010
    row = row_to_api(reader.execute("SELECT * FROM inspections WHERE seq = 7").fetchone())
    assert row["probs"] == {"good": 1.0, "defect": 0.0} and row["reasons"] == []
    assert row["latency_ms"] == 2.0 and row["queue_ms"] == 0.1 and row["truth_label"] == "good"


def test_reader_is_read_only_and_sees_commits(tmp_path: Path) -> None:
    db = open_writer(tmp_path)
    reader = open_reader(tmp_path)
    insert_alarm(db, Alarm("supervisor", "process_restart", "infer[0] died"))
    register_model(db, "ab" * 32, "reference", "/m.onnx")
    register_model(db, "ab" * 32, "reference", "/m.onnx")
    assert reader.execute("SELECT kind FROM alarms").fetchone()[0] == "process_restart"
    assert reader.execute("SELECT count(*) FROM models").fetchone()[0] == 1
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        reader.execute("DELETE FROM alarms")
