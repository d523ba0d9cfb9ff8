"""Non-ML backup checks that run beside the model and can overrule a PASS.

Both work in an ROI fixed to the located part (an annulus on its face), so a part that moves a
little on the belt is still inspected where it matters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from linewatch.config import DarkSpotRuleConfig, TemplateRuleConfig
from linewatch.failsafe.rules import Decision, FrameView, breach


class TemplateError(Exception):
    """The golden template cannot be used (missing, unreadable, wrong size)."""


def _largest_blob(mask: np.ndarray) -> int:
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    return int(stats[1:, cv2.CC_STAT_AREA].max()) if n > 1 else 0


@dataclass(frozen=True)
class DarkSpotRule:
    """Threshold + blob analysis: a dark blob on the part's face bigger than min_area_px fails it."""

    cfg: DarkSpotRuleConfig
    name: str = "dark_spot"

    def params(self) -> dict[str, Any]:
        return self.cfg.model_dump(mode="json")

    def check(self, view: FrameView) -> Decision | None:
        roi = view.annulus(*self.cfg.roi)
        if roi is None or not roi.mask.any():
            return None  # no part to look at: the presence rule reports that
        level = roi.median(view.gray)
        # grey < level - delta, as an inverse threshold on integers: grey <= ceil(level - delta) - 1
        _, dark = cv2.threshold(view.gray[roi.window], math.ceil(level - self.cfg.delta) - 1, 255,
                                cv2.THRESH_BINARY_INV)
        dark = cv2.bitwise_and(dark, roi.mask)
        if cv2.countNonZero(dark) < self.cfg.min_area_px:
            return None  # not enough dark pixels for a blob that size: skip the labelling
        area = _largest_blob(dark)
        if area < self.cfg.min_area_px:
            return None
        return Decision("FAIL", f"rule:{self.name}",
                        (breach(self.name, f"dark blob area px² (grey < {level - self.cfg.delta:.0f})", area, ">=",
                                self.cfg.min_area_px),))


def load_template(path: Path, shape: tuple[int, ...] | None) -> np.ndarray:
    """A frame-sized Mono8 golden template from a .npy or image file."""
    try:
        img = np.load(path) if path.suffix == ".npy" else cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    except (OSError, ValueError) as exc:
        raise TemplateError(f"failsafe.template.path: {path}: {exc}") from None
    if img is None:
        raise TemplateError(f"failsafe.template.path: {path}: not a readable image")
    img = np.asarray(img)
    if img.dtype != np.uint8 or img.ndim != 2:
        raise TemplateError(f"failsafe.template.path: {path}: must be a 2-D uint8 image, got {img.dtype} {img.shape}")
    if shape is not None and img.shape != shape[:2]:
        raise TemplateError(f"failsafe.template.path: {path}: size {img.shape} does not match frames {shape[:2]}")
    return img


def build_template(frames: list[np.ndarray], threshold: int = 120) -> np.ndarray:
    """The mean of good frames, each centred on its located part: what a good part looks like."""
    acc = np.zeros(frames[0].shape, np.float64)
    for f in frames:
        part = FrameView(f, threshold).part
        if part is None:
            raise TemplateError("a template frame shows no part")
        acc += _shifted(f.astype(np.float32), f.shape[1] / 2 - part.cx, f.shape[0] / 2 - part.cy)
    return np.clip(acc / len(frames), 0, 255).astype(np.uint8)


def _shifted(img: np.ndarray, dx: float, dy: float) -> np.ndarray:
    m = np.array([[1, 0, dx], [0, 1, dy]], np.float32)
    return np.asarray(cv2.warpAffine(img, m, (img.shape[1], img.shape[0]), flags=cv2.INTER_LINEAR,
                                     borderMode=cv2.BORDER_REPLICATE))


@dataclass(frozen=True)
class TemplateRule:
    """Golden-template difference in the ROI, after aligning on the part and matching its brightness."""

    cfg: TemplateRuleConfig
    template: np.ndarray
    roi: tuple[float, float]
    digest: str
    name: str = "template"

    def params(self) -> dict[str, Any]:
        return {"max_diff": self.cfg.max_diff, "min_area_px": self.cfg.min_area_px, "roi": list(self.roi),
                "template_sha256": self.digest}

    def check(self, view: FrameView) -> Decision | None:
        roi, part = view.annulus(*self.roi), view.part
        if roi is None or part is None or not roi.mask.any():
            return None
        h, w = view.gray.shape
        ref = _shifted(self.template.astype(np.float32), part.cx - w / 2, part.cy - h / 2)[roi.window]
        g = view.gray[roi.window].astype(np.float32)
        gain = float(np.median(ref[roi.mask > 0])) / max(1.0, roi.median(view.gray))
        diff = np.abs(cv2.GaussianBlur(g * gain, (0, 0), 1.5) - cv2.GaussianBlur(ref, (0, 0), 1.5))
        area = _largest_blob(((diff > self.cfg.max_diff) & (roi.mask > 0)).astype(np.uint8))
        if area < self.cfg.min_area_px:
            return None
        return Decision("FAIL", f"rule:{self.name}",
                        (breach(self.name, f"area px² differing > {self.cfg.max_diff:g} grey from the template",
                                area, ">=", self.cfg.min_area_px),))
