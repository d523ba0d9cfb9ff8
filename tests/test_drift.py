"""The drift watch's parts: the CUSUM's calibration against simulation, the watch over verdicts (reference,
alarm text, latching, acknowledgement, a stationary run), CBPE, and references stored as JSON."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from linewatch.config import WatchConfig
from linewatch.model.files import metadata_props, model_files
from linewatch.model.onnx import Model
from linewatch.watch import (
    SKETCH_DIMS,
    Cbpe,
    DriftWatch,
    Key,
    Reference,
    ReferenceError,
    average_run_length,
    sketch,
    threshold_for,
)
from linewatch.watch.model_reference import model_signals
from linewatch.wire import MessageError, OperatorAction, Verdict
from tests.conftest import REFERENCE_MODEL

EXPORTS = Path(__file__).parent / "exports"


def _simulated_arl(z: np.ndarray, k: float, h: float, runs: int, rng: np.random.Generator) -> float:
    lengths = []
    for _ in range(runs):
        s, n = 0.0, 0
        draws = z[rng.integers(len(z), size=100_000)] - k
        while True:
            s = max(0.0, s + draws[n])
            n += 1
            if s > h:
                break
        lengths.append(n)
    return float(np.mean(lengths))


@pytest.mark.parametrize("distribution", ["normal", "skewed"])
def test_markov_chain_threshold_gives_the_target_run_length_in_simulation(distribution: str) -> None:
    rng = np.random.default_rng(7)
    ref = rng.standard_normal(1000) if distribution == "normal" else rng.gamma(2.0, 1.0, 1000)
    z = (ref - ref.mean()) / ref.std()
    h = threshold_for(z - 0.125, np.ones_like(z), 500)
    assert _simulated_arl(z, 0.125, h, 1500, rng) == pytest.approx(500, rel=0.12)


def test_threshold_grows_with_the_target_and_a_bernoulli_rate_is_calibrated_too() -> None:
    z = np.random.default_rng(1).standard_normal(1000)
    w = np.ones_like(z)
    assert threshold_for(z - 0.125, w, 1e4) < threshold_for(z - 0.125, w, 1e6) < threshold_for(z - 0.125, w, 1e8)
    p = 0.02
    support = (np.array([0.0, 1.0]) - p) / math.sqrt(p * (1 - p))
    weights = np.array([1 - p, p])
    h = threshold_for(support - 0.125, weights, 1e5)
    assert average_run_length(support - 0.125, weights, h) >= 1e5
    assert average_run_length(support - 0.125, weights, h * 0.8) < 1e5, "the smallest such threshold"


def _verdict(seq: int, brightness: float, *, final: str = "PASS", score: float = 0.1, decided_by: str = "model",
             camera: str = "cam0", model: str = "m1", embedding: list[float] | None = None) -> Verdict:
    return Verdict(camera=camera, stream="s", seq=seq, part_id=f"p{seq}", final=final,  # type: ignore[arg-type]
                   decided_by=decided_by, model_hash=model, score=score, embedding=embedding,
                   signals={"brightness": brightness, "contrast": 40.0 + brightness / 10, "part_x": 0.5})


def _settled(watch: DriftWatch, camera: str = "cam0") -> None:
    """Wait for the calibration thread (tens of ms)."""
    for _ in range(500):
        if watch.references(camera) is not None:
            return
        pending = [w.pending for w in watch._keys[camera].values() if w.pending is not None]
        if pending:
            pending[0].result(timeout=10)
        watch.observe(_verdict(-1, 120.0, camera=camera))
    raise AssertionError("no reference")


def _feed(watch: DriftWatch, values: np.ndarray, start: int, **kw: object) -> list[tuple[int, str]]:
    found = []
    for i, x in enumerate(values):
        _, alarms = watch.observe(_verdict(start + i, float(x), **kw))  # type: ignore[arg-type]
        found += [(a.seq, a.signal) for a in alarms]
    return found


def test_a_step_alarms_once_names_what_drifted_and_stays_quiet_until_acknowledged() -> None:
    rng = np.random.default_rng(3)
    watch = DriftWatch(WatchConfig(reference_parts=500), lambda key: None)
    assert _feed(watch, 120 + 3 * rng.standard_normal(500), 0) == []
    _settled(watch)
    assert _feed(watch, 120 + 3 * rng.standard_normal(2000), 1000) == [], "no drift, no alarm"
    step = _feed(watch, 114 + 3 * rng.standard_normal(500), 3000)  # -5 %: two reference sds
    brightness = [seq for seq, signal in step if signal == "brightness"]
    assert len(brightness) == 1 and 3000 < brightness[0] < 3150
    assert ("cam0", "brightness") in watch.latched
    assert _feed(watch, 114 + 3 * rng.standard_normal(500), 3500) == [], "latched until acknowledged"
    watch.acknowledged(set())
    again = _feed(watch, 114 + 3 * rng.standard_normal(300), 4000)
    assert [s for s in again if s[1] == "brightness"], "a drift that lasts alarms again once acknowledged"


def test_alarm_text_names_camera_signal_values_change_statistic_and_window() -> None:
    rng = np.random.default_rng(4)
    watch = DriftWatch(WatchConfig(reference_parts=400), lambda key: None)
    _feed(watch, 100 + 2 * rng.standard_normal(400), 0, camera="top")
    _settled(watch, "top")
    alarm = None
    for i, x in enumerate(80 + 2 * rng.standard_normal(200)):
        _, alarms = watch.observe(_verdict(1000 + i, float(x), camera="top"))
        alarm = alarm or next((a for a in alarms if a.signal == "brightness"), None)
    assert alarm is not None and alarm.direction == "down" and alarm.camera == "top"
    assert alarm.current == pytest.approx(80, abs=1.5) and alarm.reference == pytest.approx(100, abs=0.5)
    assert alarm.text == (f"drift: camera top, brightness mean {alarm.reference:.3g} -> {alarm.current:.3g} "
                          f"({(alarm.current - alarm.reference) / alarm.reference * 100:+.0f} %), CUSUM over "
                          f"{alarm.window_parts} parts (recipe , reference of 400 learned parts)")
    assert alarm.seq - alarm.window_parts + 1 == 1000, "the window starts where the change did"


def test_a_long_stationary_run_raises_no_alarm_at_the_default_false_alarm_rate() -> None:
    rng = np.random.default_rng(5)
    watch = DriftWatch(WatchConfig(reference_parts=1000), lambda key: None)
    for i, (x, bad) in enumerate(zip(rng.gamma(4.0, 5.0, 1000) + 100, rng.random(1000) < 0.1, strict=True)):
        watch.observe(_verdict(i, float(x), final="FAIL" if bad else "PASS"))
    _settled(watch)
    finals = rng.random(40_000) < 0.1
    found = []
    for i, (x, bad) in enumerate(zip(rng.gamma(4.0, 5.0, 40_000) + 100, finals, strict=True)):
        _, alarms = watch.observe(_verdict(2000 + i, float(x), final="FAIL" if bad else "PASS"))
        found += alarms
    assert found == []


def test_defect_rate_rise_and_model_change_learn_a_new_reference() -> None:
    rng = np.random.default_rng(6)
    watch = DriftWatch(WatchConfig(reference_parts=500), lambda key: None)
    for i in range(500):
        watch.observe(_verdict(i, 120.0 + rng.standard_normal(), final="FAIL" if rng.random() < 0.1 else "PASS"))
    _settled(watch)
    seen = []
    for i in range(1500):
        _, alarms = watch.observe(_verdict(1000 + i, 120.0 + rng.standard_normal(),
                                           final="FAIL" if rng.random() < 0.25 else "PASS"))
        seen += [a for a in alarms if a.signal == "defect_rate"]
    assert seen and seen[0].text.startswith(f"drift: camera cam0, defect rate (FAIL or REVIEW) "
                                            f"{seen[0].reference * 100:.1f} % -> {seen[0].current * 100:.1f} %, CUSUM")
    assert seen[0].reference == pytest.approx(0.1, abs=0.03) and seen[0].current == pytest.approx(0.25, abs=0.08)
    assert seen[0].seq < 1000 + 600
    watch.observe(_verdict(5000, 120.0, model="m2"))
    assert watch.learning_progress("cam0") == (1, 500), "a new model learns its own reference"


def test_a_new_defect_type_the_model_fails_alarms_within_the_goal_and_a_stationary_run_does_not() -> None:
    """As in the drift benchmark's metal-surface: a flaw the model never saw, on 10 % of the parts that had none,
    which the model fails like its known defects (defect rate 22 % -> 30 %)."""
    def part(rng: np.random.Generator, new_share: float) -> tuple[str, float]:
        bad = rng.random() < 0.22 or rng.random() < new_share
        return ("FAIL", float(rng.uniform(0.9, 1.0))) if bad else ("PASS", float(rng.beta(1, 30)))

    for new_share, alarmed in ((0.0, False), (0.1, True)):
        rng = np.random.default_rng(17)
        watch = DriftWatch(WatchConfig(), lambda key: None)
        for i in range(1000):
            final, score = part(rng, 0.0)
            watch.observe(_verdict(i, 120.0 + rng.standard_normal(), final=final, score=score))
        _settled(watch)
        found = []
        for i in range(2000):
            final, score = part(rng, new_share)
            found += watch.observe(_verdict(1200 + i, 120.0 + rng.standard_normal(), final=final, score=score))[1]
        assert bool(found) is alarmed, [a.text for a in found]
        if alarmed:
            a = found[0]
            assert a.signal in ("score", "defect_rate") and a.direction == "up" and a.seq < 1200 + 1500
            assert re.fullmatch(r"drift: camera cam0, (model score|defect rate \(FAIL or REVIEW\)) \S+( %)? -> \S+"
                                r"( %| \(\+\d+ %\)), CUSUM over \d+ parts \(recipe , reference of 1000 learned parts\)",
                                a.text), a.text
        watch.close()


def test_parts_not_inspected_are_not_watched_and_rows_keep_their_signals() -> None:
    watch = DriftWatch(WatchConfig(reference_parts=100, shift_sd=0.5), lambda key: None)
    timeout = Verdict.not_inspected(("cam0", "s", 1), "r", "deadline")
    assert watch.observe(timeout) == (None, [])
    v = _verdict(2, 120.0)
    signals, _ = watch.observe(v)
    assert signals == v.signals and watch.learning_progress("cam0") == (1, 100)


def test_embedding_distance_is_watched_and_kept_in_the_row() -> None:
    rng = np.random.default_rng(8)
    watch = DriftWatch(WatchConfig(reference_parts=400), lambda key: None)
    emb = lambda shift: sketch(rng.standard_normal(64).astype(np.float32) + shift)  # noqa: E731
    for i in range(400):
        watch.observe(_verdict(i, 120.0 + rng.standard_normal(), embedding=emb(0.0)))
    _settled(watch)
    ref = watch.references("cam0")
    assert ref is not None and "embedding" in ref.signals and len(ref.centroid or []) == SKETCH_DIMS
    signals, _ = watch.observe(_verdict(400, 120.0, embedding=emb(0.0)))
    assert signals is not None and 0 < signals["embedding"] < 3
    found = []
    for i in range(300):
        found += watch.observe(_verdict(500 + i, 120.0 + rng.standard_normal(), embedding=emb(1.5)))[1]
    assert any(a.signal == "embedding" and a.direction == "up" for a in found)


def test_estimated_defect_rate_and_accuracy_from_calibrated_probabilities() -> None:
    rng = np.random.default_rng(9)
    watch = DriftWatch(WatchConfig(reference_parts=100, shift_sd=0.5, window=5000), lambda key: None)
    truth = []
    right = []
    for i in range(5000):
        p = float(rng.beta(0.3, 1.5))  # calibrated: the part is defective with probability p
        bad = rng.random() < p
        final = "FAIL" if p >= 0.5 else "PASS"
        truth.append(bad)
        right.append((final == "FAIL") == bad)
        watch.observe(_verdict(i, 120.0, final=final, score=p))
    est = watch.estimates["cam0"]
    assert est.defect_rate == pytest.approx(np.mean(truth), abs=0.02)
    assert est.accuracy == pytest.approx(np.mean(right), abs=0.02)


def _learnt(seed: int) -> tuple[Key, Reference]:
    """A reference learnt over 400 parts, as record takes it to store."""
    rng = np.random.default_rng(seed)
    watch = DriftWatch(WatchConfig(reference_parts=400), lambda key: None)
    _feed(watch, 120 + 3 * rng.standard_normal(400), 0)
    _settled(watch)
    (key, ref), = watch.completed
    return key, ref


def test_references_round_trip_as_json_and_a_corrupt_one_is_refused() -> None:
    stored: dict[object, Reference] = {}
    key, ref = _learnt(10)
    back = Reference.from_json(ref.to_json())
    assert back.to_json() == ref.to_json()
    stored[key] = back
    restarted = DriftWatch(WatchConfig(reference_parts=400), lambda k: stored.get(k))
    restarted.observe(_verdict(500, 120.0))
    assert restarted.references("cam0") is back, "a restart takes the stored reference, learns nothing"
    broken = ref.to_json()
    broken["signals"]["brightness"]["sd"] = 0
    with pytest.raises(ReferenceError, match="drift reference of brightness: ValueError"):
        Reference.from_json(broken)
    with pytest.raises(ReferenceError, match="drift reference: KeyError"):
        Reference.from_json({"signals": {}})


def test_a_model_supplies_its_training_images_brightness_and_contrast_as_reference() -> None:
    model = Model(REFERENCE_MODEL, providers="cpu")
    stats = json.loads(model.info.metadata["linewatch.reference_stats"])
    given = model_signals(REFERENCE_MODEL, model.info.sha256, 0.125, 1e8, 1000)
    assert set(given) == {"brightness", "contrast"}  # a one-channel model: its std is the grey image's
    assert given["brightness"].mean == pytest.approx(stats["mean"][0], rel=0.01)
    assert given["brightness"].cusum.sd == pytest.approx(stats["mean"][1], rel=0.05)
    assert given["contrast"].mean == pytest.approx(stats["std"][0], rel=0.01) and given["contrast"].source == "model"
    assert model_signals(REFERENCE_MODEL, "0" * 64, 0.125, 1e8, 1000) == {}, "another version's figures are not taken"


@pytest.mark.parametrize("path", [REFERENCE_MODEL, EXPORTS / "yolo-cls-static.onnx",
                                  EXPORTS / "anomalib-padim" / "model.onnx"],
                         ids=["linewatch", "ultralytics", "anomalib-external-weights"])
def test_a_models_metadata_is_read_as_onnx_reads_it_without_importing_onnx(path: Path) -> None:
    """record reads a model's metadata when it learns a reference, beside the running line: with protobuf and
    a two-field schema, not the onnx import (0.7 s of a core) and a parse of every tensor."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    assert metadata_props(path.read_bytes()) == {p.key: p.value for p in proto.metadata_props}
    weights = {e.value for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
               for e in t.external_data if e.key == "location"}
    assert set(model_files(path).external_data) == weights  # the anomalib export keeps them in model.onnx.data
    code = ("import sys; from pathlib import Path; from linewatch.model.files import metadata_props, model_files; "
            "meta = metadata_props(Path(sys.argv[1]).read_bytes()); model_files(Path(sys.argv[1])); "
            "print(len(meta), 'onnx' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True).stdout
    assert out.split()[1] == "False", "onnx was imported"
    with pytest.raises(ValueError, match="not an ONNX model"):
        metadata_props(b"\xff" * 64)


def test_an_embedding_too_large_to_project_gives_no_sketch_rather_than_an_unstorable_verdict() -> None:
    assert sketch(np.full(64, 3e38, np.float32)) is None
    v = Verdict("cam0", "s", 1, "p", "PASS", "model", signals={"brightness": 1.0}, embedding=sketch(np.ones(64)))
    assert Verdict.from_bytes(v.to_bytes()).embedding == v.embedding



def test_a_shift_too_small_for_the_reference_size_is_refused_naming_both() -> None:
    with pytest.raises(ValueError, match=r"watch.shift_sd 0.25 is too small for watch.reference_parts 100: it must be "
                                         r"at least 0.44"):
        WatchConfig(reference_parts=100)


def test_rules_only_parts_are_not_watched() -> None:
    watch = DriftWatch(WatchConfig(reference_parts=100, shift_sd=0.5), lambda key: None)
    for rule in ("rule:model_unavailable", "rule:model_latency", "rule:model_error"):
        watch.observe(_verdict(1, 120.0, final="FAIL", decided_by=rule))
    assert watch.learning_progress("cam0") is None, "an outage teaches the reference nothing"
    watch.observe(_verdict(2, 120.0, final="FAIL", decided_by="rule:exposure"))
    assert watch.learning_progress("cam0") == (1, 100), "a fail-safe rule's override is a part like any other"


def test_a_quiet_reference_is_widened_to_the_floor_so_a_glint_does_not_alarm() -> None:
    watch = DriftWatch(WatchConfig(reference_parts=1000), lambda key: None)
    for i in range(1000):  # saturation 0 on every reference part, brightness almost constant
        watch.observe(Verdict("cam0", "s", i, "p", "PASS", "model", model_hash="m1", score=0.1,
                              signals={"saturation": 0.0, "brightness": 120.0 + 0.01 * (i % 3)}))
    _settled(watch)
    ref = watch.references("cam0")
    assert ref is not None and ref.signals["saturation"].cusum.up.h > 20 and ref.signals["brightness"].cusum.up.h > 20
    found = []
    for i in range(2000):  # a glint now and then (a few pixels at 255) and brightness within half a grey level
        found += watch.observe(Verdict("cam0", "s", 2000 + i, "p", "PASS", "model", model_hash="m1", score=0.1,
                                       signals={"saturation": 1.2e-4 if i % 50 == 0 else 0.0,
                                                "brightness": 120.0 + 0.2 * (i % 2)}))[1]
    assert found == []


def test_a_stored_reference_is_recalibrated_when_the_config_asks_for_another_false_alarm_rate() -> None:
    key, ref = _learnt(11)
    stored = {key: Reference.from_json(ref.to_json())}
    stricter = DriftWatch(WatchConfig(reference_parts=400, ert_parts=1e9), lambda k: stored.get(k))
    stricter.observe(_verdict(500, 120.0))
    _settled(stricter)
    again = stricter.references("cam0")
    assert again is not None and again.target_arl == stricter.target_arl > ref.target_arl
    assert again.signals["brightness"].cusum.up.h > ref.signals["brightness"].cusum.up.h
    assert again.signals["brightness"].quantiles == ref.signals["brightness"].quantiles, "the same distribution"



def test_relearn_drops_the_cameras_reference_and_latched_alarms_so_its_next_parts_are_learnt() -> None:
    key, ref = _learnt(12)
    watch = DriftWatch(WatchConfig(reference_parts=400), lambda k: ref if k == key else None)
    watch.observe(_verdict(1, 120.0))
    watch.latched = {("cam0", "brightness"), ("cam1", "brightness")}
    assert watch.references("cam0") is ref
    watch.relearn("cam0")
    assert watch.latched == {("cam1", "brightness")}
    watch = DriftWatch(WatchConfig(reference_parts=400), lambda k: None)  # the action deleted the stored one
    watch.observe(_verdict(2, 120.0))
    assert watch.learning_progress("cam0") == (1, 400)


def test_a_relearn_action_must_name_its_camera() -> None:
    good = OperatorAction("drift_relearn", "qa", "r1", {"camera": "cam0"})
    assert OperatorAction.from_bytes(good.to_bytes()).detail == {"camera": "cam0"}
    with pytest.raises(MessageError, match=r"action: Object missing required field `camera` - at `\$.detail`"):
        OperatorAction.from_bytes(OperatorAction("drift_relearn", "qa", "r2", {}).to_bytes())


def test_the_estimates_span_the_last_window_of_parts() -> None:
    est = Cbpe(window=2)
    for p, final in ((0.9, "FAIL"), (0.2, "PASS"), (0.4, "PASS")):
        est.add(p, final, by_model=True)
    assert est.scored == 2 and est.defect_rate == pytest.approx(0.3) and est.accuracy == pytest.approx(0.7)


def test_relearn_refuses_a_camera_the_line_does_not_have(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "linewatch", "drift", "relearn", "--camera", "nope", "--actor", "qa"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert done.returncode == 2 and "error: unknown camera 'nope' (known: cam0)" in done.stderr
