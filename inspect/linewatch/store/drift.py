"""The drift watch's tables: stored references, drift alarms with what drifted, the detectors' latest state.

record writes them (the single writer); the api, the report and the PLC read them. References are JSON texts the
watch reads back (`watch.reference.Reference.from_json`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson
import sqlite_utils

from linewatch.store.queries import open_reader, read_rows


def stored_reference(db: sqlite_utils.Database, camera: str, recipe: str, model_hash: str) -> Any | None:
    """The reference stored for a camera, recipe and model, parsed from its JSON (None: none stored)."""
    row = db.execute("SELECT reference FROM drift_references WHERE camera = ? AND recipe = ? AND model_hash = ?",
                     (camera, recipe, model_hash)).fetchone()
    return orjson.loads(row[0]) if row else None


def save_reference(db: sqlite_utils.Database, camera: str, recipe: str, model_hash: str, parts: int,
                   reference: dict[str, Any], t_ns: int) -> None:
    with db.atomic():
        db.execute("INSERT OR REPLACE INTO drift_references (camera, recipe, model_hash, t_ns, parts, reference) "
                   "VALUES (?, ?, ?, ?, ?, ?)",
                   (camera, recipe, model_hash, t_ns, parts, orjson.dumps(reference).decode()))


def forget_references(db: sqlite_utils.Database, camera: str | None = None) -> int:
    """Drop stored references (a camera's, or all): the next parts are learnt as the reference again."""
    with db.atomic():
        cur = db.execute("DELETE FROM drift_references" + (" WHERE camera = ?" if camera else ""),
                         (camera,) if camera else ())
    return cur.rowcount


def insert_drift_alarm(db: sqlite_utils.Database, alarm_id: int, t_ns: int, row: dict[str, Any]) -> None:
    """What drifted, for the alarm `alarm_id` (its text is in `alarms`)."""
    with db.atomic():
        db.table("drift_alarms").insert({"alarm_id": alarm_id, "t_ns": t_ns, "statistic": "CUSUM", **row})


def unacknowledged_drift(db: sqlite_utils.Database | sqlite3.Connection) -> set[tuple[str, str]]:
    """(camera, signal) pairs with a drift alarm not yet acknowledged."""
    rows = db.execute("SELECT d.camera, d.signal FROM drift_alarms d JOIN alarms a ON a.id = d.alarm_id "
                      "WHERE a.acknowledged_by IS NULL").fetchall()
    return {(str(c), str(s)) for c, s in rows}


def write_state(db: sqlite_utils.Database, t_ns: int, rows: Iterable[dict[str, Any]]) -> None:
    """The detectors' latest state, one row per camera and signal (replaced each time)."""
    with db.atomic():
        db.table("drift_state").upsert_all(({"t_ns": t_ns, **r} for r in rows), pk=("camera", "signal"))


def realised_accuracy(db: sqlite_utils.Database, camera: str, window: int) -> tuple[float, int] | None:
    """Share of the camera's last `window` reviewed PASS/FAIL parts whose verdict the reviewer confirmed, and how
    many that is (None: none reviewed)."""
    row = db.execute("SELECT avg(r.decision = i.final), count(*) FROM (SELECT r.inspection_id, r.decision "
                     "FROM review_decisions r WHERE r.camera = ? ORDER BY r.id DESC LIMIT ?) r "
                     "JOIN inspections i ON i.id = r.inspection_id WHERE i.final IN ('PASS', 'FAIL')",
                     (camera, window)).fetchone()
    return (float(row[0]), int(row[1])) if row and row[1] else None


def drift_alarms(data_dir: Path, since_ns: int = 0, until_ns: int | None = None,
                 camera: str | None = None) -> list[dict[str, Any]]:
    """Drift alarms with their text and acknowledgement, oldest first (read-only)."""
    sql = ("SELECT d.*, a.message, a.acknowledged_by, a.t_ack_ns FROM drift_alarms d "
           "JOIN alarms a ON a.id = d.alarm_id WHERE d.t_ns >= ? AND d.t_ns <= ?"
           + (" AND d.camera = ?" if camera else "") + " ORDER BY d.t_ns")
    args: tuple[Any, ...] = (since_ns, until_ns if until_ns is not None else 2**63 - 1, *((camera,) if camera else ()))
    return [dict(r) for r in read_rows(data_dir, sql, args)]


def drift_state(data_dir: Path, camera: str | None = None) -> list[dict[str, Any]]:
    """The detectors' latest state per camera and signal (read-only)."""
    sql = "SELECT * FROM drift_state" + (" WHERE camera = ?" if camera else "") + " ORDER BY camera, signal"
    return [dict(r) for r in read_rows(data_dir, sql, (camera,) if camera else ())]


# Read-only views for the api's /api/drift and the drift report (`reports/drift.py`): they never block the writer.

_WATCHED = "model_hash IS NOT NULL AND (decided_by = 'model' OR decided_by LIKE 'rule:%')"  # as the watch observes


def stored_references(data_dir: Path, camera: str | None = None) -> list[dict[str, Any]]:
    """Every stored reference (a camera's, or all), newest first, its JSON parsed (None where unreadable)."""
    sql = ("SELECT camera, recipe, model_hash, t_ns, parts, reference FROM drift_references"
           + (" WHERE camera = ?" if camera else "") + " ORDER BY t_ns DESC")
    out = []
    for r in read_rows(data_dir, sql, (camera,) if camera else ()):
        try:
            reference = orjson.loads(r["reference"])
        except orjson.JSONDecodeError:
            reference = None
        out.append({**dict(r), "reference": reference})
    return out


def drift_cameras(data_dir: Path) -> list[str]:
    """Cameras the drift tables know (a reference, a detector state or a drift alarm)."""
    rows = read_rows(data_dir, "SELECT camera FROM drift_references UNION SELECT camera FROM drift_state "
                               "UNION SELECT camera FROM drift_alarms ORDER BY camera")
    return [str(r[0]) for r in rows]


def recent_parts(data_dir: Path, camera: str, limit: int, span: int) -> list[sqlite3.Row]:
    """The camera's latest parts among the store's latest `span` rows, newest first, at most `limit`: recipe,
    model hash and who decided. Bounded: a scan back from the newest row, never a sort of a camera's rows."""
    return read_rows(data_dir, "SELECT recipe, model_hash, decided_by FROM inspections WHERE +camera = ? AND "
                               "id > (SELECT max(id) FROM inspections) - ? ORDER BY id DESC LIMIT ?",
                     (camera, span, limit))


def read_realised_accuracy(data_dir: Path, camera: str, window: int | None = None, since_ns: int = 0,
                           until_ns: int = 2**63 - 1) -> tuple[float, int] | None:
    """`realised_accuracy` through a read-only connection: over the camera's last `window` reviews (None: all),
    of parts captured in [since_ns, until_ns); the share confirmed and how many (None: none reviewed)."""
    rows = read_rows(data_dir, "SELECT avg(r.decision = i.final), count(*) FROM (SELECT inspection_id, decision "
                               "FROM review_decisions WHERE camera = ? ORDER BY id DESC LIMIT ?) r "
                               "JOIN inspections i ON i.id = r.inspection_id WHERE i.final IN ('PASS', 'FAIL') "
                               "AND i.t_capture_ns >= ? AND i.t_capture_ns < ?",
                     (camera, -1 if window is None else window, since_ns, until_ns))
    return (float(rows[0][0]), int(rows[0][1])) if rows and rows[0][1] else None


def latest_capture_ns(data_dir: Path, camera: str | None = None) -> int | None:
    """Capture time of the newest part (a camera's, or any), None before the first."""
    rows = read_rows(data_dir, "SELECT max(t_capture_ns) FROM inspections" + (" WHERE +camera = ?" if camera else ""),
                     (camera,) if camera else ())
    return int(rows[0][0]) if rows and rows[0][0] is not None else None


def watched_parts(data_dir: Path, since_ns: int, until_ns: int, camera: str | None = None) -> Iterator[sqlite3.Row]:
    """The watched parts (decided by the model or a rule) captured in [since_ns, until_ns), in capture order,
    streamed: camera, t_capture_ns, recipe, model_hash, final, decided_by, score, signals (JSON text).
    Raises sqlite3.OperationalError when there is no store (or it predates the drift watch)."""
    sql = ("SELECT camera, t_capture_ns, recipe, model_hash, final, decided_by, score, signals FROM inspections "
           f"WHERE t_capture_ns >= ? AND t_capture_ns < ? AND {_WATCHED}" + (" AND +camera = ?" if camera else "")
           + " ORDER BY t_capture_ns, id")
    conn = open_reader(data_dir)
    try:
        yield from conn.execute(sql, (since_ns, until_ns, *((camera,) if camera else ())))
    finally:
        conn.close()
