"""Promotion on a running line: the workers follow the registry's active link and swap between batches."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import onnx
import pytest

from linewatch.emulator.parts import PartEmulator
from linewatch.model.registry import Registry
from tests.conftest import REFERENCE_MODEL, count_rows, db_rows, wait_for

pytestmark = pytest.mark.slow


def _variant(tmp: Path) -> Path:
    """The reference graph with one more metadata entry: another file (another hash), the same decisions."""
    model = onnx.load(str(REFERENCE_MODEL))
    model.metadata_props.add(key="linewatch.note", value="variant for the hot-swap test")
    out = tmp / "variant" / "reference.onnx"
    out.parent.mkdir()
    onnx.save(model, str(out))
    shutil.copy(REFERENCE_MODEL.parent / "card.json", out.parent / "card.json")
    return out


def _holdout(root: Path, count: int = 60) -> Path:
    emu = PartEmulator(seed=5, defect_rate=0.5)
    for i in range(count):
        part = emu.render(i)
        folder = root / ("good" if part.truth["label"] == "good" else "defect")
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"{i}.png"), part.pixels)
    return root


def test_promote_swaps_the_running_model_without_losing_a_frame(line, tmp_path: Path) -> None:
    frames = 400
    reg = Registry(tmp_path / "models")
    first = reg.promote(str(REFERENCE_MODEL), "default", None)["candidate"]
    holdout = _holdout(tmp_path / "holdout")

    ln = line(cameras=[{"name": "cam0", "fps": 30, "max_frames": frames}],
              model={"path": str(reg.active_path("default"))}).start()
    wait_for(lambda: count_rows(ln.data_dir) >= 100, 60, "verdicts from the first model")
    second = reg.promote(str(_variant(tmp_path)), "default", holdout)["candidate"]
    assert second != first
    wait_for(lambda: count_rows(ln.data_dir) >= frames, 60, f"{frames} rows")
    ln.stop()

    rows = db_rows(ln.data_dir, "SELECT seq, model_hash, decided_by FROM inspections ORDER BY seq")
    assert [r["seq"] for r in rows] == list(range(frames))
    lost = [r for r in rows if r["decided_by"] in ("timeout", "not_inspected") or "model_" in r["decided_by"]]
    assert not lost, "no frame dropped or decided without a whole model during the swap"
    hashes = [r["model_hash"] for r in rows]
    switch = hashes.index(second)
    assert set(hashes[:switch]) == {first} and set(hashes[switch:]) == {second}, "one clean switch"
