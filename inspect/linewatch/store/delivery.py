"""Delivery state: one small SQLite file (`notify.db` in the data dir) that only the notify process writes.

The store has one writer (record), so what the notifier must remember, each hook's cursor and counts and
the MQTT link's, lives in a file of its own; the api reads it read-only. A hook's cursor moves in the same
transaction that counts its delivery, so after a crash a hook repeats at most the one event it was
sending (the receiver drops it by its key).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from linewatch.clock import now_ns

STATE_DB = "notify.db"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS hooks (
  name TEXT PRIMARY KEY, event TEXT NOT NULL, cursor INTEGER NOT NULL, delivered INTEGER NOT NULL DEFAULT 0,
  skipped INTEGER NOT NULL DEFAULT 0, failures INTEGER NOT NULL DEFAULT 0, last_status INTEGER, last_error TEXT,
  last_key TEXT, t_last_attempt_ns INTEGER, t_last_delivered_ns INTEGER, failing_since_ns INTEGER,
  backlog INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS mqtt (
  id INTEGER PRIMARY KEY CHECK (id = 1), connected INTEGER NOT NULL, published INTEGER NOT NULL,
  dropped INTEGER NOT NULL, buffered INTEGER NOT NULL, t_connected_ns INTEGER, last_error TEXT,
  t_ns INTEGER NOT NULL, verdict_cursor INTEGER NOT NULL, alarm_cursor INTEGER NOT NULL);
"""


class DeliveryState:
    """One connection to the state file (one per thread of the notify process)."""

    def __init__(self, data_dir: Path):
        data_dir.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(data_dir / STATE_DB, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA busy_timeout=5000")
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")  # a moved cursor survives a power cut, not only a crash
        self.conn.executescript(_SCHEMA)

    def cursor(self, hook: str, event: str, start: int) -> int:
        """The hook's cursor; a hook seen for the first time (or whose event kind changed) starts at `start`."""
        row = self.conn.execute("SELECT event, cursor FROM hooks WHERE name = ?", (hook,)).fetchone()
        if row is not None and row[0] == event:
            return int(row[1])
        self.conn.execute("INSERT OR REPLACE INTO hooks (name, event, cursor) VALUES (?, ?, ?)", (hook, event, start))
        return start

    def delivered(self, hook: str, cursor: int, key: str, status: int, skipped: int) -> None:
        """The receiver took the event at `cursor` (after `skipped` filtered-out rows): move past it."""
        self.conn.execute(
            "UPDATE hooks SET cursor = ?, delivered = delivered + 1, skipped = skipped + ?, last_status = ?, "
            "last_key = ?, last_error = NULL, t_last_attempt_ns = ?, t_last_delivered_ns = ?, failing_since_ns = NULL "
            "WHERE name = ?", (cursor, skipped, status, key, now_ns(), now_ns(), hook))

    def passed(self, hook: str, cursor: int, skipped: int) -> None:
        """Rows up to `cursor` matched none of the hook's filters."""
        self.conn.execute("UPDATE hooks SET cursor = ?, skipped = skipped + ? WHERE name = ?", (cursor, skipped, hook))

    def failed(self, hook: str, status: int | None, error: str, since_ns: int) -> None:
        self.conn.execute("UPDATE hooks SET failures = failures + 1, last_status = ?, last_error = ?, "
                          "t_last_attempt_ns = ?, failing_since_ns = ? WHERE name = ?",
                          (status, error[:500], now_ns(), since_ns, hook))

    def backlog(self, hook: str, rows: int) -> None:
        self.conn.execute("UPDATE hooks SET backlog = ? WHERE name = ?", (rows, hook))

    def mqtt(self, connected: bool, published: int, dropped: int, buffered: int, t_connected_ns: int | None,
             last_error: str | None, cursors: dict[str, int]) -> None:
        """The MQTT link's figures, and per kind the store id of the newest event the broker acknowledged."""
        self.conn.execute("INSERT OR REPLACE INTO mqtt VALUES (1, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                          (int(connected), published, dropped, buffered, t_connected_ns, last_error, now_ns(),
                           cursors["verdict"], cursors["alarm"]))

    def mqtt_cursors(self) -> dict[str, int] | None:
        """What `mqtt` last saved as acknowledged; None before the first MQTT run."""
        row = self.conn.execute("SELECT verdict_cursor, alarm_cursor FROM mqtt").fetchone()
        return None if row is None else {"verdict": int(row[0]), "alarm": int(row[1])}

    def close(self) -> None:
        self.conn.close()


def read_state(data_dir: Path) -> tuple[dict[str, dict[str, Any]], dict[str, Any] | None]:
    """(hooks by name, the MQTT link) as last written; empty before the notify process first ran."""
    path = data_dir / STATE_DB
    if not path.exists():
        return {}, None
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        hooks = {r["name"]: dict(r) for r in conn.execute("SELECT * FROM hooks")}
        mqtt = conn.execute("SELECT * FROM mqtt").fetchone()
    except sqlite3.OperationalError:  # created but not yet given its tables
        return {}, None
    finally:
        conn.close()
    return hooks, (dict(mqtt) if mqtt else None)
