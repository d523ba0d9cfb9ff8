"""MQTT against a real broker (Debian mosquitto, started here): verdicts and alarms on their topics, the retained
status, a bounded and counted buffer while the broker is away, and the last will when the line dies."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from linewatch.api.app import create_app
from linewatch.config import parse_config
from linewatch.line.supervisor import prepare_run_dir, resolve_paths
from linewatch.store.delivery import read_state
from linewatch.store.rows import VIEW_COLUMNS
from linewatch.store.schema import open_writer
from tests.conftest import db_rows, free_ports, start_child, wait_for
from tests.notify_harness import Mosquitto, Subscriber, add_alarm, add_verdicts

FINALS = ["PASS", "FAIL", "REVIEW", "FAIL", "PASS"]


def seqs(sub: Subscriber) -> list[int]:
    return [payload["inspection"]["seq"] for payload, _ in sub.on("/cam0/verdict")]


def status(sub: Subscriber) -> list[tuple[dict[str, Any], bool]]:
    return sub.on("/status")


def test_mqtt_publishes_buffers_while_the_broker_is_away_and_leaves_its_last_will(tmp_path: Path) -> None:
    """Against a broker that refuses anonymous clients: the line logs in with its password file."""
    broker_port, api_port = free_ports(2)
    broker = Mosquitto(tmp_path, broker_port, users={"line1": "pw-of-the-line", "scada": "pw-of-scada"}).start()
    password = tmp_path / "mqtt.password"
    password.write_text("pw-of-the-line\n")
    password.chmod(0o600)
    cfg = resolve_paths(parse_config({"data_dir": str(tmp_path / "data"), "api": {"port": api_port}, "notify": {
        "poll_ms": 20, "mqtt": {"enabled": True, "port": broker_port, "username": "line1",
                                "password_file": str(password), "buffer": 20, "keepalive_s": 5,
                                "reconnect_min_s": 1, "reconnect_max_s": 1, "status_s": 0.2}}}))
    prepare_run_dir(cfg)
    db = open_writer(cfg.data_dir)
    add_verdicts(db, 0, ["PASS"] * 3)  # before the notifier: MQTT is the live feed, it starts at the newest
    scada = ("scada", "pw-of-scada")
    sub = Subscriber(broker_port, session="plant-historian", login=scada).start()
    notify = start_child("notify", "notify", cfg)
    try:
        wait_for(lambda: any(p["state"] == "online" for p, _ in status(sub)), 10, "the line's status online")
        link = wait_for(lambda: read_state(cfg.data_dir)[1], 5, "the link's state")
        assert link["connected"] == 1 and link["last_error"] is None  # logged in
        add_verdicts(db, 3, FINALS * 2)
        add_alarm(db, "fail_streak", "critical")
        wait_for(lambda: len(seqs(sub)) == 10 and sub.on("/line1/alarm"), 10, "ten verdicts and the alarm")
        assert seqs(sub) == list(range(3, 13))  # in store order, none of the rows from before
        payload, retained = sub.on("/line1/cam0/verdict")[0]
        assert not retained and payload["type"] == "verdict" and payload["id"] == "line1:verdict:cam0:s:3"
        assert list(payload["inspection"]) == list(VIEW_COLUMNS)  # the one inspection shape (row_to_api)
        alarm, _ = sub.on("/line1/alarm")[0]
        assert alarm["alarm"]["kind"] == "fail_streak" and alarm["alarm"]["severity"] == "critical"

        wait_for(lambda: status(sub)[-1][0].get("alarms_active") == 1, 5, "the status to count the active alarm")
        late = Subscriber(broker_port, "linewatch/line1/status", login=scada).start()  # a dashboard that opens later
        wait_for(lambda: status(late), 5, "the retained status")
        online, retained = status(late)[0]
        assert retained and online["state"] == "online" and online["alarms_active"] == 1
        assert "notify" not in online["processes_down"] and "record" in online["processes_down"]
        late.stop()

        broker.stop()  # the broker goes away; the line goes on recording
        wait_for(lambda: read_state(cfg.data_dir)[1]["connected"] == 0, 10, "the notifier to see the broker gone")
        add_verdicts(db, 13, ["FAIL"] * 50)
        wait_for(lambda: read_state(cfg.data_dir)[1]["dropped"] == 30, 10, "the buffer to overflow")
        assert read_state(cfg.data_dir)[1]["buffered"] == 20
        broker.start()  # the historian's session and its queued messages outlive the broker's restart
        wait_for(lambda: seqs(sub)[-1:] == [62], 15, "the buffered verdicts after the reconnect")
        assert seqs(sub) == [*range(3, 13), *range(43, 63)]  # the 20 newest kept, the 30 oldest dropped
        mqtt = read_state(cfg.data_dir)[1]
        wait_for(lambda: read_state(cfg.data_dir)[1]["buffered"] == 0, 5, "the buffer to empty")
        assert mqtt["connected"] == 1 and mqtt["dropped"] == 30

        notify.terminate()  # a clean stop says so itself
        notify.wait(timeout=10)
        wait_for(lambda: status(sub)[-1][0]["state"] == "offline", 10, "the stopped status")
        assert status(sub)[-1][0] == {"state": "offline", "line": "line1", "reason": "stopped"}
        add_verdicts(db, 63, FINALS * 5)  # 25 recorded while the notifier is down
        notify = start_child("notify", "notify", cfg)
        wait_for(lambda: status(sub)[-1][0]["state"] == "online", 10, "the line back online")
        wait_for(lambda: seqs(sub)[-1:] == [87], 10, "the verdicts recorded during the restart")
        # on from the last one the broker acknowledged, at most the buffer's 20: the 5 oldest dropped and counted
        assert seqs(sub)[-21:] == [62, *range(68, 88)]
        wait_for(lambda: read_state(cfg.data_dir)[1]["dropped"] == 5, 5, "the new process to count the 5 dropped")
        link = TestClient(create_app(cfg)).get("/api/notify").json()["mqtt"]
        assert link["enabled"] and link["connected"] and link["dropped"] == 5 and link["verdict_cursor"] == 88  # seq 87
        assert "pw-of-the-line" not in str(link)

        notify.send_signal(signal.SIGKILL)  # the line dies: the broker publishes its will
        notify.wait()
        wait_for(lambda: status(sub)[-1][0]["state"] == "offline", 10, "the last will")
        assert status(sub)[-1][0] == {"state": "offline", "line": "line1", "reason": "connection lost"}
        gone = Subscriber(broker_port, "linewatch/line1/status", login=scada).start()
        wait_for(lambda: status(gone), 5, "the retained will")
        assert status(gone)[0] == ({"state": "offline", "line": "line1", "reason": "connection lost"}, True)
        gone.stop()
    finally:
        if notify.poll() is None:
            notify.kill()
            notify.wait()
        sub.stop()
        broker.stop()
        db.close()


@pytest.mark.slow
def test_a_running_line_publishes_its_verdicts_and_its_will_when_killed(line: Any, tmp_path: Path) -> None:
    broker_port = free_ports(1)[0]
    broker = Mosquitto(tmp_path, broker_port).start()
    sub = Subscriber(broker_port).start()
    try:
        ln = line(notify={"mqtt": {"enabled": True, "port": broker_port}}).start()
        assert ln.ready("notify")
        wait_for(lambda: len(sub.on("/line1/cam0/verdict")) >= 5, 30, "verdicts from the running line")
        wait_for(lambda: any(p["state"] == "online" and not p["processes_down"] for p, _ in status(sub)), 10,
                 "the status of a line with every process up")
        first, _ = sub.on("/line1/cam0/verdict")[0]
        row = db_rows(ln.data_dir, "SELECT final, part_id FROM inspections WHERE camera = 'cam0' AND seq = ?",
                      (first["inspection"]["seq"],))
        assert row and (row[0]["final"], row[0]["part_id"]) == (first["inspection"]["final"],
                                                                first["inspection"]["part_id"])
        ln.kill_tree()  # SIGKILL to every process of the line
        wait_for(lambda: status(sub)[-1][0]["state"] == "offline", 10, "the line's last will")
        assert status(sub)[-1][0]["reason"] == "connection lost"
    finally:
        sub.stop()
        broker.stop()
