"""A camera's reference: per signal, the distribution drift is measured against and the calibrated detector.

Learnt from the first parts after a model or recipe change (`Learning`), or for brightness and contrast taken from
the model's `linewatch.reference_stats` metadata (`model_reference.py`). Stored as JSON in the store
(`store/drift.py`) with its quantiles and thresholds, so a restart neither relearns nor recalibrates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np

from linewatch.watch.cusum import Cusum, Side
from linewatch.watch.signals import SIGNALS, SKETCH_DIMS

MIN_VALUES = 100  # a signal seen on fewer reference parts is not watched (e.g. no part found on most frames)
STORED_QUANTILES = 201  # a learnt signal's distribution is stored as this many quantiles


class ReferenceError(ValueError):
    """A stored or model-supplied reference that cannot be read; the text names the signal and field."""


@dataclass
class SignalReference:
    """One signal's reference: its distribution (quantiles, or a rate), the parts it was learnt from, its CUSUM."""

    quantiles: list[float]
    parts: int
    cusum: Cusum
    source: str = "learned"

    @property
    def mean(self) -> float:
        return self.cusum.mean

    def to_json(self) -> dict[str, Any]:
        c = self.cusum
        return {"quantiles": self.quantiles, "parts": self.parts, "source": self.source, "mean": c.mean,
                "sd": c.sd, "k": c.k, "h_up": c.up.h, "h_down": c.down.h}

    @classmethod
    def from_json(cls, name: str, d: Any) -> SignalReference:
        try:
            cusum = Cusum(float(d["mean"]), float(d["sd"]), float(d["k"]), Side(float(d["h_up"])),
                          Side(float(d["h_down"])))
            if not (cusum.sd > 0 and cusum.up.h > 0 and cusum.down.h > 0 and math.isfinite(cusum.mean)
                    and math.isfinite(cusum.up.h) and math.isfinite(cusum.down.h)):
                raise ValueError("mean, sd and thresholds must be finite, sd and thresholds > 0")
            return cls([float(q) for q in d["quantiles"]], int(d["parts"]), cusum, str(d.get("source", "learned")))
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise ReferenceError(f"drift reference of {name}: {type(exc).__name__} {exc}") from None

    def recalibrated(self, name: str, k: float, target_arl: float) -> SignalReference:
        """The same reference with thresholds for another allowance or false-alarm rate (the config changed)."""
        return calibrated(name, self.quantiles, self.parts, k, target_arl, self.source)


@dataclass
class Reference:
    """A camera's reference for one recipe and model: its signals, and the embedding centroid when it has one."""

    signals: dict[str, SignalReference]
    parts: int
    centroid: list[float] | None = None
    scale: list[float] | None = None
    target_arl: float = 0.0  # each side's calibrated run length: a config that asks for another recalibrates

    def to_json(self) -> dict[str, Any]:
        return {"parts": self.parts, "centroid": self.centroid, "scale": self.scale, "target_arl": self.target_arl,
                "signals": {name: r.to_json() for name, r in self.signals.items()}}

    def calibrated_for(self, k: float, target_arl: float) -> bool:
        return self.target_arl == target_arl and all(r.cusum.k == k for r in self.signals.values())

    def recalibrated(self, k: float, target_arl: float) -> Reference:
        return Reference({n: r.recalibrated(n, k, target_arl) for n, r in self.signals.items()}, self.parts,
                         self.centroid, self.scale, target_arl)

    @classmethod
    def from_json(cls, d: Any) -> Reference:
        try:
            signals = {str(n): SignalReference.from_json(str(n), r) for n, r in d["signals"].items()}
            centroid, scale = d.get("centroid"), d.get("scale")
            return cls(signals, int(d["parts"]), None if centroid is None else [float(x) for x in centroid],
                       None if scale is None else [float(x) for x in scale], float(d.get("target_arl", 0.0)))
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
            raise ReferenceError(f"drift reference: {type(exc).__name__} {exc}") from None

    def distance(self, embedding: list[float] | None) -> float | None:
        """The embedding sketch's RMS distance from the centroid in reference sds (None: no sketch or centroid)."""
        if embedding is None or self.centroid is None or self.scale is None or len(embedding) != len(self.centroid):
            return None
        return math.sqrt(sum(((e - c) / s) ** 2 for e, c, s in zip(embedding, self.centroid, self.scale,
                                                                      strict=True)) / len(embedding))


