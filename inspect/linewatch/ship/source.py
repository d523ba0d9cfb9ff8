"""The line's side of shipping: batches read from its SQLite store on a read-only connection (record stays
the single writer), past a table's mark."""

from __future__ import annotations

import sqlite3
from typing import Any

from linewatch.clock import now_ns
from linewatch.ship.central import Mark, Shipped

#: Changed rows (an alarm acknowledged or cleared) within this much of the latest change shipped go again: an
#: acknowledgement carries the time the operator sent it, so two applied out of order would otherwise lose one.
CHANGE_MARGIN_NS = 60 * 10**9


class StoreMismatch(Exception):
    """The store holds fewer rows than PostgreSQL says this line shipped: a new store under an old line name."""


def next_batch(conn: sqlite3.Connection, table: Shipped, mark: Mark, limit: int) -> tuple[list[dict[str, Any]], Mark]:
    """Up to `limit` rows past the mark, in id order, plus every row changed since the mark's change time;
    returns them with the mark that covers them."""
    rows = [dict(r) for r in conn.execute(f"SELECT * FROM {table.source} WHERE id > ? ORDER BY id LIMIT ?",
                                          [mark.last_id, limit])]
    if not rows and mark.last_id:
        top = conn.execute(f"SELECT max(id) FROM {table.source}").fetchone()[0]
        if (top or 0) < mark.last_id:
            raise StoreMismatch(f"{table.source}: PostgreSQL has rows up to id {mark.last_id} of this line, its "
                                f"store ends at id {top or 0}; a new store needs a new line name (or the line's "
                                "rows and marks removed from PostgreSQL)")
    new = Mark(rows[-1]["id"] if rows else mark.last_id, mark.changed_ns)
    if table.changed:
        changed = _changed_expr(table)
        old = [dict(r) for r in conn.execute(
            f"SELECT *, {changed} AS _changed FROM {table.source} WHERE id <= ? AND {changed} > ? ORDER BY id",
            [mark.last_id, mark.changed_ns - CHANGE_MARGIN_NS])]
        new.changed_ns = max([mark.changed_ns, *(r.pop("_changed") for r in old)])
        fresh = [r for r in rows if any(r.get(c) for c in table.changed)]
        new.changed_ns = max([new.changed_ns, *(max(r[c] or 0 for c in table.changed) for r in fresh)])
        rows = old + rows
    return rows, new


def lag_s(conn: sqlite3.Connection, table: Shipped, mark: Mark) -> float:
    """Seconds since the oldest row not yet shipped was stored (0 when every row is shipped)."""
    row = conn.execute(f"SELECT {table.t_column} FROM {table.source} WHERE id > ? ORDER BY id LIMIT 1",
                       [mark.last_id]).fetchone()
    if row is None or row[0] is None:
        return 0.0
    return max(0.0, (now_ns() - int(row[0])) / 1e9)


def _changed_expr(table: Shipped) -> str:
    parts = [f"coalesce({c}, 0)" for c in table.changed]
    return parts[0] if len(parts) == 1 else f"max({', '.join(parts)})"
