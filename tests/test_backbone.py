"""The pretrained backbone: its weights are refused unless their hash is the pinned one, and it fine-tunes
through `linewatch train` into a model the line loads."""

from __future__ import annotations

import json
import re
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
    export_backbone_onnx,
    verify,
    weights_path,
)
from linewatch.training.common import contract_metadata
from linewatch.training.network import InputSpec, preprocess
from linewatch.training.trainer import TrainOptions
from linewatch.wire import KIND_VERDICT, Verdict, encode_frame
from tests.conftest import InferRig

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
    pred = model.predict(np.stack([emu.render(i).pixels for i in range(5)]))
    probs, maps = pred.probs, pred.anomaly_maps
    assert probs.shape == (5, 2) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert maps is not None and maps.shape == (5, 1, 1) and maps.min() >= 0 and maps.max() <= 1  # 32 px / 32
    assert model.info.metadata["linewatch.outputs"] == "probs, anomaly_map, embedding"
    assert pred.embeddings is not None and pred.embeddings.shape == (5, 1280)  # pooled features, for drift
    assert card["metrics"]["onnx_torch_max_abs_diff"] <= 1e-3


def test_backbone_none_trains_from_scratch(parts: Path, tmp_path: Path) -> None:
    out = tmp_path / "m"
    assert main(["train", str(parts), "--out", str(out), "--name", "scratch", "--backbone", "none",
                 "--net-size", "32", "--epochs", "1"]) == 0
    card = json.loads((out / "card.json").read_text())
    assert "backbone" not in card
    assert "linewatch.backbone" not in Model(out / "scratch.onnx", providers="cpu").info.metadata


