"""A real record process and its store: SIGKILL mid-write loses no committed row, lots set over REST
reach every following row, review decisions, kept images written off the commit loop, pruning."""

from __future__ import annotations

import json
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from linewatch.api.app import create_app
from linewatch.wire import (
    KIND_ALARM,
    KIND_VERDICT,
    KIND_VERDICTS,
    Alarm,
    FrameHeader,
    Verdict,
    decode_verdict_group,
    encode_frame,
    now_ns,
)
from tests.conftest import RecordRig, db_rows, wait_for


class Rig(RecordRig):
    """record with its `record` settings; the test listens to committed rows (`verdicts` events) only."""

    def __init__(self, tmp: Path, record: dict[str, Any]):
        super().__init__(tmp, record, events=KIND_VERDICTS)

    def verdict(self, seq: int, final: str = "PASS", stream: str = "s1") -> Verdict:
        t = now_ns()
        return Verdict("cam0", stream, seq, f"p{seq}", final, "model", reasons=["r"],  # type: ignore[arg-type]
                       t_capture_ns=t, t_sent_ns=t, probs={"good": 0.5, "defect": 0.5}, model_hash="ab" * 32)

    def rows(self, where: str = "1=1") -> list[sqlite3.Row]:
        return db_rows(self.cfg.data_dir, f"SELECT * FROM inspections WHERE {where} ORDER BY id")


@pytest.fixture
def rig(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Rig]:
    r = Rig(tmp_path, getattr(request, "param", {}))
    yield r
    r.close()
    r.ctx.term()


def test_sigkill_mid_write_loses_no_committed_row_and_passes_integrity_check(rig: Rig) -> None:
    acked: set[int] = set()
    stop = threading.Event()

    def listen() -> None:
        while True:
            if rig.sub.poll(100):
                _, payload = rig.sub.recv_multipart()
                acked.update(r["seq"] for r in decode_verdict_group(payload))
            elif stop.is_set():
                return  # after the kill: once the events already on the wire are read

    listener = threading.Thread(target=listen)
    listener.start()
    sent = 0
    try:
        while len(acked) < 3000 and sent < 200_000:  # SIGKILL while rows are still streaming in
            rig.push.send_multipart([KIND_VERDICT, rig.verdict(sent).to_bytes()])
            sent += 1
        rig.proc.send_signal(signal.SIGKILL)
        assert rig.proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        stop.set()
        listener.join()
    conn = sqlite3.connect(rig.cfg.data_dir / "linewatch.db")  # a writer: recovers the WAL like record would
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    stored = [r[0] for r in conn.execute("SELECT seq FROM inspections")]
    conn.close()
    assert len(acked) >= 3000
    assert acked <= set(stored), f"{len(acked - set(stored))} acknowledged row(s) lost"
    assert len(stored) == len(set(stored)) and len(stored) < sent  # killed mid-stream, no duplicates

    rig.start()  # the same store opens again and keeps recording
    rig.push.send_multipart([KIND_VERDICT, rig.verdict(0, "FAIL", stream="s2").to_bytes()])
    assert wait_for(lambda: rig.rows("stream = 's2'"), 10, "a row after restart")[0]["final"] == "FAIL"


def _client(rig: Rig, name: str = "op-7", role: str = "operator") -> TestClient:
    """A client signed in with an API token named `name` (audit actor `token:<name>`)."""
    from tests.api_harness import bearer

    return TestClient(create_app(rig.cfg), headers=bearer(rig.cfg.data_dir, role, name))


@pytest.mark.parametrize("rig", [{"image_format": "jpeg", "jpeg_quality": 80, "pass_sample_every": 2}],
                         indirect=True)
def test_lot_from_rest_reaches_rows_with_shift_and_images_are_kept_off_the_loop(rig: Rig) -> None:
    client = _client(rig)
    assert client.get("/api/lot").json()["lot"] is None
    r = client.put("/api/lot", json={"lot": "LOT-42"})
    assert r.status_code == 200 and r.json()["lot"] == "LOT-42" and r.json()["audit_id"] > 0
    pixels = np.random.default_rng(0).integers(0, 256, (48, 48), dtype=np.uint8)
    for seq, final in enumerate(["PASS", "PASS", "FAIL", "REVIEW"]):
        h = FrameHeader("cam0", "s1", seq, f"p{seq}", now_ns(), now_ns(), 48, 48, 1, "uint8", "Mono8")
        rig.push.send_multipart([KIND_VERDICT, rig.verdict(seq, final).to_bytes(), *encode_frame(h, pixels)])
    rows = wait_for(lambda: len(rig.rows()) == 4 and rig.rows(), 10, "four rows")
    assert {r["lot"] for r in rows} == {"LOT-42"}
    assert {r["shift"] for r in rows} <= {"early", "late", "night"} and rows[0]["shift"] == client.get(
        "/api/lot").json()["shift"]
    kept = {r["seq"]: r["image"] for r in rows}
    assert kept[1] is None and all(kept[s].endswith(".jpg") for s in (0, 2, 3))  # PASS 1 in 2; FAIL/REVIEW always
    for s in (0, 2, 3):
        path = rig.cfg.data_dir / kept[s]
        wait_for(path.exists, 5, "the image file")
        img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        assert img.shape == (48, 48) and np.abs(img.astype(int) - pixels).mean() < 40
    assert client.post("/api/lot", json={"lot": "LOT-43"}).status_code == 200
    rig.push.send_multipart([KIND_VERDICT, rig.verdict(10).to_bytes()])
    assert wait_for(lambda: rig.rows("seq = 10"), 10, "row 10")[0]["lot"] == "LOT-43"
    audit = db_rows(rig.cfg.data_dir, "SELECT actor, action, detail FROM operator_actions ORDER BY id")
    assert [(a["actor"], json.loads(a["detail"])["lot"]) for a in audit] == [("token:op-7", "LOT-42"),
                                                                             ("token:op-7", "LOT-43")]
    for bad in ({"lot": ""}, {"lot": " L"}, {"lot": "L", "actor": "x"}, {}):  # a body actor is refused
        assert client.put("/api/lot", json=bad).status_code == 422

    rig.close()  # the lot outlives a restart of record
    rig.start()
    rig.push.send_multipart([KIND_VERDICT, rig.verdict(11).to_bytes()])
    assert wait_for(lambda: rig.rows("seq = 11"), 10, "row 11")[0]["lot"] == "LOT-43"


