"""The store on real SQLite files: migrations, grouped inserts, one row per frame, readers."""

from __future__ import annotations

import random
import sqlite3
import threading
from pathlib import Path

import pytest
import sqlite_utils

from linewatch.plc.state import ALARM_FLAGS
from linewatch.reports.export import REVIEW_COLUMNS, Query, iter_rows
from linewatch.store.queries import current_lot, open_reader
from linewatch.store.rows import (
    JSON_COLUMNS,
    ROW_COLUMNS,
    VIEW_COLUMNS,
    committed_values,
    row_to_api,
    select_inspections,
    verdict_row,
    verdict_values,
)
from linewatch.store.schema import MIGRATIONS, WAL_BACKSTOP_PAGES, applied_version, open_writer
from linewatch.store.writer import (
    ActionError,
    Checkpointer,
    apply_action,
    clear_alarms,
    insert_alarm,
    insert_commit,
    insert_rows,
    insert_verdicts,
    mark_pruned,
    next_commit_id,
    register_model,
)
from linewatch.wire import (
    Alarm,
    MessageError,
    OperatorAction,
    Verdict,
    decode_verdict_group,
    encode_verdict_group,
)
from tests.conftest import wait_for


def _applied(db: sqlite_utils.Database | sqlite3.Connection) -> list[str]:
    """The names of linewatch's migrations recorded in a database (or a backup of one), in order."""
    return [r[0] for r in db.execute("SELECT name FROM _sqlite_migrations WHERE migration_set = ? ORDER BY id",
                                     [MIGRATIONS.name]).fetchall()]


def _rows(n: int, stream: str = "s") -> list[dict]:
    out = []
    for seq in range(n):
        v = Verdict("cam0", stream, seq, f"p{seq}", "PASS", "model", reasons=[], probs={"good": 1.0, "defect": 0.0},
                    t_capture_ns=1_000_000, timings_ms={"queue": 0.1, "inference": 1.0}, truth={"label": "good"})
        out.append(verdict_row(v, 3_000_000))
    return out


def test_rest_live_events_and_export_show_an_inspection_in_one_shape(tmp_path: Path) -> None:
    """record's tuples go to the file and, column-wise, into one `verdicts` event: the REST API, the live
    events and the export show each as `VIEW_COLUMNS`, with one meaning of the commit's stage times."""
    verdicts = [Verdict("cam0", "s", 1, "p1", "FAIL", "rule:blur", reasons=["blurred"], probs={"good": 0.25},
                        t_capture_ns=1_000_000, t_decided_ns=2_000_000, truth={"label": "crack"}),
                Verdict("cam1", "s", 2, "p2", "PASS", "model", timings_ms={"acquire": 0.5}, worker="infer[0]")]
    rows = [committed_values(verdict_values(v, "L1", "early"), 5_000_000, 7, 4.0) for v in verdicts]
    db = open_writer(tmp_path)
    assert insert_rows(db, rows) == 2
    insert_commit(db, (7, 6_000_000, 6_250_000, 2))
    conn = open_reader(tmp_path)
    rest = [row_to_api(r) for r in conn.execute(select_inspections() + " ORDER BY i.id")]
    live = [row_to_api(e) for e in decode_verdict_group(encode_verdict_group(ROW_COLUMNS, rows, JSON_COLUMNS, 7,
                                                                             6_000_000))]
    exported = sorted(iter_rows(conn, Query(0, 10**18)), key=lambda x: x["id"])  # the export goes by capture time
    for r, event, x in zip(rest, live, exported, strict=True):
        assert list(r) == list(event) == list(VIEW_COLUMNS)
        assert (r["t_committed_ns"], r["event_ms"]) == (6_000_000, 0.25)  # committed -> published
        assert r["record_ms"] == ((6_000_000 - r["t_decided_ns"]) / 1e6 if r["t_decided_ns"] else None)
        assert event == r | {"id": None, "event_ms": None}  # assigned by the store / known once it is sent
        assert row_to_api({k: x[k] for k in VIEW_COLUMNS}) == r
        assert list(x) == ["id", "captured_at", *VIEW_COLUMNS[1:], *REVIEW_COLUMNS]
    conn.close()
    assert live[0]["reasons"] == ["blurred"] and live[0]["truth_label"] == "crack" and live[1]["probs"] is None
    with pytest.raises(MessageError, match="a row has 2 values for 3 columns"):
        decode_verdict_group(encode_verdict_group(("a", "b", "c"), [(1, 2)], (), 1, 1))
    with pytest.raises(MessageError, match="verdicts event: KeyError"):
        decode_verdict_group(b'{"rows": []}')


