"""The single writer's statements: rows in groups, commits, alarms, models, operators' actions, pruning.

Only record calls these (one connection); the WAL checkpoints run on their own thread (`Checkpointer`).
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

import sqlite_utils

from linewatch.clock import now_ns
from linewatch.store import DB_NAME
from linewatch.store.rows import ROW_COLUMNS
from linewatch.wire import Alarm, LotError, OperatorAction, check_lot

log = logging.getLogger("store")
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


_INSERT_ROW = (f"INSERT OR IGNORE INTO inspections ({', '.join(ROW_COLUMNS)}) "
               f"VALUES ({', '.join('?' * len(ROW_COLUMNS))})")
_ROWS_PER_INSERT = 20  # rows per INSERT statement: one statement step for 20 rows costs far less than 20
_INSERT_ROWS = _INSERT_ROW + f", ({', '.join('?' * len(ROW_COLUMNS))})" * (_ROWS_PER_INSERT - 1)


CommitRow = tuple[int, int, int, int]  # commits (id, t_committed_ns, t_published_ns, rows)


def insert_verdicts(db: sqlite_utils.Database, rows: Iterable[dict[str, Any]], commit: CommitRow | None = None) -> int:
    """`insert_rows` for rows as dicts with `ROW_COLUMNS` keys (`verdict_row`)."""
    return insert_rows(db, list(map(itemgetter(*ROW_COLUMNS), rows)), commit)


def insert_rows(db: sqlite_utils.Database, rows: Sequence[tuple[Any, ...]], commit: CommitRow | None = None) -> int:
    """One transaction for the group of `ROW_COLUMNS` tuples; a duplicate (camera, stream, seq) keeps the
    first row. `commit`: the previous group's commit row, written in the same transaction (no commit of its
    own). Prepared statements of `_ROWS_PER_INSERT` rows each, then one per row for the rest (sqlite-utils'
    insert_all and one statement per row are both slower: benchmarks/RESULTS.md, Store).
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
            try:
                check_lot(d.get("lot"))
            except LotError as exc:
                raise ActionError(f"set_lot: {exc}") from None
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
        elif action.action == "drift_relearn":
            db.execute("DELETE FROM drift_references WHERE camera = ?", [d.get("camera")])
        table = db.table("operator_actions").insert({
            "t_ns": action.t_ns, "actor": action.actor, "action": action.action,
            "detail": json.dumps(d), "request_id": action.request_id})
    return int(table.last_pk or 0)


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
