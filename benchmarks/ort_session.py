"""The bare ONNX Runtime session on the reference model: providers and session options compared in one run.

    python benchmarks/ort_session.py --gpu                      # what benchmarks/gpu.sh runs
    python benchmarks/ort_session.py --cpu-sweep --sizes 256 1024 --batches 1 4 8

Each row is one way of running the same model on the same frames, built by `linewatch.model.runtime`
exactly as a worker builds it: throughput (frames/s) at each batch size, single-frame latency
p50/p99, and the largest difference of its probabilities from the plain CPU session. 512² and
1024² are the reference graph with its in-graph pooling scaled (4 px -> 8 / 16 px), so the network
itself is unchanged and only the pixels grow. A provider that does not load prints
"not available: <why>" and the run goes on.

Imports only numpy, onnx, onnxruntime and `linewatch.model.runtime` (found through `inspect/`, no install).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "inspect"))
from linewatch.model.runtime import (  # noqa: E402
    CUDA,
    TENSORRT,
    BoundRunner,
    ProviderError,
    SessionSettings,
    missing_libraries,
    open_session,
)

REFERENCE = ROOT / "models" / "reference" / "reference.onnx"


def scaled_reference(size: int) -> bytes:
    """The reference graph for size x size Mono8 frames: its first AveragePool scaled to keep 64 px inside."""
    model = onnx.load(str(REFERENCE))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    pool = next(n for n in model.graph.node if n.op_type == "AveragePool")
    base = dims[1].dim_value
    if size % base and base % size:
        raise SystemExit(f"--sizes: {size} must be a multiple or divisor of {base}")
    if size != base:
        k = pool.attribute[0].ints[0] * size // base
        for a in pool.attribute:
            a.ints[:] = [k, k]
        dims[1].dim_value = dims[2].dim_value = size
    return bytes(model.SerializeToString())


@dataclass(frozen=True)
class Variant:
    name: str
    settings: SessionSettings


def gpu_variants(threads: int) -> list[Variant]:
    cpu = SessionSettings(providers="cpu", intra_op_threads=threads, io_binding="never")
    cuda = replace(cpu, providers="cuda", cuda_graph=False)
    trt = replace(cpu, providers="tensorrt", io_binding="always", cuda_graph=False)
    return [Variant("cpu plain", cpu), Variant("cpu iobinding", replace(cpu, io_binding="always")),
            Variant("cuda plain", cuda), Variant("cuda iobinding", replace(cuda, io_binding="always")),
            Variant("cuda iobinding+graph", replace(cuda, io_binding="always", cuda_graph=True)),
            Variant("tensorrt fp32", trt), Variant("tensorrt fp16", replace(trt, fp16=True))]


def cpu_variants(threads: int) -> list[Variant]:
    """The session options the worker can be given, one change at a time from the defaults."""
    base = SessionSettings(providers="cpu", intra_op_threads=1)
    out = [Variant("default (1 thread, no spin, opt all, plain run)", base),
           Variant("iobinding", replace(base, io_binding="always")),
           Variant("spinning on", replace(base, allow_spinning=True)),
           Variant("graph opt basic", replace(base, graph_optimization="basic")),
           Variant("graph opt disable", replace(base, graph_optimization="disable"))]
    if threads > 1:
        out += [Variant(f"{threads} threads", replace(base, intra_op_threads=threads)),
                Variant(f"{threads} threads, spinning on", replace(base, intra_op_threads=threads,
                                                                   allow_spinning=True))]
    return out


class Runner:
    """One variant's session, run the way a worker runs it (IOBinding or plain `session.run`)."""

    def __init__(self, data: bytes, v: Variant, batches: list[int], cache: Path):
        s = replace(v.settings, batch_sizes=tuple(sorted(batches)), engine_cache_dir=cache / "trt")
        self.opened = open_session(data, s, f"bench-{len(data)}")
        self.bound = BoundRunner(self.opened, s.batch_sizes, s.device_id) if s.binds(self.opened.device) else None
        self.name = self.opened.session.get_inputs()[0].name
        for n in batches:  # warm-up, as Model.warm_up does (graph capture needs a few runs)
            for _ in range(3):
                self(_frames(n, self.size))

    @property
    def size(self) -> int:
        return int(self.opened.session.get_inputs()[0].shape[1])

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        if self.bound is not None:
            return self.bound.run({self.name: frames})[0]
        return np.asarray(self.opened.session.run(None, {self.name: frames})[0])


_FRAMES: dict[tuple[int, int], np.ndarray] = {}


def _frames(n: int, size: int) -> np.ndarray:
    if (n, size) not in _FRAMES:
        _FRAMES[(n, size)] = np.random.default_rng(size + n).integers(0, 256, (n, size, size), np.uint8)
    return _FRAMES[(n, size)]


