"""The SQLite store: schema, migrations, the single writer's inserts and read-only queries.

Columns keep the contracts' names (`camera`, `seq`, `final`, `decided_by`, ...) so a QA engineer's
SQL reads like the documentation. Only record writes; everyone else opens the file read-only.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import sqlite_utils

from linewatch.messages import Alarm, Verdict, now_ns

DB_NAME = "linewatch.db"

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


MIGRATIONS = [_migration_1]


def open_writer(data_dir: Path) -> sqlite_utils.Database:
    """The writer connection: WAL, normal sync (a commit survives a process crash), schema migrated."""
    data_dir.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(data_dir / DB_NAME, isolation_level=None, check_same_thread=False)
    db = sqlite_utils.Database(conn)
    db.enable_wal()
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA busy_timeout=5000")
    _migrate(db)
    return db


def _migrate(db: sqlite_utils.Database) -> None:
    if "schema_migrations" not in db.table_names():
        db.table("schema_migrations").create({"version": int, "applied_ns": int}, pk="version")
    done = {r["version"] for r in db.table("schema_migrations").rows}
    for version, migration in enumerate(MIGRATIONS, start=1):
        if version in done:
            continue
        with db.atomic():
            migration(db)
            db.table("schema_migrations").insert({"version": version, "applied_ns": now_ns()})


def open_reader(data_dir: Path) -> sqlite3.Connection:
    """A read-only connection that never blocks the writer."""
    conn = sqlite3.connect(f"file:{data_dir / DB_NAME}?mode=ro", uri=True, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


def verdict_row(v: Verdict, t_recorded_ns: int) -> dict[str, Any]:
    t = v.timings_ms
    return {
        "camera": v.camera, "stream": v.stream, "seq": v.seq, "part_id": v.part_id, "recipe": v.recipe,
        "final": v.final, "decided_by": v.decided_by, "reasons": json.dumps(v.reasons),
        "label": v.label, "score": v.score, "probs": json.dumps(v.probs) if v.probs is not None else None,
        "model_hash": v.model_hash, "model_name": v.model_name, "ruleset_hash": v.ruleset_hash,
        "t_capture_ns": v.t_capture_ns, "t_sent_ns": v.t_sent_ns, "t_received_ns": v.t_received_ns,
        "t_decided_ns": v.t_decided_ns, "t_recorded_ns": t_recorded_ns,
        "queue_ms": t.get("queue"), "preprocess_ms": t.get("preprocess"), "inference_ms": t.get("inference"),
        "failsafe_ms": t.get("failsafe"),
        "latency_ms": (t_recorded_ns - v.t_capture_ns) / 1e6 if v.t_capture_ns else None,
        "worker": v.worker, "image": v.image,
        "truth_label": (v.truth or {}).get("label"), "truth": json.dumps(v.truth) if v.truth else None,
    }


def insert_verdicts(db: sqlite_utils.Database, rows: Iterable[dict[str, Any]]) -> int:
    """One transaction for the group; a duplicate (camera, stream, seq) keeps the first row."""
    rows = list(rows)
    with db.atomic():
        before = db.execute("SELECT total_changes()").fetchone()[0]
        db.table("inspections").insert_all(rows, ignore=True, batch_size=500)
        after = db.execute("SELECT total_changes()").fetchone()[0]
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


def row_to_api(row: sqlite3.Row | dict[str, Any]) -> dict[str, Any]:
    """A stored row as the REST API and the live event stream show it."""
    d = dict(row)
    for key in ("reasons", "probs", "truth"):
        if d.get(key):
            d[key] = json.loads(d[key])
    return d
