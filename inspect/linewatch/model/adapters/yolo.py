"""Ultralytics YOLO exports as `model.export(format="onnx")` writes them: `output0` (B, nc) classification,
(B, 4+nc, anchors) detection (NMS here) or (B, max_det, 6) with NMS in the graph; class names, `imgsz`,
`end2end` and the export `args` from `metadata_props`; which classes are defects from a `<model>.yaml`
sidecar or the names. A static batch (the default export) is sliced by `Model`; a `dynamic=True` export
is fed at its `imgsz`."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from PIL import Image

from linewatch.model.adapters.base import (
    Adapter,
    AdapterError,
    Format,
    ModelFile,
    Prediction,
    fixed_hw,
    float_input,
    sidecar_band,
    split_labels,
)
from linewatch.wire import MAX_DETECTIONS, Detection

LETTERBOX_GREY = 114  # Ultralytics' padding value


def resize_crop(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """Ultralytics' classify transform: the short side scaled to the size with PIL's (antialiased) bilinear
    filter, then the centre cropped (`classify_transforms`: Resize, CenterCrop). A plain bilinear resize moved a
    stain part's p(defect) by 0.014 against the library's own run."""
    h, w = frame.shape[:2]
    k = max(height / h, width / w)
    nh, nw = max(height, round(h * k)), max(width, round(w * k))
    img = np.asarray(Image.fromarray(frame).resize((nw, nh), Image.Resampling.BILINEAR))
    top, left = (nh - height) // 2, (nw - width) // 2
    return img[top:top + height, left:left + width]


def _placement(h: int, w: int, height: int, width: int) -> tuple[float, int, int, int, int]:
    """Where `letterbox` puts an h x w frame in the height x width input: (scale, top, left, rows, columns)."""
    k = min(height / h, width / w)
    nh, nw = round(h * k), round(w * k)
    return k, (height - nh) // 2, (width - nw) // 2, nh, nw


def letterbox(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """Ultralytics' detect transform: scaled to fit with cv2's bilinear resize, centred, padded with grey 114;
    boxes come back in these input pixels."""
    h, w = frame.shape[:2]
    _, top, left, nh, nw = _placement(h, w, height, width)
    img = cv2.resize(frame, (nw, nh), interpolation=cv2.INTER_LINEAR) if (nh, nw) != (h, w) else frame
    out = np.full((height, width, *frame.shape[2:]), LETTERBOX_GREY, np.uint8)
    out[top:top + nh, left:left + nw] = img
    return out


@dataclass(frozen=True)
class YoloClassifyAdapter(Adapter):
    order: tuple[int, ...] = ()  # model class index per label (good first)

    def feed(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        return {self.input_name: float_input(frames, self.height, self.width, (0, 0, 0), (1, 1, 1), fit=resize_crop)}

    def probabilities(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(outputs["output0"], np.float32)[:, list(self.order)]


@dataclass(frozen=True)
class YoloDetectAdapter(Adapter):
    """Detections after NMS; the image's defect probability is its most confident defect box.

    Two layouts, told apart by the export's own metadata, never by guessing from shapes: `raw` output0
    (B, 4 + nc, anchors) of centre x, y, width, height and one score per class, NMS done here; `end2end`
    output0 (B, max_det, 6) of x1, y1, x2, y2, score, class, NMS done in the graph (Ultralytics
    `nms=True`, or YOLO26's end-to-end head, `end2end` in the metadata)."""

    names: tuple[str, ...] = ()
    box_defects: frozenset[str] = frozenset()  # box classes that make the part defective
    conf: float = 0.25
    iou: float = 0.45
    layout_out: str = "raw"  # or "end2end"

    def feed(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        return {self.input_name: float_input(frames, self.height, self.width, (0, 0, 0), (1, 1, 1), fit=letterbox)}

    def decode(self, outputs: dict[str, np.ndarray], frame_hw: tuple[int, int] | None = None) -> Prediction:
        raw = np.asarray(outputs["output0"], np.float32)
        decode = self._end2end if self.layout_out == "end2end" else self._raw
        probs = np.zeros((raw.shape[0], 2), np.float32)
        detections = []
        for b, pred in enumerate(raw):
            p, found = decode(pred)
            probs[b] = (1 - p, p)
            detections.append(self._in_frame(found, frame_hw)[:MAX_DETECTIONS])
        return Prediction(probs, self.anomaly_maps(outputs), detections=detections)

    def _in_frame(self, found: list[Detection], frame_hw: tuple[int, int] | None) -> list[Detection]:
        """Boxes from letterboxed input pixels back to the frame's (as `letterbox` placed the frame)."""
        if frame_hw is None:
            return found
        h, w = frame_hw
        k, top, left, _, _ = _placement(h, w, self.height, self.width)
        out = []
        for d in found:
            x0, y0 = np.clip((d.box[0] - left) / k, 0, w), np.clip((d.box[1] - top) / k, 0, h)
            x1, y1 = np.clip((d.box[0] + d.box[2] - left) / k, 0, w), np.clip((d.box[1] + d.box[3] - top) / k, 0, h)
            out.append(Detection(d.label, d.score, (float(x0), float(y0), float(x1 - x0), float(y1 - y0))))
        return out

    def _raw(self, pred: np.ndarray) -> tuple[float, list[Detection]]:
        boxes, scores = pred[:4].T, pred[4:].T
        cls = scores.argmax(1)
        best = scores[np.arange(len(scores)), cls]
        keep = best >= self.conf
        xywh = np.column_stack([boxes[keep, 0] - boxes[keep, 2] / 2, boxes[keep, 1] - boxes[keep, 3] / 2,
                                boxes[keep, 2], boxes[keep, 3]])
        idx = cv2.dnn.NMSBoxes(xywh.tolist(), best[keep].tolist(), self.conf, self.iou) if keep.any() else []
        found = [self._detection(int(cls[keep][i]), float(best[keep][i]), xywh[i]) for i in np.asarray(idx).reshape(-1)]
        defect_cols = [i for i, n in enumerate(self.names) if n in self.box_defects]
        return (float(scores[:, defect_cols].max()) if defect_cols and len(scores) else 0.0), found

    def _end2end(self, pred: np.ndarray) -> tuple[float, list[Detection]]:
        score, cls = pred[:, 4], np.rint(pred[:, 5]).astype(np.int64)
        real = score > 0  # rows past the detections are zero padding
        if ((cls[real] < 0) | (cls[real] >= len(self.names))).any():
            raise AdapterError(f"end-to-end output names class {sorted(set(cls[real].tolist()))}, the model has "
                               f"{len(self.names)} classes")
        x1, y1 = np.clip(pred[:, 0], 0, self.width), np.clip(pred[:, 1], 0, self.height)
        x2, y2 = np.clip(pred[:, 2], 0, self.width), np.clip(pred[:, 3], 0, self.height)
        xywh = np.column_stack([x1, y1, x2 - x1, y2 - y1])
        kept = np.flatnonzero(real & (score >= self.conf))
        found = [self._detection(int(cls[i]), float(score[i]), xywh[i]) for i in kept]
        defect = real & np.isin(cls, [i for i, n in enumerate(self.names) if n in self.box_defects])
        return (float(score[defect].max()) if defect.any() else 0.0), found

    def _detection(self, cls: int, score: float, xywh: np.ndarray) -> Detection:
        return Detection(self.names[cls], score, (float(xywh[0]), float(xywh[1]), float(xywh[2]), float(xywh[3])))


def _recognises(f: ModelFile) -> bool:
    return "names" in f.meta and "output0" in f.output_names


def _literal(f: ModelFile, key: str) -> Any:
    """A Python literal from Ultralytics' metadata (it writes `str()` of dicts and lists), None if absent."""
    if key not in f.meta:
        return None
    try:
        return ast.literal_eval(f.meta[key])
    except (ValueError, SyntaxError) as exc:
        raise AdapterError(f"{f.where}: metadata {key!r} is not readable ({exc})") from None


def _input_size(f: ModelFile) -> tuple[int, int]:
    """The graph's fixed height and width, else (a `dynamic=True` export) the `imgsz` it was trained at."""
    shape = f.inputs[0].shape
    if isinstance(shape[-2], int) and isinstance(shape[-1], int):
        return shape[-2], shape[-1]
    size = _literal(f, "imgsz")
    if isinstance(size, int):
        size = [size, size]
    if isinstance(size, list | tuple) and len(size) == 2 and all(isinstance(x, int) and x > 0 for x in size):
        return int(size[0]), int(size[1])
    return fixed_hw(shape, f.where)  # neither: refused, naming the shape


def _create(f: ModelFile) -> Adapter:
    where, inputs = f.where, f.inputs
    out_shape = f.outputs[f.output_names.index("output0")].shape
    names_raw = _literal(f, "names")
    if not isinstance(names_raw, dict | list):
        raise AdapterError(f"{where}: metadata 'names' is not a class map: {f.meta['names']!r}")
    names = [str(names_raw[k]) for k in sorted(names_raw)] if isinstance(names_raw, dict) else list(names_raw)
    h, w = _input_size(f)
    band = sidecar_band(f.sidecar, where)
    if len(out_shape) == 2:
        labels, defects = split_labels(names, f.sidecar.get("defect_labels"), where)
        good = [n for n in labels if n not in defects]
        if len(good) != 1:
            raise AdapterError(f"{where}: a YOLO classifier needs exactly one good class among {names} "
                               "(name it good/ok/pass/normal or list defect_labels in a sidecar YAML)")
        order = [labels.index(good[0])] + [i for i, n in enumerate(labels) if n != good[0]]
        return YoloClassifyAdapter("yolo-classify", tuple(labels[i] for i in order), defects, "NHWC", h, w, 3,
                                   False, inputs[0].name, band, order=tuple(order))
    if len(out_shape) != 3:
        raise AdapterError(f"{where}: YOLO output0 must be (B, nc) or (B, 4+nc, anchors) or (B, max_det, 6), "
                           f"got {out_shape}")
    args = _literal(f, "args")
    end2end = f.meta.get("end2end") == "True" or (isinstance(args, dict) and args.get("nms") is True)
    if end2end and out_shape[2] != 6:
        raise AdapterError(f"{where}: metadata says NMS is in the graph (end2end / nms), so output0 must be "
                           f"(B, max_det, 6) of x1, y1, x2, y2, score, class; got {out_shape}")
    if not end2end and out_shape[1] != 4 + len(names):
        raise AdapterError(f"{where}: output0 {out_shape} is not (B, 4 + {len(names)} classes, anchors) for the "
                           f"{len(names)} names in its metadata, and the metadata does not say NMS is in the graph "
                           "(end2end / args nms): refusing to guess its layout")
    _, defects = split_labels(names, f.sidecar.get("defect_labels"), where)
    return YoloDetectAdapter("yolo-detect", ("good", "defect"), frozenset({"defect"}), "NHWC", h, w, 3, False,
                             inputs[0].name, band, names=tuple(names), box_defects=defects,
                             conf=float(f.sidecar.get("conf", 0.25)), iou=float(f.sidecar.get("iou", 0.45)),
                             layout_out="end2end" if end2end else "raw")


YOLO = Format("yolo", _recognises, _create)
