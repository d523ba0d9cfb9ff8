"""Bring your own model: ONNX graphs with exactly the anomalib, YOLO and generic signatures, adapted."""

from __future__ import annotations

import dataclasses
import json
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper

from linewatch.model.adapters import FORMATS, ModelFile
from linewatch.model.onnx import Model, ModelError
from linewatch.store.images import heatmap_relpath
from tests.conftest import REFERENCE_MODEL, count_rows, db_rows, wait_for


def _save(path: Path, nodes: list, inputs: list, outputs: list, inits: list | None = None,
          meta: dict[str, str] | None = None) -> Path:
    graph = helper.make_graph(nodes, "byo", inputs, outputs, initializer=inits or [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    for k, v in (meta or {}).items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(path))
    return path


def _darkness(src: str, out: str) -> list:
    """out = 1 - mean(src) over C, H, W: a dark frame scores high (keepdims=0 -> shape (B,))."""
    return [helper.make_node("ReduceMean", [src], ["m"], axes=[1, 2, 3], keepdims=0),
            helper.make_node("Sub", ["one", "m"], [out])]


ONE = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])


def anomalib_model(tmp: Path, sidecar: dict | None = None) -> Path:
    nodes = [*_darkness("input", "pred_score"), helper.make_node("Sub", ["one", "input"], ["anomaly_map"])]
    path = _save(tmp / "model.onnx", nodes,
                 [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["B", 3, 64, 64])],
                 [helper.make_tensor_value_info("pred_score", TensorProto.FLOAT, ["B"]),
                  helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, ["B", 3, 64, 64])], [ONE])
    if sidecar is not None:
        (tmp / "metadata.json").write_text(json.dumps(sidecar))
    return path


def yolo_cls_model(tmp: Path) -> Path:
    # output0 = softmax([darkness, 1 - darkness] * 10) over classes {0: defect, 1: good}
    nodes = [*_darkness("images", "d"), helper.make_node("Sub", ["one", "d"], ["g"]),
             helper.make_node("Unsqueeze", ["d", "ax"], ["d1"]), helper.make_node("Unsqueeze", ["g", "ax"], ["g1"]),
             helper.make_node("Concat", ["d1", "g1"], ["c"], axis=1), helper.make_node("Mul", ["c", "ten"], ["l"]),
             helper.make_node("Softmax", ["l"], ["output0"], axis=1)]
    inits = [ONE, helper.make_tensor("ax", TensorProto.INT64, [1], [1]),
             helper.make_tensor("ten", TensorProto.FLOAT, [], [10.0])]
    image = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["B", 3, 32, 32])
    return _save(tmp / "cls.onnx", nodes, [image],
                 [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["B", 2])], inits,
                 {"names": "{0: 'defect', 1: 'good'}", "task": "classify", "imgsz": "[32, 32]"})


def yolo_det_model(tmp: Path) -> Path:
    # output0 (B, 4 + 2, 3 anchors): fixed boxes; class 'scratch' scores = darkness, 'label' scores = 0.8
    nodes = [*_darkness("images", "d"), helper.make_node("Unsqueeze", ["d", "ax12"], ["d3"]),  # (B,1,1)
             helper.make_node("Expand", ["d3", "shape_b13"], ["scr"]),                          # (B,1,3)
             helper.make_node("Mul", ["d3", "zero"], ["z"]),
             helper.make_node("Add", ["z", "boxes"], ["bx"]), helper.make_node("Add", ["z", "lab"], ["lb"]),
             helper.make_node("Concat", ["bx", "scr", "lb"], ["output0"], axis=1)]
    boxes = np.array([[10, 12, 40], [10, 10, 40], [8, 8, 8], [8, 8, 8]], np.float32).reshape(1, 4, 3)
    inits = [ONE, helper.make_tensor("ax12", TensorProto.INT64, [2], [1, 2]),
             helper.make_tensor("shape_b13", TensorProto.INT64, [3], [1, 1, 3]),
             helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
             onnx.numpy_helper.from_array(boxes, "boxes"),
             onnx.numpy_helper.from_array(np.full((1, 1, 3), 0.8, np.float32), "lab")]
    image = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["B", 3, 64, 64])
    (tmp / "det.yaml").write_text("defect_labels: [scratch]  # a printed label on the part is fine\n")
    return _save(tmp / "det.onnx", nodes, [image],
                 [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["B", 6, 3])], inits,
                 {"names": "{0: 'scratch', 1: 'label'}", "task": "detect"})


