"""Model health in a real worker (NaN, wrong shape, too slow, file replaced), its state machine, the
model-file watch and the streak alarms."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from linewatch.config import ModelConfig, ModelHealthConfig, StreakConfig
from linewatch.infer.health import ModelFileWatch, ModelHealth
from linewatch.model.files import file_sha256
from linewatch.model.onnx import Model, ModelError
from linewatch.record.streaks import StreakWatch
from linewatch.wire import KIND_ALARM, KIND_VERDICT, Verdict
from tests.conftest import REFERENCE_MODEL, InferRig, wait_for

META = {"linewatch.labels": '["good", "defect"]', "linewatch.defect_labels": '["defect"]',
        "linewatch.input_layout": "NHW", "linewatch.input_height": "256", "linewatch.input_width": "256",
        "linewatch.input_channels": "1"}


def _frame_model(path: Path, body: str) -> Path:
    """A 256x256 uint8 -> class graph: `nan` is finite on the black warm-up frame and NaN on real parts
    (sqrt of minus the mean grey level); `three` always has three classes."""
    nodes = [helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("ReduceMean", ["f"], ["m"], axes=[1, 2], keepdims=0),
             helper.make_node("Unsqueeze", ["m", "one"], ["m2"]),
             helper.make_node("Concat", ["m2", "m2"], ["two"], axis=1)]
    if body == "nan":
        nodes += [helper.make_node("Neg", ["m2"], ["neg"]), helper.make_node("Sqrt", ["neg"], ["root"]),
                  helper.make_node("Add", ["two", "root"], ["z"]),
                  helper.make_node("Softmax", ["z"], ["probs"], axis=1)]
    else:
        nodes.append(helper.make_node("Concat", ["two", "m2"], ["probs"], axis=1))
    inits = [helper.make_tensor("one", TensorProto.INT64, [1], [1]),
             helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])]
    graph = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", 256, 256])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, None)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    for k, v in META.items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(path))
    return path


def _collect(rig: InferRig, verdicts: int, alarm_kind: str) -> tuple[list[Verdict], dict]:
    """Read the worker's messages until `verdicts` verdicts and an alarm of `alarm_kind` have come."""
    got: list[Verdict] = []
    alarm: dict = {}
    while len(got) < verdicts or not alarm:
        kind, msg = rig.receive()
        if kind == KIND_VERDICT:
            got.append(msg)
        elif kind == KIND_ALARM and msg["kind"] == alarm_kind:
            alarm = msg
    return got, alarm


def _ready(rig: InferRig) -> dict:
    return json.loads((rig.cfg.run_dir / "ready" / "infer[0]").read_text())  # type: ignore[no-any-return]


@pytest.mark.parametrize(("body", "rule", "message"), [("nan", "model_output", "NaN or inf"),
                                                       ("three", "model_unavailable", "output shape (1, 3)")])
def test_model_file_replaced_by_a_faulty_one_gives_the_safe_verdict_and_rules_only_mode(
        tmp_path: Path, body: str, rule: str, message: str) -> None:
    """A model whose output breaks the contract on real parts fails at run time (`model_output`); one
    that breaks it already on the warm-up frame is never swapped in (`model_unavailable`)."""
    current = tmp_path / "m.onnx"
    shutil.copy(REFERENCE_MODEL, current)
    rig = InferRig(tmp_path, current, failsafe={"model_health": {"reload_check_s": 0.1}})
    try:
        rig.send_part(0)
        assert rig.next_verdict().model_hash == file_sha256(REFERENCE_MODEL)
        os.replace(_frame_model(tmp_path / "bad.onnx", body), current)
        wait_for(lambda: _ready(rig)["ruleset_hash"] and _ready(rig)["sha256"] != file_sha256(REFERENCE_MODEL),
                 10, "the worker to follow the file")
        for seq in (1, 2):
            rig.send_part(seq)
        verdicts, alarm = _collect(rig, 2, rule)
        for v in verdicts:
            assert (v.final, v.decided_by) == ("FAIL", f"rule:{rule}"), v
            assert message in v.reasons[0]
        assert alarm["severity"] == "critical" and "rules-only" in alarm["message"] and message in alarm["message"]
        assert _ready(rig)["rules_only"] is True
        os.replace(shutil.copy(REFERENCE_MODEL, tmp_path / "good.onnx"), current)  # the good file returns
        wait_for(lambda: not _ready(rig)["rules_only"], 10, "recovery")
        rig.send_part(3)
        v = rig.next_verdict()
        assert v.model_hash == file_sha256(REFERENCE_MODEL) and v.decided_by != f"rule:{rule}"
    finally:
        rig.close()


