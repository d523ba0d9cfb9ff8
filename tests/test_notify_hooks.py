"""HTTP hooks against a real receiver that fails, goes away and comes back, with the notify process killed
(SIGKILL) and restarted on the way: every event arrives once per key, in store order, signed."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from linewatch.config import ConfigError, LineConfig, parse_config, to_json
from linewatch.line.supervisor import prepare_run_dir, resolve_paths
from linewatch.notify.hooks import SIGNATURE_HEADER, HookSender, sign
from linewatch.store.delivery import DeliveryState, read_state
from linewatch.store.rows import VIEW_COLUMNS
from linewatch.store.schema import open_writer
from linewatch.wire.ready import line_children
from tests.conftest import REPO, db_rows, free_ports, http_json, http_text, metric, start_child, wait_for
from tests.notify_harness import Receiver, add_alarm, add_verdicts

SECRET = b"s3cret-only-the-receiver-knows"
FINALS = ["PASS", "FAIL", "REVIEW", "FAIL", "PASS"]


def hook_line(tmp: Path, receiver_port: int, api_port: int) -> LineConfig:
    secret = tmp / "hook.secret"
    secret.write_bytes(SECRET + b"\n")
    secret.chmod(0o600)
    retry = {"secret_file": str(secret), "start": "first", "retry_initial_s": 0.05, "retry_max_s": 0.4,
             "timeout_s": 2}
    url = f"http://127.0.0.1:{receiver_port}/linewatch"
    cfg = parse_config({"data_dir": str(tmp / "data"), "api": {"port": api_port}, "notify": {"poll_ms": 20, "hooks": [
        {"name": "mes", "url": url, "finals": ["FAIL"], **retry},
        {"name": "andon", "event": "alarm", "url": url, "severities": ["critical"], **retry}]}})
    cfg = resolve_paths(cfg)
    prepare_run_dir(cfg)
    return cfg


def expected_keys(cfg: LineConfig) -> tuple[list[str], list[str]]:
    fails = db_rows(cfg.data_dir, "SELECT seq FROM inspections WHERE final = 'FAIL' ORDER BY id")
    alarms = db_rows(cfg.data_dir, "SELECT id, t_ns FROM alarms WHERE severity = 'critical' ORDER BY id")
    return ([f"line1:verdict:cam0:s:{r['seq']}" for r in fails], [f"line1:alarm:{r['id']}:{r['t_ns']}" for r in alarms])


def taken(receiver: Receiver, kind: str) -> list[str]:
    return [b["id"] for b in list(receiver.taken) if b["type"] == kind]


def once_each(keys: list[str]) -> list[str]:
    """The receiver's view after dropping repeats by idempotency key (what the key is for)."""
    seen: set[str] = set()
    return [k for k in keys if not (k in seen or seen.add(k))]  # type: ignore[func-returns-value]