def test_schema_wal_and_migrations_recorded(tmp_path: Path) -> None:
    db = open_writer(tmp_path)
    assert db.journal_mode == "wal"
    assert {"inspections", "alarms", "models", "_sqlite_migrations", "operator_actions", "review_decisions",
            "hook_outbox", "commits"} <= set(db.table_names())
    assert "schema_migrations" not in db.table_names()  # sqlite-utils records them, in `_sqlite_migrations`
    assert applied_version(db) == 7 == len(_applied(db))
    db.close()
    db = open_writer(tmp_path)  # reopening does not re-run migrations (nor back up)
    assert db["_sqlite_migrations"].count == 7
    assert not list(tmp_path.glob("*.bak"))


def test_grouped_insert_keeps_one_row_per_frame(tmp_path: Path) -> None:
    db = open_writer(tmp_path)
    assert insert_verdicts(db, _rows(2000)) == 2000
    assert insert_verdicts(db, _rows(10)) == 0  # same (camera, stream, seq): first row wins
    assert insert_verdicts(db, _rows(10, stream="t")) == 10
    # statements of 20 rows, then one per row: a group of 45 mixing new and already recorded frames
    mixed = _rows(2025)[1980:]  # seq 1980..2024: the first 20 recorded already
    assert len(mixed) == 45 and insert_verdicts(db, mixed) == 25
    reader = open_reader(tmp_path)
    assert reader.execute("SELECT count(*) FROM inspections").fetchone()[0] == 2035
    assert reader.execute("SELECT max(seq) FROM inspections WHERE stream = 's'").fetchone()[0] == 2024
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


def test_upgrading_a_v1_database_keeps_its_data_and_backs_it_up(tmp_path: Path) -> None:
    db = open_writer(tmp_path, schema_version=1)
    assert "lot" not in db["inspections"].columns_dict
    v1_rows = [{k: v for k, v in r.items()
                if k not in ("lot", "shift", "acquire_ms", "transport_ms", "commit_id", "detections", "signals")}
               for r in _rows(3000)]
    db["inspections"].insert_all(v1_rows)
    insert_alarm(db, Alarm("supervisor", "process_restart", "infer[0] died"))
    register_model(db, "ab" * 32, "reference", "/m.onnx")
    before = [tuple(r) for r in db.execute("SELECT * FROM inspections ORDER BY id").fetchall()]
    db.close()

    db = open_writer(tmp_path)  # migrates 1 -> 2 -> ... -> 7
    assert applied_version(db) == 7 == len(_applied(db))
    after = db.execute("SELECT * FROM inspections ORDER BY id").fetchall()
    n_v1 = len(before[0])
    assert [tuple(r[:n_v1]) for r in after] == before  # every old value where it was
    assert {"lot", "shift", "image_pruned_ns", "acquire_ms", "transport_ms", "commit_id", "detections"} <= set(
        db["inspections"].columns_dict)
    assert all(r[n_v1:] == (None,) * 8 for r in after)
    assert db["alarms"].count == 1 and db["models"].count == 1
    assert insert_verdicts(db, [verdict_row(Verdict("cam0", "s", 5000, "p", "FAIL", "model"), 1, "L1", "late")]) == 1
    backups = list(tmp_path.glob("linewatch.db.v1-*.bak"))
    assert len(backups) == 1
    old = sqlite3.connect(backups[0])
    assert old.execute("SELECT count(*) FROM inspections").fetchone()[0] == 3000
    assert len(_applied(old)) == 1
    assert old.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    old.close()


