"""Users (Argon2id hashes of a PIN or password), API tokens and sessions, kept in the auth database.

Operators sign in with a PIN of digits, the other roles with a password. Tokens and session secrets
are 256 random bits: their SHA-256 is stored (a slow hash adds nothing to a secret nobody can guess,
and each request checks one). A secret is shown once, when it is made, and never stored in clear.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import secrets
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from linewatch.auth.db import audit, auth_db, cookie_key
from linewatch.auth.roles import LEVELS, ROLES
from linewatch.clock import now_ns
from linewatch.config import SecurityConfig

HASHER = PasswordHasher()  # Argon2id, RFC 9106 low-memory parameters
TOKEN_PREFIX = "lwt_"
NAME_PATTERN = r"^[A-Za-z0-9_.@-]{1,64}$"


@functools.cache
def _dummy_hash() -> str:
    """Checked for an unknown name, so it takes as long as a known one; made at the first sign-in, not at
    import (a hash costs every process that imports this module 0.1 s of CPU at start)."""
    return HASHER.hash("not a user")


class AccountError(ValueError):
    """A user or token request the auth database refuses, with the reason."""


@dataclass(frozen=True)
class Principal:
    """Who a request acts for: a signed-in user (session), a machine client (token) or nobody."""

    actor: str  # the audit log's name: the user, `token:<name>`, or `anonymous`
    role: str  # a role, or `anonymous`
    kind: str  # session, token or anonymous
    session_id: str | None = None

    @property
    def level(self) -> int:
        return LEVELS[self.role]


ANONYMOUS = Principal("anonymous", "anonymous", "anonymous")


def _sha(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_problem(role: str, secret: str, cfg: SecurityConfig) -> str | None:
    """Why `secret` cannot be this role's PIN or password, or None."""
    if role == "operator":
        if not secret.isascii() or not secret.isdigit() or len(secret) < cfg.pin_min_digits:
            return f"an operator's PIN is {cfg.pin_min_digits} or more digits"
        return None
    if len(secret) < cfg.password_min_chars:
        return f"a {role}'s password is {cfg.password_min_chars} or more characters"
    return None


def _check_name(name: str) -> None:
    if not re.fullmatch(NAME_PATTERN, name):
        raise AccountError(f"a name is 1-64 letters, digits and _.@- (got {name[:80]!r})")


def add_user(data_dir: Path, name: str, role: str, secret: str, cfg: SecurityConfig) -> None:
    _check_name(name)
    if role not in ROLES:
        raise AccountError(f"unknown role {role!r} (one of {', '.join(ROLES)})")
    if (problem := secret_problem(role, secret, cfg)) is not None:
        raise AccountError(problem)
    with auth_db(data_dir) as conn:
        try:
            conn.execute("INSERT INTO users (name, role, secret_kind, secret_hash, created_ns, changed_ns) "
                         "VALUES (?, ?, ?, ?, ?, ?)", (name, role, "pin" if role == "operator" else "password",
                                                       HASHER.hash(secret), now_ns(), now_ns()))
        except sqlite3.IntegrityError:
            raise AccountError(f"user {name!r} exists") from None


def users(data_dir: Path) -> list[dict[str, Any]]:
    """Every user without its hash."""
    with auth_db(data_dir) as conn:
        rows = conn.execute("SELECT name, role, secret_kind, disabled, created_ns, changed_ns FROM users "
                            "ORDER BY name").fetchall()
    return [{**dict(r), "disabled": bool(r["disabled"])} for r in rows]


def _user(conn: sqlite3.Connection, name: str) -> sqlite3.Row:
    row = conn.execute("SELECT * FROM users WHERE name = ?", (name,)).fetchone()
    if row is None:
        raise AccountError(f"no user {name!r}")
    return row  # type: ignore[no-any-return]


