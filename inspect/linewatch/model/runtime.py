"""ONNX Runtime sessions for the line: tuned options, providers that really run, device-resident buffers.

ORT quietly runs on the CPU when a GPU provider cannot load (missing CUDA libraries only print an
error), so the providers a session *runs on* are read back from it and compared with the request:
`auto` tries TensorRT, then CUDA, then the CPU and keeps the first that really loads; `cuda` and
`tensorrt` are demands and fail with the missing libraries named.

Batches go through IOBinding: one set of input/output buffers per batch size, on the session's
device, so only the small probabilities come back. On a GPU a batch is padded up to the next
prepared size (powers of two up to `max_batch`): shapes stay fixed, which is what CUDA graphs
(one graph per size, `gpu_graph_id`) and TensorRT profiles need. On the CPU nothing is padded (the
cost grows with the batch) and the input buffer *is* the OrtValue's memory: no copy at all.

Imports only numpy and onnxruntime, so the GPU benchmark can use it where linewatch's deps are not.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import onnxruntime as ort

    from linewatch.config import LineConfig

log = logging.getLogger(__name__)

CPU, CUDA, TENSORRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
GPU_PROVIDERS = (TENSORRT, CUDA)
#: Libraries each GPU provider cannot start without (its ELF NEEDED entries, and cuDNN; CUDA 13 build of
#: onnxruntime-gpu 1.31). Optional ones (cuFFT, NVRTC, TensorRT plugins) are loaded by ORT when used.
NEEDED_LIBS = {
    CUDA: ("libcuda.so.1", "libcudart.so.13", "libcublasLt.so.13", "libcublas.so.13", "libcurand.so.10",
           "libcudnn.so.9"),
    TENSORRT: ("libnvinfer.so.10", "libnvonnxparser.so.10"),
}
GRAPH_LEVELS = ("disable", "basic", "extended", "all")


class ProviderError(Exception):
    """A demanded execution provider does not run here (the message names what is missing)."""


@dataclass(frozen=True)
class SessionSettings:
    """How a model's session is built; `for_line` maps the config's `model` section onto it."""

    providers: str = "auto"  # auto | cpu | cuda | tensorrt
    intra_op_threads: int = 1
    allow_spinning: bool = False
    graph_optimization: str = "all"
    optimized_cache_dir: Path | None = None  # CPU: keep the optimised graph between starts
    engine_cache_dir: Path | None = None  # TensorRT engines (building one takes seconds to minutes)
    fp16: bool = False  # TensorRT may run in half precision (the recipe must allow it)
    io_binding: str = "auto"  # auto: on a GPU only | always | never
    cuda_graph: bool = True  # CUDA provider: capture one graph per batch size
    device_id: int = 0
    batch_sizes: tuple[int, ...] = (1,)  # prepared and warmed up at load

    def binds(self, device: str) -> bool:
        """Whether batches go through IOBinding on `device`: on the CPU the plain run already reads numpy
        memory without a copy and measured no slower, so `auto` binds on a GPU only."""
        return self.io_binding == "always" or (self.io_binding == "auto" and device != "cpu")

    @classmethod
    def for_line(cls, cfg: LineConfig) -> SessionSettings:
        mc = cfg.model
        cache = mc.cache_dir if mc.cache_dir is not None else cfg.data_dir / "model-cache"
        return cls(providers=mc.providers, intra_op_threads=cfg.cpu_plan.threads, allow_spinning=mc.allow_spinning,
                   graph_optimization=mc.graph_optimization,
                   optimized_cache_dir=cache if mc.cache_optimized_graph else None, engine_cache_dir=cache / "trt",
                   fp16=mc.fp16, io_binding=mc.io_binding, cuda_graph=mc.cuda_graph, device_id=mc.device_id,
                   batch_sizes=batch_sizes(cfg.infer.max_batch))


def batch_sizes(max_batch: int) -> tuple[int, ...]:
    """Powers of two below `max_batch`, then `max_batch`: the fixed shapes a GPU session is prepared for."""
    sizes = [1 << i for i in range(max_batch.bit_length()) if 1 << i < max_batch]
    return (*sizes, max_batch)


def _loads(lib: str) -> bool:
    try:
        ctypes.CDLL(lib)
    except OSError:
        return False
    return True


_preloaded = False


def _preload_cuda() -> None:
    """Load CUDA/cuDNN from NVIDIA's pip packages (as PyTorch ships them) when the driver is present."""
    global _preloaded
    if _preloaded or not _loads("libcuda.so.1"):
        return
    _preloaded = True
    import onnxruntime as ort

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(Exception):  # it prints what it cannot find
        ort.preload_dlls(cuda=True, cudnn=True, msvc=False)
    if out.getvalue().strip():
        log.debug("preloading CUDA libraries: %s", out.getvalue().strip())


