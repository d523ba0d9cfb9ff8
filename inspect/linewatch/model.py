"""Loading and running an ONNX model, with its contract read from the file's own metadata.

A model is identified by the SHA-256 of its file. Its `metadata_props` say what it expects
(`linewatch.*` keys: labels, input layout and size); the worker only reshapes uint8 pixels,
all float work happens inside the graph.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from linewatch.adapters import AdapterError, choose_adapter

log = logging.getLogger(__name__)


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
    adapter: str = "native"


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


class Model:
    """An ONNX Runtime session plus the contract it was exported with."""

    def __init__(self, path: Path | str, providers: str = "auto", intra_op_threads: int = 1):
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise ModelError(f"model {path}: file not found")
        try:  # read once: the hash and the session come from the same bytes, even if the file changes
            data = path.read_bytes()
        except OSError as exc:
            raise ModelError(f"model {path}: cannot read it ({exc.strerror})") from None
        sha = hashlib.sha256(data).hexdigest()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = intra_op_threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        wanted = choose_providers(providers)
        try:
            self.session = ort.InferenceSession(data, sess_options=opts, providers=wanted)
        except Exception as exc:  # onnxruntime raises its own untyped errors: translate at the boundary
            raise ModelError(f"model {path}: ONNX Runtime cannot load it ({str(exc).strip()[:300]})") from None
        self.providers: list[str] = self.session.get_providers()
        if providers == "cuda" and "CUDAExecutionProvider" not in self.providers:
            raise ModelError(f"model {path}: cuda requested but the CUDA libraries did not load")
        meta = dict(self.session.get_modelmeta().custom_metadata_map)
        outputs = self.session.get_outputs()
        if not outputs or outputs[0].type != "tensor(float)":
            raise ModelError(f"model {path}: first output must be a float tensor")
        try:
            self.adapter = choose_adapter(path, meta, self.session.get_inputs(), outputs)
        except AdapterError as exc:
            raise ModelError(str(exc)) from None
        a = self.adapter
        self.info = ModelInfo(
            path=path, sha256=sha, name=meta.get("linewatch.name", path.stem), labels=a.labels,
            defect_labels=a.defect_labels, layout=a.layout, height=a.height, width=a.width, channels=a.channels,
            metadata=meta, adapter=a.kind,
        )
        self._output_names = [o.name for o in outputs]
        log.info("model %s (%s, %s) loaded on %s", self.info.name, sha[:12], a.kind, ", ".join(self.providers))

    def warm_up(self) -> None:
        i = self.info
        self.run(np.zeros((1, i.height, i.width) if i.layout == "NHW" else (1, i.height, i.width, i.channels),
                          np.uint8))

    @property
    def frame_shape(self) -> tuple[int, ...] | None:
        """The frame the model requires, or None when its adapter resizes any frame."""
        i = self.info
        if not self.adapter.fixed_frame:
            return None
        return (i.height, i.width) if i.layout == "NHW" else (i.height, i.width, i.channels)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities (N, labels), good class first, for a uint8 batch of frames."""
        try:
            raw = self.session.run(None, self.adapter.feed(batch))
            probs = self.adapter.probabilities(dict(zip(self._output_names, raw, strict=True)))
        except Exception as exc:  # onnxruntime's errors are untyped
            raise ModelError(f"model {self.info.name}: inference failed ({str(exc).strip()[:300]})") from None
        probs = np.asarray(probs)
        expected = (batch.shape[0], len(self.info.labels))
        if probs.shape != expected:
            raise ModelOutputError(f"model {self.info.name}: output shape {probs.shape}, expected {expected}")
        if not np.all(np.isfinite(probs)):
            raise ModelOutputError(f"model {self.info.name}: output contains NaN or inf")
        return probs
