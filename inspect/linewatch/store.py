"""The SQLite store: schema, migrations, the single writer's inserts and read-only queries.

Columns keep the contracts' names (`camera`, `seq`, `final`, `decided_by`, ...) so a QA engineer's
SQL reads like the documentation. Only record writes; everyone else opens the file read-only.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import orjson
import sqlite_utils

from linewatch.messages import Alarm, OperatorAction, Verdict, now_ns

DB_NAME = "linewatch.db"
log = logging.getLogger("store")

INSPECTION_COLUMNS: dict[str, type] = {
    "id": int, "camera": str, "stream": str, "seq": int, "part_id": str, "recipe": str,
    "final": str, "decided_by": str, "reasons": str, "label": str, "score": float, "probs": str,
    "model_hash": str, "model_name": str, "ruleset_hash": str,
    "t_capture_ns": int, "t_sent_ns": int, "t_received_ns": int, "t_decided_ns": int, "t_recorded_ns": int,
    "queue_ms": float, "preprocess_ms": float, "inference_ms": float, "failsafe_ms": float,
    "latency_ms": float, "worker": str, "image": str, "truth_label": str, "truth": str,
}


def _migration_1(db: sqlite_utils.Database) -> None:
    inspections = db.table("inspections")
    inspections.create(INSPECTION_COLUMNS, pk="id", not_null={"camera", "stream", "seq", "final", "decided_by"})
    inspections.create_index(["camera", "stream", "seq"], unique=True)
    inspections.create_index(["t_capture_ns"])
    inspections.create_index(["final"])
    db.table("alarms").create(
        {"id": int, "t_ns": int, "source": str, "kind": str, "severity": str, "message": str,
         "acknowledged_by": str, "t_ack_ns": int},
        pk="id",
    )
    db.table("models").create({"sha256": str, "name": str, "path": str, "first_seen_ns": int}, pk="sha256")


def _migration_2(db: sqlite_utils.Database) -> None:
    """Lots and shifts on each row, image pruning, alarm clearing, audit log, reviews and the hook outbox."""
    inspections = db.table("inspections")
    for name, kind in (("lot", str), ("shift", str), ("image_pruned_ns", int)):
        inspections.add_column(name, kind)
    inspections.create_index(["lot"])
    db.execute("CREATE INDEX idx_inspections_kept_images ON inspections(id) "
               "WHERE image IS NOT NULL AND image_pruned_ns IS NULL")
    alarms = db.table("alarms")
    alarms.add_column("t_cleared_ns", int)
    alarms.add_column("cleared_by", str)
    db.table("operator_actions").create(
        {"id": int, "t_ns": int, "actor": str, "action": str, "detail": str, "request_id": str},
        pk="id", not_null={"t_ns", "actor", "action"},
    )
    db.table("operator_actions").create_index(["request_id"], unique=True)
    db.table("review_decisions").create(
        {"id": int, "t_ns": int, "inspection_id": int, "camera": str, "stream": str, "seq": int,
         "decision": str, "label": str, "reviewer": str, "note": str, "request_id": str},
        pk="id", not_null={"t_ns", "inspection_id", "decision", "reviewer"},
        foreign_keys=[("inspection_id", "inspections", "id")],
    )
    db.table("review_decisions").create_index(["inspection_id"])
    db.table("hook_outbox").create(
        {"id": int, "t_ns": int, "topic": str, "payload": str, "attempts": int, "t_sent_ns": int,
         "last_error": str},
        pk="id", not_null={"t_ns", "topic", "payload"}, defaults={"attempts": 0},
    )


MIGRATIONS = [_migration_1, _migration_2]


def open_writer(data_dir: Path, schema_version: int | None = None) -> sqlite_utils.Database:
    """The writer connection: WAL, normal sync (a commit survives a process crash), schema migrated.

    `schema_version` stops at an older schema (tests and tools that build an old database).
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(data_dir / DB_NAME, isolation_level=None, check_same_thread=False)
    db = sqlite_utils.Database(conn)
    db.enable_wal()
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA busy_timeout=5000")
    _migrate(db, schema_version)
    return db


