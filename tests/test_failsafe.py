"""Each fail-safe rule on crafted frames and crafted model outputs; the rule-set hash."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from linewatch.config import BlurRuleConfig, FailsafeConfig
from linewatch.emulator.parts import PartEmulator
from linewatch.failsafe import Decision, FailSafe, RulesetError
from linewatch.failsafe.backup import build_template
from linewatch.failsafe.rules import BlurRule, FrameView, Roi
from linewatch.model.onnx import Model, ModelInfo
from linewatch.wire import FrameHeader
from tests.conftest import REFERENCE_MODEL

HDR = FrameHeader("cam0", "s", 0, "p", 0, 0, 256, 256, 1, "uint8", "Mono8")
GOOD_P = {"good": 0.99, "defect": 0.01}
EMU = PartEmulator(seed=0, defect_rate=0.0)
GOOD = EMU.render(1).pixels


def _fs(**cfg: Any) -> FailSafe:
    return FailSafe(FailsafeConfig.model_validate(cfg), (256, 256))


def _decide(fs: FailSafe, pixels: np.ndarray, probs: dict[str, float] = GOOD_P) -> Decision:
    d, view = fs.check_frame(HDR, pixels)
    return d if d is not None else fs.decide(view, probs)


def _spotted(pixels: np.ndarray, side: int = 6, depth: int = 60, above: int = 45) -> np.ndarray:
    """A small dark spot on the part's face, where the emulator puts its defects."""
    out = pixels.astype(np.int16)
    ys, xs = np.nonzero(pixels > 120)
    cy, cx = int(ys.mean()), int(xs.mean())
    out[cy - above:cy - above + side, cx:cx + side] -= depth
    return np.clip(out, 0, 255).astype(np.uint8)


def _info(meta: dict[str, str]) -> ModelInfo:
    return ModelInfo(Path("m.onnx"), "0" * 64, "m", ("good", "dent", "scratch"), frozenset({"dent", "scratch"}),
                     "NHW", 256, 256, 1, meta)


def test_good_parts_of_the_default_stream_are_not_overridden() -> None:
    fs = _fs()
    emu = PartEmulator(seed=0, defect_rate=0.2)
    parts = [emu.render(s) for s in range(120)]
    good = [p for p in parts if p.truth["label"] == "good"]
    assert len(good) > 80
    assert all(_decide(fs, p.pixels) == Decision("PASS", "model") for p in good)


@pytest.mark.parametrize(
    ("name", "pixels", "decided_by", "measured"),
    [
        ("black", np.zeros((256, 256), np.uint8), "rule:exposure", "mean grey level 0 < threshold 20"),
        ("white", np.full((256, 256), 255, np.uint8), "rule:exposure", "mean grey level 255 > threshold 220"),
        ("saturated", np.where(GOOD > 150, 255, GOOD).astype(np.uint8), "rule:exposure", "saturated share"),
        ("flat grey", np.full((256, 256), 90, np.uint8), "rule:exposure", "grey-level std (blank frame) 0 <"),
        ("blurred", cv2.GaussianBlur(GOOD, (0, 0), 3), "rule:blur", "Laplacian variance"),
        ("shifted", np.roll(GOOD, (60, 50), axis=(0, 1)), "rule:presence", "part centre offset"),
        ("no part", np.clip(GOOD, 0, 100).astype(np.uint8), "rule:presence", "part area share (part missing?) 0 <"),
        ("two parts", np.maximum(GOOD, np.roll(GOOD, 128, axis=1)), "rule:presence", "part area share"),
        ("spotted", _spotted(GOOD), "rule:dark_spot", "dark blob area"),
    ],
)
def test_frame_rules_on_crafted_frames(name: str, pixels: np.ndarray, decided_by: str, measured: str) -> None:
    d = _decide(_fs(), pixels)
    assert (d.final, d.decided_by) == ("FAIL", decided_by), d
    assert measured in d.reasons[0] and "threshold" in d.reasons[0], d.reasons


BIG = PartEmulator(1024, 1024, seed=0, defect_rate=0.0).render(1).pixels


def test_big_frames_are_measured_on_shared_halvings_as_precisely_as_the_rules_need() -> None:
    view = FrameView(BIG, 120)
    part = view.part
    assert part is not None
    _, _, stats, centroids = cv2.connectedComponentsWithStats((BIG > 120).astype(np.uint8), connectivity=8)
    i = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    assert np.hypot(part.cx - centroids[i][0], part.cy - centroids[i][1]) < 8  # the copy is 1/8 of the frame
    assert part.area == pytest.approx(stats[i, cv2.CC_STAT_AREA], rel=0.03)
    small = view.halved(128)
    assert small.shape == (128, 128) and small is view._cache["levels"][3]  # 1024 / 8
    assert view.halved(256) is view._cache["levels"][2]
    roi = view.annulus(0.0, 0.8)
    assert roi is not None
    exact = float(np.median(BIG[roi.window][roi.mask > 0]))
    assert abs(roi.median(BIG) - exact) <= 1  # from a subsample of the window


