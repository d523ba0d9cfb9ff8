"""linewatch's own format: `linewatch.*` metadata, uint8 frames in, probabilities out; all float work in the graph."""

from __future__ import annotations

import json

from linewatch.model.adapters.base import Adapter, AdapterError, Format, ModelFile

NATIVE_KEYS = ("linewatch.labels", "linewatch.defect_labels", "linewatch.input_layout",
               "linewatch.input_height", "linewatch.input_width", "linewatch.input_channels")


def _recognises(f: ModelFile) -> bool:
    return any(k.startswith("linewatch.") for k in f.meta)


def _create(f: ModelFile) -> Adapter:
    meta, inputs, where = f.meta, f.inputs, f.where
    missing = [k for k in NATIVE_KEYS if k not in meta]
    if missing:
        raise AdapterError(f"{where}: metadata lacks {', '.join(missing)} (is it a linewatch model?)")
    try:
        labels = json.loads(meta["linewatch.labels"])
        defects = json.loads(meta["linewatch.defect_labels"])
        h, w, c = (int(meta[f"linewatch.input_{k}"]) for k in ("height", "width", "channels"))
    except (ValueError, TypeError) as exc:
        raise AdapterError(f"{where}: unreadable metadata ({exc})") from None
    if not (isinstance(labels, list) and len(labels) >= 2 and all(isinstance(x, str) for x in labels)):
        raise AdapterError(f"{where}: linewatch.labels must be a JSON list of >= 2 names")
    if not set(defects) <= set(labels):
        raise AdapterError(f"{where}: defect_labels {defects} are not all in labels {labels}")
    layout = meta["linewatch.input_layout"]
    if layout not in ("NHW", "NHWC"):
        raise AdapterError(f"{where}: input_layout must be one of ['NHW', 'NHWC']")
    if len(inputs) != 1 or inputs[0].type != "tensor(uint8)":
        raise AdapterError(f"{where}: expects one uint8 image input, has {[(i.name, i.type) for i in inputs]}")
    if len(inputs[0].shape) != (3 if layout == "NHW" else 4):
        raise AdapterError(f"{where}: input rank {len(inputs[0].shape)} does not match layout {layout}")
    return Adapter("native", tuple(labels), frozenset(defects), layout, h, w, c, True, inputs[0].name)


NATIVE = Format("native", _recognises, _create, sidecars=())
