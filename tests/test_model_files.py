"""A model is all its files: external weights and sidecars are loaded, stored, moved and hashed with the graph;
a fixed-batch graph runs at any batch; the gate judges at the bands the line will use."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from linewatch.config import FailsafeConfig
from linewatch.failsafe import FailSafe
from linewatch.model.files import file_sha256, model_files
from linewatch.model.onnx import Model, ModelError
from linewatch.model.registry import Registry, RegistryError, holdout_metrics, validate
from tests.test_adapters import DARK, anomalib_model, yolo_cls_model, yolo_det_model
from tests.test_training import write_parts


def _external(tmp: Path) -> Path:
    """The anomalib-shaped test graph with its constant stored outside the graph, as torch's exporter does."""
    src = anomalib_model(tmp / "src")
    model = onnx.load(str(src))
    raw = [onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(t), t.name) for t in model.graph.initializer]
    del model.graph.initializer[:]
    model.graph.initializer.extend(raw)  # raw bytes: what the external-data writer moves out
    out = tmp / "ext" / "model.onnx"
    out.parent.mkdir(parents=True)
    onnx.save_model(model, str(out), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx.data", size_threshold=0)
    return out


@pytest.fixture
def src(tmp_path: Path) -> Path:
    (tmp_path / "src").mkdir()
    return tmp_path


def test_external_weights_load_from_the_graphs_path_and_are_part_of_its_version(src: Path) -> None:
    path = _external(src)
    files = model_files(path)
    assert files.external_data == ("model.onnx.data",)
    m = Model(path)
    assert m.files.names() == ("model.onnx", "model.onnx.data")
    assert m.info.sha256 not in (file_sha256(path), file_sha256(path.with_name("model.onnx.data")))
    assert m.run(DARK)[0, 1] > 0.9  # the weights were found and used

    data = path.with_name("model.onnx.data")
    data.write_bytes(data.read_bytes()[:-4] + np.float32(0.5).tobytes())  # other weights, same graph file
    assert Model(path).info.sha256 != m.info.sha256  # the version changes with its weights

    data.unlink()
    with pytest.raises(ModelError, match=r"keeps its weights in model\.onnx\.data, which is not beside it"):
        Model(path)


def test_registry_stores_and_activates_every_file_of_a_version(src: Path, tmp_path: Path) -> None:
    reg = Registry(tmp_path / "models")
    ext = _external(src)
    report = reg.promote(str(ext), "default", None)
    stored = reg.find(report["candidate"])
    assert sorted(p.name for p in stored.file.parent.iterdir() if p.suffix != ".json") == ["model.onnx",
                                                                                            "model.onnx.data"]
    active = Model(reg.active_path("default"))  # through the link: the weights beside the real file are found
    assert active.info.sha256 == report["candidate"] and active.run(DARK)[0, 1] > 0.9

    # A sidecar (here: which box classes are defects) moves with its graph: after promote the active model reads
    # it, and its hash covers it, so a changed sidecar is a different version.
    det = yolo_det_model(src / "src")
    report = reg.promote(str(det), "detect", None)
    m = Model(reg.active_path("detect"))
    assert m.adapter.box_defects == {"scratch"}  # type: ignore[attr-defined]
    assert m.info.sha256 == report["candidate"] != file_sha256(det)
    stored_sidecar = reg.find(report["candidate"]).file.with_suffix(".yaml")
    assert stored_sidecar.is_file()
    stored_sidecar.write_text("defect_labels: [label]\n")
    assert Model(reg.active_path("detect")).info.sha256 != report["candidate"]


def test_a_fixed_batch_graph_runs_every_batch_size_the_worker_uses(src: Path) -> None:
    for fixed in (1, 2):
        path = yolo_cls_model(src / "src")
        model = onnx.load(str(path))
        for value in (*model.graph.input, *model.graph.output):
            value.type.tensor_type.shape.dim[0].dim_value = fixed
        onnx.save(model, str(path))
        m = validate(path, max_batch=4)  # batch sizes 1, 2, 4: sliced (and padded) to the graph's batch
        assert m.fixed_batch == fixed
        frames = np.concatenate([DARK[:1], np.full((2, 100, 120), 245, np.uint8)])  # 3 frames: padded for 2
        probs = m.run(frames)
        assert probs.shape == (3, 2)
        assert probs[0, 1] > 0.99 and probs[1, 0] > 0.99 and probs[2, 0] > 0.99


def test_the_gate_judges_at_the_bands_the_line_uses(src: Path, tmp_path: Path) -> None:
    holdout = write_parts(tmp_path / "holdout", 24, seed=5)
    plain = Model(anomalib_model(src / "src"))
    banded_dir = src / "banded"
    banded_dir.mkdir()
    path = anomalib_model(banded_dir)
    path.with_suffix(".yaml").write_text("review_band: [0.45, 0.55]\n")
    banded = Model(path)
    for model, band in ((plain, (0.2, 0.8)), (banded, (0.45, 0.55))):
        rule = FailSafe(FailsafeConfig(), None, model.info).output_rules[0]
        assert (rule.low, rule.high) == band  # what the line decides with ...
        assert holdout_metrics(model, holdout)["band"] == list(band)  # ... is what the gate judges with
    cfg = FailsafeConfig(class_bands={"good": (0.3, 0.6)})
    assert holdout_metrics(banded, holdout, cfg)["band"] == [0.4, 0.7]  # the line config's own bands win

    bad = src / "bad"
    bad.mkdir()
    shutil.copy(path, bad / path.name)
    (bad / "model.yaml").write_text("review_band: [0.9, 0.1]\n")
    with pytest.raises(ModelError, match=r"review_band must be \[low, high\]"):
        Model(bad / "model.onnx")
    with pytest.raises(RegistryError, match=r"holdout .*nope"):
        holdout_metrics(plain, tmp_path / "nope")


def test_bad_model_files_are_refused_naming_the_problem(src: Path, tmp_path: Path) -> None:
    path = _external(src)
    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:  # a graph pointing at a file outside its folder
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../elsewhere.data"
    outside = tmp_path / "outside"
    outside.mkdir()
    onnx.save_model(model, str(outside / "model.onnx"))
    (tmp_path / "elsewhere.data").write_bytes(path.with_name("model.onnx.data").read_bytes())
    with pytest.raises(ModelError, match=r"'\.\./elsewhere\.data' lies outside the model's folder"):
        Model(outside / "model.onnx")

    newer = onnx.load(str(anomalib_model(src / "src")))
    newer.ir_version = 14  # what onnx writes by default, one above what this ONNX Runtime loads
    onnx.save(newer, str(tmp_path / "ir14.onnx"))
    with pytest.raises(ModelError, match=r"IR version: 14, max supported IR version: 13; .* with an older opset"):
        Model(tmp_path / "ir14.onnx")

    listed = src / "listed"
    listed.mkdir()
    det = yolo_det_model(listed)
    det.with_suffix(".yaml").write_text("- scratch\n- dent\n")
    with pytest.raises(ModelError, match=r"det\.yaml: must be a mapping of settings, got list"):
        Model(det)
