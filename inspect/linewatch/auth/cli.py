"""`linewatch users`, `linewatch tokens` and `linewatch tls self-signed`; the first admin at the first start.

Every change is written to the audit log under the account that ran the command (its OS user name).
A PIN or password is read from the terminal without echo, or from a file (`--secret-file`), never
from the command line, where other users could read it in the process list.
"""

from __future__ import annotations

import argparse
import getpass
import hashlib
import secrets
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from linewatch.auth.accounts import AccountError, add_token, add_user, disable_user, revoke_token, set_secret
from linewatch.auth.accounts import tokens as token_rows
from linewatch.auth.accounts import users as user_rows
from linewatch.auth.db import audit, private_file
from linewatch.auth.roles import ROLES
from linewatch.config import LineConfig, load_config
from linewatch.reports.cli import _store_args

FIRST_ADMIN = "admin"
INITIAL_PASSWORD_FILE = "initial-admin-password"


def _cfg(args: argparse.Namespace) -> LineConfig:
    cfg = load_config(args.config)
    return cfg.model_copy(update={"data_dir": Path(args.data_dir)}) if args.data_dir else cfg


def _who() -> str:
    return f"cli:{getpass.getuser()}"


def _secret(args: argparse.Namespace, what: str) -> str:
    if args.secret_file:
        return str(Path(args.secret_file).read_text().strip())
    first = getpass.getpass(f"{what}: ")
    if getpass.getpass(f"{what} again: ") != first:
        raise AccountError("the two entries differ")
    return first


def _when(ns: int | None) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%SZ") if ns else "-"


def _cmd_users(args: argparse.Namespace) -> int:
    cfg = _cfg(args)
    data_dir, action = cfg.data_dir, args.users_command
    try:
        if action == "list":
            for u in user_rows(data_dir):
                print(f"{u['name']:<20} {u['role']:<9} {u['secret_kind']:<8} "
                      f"{'disabled' if u['disabled'] else 'enabled':<8} changed {_when(u['changed_ns'])}")
            return 0
        if action == "add":
            add_user(data_dir, args.name, args.role, _secret(args, "PIN" if args.role == "operator" else "password"),
                     cfg.security)
            detail: dict[str, Any] = {"role": args.role}
        elif action == "passwd":
            detail = {"sessions_ended": set_secret(data_dir, args.name, _secret(args, "new PIN or password"),
                                                   cfg.security)}
        else:
            detail = {"sessions_ended": disable_user(data_dir, args.name)}
    except (AccountError, OSError) as exc:
        audit(data_dir, _who(), f"user_{action}", f"refused: {exc}", target=args.name)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    audit(data_dir, _who(), f"user_{action}", "ok", target=args.name, detail=detail)
    print(f"user {args.name}: {action} done")
    return 0


def _cmd_tokens(args: argparse.Namespace) -> int:
    data_dir = _cfg(args).data_dir
    try:
        if args.tokens_command == "list":
            for t in token_rows(data_dir):
                state = "revoked" if t["revoked_ns"] else f"expires {_when(t['expires_ns'])}"
                print(f"{t['id']}  {t['name']:<20} {t['role']:<9} {state}  by {t['created_by']}")
            return 0
        if args.tokens_command == "add":
            token_id, token = add_token(data_dir, args.name, args.role, args.days, _who())
            audit(data_dir, _who(), "token_add", "ok", target=token_id,
                  detail={"name": args.name, "role": args.role, "days": args.days})
            print(token)  # shown this once: the database keeps its hash
            print(f"token {token_id} ({args.role}, {args.days:g} days): keep it now, it is not shown again",
                  file=sys.stderr)
            return 0
        revoke_token(data_dir, args.id)
    except AccountError as exc:
        audit(data_dir, _who(), f"token_{args.tokens_command}", f"refused: {exc}", target=getattr(args, "id", ""))
        print(f"error: {exc}", file=sys.stderr)
        return 2
    audit(data_dir, _who(), "token_revoke", "ok", target=args.id)
    print(f"token {args.id} revoked")
    return 0


