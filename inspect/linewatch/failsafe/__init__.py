"""The fail-safe: rules that decide the final verdict around, and over, the model.

Order: input sanity rules first (a frame the model cannot be trusted with never reaches it), then
the model's output through the confidence bands, then the non-ML backup checks, which can turn a
PASS or REVIEW into a FAIL. When the model is down every part gets the configured safe verdict.
The rule set is identified by a hash of every parameter, stored with every verdict.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from linewatch.config import FailsafeConfig
from linewatch.failsafe.backup import DarkSpotRule, TemplateError, TemplateRule, load_template
from linewatch.failsafe.rules import (
    BlurRule,
    Decision,
    ExposureRule,
    FrameRule,
    FrameShapeRule,
    FrameView,
    PresenceRule,
    StatisticsRule,
)
from linewatch.model.bands import BandError, class_bands, meta_json, number_pair, review_band, threshold
from linewatch.model.onnx import ModelInfo
from linewatch.wire import Final, FrameHeader

__all__ = ["ConfidenceBandRule", "Decision", "FailSafe", "FrameView", "RulesetError"]


class RulesetError(Exception):
    """The rule set cannot be built (bad template, unreadable thresholds in the model's metadata)."""


class BackupRule(Protocol):
    @property
    def name(self) -> str: ...

    def params(self) -> dict[str, Any]: ...
    def check(self, view: FrameView) -> Decision | None: ...


@dataclass(frozen=True)
class ConfidenceBandRule:
    """A probability inside [low, high) is too uncertain to act on; label None = the defect probability."""

    low: float
    high: float
    verdict: Final
    label: str | None = None
    name: str = "confidence_band"

    def params(self) -> dict[str, Any]:
        return {"label": self.label, "low": self.low, "high": self.high, "verdict": self.verdict}

    def check(self, probs: dict[str, float], defect_probability: float) -> Decision | None:
        p = defect_probability if self.label is None else probs.get(self.label, 0.0)
        if self.low <= p < self.high:
            what = "defect probability" if self.label is None else f"p({self.label})"
            return Decision(self.verdict, f"rule:{self.name}",
                            (f"{self.name}: {what} {p:.3f} inside uncertain band [{self.low:.2f}, {self.high:.2f})",))
        return None


class FailSafe:
    """The rule set of one worker for one model (rebuilt when the model changes)."""

    def __init__(self, cfg: FailsafeConfig, frame_shape: tuple[int, ...] | None = None,
                 model: ModelInfo | None = None):
        try:
            self._build(cfg, frame_shape, model)
        except BandError as exc:  # the model's metadata: thresholds, bands or statistics unreadable
            raise RulesetError(str(exc)) from None

    def _build(self, cfg: FailsafeConfig, frame_shape: tuple[int, ...] | None, model: ModelInfo | None) -> None:
        self.cfg = cfg
        meta = model.metadata if model else {}
        self.defect_labels = tuple(sorted(model.defect_labels)) if model else ("defect",)
        self.threshold = threshold(meta)
        self.frame_rules: list[FrameRule] = [FrameShapeRule(frame_shape)]
        if cfg.exposure.enabled:
            self.frame_rules.append(ExposureRule(cfg.exposure))
        if cfg.presence.enabled:
            self.frame_rules.append(PresenceRule(cfg.presence))
        if cfg.blur.enabled:
            self.frame_rules.append(BlurRule(cfg.blur))
        stats = self._reference_stats(meta)
        if cfg.statistics.enabled and stats is not None:
            self.frame_rules.append(StatisticsRule(cfg.statistics, *stats))
        self.output_rules = self._bands(meta)
        self.backup_rules: list[BackupRule] = [DarkSpotRule(cfg.dark_spot)] if cfg.dark_spot.enabled else []
        if cfg.template.path is not None:
            try:
                template = load_template(cfg.template.path, frame_shape)
            except TemplateError as exc:
                raise RulesetError(str(exc)) from None
            digest = hashlib.sha256(template.tobytes()).hexdigest()
            self.backup_rules.append(TemplateRule(cfg.template, template, cfg.dark_spot.roi, digest))
        spec = {
            "config": cfg.model_dump(mode="json"), "threshold": self.threshold, "defect_labels": self.defect_labels,
            "frame": [{"rule": r.name, **r.params()} for r in self.frame_rules],
            "output": [{"rule": r.name, **r.params()} for r in self.output_rules],
            "backup": [{"rule": r.name, **r.params()} for r in self.backup_rules],
        }
        self.spec = spec
        self.ruleset_hash = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()

    def _reference_stats(self, meta: dict[str, str]) -> tuple[tuple[float, float], tuple[float, float]] | None:
        sc = self.cfg.statistics
        if sc.reference_mean is not None and sc.reference_std is not None:
            return sc.reference_mean, sc.reference_std
        ref = meta_json(meta, "linewatch.reference_stats")
        if ref is None:
            return None
        if not isinstance(ref, dict):
            raise RulesetError(f"model metadata linewatch.reference_stats: must be an object, got {ref!r}")
        where = "model metadata linewatch.reference_stats"
        return number_pair(ref.get("mean"), f"{where}.mean"), number_pair(ref.get("std"), f"{where}.std")

    def _bands(self, meta: dict[str, str]) -> list[ConfidenceBandRule]:
        verdict = self.cfg.uncertain_verdict
        bands = class_bands(self.cfg, meta)
        if bands:
            return [ConfidenceBandRule(lo, hi, verdict, label) for label, (lo, hi) in sorted(bands.items())]
        low, high = review_band(self.cfg, meta)
        return [ConfidenceBandRule(low, high, verdict)]

    def check_frame(self, header: FrameHeader, pixels: np.ndarray) -> tuple[Decision | None, FrameView]:
        """Input sanity: a Decision when the frame must not be trusted to the model."""
        view = FrameView(pixels, self.cfg.presence.threshold)
        for rule in self.frame_rules:
            decision = rule.check(header, view)
            if decision is not None:
                return decision, view
        return None, view

    def decide(self, view: FrameView | None, probs: dict[str, float]) -> Decision:
        """The verdict from the model's class probabilities, bands and backup checks."""
        score = sum(probs.get(label, 0.0) for label in self.defect_labels)
        for rule in self.output_rules:
            decision = rule.check(probs, score)
            if decision is not None:
                return self._backup(view, decision)
        return self._backup(view, Decision("FAIL" if score >= self.threshold else "PASS", "model"))

    def model_down(self, reason: str, view: FrameView | None = None,
                   decided_by: str = "rule:model_unavailable") -> Decision:
        """The safe verdict while the model is not trusted (rules-only mode); backup checks still run."""
        return self._backup(view, Decision(self.cfg.model_down_verdict, decided_by, (reason,)))

    def _backup(self, view: FrameView | None, base: Decision) -> Decision:
        if base.final == "FAIL" or view is None:
            return base
        for rule in self.backup_rules:
            decision = rule.check(view)
            if decision is not None:
                return Decision(decision.final, decision.decided_by,
                                (*decision.reasons, f"overrules {base.decided_by} ({base.final})", *base.reasons))
        return base
