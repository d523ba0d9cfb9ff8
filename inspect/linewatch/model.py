"""Loading and running an ONNX model, with its contract read from the file's own metadata.

A model is identified by the SHA-256 of its file. Its `metadata_props` say what it expects
(`linewatch.*` keys: labels, input layout and size); the worker only reshapes uint8 pixels,
all float work happens inside the graph.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

REQUIRED_METADATA = ("linewatch.labels", "linewatch.defect_labels", "linewatch.input_layout",
                     "linewatch.input_height", "linewatch.input_width", "linewatch.input_channels")
LAYOUTS = {"NHW": 3, "NHWC": 4}


class ModelError(Exception):
    """The model file cannot be used (missing, corrupt, wrong contract, provider unavailable)."""


class ModelOutputError(ModelError):
    """The model ran but its output breaks the contract (wrong shape, NaN/inf)."""


@dataclass(frozen=True)
class ModelInfo:
    path: Path
    sha256: str
    name: str
    labels: tuple[str, ...]
    defect_labels: frozenset[str]
    layout: str
    height: int
    width: int
    channels: int
    metadata: dict[str, str] = field(default_factory=dict)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _cuda_driver_present() -> bool:
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def choose_providers(request: str) -> list[str]:
    """Providers to ask ONNX Runtime for; `auto` asks for CUDA only where a CUDA driver loads."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if request == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in available:
        if request == "cuda":
            raise ModelError("providers: cuda requested but this onnxruntime build has no CUDA provider")
        return ["CPUExecutionProvider"]
    if request == "auto" and not _cuda_driver_present():
        return ["CPUExecutionProvider"]
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]


def _parse_metadata(path: Path, meta: dict[str, str]) -> dict[str, Any]:
    missing = [k for k in REQUIRED_METADATA if k not in meta]
    if missing:
        raise ModelError(f"model {path}: metadata lacks {', '.join(missing)} (is it a linewatch model?)")
    try:
        labels = json.loads(meta["linewatch.labels"])
        defect_labels = json.loads(meta["linewatch.defect_labels"])
        dims = {k: int(meta[f"linewatch.input_{k}"]) for k in ("height", "width", "channels")}
    except (ValueError, TypeError) as exc:
        raise ModelError(f"model {path}: unreadable metadata ({exc})") from None
    if not (isinstance(labels, list) and len(labels) >= 2 and all(isinstance(x, str) for x in labels)):
        raise ModelError(f"model {path}: linewatch.labels must be a JSON list of >= 2 names")
    if not set(defect_labels) <= set(labels):
        raise ModelError(f"model {path}: defect_labels {defect_labels} are not all in labels {labels}")
    if meta["linewatch.input_layout"] not in LAYOUTS:
        raise ModelError(f"model {path}: input_layout must be one of {sorted(LAYOUTS)}")
    return {"labels": tuple(labels), "defect_labels": frozenset(defect_labels), **dims}


class Model:
    """An ONNX Runtime session plus the contract it was exported with."""

    def __init__(self, path: Path | str, providers: str = "auto", intra_op_threads: int = 1):
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise ModelError(f"model {path}: file not found")
        sha = file_sha256(path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = intra_op_threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        wanted = choose_providers(providers)
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=wanted)
        except Exception as exc:  # onnxruntime raises its own untyped errors: translate at the boundary
            raise ModelError(f"model {path}: ONNX Runtime cannot load it ({str(exc).strip()[:300]})") from None
        self.providers: list[str] = self.session.get_providers()
        if providers == "cuda" and "CUDAExecutionProvider" not in self.providers:
            raise ModelError(f"model {path}: cuda requested but the CUDA libraries did not load")
        meta = dict(self.session.get_modelmeta().custom_metadata_map)
        parsed = _parse_metadata(path, meta)
        self.info = ModelInfo(
            path=path, sha256=sha, name=meta.get("linewatch.name", path.stem), labels=parsed["labels"],
            defect_labels=parsed["defect_labels"], layout=meta["linewatch.input_layout"],
            height=parsed["height"], width=parsed["width"], channels=parsed["channels"], metadata=meta,
        )
        self._check_signature()
        self.input_name = self.session.get_inputs()[0].name
        log.info("model %s (%s) loaded on %s", self.info.name, sha[:12], ", ".join(self.providers))

    def _check_signature(self) -> None:
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        where = f"model {self.info.path}"
        if len(inputs) != 1 or inputs[0].type != "tensor(uint8)":
            raise ModelError(f"{where}: expects one uint8 image input, has {[(i.name, i.type) for i in inputs]}")
        if len(inputs[0].shape) != LAYOUTS[self.info.layout]:
            raise ModelError(f"{where}: input rank {len(inputs[0].shape)} does not match layout {self.info.layout}")
        if not outputs or outputs[0].type != "tensor(float)":
            raise ModelError(f"{where}: first output must be float class probabilities")

    def warm_up(self) -> None:
        self.run(np.zeros((1, *self.frame_shape), np.uint8))

    @property
    def frame_shape(self) -> tuple[int, ...]:
        i = self.info
        return (i.height, i.width) if i.layout == "NHW" else (i.height, i.width, i.channels)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities (N, labels) for a uint8 batch shaped (N, *frame_shape)."""
        try:
            (probs, *_) = self.session.run(None, {self.input_name: batch})
        except Exception as exc:  # onnxruntime's errors are untyped
            raise ModelError(f"model {self.info.name}: inference failed ({str(exc).strip()[:300]})") from None
        probs = np.asarray(probs)
        expected = (batch.shape[0], len(self.info.labels))
        if probs.shape != expected:
            raise ModelOutputError(f"model {self.info.name}: output shape {probs.shape}, expected {expected}")
        if not np.all(np.isfinite(probs)):
            raise ModelOutputError(f"model {self.info.name}: output contains NaN or inf")
        return probs
