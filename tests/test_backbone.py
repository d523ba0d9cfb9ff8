"""The pretrained backbone: its weights are refused unless their hash is the pinned one, and it fine-tunes
through `linewatch train` into a model the line loads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from linewatch.cli import main
from linewatch.emulator.parts import PartEmulator
from linewatch.model.onnx import Model
from linewatch.training.backbone import (
    PACKAGE_VERSION,
    WEIGHTS_SHA256,
    BackboneError,
    build_backbone_net,
    verify,
    weights_path,
)
from linewatch.training.network import InputSpec

torch = pytest.importorskip("torch")
FRAME = 64


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("parts")
    emu = PartEmulator(FRAME, FRAME, seed=5, defect_rate=0.5)
    for i in range(48):
        part = emu.render(i)
        (root / part.truth["label"]).mkdir(exist_ok=True)
        cv2.imwrite(str(root / part.truth["label"] / f"{i:03d}.png"), part.pixels)
    return root


def test_the_installed_weights_are_the_pinned_ones() -> None:
    assert verify(weights_path()).sha256 == WEIGHTS_SHA256


def test_a_tampered_weights_file_is_refused_before_it_is_loaded(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    copy = tmp_path / weights_path().name
    shutil.copyfile(weights_path(), copy)
    with copy.open("r+b") as f:
        f.seek(4096)
        byte = f.read(1)
        f.seek(4096)
        f.write(bytes([byte[0] ^ 0xFF]))

    def no_load(*args: object, **kwargs: object) -> None:
        raise AssertionError("torch.load reached with unchecked weights")

    monkeypatch.setattr(torch, "load", no_load)
    spec = InputSpec(FRAME, FRAME, 1, 32, 128.0, 50.0)
    with pytest.raises(BackboneError) as err:
        build_backbone_net(torch, 1, 2, spec, path=copy)
    message = str(err.value)
    assert str(copy) in message and WEIGHTS_SHA256 in message and "refusing" in message
    found = message.split("SHA-256 ")[1].split()[0]
    assert len(found) == 64 and found != WEIGHTS_SHA256


def test_fine_tuned_backbone_runs_on_the_line(parts: Path, tmp_path: Path) -> None:
    out = tmp_path / "m"
    assert main(["train", str(parts), "--out", str(out), "--name", "bb", "--backbone", "efficientnet-lite0",
                 "--net-size", "32", "--epochs", "1", "--batch", "16", "--patience", "1"]) == 0
    card = json.loads((out / "card.json").read_text())
    assert card["backbone"]["sha256"] == WEIGHTS_SHA256 and card["backbone"]["version"] == PACKAGE_VERSION
    assert WEIGHTS_SHA256 in (out / "CARD.md").read_text()
    model = Model(out / "bb.onnx", providers="cpu")
    assert model.info.sha256 == card["sha256"] and model.frame_shape == (FRAME, FRAME)
    assert WEIGHTS_SHA256 in model.info.metadata["linewatch.backbone"]
    emu = PartEmulator(FRAME, FRAME, seed=77, defect_rate=0.5)
    probs = model.run(np.stack([emu.render(i).pixels for i in range(5)]))
    assert probs.shape == (5, 2) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert card["metrics"]["onnx_torch_max_abs_diff"] <= 1e-3


def test_backbone_none_trains_from_scratch(parts: Path, tmp_path: Path) -> None:
    out = tmp_path / "m"
    assert main(["train", str(parts), "--out", str(out), "--name", "scratch", "--backbone", "none",
                 "--net-size", "32", "--epochs", "1"]) == 0
    card = json.loads((out / "card.json").read_text())
    assert "backbone" not in card
    assert "linewatch.backbone" not in Model(out / "scratch.onnx", providers="cpu").info.metadata
