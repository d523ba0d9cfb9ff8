"""GenICam through harvesters and the real `viky.cti` GenTL producer of the genicam wheel.

viky offers three virtual devices (Mono8/RGBa8, 100-800 px, up to 200 fps, no trigger features).
Loss of a device is simulated on the real producer in two ways: closing the GenTL device handle
under the running acquirer (what a pulled cable looks like to the host: every call fails), and
stopping the device's acquisition (a camera that stops sending, as after a power loss). A virtual
device cannot vanish from the producer's device list, so "still away" is not simulated; see README.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import genicam
import numpy as np
import pytest

from linewatch.acquire.sources import CameraLost, SourceError
from linewatch.acquire.sources.genicam import GenicamCamera
from linewatch.cli import main
from linewatch.config import CameraConfig
from tests.acquire_harness import AcquireRig
from tests.conftest import REPO, count_rows, db_rows, wait_for

VIKY = Path(genicam.__file__).parent / "viky.cti"
PROFILE = REPO / "cameras" / "profiles" / "viky-256.yaml"


def _camera(**source: Any) -> dict[str, Any]:
    trigger = source.pop("trigger", "free_run")
    fps = source.pop("fps", 20.0)
    return {"name": "gx", "trigger": trigger, "fps": fps,
            "source": {"type": "genicam", "producers": [str(VIKY)], "device": "1", "profile": str(PROFILE),
                       **source}}


@pytest.fixture
def viky() -> Iterator[Any]:
    opened: list[GenicamCamera] = []

    def open_(**source: Any) -> GenicamCamera:
        cam = GenicamCamera(CameraConfig.model_validate(_camera(**source)))
        opened.append(cam)
        return cam

    yield open_
    for cam in opened:
        cam.close()


def test_cameras_list_and_probe_show_every_viky_device(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cameras", "list", "--producer", str(VIKY), "--json"]) == 0
    devices = json.loads(capsys.readouterr().out)
    assert sorted(d["serial"] for d in devices) == ["0", "1", "2"]
    assert all(d["vendor"] and d["model"] == "Viky" and d["access"] == "available" for d in devices)
    assert main(["cameras", "probe", "VikyTL_DEV_blue", "--producer", str(VIKY)]) == 0
    out = capsys.readouterr().out
    assert "serial 2" in out and "PixelFormat" in out and "Mono8" in out and "[100 .. 800]" in out


def test_profile_is_applied_and_rgba8_frames_arrive_as_mono8(viky: Any) -> None:
    cam = viky(buffer_handling="NewestOnly")
    nm = cam._ia.remote_device.node_map
    assert (nm.Width.value, nm.Height.value, nm.PixelFormat.value) == (256, 256, "RGBa8")
    assert nm.AcquisitionFrameRate.value == pytest.approx(50.0)
    assert cam._ia.data_streams[0].node_map.StreamBufferHandlingMode.value == "NewestOnly"
    frames = [cam.grab(1.0) for _ in range(5)]
    assert all(f is not None and f.pixels.shape == (256, 256) and f.pixels.dtype == np.uint8 for f in frames)
    ids = [f.frame_id for f in frames if f is not None]
    assert ids == sorted(set(ids)) and ids[0] >= 1


def test_device_selection_and_profile_errors_name_feature_and_device(viky: Any, tmp_path: Path) -> None:
    with pytest.raises(CameraLost, match=r"no GenICam device 'cam9'.*VikyTL_DEV_red \(serial 0\)"):
        viky(device="cam9")
    missing = REPO / "cameras" / "profiles" / "example-hardware-trigger.yaml"
    with pytest.raises(SourceError, match=r"camera gx \(VikyTL_DEV_blue\): feature 'TriggerSelector' does not"):
        viky(device="VikyTL_DEV_blue", profile=str(missing))
    refused = tmp_path / "wide.yaml"
    refused.write_text("features:\n  - {name: Width, value: 5000}\n")
    with pytest.raises(SourceError, match=r"camera gx \(1\): feature 'Width' refused value 5000: .*800"):
        viky(profile=str(refused))
    with pytest.raises(SourceError, match="no TriggerMode feature: software trigger is not available"):
        viky(trigger="software")
    assert viky().grab(1.0) is not None, "a failed open leaves the device free for the next one"


def test_pulled_cable_is_detected_and_reconnect_reapplies_the_profile(viky: Any) -> None:
    cam = viky()
    assert cam.grab(1.0) is not None
    cam._ia.device.module.close()  # the GenTL device handle is gone, as when the cable is pulled
    t0 = time.monotonic()
    with pytest.raises(CameraLost, match="InvalidHandle"):
        while True:
            cam.grab(0.1)
    assert time.monotonic() - t0 < 2.0
    cam.reconnect()
    nm = cam._ia.remote_device.node_map
    assert nm.Width.value == 256, "viky comes back at its 400 px default: the profile must be re-applied"
    frame = cam.grab(1.0)
    assert frame is not None and frame.pixels.shape == (256, 256) and frame.frame_id == 1


def test_camera_that_stops_sending_is_detected_within_two_seconds(viky: Any) -> None:
    cam = viky(loss_timeout_s=1.0)
    assert cam.grab(1.0) is not None
    cam._ia.remote_device.node_map.AcquisitionStop.execute()
    t0 = time.monotonic()
    with pytest.raises(CameraLost, match=r"no frame for 1\.\d s while free-running"):
        while True:
            cam.grab(0.1)
    assert time.monotonic() - t0 < 2.0
    cam.reconnect()
    assert cam.grab(1.0) is not None


def test_acquire_alarms_reconnects_and_records_every_frame_across_a_loss(tmp_path: Path) -> None:
    rig = AcquireRig(tmp_path, _camera()).start()
    try:
        rig.pump_until(lambda: len(rig.frames) >= 10, 20, "frames from viky")
        source = rig.acquire.source
        assert source is not None
        source._ia.device.module.close()  # type: ignore[attr-defined]
        rig.pump_until(lambda: [a for a in rig.alarms if a.kind == "camera_back"], 10, "the camera to come back")
        n = len(rig.frames)
        rig.pump_until(lambda: len(rig.frames) >= n + 10, 10, "frames after the reconnect")
    finally:
        rig.close()
    rig.pump(0.2)
    kinds = [a.kind for a in rig.alarms]
    assert kinds.index("camera_lost") < kinds.index("camera_back")
    lost = next(a for a in rig.alarms if a.kind == "camera_lost")
    assert lost.severity == "critical" and "gx" in lost.message
    assert [h.seq for h in rig.announced] == list(range(len(rig.announced))), "one seq per frame, no gap"
    assert len({h.stream for h in rig.announced}) == 1
    ids = [h.device_frame_id for h in rig.announced]
    assert all(i is not None for i in ids) and ids.count(1) == 2, "device frame ids restart after the reconnect"
    assert all(h.width == 256 and h.pixel_format == "Mono8" for h in rig.frames)


@pytest.mark.slow
def test_line_inspects_every_viky_frame(line: Any) -> None:
    frames = 80
    ln = line(cameras=[{**_camera(), "max_frames": frames}]).start()
    wait_for(lambda: count_rows(ln.data_dir) >= frames, 60, f"{frames} verdicts")
    ln.stop()
    rows = db_rows(ln.data_dir, "SELECT seq, decided_by FROM inspections ORDER BY seq")
    assert [r["seq"] for r in rows] == list(range(frames))
    assert all(r["decided_by"] == "model" or r["decided_by"].startswith("rule:") for r in rows)


def test_free_run_rate_comes_from_the_camera_fps_when_the_profile_leaves_it(viky: Any, tmp_path: Path) -> None:
    size_only = tmp_path / "size.yaml"
    size_only.write_text("features:\n  - {name: Width, value: 128}\n  - {name: Height, value: 128}\n")
    cam = GenicamCamera(CameraConfig.model_validate({**_camera(profile=str(size_only)), "fps": 37.5}))
    try:
        assert cam._ia.remote_device.node_map.AcquisitionFrameRate.value == pytest.approx(37.5, abs=1.0)  # 1 fps steps
    finally:
        cam.close()
    with pytest.raises(SourceError, match=r"feature 'AcquisitionFrameRate' refused value 500.0.*cameras\[\]\.fps"):
        viky(profile=str(size_only), fps=500)


def test_a_camera_absent_at_start_is_alarmed_and_a_bad_profile_stops_acquire(tmp_path: Path) -> None:
    rig = AcquireRig(tmp_path / "a", _camera(device="cam9")).start()
    try:
        rig.pump_until(lambda: rig.alarms, 10, "an alarm")
        assert rig.alarms[0].kind == "camera_lost" and "no GenICam device 'cam9'" in rig.alarms[0].message
        assert rig.thread.is_alive(), "acquire keeps trying with backoff"
    finally:
        rig.close()
    bad = tmp_path / "bad.yaml"
    bad.write_text("features:\n  - {name: Gamma, value: 1.0}\n")
    rig = AcquireRig(tmp_path / "b", _camera(profile=str(bad)))
    with pytest.raises(SystemExit):
        rig.acquire.run()
    rig.pump(0.3)
    rig.close()
    assert rig.alarms and rig.alarms[0].kind == "camera_config" and "'Gamma'" in rig.alarms[0].message
