"""The store's schema: tables, migrations through sqlite-utils (a backup before migrating), the writer's connection.

Each migration is recorded by `sqlite_utils.Migrations` in its `_sqlite_migrations` table under the set
`linewatch`; the schema version is the number applied. Databases from before recorded their versions in a
`schema_migrations` table of their own: opening one adopts those records (after the backup) and drops it.
"""

from __future__ import annotations

import datetime
import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path

import sqlite_utils
from sqlite_utils.migrations import Migrations

from linewatch.clock import now_ns
from linewatch.store import DB_NAME

log = logging.getLogger("store")


class SchemaError(RuntimeError):
    """The database records a schema this linewatch cannot open."""


INSPECTION_COLUMNS: dict[str, type] = {
    "id": int, "camera": str, "stream": str, "seq": int, "part_id": str, "recipe": str,
    "final": str, "decided_by": str, "reasons": str, "label": str, "score": float, "probs": str,
    "model_hash": str, "model_name": str, "ruleset_hash": str,
    "t_capture_ns": int, "t_sent_ns": int, "t_received_ns": int, "t_decided_ns": int, "t_recorded_ns": int,
    "queue_ms": float, "preprocess_ms": float, "inference_ms": float, "failsafe_ms": float,
    "latency_ms": float, "worker": str, "image": str, "truth_label": str, "truth": str,
}


#: the migration set; names are stored in every database: never rename or reorder one, only append
MIGRATIONS = Migrations("linewatch")
_NAMES: list[str] = []  # in order: schema version N has the first N applied
_LEGACY_TABLE = "schema_migrations"  # the hand-written runner's record: version, applied_ns
_Step = Callable[[sqlite_utils.Database], None]


def _migration(name: str) -> Callable[[_Step], _Step]:
    """Register the next schema version under `name`."""
    _NAMES.append(name)
    return MIGRATIONS(name=name)


@_migration("v1_inspections_alarms_models")
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


@_migration("v2_lots_shifts_audit_reviews_outbox")
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


@_migration("v3_stage_times_commits")
def _migration_3(db: sqlite_utils.Database) -> None:
    """Stage times: acquire and transport from infer's timings, and each row's group commit, whose commit
    and publish times give the record and event stages (known only after the rows are written)."""
    inspections = db.table("inspections")
    for name, kind in (("acquire_ms", float), ("transport_ms", float), ("commit_id", int)):
        inspections.add_column(name, kind)
    db.table("commits").create({"id": int, "t_committed_ns": int, "t_published_ns": int, "rows": int},
                               pk="id", not_null={"t_committed_ns"})


@_migration("v4_not_pass_index")
def _migration_4(db: sqlite_utils.Database) -> None:
    """The `final` index holds only FAIL and REVIEW rows: most rows are PASS, and every index costs each
    insert (the writer's throughput); a query for FAIL or REVIEW rows adds `final != 'PASS'` to use it."""
    db.execute("DROP INDEX IF EXISTS idx_inspections_final")
    db.execute("CREATE INDEX idx_inspections_not_pass ON inspections(final) WHERE final != 'PASS'")


@_migration("v5_detections")
def _migration_5(db: sqlite_utils.Database) -> None:
    """A detection model's boxes per part (JSON: label, score, box x, y, width, height in frame pixels)."""
    db.table("inspections").add_column("detections", str)


@_migration("v6_drift")
def _migration_6(db: sqlite_utils.Database) -> None:
    """The drift watch (docs/drift.md): each part's signals (JSON), each camera's stored references (JSON per
    camera, recipe and model), its drift alarms with what drifted, and the detectors' latest state."""
    db.table("inspections").add_column("signals", str)
    db.table("drift_references").create(
        {"camera": str, "recipe": str, "model_hash": str, "t_ns": int, "parts": int, "reference": str},
        pk=("camera", "recipe", "model_hash"), not_null={"t_ns", "reference"})
    db.table("drift_alarms").create(
        {"alarm_id": int, "t_ns": int, "camera": str, "recipe": str, "model_hash": str, "signal": str,
         "direction": str, "statistic": str, "reference": float, "current": float, "window_parts": int, "seq": int},
        pk="alarm_id", not_null={"t_ns", "camera", "signal"}, foreign_keys=[("alarm_id", "alarms", "id")])
    db.table("drift_alarms").create_index(["camera", "t_ns"])
    db.table("drift_state").create(
        {"camera": str, "signal": str, "t_ns": int, "recipe": str, "model_hash": str, "reference": float,
         "statistic_up": float, "statistic_down": float, "window_parts": int, "window_mean": float, "in_drift": int},
        pk=("camera", "signal"), not_null={"t_ns"})


