"""The whole line on a realistic model: how close it comes to the bare session, and what it costs around it.

    .venv/bin/python benchmarks/pipeline_realistic.py            # about 8 minutes on 2 cores
    .venv/bin/python benchmarks/pipeline_realistic.py --quick    # short probes, for a look

The model is the one `linewatch train --backbone efficientnet-lite0` makes (ImageNet EfficientNet-Lite0 from
its wheel, a two-class head, the CAM and embedding outputs; 256² Mono8 frames resized to 224 in the graph),
trained a few epochs on 240 emulated parts (about 2 minutes), so the replayed parts get a line's mix of
verdicts and kept images. The line runs on its defaults
(`infer.workers` and `model.intra_op_threads` on `auto`: `LineConfig.cpu_plan`), replaying a looped folder
of emulator BMP frames (benchmarks/pipeline.py's replay: the camera costs a frame grabber's copy).

- bare: the session loaded as a worker loads it (same settings and threads); best throughput over batch
  sizes with every worker's session running at once (the same cores the line gets), single-frame latency
  p50/p99 of one session on an idle machine, and its CPU per frame (process time: the model's own cost).
- line: the highest rate at which every frame ends as a model verdict (doubling, then bisection:
  pipeline.py's `max_rate`), `throughput_vs_bare`; at 50 % of it, capture-to-committed latency p99 and the
  CPU of every process over the steady window per part (psutil); `line_cpu_ms_per_part_outside_model` is
  all of it less the model's bare CPU per frame.
- wake-ups: every thread's voluntary context switches per part over the same window (each a wait for a
  message or a timer that ended), and beside it what one wake-up costs on this machine: the thread CPU a
  process spends per message when woken by a 1.3 kB ZeroMQ message (blocking poll, then receive) at the
  census rate and at ten times it (a VM's idle vCPU makes a wake-up from idle several times dearer).
- start-up: seconds from `linewatch run` (the embedded default, fresh data dir) to the first row in the
  store, median of three.

Results go to benchmarks/results/pipeline_realistic.json; benchmarks/RESULTS.md shows them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import psutil
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pipeline as P

from linewatch.config import parse_config
from linewatch.config.line import cpu_plan
from linewatch.emulator.parts import PartEmulator
from linewatch.infer.health import load_model
from linewatch.model.onnx import Model
from linewatch.model.runtime import SessionSettings
from linewatch.training.trainer import TrainOptions, train

RESULTS = P.REPO / "benchmarks" / "results" / "pipeline_realistic.json"
SIDE = 256
GOALS = {"throughput_vs_bare": ">= 0.85", "p99_ms_at_50pct": "<= bare_p99_ms + 3",
         "line_cpu_ms_per_part_outside_model": "<= 1.0", "startup_first_verdict_s": "<= 2.0"}


def realistic_model(tmp: Path) -> Path:
    """An EfficientNet-Lite0 classifier as `linewatch train` exports it, trained well enough that the replayed
    parts get a line's mix of verdicts (an untrained head fails most of them, and every FAIL's image is
    kept: record's cost would be the archive's, not the line's)."""
    data = tmp / "train"
    emu = PartEmulator(SIDE, SIDE, seed=3, defect_rate=0.5)
    want, seq = {"good": 120, "defect": 120}, 0
    while any(want.values()):
        part = emu.render(seq)
        if want[label := part.truth["label"]]:
            want[label] -= 1
            (data / label).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(data / label / f"{seq:04d}.png"), part.pixels)
        seq += 1
    out = tmp / "model"
    for seed in range(4):  # the export's parity check refuses an unlucky seed now and then
        with contextlib.suppress(RuntimeError):
            card = train(data, out, TrainOptions(name="lite0", epochs=6, seed=seed, max_minutes=4,
                                                 backbone="efficientnet-lite0"), log=lambda _: None)
            return out / card["file"]
    raise SystemExit("the realistic model could not be exported (parity check refused four seeds)")


def _bare_worker(cfg_dict: dict[str, Any], frames: str, start: Any, out: Any) -> None:
    start.wait()
    out.put(P.bare_session(cfg_dict, Path(frames), batches=(1, 2, 4), seconds=2.0)["parts_per_s"])


def bare(cfg_dict: dict[str, Any], frames: Path, workers: int) -> dict[str, Any]:
    """The session as each worker loads it: throughput with all of them at once, latency and CPU of one."""
    ctx = mp.get_context("spawn")
    start, out = ctx.Barrier(workers), ctx.Queue()
    procs = [ctx.Process(target=_bare_worker, args=(cfg_dict, str(frames), start, out)) for _ in range(workers)]
    for p in procs:
        p.start()
    together = sum(out.get(timeout=600) for _ in procs)
    for p in procs:
        p.join()
    cfg = parse_config(cfg_dict)
    model = load_model(cfg.model, SessionSettings.for_line(cfg))
    pool = np.stack([cv2.imread(str(f), cv2.IMREAD_UNCHANGED) for f in sorted(frames.glob("*.bmp"))])
    for px in pool[:5]:
        model.run(px[None])
    times, cpu0 = [], time.process_time()
    for i in range(300):
        t0 = time.perf_counter()
        model.run(pool[i % len(pool)][None])
        times.append((time.perf_counter() - t0) * 1e3)
    cpu_ms = (time.process_time() - cpu0) * 1e3 / len(times)
    return {"workers": workers, "threads": cfg.cpu_plan.threads, "best_parts_per_s": round(together, 1),
            "single_frame_ms": round(float(np.percentile(times, 50)), 2),
            "p99_ms": round(float(np.percentile(times, 99)), 2), "cpu_ms_per_frame": round(cpu_ms, 2)}


