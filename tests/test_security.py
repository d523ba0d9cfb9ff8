"""Sign-in, sessions, tokens and the audit log over real HTTP: a real uvicorn on loopback with record running (so
actions commit), browsers played by httpx clients that keep their cookies (docs/security.md)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx2 as httpx
import pytest

from linewatch.api.session import LoginLimiter
from linewatch.auth.accounts import add_token, add_user
from linewatch.auth.db import audit, audit_rows
from linewatch.config import LineConfig
from tests.api_harness import bearer, served_api
from tests.conftest import db_rows, wait_for

# a PIN long enough that no timestamp or hash in the logs or the database holds its digits by chance
PIN, PASSWORD = "25807193", "correct horse battery"


@pytest.fixture(scope="module")
def line_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, LineConfig]]:
    """The web app with an operator (ann, PIN), a qa (quinn) and an admin (ada, passwords)."""
    with served_api(tmp_path_factory.mktemp("security")) as (url, cfg):
        for name, role, secret in (("ann", "operator", PIN), ("quinn", "qa", PASSWORD), ("ada", "admin", PASSWORD)):
            add_user(cfg.data_dir, name, role, secret, cfg.security)
        yield url, cfg


@contextmanager
def _browser(url: str, user: str | None = None, secret: str = PIN) -> Iterator[httpx.Client]:
    """A client on `url` sending its Origin as a browser does, signed in as `user` when given."""
    with httpx.Client(base_url=url, headers={"Origin": url}, timeout=10) as client:
        if user is not None:
            r = client.post("/api/session", json={"user": user, "secret": secret})
            assert r.status_code == 200, r.text
        yield client


def test_a_sign_in_sets_a_strict_httponly_cookie_and_names_the_user(line_api: tuple[str, LineConfig]) -> None:
    url, cfg = line_api
    with _browser(url) as browser:
        assert browser.get("/api/session").json()["user"] is None
        r = browser.post("/api/session", json={"user": "ann", "secret": PIN})
        cookie = r.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Secure" not in cookie  # no TLS here
        assert browser.get("/api/session").json() == {"user": "ann", "role": "operator", "kind": "session",
                                                     "idle_lock_s": 900.0, "viewer": "anonymous", "reason": None}
        assert browser.put("/api/lot", json={"lot": "LOT-7"}).json()["actor"] == "ann"
    sign_in = next(a for a in audit_rows(cfg.data_dir) if a["action"] == "sign_in" and a["actor"] == "ann")
    assert (sign_in["outcome"], sign_in["address"]) == ("ok", "127.0.0.1")


def test_the_audit_actor_comes_from_the_session_never_from_the_body(line_api: tuple[str, LineConfig]) -> None:
    url, cfg = line_api
    with _browser(url, "ann") as browser:
        r = browser.put("/api/lot", json={"lot": "LOT-8", "actor": "boss"})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "actor"]  # refused, not ignored
        r = browser.post("/api/inspections/4/review", json={"decision": "FAIL", "reviewer": "boss"})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "reviewer"]
        assert browser.post("/api/inspections/4/review", json={"decision": "FAIL"}).status_code == 200
        r = browser.post("/api/alarms/1/ack", json={"actor": "boss"})  # no body is read: the session names ann
        assert r.status_code == 200 and r.json()["acknowledged_by"] == "ann"
        # a cookie session is refused from another origin, or with none (CSRF)
        assert browser.put("/api/lot", json={"lot": "X"}, headers={"Origin": "http://evil.example"}).status_code \
            == 403
        del browser.headers["Origin"]
        assert browser.put("/api/lot", json={"lot": "X"}).status_code == 403
    assert db_rows(cfg.data_dir, "SELECT acknowledged_by FROM alarms WHERE id = 1")[0]["acknowledged_by"] == "ann"
    assert db_rows(cfg.data_dir, "SELECT reviewer FROM review_decisions")[-1]["reviewer"] == "ann"
    assert "boss" not in json.dumps(audit_rows(cfg.data_dir, 1000))


def test_an_admin_lists_and_ends_sessions_and_a_password_change_ends_them_all(
        line_api: tuple[str, LineConfig]) -> None:
    url, cfg = line_api
    with ExitStack() as stack:
        ann, ann_too = stack.enter_context(_browser(url, "ann")), stack.enter_context(_browser(url, "ann"))
        admin, qa = stack.enter_context(_browser(url, "ada", PASSWORD)), stack.enter_context(_browser(url, "quinn",
                                                                                                       PASSWORD))
        assert ann.get("/api/sessions").status_code == 403
        mine = [s for s in admin.get("/api/sessions").json() if s["user"] == "ann"]
        assert len(mine) >= 2 and all("secret" not in json.dumps(s) for s in mine)
        ended = mine[0]["id"]  # the newest: ann_too's
        assert ann.delete(f"/api/sessions/{ended}").status_code == 403
        assert admin.delete(f"/api/sessions/{ended}").status_code == 204
        r = ann_too.put("/api/lot", json={"lot": "LOT-9"})
        assert r.status_code == 401 and r.json()["detail"] == "not signed in: session ended (ended by ada)"
        assert ann.put("/api/lot", json={"lot": "LOT-9"}).status_code == 200  # her other session holds
        assert admin.delete(f"/api/sessions/{ended}").status_code == 404
        # quinn changes her password: each of her sessions ends, the old password no longer works
        other = stack.enter_context(_browser(url, "quinn", PASSWORD))
        r = qa.post("/api/session/password", json={"current": "wrong", "new": "a new long password"})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "current"]
        assert qa.post("/api/session/password", json={"current": PASSWORD, "new": "short"}).status_code == 422
        assert qa.post("/api/session/password",
                       json={"current": PASSWORD, "new": "a new long password"}).status_code == 204
        assert other.get("/api/audit").status_code == 401 and qa.get("/api/audit").status_code == 401
        assert httpx.post(f"{url}/api/session", json={"user": "quinn", "secret": PASSWORD}).status_code == 401
        again = stack.enter_context(_browser(url, "quinn", "a new long password"))
        assert again.get("/api/audit").status_code == 200
    actions = [(a["actor"], a["action"], a["outcome"]) for a in audit_rows(cfg.data_dir, 1000)]
    assert ("ada", "end_session", "ok") in actions and ("quinn", "change_secret", "ok") in actions
    assert ("quinn", "change_secret", "refused: wrong current secret") in actions


def test_a_token_works_until_it_expires_or_is_revoked(line_api: tuple[str, LineConfig]) -> None:
    url, cfg = line_api
    token_id, token = add_token(cfg.data_dir, "mes", "qa", 2.0 / 86_400, "tests")  # two seconds
    auth = {"Authorization": f"Bearer {token}"}
    assert httpx.get(f"{url}/api/audit", headers=auth).status_code == 200
    assert httpx.post(f"{url}/api/drift/cam0/relearn", headers=auth).status_code == 403  # qa < engineer
    wait_for(lambda: httpx.get(f"{url}/api/audit", headers=auth).status_code == 401, 10, "the token to expire")
    r = httpx.get(f"{url}/api/audit", headers=auth)
    assert r.json()["detail"] == "not signed in: the bearer token is unknown, expired or revoked"
    assert httpx.get(f"{url}/api/status", headers=auth).status_code == 200  # an open view still answers
    revoked = bearer(cfg.data_dir, "operator", "line-script")
    assert httpx.put(f"{url}/api/lot", json={"lot": "L-1"}, headers=revoked).json()["actor"] == "token:line-script"
    from linewatch.auth.accounts import revoke_token, tokens
    revoke_token(cfg.data_dir, next(t["id"] for t in tokens(cfg.data_dir) if t["name"] == "line-script"))
    assert httpx.put(f"{url}/api/lot", json={"lot": "L-2"}, headers=revoked).status_code == 401
    assert token_id and token.split("_", 2)[2] not in (cfg.data_dir / "auth.db").read_bytes().decode("latin-1")


def test_secrets_are_never_logged_nor_stored_in_clear_and_files_are_0600(
        line_api: tuple[str, LineConfig], caplog: pytest.LogCaptureFixture) -> None:
    url, cfg = line_api
    caplog.set_level(logging.DEBUG)
    _, token = add_token(cfg.data_dir, "scanner", "operator", 1, "tests")
    with _browser(url, "ann") as browser:
        cookie = browser.cookies["lw_session"]
        httpx.get(f"{url}/api/status", headers={"Authorization": f"Bearer {token}"})
        httpx.post(f"{url}/api/session", json={"user": "ann", "secret": "9999"})
        users = browser.get("/api/users")
    assert users.status_code == 403
    server_side = [r.getMessage() for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))]
    logged = "\n".join(server_side) + json.dumps(audit_rows(cfg.data_dir, 1000))  # the client's own log aside
    for secret in (PIN, token, cookie, cookie.split(".")[1]):
        assert secret not in logged
    stored = (cfg.data_dir / "auth.db").read_bytes()
    for secret in (PIN.encode(), PASSWORD.encode(), token.encode(), cookie.split(".")[1].encode()):
        assert secret not in stored
    for name in ("auth.db", "auth.key"):
        assert (cfg.data_dir / name).stat().st_mode & 0o777 == 0o600, name


@pytest.fixture(scope="module")
def strict_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, LineConfig]]:
    """The web app with a 1.5 s idle lock and an audit log sized for 100 rows."""
    with served_api(tmp_path_factory.mktemp("strict"),
                    security={"idle_lock_s": 1.5, "audit_max_rows": 100}) as (url, cfg):
        add_user(cfg.data_dir, "ann", "operator", PIN, cfg.security)
        yield url, cfg


def test_an_idle_session_is_locked_and_a_touched_one_is_not(strict_api: tuple[str, LineConfig]) -> None:
    url, cfg = strict_api
    with _browser(url, "ann") as idle, _browser(url, "ann") as busy:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 2.5:  # the busy screen is touched: keep-alive every half second
            assert busy.put("/api/session").json()["user"] == "ann"
            time.sleep(0.5)
        r = idle.put("/api/lot", json={"lot": "LOT-1"})
        assert r.status_code == 401 and r.json()["detail"] == "not signed in: session ended (idle lock)"
        assert idle.get("/api/session").json()["reason"] == "session ended (idle lock)"
        assert busy.put("/api/lot", json={"lot": "LOT-1"}).json()["actor"] == "ann"
    ends = [a for a in audit_rows(cfg.data_dir) if a["action"] == "session_end"]
    assert ends and ends[0]["actor"] == "ann" and ends[0]["detail"] == {"reason": "idle lock"}


def test_an_audit_log_near_its_limit_raises_a_warning_alarm(strict_api: tuple[str, LineConfig]) -> None:
    """IEC 62443-4-2 CR 2.9: the log warns before it is full; no row is dropped."""
    url, cfg = strict_api
    operator = bearer(cfg.data_dir, "operator")
    while audit(cfg.data_dir, "tests", "filler", "ok") < 88:
        pass
    for _ in range(3):  # each refused change is an audit row: the 90th is 90 % of the limit
        assert httpx.post(f"{url}/api/alarms/0/ack", headers=operator).status_code == 422
    alarm = wait_for(lambda: db_rows(cfg.data_dir, "SELECT * FROM alarms WHERE kind = 'audit_storage'"), 10,
                     "the audit storage alarm")
    assert len(alarm) == 1 and alarm[0]["severity"] == "warning" and "of the 100 rows" in alarm[0]["message"]
    assert len(audit_rows(cfg.data_dir, 1000)) >= 91  # all kept


def test_the_first_admin_is_made_once_with_a_password_nobody_else_knows(tmp_path: Path) -> None:
    from linewatch.auth.accounts import check_login, users
    from linewatch.auth.cli import ensure_first_admin
    from linewatch.config import parse_config

    cfg = parse_config({"data_dir": str(tmp_path)})
    ensure_first_admin(cfg)  # no terminal under pytest: the password goes to a 0600 file
    secret_file = tmp_path / "initial-admin-password"
    assert secret_file.stat().st_mode & 0o777 == 0o600
    password = secret_file.read_text().strip()
    assert len(password) >= cfg.security.password_min_chars and check_login(tmp_path, "admin", password)[0] == "admin"
    ensure_first_admin(cfg)  # users exist: nothing changes
    assert [u["name"] for u in users(tmp_path)] == ["admin"] and secret_file.read_text().strip() == password
    given = tmp_path / "given"
    given.write_text("a password from the installer\n")
    other = parse_config({"data_dir": str(tmp_path / "b"), "security": {"first_admin_password_file": str(given)}})
    ensure_first_admin(other)
    assert check_login(tmp_path / "b", "admin", "a password from the installer")[0] == "admin"


def test_failed_sign_ins_are_limited_per_user_and_per_address_and_audited(strict_api: tuple[str, LineConfig]) -> None:
    """Last in the module: it spends loopback's five failures of the minute on this server."""
    url, cfg = strict_api
    for _ in range(5):
        assert httpx.post(f"{url}/api/session", json={"user": "ann", "secret": "0000"}).status_code == 401
    r = httpx.post(f"{url}/api/session", json={"user": "ann", "secret": PIN})  # right, but not even checked
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
    r = httpx.post(f"{url}/api/session", json={"user": "nobody", "secret": "0000"})  # the address is limited too
    assert r.status_code == 429
    tries = [a["outcome"] for a in reversed(audit_rows(cfg.data_dir, 7)) if a["action"] == "sign_in"]
    assert tries[-7:] == ["refused: wrong secret"] * 5 + ["refused: rate limited"] * 2




def test_the_limit_counts_each_user_name_and_each_address_on_its_own() -> None:
    limiter = LoginLimiter(per_minute=5)
    for _ in range(5):
        assert limiter.wait_s("user:ann", "address:10.0.0.7") == 0
        limiter.failed("user:ann", "address:10.0.0.7")
    assert 59 < limiter.wait_s("user:ann", "address:10.0.0.8") <= 60  # ann from anywhere
    assert 59 < limiter.wait_s("user:bob", "address:10.0.0.7") <= 60  # anyone from that address
    assert limiter.wait_s("user:bob", "address:10.0.0.8") == 0
