"""The fail-safe hook: rules that decide the final verdict around (and over) the model.

Frame rules run before the model is trusted with a frame; output rules run on its probabilities.
The first rule that returns a Decision wins. The rule set is identified by a hash of its rules and
their parameters, stored with every verdict. (The full rules engine plugs in here.)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from linewatch.config import FailsafeConfig
from linewatch.messages import Final, FrameHeader


@dataclass(frozen=True)
class Decision:
    final: Final
    decided_by: str
    reasons: tuple[str, ...] = ()


class FrameRule(Protocol):
    @property
    def name(self) -> str: ...

    def params(self) -> dict[str, Any]: ...
    def check(self, header: FrameHeader, pixels: np.ndarray) -> Decision | None: ...


class OutputRule(Protocol):
    @property
    def name(self) -> str: ...

    def params(self) -> dict[str, Any]: ...
    def check(self, defect_probability: float) -> Decision | None: ...


@dataclass(frozen=True)
class FrameShapeRule:
    """A frame the model was not made for is rejected, never resized into a guess."""

    expected: tuple[int, ...]
    name: str = "frame_shape"

    def params(self) -> dict[str, Any]:
        return {"expected": list(self.expected)}

    def check(self, header: FrameHeader, pixels: np.ndarray) -> Decision | None:
        if pixels.dtype != np.uint8:
            return Decision("FAIL", f"rule:{self.name}", (f"pixel dtype {pixels.dtype} is not uint8",))
        if pixels.shape != self.expected:
            return Decision("FAIL", f"rule:{self.name}",
                            (f"frame shape {pixels.shape} does not match the model's {self.expected}",))
        return None


@dataclass(frozen=True)
class ConfidenceBandRule:
    """A defect probability inside [low, high) is too uncertain to act on."""

    low: float
    high: float
    verdict: Final
    name: str = "confidence_band"

    def params(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high, "verdict": self.verdict}

    def check(self, defect_probability: float) -> Decision | None:
        if self.low <= defect_probability < self.high:
            return Decision(self.verdict, f"rule:{self.name}",
                            (f"defect probability {defect_probability:.3f} inside uncertain band "
                             f"[{self.low:.2f}, {self.high:.2f})",))
        return None


class FailSafe:
    def __init__(self, cfg: FailsafeConfig, frame_shape: tuple[int, ...] | None, threshold: float = 0.5):
        self.cfg = cfg
        self.threshold = threshold
        self.frame_rules: list[FrameRule] = [FrameShapeRule(frame_shape)] if frame_shape else []
        low, high = cfg.review_band
        self.output_rules: list[OutputRule] = [ConfidenceBandRule(low, high, cfg.uncertain_verdict)]
        spec = {
            "threshold": threshold, "model_down_verdict": cfg.model_down_verdict,
            "frame": [{"rule": r.name, **r.params()} for r in self.frame_rules],
            "output": [{"rule": r.name, **r.params()} for r in self.output_rules],
        }
        self.ruleset_hash = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()

    def check_frame(self, header: FrameHeader, pixels: np.ndarray) -> Decision | None:
        for rule in self.frame_rules:
            decision = rule.check(header, pixels)
            if decision is not None:
                return decision
        return None

    def decide(self, defect_probability: float) -> Decision:
        for rule in self.output_rules:
            decision = rule.check(defect_probability)
            if decision is not None:
                return decision
        return Decision("FAIL" if defect_probability >= self.threshold else "PASS", "model")

    def model_down(self, reason: str) -> Decision:
        return Decision(self.cfg.model_down_verdict, "rule:model_unavailable", (reason,))