@pytest.mark.parametrize(("height", "width"), [(1023, 1023), (750, 1000), (1024, 1280), (480, 640), (300, 300)])
def test_part_and_sharpness_do_not_depend_on_how_the_frame_halves(height: int, width: int) -> None:
    frame = PartEmulator(width, height, seed=0, defect_rate=0.0).render(1).pixels
    part = FrameView(frame, 120).part
    assert part is not None
    _, _, stats, centroids = cv2.connectedComponentsWithStats((frame > 120).astype(np.uint8), connectivity=8)
    i = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    assert np.hypot(part.cx - centroids[i][0], part.cy - centroids[i][1]) < 1.0  # odd sides: per-axis scale
    assert part.area == pytest.approx(stats[i, cv2.CC_STAT_AREA], rel=0.03)
    for size in (128, 200):
        rule = BlurRule(BlurRuleConfig(size=size))
        direct = cv2.Laplacian(cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA), cv2.CV_64F).var()
        measured = rule.check(HDR, FrameView(frame, 120))
        assert (measured is None) == (direct >= rule.cfg.min_laplacian_var), (size, direct)
        soft = cv2.GaussianBlur(frame, (0, 0), 2)
        direct_soft = cv2.Laplacian(cv2.resize(soft, (size, size), interpolation=cv2.INTER_AREA), cv2.CV_64F).var()
        got = BlurRule(BlurRuleConfig(size=size, min_laplacian_var=direct_soft * 1.01)).check(HDR, FrameView(soft, 120))
        assert got is not None and f"{direct_soft:.4g} <" in got.reasons[0]  # the same value as one direct resize


def test_a_median_over_a_roi_too_thin_for_the_sampling_grid_still_counts_its_pixels() -> None:
    mask = np.zeros((400, 400), np.uint8)
    mask[:, 201] = 255  # one column: a grid of every 2nd pixel misses it
    img = np.full((400, 400), 90, np.uint8)
    img[:, 201] = 170
    assert Roi((slice(0, 400), slice(0, 400)), mask).median(img) == 170


@pytest.mark.parametrize(
    ("pixels", "decided_by"),
    [(BIG, "model"), (cv2.GaussianBlur(BIG, (0, 0), 12), "rule:blur"),
     (np.roll(BIG, (240, 200), axis=(0, 1)), "rule:presence"), (_spotted(BIG, side=8, above=180), "rule:dark_spot")],
)
def test_rules_decide_a_1024_frame_like_a_256_one(pixels: np.ndarray, decided_by: str) -> None:
    fs = FailSafe(FailsafeConfig(), (1024, 1024))
    d, view = fs.check_frame(HDR, pixels)
    assert (d if d is not None else fs.decide(view, GOOD_P)).decided_by == decided_by


def test_a_small_shift_is_tolerated_and_a_rule_can_be_switched_off() -> None:
    assert _decide(_fs(), np.roll(GOOD, 12, axis=1)).decided_by == "model"
    d = _decide(_fs(presence={"enabled": False}, dark_spot={"enabled": False}), np.roll(GOOD, (60, 50), axis=(0, 1)))
    assert d.decided_by == "model"


def test_rule_verdict_is_configurable() -> None:
    d = _decide(_fs(blur={"verdict": "REVIEW"}), cv2.GaussianBlur(GOOD, (0, 0), 3))
    assert (d.final, d.decided_by) == ("REVIEW", "rule:blur")


def test_dark_spot_overrules_a_model_pass_but_not_below_its_area() -> None:
    fs = _fs(dark_spot={"min_area_px": 30})
    d = _decide(fs, _spotted(GOOD, side=6))  # 36 px²
    assert (d.final, d.decided_by) == ("FAIL", "rule:dark_spot")
    assert "36 >= threshold 30" in d.reasons[0] and "overrules model (PASS)" in d.reasons[1]
    assert _decide(fs, _spotted(GOOD, side=5)).decided_by == "model"  # 25 px²
    assert _decide(fs, _spotted(GOOD, side=6, depth=25)).decided_by == "model"  # not dark enough


def test_backup_rules_do_not_touch_a_model_fail() -> None:
    d = _decide(_fs(), _spotted(GOOD), {"good": 0.01, "defect": 0.99})
    assert d == Decision("FAIL", "model")