def set_secret(data_dir: Path, name: str, secret: str, cfg: SecurityConfig) -> int:
    """A new PIN or password; every open session of the user ends. Returns how many ended."""
    with auth_db(data_dir) as conn:
        role = _user(conn, name)["role"]
        if (problem := secret_problem(role, secret, cfg)) is not None:
            raise AccountError(problem)
        conn.execute("UPDATE users SET secret_hash = ?, changed_ns = ? WHERE name = ?",
                     (HASHER.hash(secret), now_ns(), name))
        return _end_user_sessions(conn, name, "password changed")


def disable_user(data_dir: Path, name: str) -> int:
    """The user can no longer sign in; its open sessions end. Returns how many ended."""
    with auth_db(data_dir) as conn:
        _user(conn, name)
        conn.execute("UPDATE users SET disabled = 1, changed_ns = ? WHERE name = ?", (now_ns(), name))
        return _end_user_sessions(conn, name, "user disabled")


def check_login(data_dir: Path, name: str, secret: str) -> tuple[str | None, str]:
    """(the user's role, 'ok') for a right PIN or password of an enabled user; (None, why) otherwise."""
    with auth_db(data_dir) as conn:
        row = conn.execute("SELECT role, secret_hash, disabled FROM users WHERE name = ?", (name,)).fetchone()
    try:
        HASHER.verify(row["secret_hash"] if row else _dummy_hash(), secret)
    except (VerificationError, InvalidHashError):
        return None, "unknown user" if row is None else "wrong secret"
    if row is None:
        return None, "unknown user"
    if row["disabled"]:
        return None, "user disabled"
    return str(row["role"]), "ok"


# ---- API tokens ------------------------------------------------------------------------------------------


def add_token(data_dir: Path, name: str, role: str, days: float, created_by: str) -> tuple[str, str]:
    """(token id, the token): the token is shown this once; the database keeps its SHA-256."""
    _check_name(name)
    if role not in ROLES:
        raise AccountError(f"unknown role {role!r} (one of {', '.join(ROLES)})")
    token_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
    with auth_db(data_dir) as conn:
        conn.execute("INSERT INTO tokens (id, name, role, secret_sha256, created_ns, expires_ns, created_by) "
                     "VALUES (?, ?, ?, ?, ?, ?, ?)", (token_id, name, role, _sha(secret), now_ns(),
                                                      now_ns() + int(days * 86_400e9), created_by))
    return token_id, f"{TOKEN_PREFIX}{token_id}_{secret}"


def tokens(data_dir: Path) -> list[dict[str, Any]]:
    with auth_db(data_dir) as conn:
        rows = conn.execute("SELECT id, name, role, created_ns, expires_ns, revoked_ns, created_by FROM tokens "
                            "ORDER BY created_ns").fetchall()
    return [dict(r) for r in rows]


def revoke_token(data_dir: Path, token_id: str) -> None:
    with auth_db(data_dir) as conn:
        if conn.execute("UPDATE tokens SET revoked_ns = ? WHERE id = ? AND revoked_ns IS NULL",
                        (now_ns(), token_id)).rowcount != 1:
            raise AccountError(f"no unrevoked token {token_id!r}")


def token_principal(data_dir: Path, token: str) -> Principal | None:
    """The machine client a bearer token stands for, or None (unknown, wrong, expired or revoked)."""
    token_id, _, secret = token.removeprefix(TOKEN_PREFIX).partition("_")
    if not token.startswith(TOKEN_PREFIX) or not secret:
        return None
    with auth_db(data_dir) as conn:
        row = conn.execute("SELECT name, role, secret_sha256, expires_ns, revoked_ns FROM tokens WHERE id = ?",
                           (token_id,)).fetchone()
    if row is None or not hmac.compare_digest(row["secret_sha256"], _sha(secret)):
        return None
    if row["revoked_ns"] is not None or row["expires_ns"] <= now_ns():
        return None
    return Principal(f"token:{row['name']}", row["role"], "token")


# ---- sessions --------------------------------------------------------------------------------------------


