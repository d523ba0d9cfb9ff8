"""acquire: software and encoder triggers, frames lost or torn by the camera, all on real sockets."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from linewatch.wire import CameraCommand, Endpoints
from linewatch.wire.camera_client import request_camera
from tests.acquire_harness import AcquireRig
from tests.api_harness import bearer
from tests.conftest import count_rows, db_rows, wait_for


def _trigger(rig: AcquireRig, part_id: str | None = None) -> Any:
    command = CameraCommand(cmd="trigger", part_id=part_id)
    return request_camera(Endpoints(rig.cfg.run_dir), rig.cfg.cameras[0].name, command, timeout_s=5.0)


def test_software_trigger_takes_exactly_one_frame_per_trigger(tmp_path: Path) -> None:
    rig = AcquireRig(tmp_path, {"name": "c1", "trigger": "software"}).start()
    try:
        rig.pump(0.5)
        assert rig.announced == [], "a triggered camera sends nothing on its own"
        replies = [_trigger(rig, f"P-{i}") for i in range(5)]
        rig.pump_until(lambda: len(rig.frames) >= 5, 5, "five triggered frames")
        rig.pump(0.3)
    finally:
        rig.close()
    assert [(r.ok, r.seq, r.part_id) for r in replies] == [(True, i, f"P-{i}") for i in range(5)]
    assert [(h.seq, h.part_id) for h in rig.announced] == [(i, f"P-{i}") for i in range(5)]
    assert [h.part_id for h in rig.frames] == [f"P-{i}" for i in range(5)]
    assert all(h.truth is not None and h.device_frame_id == h.seq + 1 for h in rig.frames)


def test_trigger_on_a_free_running_camera_and_a_bad_command_are_refused(tmp_path: Path) -> None:
    rig = AcquireRig(tmp_path, {"name": "c2", "fps": 20}).start()
    try:
        reply = _trigger(rig)
        import zmq

        sock = rig.ctx.socket(zmq.REQ)
        sock.connect(Endpoints(rig.cfg.run_dir).control("c2"))
        sock.send(b'{"cmd": "explode"}')
        assert sock.poll(5000)
        bad = json.loads(sock.recv())
        sock.close(0)
    finally:
        rig.close()
    assert not reply.ok and "free_run mode" in reply.error and reply.seq is None
    assert not bad["ok"] and bad["error"] == "camera command: Invalid enum value 'explode' - at `$.cmd`"


def test_encoder_triggers_a_frame_per_part_pitch(tmp_path: Path) -> None:
    scene = tmp_path / "belt.yaml"
    scene.write_text("line: {speed_mm_s: 500, spacing_mm: 25}\n")  # a part every 50 ms
    rig = AcquireRig(tmp_path, {"name": "c3", "trigger": "hardware", "max_frames": 8,
                                "source": {"type": "emulator", "scene": str(scene)}}).start()
    try:
        rig.pump_until(lambda: len(rig.frames) >= 8, 10, "eight encoder-triggered frames")
    finally:
        rig.close()
    times = [h.truth["t_scene_s"] for h in rig.frames if h.truth]
    assert times == pytest.approx([0.05 * i for i in range(8)])
    assert [h.device_timestamp_ns for h in rig.frames] == [round(t * 1e9) for t in times]


def test_frames_lost_or_torn_by_the_camera_are_each_recorded(tmp_path: Path) -> None:
    scene = tmp_path / "flaky.yaml"
    scene.write_text("camera: {drop_rate: 0.1, incomplete_rate: 0.1}\n")
    total = 150
    rig = AcquireRig(tmp_path, {"name": "c4", "fps": 300, "max_frames": total,
                                "source": {"type": "emulator", "scene": str(scene)}}, frame_queue=1000).start()
    try:
        rig.pump_until(lambda: len(rig.announced) >= total, 20, f"{total} announcements")
        rig.pump(0.3)
    finally:
        rig.close()
    assert [h.seq for h in rig.announced] == list(range(total))
    reasons = [v.reasons[0] for v in rig.verdicts]
    assert all(v.decided_by == "not_inspected" and v.final == "FAIL" for v in rig.verdicts)
    torn = [r for r in reasons if r.startswith("incomplete buffer")]
    lost = [r for r in reasons if r.startswith("frame lost between camera and host")]
    assert torn and lost and len(torn) + len(lost) == len(rig.verdicts)
    assert len(rig.frames) + len(rig.verdicts) == total, "every seq is a frame sent or a not-inspected verdict"
    sent_ids = [h.device_frame_id for h in rig.frames]
    assert sent_ids == sorted(sent_ids) and sent_ids[-1] is not None
    assert sent_ids[-1] - sent_ids[0] + 1 >= len(rig.frames) + len(lost) - 1


@pytest.mark.slow
def test_rest_and_cli_triggers_are_inspected_and_recorded(line: Any) -> None:
    ln = line(cameras=[{"name": "cam0", "trigger": "software"}, {"name": "cam1", "fps": 10, "max_frames": 3}])
    ln.start()
    got, operator = [], bearer(ln.data_dir, "operator")
    for i in range(6):
        req = urllib.request.Request(f"{ln.url}/api/cameras/cam0/trigger?part_id=LOT7-{i}", method="POST",
                                     headers=operator)
        with urllib.request.urlopen(req, timeout=10) as r:
            got.append(json.loads(r.read()))
    cli = subprocess.run([sys.executable, "-m", "linewatch", "cameras", "trigger", "cam0", "--config",
                          str(ln.config), "--part-id", "FROM-PLC"], capture_output=True, text=True, timeout=30)
    assert cli.returncode == 0, cli.stderr
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(urllib.request.Request(f"{ln.url}/api/cameras/cam1/trigger", method="POST",
                                                      headers=operator), timeout=10)
    assert refused.value.code == 409 and "free_run mode" in refused.value.read().decode()
    refused.value.close()
    wait_for(lambda: count_rows(ln.data_dir) >= 10, 30, "10 rows")
    ln.stop()
    assert [g["part_id"] for g in got] == [f"LOT7-{i}" for i in range(6)]
    rows = db_rows(ln.data_dir, "SELECT seq, part_id, decided_by FROM inspections WHERE camera = 'cam0' ORDER BY seq")
    assert [r["part_id"] for r in rows] == [f"LOT7-{i}" for i in range(6)] + ["FROM-PLC"]
    assert [r["seq"] for r in rows] == list(range(7))
    assert all(r["decided_by"] == "model" or r["decided_by"].startswith("rule:") for r in rows)