def test_statistics_far_from_the_training_reference() -> None:
    fs = _fs(statistics={"reference_mean": (85.0, 4.0), "reference_std": (60.0, 3.5), "max_z": 6})
    assert _decide(fs, GOOD).decided_by == "model"
    brighter = np.clip(GOOD.astype(np.int16) + 40, 0, 255).astype(np.uint8)
    d = _decide(fs, brighter)
    assert (d.final, d.decided_by) == ("REVIEW", "rule:statistics")
    assert "grey-level mean" in d.reasons[0] and "> threshold 6" in d.reasons[0]


def test_statistics_reference_from_the_model_metadata() -> None:
    meta = {"linewatch.reference_stats": json.dumps({"mean": [85, 4], "std": [60, 3.5]})}
    fs = FailSafe(FailsafeConfig(), (256, 256), _info(meta))
    assert any(r.name == "statistics" for r in fs.frame_rules)
    assert not any(r.name == "statistics" for r in _fs().frame_rules), "no reference: the rule is off"
    with pytest.raises(RulesetError, match=r"reference_stats\.std"):
        FailSafe(FailsafeConfig(), (256, 256), _info({"linewatch.reference_stats": '{"mean": [1, 2]}'}))


def test_golden_template_difference(tmp_path: Path) -> None:
    template = build_template([EMU.render(s).pixels for s in range(100, 130)])
    path = tmp_path / "golden.npy"
    np.save(path, template)
    fs = _fs(dark_spot={"enabled": False}, template={"path": str(path)})
    emu = PartEmulator(seed=5, defect_rate=0.0)
    assert all(_decide(fs, emu.render(s).pixels).decided_by == "model" for s in range(40))
    d = _decide(fs, _spotted(GOOD, side=8, depth=80))
    assert (d.final, d.decided_by) == ("FAIL", "rule:template") and "from the template" in d.reasons[0]
    np.save(path, template[:100])
    with pytest.raises(RulesetError, match="does not match frames"):
        _fs(template={"path": str(path)})


@pytest.mark.parametrize(
    ("p_defect", "verdict", "final", "decided_by"),
    [
        (0.01, "REVIEW", "PASS", "model"),
        (0.19, "REVIEW", "PASS", "model"),
        (0.20, "REVIEW", "REVIEW", "rule:confidence_band"),
        (0.50, "REVIEW", "REVIEW", "rule:confidence_band"),
        (0.79, "FAIL", "FAIL", "rule:confidence_band"),
        (0.80, "REVIEW", "FAIL", "model"),
        (0.99, "REVIEW", "FAIL", "model"),
    ],
)
def test_confidence_band_on_low_confidence_outputs(p_defect: float, verdict: str, final: str,
                                                   decided_by: str) -> None:
    fs = _fs(review_band=(0.2, 0.8), uncertain_verdict=verdict)
    d = fs.decide(None, {"good": 1 - p_defect, "defect": p_defect})
    assert (d.final, d.decided_by) == (final, decided_by)
    if decided_by != "model":
        assert f"{p_defect:.3f}" in d.reasons[0] and "[0.20, 0.80)" in d.reasons[0]


def test_per_class_bands_from_config_and_from_model_metadata() -> None:
    probs = {"good": 0.55, "dent": 0.40, "scratch": 0.05}  # defect probability 0.45
    meta = {"linewatch.class_bands": json.dumps({"dent": [0.3, 0.9]}), "linewatch.threshold": "0.4"}
    fs = FailSafe(FailsafeConfig(), (256, 256), _info(meta))
    d = fs.decide(None, probs)
    assert (d.final, d.decided_by) == ("REVIEW", "rule:confidence_band") and "p(dent) 0.400" in d.reasons[0]
    cfg = FailsafeConfig(class_bands={"scratch": (0.5, 0.9)})  # the recipe's bands beat the metadata's
    d = FailSafe(cfg, (256, 256), _info(meta)).decide(None, probs)
    assert d == Decision("FAIL", "model"), "threshold 0.4 from the metadata: 0.45 is a FAIL"
    with pytest.raises(RulesetError, match="class_bands"):
        FailSafe(FailsafeConfig(), (256, 256), _info({"linewatch.class_bands": "[0.1, 0.2]"}))


def test_model_down_uses_configured_verdict_and_backup_rules_still_run() -> None:
    fs = _fs(model_down_verdict="REVIEW")
    d = fs.model_down("file missing")
    assert (d.final, d.decided_by, d.reasons) == ("REVIEW", "rule:model_unavailable", ("file missing",))
    _, view = fs.check_frame(HDR, _spotted(GOOD))
    assert fs.model_down("file missing", view).decided_by == "rule:dark_spot"


