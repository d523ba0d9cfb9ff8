"""anomalib exports: input `input` float (B,3,H,W); outputs among `pred_score`, `pred_label`, `anomaly_map`,
`pred_mask`.

anomalib 2.x (`engine.export(model, ExportType.ONNX)`) puts resizing, ImageNet normalisation and the
score normalisation around its threshold (0.5 = the threshold) inside the graph, writes the weights
beside it (`model.onnx.data`, stored and hashed with the graph: model/files.py) and no metadata: the
input is RGB in [0, 1]. Older exports wrote a `metadata.json` (thresholds, min/max, whether to
normalise) that is applied here when present."""

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
    AdapterError,
    Format,
    ModelFile,
    as_is,
    float_input,
    per_frame_map,
    sidecar_band,
)


@dataclass(frozen=True)
class AnomalibAdapter(Adapter):
    """Image score -> [p(good), p(defect)]; scores are normalised as anomalib does when the sidecar has stats."""

    norm: Mapping[str, float] | None = None  # threshold, min, max
    resizes_itself: bool = False  # a free input size: frames go in as they are, the graph resizes
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)

    def feed(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        fit = as_is if self.resizes_itself else None
        return {self.input_name: float_input(frames, self.height, self.width, self.mean, self.std, fit=fit)}

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


def _input_size(f: ModelFile) -> tuple[int, int]:
    """The graph's fixed input size; else a sidecar's `input: {height, width}`; else the fixed size of its
    anomaly map, which anomalib 2.x computes at its pre-processor's size (its default export leaves the
    input's height and width free and resizes inside the graph, so feeding that size resizes once)."""
    shape = f.inputs[0].shape
    if isinstance(shape[-2], int) and isinstance(shape[-1], int):
        return shape[-2], shape[-1]
    size = f.sidecar.get("input") or {}
    if isinstance(size, dict) and isinstance(size.get("height"), int) and isinstance(size.get("width"), int):
        return int(size["height"]), int(size["width"])
    if "anomaly_map" in f.output_names:
        map_shape = f.outputs[f.output_names.index("anomaly_map")].shape
        if isinstance(map_shape[-2], int) and isinstance(map_shape[-1], int):
            return map_shape[-2], map_shape[-1]
    raise AdapterError(f"{f.where}: input height and width are free in the graph {shape} and neither a sidecar "
                       f"{f.path.with_suffix('.yaml').name} (input: {{height, width}}) nor a fixed anomaly_map says "
                       "which size to feed")


def _create(f: ModelFile) -> Adapter:
    h, w = _input_size(f)
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
                           review_band=sidecar_band(f.sidecar, f.where), norm=norm, mean=mean, std=std,
                           resizes_itself=not isinstance(f.inputs[0].shape[-1], int))


ANOMALIB = Format("anomalib", _recognises, _create, sidecars=("{stem}.yaml", "metadata.json"))
