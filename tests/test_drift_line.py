"""The drift watch on a real line: a stationary run learns its reference and raises nothing; a lighting step
raises one drift alarm naming the camera, signal, values and window, sets the PLC's drift bit and the metric, and
changes no verdict; acknowledging it clears the bit. The reference survives a restart."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import pytest
import yaml
from pymodbus.client import ModbusTcpClient

from linewatch.plc import register_map as pm
from tests.api_harness import bearer
from tests.conftest import count_rows, db_rows, http_text, metric, wait_for

pytestmark = pytest.mark.slow
DRIFT_BIT = 1 << pm.STATUS_BITS["drift"]
WATCH = {"reference_parts": 1000, "state_interval_s": 0.3}
PERIOD_S = 0.5  # the round-part scene's conveyor brings a part every 60 mm / 120 mm/s


def _scene(tmp_path: Path, scenarios: list[dict[str, object]]) -> Path:
    """The round-part scene without its own drifts, with `scenarios` instead (scene time: PERIOD_S a part)."""
    scene = yaml.safe_load((Path(__file__).parents[1] / "cameras/scenes/round-part.yaml").read_text())
    scene["camera"].update(drift=0.0, drop_rate=0.0, incomplete_rate=0.0)
    scene["scenarios"] = scenarios
    path = tmp_path / "scene.yaml"
    path.write_text(yaml.safe_dump(scene))
    return path


def _post(url: str, headers: dict[str, str]) -> dict[str, object]:
    req = urllib.request.Request(url, method="POST", headers=headers)
    with urllib.request.urlopen(req, timeout=5) as r:
        assert r.status == 200
        answer: dict[str, object] = json.loads(r.read())
        return answer


def _status(port: int) -> int:
    client = ModbusTcpClient("127.0.0.1", port=port)
    assert client.connect()
    try:
        reply = client.read_input_registers(0, count=1)
        assert not reply.isError(), reply
        return int(reply.registers[0])
    finally:
        client.close()


def test_stationary_run_learns_a_reference_and_raises_no_drift(line, tmp_path: Path) -> None:
    frames = 1600
    ln = line(cameras=[{"name": "cam0", "fps": 100, "max_frames": frames}], watch=WATCH).start()
    wait_for(lambda: count_rows(ln.data_dir) >= frames, 90, f"{frames} verdicts")
    wait_for(lambda: db_rows(ln.data_dir, "SELECT 1 FROM drift_state WHERE signal = 'brightness'"), 10,
             "the detectors' state")
    refs = db_rows(ln.data_dir, "SELECT * FROM drift_references")
    assert len(refs) == 1 and refs[0]["camera"] == "cam0" and refs[0]["parts"] == 1000
    signals = json.loads(refs[0]["reference"])["signals"]
    assert {"brightness", "contrast", "sharpness", "part_x", "part_y", "part_size", "score", "defect_rate",
            "override_rate"} <= set(signals)
    assert 20 < signals["brightness"]["mean"] < 220 and signals["brightness"]["h_up"] > 5
    assert signals["brightness"]["source"] == "model" and signals["part_x"]["source"] == "learned"
    row = db_rows(ln.data_dir, "SELECT signals FROM inspections WHERE decided_by = 'model' LIMIT 1")[0]
    assert set(json.loads(row["signals"])) >= {"brightness", "contrast", "sharpness", "saturation"}
    assert not db_rows(ln.data_dir, "SELECT message FROM alarms WHERE kind = 'drift'")
    text = http_text(f"{ln.url}/metrics")
    assert 0 < metric(text, "linewatch_estimated_defect_rate", camera="cam0") < 1
    assert 0.5 < metric(text, "linewatch_estimated_accuracy", camera="cam0") <= 1
    assert metric(text, "linewatch_watch_cpu_seconds_total", process="record") > 0
    assert metric(text, "linewatch_drift_active", camera="cam0", signal="brightness") == 0
    assert _status(ln.plc_port) & DRIFT_BIT == 0
    assert ln.stop() < 5.0


def test_lighting_step_raises_a_drift_alarm_sets_the_plc_bit_and_changes_no_verdict(line, tmp_path: Path) -> None:
    fps, step_at = 80, 1100  # the step comes once the 1,000-part reference is learnt and calibrated
    scene = _scene(tmp_path, [{"at_s": step_at * PERIOD_S, "lighting": 0.9}])
    ln = line(cameras=[{"name": "cam0", "fps": fps, "max_frames": 1500,
                        "source": {"type": "emulator", "scene": str(scene)}}],
              watch={**WATCH, "reference": "learned"}).start()  # the reference model saw another part in training
    alarm = wait_for(lambda: db_rows(ln.data_dir, "SELECT a.id, a.message, d.* FROM alarms a JOIN drift_alarms d "
                                                  "ON d.alarm_id = a.id WHERE d.signal = 'brightness'"), 60,
                     "a brightness drift alarm")[0]
    assert re.fullmatch(rf"drift: camera cam0, brightness mean {alarm['reference']:.3g} -> {alarm['current']:.3g} "
                        rf"\(-(9|10|11) %\), CUSUM over {alarm['window_parts']} parts \(recipe default, reference of "
                        r"1000 learned parts\)", alarm["message"]), alarm["message"]
    assert step_at <= alarm["seq"] < step_at + 150, "found within 150 parts of the step, not before it"
    assert step_at - 5 <= alarm["seq"] - alarm["window_parts"] + 1 <= step_at + 5, "the window starts at the step"
    assert alarm["current"] == pytest.approx(0.9 * alarm["reference"], rel=0.03)
    wait_for(lambda: _status(ln.plc_port) & DRIFT_BIT, 10, "the PLC's drift bit")
    wait_for(lambda: metric(http_text(f"{ln.url}/metrics"), "linewatch_drift_active", camera="cam0",
                            signal="brightness") == 1, 10, "linewatch_drift_active")
    # the watch decides nothing: every verdict after the step was made by the model or a rule, as before it
    deciders = {r["decided_by"] for r in db_rows(ln.data_dir, "SELECT DISTINCT decided_by FROM inspections")}
    assert not any("drift" in d for d in deciders)

    # a drift that lasts alarms again once acknowledged: acknowledge when the camera has stopped (max_frames)
    wait_for(lambda: count_rows(ln.data_dir) >= 1500, 60, "the last part")
    qa, engineer = bearer(ln.data_dir, "qa", "qa"), bearer(ln.data_dir, "engineer", "eng")
    for a in db_rows(ln.data_dir, "SELECT id FROM alarms WHERE kind = 'drift' AND acknowledged_by IS NULL"):
        _post(f"{ln.url}/api/alarms/{a['id']}/ack", qa)
    wait_for(lambda: not _status(ln.plc_port) & DRIFT_BIT, 10, "the drift bit to clear once acknowledged")

    # the new lighting is deliberate: the camera's reference is dropped, its next parts learnt (audit-logged)
    assert _post(f"{ln.url}/api/drift/cam0/relearn", engineer)["camera"] == "cam0"
    assert not db_rows(ln.data_dir, "SELECT 1 FROM drift_references WHERE camera = 'cam0'")
    audit = db_rows(ln.data_dir, "SELECT actor, detail FROM operator_actions WHERE action = 'drift_relearn'")
    assert [(a["actor"], json.loads(a["detail"])) for a in audit] == [("token:eng", {"camera": "cam0"})]
    assert ln.stop() < 5.0
