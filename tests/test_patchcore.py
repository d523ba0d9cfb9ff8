"""`--kind patchcore`: a memory bank of good patches, fitted without gradient steps, run as one ONNX graph."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from linewatch.emulator.parts import PartEmulator
from linewatch.model.onnx import Model
from linewatch.training.backbone import WEIGHTS_SHA256
from linewatch.training.evaluate import auroc
from linewatch.training.patchcore import SCORE_PATCHES
from linewatch.training.trainer import TrainOptions, train

FRAME = 128


def _parts(root: Path, seed: int, goods: int, defects: int) -> Path:
    emu = PartEmulator(FRAME, FRAME, seed=seed, defect_rate=0.5)
    want = {"good": goods, "defect": defects}
    seq = 0
    while any(want.values()):
        part = emu.render(seq)
        label = "good" if part.truth["label"] == "good" else "defect"
        if want[label]:
            want[label] -= 1
            (root / label).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / label / f"{seq:04d}.png"), part.pixels)
        seq += 1
    return root


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> dict:
    data = _parts(tmp_path_factory.mktemp("data"), seed=5, goods=40, defects=8)
    out = tmp_path_factory.mktemp("model")
    card = train(data, out, TrainOptions(name="pc", kind="patchcore", net_size=FRAME, seed=2), log=lambda s: None)
    return {"card": card, "out": out, "data": data}


def test_patchcore_card_records_kind_backbone_and_bank(fitted: dict) -> None:
    card = fitted["card"]
    assert card["kind"] == "patchcore" and card["training"]["epochs_run"] == 0
    assert card["backbone"]["sha256"] == WEIGHTS_SHA256
    assert 0 < card["memory_bank"]["size"] <= card["memory_bank"]["patches"]
    assert json.loads((fitted["out"] / "card.json").read_text())["memory_bank"] == card["memory_bank"]
    assert "real_defects" in card["metrics"]


def test_patchcore_is_one_graph_the_line_runs(fitted: dict) -> None:
    path = fitted["out"] / "pc.onnx"
    proto = onnx.load(str(path))
    assert proto.ir_version <= 13
    ops = {n.op_type for n in proto.graph.node}
    assert {"MatMul", "ReduceMin", "Conv"} <= ops
    model = Model(path)
    assert model.info.metadata["linewatch.kind"] == "patchcore"
    assert model.info.metadata["linewatch.memory_bank"] == str(fitted["card"]["memory_bank"]["size"])
    assert [o.name for o in model.session.get_outputs()] == ["probs", "anomaly_map", "embedding"]
    pred = model.predict(np.zeros((2, FRAME, FRAME), np.uint8))
    assert pred.probs.shape == (2, 2) and np.allclose(pred.probs.sum(1), 1, atol=1e-5)
    features = fitted["card"]["memory_bank"]["features"]
    assert pred.embeddings is not None and pred.embeddings.shape == (2, features)  # mean patch feature
    assert pred.anomaly_maps is not None and pred.anomaly_maps.shape == (2, FRAME // 4, FRAME // 4)


def test_patchcore_scores_defects_above_good_parts(fitted: dict, tmp_path: Path) -> None:
    test = _parts(tmp_path, seed=77, goods=20, defects=20)
    images = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in sorted(test.glob("*/*.png"))]
    is_defect = np.array(["defect" in str(p.parent.name) for p in sorted(test.glob("*/*.png"))])
    p = Model(fitted["out"] / "pc.onnx").run(np.stack(images))[:, 1]
    assert (a := auroc(p, is_defect)) is not None and a > 0.9, a


def test_the_image_score_is_the_mean_of_the_five_largest_patch_scores(fitted: dict, tmp_path: Path) -> None:
    """p(defect) is the sigmoid of the mean of the SCORE_PATCHES largest calibrated patch scores (the graph's own
    `map_logit`), not of the largest alone: one odd patch on a good part weighs a fifth."""
    proto = onnx.load(str(fitted["out"] / "pc.onnx"))
    proto.graph.output.append(onnx.helper.make_tensor_value_info("map_logit", onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    test = _parts(tmp_path, seed=78, goods=4, defects=4)
    images = np.stack([cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in sorted(test.glob("*/*.png"))])
    probs, logits = session.run(["probs", "map_logit"], {session.get_inputs()[0].name: images})
    top = np.sort(logits.reshape(len(images), -1), 1)[:, -SCORE_PATCHES:]
    assert np.allclose(probs[:, 1], 1 / (1 + np.exp(-top.mean(1))), atol=1e-5)
    assert not np.allclose(probs[:, 1], 1 / (1 + np.exp(-top[:, -1])), atol=1e-3), "the largest alone"
    assert fitted["card"]["memory_bank"]["score_patches"] == SCORE_PATCHES
    assert Model(fitted["out"] / "pc.onnx").info.metadata["linewatch.score_patches"] == str(SCORE_PATCHES)


def test_patchcore_map_matches_pytorch(fitted: dict) -> None:
    assert fitted["card"]["metrics"]["onnx_torch_max_abs_diff"] <= 1e-3


def test_cli_fits_patchcore(fitted: dict, tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "linewatch", "train", str(fitted["data"]), "--out", str(tmp_path),
                          "--kind", "patchcore", "--net-size", "64", "--coreset", "0.05"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    card = json.loads((tmp_path / "card.json").read_text())
    assert card["kind"] == "patchcore" and card["training"]["options"]["coreset"] == 0.05


def _marked(rng: np.random.Generator, mark: bool) -> np.ndarray:
    """A 64² part: a grainy surface with, on a good one, a bright square mark near the top left."""
    img = rng.normal(110, 12, (64, 64)).clip(0, 255).astype(np.uint8)
    if mark:
        y, x = 10 + rng.integers(-2, 3, 2)
        img[y:y + 16, x:x + 16] = 220
    return img


def _nearest_good_distance(path: Path, images: np.ndarray) -> np.ndarray:
    """Each image's largest patch distance to the memory bank, read from the exported graph's own `dist_map`."""
    proto = onnx.load(str(path))
    proto.graph.output.append(onnx.helper.make_tensor_value_info("dist_map", onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["dist_map"], {session.get_inputs()[0].name: images})[0].max((1, 2, 3))


def test_a_mark_left_out_is_caught_by_where_the_patches_are(tmp_path: Path) -> None:
    """A part without its printed mark is all plain surface, which good parts show elsewhere: a bank that ignores
    where a patch lies matches it there; with the patches' place counted, it is farther from the good patches
    than any good part, and it is not passed."""
    rng = np.random.default_rng(3)
    (tmp_path / "good").mkdir()
    for i in range(30):
        cv2.imwrite(str(tmp_path / "good" / f"{i:03d}.png"), _marked(rng, True))
    goods = np.stack([_marked(rng, True) for _ in range(20)])
    left_out = np.stack([_marked(rng, False) for _ in range(20)])
    margin = {}
    for weight in (0.0, 2.0):
        out = tmp_path / f"w{weight:g}"
        card = train(tmp_path, out, TrainOptions(name="pc", kind="patchcore", net_size=64, seed=1,
                                                 position_weight=weight), log=lambda s: None)
        assert card["memory_bank"]["position_weight"] == weight
        model = Model(out / "pc.onnx")
        assert model.info.metadata["linewatch.position_weight"] == f"{weight:g}"
        margin[weight] = (_nearest_good_distance(out / "pc.onnx", left_out).min()
                          - _nearest_good_distance(out / "pc.onnx", goods).max())
        if weight:
            assert (model.run(left_out)[:, 1] >= card["calibration"]["band"][0]).all()  # REVIEW or FAIL
    assert margin[2.0] > 0 > margin[0.0], margin  # the place is what separates them