def test_hooks_deliver_every_event_once_in_order_through_failures_an_outage_and_restarts(tmp_path: Path) -> None:
    receiver_port, api_port = free_ports(2)
    cfg = hook_line(tmp_path, receiver_port, api_port)
    db = open_writer(cfg.data_dir)
    add_verdicts(db, 0, FINALS * 6)
    add_alarm(db, "fail_streak", "critical")
    add_alarm(db, "disk_low", "warning")  # filtered out: warnings are not the andon's
    receiver = Receiver(receiver_port, SECRET, fail_first=3, delay_s=0.05).start()
    notify = start_child("notify", "notify", cfg)
    try:
        wait_for(lambda: len(taken(receiver, "verdict")) >= 5, 15, "the first FAIL verdicts")
        assert receiver.failed == 3  # the first attempts (of either hook) were answered 500 and retried

        receiver.stop()  # the receiver goes away; the line goes on recording
        add_verdicts(db, 30, FINALS * 6)
        add_alarm(db, "process_restart", "critical")
        wait_for(lambda: (read_state(cfg.data_dir)[0]["mes"]["last_error"] or "").startswith("cannot connect"),
                 10, "the hook to record the refused connection")
        notify.send_signal(signal.SIGKILL)  # and the notifier dies while the receiver is away
        notify.wait()
        notify = start_child("notify", "notify", cfg)
        add_verdicts(db, 60, FINALS * 6)

        receiver.fail_left = 2
        receiver.start()  # back: failing twice more, then taking events
        wait_for(lambda: len(taken(receiver, "verdict")) >= 25, 15, "delivery to resume")
        notify.send_signal(signal.SIGKILL)  # killed mid-stream, between any answer and its cursor's move
        notify.wait()
        notify = start_child("notify", "notify", cfg)
        add_verdicts(db, 90, FINALS * 6)

        fails, criticals = expected_keys(cfg)
        assert len(fails) == 48 and len(criticals) == 2
        wait_for(lambda: once_each(taken(receiver, "verdict")) == fails
                 and once_each(taken(receiver, "alarm")) == criticals, 20, "every event")
        got = taken(receiver, "verdict")
        repeats = [k for i, k in enumerate(got) if k in got[:i]]
        # a repeat only where the notifier was killed after the receiver's answer: the one event in flight, at once
        assert len(repeats) <= 1 and all(got[got.index(k) + 1] == k for k in repeats), repeats
        assert receiver.refused == []  # every request carried a valid signature, a fresh timestamp and its key
        assert taken(receiver, "alarm") == criticals

        first = next(b for b in receiver.taken if b["type"] == "verdict")
        assert first["line"] == "line1" and first["hook"] == "mes"
        assert list(first["inspection"]) == list(VIEW_COLUMNS)  # the one inspection shape (row_to_api)
        assert first["inspection"]["final"] == "FAIL"

        last = db_rows(cfg.data_dir, "SELECT max(id) AS m FROM inspections")[0]["m"]
        wait_for(lambda: read_state(cfg.data_dir)[0]["mes"]["cursor"] == last, 5, "the cursor at the last row")
        api = start_child("api", "api", cfg)
        try:
            state = http_json(f"http://127.0.0.1:{api_port}/api/notify")
            text = http_text(f"http://127.0.0.1:{api_port}/metrics")
        finally:
            api.terminate()
            api.wait(timeout=10)
        mes = next(h for h in state["hooks"] if h["name"] == "mes")
        assert mes["last_key"] == fails[-1] and mes["last_error"] is None and mes["failing_since_ns"] is None
        assert mes["failures"] >= 1 and mes["skipped"] == 72  # the PASS and REVIEW rows, each counted once
        assert SECRET.decode() not in str(state) and "url" not in mes
        # counted once per event taken: a repeat's first answer never reached the killed notifier; the kill may
        # also land between a cursor's move and its count, and leave that one event uncounted
        assert len(fails) - 1 <= metric(text, "linewatch_hook_delivered_total", hook="mes") <= len(fails)
        assert metric(text, "linewatch_hook_failures_total", reason="http_5xx") == receiver.failed == 5
        assert metric(text, "linewatch_hook_failures_total", hook="mes", reason="connection") >= 1
    finally:
        notify.terminate()
        notify.wait(timeout=10)
        receiver.stop() if receiver._server else None
        db.close()