def measure_size(size: int, variants: list[Variant], args: argparse.Namespace) -> list[dict[str, Any]]:
    """All variants at one frame size, measured interleaved in `--rounds` rounds (medians): the ratios
    between rows stay fair on a machine whose load changes during the run."""
    data = scaled_reference(size)
    runners: list[Runner] = []
    rows: list[dict[str, Any]] = []
    for v in variants:
        t0 = time.perf_counter()
        try:
            run = Runner(data, v, args.batches, args.cache)
        except (ProviderError, RuntimeError, ValueError) as exc:
            print(f"{size}² {v.name}: not available: {str(exc).strip()[:300]}", flush=True)
            rows.append({"size": size, "variant": v.name, "available": False, "why": str(exc)[:300]})
            continue
        runners.append(run)
        rows.append({"size": size, "variant": v.name, "available": True, "providers": run.opened.providers[:1],
                     "cuda_graph": run.opened.cuda_graph, "load_s": round(time.perf_counter() - t0, 2)})
    live = [r for r in rows if r["available"]]
    for n in args.batches:
        outs = [run(_frames(n, size)) for run in runners]
        for row, out in zip(live, outs, strict=True):
            row["max_prob_diff"] = max(float(row.get("max_prob_diff", 0.0)), float(np.abs(out - outs[0]).max()))
        fps: list[list[float]] = [[] for _ in runners]
        for _ in range(args.rounds):
            for i, run in enumerate(runners):
                fps[i].append(throughput(run, n, args.seconds / args.rounds))
        for row, f in zip(live, fps, strict=True):
            row[f"fps_b{n}"] = round(float(np.median(f)), 1)
    times: list[list[float]] = [[] for _ in runners]
    for _ in range(args.rounds):
        for i, run in enumerate(runners):
            times[i] += latency(run, args.latency_runs // args.rounds, args.seconds / args.rounds)
    for row, t in zip(live, times, strict=True):
        row["p50_ms"], row["p99_ms"] = round(float(np.percentile(t, 50)), 3), round(float(np.percentile(t, 99)), 3)
        print(json.dumps(row), flush=True)
    return rows


def throughput(run: Runner, n: int, seconds: float) -> float:
    frames, done, t0 = _frames(n, run.size), 0, time.perf_counter()
    while True:
        run(frames)
        done += n
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds and done >= 3 * n:
            return done / elapsed


def latency(run: Runner, count: int, seconds: float) -> list[float]:
    frame, times = _frames(1, run.size), list[float]()
    t_end = time.perf_counter() + seconds
    while len(times) < count or (time.perf_counter() < t_end and len(times) < 20 * count):
        t0 = time.perf_counter_ns()
        run(frame)
        times.append((time.perf_counter_ns() - t0) / 1e6)
    return times


def _loadavg() -> list[str]:
    path = Path("/proc/loadavg")
    return path.read_text().split()[:3] if path.exists() else []


def providers_report(batches: list[int], cache: Path) -> list[str]:
    """What is installed, which libraries load, and what each `model.providers` request really runs on."""
    lines = [f"onnxruntime {ort.__version__} ({ort.get_device()}) from {Path(ort.__file__).parent}, "
             f"python {platform.python_version()}", f"built with: {', '.join(ort.get_available_providers())}"]
    for p in (TENSORRT, CUDA):
        if p in ort.get_available_providers():
            miss = missing_libraries(p)
            lines.append(f"{p}: " + (f"not available: missing {', '.join(miss)}" if miss else "libraries load"))
    data = REFERENCE.read_bytes()
    for request in ("auto", "cpu", "cuda", "tensorrt"):
        s = SessionSettings(providers=request, batch_sizes=tuple(sorted(batches)), engine_cache_dir=cache / "trt")
        try:
            opened = open_session(data, s, "providers-check")
        except (ProviderError, RuntimeError, ValueError) as exc:
            lines.append(f"model.providers: {request} -> not available: {str(exc).strip()[:300]}")
            continue
        extra = f" (gave up: {'; '.join(opened.fallbacks)})" if opened.fallbacks else ""
        graph = ", CUDA graphs" if opened.cuda_graph else ""
        lines.append(f"model.providers: {request} -> runs on {', '.join(opened.providers)}{graph}{extra}")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpu", action="store_true", help="CPU vs CUDA vs TensorRT variants (default)")
    ap.add_argument("--cpu-sweep", action="store_true", help="CPU session options instead")
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads of the gpu variants")
    ap.add_argument("--seconds", type=float, default=0.5, help="per throughput cell")
    ap.add_argument("--latency-runs", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds over the variants (medians)")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("BENCH_RESULTS", ROOT / "benchmarks/results")))
    ap.add_argument("--cache", type=Path, default=Path(os.environ.get("BENCH_CACHE", "/tmp/linewatch-bench-cache")))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    variants = cpu_variants(args.threads) if args.cpu_sweep else gpu_variants(args.threads)
    head = providers_report(args.batches, args.cache)
    print("\n".join(head), flush=True)
    load = _loadavg()
    rows: list[dict[str, Any]] = []
    for size in args.sizes:
        rows += measure_size(size, variants, args)
    table = _table(rows, args.batches)
    after = _loadavg()
    text = "\n".join([*head, f"load average before: {' '.join(load)}; after: {' '.join(after)}", "", table])
    print("\n" + table)
    args.out.mkdir(parents=True, exist_ok=True)
    name = "ort_cpu_sweep" if args.cpu_sweep else "ort_gpu"
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    (args.out / f"{name}-{stamp}.md").write_text(text + "\n")
    (args.out / f"{name}-{stamp}.json").write_text(json.dumps({"header": head, "rows": rows}, indent=1))
    print(f"\nwritten: {args.out / f'{name}-{stamp}.md'}")
    return 0


def _table(rows: list[dict[str, Any]], batches: list[int]) -> str:
    cols = [f"fps b={n}" for n in batches]
    lines = ["| size | variant | " + " | ".join(cols) + " | 1-frame p50 ms | p99 ms | max Δp vs cpu | load s |",
             "|---|---|" + "---|" * (len(cols) + 4)]
    for r in rows:
        if not r["available"]:
            lines.append(f"| {r['size']}² | {r['variant']} | not available: {r['why'][:120]} |")
            continue
        fps = " | ".join(f"{r[f'fps_b{n}']:.0f}" for n in batches)
        lines.append(f"| {r['size']}² | {r['variant']} | {fps} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | "
                     f"{r['max_prob_diff']:.1e} | {r['load_s']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