@dataclass
class Learning:
    """Values gathered from the first parts after a model or recipe change, until `parts` have been seen."""

    parts: int
    seen: int = 0
    values: dict[str, list[float]] = field(default_factory=dict)
    sketches: list[list[float]] = field(default_factory=list)

    def add(self, values: dict[str, float], embedding: list[float] | None) -> bool:
        """Gather one part's values; True once the reference is complete."""
        self.seen += 1
        for name, value in values.items():
            self.values.setdefault(name, []).append(value)
        if embedding is not None and len(embedding) == SKETCH_DIMS:
            self.sketches.append(embedding)
        return self.seen >= self.parts


def calibrate(learning: Learning, watched: list[str], k: float, target_arl: float,
              given: dict[str, SignalReference] | None = None) -> Reference:
    """The reference from what was learnt (and the model's, for signals it supplies): every watched signal with
    enough values gets a CUSUM with thresholds for target_arl parts per side. Slow (tens of ms a signal): run it
    off the line's path."""
    given = given or {}
    centroid = scale = None
    values = {n: np.asarray(v, np.float64) for n, v in learning.values.items()}
    if "embedding" in watched and len(learning.sketches) >= MIN_VALUES:
        sk = np.asarray(learning.sketches, np.float64)
        centroid, scale = sk.mean(axis=0), np.maximum(sk.std(axis=0), 1e-6)
        values["embedding"] = np.sqrt((((sk - centroid) / scale) ** 2).mean(axis=1))
    out: dict[str, SignalReference] = {}
    for name in watched:
        if name in given:
            out[name] = given[name]
        elif name in values and len(values[name]) >= MIN_VALUES:
            out[name] = _signal(name, values[name], k, target_arl)
    return Reference(out, learning.seen, None if centroid is None else [float(x) for x in centroid],
                     None if scale is None else [float(x) for x in scale], target_arl)


def _signal(name: str, v: np.ndarray, k: float, target_arl: float, source: str = "learned") -> SignalReference:
    """A signal's reference from the values learnt on the line: a rate (0/1 values), else their quantiles."""
    if SIGNALS[name].rate:  # one pseudo-part of each kind, so a rate of 0 can still move
        return calibrated(name, [(float(v.sum()) + 1) / (len(v) + 2)], len(v), k, target_arl, source)
    quantiles = [round(float(q), 6) for q in np.quantile(v, np.linspace(0, 1, STORED_QUANTILES))]
    return calibrated(name, quantiles, len(v), k, target_arl, source)


def calibrated(name: str, quantiles: list[float], parts: int, k: float, target_arl: float,
               source: str = "learned") -> SignalReference:
    """The CUSUM for a signal's stored distribution: a rate's two points, else its quantiles, which stand for the
    sample (so calibrating costs the same whatever the reference's size). A reference quieter than the signal's
    floor is widened to it before calibrating (each quantile spread by a small normal kernel): noise below what
    matters then neither alarms nor makes the threshold tiny."""
    spec = SIGNALS[name]
    if spec.rate:
        p = float(quantiles[0])
        if not 0 < p < 1:
            raise ReferenceError(f"drift reference of {name}: rate {p} must lie strictly between 0 and 1")
        support, weights, mean, sd = np.array([0.0, 1.0]), np.array([1 - p, p]), p, math.sqrt(p * (1 - p))
    else:
        q = np.asarray(quantiles, np.float64)
        if len(q) < 2 or not np.all(np.isfinite(q)):
            raise ReferenceError(f"drift reference of {name}: needs at least 2 finite quantiles, got {len(q)}")
        mean, spread = float(q.mean()), float(q.std())
        floor = max(spec.floor, 0.01 * abs(mean) if name == "sharpness" else 0.0)
        sd, support = max(spread, floor), q
        if spread < floor:
            support = (q[:, None] + math.sqrt(floor**2 - spread**2) * _KERNEL[None, :]).ravel()
        weights = np.ones_like(support)
    return SignalReference([float(x) for x in quantiles], parts,
                           Cusum.from_moments(support, weights, mean, sd, k, target_arl, parts), source)


def from_quantiles(name: str, quantiles: list[float], parts: int, k: float, target_arl: float) -> SignalReference:
    """A signal's reference from its quantiles over `parts` training images (a model's): they stand for them."""
    return calibrated(name, quantiles, parts, k, target_arl, "model")


_KERNEL = np.asarray([NormalDist().inv_cdf((i + 0.5) / 9) for i in range(9)])
_KERNEL /= _KERNEL.std()  # nine points with unit variance, for widening a reference to its floor