def test_upgrading_a_v2_database_adds_stage_times_keeps_its_data_and_backs_it_up(tmp_path: Path) -> None:
    db = open_writer(tmp_path, schema_version=2)
    assert "commits" not in db.table_names() and "commit_id" not in db["inspections"].columns_dict
    newer = ("acquire_ms", "transport_ms", "commit_id", "detections", "signals")
    v2_rows = [{k: v for k, v in r.items() if k not in newer} for r in _rows(2500)]
    db.table("inspections").insert_all(v2_rows)
    apply_action(db, OperatorAction("set_lot", "op", "req-1", {"lot": "L7"}))
    before = [tuple(r) for r in db.execute("SELECT * FROM inspections ORDER BY id").fetchall()]
    db.close()

    db = open_writer(tmp_path)  # migrates 2 -> 3 -> ... -> 7
    assert applied_version(db) == 7 == len(_applied(db))
    after = db.execute("SELECT * FROM inspections ORDER BY id").fetchall()
    n_v2 = len(before[0])
    assert [tuple(r[:n_v2]) for r in after] == before and all(r[n_v2:] == (None,) * 5 for r in after)
    assert current_lot(db) == "L7" and db["commits"].count == 0
    row = verdict_row(Verdict("cam0", "s", 9000, "p", "PASS", "model", t_decided_ns=5,
                              timings_ms={"acquire": 0.3, "transport": 0.2}), 10, "L7", "late")
    row["commit_id"] = next_commit_id(db)
    assert row["commit_id"] == 1 and insert_verdicts(db, [row]) == 1
    insert_commit(db, (row["commit_id"], 20, 25, 1))
    assert next_commit_id(db) == 2
    got = db.execute("SELECT i.acquire_ms, i.transport_ms, c.t_committed_ns, c.t_published_ns FROM inspections i "
                     "JOIN commits c ON c.id = i.commit_id WHERE seq = 9000").fetchone()
    assert tuple(got) == (0.3, 0.2, 20, 25)
    backups = list(tmp_path.glob("linewatch.db.v2-*.bak"))
    assert len(backups) == 1
    old = sqlite3.connect(backups[0])
    assert old.execute("SELECT count(*) FROM inspections").fetchone()[0] == 2500
    assert len(_applied(old)) == 2
    old.close()


def test_operator_actions_are_audited_and_applied_once(tmp_path: Path) -> None:
    db = open_writer(tmp_path)
    insert_verdicts(db, _rows(5))
    assert current_lot(db) is None
    assert apply_action(db, OperatorAction("set_lot", "anna", "r1", {"lot": "LOT-1"})) > 0
    assert apply_action(db, OperatorAction("set_lot", "anna", "r1", {"lot": "LOT-1"})) == 0  # resent: once
    apply_action(db, OperatorAction("set_lot", "ben", "r2", {"lot": "LOT-2"}))
    assert current_lot(db) == "LOT-2"
    apply_action(db, OperatorAction("review", "cleo", "r3", {"inspection_id": 2, "decision": "FAIL",
                                                             "label": "scratch", "note": "deep"}))
    review = next(iter(db["review_decisions"].rows))
    review = {k: review[k] for k in ("inspection_id", "camera", "seq", "decision", "label", "reviewer", "note")}
    assert review == {"inspection_id": 2, "camera": "cam0", "seq": 1, "decision": "FAIL", "label": "scratch",
                      "reviewer": "cleo", "note": "deep"}
    with pytest.raises(ActionError, match="no inspection with id 99"):
        apply_action(db, OperatorAction("review", "cleo", "r4", {"inspection_id": 99, "decision": "PASS"}))
    with pytest.raises(ActionError, match="decision must be PASS or FAIL"):
        apply_action(db, OperatorAction("review", "cleo", "r5", {"inspection_id": 1, "decision": "MAYBE"}))
    with pytest.raises(ActionError, match="lot must be"):
        apply_action(db, OperatorAction("set_lot", "cleo", "r6", {"lot": "  "}))
    alarm_id = insert_alarm(db, Alarm("record", "disk_low", "low"))
    apply_action(db, OperatorAction("ack_alarm", "dan", "r7", {"alarm_id": alarm_id}))
    assert db["alarms"].get(alarm_id)["acknowledged_by"] == "dan"
    with pytest.raises(ActionError, match="no unacknowledged alarm"):
        apply_action(db, OperatorAction("ack_alarm", "eve", "r8", {"alarm_id": alarm_id}))
    audit = [(r["actor"], r["action"]) for r in db["operator_actions"].rows]
    assert audit == [("anna", "set_lot"), ("ben", "set_lot"), ("cleo", "review"), ("dan", "ack_alarm")]


def test_pruned_images_and_cleared_alarms_are_marked(tmp_path: Path) -> None:
    db = open_writer(tmp_path)
    insert_verdicts(db, _rows(4))
    mark_pruned(db, [1, 3], 123)
    assert [r["image_pruned_ns"] for r in db["inspections"].rows] == [123, None, 123, None]
    insert_alarm(db, Alarm("record", "disk_low", "low"))
    insert_alarm(db, Alarm("record", "other", "x"))
    assert clear_alarms(db, "disk_low", "record", 456) == 1
    assert clear_alarms(db, "disk_low", "record", 789) == 0  # already cleared
    assert [(r["kind"], r["t_cleared_ns"]) for r in db["alarms"].rows] == [("disk_low", 456), ("other", None)]