def ensure_first_admin(cfg: LineConfig) -> None:
    """No users yet: make `admin`, with the password from `security.first_admin_password_file`, or a generated
    one printed once on a terminal (under a service manager: written to a 0600 file whose path is printed)."""
    if user_rows(cfg.data_dir):
        return
    source = cfg.security.first_admin_password_file
    password = source.read_text().strip() if source else secrets.token_urlsafe(15)
    add_user(cfg.data_dir, FIRST_ADMIN, "admin", password, cfg.security)
    audit(cfg.data_dir, _who(), "user_add", "ok", target=FIRST_ADMIN, detail={"role": "admin", "first_start": True})
    if source:
        print(f"first start: user {FIRST_ADMIN!r} made with the password in {source}", file=sys.stderr)
    elif sys.stderr.isatty():
        print(f"first start: sign in as {FIRST_ADMIN!r} with password {password} (shown once)", file=sys.stderr)
    else:
        path = private_file(cfg.data_dir / INITIAL_PASSWORD_FILE, (password + "\n").encode())
        print(f"first start: user {FIRST_ADMIN!r} made; its password is in {path} (mode 0600): "
              "sign in, change it, delete the file", file=sys.stderr)


def audit_line_start(cfg: LineConfig, model: str, model_sha256: str) -> None:
    """The config and model the line starts with, as an audit row: a change between two starts shows as a new
    hash (what changed is in the config file's own history)."""
    config_sha = hashlib.sha256(cfg.model_dump_json().encode()).hexdigest()
    audit(cfg.data_dir, _who(), "line_start", "ok", target=cfg.line,
          detail={"config_sha256": config_sha, "recipe": cfg.recipe, "model": model, "model_sha256": model_sha256})


def _cmd_tls(args: argparse.Namespace) -> int:
    """A self-signed certificate and key (ECDSA P-256) for a first start, by the openssl command."""
    out, hosts = Path(args.out), args.host or ["localhost", "127.0.0.1"]
    out.mkdir(parents=True, exist_ok=True)
    key, cert = out / "linewatch.key", out / "linewatch.crt"
    private_file(key)
    names = ",".join(f"IP:{h}" if h.replace(".", "").isdigit() or ":" in h else f"DNS:{h}" for h in hosts)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", str(args.days), "-subj", f"/CN={hosts[0]}",
                    "-addext", f"subjectAltName={names}"], check=True, capture_output=True)
    key.chmod(0o600)
    print(f"api:\n  tls_cert: {cert}\n  tls_key: {key}")
    return 0


def add_commands(sub: Any) -> None:
    users = sub.add_parser("users", help="sign-in accounts: add, list, passwd, disable")
    usub = users.add_subparsers(dest="users_command", required=True)
    for name, text in (("add", "add a user (operators get a PIN, others a password)"), ("list", "list users"),
                       ("passwd", "set a user's PIN or password (ends its sessions)"),
                       ("disable", "stop a user signing in (ends its sessions)")):
        p = usub.add_parser(name, help=text)
        if name != "list":
            p.add_argument("name")
        if name == "add":
            p.add_argument("--role", choices=ROLES, required=True)
        if name in ("add", "passwd"):
            p.add_argument("--secret-file", help="read the PIN or password from this file instead of the terminal")
        _store_args(p)
        p.set_defaults(func=_cmd_users)

    toks = sub.add_parser("tokens", help="API tokens of machine clients: add, list, revoke")
    tsub = toks.add_subparsers(dest="tokens_command", required=True)
    add = tsub.add_parser("add", help="make a token (printed once)")
    add.add_argument("name")
    add.add_argument("--role", choices=ROLES, required=True)
    add.add_argument("--days", type=float, default=90.0, help="valid this many days (default 90)")
    listed = tsub.add_parser("list", help="list tokens (never their secrets)")
    rev = tsub.add_parser("revoke", help="revoke a token by id")
    rev.add_argument("id")
    for p in (add, listed, rev):
        _store_args(p)
        p.set_defaults(func=_cmd_tokens)

    tls = sub.add_parser("tls", help="TLS for the web app")
    tls_sub = tls.add_subparsers(dest="tls_command", required=True)
    self_signed = tls_sub.add_parser("self-signed", help="make a self-signed certificate and key for a first start")
    self_signed.add_argument("--out", required=True, help="folder for linewatch.crt and linewatch.key")
    self_signed.add_argument("--host", action="append", default=[], help="host name or address (repeatable)")
    self_signed.add_argument("--days", type=int, default=825)
    self_signed.set_defaults(func=_cmd_tls)