def _migrate(db: sqlite_utils.Database, upto: int | None = None) -> None:
    """Apply the missing migrations in order, each in its own transaction, after a backup of older data."""
    if "schema_migrations" not in db.table_names():
        db.table("schema_migrations").create({"version": int, "applied_ns": int}, pk="version")
    done = {r["version"] for r in db.table("schema_migrations").rows}
    todo = [v for v in range(1, (upto or len(MIGRATIONS)) + 1) if v not in done]
    if done and todo:
        backup(db, Path(db.conn.execute("PRAGMA database_list").fetchone()[2]).with_name(
            f"{DB_NAME}.v{max(done)}-{now_ns()}.bak"))
    for version, migration in enumerate(MIGRATIONS[: upto or len(MIGRATIONS)], start=1):
        if version in done:
            continue
        with db.atomic():
            migration(db)
            db.table("schema_migrations").insert({"version": version, "applied_ns": now_ns()})


def backup(db: sqlite_utils.Database, path: Path) -> Path:
    """A consistent copy of the live database (SQLite's online backup), e.g. before migrating."""
    target = sqlite3.connect(path)
    try:
        db.conn.backup(target)
    finally:
        target.close()
    log.info("backed up the store to %s before migrating", path)
    return path


def open_reader(data_dir: Path) -> sqlite3.Connection:
    """A read-only connection that never blocks the writer."""
    conn = sqlite3.connect(f"file:{data_dir / DB_NAME}?mode=ro", uri=True, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


def read_rows(data_dir: Path, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
    """A read-only query for the api; no rows (not an error) before record has created the store."""
    try:
        conn = open_reader(data_dir)
    except sqlite3.OperationalError:
        return []  # no store yet: the line has not recorded anything
    try:
        return conn.execute(sql, params).fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return []
        raise
    finally:
        conn.close()


def verdict_row(v: Verdict, t_recorded_ns: int, lot: str | None = None, shift: str | None = None) -> dict[str, Any]:
    t = v.timings_ms
    return {"lot": lot, "shift": shift,
        "camera": v.camera, "stream": v.stream, "seq": v.seq, "part_id": v.part_id, "recipe": v.recipe,
        "final": v.final, "decided_by": v.decided_by, "reasons": _json_text(v.reasons),
        "label": v.label, "score": v.score, "probs": _json_text(v.probs) if v.probs is not None else None,
        "model_hash": v.model_hash, "model_name": v.model_name, "ruleset_hash": v.ruleset_hash,
        "t_capture_ns": v.t_capture_ns, "t_sent_ns": v.t_sent_ns, "t_received_ns": v.t_received_ns,
        "t_decided_ns": v.t_decided_ns, "t_recorded_ns": t_recorded_ns,
        "queue_ms": t.get("queue"), "preprocess_ms": t.get("preprocess"), "inference_ms": t.get("inference"),
        "failsafe_ms": t.get("failsafe"),
        "latency_ms": (t_recorded_ns - v.t_capture_ns) / 1e6 if v.t_capture_ns else None,
        "worker": v.worker, "image": v.image,
        "truth_label": (v.truth or {}).get("label"), "truth": _json_text(v.truth) if v.truth else None,
    }


def insert_verdicts(db: sqlite_utils.Database, rows: Iterable[dict[str, Any]]) -> int:
    """One transaction for the group; a duplicate (camera, stream, seq) keeps the first row."""
    rows = list(rows)
    if not rows:
        return 0
    columns = list(rows[0])  # verdict_row's keys; one prepared statement for the group (insert_all is 2x slower)
    sql = (f"INSERT OR IGNORE INTO inspections ({', '.join(columns)}) "
           f"VALUES ({', '.join('?' * len(columns))})")
    with db.atomic():
        before = db.conn.total_changes
        db.conn.executemany(sql, [tuple(r[c] for c in columns) for r in rows])
        after = db.conn.total_changes
    return int(after - before)


def insert_alarm(db: sqlite_utils.Database, alarm: Alarm) -> int:
    with db.atomic():
        table = db.table("alarms").insert({"t_ns": alarm.t_ns, "source": alarm.source, "kind": alarm.kind,
                                     "severity": alarm.severity, "message": alarm.message})
    return int(table.last_pk or 0)


def register_model(db: sqlite_utils.Database, sha256: str, name: str, path: str) -> None:
    with db.atomic():
        db.table("models").insert({"sha256": sha256, "name": name, "path": path, "first_seen_ns": now_ns()},
                            ignore=True)


class ActionError(ValueError):
    """An operator action that cannot be applied (unknown part, bad decision); the text says why."""


def apply_action(db: sqlite_utils.Database, action: OperatorAction) -> int:
    """Write an operator action and its audit row in one transaction; returns the audit row id.

    A repeated request_id is applied once (the api may resend).
    """
    d = action.detail
    with db.atomic():
        if db.execute("SELECT 1 FROM operator_actions WHERE request_id = ?", [action.request_id]).fetchone():
            return 0
        if action.action == "set_lot":
            if not isinstance(d.get("lot"), str) or not d["lot"].strip() or len(d["lot"]) > 64:
                raise ActionError(f"set_lot: lot must be a non-empty text of 1-64 characters, got {d.get('lot')!r}")
        elif action.action == "review":
            part = db.execute("SELECT camera, stream, seq FROM inspections WHERE id = ?",
                              [d.get("inspection_id")]).fetchone()
            if part is None:
                raise ActionError(f"review: no inspection with id {d.get('inspection_id')!r}")
            if d.get("decision") not in ("PASS", "FAIL"):
                raise ActionError(f"review: decision must be PASS or FAIL, got {d.get('decision')!r}")
            db.table("review_decisions").insert({
                "t_ns": action.t_ns, "inspection_id": d["inspection_id"], "camera": part[0], "stream": part[1],
                "seq": part[2], "decision": d["decision"], "label": d.get("label"), "reviewer": action.actor,
                "note": d.get("note"), "request_id": action.request_id})
        elif action.action == "ack_alarm":
            cur = db.execute("UPDATE alarms SET acknowledged_by = ?, t_ack_ns = ? "
                             "WHERE id = ? AND acknowledged_by IS NULL", [action.actor, action.t_ns, d.get("alarm_id")])
            if cur.rowcount != 1:
                raise ActionError(f"ack_alarm: no unacknowledged alarm with id {d.get('alarm_id')!r}")
        table = db.table("operator_actions").insert({
            "t_ns": action.t_ns, "actor": action.actor, "action": action.action,
            "detail": json.dumps(d), "request_id": action.request_id})
    return int(table.last_pk or 0)


def current_lot(conn: sqlite3.Connection | sqlite_utils.Database) -> str | None:
    """The lot set by the latest `set_lot` action, None before any."""
    row = conn.execute("SELECT detail FROM operator_actions WHERE action = 'set_lot' ORDER BY id DESC LIMIT 1"
                       ).fetchone()
    return str(json.loads(row[0])["lot"]) if row else None


def mark_pruned(db: sqlite_utils.Database, ids: list[int], t_ns: int) -> None:
    """The rows keep their image path; image_pruned_ns says when the file was removed."""
    with db.atomic():
        db.conn.executemany("UPDATE inspections SET image_pruned_ns = ? WHERE id = ?", [(t_ns, i) for i in ids])


def clear_alarms(db: sqlite_utils.Database, kind: str, by: str, t_ns: int) -> int:
    """Clear the still uncleared alarms of a kind (their condition is gone); returns how many."""
    with db.atomic():
        cur = db.execute("UPDATE alarms SET t_cleared_ns = ?, cleared_by = ? WHERE kind = ? AND t_cleared_ns IS NULL",
                         [t_ns, by, kind])
    return int(cur.rowcount)


_JSON_TEXT = ("reasons", "probs", "truth")


def row_event(row: dict[str, Any]) -> bytes:
    """The row as `row_to_api` shows it, encoded without re-parsing its JSON-text columns (record's hot path)."""
    return orjson.dumps({**row, **{k: orjson.Fragment(row[k]) if row.get(k) else None for k in _JSON_TEXT}})


def _json_text(value: Any) -> str:
    return orjson.dumps(value).decode()


def row_to_api(row: sqlite3.Row | dict[str, Any]) -> dict[str, Any]:
    """A stored row as the REST API and the live event stream show it."""
    d = dict(row)
    for key in ("reasons", "probs", "truth"):
        if d.get(key):
            d[key] = json.loads(d[key])
    return d