def missing_libraries(provider: str) -> list[str]:
    """The libraries `provider` needs that do not load here (empty: it should run)."""
    _preload_cuda()
    libs = NEEDED_LIBS.get(provider, ())
    if provider == TENSORRT:
        libs = NEEDED_LIBS[CUDA] + libs
    return [lib for lib in libs if not _loads(lib)]


def provider_attempts(request: str) -> list[list[str]]:
    """Provider lists to try in order; the last one of `auto` is always the CPU alone."""
    import onnxruntime as ort

    if request not in ("auto", "cpu", "cuda", "tensorrt"):
        raise ValueError(f"providers: unknown request {request!r}")
    built = ort.get_available_providers()
    if request == "cpu":
        return [[CPU]]
    if request in ("cuda", "tensorrt"):
        name = CUDA if request == "cuda" else TENSORRT
        if name not in built:
            raise ProviderError(f"providers: {request} requested but this onnxruntime build has no {name} "
                                "(install onnxruntime-gpu)")
        return [[TENSORRT, CUDA, CPU] if request == "tensorrt" else [CUDA, CPU]]
    attempts = [[p, CUDA, CPU] if p == TENSORRT else [p, CPU]
                for p in GPU_PROVIDERS if p in built and not missing_libraries(p)]
    return [*attempts, [CPU]]


@dataclass
class OpenedSession:
    session: ort.InferenceSession
    providers: list[str]  # what really runs, from the session itself
    device: str  # "cuda" or "cpu": where the bound buffers live
    cuda_graph: bool
    fallbacks: list[str] = field(default_factory=list)  # why earlier attempts were given up


def _options(s: SessionSettings, key: str, gpu: bool) -> ort.SessionOptions:
    import onnxruntime as ort

    if s.graph_optimization not in GRAPH_LEVELS:
        raise ValueError(f"graph_optimization: one of {GRAPH_LEVELS}, got {s.graph_optimization!r}")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = s.intra_op_threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[s.graph_optimization]
    opts.log_severity_level = 3
    opts.enable_mem_pattern = True
    opts.enable_cpu_mem_arena = True
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if s.allow_spinning else "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if s.optimized_cache_dir is not None and not gpu:  # compiled GPU graphs cannot be saved
        s.optimized_cache_dir.mkdir(parents=True, exist_ok=True)
        opts.optimized_model_filepath = str(s.optimized_cache_dir / f"{key}.onnx")
    return opts


def _provider_options(name: str, s: SessionSettings, input_shape: tuple[str, list[Any]] | None,
                      cuda_graph: bool) -> dict[str, str]:
    if name == CUDA:
        return {"device_id": str(s.device_id), "enable_cuda_graph": "1" if cuda_graph else "0",
                "cudnn_conv_algo_search": "HEURISTIC", "do_copy_in_default_stream": "1"}
    if name == TENSORRT:
        cache = s.engine_cache_dir or Path("trt-engines")
        cache.mkdir(parents=True, exist_ok=True)
        opts = {"device_id": str(s.device_id), "trt_fp16_enable": "1" if s.fp16 else "0",
                "trt_engine_cache_enable": "1", "trt_engine_cache_path": str(cache),
                "trt_timing_cache_enable": "1", "trt_timing_cache_path": str(cache)}
        if input_shape is not None:  # one engine for every prepared batch size, tuned for the largest
            name_, dims = input_shape
            tail = "x".join(str(d) for d in dims[1:])
            lo, hi = min(s.batch_sizes), max(s.batch_sizes)
            opts |= {"trt_profile_min_shapes": f"{name_}:{lo}x{tail}", "trt_profile_max_shapes": f"{name_}:{hi}x{tail}",
                     "trt_profile_opt_shapes": f"{name_}:{hi}x{tail}"}
        return opts
    return {}


