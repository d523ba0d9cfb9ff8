"""Every route of the web app against the permission table (auth/roles.py): each one declares who may call it, every
route that needs a role answers 401 without credentials and 403 to each role below it, and lets each role at or
above it through the guard. Table-driven from the app itself: a route added without a line in the table fails here
(and is refused to everyone by the guard)."""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient

from linewatch.api.app import create_app
from linewatch.auth.accounts import users
from linewatch.auth.roles import LEVELS, PERMISSIONS, PUBLIC, READ, ROLES, roles_table
from linewatch.config import parse_config
from tests.api_harness import bearer
from tests.conftest import REPO

SAFE = ("GET", "HEAD")


def _operations() -> list[tuple[str, str]]:
    """(method, path) of every route the app serves, mounts as GET, read from a throwaway app at collection time."""
    scratch = tempfile.mkdtemp(prefix="linewatch-routes-")
    try:
        app = create_app(parse_config({"data_dir": scratch}))
        found = set()
        for route in iter_route_contexts(app.routes):
            for method in route.methods or {"GET"}:
                if method != "HEAD":
                    found.add((method, str(route.path)))
        schema = {(m.upper(), p) for p, ops in app.openapi()["paths"].items() for m in ops}
        return sorted(found | schema)
    finally:
        shutil.rmtree(scratch)


OPERATIONS = _operations()
GUARDED = [(m, p) for m, p in OPERATIONS if PERMISSIONS.get((m, p)) not in (PUBLIC, READ)]


def test_every_route_declares_who_may_call_it() -> None:
    missing = [f"{m} {p}" for m, p in OPERATIONS if (m, p) not in PERMISSIONS]
    assert not missing, "routes without a line in auth/roles.py PERMISSIONS (refused to everyone): " + str(missing)
    stale = [f"{m} {p}" for m, p in PERMISSIONS if (m, p) not in OPERATIONS]
    assert not stale, f"PERMISSIONS names routes the app does not serve: {stale}"


def test_every_change_of_state_needs_a_role() -> None:
    """A mutating route may be public only to sign in or out; none is a read-only view."""
    open_changes = [(m, p) for m, p in OPERATIONS if m not in SAFE and PERMISSIONS[(m, p)] in (PUBLIC, READ)]
    assert open_changes == [("DELETE", "/api/session"), ("POST", "/api/session")]


def _url(path: str) -> str:
    """The path with each parameter a value every route refuses or cannot find (0: below every row id)."""
    return re.sub(r"\{[^}]+\}", "0", path)


@pytest.fixture(scope="module")
def app_dir(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    data_dir = tmp_path_factory.mktemp("routes")
    client = TestClient(create_app(parse_config({"data_dir": str(data_dir)})))
    return {"client": client, "tokens": {role: bearer(data_dir, role) for role in ROLES}}


@pytest.mark.parametrize(("method", "path"), GUARDED, ids=[f"{m} {p}" for m, p in GUARDED])
def test_a_guarded_route_answers_401_without_credentials_and_403_below_its_role(
        app_dir: dict[str, Any], method: str, path: str) -> None:
    client, tokens = app_dir["client"], app_dir["tokens"]
    need = LEVELS[PERMISSIONS[(method, path)]]
    r = client.request(method, _url(path))
    assert r.status_code == 401, (r.status_code, r.text)
    assert r.json()["detail"].startswith("not signed in") and r.headers["www-authenticate"].startswith("Bearer")
    r = client.request(method, _url(path), headers={"Authorization": "Bearer lwt_0_forged"})
    assert r.status_code == 401 and "unknown, expired or revoked" in r.json()["detail"]
    for role in ROLES:
        r = client.request(method, _url(path), headers=tokens[role])
        if LEVELS[role] < need:
            assert r.status_code == 403, (role, r.status_code, r.text)
            assert r.json()["detail"].startswith(f"needs the {PERMISSIONS[(method, path)]} role or above")
        else:  # through the guard: the route itself answers (its own refusal of the parameter, or its answer)
            assert r.status_code not in (401, 403), (role, r.status_code, r.text)


READS = [(m, p) for m, p in OPERATIONS if PERMISSIONS.get((m, p)) == READ and "{" not in p and p != "/api/events"]


@pytest.mark.parametrize("viewer", ["anonymous", "qa"])
def test_read_only_views_follow_the_viewer_level(tmp_path: Path, viewer: str, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "metrics").mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "metrics"))  # /metrics reads the line's folder
    client = TestClient(create_app(parse_config({"data_dir": str(tmp_path), "security": {"viewer": viewer}})))
    operator, qa = bearer(tmp_path, "operator"), bearer(tmp_path, "qa")
    for method, path in READS:
        anonymous = client.request(method, path).status_code
        assert (anonymous not in (401, 403)) if viewer == "anonymous" else anonymous == 401, (path, anonymous)
        if viewer == "qa":
            assert client.request(method, path, headers=operator).status_code == 403, path
            assert client.request(method, path, headers=qa).status_code not in (401, 403), path
    assert client.get("/api/session").status_code == 200  # who am I stays open: the HMI asks it to sign in
    assert client.get("/healthz").status_code == 200


def test_the_defaults_open_nothing(tmp_path: Path) -> None:
    """IEC 62443-4-2 CR 7.7: loopback only, no user until the first start makes one, no change without a role."""
    cfg = parse_config({"data_dir": str(tmp_path)})
    assert (cfg.api.host, cfg.api.tls_cert, cfg.security.viewer) == ("127.0.0.1", None, "anonymous")
    client = TestClient(create_app(cfg))
    assert users(tmp_path) == []
    for user, secret in (("admin", "admin"), ("admin", ""), ("operator", "0000"), ("root", "root")):
        assert client.post("/api/session", json={"user": user, "secret": secret}).status_code in (401, 422)
    for method, path in OPERATIONS:
        if method not in SAFE and PERMISSIONS[(method, path)] not in (PUBLIC, READ):
            assert client.request(method, _url(path)).status_code == 401, (method, path)


def test_the_security_document_lists_the_permission_table() -> None:
    text = (REPO / "docs" / "security.md").read_text()
    assert roles_table() in text, "docs/security.md is stale: paste linewatch.auth.roles.roles_table() into it"
