"""Input sanity rules: checks on the pixels before the model is trusted with a frame.

Each rule returns a Decision naming itself, the value it measured and the threshold it broke, or
None when the frame passes. Measurements are shared through a FrameView so each is made once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal, Protocol

import cv2
import numpy as np

from linewatch.config import BlurRuleConfig, ExposureRuleConfig, PresenceRuleConfig, StatisticsRuleConfig
from linewatch.wire import Final, FrameHeader

MEDIAN_SAMPLES = 40_000  # pixels of a window an ROI median is taken from (a regular subsample beyond that)
PRESENCE_MIN_SIDE = 86  # the part is located on the smallest halving at least this many pixels across


@dataclass(frozen=True)
class Decision:
    final: Final
    decided_by: str
    reasons: tuple[str, ...] = ()


def breach(rule: str, what: str, value: float, op: Literal["<", ">", ">="], threshold: float) -> str:
    """The reason text of an override: the rule, its measured value and the threshold it broke."""
    return f"{rule}: {what} {value:.4g} {op} threshold {threshold:.4g}"


@dataclass(frozen=True)
class Part:
    """The located part: the largest blob brighter than the presence threshold."""

    cx: float
    cy: float
    radius: float
    area: int


@dataclass
class FrameView:
    """One frame and the measurements rules share (computed on first use, with OpenCV: the rules
    run on every frame and must cost less than the model)."""

    pixels: np.ndarray
    part_threshold: int = 120
    _cache: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def gray(self) -> np.ndarray:
        return self.pixels if self.pixels.ndim == 2 else np.asarray(self.pixels.mean(axis=2), np.uint8)

    @cached_property
    def mean_std(self) -> tuple[float, float]:
        mean, std = cv2.meanStdDev(self.gray)
        return float(mean[0][0]), float(std[0][0])

    @cached_property
    def saturated_share(self) -> float:
        return float(np.count_nonzero(self.gray == 255)) / self.gray.size

    def sharpness(self, size: int) -> float:
        """Variance of the Laplacian on a size x size copy, so it does not depend on resolution."""
        key = f"sharpness{size}"
        if key not in self._cache:
            small = self.halved(size)  # shared with the presence rule when halvings reach the size exactly
            if small.shape != (size, size):  # else one direct resize: halving first would blur more (measured)
                small = cv2.resize(self.gray, (size, size), interpolation=cv2.INTER_AREA)
            _, sd = cv2.meanStdDev(cv2.Laplacian(small, cv2.CV_64F))
            self._cache[key] = float(sd[0][0]) ** 2
        value: float = self._cache[key]
        return value

    def signals(self, sharpness_size: int) -> dict[str, float]:
        """The frame's drift signals (`watch/`): what the rules measured anyway, plus what they skipped.

        Brightness and contrast are the grey mean and std, sharpness the blur rule's Laplacian variance,
        saturation the share at 255; the part's centre (share of width and height) and area share come from
        the presence rule's blob, absent when no part was found."""
        mean, std = self.mean_std
        out = {"brightness": mean, "contrast": std, "sharpness": self.sharpness(sharpness_size),
               "saturation": self.saturated_share}
        part = self.part
        if part is not None:
            h, w = self.gray.shape
            out.update(part_x=part.cx / w, part_y=part.cy / h, part_size=part.area / (h * w))
        return out

    def halved(self, min_side: int) -> np.ndarray:
        """The grey frame halved (2x2 area means) while its shorter side stays >= min_side.

        Repeated halving is OpenCV's fast area path (cheaper than one direct INTER_AREA resize;
        benchmarks/RESULTS.md), and the levels are kept, so the presence and blur rules share them."""
        levels: list[np.ndarray] = self._cache.setdefault("levels", [self.gray])
        while min(levels[-1].shape) // 2 >= min_side:
            g = levels[-1]
            levels.append(cv2.resize(g, (g.shape[1] // 2, g.shape[0] // 2), interpolation=cv2.INTER_AREA))
        return next((g for g in reversed(levels) if min(g.shape) >= min_side), levels[0])

    @cached_property
    def part(self) -> Part | None:
        """Located on the smallest halving at least PRESENCE_MIN_SIDE px across (86-171 px): the
        connected-components pass costs in proportion to the pixels, and the rules need the part to ~1 % of
        the frame. Scaled back per axis: odd sides do not halve exactly."""
        g = self.halved(PRESENCE_MIN_SIDE)
        _, mask = cv2.threshold(g, self.part_threshold, 1, cv2.THRESH_BINARY)
        n, _, stats, centroids = cv2.connectedComponentsWithStats(mask, connectivity=8)
        if n < 2:
            return None
        i = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        sy, sx = (full / small for full, small in zip(self.gray.shape[:2], g.shape[:2], strict=True))
        w, h = stats[i, cv2.CC_STAT_WIDTH] * sx, stats[i, cv2.CC_STAT_HEIGHT] * sy
        cx, cy = ((float(c) + 0.5) * scale - 0.5 for c, scale in zip(centroids[i], (sx, sy), strict=True))
        return Part(cx, cy, max(w, h) / 2.0, round(int(stats[i, cv2.CC_STAT_AREA]) * sx * sy))

    def annulus(self, inner: float, outer: float) -> Roi | None:
        """The ROI between inner and outer shares of the part's radius, inside its bounding window
        (None: no part). Cropped to the window so rules touch only the pixels they inspect."""
        key = f"annulus{inner},{outer}"
        if key not in self._cache:
            self._cache[key] = self._annulus(inner, outer)
        result: Roi | None = self._cache[key]
        return result

    def _annulus(self, inner: float, outer: float) -> Roi | None:
        part = self.part
        if part is None:
            return None
        h, w = self.gray.shape
        reach = outer * part.radius + 1
        y0, y1 = max(0, int(part.cy - reach)), min(h, int(part.cy + reach) + 1)
        x0, x1 = max(0, int(part.cx - reach)), min(w, int(part.cx + reach) + 1)
        mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
        centre = (round(part.cx) - x0, round(part.cy) - y0)
        cv2.circle(mask, centre, round(outer * part.radius), 255, -1)
        cv2.circle(mask, centre, round(inner * part.radius), 0, -1)
        return Roi((slice(y0, y1), slice(x0, x1)), mask)


@dataclass(frozen=True)
class Roi:
    """A mask (0/255) over a window of the frame: the ROI's pixels are `img[window]` where mask is set."""

    window: tuple[slice, slice]
    mask: np.ndarray

    def median(self, img: np.ndarray) -> float:
        """Median grey level of a uint8 image's ROI pixels, from a histogram of at most ~MEDIAN_SAMPLES
        of them on a regular grid: the level of a face, not of one pixel, at a cost that does not grow with
        the frame."""
        h, w = self.mask.shape
        step = max(1, math.ceil(math.sqrt(h * w / MEDIAN_SAMPLES)))
        if not self.mask[::step, ::step].any():  # a ROI too thin for the grid: count every pixel
            step = 1
        window, mask = img[self.window][::step, ::step], self.mask[::step, ::step]
        hist = cv2.calcHist([np.ascontiguousarray(window)], [0], np.ascontiguousarray(mask), [256], [0, 256]).ravel()
        return float(np.searchsorted(np.cumsum(hist), (hist.sum() + 1) // 2))


class FrameRule(Protocol):
    @property
    def name(self) -> str: ...

    def params(self) -> dict[str, Any]: ...
    def check(self, header: FrameHeader, view: FrameView) -> Decision | None: ...


@dataclass(frozen=True)
class FrameShapeRule:
    """A frame the model was not made for is rejected, never resized into a guess."""

    expected: tuple[int, ...] | None
    name: str = "frame_shape"

    def params(self) -> dict[str, Any]:
        return {"expected": list(self.expected) if self.expected else None}

    def check(self, header: FrameHeader, view: FrameView) -> Decision | None:
        pixels = view.pixels
        if pixels.dtype != np.uint8:
            return Decision("FAIL", f"rule:{self.name}", (f"{self.name}: pixel dtype {pixels.dtype} is not uint8",))
        if self.expected is not None and pixels.shape != self.expected:
            return Decision("FAIL", f"rule:{self.name}",
                            (f"{self.name}: frame shape {pixels.shape} does not match the model's {self.expected}",))
        return None


@dataclass(frozen=True)
class ExposureRule:
    """Blank (dark or flat) and saturated frames cannot show a defect: never let them pass."""

    cfg: ExposureRuleConfig
    name: str = "exposure"

    def params(self) -> dict[str, Any]:
        return self.cfg.model_dump(mode="json")

    def check(self, header: FrameHeader, view: FrameView) -> Decision | None:
        c = self.cfg
        mean, std = view.mean_std
        saturated = view.saturated_share
        if mean < c.min_mean:
            why = breach(self.name, "mean grey level", mean, "<", c.min_mean)
        elif mean > c.max_mean:
            why = breach(self.name, "mean grey level", mean, ">", c.max_mean)
        elif saturated > c.max_saturated:
            why = breach(self.name, "saturated share", saturated, ">", c.max_saturated)
        elif std < c.min_std:
            why = breach(self.name, "grey-level std (blank frame)", std, "<", c.min_std)
        else:
            return None
        return Decision(c.verdict, f"rule:{self.name}", (why,))


@dataclass(frozen=True)
class BlurRule:
    """Variance of the Laplacian on a fixed-size copy, so the threshold does not depend on resolution."""

    cfg: BlurRuleConfig
    name: str = "blur"

    def params(self) -> dict[str, Any]:
        return self.cfg.model_dump(mode="json")

    def check(self, header: FrameHeader, view: FrameView) -> Decision | None:
        sharpness = view.sharpness(self.cfg.size)
        if sharpness >= self.cfg.min_laplacian_var:
            return None
        return Decision(self.cfg.verdict, f"rule:{self.name}",
                        (breach(self.name, "Laplacian variance", sharpness, "<", self.cfg.min_laplacian_var),))


@dataclass(frozen=True)
class PresenceRule:
    """The part must be there, whole (area in bounds) and where the model expects it (centre offset)."""

    cfg: PresenceRuleConfig
    name: str = "presence"

    def params(self) -> dict[str, Any]:
        return self.cfg.model_dump(mode="json")

    def check(self, header: FrameHeader, view: FrameView) -> Decision | None:
        c, part = self.cfg, view.part
        h, w = view.gray.shape
        area = part.area / (h * w) if part else 0.0
        if part is None or area < c.area[0]:
            why = breach(self.name, "part area share (part missing?)", area, "<", c.area[0])
        elif area > c.area[1]:
            why = breach(self.name, "part area share", area, ">", c.area[1])
        else:
            offset = float(np.hypot(part.cx - w / 2, part.cy - h / 2)) / min(h, w)
            if offset <= c.max_offset:
                return None
            why = breach(self.name, "part centre offset (share of frame)", offset, ">", c.max_offset)
        return Decision(c.verdict, f"rule:{self.name}", (why,))


@dataclass(frozen=True)
class StatisticsRule:
    """A frame far from the training data's statistics is outside what the model has learnt."""

    cfg: StatisticsRuleConfig
    mean: tuple[float, float]
    std: tuple[float, float]
    name: str = "statistics"

    def params(self) -> dict[str, Any]:
        return {"max_z": self.cfg.max_z, "verdict": self.cfg.verdict, "mean": list(self.mean), "std": list(self.std)}

    def check(self, header: FrameHeader, view: FrameView) -> Decision | None:
        mean, std = view.mean_std
        for what, value, (mu, sd) in (("mean", mean, self.mean), ("std", std, self.std)):
            z = abs(value - mu) / sd if sd > 0 else 0.0
            if z > self.cfg.max_z:
                return Decision(self.cfg.verdict, f"rule:{self.name}",
                                (breach(self.name, f"grey-level {what} {value:.1f} is z", z, ">", self.cfg.max_z),))
        return None
