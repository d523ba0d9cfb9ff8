"""REST of sign-in and its records: sign in and out, keep-alive, password change, the admin's session list and
remote sign-out, the user list and the audit log (docs/security.md).

A sign-in checks the Argon2id hash in a worker thread (a sync route); failed ones are counted per user
name and per address, and past `security.login_failures_per_minute` a try is refused unchecked (429).
Every sign-in, good or failed, and every sign-out writes an audit row.
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi import Path as InPath
from pydantic import BaseModel, ConfigDict, Field

from linewatch.api.body import JsonRoute
from linewatch.api.errors import invalid, refusals
from linewatch.auth.accounts import (
    NAME_PATTERN,
    AccountError,
    check_login,
    end_session,
    open_session,
    sessions,
    set_secret,
    users,
)
from linewatch.auth.db import audit_rows
from linewatch.auth.guard import COOKIE, AuditLog, actor_of, client_address
from linewatch.config import LineConfig

WINDOW_S = 60.0


class SignIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: str = Field(pattern=NAME_PATTERN, description="User name.")
    secret: str = Field(min_length=1, max_length=256, description="The operator's PIN, or the user's password.")


class NewSecret(BaseModel):
    model_config = ConfigDict(extra="forbid")
    current: str = Field(min_length=1, max_length=256, description="The PIN or password in force.")
    new: str = Field(min_length=1, max_length=256, description="The new PIN or password.")


class LoginLimiter:
    """Failed sign-ins in the last minute, per key (a user name, an address)."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self.failures: dict[str, deque[float]] = defaultdict(deque)

    def wait_s(self, *keys: str) -> float:
        """Seconds until a try is taken for every key (0: now)."""
        now, wait = time.monotonic(), 0.0
        for key in keys:
            times = self.failures.get(key)
            while times and now - times[0] > WINDOW_S:
                times.popleft()
            if not times:
                self.failures.pop(key, None)  # a minute without failures: forgotten (made-up names cost nothing)
            elif len(times) >= self.per_minute:
                wait = max(wait, WINDOW_S - (now - times[0]))
        return wait

    def failed(self, *keys: str) -> None:
        for key in keys:
            self.failures[key].append(time.monotonic())


def _whoami(request: Request, cfg: LineConfig) -> dict[str, Any]:
    who = actor_of(request)
    signed = who.kind != "anonymous"
    return {"user": who.actor if signed else None, "role": who.role, "kind": who.kind,
            "idle_lock_s": cfg.security.idle_lock_s, "viewer": cfg.security.viewer,
            "reason": None if signed or request.state.auth_problem == "ok" else request.state.auth_problem}


