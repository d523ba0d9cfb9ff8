"""Read-only access for every process but record: connections that never block the writer."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from linewatch.store import DB_NAME

if TYPE_CHECKING:
    import sqlite_utils  # record's connection type; readers do not load it


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


def current_lot(conn: sqlite3.Connection | sqlite_utils.Database) -> str | None:
    """The lot set by the latest `set_lot` action, None before any."""
    row = conn.execute("SELECT detail FROM operator_actions WHERE action = 'set_lot' ORDER BY id DESC LIMIT 1"
                       ).fetchone()
    return str(json.loads(row[0])["lot"]) if row else None


def current_recipe(data_dir: Path) -> str | None:
    """The recipe set by the latest `set_recipe` action (PLC, HMI or REST), None before any (or any store)."""
    rows = read_rows(data_dir, "SELECT detail FROM operator_actions WHERE action = 'set_recipe' "
                               "ORDER BY id DESC LIMIT 1")
    return str(json.loads(rows[0][0])["recipe"]) if rows else None


def offline_cameras(data_dir: Path) -> dict[str, str]:
    """Cameras whose inspection is switched off now, with the reason (`offline`, `paused`): the `set_offline`
    actions of the audit log, latest last."""
    offline: dict[str, str] = {}
    for row in read_rows(data_dir, "SELECT detail FROM operator_actions WHERE action = 'set_offline' ORDER BY id"):
        detail = json.loads(row[0])
        for camera in detail["cameras"]:
            if detail["reason"] is None:
                offline.pop(camera, None)
            else:
                offline[camera] = str(detail["reason"])
    return offline
