"""Model loading: the reference model's contract, and clear errors for files that break it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from linewatch.emulator.parts import PartEmulator
from linewatch.model.files import file_sha256
from linewatch.model.onnx import Model, ModelError, ModelOutputError, choose_providers
from tests.conftest import REFERENCE_MODEL

META = {"linewatch.labels": '["good", "defect"]', "linewatch.defect_labels": '["defect"]',
        "linewatch.input_layout": "NHW", "linewatch.input_height": "4", "linewatch.input_width": "4",
        "linewatch.input_channels": "1"}


def _tiny_model(path: Path, meta: dict[str, str], body: str = "softmax", in_type: int = TensorProto.UINT8) -> Path:
    """A 4x4 uint8 -> 2-class graph; `body` picks a healthy or a broken output."""
    nodes = [helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("ReduceMean", ["f"], ["m"], axes=[1, 2], keepdims=0),
             helper.make_node("Unsqueeze", ["m", "one"], ["m2"]),
             helper.make_node("Concat", ["m2", "m2"], ["two"], axis=1)]
    if body == "softmax":
        nodes.append(helper.make_node("Softmax", ["two"], ["probs"], axis=1))
    elif body == "nan":
        nodes.append(helper.make_node("Div", ["two", "zero"], ["d"]))
        nodes.append(helper.make_node("Sub", ["d", "d"], ["probs"]))  # inf - inf = NaN
    elif body == "three":
        nodes.append(helper.make_node("Concat", ["two", "m2"], ["probs"], axis=1))
    inits = [helper.make_tensor("one", TensorProto.INT64, [1], [1]),
             helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])]
    graph = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("image", in_type, ["N", 4, 4])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, None)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(path))
    return path


def test_reference_model_contract_and_accuracy() -> None:
    m = Model(REFERENCE_MODEL, providers="auto")
    assert m.providers == ["CPUExecutionProvider"]  # no GPU here: auto must not pretend otherwise
    assert m.info.sha256 == file_sha256(REFERENCE_MODEL)
    assert m.info.labels == ("good", "defect") and m.frame_shape == (256, 256)
    card = json.loads((REFERENCE_MODEL.parent / "card.json").read_text())
    assert card["sha256"] == m.info.sha256
    emu = PartEmulator(seed=11, defect_rate=0.5)
    parts = [emu.render(i) for i in range(120)]
    probs = m.run(np.stack([p.pixels for p in parts]))
    truth = np.array([p.truth["label"] == "defect" for p in parts])
    accuracy = float(((probs[:, 1] >= 0.5) == truth).mean())
    assert accuracy >= 0.9, "the bundled model really looks at the image"
    assert probs[truth, 1].mean() > 0.8 > 0.2 > probs[~truth, 1].mean()


def test_cpu_only_and_cuda_requests() -> None:
    assert choose_providers("cpu") == ["CPUExecutionProvider"]
    assert choose_providers("auto") == ["CPUExecutionProvider"]
    with pytest.raises(ModelError, match="cuda requested"):
        Model(REFERENCE_MODEL, providers="cuda")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "file not found"),
        (b"", "cannot load"),
        (b"\x08\x07not a protobuf at all" * 50, "cannot load"),
        ("truncated", "cannot load"),
    ],
)
def test_unusable_files_are_clear_errors(tmp_path: Path, content: bytes | str | None, message: str) -> None:
    path = tmp_path / "m.onnx"
    if content == "truncated":
        path.write_bytes(REFERENCE_MODEL.read_bytes()[:20000])
    elif content is not None:
        path.write_bytes(content)  # type: ignore[arg-type]
    with pytest.raises(ModelError, match=message) as err:
        Model(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ({k: v for k, v in META.items() if k != "linewatch.labels"}, "lacks linewatch.labels"),
        ({**META, "linewatch.labels": "good,defect"}, "unreadable metadata"),
        ({**META, "linewatch.defect_labels": '["crack"]'}, "not all in labels"),
        ({**META, "linewatch.input_layout": "NCHW"}, "input_layout must be one of"),
    ],
)
def test_metadata_contract(tmp_path: Path, meta: dict[str, str], message: str) -> None:
    with pytest.raises(ModelError, match=message):
        Model(_tiny_model(tmp_path / "m.onnx", meta))


def test_float_input_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="expects one uint8 image input"):
        Model(_tiny_model(tmp_path / "m.onnx", META, in_type=TensorProto.FLOAT))


@pytest.mark.parametrize(("body", "message"), [("nan", "NaN or inf"), ("three", r"output shape \(2, 3\)")])
def test_broken_outputs_are_detected(tmp_path: Path, body: str, message: str) -> None:
    m = Model(_tiny_model(tmp_path / "m.onnx", META, body))
    with pytest.raises(ModelOutputError, match=message):
        m.run(np.zeros((2, 4, 4), np.uint8))


def test_healthy_tiny_model_runs(tmp_path: Path) -> None:
    m = Model(_tiny_model(tmp_path / "m.onnx", META))
    probs = m.run(np.full((3, 4, 4), 7, np.uint8))
    np.testing.assert_allclose(probs, 0.5, atol=1e-6)