def session_router(cfg: LineConfig, audit: AuditLog) -> APIRouter:
    router = APIRouter(prefix="/api", route_class=JsonRoute)
    limiter = LoginLimiter(cfg.security.login_failures_per_minute)
    secure = cfg.api.tls_cert is not None

    @router.get("/session")
    def whoami(request: Request) -> dict[str, Any]:
        """Who is signed in on this request (nobody: `user` null, with the reason when a session ended)."""
        return _whoami(request, cfg)

    @router.put("/session", responses=refusals({401: "Not signed in, or the session ended."}))
    def keep_alive(request: Request) -> dict[str, Any]:
        """The user is still at the screen: the session's idle time starts again."""
        return _whoami(request, cfg)

    @router.post("/session", responses=refusals({401: "Wrong user name, PIN or password (or a disabled user).",
                                                 403: "The request came from another origin.",
                                                 429: "Too many failed sign-ins in the last minute."}))
    def sign_in(request: Request, response: Response, body: SignIn) -> dict[str, Any]:
        """Sign in with a PIN (operators) or password; answers with a session cookie (HttpOnly, SameSite=Strict,
        Secure under TLS)."""
        address = client_address(request.scope)
        keys = (f"user:{body.user}", f"address:{address}")
        wait = limiter.wait_s(*keys)
        if wait > 0:
            audit.write(body.user, "sign_in", "refused: rate limited", address=address)
            raise HTTPException(429, f"too many failed sign-ins; try again in {wait:.0f} s",
                                headers={"Retry-After": str(int(wait) + 1)})
        role, why = check_login(cfg.data_dir, body.user, body.secret)
        if role is None:
            limiter.failed(*keys)
            audit.write(body.user, "sign_in", f"refused: {why}", address=address)
            raise HTTPException(401, "wrong user name, PIN or password")
        session_id, cookie = open_session(cfg.data_dir, body.user, role, address)
        audit.write(body.user, "sign_in", "ok", address=address, target=session_id)
        response.set_cookie(COOKIE, cookie, httponly=True, samesite="strict", secure=secure, path="/")
        return {"user": body.user, "role": role, "kind": "session", "idle_lock_s": cfg.security.idle_lock_s,
                "viewer": cfg.security.viewer, "reason": None}

    @router.delete("/session", status_code=204, response_class=Response)
    def sign_out(request: Request) -> Response:
        """Sign out: the session ends and its cookie is cleared."""
        who = actor_of(request)
        if who.session_id is not None and end_session(cfg.data_dir, who.session_id, "signed out"):
            audit.write(who.actor, "sign_out", "ok", address=client_address(request.scope), target=who.session_id)
        answer = Response(status_code=204)
        answer.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict", secure=secure)
        return answer

    @router.post("/session/password", responses=refusals({
        401: "Not signed in.", 409: "Not a user's session (a token has no password)."}))
    def change_secret(request: Request, body: NewSecret) -> Response:
        """Change one's own PIN or password; every session of the user ends (sign in again). A wrong current
        secret or a new one too short is a 422 naming the field."""
        who, address = actor_of(request), client_address(request.scope)
        if who.kind != "session":
            raise HTTPException(409, "only a signed-in user has a PIN or password to change")
        if check_login(cfg.data_dir, who.actor, body.current)[0] is None:
            audit.write(who.actor, "change_secret", "refused: wrong current secret", address=address)
            raise invalid(("body", "current"), "the current PIN or password is wrong")
        try:
            ended = set_secret(cfg.data_dir, who.actor, body.new, cfg.security)
        except AccountError as exc:
            audit.write(who.actor, "change_secret", f"refused: {exc}", address=address)
            raise invalid(("body", "new"), str(exc)) from None
        audit.write(who.actor, "change_secret", "ok", address=address, target=who.actor,
                    detail={"sessions_ended": ended})
        answer = Response(status_code=204)
        answer.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict", secure=secure)
        return answer

    @router.get("/sessions")
    def open_sessions() -> list[dict[str, Any]]:
        """The open sessions: user, role, address, when signed in and last used (admin)."""
        return sessions(cfg.data_dir, cfg.security)

    @router.delete("/sessions/{session_id}", status_code=204, response_class=Response,
                   responses=refusals({404: "No open session with this id."}))
    def terminate(request: Request, session_id: Annotated[str, InPath(pattern="^[0-9a-f]{16}$")]) -> Response:
        """End a session remotely (admin); its next request is anonymous."""
        who, address = actor_of(request), client_address(request.scope)
        if not end_session(cfg.data_dir, session_id, f"ended by {who.actor}"):
            audit.write(who.actor, "end_session", "refused: no open session", address=address, target=session_id)
            raise HTTPException(404, f"no open session {session_id}")
        audit.write(who.actor, "end_session", "ok", address=address, target=session_id)
        return Response(status_code=204)

    @router.get("/users")
    def user_list() -> list[dict[str, Any]]:
        """Every user with role and state, no hashes (admin)."""
        return users(cfg.data_dir)

    @router.get("/audit")
    def audit_log(limit: int = Query(100, ge=1, le=10_000), actor: str | None = Query(None, max_length=80),
                  since_ns: int | None = Query(None, ge=0, le=2**63 - 1)) -> list[dict[str, Any]]:
        """The audit log, newest first: who, from where, what, outcome, when (qa and admin)."""
        return audit_rows(cfg.data_dir, limit, since_ns, actor)

    return router
