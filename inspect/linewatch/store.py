"""The SQLite store: schema, migrations, the single writer's inserts and read-only queries.

Columns keep the contracts' names (`camera`, `seq`, `final`, `decided_by`, ...) so a QA engineer's
SQL reads like the documentation. Only record writes; everyone else opens the file read-only.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from itertools import chain
from operator import itemgetter
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


class Checkpointer(threading.Thread):
    """Copies the WAL back into the database file from its own connection, so the writer's commits do
    not: SQLite checkpoints without holding Python's GIL, which puts that work on another core.

    PASSIVE never blocks the writer or readers; a checkpoint that cannot finish (a reader on an old
    snapshot) is retried, and the writer's own far-off automatic checkpoint bounds the WAL meanwhile.
    """

    def __init__(self, data_dir: Path, stop: threading.Event, every_s: float = 0.5):
        super().__init__(name="checkpoint", daemon=True)
        self.path, self.stop, self.every_s = data_dir / DB_NAME, stop, every_s
        self.checkpoints = 0
        self._failing: str | None = None  # the error being reported, so a full disk logs once, not twice a second

    def run(self) -> None:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            log.error("WAL checkpoint thread cannot open %s (the writer's backstop checkpoint remains): %s",
                      self.path, exc)
            return
        try:
            conn.execute("PRAGMA busy_timeout=1000")
            while not self.stop.wait(self.every_s):
                self.checkpoint(conn)
        finally:
            conn.close()

    def checkpoint(self, conn: sqlite3.Connection) -> None:
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            self.checkpoints += 1
        except sqlite3.Error as exc:  # the writer's backstop checkpoint still bounds the WAL
            if str(exc) != self._failing:
                log.warning("WAL checkpoint failed (retried every %.1f s): %s", self.every_s, exc)
            self._failing = str(exc)
            return
        if self._failing is not None:
            log.info("WAL checkpoints work again")
            self._failing = None


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


#: An inspection row as record builds it: the verdict's columns (`verdict_values`), then those set at commit.
VERDICT_COLUMNS = (
    "lot", "shift", "camera", "stream", "seq", "part_id", "recipe", "final", "decided_by", "reasons", "label",
    "score", "probs", "model_hash", "model_name", "ruleset_hash", "t_capture_ns", "t_sent_ns", "t_received_ns",
    "t_decided_ns", "queue_ms", "preprocess_ms", "inference_ms", "failsafe_ms", "worker", "image",
    "truth_label", "truth", "acquire_ms", "transport_ms",
)
ROW_COLUMNS = (*VERDICT_COLUMNS, "t_recorded_ns", "latency_ms", "commit_id")
JSON_COLUMNS = ("reasons", "probs", "truth")  # JSON text in the row
_CAPTURE = VERDICT_COLUMNS.index("t_capture_ns")
_INSERT_ROW = (f"INSERT OR IGNORE INTO inspections ({', '.join(ROW_COLUMNS)}) "
               f"VALUES ({', '.join('?' * len(ROW_COLUMNS))})")
_ROWS_PER_INSERT = 20  # rows per INSERT statement: one statement step for 20 rows costs far less than 20
_INSERT_ROWS = _INSERT_ROW + f", ({', '.join('?' * len(ROW_COLUMNS))})" * (_ROWS_PER_INSERT - 1)


def verdict_values(v: Verdict, lot: str | None = None, shift: str | None = None) -> tuple[Any, ...]:
    """The verdict's part of its row, in `VERDICT_COLUMNS` order (a tuple: record builds one per verdict)."""
    t = v.timings_ms
    get = t.get
    return (lot, shift, v.camera, v.stream, v.seq, v.part_id, v.recipe, v.final, v.decided_by,
            _json_text(v.reasons) if v.reasons else "[]", v.label, v.score,
            _json_text(v.probs) if v.probs is not None else None, v.model_hash, v.model_name, v.ruleset_hash,
            v.t_capture_ns, v.t_sent_ns, v.t_received_ns, v.t_decided_ns,
            get("queue"), get("preprocess"), get("inference"), get("failsafe"), v.worker, v.image,
            v.truth.get("label") if v.truth else None, _json_text(v.truth) if v.truth else None,
            get("acquire"), get("transport"))