def test_fail_and_review_rows_are_found_through_their_own_index_which_pass_rows_skip(tmp_path: Path) -> None:
    db = open_writer(tmp_path, schema_version=3)
    old = ("commit_id", "detections", "signals")
    db["inspections"].insert_all({k: v for k, v in r.items() if k not in old} | {"final": f}
                                 for r, f in zip(_rows(300), ["PASS", "PASS", "FAIL"] * 100, strict=True))
    db.close()
    db = open_writer(tmp_path)  # migrates 3 -> 4 -> 5 -> 6 -> 7
    indexes = {r[1]: r for r in db.execute("PRAGMA index_list(inspections)")}
    assert "idx_inspections_final" not in indexes and indexes["idx_inspections_not_pass"][4] == 1  # partial
    assert db.execute("SELECT count(*) FROM inspections INDEXED BY idx_inspections_not_pass "
                      "WHERE final = 'FAIL' AND final != 'PASS'").fetchone()[0] == 100
    plan = " ".join(r[3] for r in db.execute("EXPLAIN QUERY PLAN SELECT * FROM inspections "
                                            "WHERE final = ? AND final != 'PASS' ORDER BY id DESC LIMIT 5", ["FAIL"]))
    assert "idx_inspections_not_pass" in plan


def test_checkpointer_copies_the_wal_back_off_the_writer(tmp_path: Path) -> None:
    db = open_writer(tmp_path)
    assert db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == WAL_BACKSTOP_PAGES  # the writer does not
    insert_verdicts(db, _rows(3000))
    wal = tmp_path / "linewatch.db-wal"
    reader = open_reader(tmp_path)
    assert reader.execute("SELECT count(*) FROM inspections").fetchone()[0] == 3000
    before = (tmp_path / "linewatch.db").stat().st_size
    stop = threading.Event()
    checkpointer = Checkpointer(tmp_path, stop, every_s=0.05)
    checkpointer.start()
    wait_for(lambda: checkpointer.checkpoints >= 2, 5, "two checkpoints")
    stop.set()
    checkpointer.join(5)
    assert not checkpointer.is_alive()
    assert (tmp_path / "linewatch.db").stat().st_size > before + 500_000  # the rows reached the file itself
    assert wal.exists() and reader.execute("SELECT count(*) FROM inspections").fetchone()[0] == 3000
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_the_plcs_alarm_questions_read_an_index_and_count_as_a_full_scan_would(tmp_path: Path) -> None:
    """The plc asks them every refresh_ms: on a store with every alarm a line ever raised they must read an
    index (schema v7), not the table, and still give the counts a scan of every alarm gives."""
    db = open_writer(tmp_path)
    rng = random.Random(7)
    kinds = ("disk_low", "disk_full", "drift", "camera_lost", "fail_streak")
    severities = ("info", "warning", "critical")
    for i in range(500):
        db.execute("INSERT INTO alarms (kind, severity, source, message, t_ns, acknowledged_by, t_cleared_ns) "
                   "VALUES (?, ?, 'record', 'm', ?, ?, ?)",
                   (rng.choice(kinds), rng.choice(severities), i, rng.choice((None, "op")), rng.choice((None, i + 1))))
    db.conn.commit()
    plan = [row[-1] for row in db.execute(f"EXPLAIN QUERY PLAN {ALARM_FLAGS}").fetchall()]
    assert any("USING INDEX idx_alarms_unacknowledged" in p for p in plan), plan
    assert any("USING INDEX idx_alarms_kind" in p for p in plan), plan
    assert not any(p == "SCAN alarms" for p in plan), plan
    alarms = [dict(r) for r in db.query("SELECT * FROM alarms")]
    unack = [a for a in alarms if a["acknowledged_by"] is None]
    got = dict(zip(("unack", "critical", "drift", "disk"), db.execute(ALARM_FLAGS).fetchone(), strict=True))
    assert got == {"unack": len(unack), "critical": sum(a["severity"] == "critical" for a in unack),
                   "drift": sum(a["kind"] == "drift" for a in unack),
                   "disk": sum(a["kind"] in ("disk_low", "disk_full") and a["t_cleared_ns"] is None for a in alarms)}
    assert 0 < got["critical"] < got["unack"] < len(alarms) and got["drift"] > 0 and got["disk"] > 0