@_migration("v7_alarm_indexes")
def _migration_7(db: sqlite_utils.Database) -> None:
    """Indexes for the alarm questions asked every few hundred ms (the plc's status flags, the api's and MQTT's
    active count): the unacknowledged alarms, and alarms by kind. Without them each question scanned every alarm
    a line ever raised: 38 ms of the plc's event loop five times a second at 100,000 alarms."""
    db.execute("CREATE INDEX idx_alarms_unacknowledged ON alarms(kind, severity) WHERE acknowledged_by IS NULL")
    db.execute("CREATE INDEX idx_alarms_kind ON alarms(kind, id)")


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
    try:
        _migrate(db, schema_version)
    except BaseException:
        db.close()
        raise
    return db


def applied_version(db: sqlite_utils.Database) -> int:
    """The database's schema version: how many of linewatch's migrations it has, recorded by either runner."""
    return len(MIGRATIONS.applied(db)) or len(_legacy_versions(db) or [])


def _migrate(db: sqlite_utils.Database, upto: int | None = None) -> None:
    """Apply the missing migrations in order, each in its own transaction, after a backup of older data."""
    legacy = _legacy_versions(db)
    version = applied_version(db)
    target = len(_NAMES) if upto is None else min(upto, len(_NAMES))
    if version and (legacy is not None or version < target):
        backup(db, Path(db.conn.execute("PRAGMA database_list").fetchone()[2]).with_name(
            f"{DB_NAME}.v{version}-{now_ns()}.bak"))
    if legacy is not None:
        _adopt_legacy(db, legacy)
    if version < target:
        MIGRATIONS.apply(db, stop_before=_NAMES[target] if target < len(_NAMES) else None)


def _legacy_versions(db: sqlite_utils.Database) -> list[tuple[int, int]] | None:
    """(version, applied_ns) rows of the hand-written runner's table, in order; None when there is no table."""
    if not db.table(_LEGACY_TABLE).exists():
        return None
    rows = [(int(v), int(ns)) for v, ns in db.execute(f"SELECT version, applied_ns FROM {_LEGACY_TABLE} "
                                                      "ORDER BY version").fetchall()]
    if [v for v, _ in rows] != list(range(1, len(rows) + 1)) or len(rows) > len(_NAMES):
        raise SchemaError(f"{_LEGACY_TABLE} records versions {[v for v, _ in rows]}; this linewatch knows 1 to "
                          f"{len(_NAMES)} (a database from a newer linewatch, or edited by hand)")
    return rows


def _adopt_legacy(db: sqlite_utils.Database, legacy: list[tuple[int, int]]) -> None:
    """Record the old runner's versions as sqlite-utils migrations (keeping when each was applied) and drop
    its table, in one transaction: from then on only the library's record counts."""
    with db.atomic():
        MIGRATIONS.ensure_migrations_table(db)
        recorded = {m.name for m in MIGRATIONS.applied(db)}
        db.table(MIGRATIONS.migrations_table).insert_all(
            {"migration_set": MIGRATIONS.name, "name": _NAMES[v - 1],
             "applied_at": str(datetime.datetime.fromtimestamp(ns / 1e9, datetime.UTC))}
            for v, ns in legacy if _NAMES[v - 1] not in recorded)
        db.table(_LEGACY_TABLE).drop()
    log.info("store schema v%d: migrations now recorded by sqlite-utils in %s (was %s)", len(legacy),
             MIGRATIONS.migrations_table, _LEGACY_TABLE)


def backup(db: sqlite_utils.Database, path: Path) -> Path:
    """A consistent copy of the live database (SQLite's online backup), e.g. before migrating."""
    target = sqlite3.connect(path)
    try:
        db.conn.backup(target)
    finally:
        target.close()
    log.info("backed up the store to %s before migrating", path)
    return path