def committed_values(values: tuple[Any, ...], t_recorded_ns: int, commit_id: int | None) -> tuple[Any, ...]:
    """`verdict_values` completed to a whole row (`ROW_COLUMNS`) by its commit."""
    capture = values[_CAPTURE]
    return (*values, t_recorded_ns, (t_recorded_ns - capture) / 1e6 if capture else None, commit_id)


def verdict_row(v: Verdict, t_recorded_ns: int, lot: str | None = None, shift: str | None = None) -> dict[str, Any]:
    """The row as a dict (tests, tools); record keeps tuples."""
    return dict(zip(ROW_COLUMNS, committed_values(verdict_values(v, lot, shift), t_recorded_ns, None), strict=True))


CommitRow = tuple[int, int, int, int]  # commits (id, t_committed_ns, t_published_ns, rows)


def insert_verdicts(db: sqlite_utils.Database, rows: Iterable[dict[str, Any]], commit: CommitRow | None = None) -> int:
    """`insert_rows` for rows as dicts with `ROW_COLUMNS` keys (`verdict_row`)."""
    return insert_rows(db, list(map(itemgetter(*ROW_COLUMNS), rows)), commit)


def insert_rows(db: sqlite_utils.Database, rows: Sequence[tuple[Any, ...]], commit: CommitRow | None = None) -> int:
    """One transaction for the group of `ROW_COLUMNS` tuples; a duplicate (camera, stream, seq) keeps the
    first row. `commit`: the previous group's commit row, written in the same transaction (no commit of its
    own). Prepared statements of `_ROWS_PER_INSERT` rows each, then one per row for the rest (sqlite-utils'
    insert_all is 2x slower; one statement per row costs the writer about a fifth of its throughput).
    """
    whole = len(rows) - len(rows) % _ROWS_PER_INSERT
    with db.atomic():
        before = db.conn.total_changes
        if whole:
            db.conn.executemany(_INSERT_ROWS, [tuple(chain.from_iterable(rows[i:i + _ROWS_PER_INSERT]))
                                               for i in range(0, whole, _ROWS_PER_INSERT)])
        if whole < len(rows):
            db.conn.executemany(_INSERT_ROW, rows[whole:])
        after = db.conn.total_changes
        if commit is not None:
            db.conn.execute(_INSERT_COMMIT, commit)
    return int(after - before)


_INSERT_COMMIT = "INSERT OR REPLACE INTO commits (id, t_committed_ns, t_published_ns, rows) VALUES (?, ?, ?, ?)"


def insert_commit(db: sqlite_utils.Database, commit: CommitRow) -> None:
    """When a group of rows was committed and its events published (a row's `commit_id` points here)."""
    with db.atomic():
        db.conn.execute(_INSERT_COMMIT, commit)


def next_commit_id(db: sqlite_utils.Database) -> int:
    """The id for the next group commit: past every id the latest rows or the commits already use (a crash
    may leave rows whose commit row was never written)."""
    row = db.execute("SELECT max(m) FROM (SELECT max(commit_id) AS m FROM (SELECT commit_id FROM inspections "
                     "ORDER BY id DESC LIMIT 1000) UNION ALL SELECT max(id) FROM commits)").fetchone()
    return int(row[0] or 0) + 1


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


def _json_text(value: Any) -> str:
    return orjson.dumps(value).decode()


def row_to_api(row: sqlite3.Row | dict[str, Any]) -> dict[str, Any]:
    """A stored row as the REST API and the live event stream show it."""
    d = dict(row)
    for key in JSON_COLUMNS:
        if d.get(key):
            d[key] = json.loads(d[key])
    return d
