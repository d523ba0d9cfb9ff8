"""anomalib exports: input `input` float (B,3,H,W); outputs among `pred_score`, `pred_label`, `anomaly_map`,
`pred_mask`; an optional `metadata.json` sidecar (thresholds, normalisation)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from linewatch.model.adapters.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Adapter,
    Format,
    ModelFile,
    fixed_hw,
    float_input,
    per_frame_map,
)


@dataclass(frozen=True)
class AnomalibAdapter(Adapter):
    """Image score -> [p(good), p(defect)]; scores are normalised as anomalib does when the sidecar has stats."""

    norm: Mapping[str, float] | None = None  # threshold, min, max
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)

    def feed(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        return {self.input_name: float_input(frames, self.height, self.width, self.mean, self.std)}

    def probabilities(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        if "pred_score" in outputs:
            score = np.asarray(outputs["pred_score"], np.float32).reshape(-1)
        else:
            score = np.asarray(outputs["anomaly_map"], np.float32).reshape(len(outputs["anomaly_map"]), -1).max(1)
        p = self._normalised(score)
        return np.stack([1 - p, p], axis=1)

    def anomaly_maps(self, outputs: dict[str, np.ndarray]) -> np.ndarray | None:
        if "anomaly_map" not in outputs:
            return None
        return self._normalised(per_frame_map(outputs["anomaly_map"]))

    def _normalised(self, x: np.ndarray) -> np.ndarray:
        """anomalib's min-max normalisation around the image threshold (raw scores are kept without stats)."""
        if not self.norm:
            return np.asarray(np.clip(x, 0.0, 1.0), np.float32)
        span = max(self.norm["max"] - self.norm["min"], 1e-12)
        return np.asarray(np.clip((x - self.norm["threshold"]) / span + 0.5, 0.0, 1.0), np.float32)


def _recognises(f: ModelFile) -> bool:
    return bool({"pred_score", "anomaly_map"} & set(f.output_names))


def _create(f: ModelFile) -> Adapter:
    h, w = fixed_hw(f.inputs[0].shape, f.where)
    side = f.path.parent / "metadata.json"
    meta: dict[str, Any] = json.loads(side.read_text()) if side.exists() else {}
    threshold = meta.get("image_threshold")
    low = meta.get("pred_scores", {}).get("min", meta.get("min"))
    high = meta.get("pred_scores", {}).get("max", meta.get("max"))
    norm = None
    if isinstance(threshold, int | float) and isinstance(low, int | float) and isinstance(high, int | float):
        norm = {"threshold": float(threshold), "min": float(low), "max": float(high)}
    mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    if meta.get("normalize", False) or meta.get("transform", {}).get("normalize"):
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    return AnomalibAdapter("anomalib", ("good", "defect"), frozenset({"defect"}), "NHWC", h, w, 3, False, "input",
                           norm=norm, mean=mean, std=std)


ANOMALIB = Format("anomalib", _recognises, _create)
