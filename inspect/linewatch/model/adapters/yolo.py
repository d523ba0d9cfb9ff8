"""Ultralytics YOLO exports: `output0` (B, nc) classification or (B, 4+nc, anchors) detection (NMS here),
class names from `metadata_props` `names`; which classes are defects from a `<model>.yaml` sidecar or the names."""

from __future__ import annotations

import ast
from dataclasses import dataclass

import cv2
import numpy as np

from linewatch.model.adapters.base import (
    Adapter,
    AdapterError,
    Detection,
    Format,
    ModelFile,
    Prediction,
    fixed_hw,
    float_input,
    split_labels,
)


@dataclass(frozen=True)
class YoloClassifyAdapter(Adapter):
    order: tuple[int, ...] = ()  # model class index per label (good first)

    def feed(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        return {self.input_name: float_input(frames, self.height, self.width, (0, 0, 0), (1, 1, 1))}

    def probabilities(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(outputs["output0"], np.float32)[:, list(self.order)]


@dataclass(frozen=True)
class YoloDetectAdapter(Adapter):
    """Detections after NMS; the image's defect probability is its most confident defect box."""

    names: tuple[str, ...] = ()
    box_defects: frozenset[str] = frozenset()  # box classes that make the part defective
    conf: float = 0.25
    iou: float = 0.45

    def feed(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        return {self.input_name: float_input(frames, self.height, self.width, (0, 0, 0), (1, 1, 1))}

    def decode(self, outputs: dict[str, np.ndarray]) -> Prediction:
        raw = np.asarray(outputs["output0"], np.float32)  # (B, 4 + nc, anchors)
        defect_cols = [i for i, n in enumerate(self.names) if n in self.box_defects]
        probs = np.zeros((raw.shape[0], 2), np.float32)
        detections = []
        for b, pred in enumerate(raw):
            boxes, scores = pred[:4].T, pred[4:].T
            cls = scores.argmax(1)
            best = scores[np.arange(len(scores)), cls]
            keep = best >= self.conf
            xywh = np.column_stack([boxes[keep, 0] - boxes[keep, 2] / 2, boxes[keep, 1] - boxes[keep, 3] / 2,
                                    boxes[keep, 2], boxes[keep, 3]])
            idx = cv2.dnn.NMSBoxes(xywh.tolist(), best[keep].tolist(), self.conf, self.iou) if keep.any() else []
            detections.append([Detection(self.names[int(cls[keep][i])], float(best[keep][i]),
                                         (float(xywh[i, 0]), float(xywh[i, 1]), float(xywh[i, 2]), float(xywh[i, 3])))
                               for i in np.asarray(idx).reshape(-1)])
            p = float(scores[:, defect_cols].max()) if defect_cols and len(scores) else 0.0
            probs[b] = (1 - p, p)
        return Prediction(probs, self.anomaly_maps(outputs), detections)


def _recognises(f: ModelFile) -> bool:
    return "names" in f.meta and "output0" in f.output_names


def _create(f: ModelFile) -> Adapter:
    where, inputs = f.where, f.inputs
    out_shape = f.outputs[f.output_names.index("output0")].shape
    try:
        names_raw = ast.literal_eval(f.meta["names"])
    except (ValueError, SyntaxError) as exc:
        raise AdapterError(f"{where}: metadata 'names' is not a class map ({exc})") from None
    names = [str(names_raw[k]) for k in sorted(names_raw)] if isinstance(names_raw, dict) else list(names_raw)
    h, w = fixed_hw(inputs[0].shape, where)
    if len(out_shape) == 2:
        labels, defects = split_labels(names, f.sidecar.get("defect_labels"), where)
        good = [n for n in labels if n not in defects]
        if len(good) != 1:
            raise AdapterError(f"{where}: a YOLO classifier needs exactly one good class among {names} "
                               "(name it good/ok/pass/normal or list defect_labels in a sidecar YAML)")
        order = [labels.index(good[0])] + [i for i, n in enumerate(labels) if n != good[0]]
        return YoloClassifyAdapter("yolo-classify", tuple(labels[i] for i in order), defects, "NHWC", h, w, 3,
                                   False, inputs[0].name, order=tuple(order))
    if len(out_shape) == 3:
        _, defects = split_labels(names, f.sidecar.get("defect_labels"), where)
        return YoloDetectAdapter("yolo-detect", ("good", "defect"), frozenset({"defect"}), "NHWC", h, w, 3, False,
                                 inputs[0].name, names=tuple(names), box_defects=defects,
                                 conf=float(f.sidecar.get("conf", 0.25)), iou=float(f.sidecar.get("iou", 0.45)))
    raise AdapterError(f"{where}: YOLO output0 must be (B, nc) or (B, 4+nc, anchors), got {out_shape}")


YOLO = Format("yolo", _recognises, _create)
