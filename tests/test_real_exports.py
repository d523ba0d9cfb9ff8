"""Models as Ultralytics 8.4 and anomalib 2.7 really export them (tests/exports/, written by the libraries
themselves with tests/exports/make_exports.py; versions and calls in its manifest.json)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest

from linewatch.model.files import file_sha256
from linewatch.model.onnx import Model, ModelError
from linewatch.model.registry import Registry, validate

EXPORTS = Path(__file__).parent / "exports"
MANIFEST = json.loads((EXPORTS / "manifest.json").read_text())
REFERENCE = np.load(EXPORTS / "reference_outputs.npz")
SAMPLES = [s["file"] for s in MANIFEST["samples"]]
FRAMES = np.stack([cv2.imread(str(EXPORTS / f), cv2.IMREAD_GRAYSCALE) for f in SAMPLES])  # the line's Mono8

# file: (adapter, input height and width the adapter feeds, the graph's fixed batch)
EXPECTED = {
    "yolo-cls-static.onnx": ("yolo-classify", 64, 1),
    "yolo-cls-dynamic.onnx": ("yolo-classify", 64, None),  # dynamic=True: fed at its metadata's imgsz
    "yolo-det.onnx": ("yolo-detect", 128, 1),
    "yolo-det-nms.onnx": ("yolo-detect", 128, 1),
    "yolo-det-nms-conf001.onnx": ("yolo-detect", 128, 1),
    "yolo26-default.onnx": ("yolo-detect", 128, 1),
    "yolo26-e2e.onnx": ("yolo-detect", 128, 1),
    "anomalib-padim/model.onnx": ("anomalib", 64, None),  # free input size: its anomaly map's 64
    "anomalib-patchcore/model.onnx": ("anomalib", 128, None),
}


def _reference(name: str, output: str) -> np.ndarray:
    return np.concatenate([REFERENCE[f"{name}|{f}|output:{output}"] for f in SAMPLES])


def test_the_exports_are_what_the_libraries_wrote() -> None:
    assert set(EXPECTED) == set(MANIFEST["files"])
    for name, info in MANIFEST["files"].items():
        assert info["library_version"].startswith(("8.4.", "2.7.")), name
        on_disk = {file: f["sha256"] for file, f in info["files_on_disk"].items()}
        assert {p: file_sha256(EXPORTS / p) for p in on_disk} == on_disk, f"{name} changed since it was exported"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_export_loads_and_runs_every_batch_size_the_worker_uses(name: str) -> None:
    adapter, side, batch = EXPECTED[name]
    model = validate(EXPORTS / name, max_batch=4)  # batch sizes 1, 2, 4: a static batch-1 graph is sliced
    assert (model.info.adapter, model.info.height, model.info.width, model.fixed_batch) == (adapter, side, side, batch)
    pred = model.predict(FRAMES)
    assert pred.probs.shape == (4, 2) and np.isfinite(pred.probs).all()
    if adapter == "yolo-detect":
        assert pred.detections is not None and len(pred.detections) == 4


@pytest.mark.parametrize("name", ["yolo-cls-static.onnx", "yolo-cls-dynamic.onnx"])
def test_classifier_probabilities_match_the_librarys_own_run(name: str) -> None:
    model = Model(EXPORTS / name)
    assert model.info.labels == ("good", "defect")  # names {0: defect, 1: good}: reordered, good first
    ref = _reference(name, "output0")  # columns in the model's order: defect, good
    np.testing.assert_allclose(model.run(FRAMES), ref[:, ::-1], atol=0.01)


@pytest.mark.parametrize("name", ["anomalib-padim/model.onnx", "anomalib-patchcore/model.onnx"])
def test_anomalib_scores_and_maps_match_the_librarys_own_run(name: str) -> None:
    pred = Model(EXPORTS / name).predict(FRAMES)
    np.testing.assert_allclose(pred.probs[:, 1], _reference(name, "pred_score").reshape(-1), atol=0.01)
    assert pred.anomaly_maps is not None and pred.anomaly_maps.shape == (4, 64, 64)
    ref_map = _reference(name, "anomaly_map")[:, 0]
    assert np.abs(pred.anomaly_maps - np.clip(ref_map, 0, 1)).mean() < 0.02


def test_raw_detector_scores_are_its_most_confident_defect_box() -> None:
    model = Model(EXPORTS / "yolo-det.onnx")
    raw = _reference("yolo-det.onnx", "output0")  # (4, 4 + 3 classes, 336 anchors)
    np.testing.assert_allclose(model.run(FRAMES)[:, 1], raw[:, 4:].max(axis=(1, 2)), atol=0.01)


def test_nms_and_end_to_end_layouts_are_read_as_boxes_not_as_classes(tmp_path: Path) -> None:
    for name in ("yolo-det-nms-conf001.onnx", "yolo26-e2e.onnx"):
        path = tmp_path / name
        shutil.copy(EXPORTS / name, path)
        path.with_suffix(".yaml").write_text("conf: 0.001\n")  # keep the weak boxes these tiny models find
        model = Model(path)
        rows = _reference(name, "output0")  # (4, 300, 6): x1, y1, x2, y2, score, class
        pred = model.predict(FRAMES)
        assert pred.detections is not None
        names = ["dent", "scratch", "stain"]
        for frame, found in zip(rows, pred.detections, strict=True):
            real = frame[frame[:, 4] >= 0.001]
            x1, y1 = np.clip(real[:, 0], 0, 128), np.clip(real[:, 1], 0, 128)
            boxes = np.column_stack([x1, y1, np.clip(real[:, 2], 0, 128) - x1, np.clip(real[:, 3], 0, 128) - y1])
            labels = [names[int(c)] for c in real[:, 5]]
            assert len(found) == len(real)
            for d in found:  # matched, not zipped: rows whose scores differ in the 7th digit may swap (threads)
                assert any(d.label == lab and np.abs(np.subtract(d.box, b)).max() < 0.05
                           for lab, b in zip(labels, boxes, strict=True)), d
        np.testing.assert_allclose(pred.probs[:, 1], rows[:, :, 4].max(axis=1), atol=0.01)

    # The case that passed a defect: one confident scratch row must make the part defective, not read as a
    # "class score" of 0 in a (4 box + 296 class) layout.
    adapter = Model(EXPORTS / "yolo26-e2e.onnx").adapter
    out = np.zeros((1, 300, 6), np.float32)
    out[0, 0] = (10, 20, 50, 60, 0.9, 1)  # scratch
    pred = adapter.decode({"output0": out})
    assert pred.probs[0, 1] == pytest.approx(0.9)
    assert pred.detections is not None and [(d.label, d.box) for d in pred.detections[0]] == [
        ("scratch", (10.0, 20.0, 40.0, 40.0))]


def test_a_layout_the_metadata_does_not_explain_is_refused(tmp_path: Path) -> None:
    model = onnx.load(str(EXPORTS / "yolo26-e2e.onnx"))
    for prop in model.metadata_props:
        if prop.key == "end2end":
            prop.value = "False"
    path = tmp_path / "unknown.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ModelError, match="refusing to guess its layout"):
        Model(path)


def test_anomalib_external_weights_are_stored_hashed_and_activated_with_the_graph(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "models")
    report = reg.promote(str(EXPORTS / "anomalib-padim" / "model.onnx"), "default", None)
    stored = reg.find(report["candidate"]).file.parent
    assert sorted(p.name for p in stored.iterdir()) == ["model.onnx", "model.onnx.data"]
    assert report["candidate"] not in (file_sha256(stored / "model.onnx"), file_sha256(stored / "model.onnx.data"))
    active = Model(reg.active_path("default"))
    assert active.info.sha256 == report["candidate"]
    np.testing.assert_allclose(active.run(FRAMES)[:, 1], Model(EXPORTS / "anomalib-padim/model.onnx").run(FRAMES)[:, 1])


def test_cli_validate_names_the_fixed_batch_and_the_files(tmp_path: Path) -> None:
    def validate_cli(path: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "linewatch", "models", "validate", str(path)],
                              capture_output=True, text=True, timeout=120)

    out = validate_cli(EXPORTS / "yolo-cls-static.onnx")
    assert out.returncode == 0, out.stderr
    assert "batch sizes [1, 2, 4]" in out.stdout and "fixed batch is 1" in out.stdout
    out = validate_cli(EXPORTS / "anomalib-padim" / "model.onnx")
    assert out.returncode == 0 and "'model.onnx.data'" in out.stdout
    lone = tmp_path / "model.onnx"  # the graph copied without its weights
    shutil.copy(EXPORTS / "anomalib-padim" / "model.onnx", lone)
    out = validate_cli(lone)
    assert out.returncode == 2 and "model.onnx.data, which is not beside it" in out.stderr
    assert "Traceback" not in out.stderr


def test_holdout_metrics_and_the_gate_work_on_a_static_batch_export(tmp_path: Path) -> None:
    from tests.test_training import write_parts

    holdout = write_parts(tmp_path / "holdout", 70, seed=3)  # more than the 64 frames holdout_metrics runs at once
    static = EXPORTS / "yolo-cls-static.onnx"
    out = subprocess.run([sys.executable, "-m", "linewatch", "models", "validate", str(static),
                          "--holdout", str(holdout)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "review_rate" in out.stdout and "Traceback" not in out.stderr
    reg = Registry(tmp_path / "models")
    report = reg.promote(str(EXPORTS / "yolo-cls-static.onnx"), "default", holdout)
    assert report["metrics"]["candidate"]["count"] == 70
    assert report["metrics"]["candidate"]["band"] == [0.2, 0.8]  # the line's default band: no sidecar band


def test_an_end_to_end_row_naming_an_unknown_class_is_a_model_fault() -> None:
    model = Model(EXPORTS / "yolo26-e2e.onnx")
    out = np.zeros((1, 300, 6), np.float32)
    out[0, 0] = (10, 20, 50, 60, 0.9, 7)  # class 7 of a 3-class model
    with pytest.raises(ValueError, match=r"end-to-end output names class \[7\], the model has 3 classes"):
        model.adapter.decode({"output0": out})


def test_anomalib_with_no_size_anywhere_is_refused(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    from tests.test_adapters import ONE, _darkness, _save

    # anomalib's outputs with the input's height and width free and an anomaly map as large as the input
    nodes = [*_darkness("input", "pred_score"), helper.make_node("Sub", ["one", "input"], ["anomaly_map"])]
    path = _save(tmp_path / "model.onnx", nodes,
                 [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["B", 3, "H", "W"])],
                 [helper.make_tensor_value_info("pred_score", TensorProto.FLOAT, ["B"]),
                  helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, ["B", 3, "H", "W"])], [ONE])
    with pytest.raises(ModelError, match=r"input height and width are free .* nor a fixed anomaly_map"):
        Model(path)
    path.with_suffix(".yaml").write_text("input: {height: 96, width: 96}\n")
    model = Model(path)
    assert (model.info.height, model.info.width) == (96, 96)
    assert model.run(np.full((2, 50, 70), 10, np.uint8))[0, 1] > 0.9  # fed as it is: the graph takes any size