def test_a_receiver_too_slow_to_answer_gets_the_event_again_under_the_same_key(tmp_path: Path) -> None:
    receiver_port, api_port = free_ports(2)
    cfg = hook_line(tmp_path, receiver_port, api_port)
    hooks = [cfg.notify.hooks[0].model_copy(update={"timeout_s": 0.3})]
    cfg = cfg.model_copy(update={"notify": cfg.notify.model_copy(update={"hooks": hooks})})
    (cfg.run_dir / "config.json").write_text(to_json(cfg))
    db = open_writer(cfg.data_dir)
    add_verdicts(db, 0, ["FAIL"] * 3)
    receiver = Receiver(receiver_port, SECRET, stall_first=1, stall_s=1.0).start()
    notify = start_child("notify", "notify", cfg)
    try:
        keys = [f"line1:verdict:cam0:s:{seq}" for seq in range(3)]
        # the receiver keeps the first event but answers too late: it comes again, and its key tells it so
        wait_for(lambda: len(taken(receiver, "verdict")) == 4, 10, "the three events and the repeat")
        got = taken(receiver, "verdict")
        assert once_each(got) == keys and sorted(got) == sorted([keys[0], *keys])
        mes = read_state(cfg.data_dir)[0]["mes"]
        assert mes["failures"] == 1 and mes["last_key"] == keys[-1]
    finally:
        notify.terminate()
        notify.wait(timeout=10)
        receiver.stop()
        db.close()


def test_a_new_store_behind_an_old_cursor_is_delivered_from_its_first_event(tmp_path: Path) -> None:
    """The data disk was replaced, notify.db kept: the cursor is past every id of the new store."""
    receiver_port, api_port = free_ports(2)
    cfg = hook_line(tmp_path, receiver_port, api_port)
    state = DeliveryState(cfg.data_dir)
    state.cursor("mes", "verdict", 5000)
    state.close()
    db = open_writer(cfg.data_dir)
    add_verdicts(db, 0, ["FAIL"] * 3)
    db.close()
    receiver = Receiver(receiver_port, SECRET).start()
    stop = threading.Event()
    sender = threading.Thread(target=HookSender(cfg, cfg.notify.hooks[0], SECRET, stop).run)
    sender.start()
    try:
        wait_for(lambda: len(taken(receiver, "verdict")) == 3, 10, "the new store's events")
        assert taken(receiver, "verdict") == [f"line1:verdict:cam0:s:{seq}" for seq in range(3)]
    finally:
        stop.set()
        sender.join(timeout=10)
        receiver.stop()


def test_a_secret_file_others_can_read_stops_the_notifier_naming_it(tmp_path: Path) -> None:
    receiver_port, api_port = free_ports(2)
    cfg = hook_line(tmp_path, receiver_port, api_port)
    open_writer(cfg.data_dir).close()
    secret = tmp_path / "hook.secret"
    secret.chmod(0o644)
    out = subprocess.run([sys.executable, "-m", "linewatch", "child", "notify", "0", "--run-dir", str(cfg.run_dir)],
                         capture_output=True, text=True, timeout=30, env={**os.environ, "PROMETHEUS_MULTIPROC_DIR":
                                                                          str(cfg.run_dir / "metrics")})
    assert out.returncode == 2
    assert f"secret file {secret} has mode 0644" in out.stderr and "chmod 600" in out.stderr
    assert SECRET.decode() not in out.stderr


@pytest.mark.parametrize(("hook", "problem"), [
    ({"url": "http://h/x"}, "give exactly one of secret_file, secret_env"),
    ({"url": "http://h/x", "secret_env": "A", "secret_file": "/s"}, "give exactly one of secret_file, secret_env"),
    ({"url": "ftp://h/x", "secret_env": "A"}, "notify.hooks[0].url: must match"),
    ({"url": "http://h/x", "secret_env": "A", "cameras": ["cam9"]}, "cameras the line does not have: cam9"),
    ({"url": "http://h/x", "secret_env": "A", "retry_initial_s": 10, "retry_max_s": 1}, "must not exceed"),
    ({"url": "http://h/x", "secret_env": "A", "finals": ["MAYBE"]}, "notify.hooks[0].finals[0]"),
])
def test_bad_hook_configs_are_refused_naming_the_problem(hook: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"notify": {"hooks": [hook]}})
    assert problem in str(err.value)


