"""The store's schema: tables, migrations recorded in a table (a backup before migrating), the writer's connection."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import sqlite_utils

from linewatch.clock import now_ns

log = logging.getLogger("store")
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


def _migration_3(db: sqlite_utils.Database) -> None:
    """Stage times: acquire and transport from infer's timings, and each row's group commit, whose commit
    and publish times give the record and event stages (known only after the rows are written)."""
    inspections = db.table("inspections")
    for name, kind in (("acquire_ms", float), ("transport_ms", float), ("commit_id", int)):
        inspections.add_column(name, kind)
    db.table("commits").create({"id": int, "t_committed_ns": int, "t_published_ns": int, "rows": int},
                               pk="id", not_null={"t_committed_ns"})


def _migration_4(db: sqlite_utils.Database) -> None:
    """The `final` index holds only FAIL and REVIEW rows: most rows are PASS, and every index costs each
    insert (the writer's throughput); a query for FAIL or REVIEW rows adds `final != 'PASS'` to use it."""
    db.execute("DROP INDEX IF EXISTS idx_inspections_final")
    db.execute("CREATE INDEX idx_inspections_not_pass ON inspections(final) WHERE final != 'PASS'")


MIGRATIONS = [_migration_1, _migration_2, _migration_3, _migration_4]
#: The writer's own automatic checkpoint, a backstop: `Checkpointer` copies the WAL back from its thread.
WAL_BACKSTOP_PAGES = 10_000


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
    db.execute(f"PRAGMA wal_autocheckpoint={WAL_BACKSTOP_PAGES}")
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