def _single_batched_input(data: bytes | str) -> tuple[str, list[Any]] | None:
    """(name, dims) of the model's only input when all but its batch dimension are fixed (for TRT profiles)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    inputs = ort.InferenceSession(data, opts, providers=[CPU]).get_inputs()
    if len(inputs) != 1 or not all(isinstance(d, int) for d in inputs[0].shape[1:]):
        return None
    return inputs[0].name, list(inputs[0].shape)


def open_session(data: bytes | str, s: SessionSettings, key: str) -> OpenedSession:
    """A session on the best provider of `s.providers` that really loads, from the graph's bytes or its path
    (a graph with external weights); raises ProviderError on a demand that cannot be met, and lets ORT's own
    error through when the model itself is bad."""
    import onnxruntime as ort

    fallbacks: list[str] = []
    attempts = provider_attempts(s.providers)
    input_shape = _single_batched_input(data) if any(TENSORRT in a for a in attempts) else None
    for providers in attempts:
        first = providers[0]
        gpu = first in GPU_PROVIDERS
        graph_tries = [True, False] if first == CUDA and s.cuda_graph and s.binds("cuda") else [False]
        for graph in graph_tries:
            opts = _options(s, f"{key[:16]}-{s.graph_optimization}-ort{ort.__version__}", gpu)
            provider_opts = [_provider_options(p, s, input_shape, graph) for p in providers]
            try:
                session = ort.InferenceSession(data, opts, providers=providers, provider_options=provider_opts,
                                               enable_fallback=0)
            except Exception as exc:  # ORT's errors are untyped; a CPU-only failure is the model's fault
                if not gpu:
                    raise
                missing = missing_libraries(first)
                reason = f"{first} failed to start" + (f" (missing {', '.join(missing)})" if missing else
                                                       f" ({str(exc).strip()[:200]})")
                if graph:
                    log.warning("%s; retrying without CUDA graphs", reason)
                    continue
                fallbacks.append(reason)
                break
            running = session.get_providers()
            if gpu and first not in running:  # the silent case: its libraries did not load
                missing = missing_libraries(first)
                fallbacks.append(f"{first} did not load" + (f" (missing {', '.join(missing)})" if missing else ""))
                break
            return OpenedSession(session, running, "cuda" if gpu else "cpu", graph, fallbacks)
        if s.providers in ("cuda", "tensorrt"):
            raise ProviderError(f"providers: {s.providers} requested but {'; '.join(fallbacks)}")
    raise ProviderError(f"providers: nothing loads ({'; '.join(fallbacks)})")  # pragma: no cover - CPU always loads


@dataclass
class _Slot:
    """Buffers for one batch size: host arrays the caller may fill, their device twins, and the binding."""

    n: int
    host: dict[str, np.ndarray]
    device: dict[str, ort.OrtValue]
    outputs: dict[str, ort.OrtValue | None]
    binding: ort.IOBinding
    run_options: ort.RunOptions | None
    preallocated: bool  # every output has its buffer: nothing to ask the binding for after a run
    runs: int = 0


class BoundRunner:
    """Runs a session through IOBinding with buffers reused per batch size (see the module docstring)."""

    def __init__(self, opened: OpenedSession, sizes: tuple[int, ...], device_id: int = 0, pad: bool | None = None):
        self.session, self.device, self.device_id = opened.session, opened.device, device_id
        self.cuda_graph = opened.cuda_graph
        pad = self.device != "cpu" if pad is None else pad  # pad=True on the CPU: only to test the GPU's path
        self.sizes = tuple(sorted(sizes)) if pad else ()
        self._slots: dict[tuple[Any, ...], _Slot] = {}
        self._graphs = 0  # graph ids handed out: never reused, a graph replays fixed addresses
        self._outputs = self.session.get_outputs()

    def padded(self, n: int) -> int:
        """The batch size `n` frames run as (GPU: the next prepared size; CPU or beyond the largest: n)."""
        return next((b for b in self.sizes if b >= n), n)

    def slot(self, feed_shapes: dict[str, tuple[tuple[int, ...], np.dtype[Any]]]) -> _Slot:
        """The buffers for these input shapes (batch already padded), made on first use."""
        key = tuple((k, s, d) for k, (s, d) in feed_shapes.items())
        found = self._slots.get(key)
        if found is not None:
            return found
        import onnxruntime as ort

        if len(self._slots) >= 64:  # shapes keep changing: not a fixed-frame model; do not hoard memory
            self._slots.clear()
        n = next(iter(feed_shapes.values()))[0][0]
        binding = self.session.io_binding()
        host, device = {}, {}
        for name, (shape, dtype) in feed_shapes.items():
            host[name] = np.zeros(shape, dtype)
            device[name] = (ort.OrtValue.ortvalue_from_numpy(host[name]) if self.device == "cpu" else
                            ort.OrtValue.ortvalue_from_shape_and_type(shape, dtype.type, self.device, self.device_id))
            binding.bind_ortvalue_input(name, device[name])
        outputs: dict[str, ort.OrtValue | None] = {}
        graph_ok = True
        for o in self._outputs:
            dims = [n if i == 0 and not isinstance(d, int) else d for i, d in enumerate(o.shape)]
            if o.type == "tensor(float)" and all(isinstance(d, int) for d in dims):
                outputs[o.name] = ort.OrtValue.ortvalue_from_shape_and_type(dims, np.float32, self.device,
                                                                            self.device_id)
                binding.bind_ortvalue_output(o.name, outputs[o.name])
            else:  # shape known only after the run: ORT allocates it (on the device) each time
                outputs[o.name] = None
                binding.bind_output(o.name, self.device, self.device_id)
                graph_ok = False
        options = None  # a RunOptions costs time on each run: only where it says something
        if self.cuda_graph:  # one graph per batch size; -1 = run without capturing
            self._graphs += graph_ok
            options = ort.RunOptions()
            options.add_run_config_entry("gpu_graph_id", str(self._graphs) if graph_ok else "-1")
        slot = _Slot(n, host, device, outputs, binding, options, all(v is not None for v in outputs.values()))
        self._slots[key] = slot
        return slot

    def host_buffer(self, name: str, shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
        """A writable (n, ...) view of the input buffer for a batch of `shape[0]` frames: filling it in
        place saves the copy in `run` (on the CPU it is the memory ORT reads)."""
        n = shape[0]
        slot = self.slot({name: ((self.padded(n), *shape[1:]), np.dtype(dtype))})
        return slot.host[name][:n]

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Outputs in the session's order, for the feed's batch size (padding rows dropped)."""
        n = len(next(iter(feed.values())))
        size = self.padded(n)
        slot = self.slot({k: ((size, *v.shape[1:]), v.dtype) for k, v in feed.items()})
        for name, arr in feed.items():
            host = slot.host[name]
            if arr.__array_interface__["data"][0] != host.__array_interface__["data"][0]:  # not filled in place
                host[:n] = arr
            if self.device != "cpu":
                slot.device[name].update_inplace(host)
        self.session.run_with_iobinding(slot.binding, slot.run_options)
        slot.runs += 1
        values = (slot.outputs.values() if slot.preallocated else
                  [ov if ov is not None else got for ov, got in
                   zip(slot.outputs.values(), slot.binding.get_outputs(), strict=True)])
        out = []
        for v in values:  # copies: a CPU OrtValue's numpy() is a view of a buffer the next batch reuses
            arr = v.numpy()  # type: ignore[union-attr]
            out.append(np.array(arr[:n] if size != n and arr.ndim and arr.shape[0] == size else arr))
        return out

    def warm_up_runs(self) -> int:
        """Runs per batch size at warm-up: a CUDA graph is captured after a few plain runs."""
        return 3 if self.cuda_graph else 1