def test_test_time_orientations_decide_a_part_the_same_however_it_lies(parts: Path, tmp_path: Path) -> None:
    """--tta 8: the exported graph averages the eight orientations, so a flipped or transposed frame gets the
    same probabilities (a single-orientation model does not); the CAM stays the frame's own; options that cannot
    work are refused before training, naming the option."""
    out = tmp_path / "m"
    assert main(["train", str(parts), "--out", str(out), "--name", "tta", "--net-size", "32", "--epochs", "1",
                 "--batch", "16", "--patience", "1", "--rotate90", "--tta", "8", "--fixed-blocks", "0"]) == 0
    card = json.loads((out / "card.json").read_text())
    assert card["metrics"]["onnx_torch_max_abs_diff"] <= 1e-3 and card["training"]["options"]["tta"] == 8
    model = Model(out / "tta.onnx", providers="cpu")
    assert model.info.metadata["linewatch.views"] == "8"
    frames = np.stack([PartEmulator(FRAME, FRAME, seed=9, defect_rate=0.5).render(i).pixels for i in range(4)])
    frames[:, :, : FRAME // 2] //= 2  # not symmetric: each orientation looks different
    turned = [frames[:, :, ::-1], frames[:, ::-1], frames.transpose(0, 2, 1), frames[:, ::-1, ::-1].transpose(0, 2, 1)]
    pred = model.predict(frames)
    for other in turned:
        assert np.abs(model.predict(np.ascontiguousarray(other)).probs - pred.probs).max() <= 1e-4
    assert pred.anomaly_maps is not None and pred.anomaly_maps.shape == (4, 1, 1)
    assert pred.embeddings is not None and pred.embeddings.shape == (4, 1280)
    single = tmp_path / "one"
    assert main(["train", str(parts), "--out", str(single), "--name", "one", "--net-size", "32", "--epochs", "1",
                 "--batch", "16", "--patience", "1", "--rotate90", "--fixed-blocks", "0"]) == 0
    one = Model(single / "one.onnx", providers="cpu")
    assert np.abs(one.predict(np.ascontiguousarray(turned[0])).probs - one.predict(frames).probs).max() > 1e-4


@pytest.mark.parametrize(("args", "message"), [
    (["--tta", "8"], "--tta 8 shows the model transposed parts: it needs --rotate90"),
    (["--tta", "2", "--no-flips"], "--tta 2 shows the model mirrored parts, but --no-flips"),
    (["--tta", "3"], r"--tta 3: choose one of \[1, 2, 4, 8\]"),
    (["--tta", "2", "--backbone", "none"], "--tta needs a classifier on the pretrained backbone"),
    (["--fixed-blocks", "17"], "--fixed-blocks 17: the backbone has 16 blocks"),
    (["--kind", "patchcore", "--position-weight", "-1"], "--position-weight -1: give 0 .place does not count. or a"),
    (["--kind", "patchcore", "--position-weight", "nan"], "--position-weight nan: give 0"),
])
def test_impossible_training_options_are_refused_naming_the_option(
        parts: Path, tmp_path: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", str(parts), "--out", str(tmp_path / "m"), *args]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "m").exists()


def _cam_model(out: Path, defect_bias: float = 0.0) -> tuple[object, InputSpec, np.ndarray]:
    """A three-class backbone classifier with a fresh head (no training needed to test the export), written to
    `out`; `defect_bias` pushes every frame towards the defect classes. Returns the net, its spec and frames."""
    emu = PartEmulator(FRAME, FRAME, seed=11, defect_rate=0.5)
    frames = np.stack([emu.render(i).pixels for i in range(6)])
    spec = InputSpec(FRAME, FRAME, 1, FRAME, 128.0, 50.0)
    torch.manual_seed(0)
    net = build_backbone_net(torch, 1, 3, spec).eval()
    with torch.no_grad():
        net._fc.bias.copy_(torch.tensor([-defect_bias, defect_bias, defect_bias]))
        if defect_bias:  # features are >= 0 (ReLU6): positive defect weights give every frame some evidence
            net._fc.weight[1:].abs_()
    meta = contract_metadata("cam", "classifier", spec, ["good", "crack", "scratch"], ["crack", "scratch"],
                             (0.3, 0.7), frames, np.full(6, 0.1), "0" * 64, TrainOptions(), None)
    export_backbone_onnx(net, spec, 1.5, meta, out)
    return net, spec, frames


def test_the_exported_cam_matches_pytorch(tmp_path: Path) -> None:
    net, spec, frames = _cam_model(tmp_path / "cam.onnx")
    model = Model(tmp_path / "cam.onnx", providers="cpu")
    assert model.info.adapter == "native"  # the extra map output is part of the native contract
    pred = model.predict(frames)
    with torch.no_grad():
        x = preprocess(torch, torch.from_numpy(frames), spec)
        ref_cam = net.cam(x, [1, 2])[:, 0].numpy()  # type: ignore[attr-defined]
        ref_probs = torch.softmax(net(x) / 1.5, dim=1).numpy()  # type: ignore[operator]
    assert pred.anomaly_maps is not None and pred.anomaly_maps.shape == (6, FRAME // 32, FRAME // 32)
    assert float(np.abs(pred.anomaly_maps - ref_cam).max()) <= 1e-3
    assert float(np.abs(pred.probs - ref_probs).max()) <= 1e-3  # the map explains; the probabilities still decide
    with torch.no_grad():
        ref_embedding = net.features(x).mean((2, 3)).numpy()  # type: ignore[operator]
    assert pred.embeddings is not None and np.abs(pred.embeddings - ref_embedding).max() <= 1e-3 * (
        1 + np.abs(ref_embedding).max())  # what the head pools: the embedding drift detection compares
    peaks = pred.anomaly_maps.max(axis=(1, 2))  # each frame's own maximum: 1, or 0 without any defect evidence
    assert pred.anomaly_maps.min() >= 0 and np.all((np.abs(peaks - 1) < 1e-3) | (peaks == 0)) and peaks.max() > 0


def test_a_fail_part_from_a_backbone_classifier_keeps_its_cam_heatmap(tmp_path: Path) -> None:
    model = tmp_path / "m" / "cam.onnx"
    _, _, frames = _cam_model(model, defect_bias=8.0)
    rules_off = {name: {"enabled": False} for name in ("exposure", "presence", "blur", "statistics", "dark_spot")}
    rig = InferRig(tmp_path, model, record={"live_view_hz": 0}, failsafe=rules_off)
    try:
        rig.frames.send_multipart(encode_frame(rig.header(0, height=FRAME, width=FRAME), frames[0]))
        while True:
            assert rig.record.poll(30_000), "no verdict from the worker"
            parts = rig.record.recv_multipart()
            if parts[0] == KIND_VERDICT:
                break
        v = Verdict.from_bytes(parts[1])
        assert (v.final, v.decided_by) == ("FAIL", "model"), (v.final, v.decided_by, v.reasons)
        assert len(parts) == 5, "the kept image and its heatmap travel with the verdict"
        heat = cv2.imdecode(np.frombuffer(parts[4], np.uint8), cv2.IMREAD_GRAYSCALE)
        assert heat is not None and heat.shape == (FRAME // 32, FRAME // 32) and heat.max() >= 250
    finally:
        rig.close()