def test_the_notify_process_runs_only_when_a_hook_or_mqtt_is_configured() -> None:
    hook = {"url": "http://h/x", "secret_env": "A"}
    assert "notify" not in [role for role, _ in line_children(parse_config({}))]
    for notify in ({"hooks": [hook]}, {"mqtt": {"enabled": True}}):
        roles = [role for role, _ in line_children(parse_config({"notify": notify}))]
        assert roles[-2:] == ["notify", "acquire"]  # up before the frames flow


def test_a_broker_password_needs_a_user() -> None:
    with pytest.raises(ConfigError, match=r"mqtt\.password_file needs mqtt\.username"):
        parse_config({"notify": {"mqtt": {"enabled": True, "password_file": "/etc/pw"}}})


def test_hook_names_are_unique() -> None:
    hook = {"url": "http://h/x", "secret_env": "A"}
    with pytest.raises(ConfigError, match="hook names must be unique, repeated: hook"):
        parse_config({"notify": {"hooks": [hook, hook]}})


def test_the_documented_receiver_check_accepts_linewatch_s_signature_and_refuses_tampering() -> None:
    """docs/integrations.md's verification snippet, run as printed, against linewatch's own signing."""
    doc = (REPO / "docs" / "integrations.md").read_text()
    snippet = re.search(r"```python\n(.*?)```", doc, re.S)
    assert snippet, "docs/integrations.md: a ```python verification snippet"
    scope: dict[str, Any] = {}
    exec(snippet.group(1), scope)
    verify = scope["verify"]
    body, now = b'{"id":"line1:verdict:cam0:s:7","type":"verdict"}', 1_790_000_000
    header = sign(SECRET, now, body)
    assert SIGNATURE_HEADER in doc
    assert verify(SECRET, header, body, now=now + 10)
    assert not verify(SECRET, header, body.replace(b"7", b"8"), now=now)  # a changed body
    assert not verify(b"other", header, body, now=now)  # another key
    assert not verify(SECRET, header, body, now=now + 301)  # a replay after the window
    assert not verify(SECRET, "t=1790000000", body, now=now)  # no signature at all


def test_a_receiver_down_too_long_raises_one_hook_down_alarm_that_an_alarm_hook_delivers(tmp_path: Path) -> None:
    receiver_port, api_port = free_ports(2)
    cfg = hook_line(tmp_path, receiver_port, api_port)
    hooks = [h.model_copy(update={"alarm_after_s": 1.0, "severities": ("warning", "critical")})
             for h in cfg.notify.hooks]  # hook_down is a warning
    cfg = cfg.model_copy(update={"notify": cfg.notify.model_copy(update={"hooks": hooks})})
    (cfg.run_dir / "config.json").write_text(to_json(cfg))
    db = open_writer(cfg.data_dir)
    add_verdicts(db, 0, ["FAIL"])
    db.close()  # from here record is the store's one writer
    record = start_child("record", "record", cfg)
    notify = start_child("notify", "notify", cfg)
    receiver = Receiver(receiver_port, SECRET)
    try:
        down = wait_for(lambda: db_rows(cfg.data_dir, "SELECT * FROM alarms WHERE kind = 'hook_down'"), 15,
                        "the hook_down alarm")
        assert down[0]["source"] == "notify" and down[0]["message"].startswith("hook mes: no delivery for ")
        receiver.start()
        wait_for(lambda: taken(receiver, "verdict") and taken(receiver, "alarm"), 15, "the events after the outage")
        assert taken(receiver, "verdict") == ["line1:verdict:cam0:s:0"]
        alarm = next(b["alarm"] for b in receiver.taken if b["type"] == "alarm")
        assert alarm["kind"] == "hook_down" and alarm["message"] == down[0]["message"]
        messages = [r["message"] for r in db_rows(cfg.data_dir, "SELECT message FROM alarms WHERE kind = 'hook_down'")]
        assert len([m for m in messages if m.startswith("hook mes:")]) == 1  # once per outage, not per attempt
    finally:
        for proc in (notify, record):
            proc.terminate()
            proc.wait(timeout=10)
        if receiver._server:
            receiver.stop()
