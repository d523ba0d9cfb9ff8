"""The auth database: users, API tokens, sessions and the audit log, in `data_dir/auth.db` (mode 0600).

A file of its own, not a table of the store: the store has one writer (record, on the verdict path),
while sign-ins, sessions and the CLI's user management are written by the api and the command line,
and must work, and be audited, while record is down. It also keeps credential hashes out of the file
reports, exports and backups copy. Writers are few and slow (a sign-in, a keep-alive), so SQLite's
own locking (WAL, busy timeout) serialises them. Nothing here is ever deleted by image retention.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlite_utils
from sqlite_utils.migrations import Migrations

from linewatch.clock import now_ns

AUTH_DB = "auth.db"
KEY_FILE = "auth.key"  # signs session cookies
MIGRATIONS = Migrations("linewatch-auth")


@MIGRATIONS(name="a1_users_tokens_sessions_audit")
def _a1(db: sqlite_utils.Database) -> None:
    db.table("users").create({"name": str, "role": str, "secret_kind": str, "secret_hash": str, "disabled": int,
                              "created_ns": int, "changed_ns": int}, pk="name",
                             not_null={"role", "secret_kind", "secret_hash"}, defaults={"disabled": 0})
    db.table("tokens").create({"id": str, "name": str, "role": str, "secret_sha256": str, "created_ns": int,
                               "expires_ns": int, "revoked_ns": int, "created_by": str}, pk="id",
                              not_null={"name", "role", "secret_sha256", "expires_ns"})
    db.table("sessions").create({"id": str, "secret_sha256": str, "user": str, "role": str, "address": str,
                                 "created_ns": int, "seen_ns": int, "ended_ns": int, "end_reason": str}, pk="id",
                                not_null={"secret_sha256", "user", "role", "created_ns", "seen_ns"})
    db.table("sessions").create_index(["user"])
    db.table("audit").create({"id": int, "t_ns": int, "actor": str, "address": str, "action": str, "target": str,
                              "outcome": str, "detail": str}, pk="id", not_null={"t_ns", "actor", "action", "outcome"})


def private_file(path: Path, data: bytes | None = None) -> Path:
    """Create `path` with mode 0600 (before any byte is in it), write `data`, and force 0600 if it existed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if data is not None else 0), 0o600)
    try:
        os.fchmod(fd, 0o600)
        if data is not None:
            os.write(fd, data)
    finally:
        os.close(fd)
    return path


@contextmanager
def auth_db(data_dir: Path) -> Iterator[sqlite3.Connection]:
    """A connection to the auth database (created 0600 and migrated on first use), in autocommit mode."""
    path = data_dir / AUTH_DB
    if not path.exists():
        private_file(path)
    conn = sqlite3.connect(path, isolation_level=None, timeout=5.0)
    conn.row_factory = sqlite3.Row
    try:
        conn.execute("PRAGMA journal_mode=WAL")  # SQLite gives the -wal and -shm files the database's mode
        db = sqlite_utils.Database(conn)
        if MIGRATIONS.pending(db):
            MIGRATIONS.apply(db)
        yield conn
    finally:
        conn.close()


def cookie_key(data_dir: Path) -> bytes:
    """The key that signs session cookies: 32 random bytes in data_dir/auth.key (0600), made on first use."""
    path = data_dir / KEY_FILE
    if not path.exists():
        private_file(path, secrets.token_bytes(32))
    return path.read_bytes()


def audit(data_dir: Path, actor: str, action: str, outcome: str, *, address: str = "", target: str = "",
          detail: dict[str, Any] | None = None, t_ns: int | None = None) -> int:
    """One audit row (IEC 62443-4-2 CR 2.8): who, from where, what (action, target, detail), outcome, when.
    Never pass a secret in `detail`."""
    with auth_db(data_dir) as conn:
        cur = conn.execute("INSERT INTO audit (t_ns, actor, address, action, target, outcome, detail) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?)",
                           (t_ns or now_ns(), actor, address, action, target, outcome,
                            json.dumps(detail, sort_keys=True) if detail else None))
        return int(cur.lastrowid or 0)


def audit_rows(data_dir: Path, limit: int = 100, since_ns: int | None = None,
               actor: str | None = None) -> list[dict[str, Any]]:
    """The newest audit rows first, optionally since a time or for one actor."""
    sql, params = "SELECT * FROM audit WHERE 1=1", list[Any]()
    if since_ns is not None:
        sql += " AND t_ns >= ?"
        params.append(since_ns)
    if actor is not None:
        sql += " AND actor = ?"
        params.append(actor)
    with auth_db(data_dir) as conn:
        rows = conn.execute(sql + " ORDER BY id DESC LIMIT ?", (*params, limit)).fetchall()
    return [{**dict(r), "detail": json.loads(r["detail"]) if r["detail"] else None} for r in rows]


def audit_window(data_dir: Path, t_from_ns: int, t_to_ns: int, limit: int) -> tuple[list[dict[str, Any]], int]:
    """The audit rows of [t_from_ns, t_to_ns), oldest first (at most `limit`), and how many the window holds.
    Read-only: a report never creates the audit log, and a data directory without one gives ([], 0)."""
    path = data_dir / AUTH_DB
    if not path.exists():
        return [], 0
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
    conn.row_factory = sqlite3.Row
    try:
        where, params = "FROM audit WHERE t_ns >= ? AND t_ns < ?", (t_from_ns, t_to_ns)
        total = int(conn.execute(f"SELECT count(*) {where}", params).fetchone()[0])
        rows = conn.execute(f"SELECT * {where} ORDER BY id LIMIT ?", (*params, limit)).fetchall()
    except sqlite3.OperationalError:  # created but not migrated yet: nothing audited
        return [], 0
    finally:
        conn.close()
    return [{**dict(r), "detail": json.loads(r["detail"]) if r["detail"] else None} for r in rows], total


def audit_count(data_dir: Path) -> int:
    """Rows in the audit log (ids only grow: nothing is ever deleted)."""
    with auth_db(data_dir) as conn:
        return int(conn.execute("SELECT coalesce(max(id), 0) FROM audit").fetchone()[0])
