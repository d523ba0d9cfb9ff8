"""Replay of a labelled dataset written by `linewatch emulate`: order, loop, truth, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from linewatch.acquire.sources import SourceEnded, SourceError
from linewatch.acquire.sources.replay import ReplayCamera
from linewatch.cli import main
from linewatch.config import CameraConfig
from tests.acquire_harness import AcquireRig
from tests.conftest import REPO


def _replay(path: Path, **kw: object) -> ReplayCamera:
    return ReplayCamera(CameraConfig.model_validate({"source": {"type": "replay", "path": str(path), **kw}}))


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    out = tmp_path / "ds"
    assert main(["emulate", "--scene", str(REPO / "cameras" / "scenes" / "label.yaml"), "--count", "6",
                 "--out", str(out), "--seed", "3"]) == 0
    return out


def test_emulate_writes_images_and_a_manifest_the_replay_reads_back(dataset: Path) -> None:
    manifest = [json.loads(line) for line in (dataset / "manifest.jsonl").read_text().splitlines()]
    assert len(manifest) == 6 and all((dataset / m["file"]).is_file() for m in manifest)
    cam = _replay(dataset)
    for m in manifest:
        g = cam.grab(1.0)
        assert g is not None and g.truth == m["truth"] and g.pixels.shape == (256, 256)
        np.testing.assert_array_equal(g.pixels, cv2.imread(str(dataset / m["file"]), cv2.IMREAD_GRAYSCALE))
    with pytest.raises(SourceEnded, match="ended"):
        cam.grab(1.0)


def test_looped_replay_starts_again(dataset: Path) -> None:
    cam = _replay(dataset, loop=True)
    first = [cam.grab(1.0) for _ in range(6)]
    again = cam.grab(1.0)
    assert again is not None and first[0] is not None
    np.testing.assert_array_equal(again.pixels, first[0].pixels)


def test_a_looped_folder_is_decoded_once_and_served_from_memory(dataset: Path) -> None:
    """Later rounds neither read the disk again (the files can go) nor hand out frames the line could change."""
    cam = _replay(dataset, loop=True)
    first = [cam.grab(1.0) for _ in range(6)]
    for png in dataset.glob("*.png"):
        png.unlink()
    again = [cam.grab(1.0) for _ in range(6)]
    for a, b in zip(first, again, strict=True):
        assert a is not None and b is not None and a.truth == b.truth
        np.testing.assert_array_equal(a.pixels, b.pixels)
        assert not b.pixels.flags.writeable


def test_replay_of_a_video_file(tmp_path: Path) -> None:
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(4):
        writer.write(np.full((48, 64, 3), 40 * i + 20, np.uint8))
    writer.release()
    cam = _replay(video)
    means = []
    for _ in range(4):
        g = cam.grab(1.0)
        assert g is not None and g.pixels.shape == (48, 64)
        means.append(g.pixels.mean())
    assert means == sorted(means) and means[-1] > means[0] + 100
    with pytest.raises(SourceEnded):
        cam.grab(1.0)


def test_bad_replay_inputs_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        _replay(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="has no PNG/JPEG/TIFF/BMP images"):
        _replay(tmp_path / "empty")
    (tmp_path / "ds").mkdir()
    cv2.imwrite(str(tmp_path / "ds" / "a.png"), np.zeros((4, 4), np.uint8))
    (tmp_path / "ds" / "manifest.jsonl").write_text('{"file": "a.png"}\n')
    with pytest.raises(SourceError, match=r"manifest .*manifest.jsonl:1"):
        _replay(tmp_path / "ds")


def test_acquire_replays_a_dataset_once_with_its_labels(dataset: Path, tmp_path: Path) -> None:
    rig = AcquireRig(tmp_path / "line", {"name": "rp", "fps": 100,
                                          "source": {"type": "replay", "path": str(dataset)}}).start()
    try:
        rig.pump_until(lambda: len(rig.frames) >= 6, 10, "six replayed frames")
        rig.pump(0.3)
    finally:
        rig.close()
    manifest = [json.loads(line) for line in (dataset / "manifest.jsonl").read_text().splitlines()]
    assert [h.truth for h in rig.frames] == [m["truth"] for m in manifest]
    assert len(rig.announced) == 6, "a replay without loop ends"


def test_software_triggered_replay_gives_one_image_per_trigger(dataset: Path) -> None:
    cam = ReplayCamera(CameraConfig.model_validate({"trigger": "software",
                                                    "source": {"type": "replay", "path": str(dataset)}}))
    assert cam.grab(0.01) is None
    cam.trigger()
    first = cam.grab(0.01)
    assert first is not None and first.frame_id == 1 and cam.grab(0.01) is None