@pytest.mark.parametrize(
    ("pixels", "ok"),
    [
        (GOOD, True),
        (GOOD[:, :255], False),
        (np.dstack([GOOD] * 3), False),
        (GOOD.astype(np.uint16), False),
    ],
)
def test_frame_shape_rule(pixels: np.ndarray, ok: bool) -> None:
    d, _ = _fs().check_frame(HDR, pixels)
    assert (d is None) == ok
    if d is not None:
        assert (d.final, d.decided_by) == ("FAIL", "rule:frame_shape")


@pytest.mark.parametrize(
    "change",
    [
        {"review_band": (0.1, 0.8)}, {"uncertain_verdict": "FAIL"}, {"model_down_verdict": "REVIEW"},
        {"class_bands": {"defect": (0.2, 0.8)}}, {"exposure": {"min_mean": 21}}, {"blur": {"size": 64}},
        {"presence": {"area": (0.1, 0.5)}}, {"statistics": {"max_z": 5}}, {"dark_spot": {"delta": 41}},
        {"dark_spot": {"roi": (0.4, 0.9)}}, {"template": {"max_diff": 40}}, {"model_health": {"latency_budget_ms": 9}},
        {"streak": {"consecutive_fails": 5}},
    ],
)
def test_ruleset_hash_changes_with_any_parameter(change: dict[str, Any]) -> None:
    base = _fs().ruleset_hash
    assert base == _fs().ruleset_hash and len(base) == 64
    assert _fs(**change).ruleset_hash != base
    assert FailSafe(FailsafeConfig(), (16, 8)).ruleset_hash != base


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "linewatch", *args], capture_output=True, text=True, timeout=60)


def test_cli_builds_a_template_the_rule_accepts_and_shows_the_rule_set(tmp_path: Path) -> None:
    out = _cli("failsafe", "template", str(tmp_path / "golden.png"), "--count", "10")
    assert out.returncode == 0, out.stderr
    fs = _fs(template={"path": str(tmp_path / "golden.png")})
    assert fs.backup_rules[-1].name == "template"
    cfg = tmp_path / "line.yaml"
    cfg.write_text(f"failsafe:\n  template: {{path: {tmp_path / 'golden.png'}}}\n")
    out = _cli("failsafe", "show", "--config", str(cfg))
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    model = Model(REFERENCE_MODEL)
    assert shown["ruleset_hash"] == FailSafe(fs.cfg, model.frame_shape, model.info).ruleset_hash
    assert [r["rule"] for r in shown["backup"]] == ["dark_spot", "template"]
    (tmp_path / "empty").mkdir()
    out = _cli("failsafe", "template", str(tmp_path / "x.png"), "--images", str(tmp_path / "empty"))
    assert out.returncode == 2 and "needs readable images" in out.stderr


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"dark_spot": {"roi": [0.9, 0.4]}}, "failsafe.dark_spot.roi: must satisfy 0 <= low <= high <= 2"),
        ({"presence": {"area": [0.5, 0.1]}}, "failsafe.presence.area: must satisfy"),
        ({"class_bands": {"defect": [0.8, 0.2]}}, "failsafe.class_bands: must satisfy"),
        ({"blur": {"size": 4}}, "failsafe.blur.size: must be >= 16 (got 4)"),
        ({"exposure": {"verdict": "PASS"}}, "failsafe.exposure.verdict: must be one of"),
        ({"streak": {"max_fail_rate": 2}}, "failsafe.streak.max_fail_rate: must be <= 1"),
        ({"model_health": {"latency_budget_ms": 0}}, "failsafe.model_health.latency_budget_ms: must be > 0"),
        ({"dark_spot": {"min_area": 5}}, "failsafe.dark_spot.min_area: unknown field"),
    ],
)
def test_rule_config_errors_name_the_path(data: dict[str, Any], expected: str) -> None:
    from linewatch.config import ConfigError, parse_config

    with pytest.raises(ConfigError) as err:
        parse_config({"failsafe": data})
    assert any(expected in p for p in err.value.problems), err.value.problems


def test_run_refuses_a_rule_set_that_cannot_be_built(tmp_path: Path) -> None:
    cfg = tmp_path / "line.yaml"
    cfg.write_text(f"data_dir: {tmp_path / 'data'}\nfailsafe:\n  template: {{path: {tmp_path / 'missing.png'}}}\n")
    out = _cli("run", "--config", str(cfg))
    assert out.returncode == 2
    assert "failsafe.template.path" in out.stderr and "missing.png" in out.stderr