def _sign(data_dir: Path, value: str) -> str:
    return hmac.new(cookie_key(data_dir), value.encode(), hashlib.sha256).hexdigest()


def open_session(data_dir: Path, user: str, role: str, address: str) -> tuple[str, str]:
    """(session id, cookie value): `<id>.<secret>.<HMAC of both>`; the database keeps the secret's SHA-256."""
    session_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
    t = now_ns()
    with auth_db(data_dir) as conn:
        conn.execute("INSERT INTO sessions (id, secret_sha256, user, role, address, created_ns, seen_ns) "
                     "VALUES (?, ?, ?, ?, ?, ?, ?)", (session_id, _sha(secret), user, role, address, t, t))
    value = f"{session_id}.{secret}"
    return session_id, f"{value}.{_sign(data_dir, value)}"


def session_principal(data_dir: Path, cookie: str, cfg: SecurityConfig) -> tuple[Principal | None, str]:
    """(the signed-in user of a session cookie, 'ok'), or (None, why): a forged, ended, idle or expired
    session. An idle or expired session is ended here, so it stays ended."""
    session_id, _, rest = cookie.partition(".")
    secret, _, signature = rest.partition(".")
    if not signature or not hmac.compare_digest(signature, _sign(data_dir, f"{session_id}.{secret}")):
        return None, "not a session of this appliance"
    t = now_ns()
    with auth_db(data_dir) as conn:
        row = conn.execute("SELECT * FROM sessions WHERE id = ?", (session_id,)).fetchone()
        if row is None or not hmac.compare_digest(row["secret_sha256"], _sha(secret)):
            return None, "unknown session"
        if row["ended_ns"] is not None:
            return None, f"session ended ({row['end_reason']})"
        why = ("idle lock" if t - row["seen_ns"] > cfg.idle_lock_s * 1e9 else
               "session too old" if t - row["created_ns"] > cfg.session_max_s * 1e9 else None)
        if why is not None:
            conn.execute("UPDATE sessions SET ended_ns = ?, end_reason = ? WHERE id = ?", (t, why, session_id))
    if why is not None:
        audit(data_dir, row["user"], "session_end", "ok", address=row["address"], target=session_id,
              detail={"reason": why})
        return None, f"session ended ({why})"
    return Principal(row["user"], row["role"], "session", session_id), "ok"


def touch_session(data_dir: Path, session_id: str) -> None:
    """The session was used for something that needs its role: its idle time starts again."""
    with auth_db(data_dir) as conn:
        conn.execute("UPDATE sessions SET seen_ns = ? WHERE id = ? AND ended_ns IS NULL", (now_ns(), session_id))


def end_session(data_dir: Path, session_id: str, reason: str) -> bool:
    with auth_db(data_dir) as conn:
        return conn.execute("UPDATE sessions SET ended_ns = ?, end_reason = ? WHERE id = ? AND ended_ns IS NULL",
                            (now_ns(), reason, session_id)).rowcount == 1


def _end_user_sessions(conn: sqlite3.Connection, user: str, reason: str) -> int:
    return conn.execute("UPDATE sessions SET ended_ns = ?, end_reason = ? WHERE user = ? AND ended_ns IS NULL",
                        (now_ns(), reason, user)).rowcount


def sessions(data_dir: Path, cfg: SecurityConfig) -> list[dict[str, Any]]:
    """The sessions still open (not ended, not idle, not too old), newest first, without their secrets."""
    t = now_ns()
    with auth_db(data_dir) as conn:
        rows = conn.execute("SELECT id, user, role, address, created_ns, seen_ns FROM sessions WHERE ended_ns IS "
                            "NULL AND seen_ns >= ? AND created_ns >= ? ORDER BY created_ns DESC",
                            (t - int(cfg.idle_lock_s * 1e9), t - int(cfg.session_max_s * 1e9))).fetchall()
    return [dict(r) for r in rows]
