"""Model adapters: how a model file is fed and how its outputs become a `Prediction`, one module per format.

The native format (`native`: linewatch `metadata_props`, uint8 frames in, probabilities out) needs nothing.
Models trained elsewhere are adapted at this edge, their format recognised from the file itself, in the
order of `FORMATS`: `anomalib` exports, Ultralytics `yolo` classifiers and detectors, and any classifier
described by a `<model>.yaml` sidecar (`generic`). Every adapter yields (N, labels) probabilities with the
good class first, plus the anomaly maps or detections its format has.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from linewatch.model.adapters.anomalib import ANOMALIB
from linewatch.model.adapters.base import Adapter, AdapterError, Format, ModelFile, Prediction
from linewatch.model.adapters.generic import GENERIC
from linewatch.model.adapters.native import NATIVE
from linewatch.model.adapters.yolo import YOLO
from linewatch.wire import Detection

#: every format by its key, in the order a file is tried against them
FORMATS: dict[str, Format] = {f.key: f for f in (NATIVE, ANOMALIB, YOLO, GENERIC)}

__all__ = ["FORMATS", "Adapter", "AdapterError", "Detection", "Format", "ModelFile", "Prediction", "choose_adapter"]


def choose_adapter(path: Path, meta: dict[str, str], inputs: list[Any], outputs: list[Any]) -> tuple[Adapter, Format]:
    """The adapter for a loaded session, from its metadata, its signature and sidecar files beside the graph
    at `path` (the real file, not a link to it); with the format, which says which sidecars it read."""
    sidecar_path = path.with_suffix(".yaml")
    sidecar: dict[str, Any] = {}
    if sidecar_path.exists():
        try:
            loaded = yaml.safe_load(sidecar_path.read_text())
        except yaml.YAMLError as exc:
            raise AdapterError(f"{sidecar_path}: not valid YAML ({exc})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise AdapterError(f"{sidecar_path}: must be a mapping of settings, got {type(loaded).__name__}")
        sidecar = loaded or {}
    model_file = ModelFile(path, meta, inputs, outputs, sidecar)
    for fmt in FORMATS.values():
        if fmt.recognises(model_file):
            return fmt.create(model_file), fmt
    raise AdapterError(f"{model_file.where}: unknown model format: no linewatch metadata, no anomalib outputs, "
                       f"no YOLO 'names', and no sidecar {sidecar_path.name} describing it")
