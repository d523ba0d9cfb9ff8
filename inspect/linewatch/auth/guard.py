"""The web app's door: who a request is (session cookie, bearer token or nobody), whether the permission table
lets them through, the origin check of cookie sessions, and an audit row for every request that changes state.

ASGI middleware, so it runs before a body is parsed: a request without the role gets 401 or 403 whatever
it carries. The principal goes into the request's state, where routes read the actor of their audit
rows (`actor_of`): never from the body.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import zmq
from fastapi import Request
from fastapi.responses import JSONResponse
from fastapi.routing import iter_route_contexts
from starlette.routing import Router, compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from linewatch.auth.accounts import ANONYMOUS, Principal, session_principal, token_principal, touch_session
from linewatch.auth.db import audit, audit_count
from linewatch.auth.roles import LEVELS, PERMISSIONS, PUBLIC, READ, required_level
from linewatch.config import LineConfig
from linewatch.wire import Endpoints
from linewatch.wire.channels import AlarmSender

log = logging.getLogger("api.auth")
COOKIE = "lw_session"
SAFE = frozenset({"GET", "HEAD"})
AUDIT_WARN_FRACTION = 0.9
#: Routes that write their own, richer audit rows (a sign-in names the user it tried).
SELF_AUDITED = frozenset({"/api/session", "/api/session/password", "/api/sessions/{session_id}"})


class AuditLog:
    """Audit rows from the api, and the CR 2.9 warning: one alarm when the log passes 90 % of
    `security.audit_max_rows` (rows are never dropped: the alarm asks for room)."""

    def __init__(self, cfg: LineConfig) -> None:
        self.cfg, self.warned = cfg, False
        self.limit = cfg.security.audit_max_rows

    def write(self, actor: str, action: str, outcome: str, **fields: Any) -> int:
        row_id = audit(self.cfg.data_dir, actor, action, outcome, **fields)
        if not self.warned and row_id >= AUDIT_WARN_FRACTION * self.limit:
            self.warned = True
            rows = audit_count(self.cfg.data_dir)
            sender = AlarmSender(zmq.Context.instance(), Endpoints(self.cfg.run_dir), "api")
            try:
                sender.raise_alarm("audit_storage", f"audit log holds {rows} of the {self.limit} rows it is sized "
                                   "for (security.audit_max_rows): make room on the data disk and raise the limit; "
                                   "audit rows are never deleted")
            finally:
                sender.close()
        return row_id


def client_address(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else ""


def actor_of(request: Request) -> Principal:
    """Who the request acts for, as the guard found it."""
    return request.state.principal  # type: ignore[no-any-return]


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _cookie(scope: Scope) -> str | None:
    for part in (_header(scope, b"cookie") or "").split(";"):
        key, _, value = part.strip().partition("=")
        if key == COOKIE and value:
            return value
    return None


def same_origin(scope: Scope) -> bool:
    """The request's Origin (or, lacking one, its Referer) is this app's own scheme and host."""
    own = f"{scope.get('scheme', 'http')}://{_header(scope, b'host')}"
    origin = _header(scope, b"origin") or _header(scope, b"referer")
    return origin is not None and (origin == own or origin.startswith(own + "/"))


class Guard:
    """ASGI middleware over the permission table (`auth/roles.py`)."""

    def __init__(self, app: ASGIApp, router: Router, cfg: LineConfig, audit_log: AuditLog) -> None:
        self.app, self.router, self.cfg, self.audit = app, router, cfg, audit_log
        self.table: list[tuple[re.Pattern[str], frozenset[str] | None, str]] | None = None

    def _routes(self) -> list[tuple[re.Pattern[str], frozenset[str] | None, str]]:
        """(path regex, methods or None for a mount, route path) of every route, read once the app is built."""
        if self.table is None:
            self.table = []
            for route in iter_route_contexts(self.router.routes):
                path, mount = str(route.path), route.methods is None
                regex = compile_path(path + "/{path:path}" if mount else path)[0]
                self.table.append((regex, None if mount else frozenset(route.methods or ()), path))
        return self.table

    def _rule(self, scope: Scope) -> tuple[str | None, str | None]:
        """(route path, rule) of the route serving the request; (None, None) when none does (404/405 follow)."""
        for regex, methods, path in self._routes():
            if regex.match(scope["path"]) and (methods is None or scope["method"] in methods):
                return path, PERMISSIONS.get(("GET" if methods is None else scope["method"], path), "")
        return None, None

    def _principal(self, scope: Scope) -> tuple[Principal | None, str]:
        """The request's principal, or (None, why) when it shows credentials that do not hold."""
        data_dir = self.cfg.data_dir
        auth = _header(scope, b"authorization")
        if auth is not None:
            kind, _, token = auth.partition(" ")
            found = token_principal(data_dir, token.strip()) if kind.lower() == "bearer" else None
            return (found, "ok") if found else (None, "the bearer token is unknown, expired or revoked")
        cookie = _cookie(scope)
        if cookie is None:
            return ANONYMOUS, "ok"
        return session_principal(data_dir, cookie, self.cfg.security)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, rule = self._rule(scope)
        if path is None or rule is None:
            await self.app(scope, receive, send)
            return
        method, address = scope["method"], client_address(scope)
        principal, why = self._principal(scope)
        if principal is None and rule and required_level(rule, self.cfg.security.viewer) == 0:
            principal = ANONYMOUS  # credentials that no longer hold: an open route still answers, as to nobody
        refusal = self._refusal(rule, principal, why, scope)
        state = scope.setdefault("state", {})
        state["principal"], state["auth_problem"] = principal, why
        audited = method not in SAFE and path not in SELF_AUDITED
        if refusal is not None:
            if audited or rule not in (PUBLIC, READ):
                self.audit.write(principal.actor if principal else "anonymous", f"{method} {path}",
                                 f"refused {refusal.status_code}", address=address, target=scope["path"],
                                 detail={"reason": json.loads(bytes(refusal.body))["detail"]})
            await refusal(scope, receive, send)
            return
        assert principal is not None
        if principal.session_id and rule not in (PUBLIC, READ):
            touch_session(self.cfg.data_dir, principal.session_id)  # used its role: the idle lock starts again
        if not audited:
            await self.app(scope, receive, send)
            return
        status, written = 500, False

        def write() -> None:
            nonlocal written
            written = True
            self.audit.write(principal.actor, f"{method} {path}", "ok" if status < 400 else f"refused {status}",
                             address=address, target=scope["path"])

        async def send_audited(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body") and not written:
                write()  # committed before the answer ends: a client that has its answer finds the row
            await send(message)

        try:
            await self.app(scope, receive, send_audited)
        finally:
            if not written:
                write()

    def _refusal(self, rule: str, principal: Principal | None, why: str, scope: Scope) -> JSONResponse | None:
        if rule == "":
            return JSONResponse({"detail": f"{scope['method']} {scope['path']} declares no role in the permission "
                                           "table: refused to everyone"}, status_code=403)
        need = required_level(rule, self.cfg.security.viewer)
        if principal is None or (principal.kind == "anonymous" and need > 0):
            reason = why if principal is None else "sign in first"
            return JSONResponse({"detail": f"not signed in: {reason}"}, status_code=401,
                                headers={"WWW-Authenticate": 'Bearer realm="linewatch"'})
        if principal.level < need:
            role = next(r for r, level in LEVELS.items() if level == need)
            return JSONResponse({"detail": f"needs the {role} role or above; {principal.actor} is "
                                           f"{principal.role}"}, status_code=403)
        foreign = _header(scope, b"origin") is not None and not same_origin(scope)
        if scope["method"] not in SAFE and (foreign or (principal.kind == "session" and not same_origin(scope))):
            return JSONResponse({"detail": "a change from a browser must come from this app's own origin "
                                           "(Origin header)"}, status_code=403)
        return None