def test_review_decision_over_rest_is_stored_and_audited(rig: Rig) -> None:
    client = _client(rig, "qa-1")
    rig.push.send_multipart([KIND_VERDICT, rig.verdict(0, "REVIEW").to_bytes()])
    row = wait_for(lambda: rig.rows(), 10, "the row")[0]
    r = client.post(f"/api/inspections/{row['id']}/review",
                    json={"decision": "FAIL", "label": "scratch", "note": "edge"})
    assert r.status_code == 200, r.text
    stored = db_rows(rig.cfg.data_dir, "SELECT * FROM review_decisions")
    assert [(s["inspection_id"], s["decision"], s["label"], s["reviewer"], s["note"]) for s in stored] == [
        (row["id"], "FAIL", "scratch", "token:qa-1", "edge")]
    assert db_rows(rig.cfg.data_dir, "SELECT action FROM operator_actions")[0]["action"] == "review"
    assert client.post("/api/inspections/999/review", json={"decision": "PASS"}).status_code == 404
    assert client.post(f"/api/inspections/{row['id']}/review", json={"decision": "MAYBE"}).status_code == 422
    assert client.post(f"/api/inspections/{row['id']}/review",
                       json={"decision": "PASS", "reviewer": "q"}).status_code == 422  # no forged reviewer
    rig.push.send_multipart([KIND_ALARM, Alarm("test", "demo", "look here").to_bytes()])
    alarm = wait_for(lambda: db_rows(rig.cfg.data_dir, "SELECT id FROM alarms"), 10, "the alarm")[0]
    r = _client(rig, "shift-lead").post(f"/api/alarms/{alarm['id']}/ack")
    assert r.status_code == 200, r.text
    assert client.get("/api/alarms", params={"active": True}).json() == []
    assert client.get("/api/alarms").json()[0]["acknowledged_by"] == "token:shift-lead"
    assert client.post(f"/api/alarms/{alarm['id']}/ack").status_code == 404  # once
    rig.close()  # record gone: the api says so instead of pretending
    r = client.post(f"/api/inspections/{row['id']}/review", json={"decision": "PASS"})
    assert r.status_code == 503 and "did not confirm" in r.json()["detail"]


@pytest.mark.parametrize("rig", [{"image_quota_mb": 0.05, "retention_interval_s": 0.2, "pass_sample_every": 1,
                                  "disk_low_free_mb": 0}], indirect=True)
def test_record_prunes_pass_samples_over_quota_and_marks_their_rows(rig: Rig) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)  # ~4 kB PNG each
    for seq in range(30):
        final = "FAIL" if seq % 5 == 0 else "PASS"
        h = FrameHeader("cam0", "s1", seq, f"p{seq}", now_ns(), now_ns(), 64, 64, 1, "uint8", "Mono8")
        rig.push.send_multipart([KIND_VERDICT, rig.verdict(seq, final).to_bytes(), *encode_frame(h, noise)])
    rows = wait_for(lambda: [r for r in rig.rows() if r["image_pruned_ns"]] and rig.rows(), 10, "pruned rows")
    time.sleep(0.5)
    rows = rig.rows()
    pruned = [r for r in rows if r["image_pruned_ns"]]
    assert pruned and all(r["final"] == "PASS" for r in pruned)
    assert all((rig.cfg.data_dir / r["image"]).exists() for r in rows if r["final"] == "FAIL")
    assert not any((rig.cfg.data_dir / r["image"]).exists() for r in pruned)
    kept_pass = [r["seq"] for r in rows if r["final"] == "PASS" and not r["image_pruned_ns"]]
    assert max(r["seq"] for r in pruned) < min(kept_pass)  # oldest first


@pytest.mark.parametrize("rig", [{"disk_low_free_mb": 1e12, "retention_interval_s": 0.1}], indirect=True)
def test_disk_low_alarm_reaches_the_store_once(rig: Rig) -> None:
    alarms = wait_for(lambda: db_rows(rig.cfg.data_dir, "SELECT * FROM alarms"), 10, "the disk_low alarm")
    time.sleep(0.5)  # several retention passes: still one alarm while the condition holds
    alarms = db_rows(rig.cfg.data_dir, "SELECT * FROM alarms")
    assert [(a["kind"], a["severity"], a["t_cleared_ns"]) for a in alarms] == [("disk_low", "critical", None)]
    assert "free on the data disk" in alarms[0]["message"]
