"""`linewatch users`, `linewatch tokens` and `linewatch tls self-signed`, and the web app serving HTTPS with the
certificate it makes (docs/security.md)."""

from __future__ import annotations

import json
import ssl
import threading
from pathlib import Path

import httpx2 as httpx
import pytest

from linewatch.api.app import Api
from linewatch.auth.accounts import add_user, check_login
from linewatch.auth.db import audit_rows
from linewatch.cli import main
from linewatch.config import parse_config
from linewatch.line.supervisor import resolve_paths
from linewatch.wire.ready import read_ready
from tests.conftest import free_port, wait_for


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_users_and_tokens_are_managed_from_the_command_line_and_audited(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = ["--data-dir", str(tmp_path)]
    pin = tmp_path / "pin"
    pin.write_text("12\n")
    code, _, err = _run(capsys, "users", "add", "ann", "--role", "operator", "--secret-file", str(pin), *data)
    assert code == 2 and err == "error: an operator's PIN is 4 or more digits\n"
    pin.write_text("2580\n")
    code, _, err = _run(capsys, "users", "add", "ann smith", "--role", "operator", "--secret-file", str(pin), *data)
    assert code == 2 and err.startswith("error: a name is 1-64 letters, digits and _.@-")
    assert _run(capsys, "users", "add", "ann", "--role", "operator", "--secret-file", str(pin), *data)[0] == 0
    code, _, err = _run(capsys, "users", "add", "ann", "--role", "qa", "--secret-file", str(pin), *data)
    assert code == 2 and "a qa's password is 12 or more characters" in err
    code, out, _ = _run(capsys, "users", "list", *data)
    assert code == 0 and out.split()[:4] == ["ann", "operator", "pin", "enabled"] and "2580" not in out
    pin.write_text("4711\n")
    assert _run(capsys, "users", "passwd", "ann", "--secret-file", str(pin), *data)[0] == 0
    assert check_login(tmp_path, "ann", "2580")[0] is None and check_login(tmp_path, "ann", "4711")[0] == "operator"
    assert _run(capsys, "users", "disable", "ann", *data)[0] == 0
    assert check_login(tmp_path, "ann", "4711") == (None, "user disabled")

    code, token, err = _run(capsys, "tokens", "add", "mes", "--role", "qa", "--days", "30", *data)
    token = token.strip()
    assert code == 0 and token.startswith("lwt_") and "not shown again" in err
    code, listed, _ = _run(capsys, "tokens", "list", *data)
    token_id = token.split("_", 2)[1]
    assert listed.startswith(token_id) and " mes " in listed and token.split("_", 2)[2] not in listed
    assert _run(capsys, "tokens", "revoke", token_id, *data)[0] == 0
    assert "revoked" in _run(capsys, "tokens", "list", *data)[1]
    assert _run(capsys, "tokens", "revoke", token_id, *data)[0] == 2

    actions = [(a["action"], a["target"], a["outcome"]) for a in reversed(audit_rows(tmp_path))]
    assert [a[:2] for a in actions if a[2] == "ok"] == [("user_add", "ann"), ("user_passwd", "ann"),
                                                        ("user_disable", "ann"), ("token_add", token_id),
                                                        ("token_revoke", token_id)]
    assert all(a["actor"].startswith("cli:") for a in audit_rows(tmp_path))
    logged = json.dumps([{k: v for k, v in a.items() if k != "t_ns"} for a in audit_rows(tmp_path)])
    assert "4711" not in logged and token not in logged  # (a nanosecond timestamp may hold any four digits)


def test_the_web_app_serves_https_with_a_self_signed_certificate(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "tls", "self-signed", "--out", str(tmp_path / "tls"), "--host", "127.0.0.1")
    cert, key = tmp_path / "tls" / "linewatch.crt", tmp_path / "tls" / "linewatch.key"
    assert code == 0 and f"tls_cert: {cert}" in out and key.stat().st_mode & 0o777 == 0o600
    port = free_port()
    cfg = resolve_paths(parse_config({"data_dir": str(tmp_path / "data"), "api": {
        "port": port, "tls_cert": str(cert), "tls_key": str(key)}}))
    (cfg.run_dir / "ready").mkdir(parents=True)
    add_user(cfg.data_dir, "ann", "operator", "2580", cfg.security)
    stop = threading.Event()
    server = threading.Thread(target=Api(cfg, 0, stop).run, daemon=True)
    server.start()
    try:
        ready = wait_for(lambda: read_ready(cfg.run_dir).get("api"), 30, "the web app over TLS")
        assert ready["url"] == f"https://127.0.0.1:{port}"
        trust = ssl.create_default_context(cafile=str(cert))  # the certificate and its host name are checked
        with httpx.Client(base_url=ready["url"], verify=trust, timeout=10) as client:
            r = client.post("/api/session", json={"user": "ann", "secret": "2580"})
            assert r.status_code == 200 and "Secure" in r.headers["set-cookie"]
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):  # not a public CA's
            httpx.get(f"https://127.0.0.1:{port}/healthz", timeout=5)
    finally:
        stop.set()
        server.join(timeout=10)


def test_tls_needs_both_files() -> None:
    with pytest.raises(Exception, match="tls_cert and tls_key go together"):
        parse_config({"api": {"tls_cert": "/etc/linewatch/linewatch.crt"}})
