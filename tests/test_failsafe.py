"""The first fail-safe rules: confidence band, frame shape, model down; and the rule-set hash."""

from __future__ import annotations

import numpy as np
import pytest

from linewatch.config import FailsafeConfig
from linewatch.failsafe import FailSafe
from linewatch.messages import FrameHeader

HDR = FrameHeader("cam0", "s", 0, "p", 0, 0, 8, 8, 1, "uint8", "Mono8")


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
def test_confidence_band(p_defect: float, verdict: str, final: str, decided_by: str) -> None:
    fs = FailSafe(FailsafeConfig(review_band=(0.2, 0.8), uncertain_verdict=verdict), (8, 8))  # type: ignore[arg-type]
    d = fs.decide(p_defect)
    assert (d.final, d.decided_by) == (final, decided_by)
    if decided_by != "model":
        assert f"{p_defect:.3f}" in d.reasons[0] and "[0.20, 0.80)" in d.reasons[0]


@pytest.mark.parametrize(
    ("pixels", "ok"),
    [
        (np.zeros((8, 8), np.uint8), True),
        (np.zeros((8, 9), np.uint8), False),
        (np.zeros((8, 8, 3), np.uint8), False),
        (np.zeros((8, 8), np.uint16), False),
    ],
)
def test_frame_shape_rule(pixels: np.ndarray, ok: bool) -> None:
    d = FailSafe(FailsafeConfig(), (8, 8)).check_frame(HDR, pixels)
    assert (d is None) == ok
    if d is not None:
        assert (d.final, d.decided_by) == ("FAIL", "rule:frame_shape")


def test_model_down_uses_configured_verdict() -> None:
    d = FailSafe(FailsafeConfig(model_down_verdict="REVIEW"), None).model_down("file missing")
    assert (d.final, d.decided_by, d.reasons) == ("REVIEW", "rule:model_unavailable", ("file missing",))


def test_ruleset_hash_changes_with_any_parameter() -> None:
    a = FailSafe(FailsafeConfig(), (8, 8)).ruleset_hash
    assert a == FailSafe(FailsafeConfig(), (8, 8)).ruleset_hash
    assert a != FailSafe(FailsafeConfig(review_band=(0.1, 0.8)), (8, 8)).ruleset_hash
    assert a != FailSafe(FailsafeConfig(uncertain_verdict="FAIL"), (8, 8)).ruleset_hash
    assert a != FailSafe(FailsafeConfig(), (16, 8)).ruleset_hash