def _cpu_by_process(supervisor: psutil.Process) -> dict[str, float]:
    out = {"supervisor": sum(supervisor.cpu_times()[:2])}
    for child in supervisor.children():
        with contextlib.suppress(psutil.NoSuchProcess):
            role, index = child.cmdline()[4:6]
            name = f"{role}[{index}]" if role == "infer" else role
            out[name] = sum(child.cpu_times()[:2])
    return out


def _wakeups(supervisor: psutil.Process) -> int:
    """Voluntary context switches of every thread of the line so far."""
    total = 0
    for proc in [supervisor, *supervisor.children()]:
        for status in Path(f"/proc/{proc.pid}/task").glob("*/status"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                total += int(status.read_text().split("voluntary_ctxt_switches:")[1].split()[0])
    return total


def _publish(endpoint: str, rate: float, seconds: float) -> None:
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.bind(endpoint)
    time.sleep(0.5)  # the subscriber connects
    end, body = time.monotonic() + seconds, os.urandom(1300)
    while time.monotonic() < end:
        pub.send_multipart([b"verdicts", body])
        time.sleep(1 / rate)
    pub.close(linger=0)
    ctx.term()


def wakeup_cpu_us(tmp: Path, rate: float, seconds: float = 4.0) -> float:
    """Thread CPU a subscriber spends per message when each message wakes it (blocking poll, receive)."""
    endpoint = f"ipc://{tmp / 'wakeup.ipc'}"
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.subscribe(b"")
    sub.connect(endpoint)
    pub = mp.get_context("spawn").Process(target=_publish, args=(endpoint, rate, seconds + 1.5))
    pub.start()
    n, cpu0, end = 0, 0.0, time.monotonic() + seconds + 1.0
    while time.monotonic() < end and sub.poll(2000):
        sub.recv_multipart()
        n += 1
        if n == 20:  # connected and warm
            cpu0 = time.thread_time()
    cpu = time.thread_time() - cpu0
    pub.join()
    sub.close(linger=0)
    ctx.term()
    if n <= 20:
        raise SystemExit("the wake-up probe received no messages")
    return round(cpu / (n - 20) * 1e6, 1)


def census(tmp: Path, rate: float, seconds: float, workers: int) -> dict[str, Any]:
    """The line at `rate`: latency of the parts and each process's CPU per part over the same `seconds`, after
    two seconds of parts (the start-up's last imports and the sessions' first runs are the start-up's figure)."""
    run = tmp / f"census-{rate:.0f}-{time.monotonic_ns()}"
    run.mkdir()
    proc, db = P.start_line(run, P.line_config(tmp, SIDE, rate, 10**9, workers, []))
    try:
        deadline = time.monotonic() + 120
        while P.count_rows(db) < 2 * rate and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)  # two seconds of parts: every worker has joined and warmed up
        sup = psutil.Process(proc.pid)
        n0, cpu0, woke0 = P.count_rows(db), _cpu_by_process(sup), _wakeups(sup)
        time.sleep(seconds)
        n1, cpu1, woke1 = P.count_rows(db), _cpu_by_process(sup), _wakeups(sup)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    parts = n1 - n0
    if parts <= 0:
        raise SystemExit(f"the line recorded nothing: see {run / 'line.log'}")
    per_part = {k: round((cpu1[k] - cpu0.get(k, 0.0)) * 1e3 / parts, 3) for k in cpu1}
    return {"rate": rate, "parts": parts, "cpu_ms_per_part": per_part,
            "wakeups_per_part": round((woke1 - woke0) / parts, 2),
            "summary": P.summarise(db, P.count_rows(db), rate, window=slice(n0, n1))}


