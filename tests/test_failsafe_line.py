"""The fail-safe in the whole line (real processes): a model file that turns corrupt mid-run, and a
worker that hangs past the deadline. Every frame still ends as exactly one safe row."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest

from tests.conftest import REFERENCE_MODEL, count_rows, db_rows, http_json, http_text, max_seq, metric, wait_for

pytestmark = pytest.mark.slow


def test_corrupt_model_file_mid_run_means_rules_only_then_recovery(line, tmp_path: Path) -> None:
    frames = 400
    model = tmp_path / "model.onnx"
    shutil.copy(REFERENCE_MODEL, model)
    ln = line(cameras=[{"name": "cam0", "fps": 40, "max_frames": frames}], model={"path": str(model)},
              failsafe={"model_health": {"reload_check_s": 0.2}}).start()
    wait_for(lambda: count_rows(ln.data_dir) >= 60, 60, "the first verdicts")
    assert http_json(f"{ln.url}/api/status")["rules_only"] is False

    (tmp_path / "half.onnx").write_bytes(REFERENCE_MODEL.read_bytes()[:20000])  # a copy cut short
    os.replace(tmp_path / "half.onnx", model)
    wait_for(lambda: db_rows(ln.data_dir, "SELECT 1 FROM inspections WHERE decided_by = 'rule:model_unavailable'"),
             30, "rules-only verdicts")
    status = http_json(f"{ln.url}/api/status")
    assert status["rules_only"] is True and "cannot load" in status["workers"][0]["fault"]
    assert metric(http_text(f"{ln.url}/metrics"), "linewatch_rules_only", worker="infer[0]") == 1
    wait_for(lambda: count_rows(ln.data_dir) >= 160, 60, "rules-only for a while")

    shutil.copy(REFERENCE_MODEL, tmp_path / "good.onnx")
    os.replace(tmp_path / "good.onnx", model)
    wait_for(lambda: not http_json(f"{ln.url}/api/status")["rules_only"], 30, "recovery")
    metrics = http_text(f"{ln.url}/metrics")
    assert metric(metrics, "linewatch_rules_only", worker="infer[0]") == 0
    assert metric(metrics, "linewatch_failsafe_overrides_total", rule="model_unavailable", final="FAIL") > 0
    wait_for(lambda: count_rows(ln.data_dir) >= frames, 60, f"{frames} rows")
    ln.stop()

    rows = db_rows(ln.data_dir, "SELECT seq, final, decided_by, reasons, ruleset_hash FROM inspections ORDER BY seq")
    assert [r["seq"] for r in rows] == list(range(frames)), "a sequence number is missing or repeated"
    down = [r["seq"] for r in rows if r["decided_by"] == "rule:model_unavailable"]
    window = [r for r in rows if down[0] <= r["seq"] <= down[-1]]
    assert len(down) >= 50
    assert all(r["final"] == "FAIL" for r in window), "nothing passes while the model is down"
    assert not [r for r in window if r["decided_by"] == "model"], "no model verdict from a half-loaded model"
    assert all(str(model) in json.loads(r["reasons"])[0] for r in rows if r["decided_by"] == "rule:model_unavailable")
    after = [r for r in rows if r["seq"] > down[-1]]
    assert len([r for r in after if r["decided_by"] == "model"]) > 20, "the good file brings the model back"
    assert all(r["ruleset_hash"] and len(r["ruleset_hash"]) == 64 for r in rows)
    alarms = {a["kind"] for a in db_rows(ln.data_dir, "SELECT kind FROM alarms")}
    assert {"model_unavailable", "model_recovered", "fail_streak"} <= alarms


def test_hung_worker_gives_timeout_fails_and_its_late_verdicts_are_ignored(line) -> None:
    frames = 300
    ln = line(cameras=[{"name": "cam0", "fps": 40, "max_frames": frames}], record={"deadline_ms": 800}).start()
    wait_for(lambda: count_rows(ln.data_dir) >= 60, 60, "the first verdicts")
    worker = ln.ready("infer")[0]["pid"]
    os.kill(worker, signal.SIGSTOP)  # hangs mid-stream, frames in its queue and in flight
    try:
        hung_at = max_seq(ln.data_dir)
        wait_for(lambda: db_rows(ln.data_dir, "SELECT seq FROM inspections WHERE decided_by = 'timeout'"), 15,
                 "the deadline watch to fail the parts the hung worker holds")
    finally:
        os.kill(worker, signal.SIGCONT)
    wait_for(lambda: count_rows(ln.data_dir) >= frames, 60, f"{frames} rows")
    late = metric(http_text(f"{ln.url}/metrics"), "linewatch_late_verdicts_total")
    ln.stop()

    rows = db_rows(ln.data_dir, "SELECT seq, final, decided_by, reasons FROM inspections ORDER BY seq")
    assert [r["seq"] for r in rows] == list(range(frames)), "a sequence number is missing or repeated"
    lost = [r for r in rows if r["decided_by"] in ("timeout", "not_inspected")]
    assert lost and all(r["final"] == "FAIL" and json.loads(r["reasons"]) for r in lost)
    assert min(r["seq"] for r in lost if r["decided_by"] == "timeout") > hung_at - 10
    assert late >= 1, "the frames the worker held were decided after their deadline, and ignored"
    assert [r for r in rows if r["decided_by"] == "model" and r["seq"] > max(x["seq"] for x in lost)], \
        "the resumed worker decides parts again"
    assert ln.ready("infer")[0]["pid"] == worker, "a hung worker is not a dead one: it was not restarted"


def test_hmi_shows_rules_only_mode(line, tmp_path: Path) -> None:
    from tests.test_hmi_browser import hmi_page

    model = tmp_path / "model.onnx"
    shutil.copy(REFERENCE_MODEL, model)
    ln = line(cameras=[{"name": "cam0", "fps": 20}], model={"path": str(model)},
              failsafe={"model_health": {"reload_check_s": 0.2}}).start()
    wait_for(lambda: count_rows(ln.data_dir) >= 10, 30, "the first verdicts")
    with hmi_page(ln.url) as page:
        assert page.locator("#rules-only").is_hidden()
        model.write_bytes(b"\x08\x07not a model" * 100)
        page.wait_for_selector("#rules-only", state="visible", timeout=20_000)
        assert page.locator("#rules-only").text_content() == "rules only"
        shutil.copy(REFERENCE_MODEL, tmp_path / "good.onnx")
        os.replace(tmp_path / "good.onnx", model)
        page.wait_for_selector("#rules-only", state="hidden", timeout=20_000)
    ln.stop()