def test_a_batch_over_the_latency_budget_gets_the_safe_verdict(tmp_path: Path) -> None:
    rig = InferRig(tmp_path, REFERENCE_MODEL, failsafe={"model_health": {"latency_budget_ms": 0.001}})
    try:
        for seq in range(3):
            rig.send_part(seq)
        verdicts, alarm = _collect(rig, 3, "model_latency")
        assert alarm["severity"] == "critical" and "rules-only" in alarm["message"]
        assert [(v.seq, v.final, v.decided_by) for v in verdicts] == [(s, "FAIL", "rule:model_latency")
                                                                      for s in range(3)]
        assert all("> threshold 0.001 ms" in v.reasons[0] for v in verdicts)
        assert _ready(rig)["rules_only"] is True
    finally:
        rig.close()


def test_rules_only_mode_state_machine() -> None:
    h = ModelHealth(recover_after=2)
    assert not h.rules_only and not h.ran_clean()
    assert h.failed("NaN") is True and h.rules_only
    assert h.failed("NaN again") is False, "one alarm per episode"
    assert h.ran_clean() is False and h.rules_only
    assert h.failed("slow") is False and h.clean_batches == 0
    assert h.ran_clean() is False and h.ran_clean() is True and not h.rules_only
    h.failed("cannot load")
    assert h.loaded() is True and not h.rules_only and h.loaded() is False


def test_model_file_watch_loads_a_changed_file_once_it_is_stable(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    shutil.copy(REFERENCE_MODEL, path)
    watch = ModelFileWatch(ModelConfig(path=path, providers="cpu"), ModelHealthConfig(reload_check_s=0.05))

    def settle() -> Model | ModelError:
        return wait_for(watch.poll, 10, "the watch to load the file", interval=0.02)  # type: ignore[no-any-return]

    time.sleep(0.2)
    assert watch.poll() is None, "an unchanged file is not reloaded"
    path.write_bytes(REFERENCE_MODEL.read_bytes()[:3000])
    result = settle()
    assert isinstance(result, ModelError) and "cannot load" in str(result)
    shutil.copy(REFERENCE_MODEL, tmp_path / "new.onnx")
    os.replace(tmp_path / "new.onnx", path)
    result = settle()
    assert isinstance(result, Model) and result.info.name == "reference"
    path.unlink()
    assert "file not found" in str(settle())


def test_streak_alarms_trip_once_and_rearm() -> None:
    w = StreakWatch(StreakConfig(consecutive_fails=3, window=10, max_fail_rate=0.5, request_stop=True))
    rows = [{"camera": "cam0", "final": f} for f in ["FAIL", "FAIL", "PASS", "FAIL", "FAIL", "FAIL", "FAIL"]]
    alarms = w.observe(rows)
    assert [a.kind for a in alarms] == ["fail_streak"]
    assert "3 FAILs in a row >= threshold 3" in alarms[0].message and alarms[0].severity == "critical"
    assert "line stop requested" in alarms[0].message
    assert w.observe([{"camera": "cam1", "final": "FAIL"}] * 2) == [], "streaks are per camera"
    alarms = w.observe([{"camera": "cam0", "final": "PASS"}] * 2 + [{"camera": "cam0", "final": "FAIL"}])
    assert [a.kind for a in alarms] == ["fail_rate"] and "FAIL rate 0.700" in alarms[0].message
    assert w.observe([{"camera": "cam0", "final": "FAIL"}]) == [], "no repeat while the rate stays high"
    assert [a.kind for a in w.observe([{"camera": "cam0", "final": "FAIL"}])] == ["fail_streak"], "a new run"
    quiet = StreakWatch(StreakConfig(consecutive_fails=0, max_fail_rate=1.0))
    assert quiet.observe([{"camera": "cam0", "final": "FAIL"}] * 500) == []