def startup(runs: int = 3) -> dict[str, Any]:
    """Seconds from `linewatch run` (embedded default, fresh data dir) to the first row in its store."""
    times = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as d, socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            s.close()
            t0 = time.monotonic()
            proc = subprocess.Popen([sys.executable, "-m", "linewatch", "run", "--data-dir", d, "--port", str(port)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                db = Path(d) / "linewatch.db"
                while P.count_rows(db) == 0 and time.monotonic() - t0 < 60 and proc.poll() is None:
                    time.sleep(0.01)
                times.append(time.monotonic() - t0)
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=60)
    return {"runs_s": [round(t, 2) for t in times], "median_s": round(statistics.median(times), 2)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, help="an ONNX model with the line's contract (default: train one)")
    ap.add_argument("--seconds", type=float, default=5.0, help="length of each rate probe")
    ap.add_argument("--census-seconds", type=float, default=20.0, help="length of the 50 %% run")
    ap.add_argument("--steps", type=int, default=3, help="bisection steps after the doubling")
    ap.add_argument("--start", type=float, default=40.0, help="first probe rate (parts/s)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS)
    a = ap.parse_args()
    if a.quick:
        a.seconds, a.census_seconds, a.steps = 3.0, 8.0, 1
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        model = a.model or realistic_model(tmp)
        P.MODEL_PATH[SIDE] = model
        frames = P.frames_for(SIDE, tmp)
        plan = cpu_plan("auto", "auto")
        P.THREADS = plan.threads  # the line's `auto`, resolved here so the bare sessions get the same
        base = P.line_config(tmp, SIDE, 10, 100, plan.workers, [])
        b = bare(base, frames, plan.workers)
        print(f"bare: {json.dumps(b)}", flush=True)
        top, probes = P.max_rate(tmp, SIDE, a.seconds, a.steps, a.start, plan.workers)
        half = census(tmp, top / 2, a.census_seconds, plan.workers)
        print(f"at 50 %: {json.dumps(half)}", flush=True)
        wake = {"at_census_rate": wakeup_cpu_us(tmp, top / 2), "at_10x": wakeup_cpu_us(tmp, top * 5)}
        print(f"wake-up: {json.dumps(wake)}", flush=True)
        up = startup()
        print(f"start-up: {json.dumps(up)}", flush=True)
        info = Model(model, "cpu", 1).info
        parameters = _parameters(model)
        file_mb = round(model.stat().st_size / 1e6, 2)
    cpu = half["cpu_ms_per_part"]
    outside = sum(cpu.values()) - b["cpu_ms_per_frame"]
    result: dict[str, Any] = {
        "model": {"name": info.name, "file_mb": file_mb, "parameters": parameters, "bare_ms": b["single_frame_ms"],
                  "side": SIDE},
        "workers": plan.workers, "ort_threads": plan.threads, "cores": plan.cores,
        "bare": b, "max_sustained_per_s": round(top, 1),
        "throughput_vs_bare": round(top / b["best_parts_per_s"], 3),
        "p99_ms_at_50pct": half["summary"].get("latency_ms_p99"),
        "bare_single_frame_ms": b["single_frame_ms"], "bare_p99_ms": b["p99_ms"],
        "line_cpu_ms_per_part": round(sum(cpu.values()), 3),
        "line_cpu_ms_per_part_outside_model": round(outside, 3),
        "cpu_ms_per_part_by_process": cpu, "at_50pct": half, "probes": probes,
        "wakeups_per_part": half["wakeups_per_part"],
        "wakeup_cpu_us": wake,
        "wakeups_cpu_ms_per_part": round(half["wakeups_per_part"] * wake["at_census_rate"] / 1e3, 3),
        "startup_first_verdict_s": up["median_s"], "startup": up, "goals": GOALS,
        "gpu": "no device machine was lent: the 512² GPU figure is not measured",
        "machine": {"cpus": os.cpu_count(), "loadavg_before_after": [load_before,
                                                                      Path("/proc/loadavg").read_text().split()[:3]]},
        "seconds": round(time.monotonic() - t_start),
        "command": " ".join(["benchmarks/pipeline_realistic.py", *sys.argv[1:]]),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    print(table(result))
    print(f"written to {a.out}")
    return 0


def _parameters(path: Path) -> int:
    import onnx

    return int(sum(np.prod(t.dims) for t in onnx.load(str(path)).graph.initializer))


def table(r: dict[str, Any]) -> str:
    """The figures as benchmarks/RESULTS.md shows them."""
    b, cpu = r["bare"], r["cpu_ms_per_part_by_process"]
    return "\n".join([
        f"| {r['model']['name']} ({r['model']['parameters'] / 1e6:.1f} M parameters), {r['workers']} worker(s) x "
        f"{r['ort_threads']} thread(s) | bare | line |", "|---|---|---|",
        f"| throughput (parts/s) | {b['best_parts_per_s']} | {r['max_sustained_per_s']} "
        f"({r['throughput_vs_bare']}x) |",
        f"| p99 at 50 % load (ms) | {b['p99_ms']} (single frame; p50 {b['single_frame_ms']}) | "
        f"{r['p99_ms_at_50pct']} |",
        f"| CPU per part (ms) | {b['cpu_ms_per_frame']} (the model) | {r['line_cpu_ms_per_part']} "
        f"({r['line_cpu_ms_per_part_outside_model']} outside the model: "
        + ", ".join(f"{k} {v}" for k, v in sorted(cpu.items(), key=lambda kv: -kv[1])) + ") |",
        f"| thread wake-ups per part | | {r['wakeups_per_part']} (one costs "
        f"{r['wakeup_cpu_us']['at_census_rate']} µs of CPU here at the 50 % rate, "
        f"{r['wakeup_cpu_us']['at_10x']} µs at ten times it: ~{r['wakeups_cpu_ms_per_part']} ms a part) |",
        f"| first verdict after `linewatch run` (s) | | {r['startup_first_verdict_s']} |",
    ])


if __name__ == "__main__":
    sys.exit(main())
