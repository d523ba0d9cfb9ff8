"""Model adapters: how a model file is fed and how its outputs become class probabilities.

The native format (linewatch `metadata_props`, uint8 frames in, probabilities out) needs nothing.
Models trained elsewhere are adapted at this edge, chosen from the file itself:
- anomalib exports: input `input` float (B,3,H,W), outputs among `pred_score`, `pred_label`,
  `anomaly_map`, `pred_mask`, optional `metadata.json` sidecar (thresholds, normalisation);
- Ultralytics YOLO: `output0` (B, nc) classification or (B, 4+nc, anchors) detection (NMS here),
  class names from `metadata_props` `names`;
- any classifier described by a `<model>.yaml` sidecar (input layout, normalisation, labels).
Every adapter yields (N, labels) probabilities with the good class first.
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

GOOD_NAMES = ("good", "ok", "pass", "normal")
NATIVE_KEYS = ("linewatch.labels", "linewatch.defect_labels", "linewatch.input_layout",
               "linewatch.input_height", "linewatch.input_width", "linewatch.input_channels")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class AdapterError(ValueError):
    """The file is not a model any adapter understands, or breaks its format's contract."""


@dataclass
class Adapter:
    """Base: the contract plus feeding and reading; subclasses override `feed` and `probabilities`."""

    kind: str
    labels: tuple[str, ...]
    defect_labels: frozenset[str]
    layout: str  # of the frames the line sends: NHW or NHWC
    height: int
    width: int
    channels: int
    fixed_frame: bool  # True: frames must be exactly height x width (native); False: resized here
    input_name: str = "image"
    detections: list[list[dict[str, Any]]] = field(default_factory=list)  # last batch, detection models

    def feed(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        return {self.input_name: frames}

    def probabilities(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        return next(iter(outputs.values()))

    def heatmaps(self, outputs: dict[str, np.ndarray]) -> np.ndarray | None:
        """Per-frame anomaly maps (N, h, w) in [0, 1] when the model has an `anomaly_map` output, else None."""
        if "anomaly_map" not in outputs:
            return None
        return np.asarray(np.clip(_per_frame_map(outputs["anomaly_map"]), 0.0, 1.0), np.float32)


def _per_frame_map(raw: np.ndarray) -> np.ndarray:
    """(N, [C,] h, w) anomaly maps -> (N, h, w): the strongest channel at each pixel."""
    maps = np.asarray(raw, np.float32)
    return np.asarray(maps.reshape(len(maps), -1, *maps.shape[-2:]).max(axis=1), np.float32)


def _float_input(frames: np.ndarray, height: int, width: int, mean: tuple[float, ...], std: tuple[float, ...],
                 scale: float = 1 / 255) -> np.ndarray:
    """uint8 frames (any size, mono or RGB) -> float32 (N, 3, height, width), normalised."""
    out = np.empty((len(frames), height, width, 3), np.float32)
    for i, f in enumerate(frames):
        img = cv2.resize(f, (width, height), interpolation=cv2.INTER_LINEAR)
        out[i] = img[..., None] if img.ndim == 2 else img[..., :3]
    out *= scale
    out -= np.asarray(mean, np.float32)
    out /= np.asarray(std, np.float32)
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def _hw(shape: list[Any], where: str) -> tuple[int, int]:
    h, w = shape[-2], shape[-1]
    if not (isinstance(h, int) and isinstance(w, int)):
        raise AdapterError(f"{where}: input height and width must be fixed in the graph, got {shape}")
    return h, w


def _split_labels(names: list[str], defects: list[str] | None, where: str) -> tuple[tuple[str, ...], frozenset[str]]:
    good = [n for n in names if n.lower() in GOOD_NAMES]
    if defects is None:
        defects = [n for n in names if n not in good]
    unknown = set(defects) - set(names)
    if unknown:
        raise AdapterError(f"{where}: defect labels {sorted(unknown)} are not among the classes {names}")
    return tuple(names), frozenset(defects)


class NativeAdapter(Adapter):
    @classmethod
    def create(cls, meta: dict[str, str], inputs: list[Any], where: str) -> NativeAdapter:
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
        return cls("native", tuple(labels), frozenset(defects), layout, h, w, c, True, inputs[0].name)


class AnomalibAdapter(Adapter):
    """Image score -> [p(good), p(defect)]; scores are normalised as anomalib does when the sidecar has stats."""

    norm: dict[str, float] | None = None
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)

    def feed(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        return {self.input_name: _float_input(frames, self.height, self.width, self.mean, self.std)}

    def probabilities(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        if "pred_score" in outputs:
            score = np.asarray(outputs["pred_score"], np.float32).reshape(-1)
        else:
            score = np.asarray(outputs["anomaly_map"], np.float32).reshape(len(outputs["anomaly_map"]), -1).max(1)
        p = self._normalised(score)
        return np.stack([1 - p, p], axis=1)

    def heatmaps(self, outputs: dict[str, np.ndarray]) -> np.ndarray | None:
        if "anomaly_map" not in outputs:
            return None
        return self._normalised(_per_frame_map(outputs["anomaly_map"]))

    def _normalised(self, x: np.ndarray) -> np.ndarray:
        """anomalib's min-max normalisation around the image threshold (raw scores are kept without stats)."""
        if not self.norm:
            return np.asarray(np.clip(x, 0.0, 1.0), np.float32)
        span = max(self.norm["max"] - self.norm["min"], 1e-12)
        return np.asarray(np.clip((x - self.norm["threshold"]) / span + 0.5, 0.0, 1.0), np.float32)


class YoloClassifyAdapter(Adapter):
    order: tuple[int, ...] = ()  # model class index per label (good first)

    def feed(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        return {self.input_name: _float_input(frames, self.height, self.width, (0, 0, 0), (1, 1, 1))}

    def probabilities(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(outputs["output0"], np.float32)[:, list(self.order)]


class YoloDetectAdapter(Adapter):
    """Detections after NMS; the image's defect probability is its most confident defect box."""

    names: tuple[str, ...] = ()
    box_defects: frozenset[str] = frozenset()  # box classes that make the part defective
    conf: float = 0.25
    iou: float = 0.45

    def feed(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        self._sizes = [f.shape[:2] for f in frames]
        return {self.input_name: _float_input(frames, self.height, self.width, (0, 0, 0), (1, 1, 1))}

    def probabilities(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        raw = np.asarray(outputs["output0"], np.float32)  # (B, 4 + nc, anchors)
        defect_cols = [i for i, n in enumerate(self.names) if n in self.box_defects]
        probs = np.zeros((raw.shape[0], 2), np.float32)
        self.detections = []
        for b, pred in enumerate(raw):
            boxes, scores = pred[:4].T, pred[4:].T
            cls = scores.argmax(1)
            best = scores[np.arange(len(scores)), cls]
            keep = best >= self.conf
            xywh = np.column_stack([boxes[keep, 0] - boxes[keep, 2] / 2, boxes[keep, 1] - boxes[keep, 3] / 2,
                                    boxes[keep, 2], boxes[keep, 3]])
            idx = cv2.dnn.NMSBoxes(xywh.tolist(), best[keep].tolist(), self.conf, self.iou) if keep.any() else []
            dets = [{"label": self.names[int(cls[keep][i])], "score": float(best[keep][i]),
                     "box": [float(v) for v in xywh[i]]} for i in np.asarray(idx).reshape(-1)]
            self.detections.append(dets)
            p = float(scores[:, defect_cols].max()) if defect_cols and len(scores) else 0.0
            probs[b] = (1 - p, p)
        return probs


class GenericAdapter(Adapter):
    """A classifier described by a YAML sidecar: input size, layout, scale, mean/std, labels, activation."""

    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    scale: float = 1 / 255
    activation: str = "softmax"
    model_layout: str = "NCHW"

    def feed(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        x = _float_input(frames, self.height, self.width, (0, 0, 0), (1, 1, 1), self.scale)
        if self.channels == 1:
            x = x[:, :1]
        x = (x - np.asarray(self.mean, np.float32)[:, None, None]) / np.asarray(self.std, np.float32)[:, None, None]
        return {self.input_name: np.ascontiguousarray(x if self.model_layout == "NCHW" else x.transpose(0, 2, 3, 1))}

    def probabilities(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        y = np.asarray(next(iter(outputs.values())), np.float32)
        if self.activation == "softmax":
            e = np.exp(y - y.max(axis=1, keepdims=True))
            return e / e.sum(axis=1, keepdims=True)  # type: ignore[no-any-return]
        if self.activation == "sigmoid":
            return 1 / (1 + np.exp(-y))
        return y


def _anomalib(path: Path, inputs: list[Any], outputs: list[str], where: str) -> Adapter:
    h, w = _hw(inputs[0].shape, where)
    side = path.parent / "metadata.json"
    meta: dict[str, Any] = json.loads(side.read_text()) if side.exists() else {}
    a = AnomalibAdapter("anomalib", ("good", "defect"), frozenset({"defect"}), "NHWC", h, w, 3, False, "input")
    threshold = meta.get("image_threshold")
    low = meta.get("pred_scores", {}).get("min", meta.get("min"))
    high = meta.get("pred_scores", {}).get("max", meta.get("max"))
    if isinstance(threshold, int | float) and isinstance(low, int | float) and isinstance(high, int | float):
        a.norm = {"threshold": float(threshold), "min": float(low), "max": float(high)}
    if meta.get("normalize", False) or meta.get("transform", {}).get("normalize"):
        a.mean, a.std = IMAGENET_MEAN, IMAGENET_STD
    return a


def _yolo(meta: dict[str, str], inputs: list[Any], out_shape: list[Any], sidecar: dict[str, Any],
          where: str) -> Adapter:
    try:
        names_raw = ast.literal_eval(meta["names"])
    except (ValueError, SyntaxError) as exc:
        raise AdapterError(f"{where}: metadata 'names' is not a class map ({exc})") from None
    names = [str(names_raw[k]) for k in sorted(names_raw)] if isinstance(names_raw, dict) else list(names_raw)
    h, w = _hw(inputs[0].shape, where)
    if len(out_shape) == 2:
        labels, defects = _split_labels(names, sidecar.get("defect_labels"), where)
        good = [n for n in labels if n not in defects]
        if len(good) != 1:
            raise AdapterError(f"{where}: a YOLO classifier needs exactly one good class among {names} "
                               "(name it good/ok/pass/normal or list defect_labels in a sidecar YAML)")
        order = [labels.index(good[0])] + [i for i, n in enumerate(labels) if n != good[0]]
        a = YoloClassifyAdapter("yolo-classify", tuple(labels[i] for i in order), defects, "NHWC", h, w, 3,
                                False, inputs[0].name)
        a.order = tuple(order)
        return a
    if len(out_shape) == 3:
        _, defects = _split_labels(names, sidecar.get("defect_labels"), where)
        d = YoloDetectAdapter("yolo-detect", ("good", "defect"), frozenset({"defect"}), "NHWC", h, w, 3, False,
                              inputs[0].name)
        d.names, d.box_defects = tuple(names), defects
        d.conf, d.iou = float(sidecar.get("conf", 0.25)), float(sidecar.get("iou", 0.45))
        return d
    raise AdapterError(f"{where}: YOLO output0 must be (B, nc) or (B, 4+nc, anchors), got {out_shape}")


def _generic(spec: dict[str, Any], inputs: list[Any], where: str) -> Adapter:
    try:
        labels = [str(x) for x in spec["labels"]]
        inp = spec.get("input", {})
        layout = str(inp.get("layout", "NCHW")).upper()
        shape = inputs[0].shape
        h, w = (_hw(shape, where) if layout == "NCHW" else _hw(shape[:-1], where))
        channels = int(inp.get("channels", shape[1] if layout == "NCHW" else shape[-1]))
    except (KeyError, TypeError, ValueError) as exc:
        raise AdapterError(f"{where}: sidecar YAML needs labels and a valid input section ({exc})") from None
    names, defects = _split_labels(labels, spec.get("defect_labels"), where)
    g = GenericAdapter("generic", names, defects, "NHW" if channels == 1 else "NHWC", h, w, channels, False,
                       inputs[0].name)
    g.mean = tuple(float(x) for x in inp.get("mean", [0.0] * channels))
    g.std = tuple(float(x) for x in inp.get("std", [1.0] * channels))
    g.scale = float(inp.get("scale", 1 / 255))
    g.activation = str(spec.get("output", {}).get("activation", "softmax"))
    g.model_layout = layout
    return g


def choose_adapter(path: Path, meta: dict[str, str], inputs: list[Any], outputs: list[Any]) -> Adapter:
    """The adapter for a loaded session, from its metadata, its signature and sidecar files."""
    where = f"model {path}"
    sidecar_path = path.with_suffix(".yaml")
    sidecar: dict[str, Any] = {}
    if sidecar_path.exists():
        try:
            loaded = yaml.safe_load(sidecar_path.read_text())
        except yaml.YAMLError as exc:
            raise AdapterError(f"{sidecar_path}: not valid YAML ({exc})") from None
        sidecar = loaded if isinstance(loaded, dict) else {}
    out_names = [o.name for o in outputs]
    if any(k.startswith("linewatch.") for k in meta):
        missing = [k for k in NATIVE_KEYS if k not in meta]
        if missing:
            raise AdapterError(f"{where}: metadata lacks {', '.join(missing)} (is it a linewatch model?)")
        return NativeAdapter.create(meta, inputs, where)
    if {"pred_score", "anomaly_map"} & set(out_names):
        return _anomalib(path, inputs, out_names, where)
    if "names" in meta and "output0" in out_names:
        return _yolo(meta, inputs, outputs[out_names.index("output0")].shape, sidecar, where)
    if sidecar:
        return _generic(sidecar, inputs, where)
    raise AdapterError(f"{where}: unknown model format: no linewatch metadata, no anomalib outputs, no YOLO "
                       f"'names', and no sidecar {sidecar_path.name} describing it")
