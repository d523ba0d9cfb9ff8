"""The REVIEW bands a model is decided with, resolved in one place for the fail-safe and the promotion gate.

In order: the line config's per-class bands (`failsafe.class_bands`), the model's `linewatch.class_bands`,
the model's `linewatch.review_band` on the defect probability (a model trained elsewhere carries it in its
sidecar: its scores need not sit where linewatch's own do), and the config's `failsafe.review_band`. The
gate judges a candidate at exactly these bands, so what it predicts for REVIEW is what the line will do.
"""

from __future__ import annotations

import json
from typing import Any

from linewatch.config import FailsafeConfig


class BandError(ValueError):
    """A model's band metadata is unreadable."""


def meta_json(meta: dict[str, str], key: str) -> Any:
    if key not in meta:
        return None
    try:
        return json.loads(meta[key])
    except ValueError as exc:
        raise BandError(f"model metadata {key}: not valid JSON ({exc})") from None


def number_pair(value: Any, where: str) -> tuple[float, float]:
    if not (isinstance(value, list | tuple) and len(value) == 2 and all(isinstance(x, int | float) for x in value)):
        raise BandError(f"{where}: must be a pair of numbers, got {value!r}")
    return float(value[0]), float(value[1])


def class_bands(cfg: FailsafeConfig, meta: dict[str, str]) -> dict[str, tuple[float, float]]:
    """Per-class uncertain bands in force: the config's, else the model's `linewatch.class_bands`."""
    if cfg.class_bands:
        return dict(cfg.class_bands)
    found = meta_json(meta, "linewatch.class_bands")
    if found is not None and not isinstance(found, dict):
        raise BandError(f"model metadata linewatch.class_bands: must be an object, got {found!r}")
    return {k: number_pair(v, f"model metadata linewatch.class_bands.{k}") for k, v in (found or {}).items()}


def review_band(cfg: FailsafeConfig, meta: dict[str, str]) -> tuple[float, float]:
    """The uncertain band on the defect probability when no class has its own: the model's, else the config's."""
    found = meta_json(meta, "linewatch.review_band")
    return cfg.review_band if found is None else number_pair(found, "model metadata linewatch.review_band")


def threshold(meta: dict[str, str]) -> float:
    found = meta_json(meta, "linewatch.threshold")
    return float(found) if isinstance(found, int | float) else 0.5


def defect_band(cfg: FailsafeConfig, meta: dict[str, str], labels: tuple[str, ...],
                defect_labels: frozenset[str]) -> tuple[float, float]:
    """The REVIEW band on the defect probability these rules put in force: a good class's band [lo, hi) on
    p(good) is [1 - hi, 1 - lo) on the defect probability; bands on defect classes alone leave no single
    band (the threshold, no REVIEW) for a binary summary."""
    bands = class_bands(cfg, meta)
    if not bands:
        return review_band(cfg, meta)
    good = [lab for lab in labels if lab not in defect_labels]
    if len(good) == 1 and good[0] in bands:
        lo, hi = bands[good[0]]
        return round(1 - hi, 4), round(1 - lo, 4)
    t = threshold(meta)
    return t, t