def generic_model(tmp: Path) -> Path:
    # logits (B, 3) = [0, 8 * darkness, -8]: ok vs crack vs dent
    nodes = [*_darkness("data", "d"), helper.make_node("Unsqueeze", ["d", "ax"], ["d1"]),
             helper.make_node("Mul", ["d1", "w"], ["l1"]), helper.make_node("Add", ["l1", "b"], ["logits"])]
    inits = [ONE, helper.make_tensor("ax", TensorProto.INT64, [1], [1]),
             helper.make_tensor("w", TensorProto.FLOAT, [3], [0.0, 8.0, 0.0]),
             helper.make_tensor("b", TensorProto.FLOAT, [3], [0.0, -4.0, -8.0])]
    data = helper.make_tensor_value_info("data", TensorProto.FLOAT, ["B", 1, 32, 32])
    path = _save(tmp / "generic.onnx", nodes, [data],
                 [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", 3])], inits)
    (tmp / "generic.yaml").write_text(yaml.safe_dump({
        "labels": ["ok", "crack", "dent"], "input": {"layout": "NCHW", "channels": 1, "scale": 1 / 255},
        "output": {"activation": "softmax"}}))
    return path


DARK, BRIGHT = np.full((2, 100, 120), 10, np.uint8), np.full((2, 100, 120), 245, np.uint8)


def test_anomalib_score_and_normalisation(tmp_path: Path) -> None:
    m = Model(anomalib_model(tmp_path))
    assert (m.info.adapter, m.info.labels, m.frame_shape) == ("anomalib", ("good", "defect"), None)
    assert m.run(DARK)[0, 1] > 0.9 > 0.1 > m.run(BRIGHT)[0, 1]
    pred = m.predict(np.concatenate([DARK[:1], BRIGHT[:1]]))  # each frame's map beside its scores
    probs, maps = pred.probs, pred.anomaly_maps
    assert maps is not None and maps.shape[0] == 2 == probs.shape[0]
    assert pred.detections is None
    assert maps[0].mean() > 0.9 > 0.1 > maps[1].mean(), (maps[0].mean(), maps[1].mean())
    sidecar = tmp_path / "norm"
    sidecar.mkdir()
    m2 = Model(anomalib_model(sidecar, {"image_threshold": 0.5, "min": 0.0, "max": 2.0}))
    np.testing.assert_allclose(m2.run(DARK)[0, 1], (1 - 10 / 255 - 0.5) / 2 + 0.5, atol=1e-5)


def test_yolo_classifier_puts_good_first(tmp_path: Path) -> None:
    m = Model(yolo_cls_model(tmp_path))
    assert m.info.adapter == "yolo-classify" and m.info.labels == ("good", "defect")
    assert m.info.defect_labels == {"defect"}
    assert m.run(DARK)[0, 1] > 0.99 and m.run(BRIGHT)[0, 0] > 0.99


def test_yolo_detector_nms_and_defect_classes(tmp_path: Path) -> None:
    m = Model(yolo_det_model(tmp_path))
    assert m.info.adapter == "yolo-detect"
    dark = m.predict(DARK)
    # letterboxed as Ultralytics feeds a detector: the 120x100 frame scaled to 64x53, 11 rows of grey 114 below
    mean = (53 * 10 + 11 * 114) / 64 / 255
    assert dark.probs[0, 1] == pytest.approx(1 - mean, abs=1e-4)  # 'scratch' makes it a defect, 'label' not
    assert dark.detections is not None and len(dark.detections) == len(DARK) and dark.anomaly_maps is None
    dets = dark.detections[0]
    assert [d.label for d in dets] == ["scratch", "scratch"]  # three boxes, two overlapping: NMS keeps two
    bright = m.predict(BRIGHT)
    assert bright.probs[0, 1] == pytest.approx(1 - (53 * 245 + 11 * 114) / 64 / 255, abs=1e-4)  # grey rows: 0.13
    assert bright.detections is not None
    assert {d.label for d in bright.detections[0]} == {"label"}  # boxes found, none of a defect class
    assert [d.label for d in dark.detections[0]] == ["scratch", "scratch"]  # a later batch leaves it as it was


def test_generic_sidecar(tmp_path: Path) -> None:
    m = Model(generic_model(tmp_path))
    assert m.info.adapter == "generic" and m.info.labels == ("ok", "crack", "dent")
    assert m.info.defect_labels == {"crack", "dent"}
    p = m.run(DARK)
    assert p.shape == (2, 3) and p[0].argmax() == 1 and abs(p[0].sum() - 1) < 1e-5


@pytest.mark.parametrize(("build", "key"), [(lambda tmp: REFERENCE_MODEL, "native"), (anomalib_model, "anomalib"),
                                            (yolo_cls_model, "yolo"), (yolo_det_model, "yolo"),
                                            (generic_model, "generic")],
                         ids=["native", "anomalib", "yolo-classify", "yolo-detect", "generic"])
def test_each_format_is_found_by_its_key_and_its_adapter_holds_no_batch_state(tmp_path: Path, build, key) -> None:
    m = Model(build(tmp_path))
    sidecar = m.info.path.with_suffix(".yaml")
    model_file = ModelFile(m.info.path, m.info.metadata, m.session.get_inputs(), m.session.get_outputs(),
                           yaml.safe_load(sidecar.read_text()) if sidecar.exists() else {})
    assert next(k for k, f in FORMATS.items() if f.recognises(model_file)) == key  # the first that claims it
    assert FORMATS[key].create(model_file) == m.adapter
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.adapter.labels = ("x",)  # type: ignore[misc]


def test_unknown_format_is_refused_with_the_reason(tmp_path: Path) -> None:
    path = _save(tmp_path / "x.onnx", _darkness("in", "out"),
                 [helper.make_tensor_value_info("in", TensorProto.FLOAT, ["B", 3, 8, 8])],
                 [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["B"])], [ONE])
    with pytest.raises(ModelError, match="unknown model format"):
        Model(path)
    path = yolo_cls_model(tmp_path)
    onnx_model = onnx.load(str(path))
    onnx_model.metadata_props[0].value = "{0: 'scratch', 1: 'dent'}"
    onnx.save(onnx_model, str(path))
    with pytest.raises(ModelError, match="exactly one good class"):
        Model(path)


@pytest.mark.slow
@pytest.mark.parametrize("build", [anomalib_model, yolo_cls_model, yolo_det_model, generic_model],
                         ids=["anomalib", "yolo-classify", "yolo-detect", "generic"])
def test_byo_model_runs_on_the_line(line, tmp_path: Path, build) -> None:
    from linewatch.model.files import file_sha256, model_files

    folder = tmp_path / "model"
    folder.mkdir()
    model = build(folder)
    frames = 60
    ln = line(cameras=[{"name": "cam0", "fps": 40, "max_frames": frames}], model={"path": str(model)}).start()
    wait_for(lambda: count_rows(ln.data_dir) >= frames, 60, f"{frames} rows")
    if build is anomalib_model:  # its anomaly map is kept beside each kept image and served blended over it
        kept = db_rows(ln.data_dir, "SELECT id, image FROM inspections WHERE image IS NOT NULL")
        assert kept
        for r in kept:
            heat_path = ln.data_dir / heatmap_relpath(r["image"])
            wait_for(heat_path.is_file, 10, f"heatmap {heat_path.name}")  # written after the row commits
            heat = cv2.imread(str(heat_path), cv2.IMREAD_GRAYSCALE)
            assert heat is not None and heat.shape == (64, 64)
            with urllib.request.urlopen(f"{ln.url}/api/inspections/{r['id']}/heatmap.png", timeout=10) as resp:
                overlay = cv2.imdecode(np.frombuffer(resp.read(), np.uint8), cv2.IMREAD_COLOR)
            assert overlay.shape == (256, 256, 3)
            assert (overlay[..., 0] != overlay[..., 2]).any()  # coloured: the map is blended over a grey frame
    if build is yolo_det_model:  # boxes kept with each verdict, in frame pixels, and drawn on the kept image
        boxed = db_rows(ln.data_dir, "SELECT id, image, detections FROM inspections WHERE detections != '[]'")
        assert boxed
        drawn = next(r for r in boxed if r["image"])
        with urllib.request.urlopen(f"{ln.url}/api/inspections/{drawn['id']}/heatmap.png", timeout=10) as resp:
            overlay = cv2.imdecode(np.frombuffer(resp.read(), np.uint8), cv2.IMREAD_COLOR)
        height, width = overlay.shape[:2]
        for r in boxed:
            found = json.loads(r["detections"])
            assert {d["label"] for d in found} <= {"scratch", "label"}
            for d in found:
                x, y, w, h = d["box"]
                assert 0 <= x <= x + w <= width and 0 <= y <= y + h <= height and w > 0 and h > 0
        x, y, w, h = (round(v) for v in json.loads(drawn["detections"])[0]["box"])
        assert tuple(overlay[y + h, x + w // 2]) == (40, 40, 255)  # the box's bottom edge, drawn red (BGR)
    ln.stop()
    rows = db_rows(ln.data_dir, "SELECT seq, model_hash, decided_by, probs FROM inspections ORDER BY seq")
    assert [r["seq"] for r in rows] == list(range(frames))
    # The recorded hash is the version's: the graph's own, or with a sidecar the hash over both files.
    sidecar = model.with_suffix(".yaml")
    version = model_files(model).read_by((sidecar.name,)).version_hash() if sidecar.exists() else file_sha256(model)
    assert {r["model_hash"] for r in rows} == {version} == {Model(model).info.sha256}
    assert not [r for r in rows if r["decided_by"] in ("timeout", "not_inspected") or "model_" in r["decided_by"]]
    labels = Model(model).info.labels
    assert all(list(json.loads(r["probs"])) == list(labels) for r in rows if r["probs"])
