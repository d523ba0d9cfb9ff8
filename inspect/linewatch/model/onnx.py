"""Loading and running an ONNX model, with its contract read from the file's own metadata.

A model is identified by the SHA-256 of its file (of all its files when it has several: model/files.py).
Its `metadata_props` say what it expects (`linewatch.*` keys: labels, input layout and size); the worker
only reshapes uint8 pixels, all float work happens inside the graph.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from linewatch.model.adapters import Adapter, AdapterError, Prediction, choose_adapter
from linewatch.model.files import ModelFilesError, model_files
from linewatch.model.runtime import BoundRunner, ProviderError, SessionSettings, open_session, provider_attempts

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
    metadata: dict[str, str] = field(default_factory=dict)  # the graph's metadata_props + what its adapter adds
    adapter: str = "native"


def _load_error(exc: Exception) -> str:
    """ONNX Runtime's load error, with the remedy when it is the IR version an exporter wrote too new."""
    text = str(exc).strip()
    if "Unsupported model IR version" in text:  # ORT's own text names the versions; the remedy follows it whole
        return (text[text.index("Unsupported model IR version"):][:200] + "; this ONNX Runtime loads older IR "
                "versions only: export again with an older opset or set the model's ir_version (onnx.save after "
                "model.ir_version = 10)")
    return text[:300]


def choose_providers(request: str) -> list[str]:
    """The provider list ONNX Runtime is asked for first (`auto`: only GPU providers whose libraries load)."""
    try:
        return provider_attempts(request)[0]
    except ProviderError as exc:
        raise ModelError(str(exc)) from None


