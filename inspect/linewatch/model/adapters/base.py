"""The adapter contract: what a format reads from a model file, what it feeds the graph, what it returns.

An adapter is set up once from the file and keeps nothing from one batch to the next: everything a batch
produced (probabilities, anomaly maps, detections) comes back in its `Prediction`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from linewatch.wire import Detection

GOOD_NAMES = ("good", "ok", "pass", "normal")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class AdapterError(ValueError):
    """The file is not a model any adapter understands, or breaks its format's contract."""


@dataclass(frozen=True, eq=False)
class Prediction:
    """A batch's model output in linewatch's terms; frame i is row i of every field that is not None."""

    probs: np.ndarray  # (N, labels), the good class first
    anomaly_maps: np.ndarray | None = None  # (N, h, w) in [0, 1]: models with an `anomaly_map` output
    embeddings: np.ndarray | None = None  # (N, D): models with an `embedding` output (pooled backbone features)
    detections: list[list[Detection]] | None = None  # per frame, in its pixels: detection models


@dataclass(frozen=True)
class ModelFile:
    """What a format may read to recognise a loaded model and set up its adapter."""

    path: Path
    meta: Mapping[str, str]  # the graph's `metadata_props`
    inputs: Sequence[Any]  # onnxruntime NodeArgs: name, type, shape
    outputs: Sequence[Any]
    sidecar: Mapping[str, Any]  # `<model>.yaml`, empty when there is none

    @property
    def where(self) -> str:
        return f"model {self.path}"

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.outputs]


@dataclass(frozen=True)
class Format:
    """A model file format: whether a loaded file is one, the adapter that runs it, and the sidecar files
    beside the graph that adapter reads (`{stem}` is the graph's name without `.onnx`): they are part of
    the model's version (model/files.py)."""

    key: str
    recognises: Callable[[ModelFile], bool]
    create: Callable[[ModelFile], Adapter]
    sidecars: tuple[str, ...] = ("{stem}.yaml",)

    def sidecar_names(self, graph: Path) -> tuple[str, ...]:
        return tuple(name.format(stem=graph.stem) for name in self.sidecars)


@dataclass(frozen=True)
class Adapter:
    """Feeds frames to one model's graph and decodes its outputs; subclasses override `feed` and `probabilities`.

    The base is the native contract: the uint8 frames are the graph's input, its first output the probabilities.
    """

    kind: str
    labels: tuple[str, ...]
    defect_labels: frozenset[str]
    layout: str  # of the frames the line sends: NHW or NHWC
    height: int
    width: int
    channels: int
    fixed_frame: bool  # True: frames must be exactly height x width (native); False: resized here
    input_name: str = "image"
    review_band: tuple[float, float] | None = None  # on the defect probability, from a sidecar's `review_band`

    def contract(self) -> dict[str, str]:
        """`linewatch.*` metadata this adapter adds to the graph's own: the line (fail-safe and gate) reads the
        model's bands from one place whether the graph or its sidecar carries them."""
        return {} if self.review_band is None else {"linewatch.review_band": json.dumps(list(self.review_band))}

    def feed(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        return {self.input_name: frames}

    def decode(self, outputs: dict[str, np.ndarray], frame_hw: tuple[int, int] | None = None) -> Prediction:
        """The graph's outputs, by name, as a `Prediction` (boxes in the pixels of frames `frame_hw` in size)."""
        emb = outputs.get("embedding")
        return Prediction(self.probabilities(outputs), self.anomaly_maps(outputs),
                          embeddings=None if emb is None else np.asarray(emb, np.float32).reshape(len(emb), -1))

    def probabilities(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        return next(iter(outputs.values()))

    def anomaly_maps(self, outputs: dict[str, np.ndarray]) -> np.ndarray | None:
        """Per-frame anomaly maps (N, h, w) in [0, 1] when the model has an `anomaly_map` output, else None."""
        if "anomaly_map" not in outputs:
            return None
        return np.asarray(np.clip(per_frame_map(outputs["anomaly_map"]), 0.0, 1.0), np.float32)


def per_frame_map(raw: np.ndarray) -> np.ndarray:
    """(N, [C,] h, w) anomaly maps -> (N, h, w): the strongest channel at each pixel."""
    maps = np.asarray(raw, np.float32)
    return np.asarray(maps.reshape(len(maps), -1, *maps.shape[-2:]).max(axis=1), np.float32)


def float_input(frames: np.ndarray, height: int, width: int, mean: tuple[float, ...], std: tuple[float, ...],
                scale: float = 1 / 255, fit: Callable[[np.ndarray, int, int], np.ndarray] | None = None) -> np.ndarray:
    """uint8 frames (any size, mono or RGB) -> float32 (N, 3, height, width), normalised. `fit` brings a frame to
    height x width the way the model's own library did in training (default: a plain bilinear resize)."""
    fit = fit or resize_linear
    first = fit(frames[0], height, width)
    out = np.empty((len(frames), *first.shape[:2], 3), np.float32)
    for i, f in enumerate(frames):
        img = first if i == 0 else fit(f, height, width)
        out[i] = img[..., None] if img.ndim == 2 else img[..., :3]
    out *= scale
    out -= np.asarray(mean, np.float32)
    out /= np.asarray(std, np.float32)
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def resize_linear(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    return cv2.resize(frame, (width, height), interpolation=cv2.INTER_LINEAR)


def as_is(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """No resize: for graphs that resize their input themselves (anomalib 2.x with a free input size)."""
    return frame


def fixed_hw(shape: Sequence[Any], where: str) -> tuple[int, int]:
    """The input's height and width, which must be fixed numbers in the graph."""
    h, w = shape[-2], shape[-1]
    if not (isinstance(h, int) and isinstance(w, int)):
        raise AdapterError(f"{where}: input height and width must be fixed in the graph, got {shape}")
    return h, w


def split_labels(names: list[str], defects: list[str] | None, where: str) -> tuple[tuple[str, ...], frozenset[str]]:
    """Class names and the defect ones: those listed, or every class not named good/ok/pass/normal."""
    good = [n for n in names if n.lower() in GOOD_NAMES]
    if defects is None:
        defects = [n for n in names if n not in good]
    unknown = set(defects) - set(names)
    if unknown:
        raise AdapterError(f"{where}: defect labels {sorted(unknown)} are not among the classes {names}")
    return tuple(names), frozenset(defects)


def sidecar_band(sidecar: Mapping[str, Any], where: str) -> tuple[float, float] | None:
    """A sidecar's `review_band: [low, high]` on the defect probability (0 <= low <= high <= 1), or None."""
    band = sidecar.get("review_band")
    if band is None:
        return None
    if not (isinstance(band, list) and len(band) == 2 and all(isinstance(x, int | float) for x in band)
            and 0 <= band[0] <= band[1] <= 1):
        raise AdapterError(f"{where}: sidecar review_band must be [low, high] with 0 <= low <= high <= 1, "
                           f"got {band!r}")
    return float(band[0]), float(band[1])
