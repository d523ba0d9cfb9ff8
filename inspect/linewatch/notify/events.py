"""The events plant systems get, read from the store: its inspections and alarms tables are the outbox.

Record is the only writer and gives rows ascending ids in commit order, so "every row after id N" is a
complete, ordered, restartable stream: a receiver's cursor is the last id it was given. An event carries
the one inspection shape (`row_to_api`) or the alarm row as `GET /api/alarms` shows it, and a key that
names it for good (`key`), which a receiver uses to drop a repeat.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any, Literal

from linewatch.store.rows import row_to_api, select_inspections

EventKind = Literal["verdict", "alarm"]
_TABLES: dict[EventKind, str] = {"verdict": "inspections", "alarm": "alarms"}


@dataclass(frozen=True)
class Event:
    """One recorded verdict or alarm: `store_id` orders it, `key` identifies it across restarts and retries."""

    kind: EventKind
    store_id: int
    key: str
    data: dict[str, Any]

    def body(self, line: str, hook: str | None = None) -> dict[str, Any]:
        """The JSON document a receiver gets: its key, kind, line, and the inspection or the alarm."""
        head = {"id": self.key, "type": self.kind, "line": line, **({"hook": hook} if hook else {})}
        return {**head, ("inspection" if self.kind == "verdict" else "alarm"): self.data}


def event_key(line: str, kind: EventKind, data: dict[str, Any]) -> str:
    """Stable across restarts and store rebuilds: a part by camera, stream and sequence; an alarm by id and time."""
    if kind == "verdict":
        return f"{line}:verdict:{data['camera']}:{data['stream']}:{data['seq']}"
    return f"{line}:alarm:{data['id']}:{data['t_ns']}"


def read_events(conn: sqlite3.Connection, line: str, kind: EventKind, after: int, limit: int) -> list[Event]:
    """Up to `limit` events of `kind` after store id `after`, in store order."""
    if kind == "verdict":
        rows = conn.execute(select_inspections() + " WHERE i.id > ? ORDER BY i.id LIMIT ?", (after, limit))
        datas = [row_to_api(r) for r in rows.fetchall()]
    else:
        rows = conn.execute("SELECT * FROM alarms WHERE id > ? ORDER BY id LIMIT ?", (after, limit))
        datas = [dict(r) for r in rows.fetchall()]
    return [Event(kind, int(d["id"]), event_key(line, kind, d), d) for d in datas]


def last_id(conn: sqlite3.Connection, kind: EventKind) -> int:
    """The newest store id of `kind` (0 when there is none yet)."""
    row = conn.execute(f"SELECT max(id) FROM {_TABLES[kind]}").fetchone()
    return int(row[0] or 0)


def count_after(conn: sqlite3.Connection, kind: EventKind, after: int) -> int:
    """Rows of `kind` after `after`: what a cursor still has to look at (before its filters)."""
    return int(conn.execute(f"SELECT count(*) FROM {_TABLES[kind]} WHERE id > ?", (after,)).fetchone()[0])


def newest_after(conn: sqlite3.Connection, kind: EventKind, after: int, keep: int) -> int:
    """A cursor at or past `after` that leaves at most `keep` rows of `kind` after it (the newest ones)."""
    row = conn.execute(f"SELECT id FROM {_TABLES[kind]} WHERE id > ? ORDER BY id DESC LIMIT 1 OFFSET ?",
                       (after, keep)).fetchone()
    return after if row is None else int(row[0])