class Model:
    """An ONNX Runtime session plus the contract it was exported with."""

    def __init__(self, path: Path | str, providers: str = "auto", intra_op_threads: int = 1,
                 settings: SessionSettings | None = None):
        path = Path(path)
        if not path.is_file():
            raise ModelError(f"model {path}: file not found")
        try:  # read once: the hash and the session come from the same bytes, even if the file changes
            data = path.read_bytes()
            files = model_files(path, data)
        except OSError as exc:
            raise ModelError(f"model {path}: cannot read it ({exc.strerror})") from None
        except ModelFilesError as exc:
            raise ModelError(str(exc)) from None
        graph_sha = hashlib.sha256(data).hexdigest()
        self.settings = settings or SessionSettings(providers=providers, intra_op_threads=intra_op_threads)
        try:  # weights in other files: ONNX Runtime finds them from the graph's own path
            opened = open_session(str(files.graph) if files.external_data else data, self.settings, graph_sha)
        except ProviderError as exc:
            raise ModelError(f"model {path}: {exc}") from None
        except Exception as exc:  # onnxruntime raises its own untyped errors: translate at the boundary
            raise ModelError(f"model {path}: ONNX Runtime cannot load it ({_load_error(exc)})") from None
        self.session = opened.session
        self.providers: list[str] = opened.providers  # what really runs, read back from the session
        self.fallbacks = opened.fallbacks  # GPU providers given up on (auto): worth an alarm
        for reason in opened.fallbacks:
            log.error("model %s: %s; running on %s instead", path.name, reason, opened.providers[0])
        meta = dict(self.session.get_modelmeta().custom_metadata_map)
        outputs = self.session.get_outputs()
        if not outputs or outputs[0].type != "tensor(float)":
            raise ModelError(f"model {path}: first output must be a float tensor")
        try:
            self.adapter, fmt = choose_adapter(files.graph, meta, self.session.get_inputs(), outputs)
        except AdapterError as exc:
            raise ModelError(str(exc)) from None
        self.files = files.read_by(fmt.sidecar_names(files.graph))
        a = self.adapter
        self.info = ModelInfo(
            path=path, sha256=self.files.version_hash(graph_sha), name=meta.get("linewatch.name", path.stem),
            labels=a.labels, defect_labels=a.defect_labels, layout=a.layout, height=a.height, width=a.width,
            channels=a.channels, metadata={**meta, **a.contract()}, adapter=a.kind,
        )
        self._output_names = [o.name for o in outputs]
        batch_dim = next(i.shape[0] for i in self.session.get_inputs() if i.name == a.input_name)
        # A graph exported for a fixed batch (Ultralytics' default is 1) runs any batch in slices of that size.
        self.fixed_batch: int | None = batch_dim if isinstance(batch_dim, int) and batch_dim > 0 else None
        self._bound = (BoundRunner(opened, self.settings.batch_sizes, self.settings.device_id)
                       if self.settings.binds(opened.device) and self.fixed_batch is None else None)
        self._buffers: dict[int, np.ndarray] = {}  # plain path: one batch buffer per size, reused
        self._frames_in = type(a).feed is Adapter.feed  # the frames are the graph's input, as they are
        log.info("model %s (%s, %s) loaded on %s%s", self.info.name, self.info.sha256[:12], a.kind,
                 ", ".join(self.providers), " with CUDA graphs" if opened.cuda_graph else "")

    def _batch_shape(self, n: int) -> tuple[int, ...]:
        i = self.info
        return (n, i.height, i.width) if i.layout == "NHW" else (n, i.height, i.width, i.channels)

    def warm_up(self) -> None:
        """Run every prepared batch size once (a CUDA graph: until captured), so the first part is not slow."""
        runs = self._bound.warm_up_runs() if self._bound is not None else 1
        for n in self.settings.batch_sizes:
            for _ in range(runs):
                self.run(np.zeros(self._batch_shape(n), np.uint8))

    def batch_buffer(self, n: int) -> np.ndarray:
        """A uint8 array for a batch of `n` frames to be filled in place and passed to `run`: with IOBinding
        it is the model's own input buffer (reused for every batch of that size; no copy when run)."""
        if self._bound is not None and self._frames_in:
            return self._bound.host_buffer(self.adapter.input_name, self._batch_shape(n), np.dtype(np.uint8))
        buf = self._buffers.get(n)
        if buf is None:
            buf = self._buffers[n] = np.empty(self._batch_shape(n), np.uint8)
        return buf

    @property
    def frame_shape(self) -> tuple[int, ...] | None:
        """The frame the model requires, or None when its adapter resizes any frame."""
        i = self.info
        if not self.adapter.fixed_frame:
            return None
        return (i.height, i.width) if i.layout == "NHW" else (i.height, i.width, i.channels)

    def _run_in_slices(self, feed: dict[str, np.ndarray], n: int, size: int) -> list[np.ndarray]:
        """A batch through a fixed-batch graph: slices of `size` frames (the last padded by repeating its
        final frame), outputs joined and trimmed back to `n` rows."""
        parts: list[list[np.ndarray]] = []
        for start in range(0, n, size):
            piece = {}
            for name, x in feed.items():
                part = x[start:start + size]
                if len(part) < size:
                    part = np.concatenate([part, np.repeat(part[-1:], size - len(part), 0)])
                piece[name] = part
            parts.append(self.session.run(None, piece))
        return [np.concatenate(out)[:n] for out in zip(*parts, strict=True)]

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities (N, labels), good class first, for a uint8 batch of frames."""
        return self.predict(batch).probs

    def predict(self, batch: np.ndarray) -> Prediction:
        """The model's prediction for a uint8 batch of frames, checked against its contract: probabilities
        (N, labels) and, where the format has them, anomaly maps (N, h, w) in [0, 1] or detections."""
        try:
            feed = self.adapter.feed(batch)
            if self._bound is not None:
                raw = self._bound.run(feed)
            elif self.fixed_batch is not None and batch.shape[0] != self.fixed_batch:
                raw = self._run_in_slices(feed, batch.shape[0], self.fixed_batch)
            else:
                raw = self.session.run(None, feed)
            pred = self.adapter.decode(dict(zip(self._output_names, raw, strict=True)), batch.shape[1:3])
        except Exception as exc:  # onnxruntime's errors are untyped
            raise ModelError(f"model {self.info.name}: inference failed ({str(exc).strip()[:300]})") from None
        probs, maps = np.asarray(pred.probs), pred.anomaly_maps
        expected = (batch.shape[0], len(self.info.labels))
        if probs.shape != expected:
            raise ModelOutputError(f"model {self.info.name}: output shape {probs.shape}, expected {expected}")
        if not np.all(np.isfinite(probs)):
            raise ModelOutputError(f"model {self.info.name}: output contains NaN or inf")
        if maps is not None and (len(maps) != batch.shape[0] or not np.all(np.isfinite(maps))):
            raise ModelOutputError(f"model {self.info.name}: anomaly map has shape {maps.shape} or NaN/inf values")
        emb = pred.embeddings
        if emb is not None and (len(emb) != batch.shape[0] or not np.all(np.isfinite(emb))):
            raise ModelOutputError(f"model {self.info.name}: embedding has shape {emb.shape} or NaN/inf values")
        return pred if probs is pred.probs else replace(pred, probs=probs)
