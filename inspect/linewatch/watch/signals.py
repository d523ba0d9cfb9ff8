"""The signals the drift watch follows, what each means, and how a part's value of each is read from its verdict.

Image signals are measured by infer on the frame (`FrameView.signals`, on the halvings the fail-safe makes) and
travel in the verdict; the model's score, its embedding's distance from the reference centroid, and the defect
and override indicators (0/1 per part, whose mean is the rate) are read here.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np

from linewatch.wire import Verdict

SKETCH_DIMS = 8  # an embedding is carried as this many random projections (Johnson-Lindenstrauss)


@dataclass(frozen=True)
class SignalSpec:
    """`floor`: the smallest standard deviation the signal is standardised with (a signal that hardly moves on the
    reference must not alarm on noise below what matters); `rate`: a 0/1 indicator, shown as a percentage."""

    what: str
    unit: str
    floor: float
    rate: bool = False


SIGNALS: dict[str, SignalSpec] = {
    "brightness": SignalSpec("brightness mean", "grey level", 0.5),
    "contrast": SignalSpec("contrast (grey-level std)", "grey level", 0.25),
    "sharpness": SignalSpec("sharpness (Laplacian variance)", "grey level²", 1.0),
    "saturation": SignalSpec("saturated share", "share", 1e-4),
    "part_x": SignalSpec("part centre x", "share of width", 0.002),
    "part_y": SignalSpec("part centre y", "share of height", 0.002),
    "part_size": SignalSpec("part area", "share of frame", 0.002),
    "score": SignalSpec("model score", "probability", 0.005),
    "embedding": SignalSpec("embedding distance from the reference centroid", "sd", 0.01),
    "defect_rate": SignalSpec("defect rate (FAIL or REVIEW)", "share", 0.0, rate=True),
    "override_rate": SignalSpec("fail-safe override rate", "share", 0.0, rate=True),
}
IMAGE_SIGNALS = ("brightness", "contrast", "sharpness", "saturation", "part_x", "part_y", "part_size")


def part_values(v: Verdict) -> dict[str, float]:
    """A part's value of every signal its verdict carries (the embedding's sketch is turned into a distance by
    the camera's watch, which knows the centroid)."""
    out = dict(v.signals or {})
    if v.score is not None:
        out["score"] = v.score
    out["defect_rate"] = 0.0 if v.final == "PASS" else 1.0
    out["override_rate"] = 1.0 if v.decided_by.startswith("rule:") else 0.0
    return out


@cache
def _projection(dims: int) -> np.ndarray:
    """A fixed random projection (seeded: every worker and every restart sketch alike)."""
    rng = np.random.default_rng(20261207)
    return np.asarray(rng.standard_normal((dims, SKETCH_DIMS)) / np.sqrt(dims), np.float32)


def sketch(embedding: np.ndarray) -> list[float] | None:
    """An embedding (D floats) as SKETCH_DIMS random projections: distances between parts are kept within a few
    tens of percent, at 32 bytes a verdict instead of 4·D. None when a projection overflows (a verdict carries no
    inf: record would refuse it, failing a good part)."""
    with np.errstate(over="ignore", invalid="ignore"):
        projected = np.asarray(embedding, np.float32) @ _projection(len(embedding))
    if not np.all(np.isfinite(projected)):
        return None
    return [round(float(x), 5) for x in projected]
