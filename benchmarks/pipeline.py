"""The whole line against its limits, in one run: how fast it goes and how late its verdicts are.

    .venv/bin/python benchmarks/pipeline.py            # full study, about 10 minutes
    .venv/bin/python benchmarks/pipeline.py --quick    # one resolution, short probes (about 3 minutes)

For each resolution (256², 512², 1024² Mono8) the real line (`linewatch run`: acquire -> infer ->
record, api and plc beside it) replays a looped folder of emulator frames (BMP, so the camera costs
what a frame grabber's copy costs, not the emulator's rendering) into the reference model. The
reference model takes 256x256; for larger frames the benchmark writes a variant whose in-graph
average pool is widened (kernel = side / 64), so every resolution runs the same network on the same
64x64 features with the downscaling inside the graph (checked: a 256² frame blown up k x k gives
the reference's output).

- max sustained parts/s: the highest rate (doubling, then bisection) at which every frame ends as a
  model verdict: no frame dropped or timed out, and the achieved capture rate within 3 % of the asked.
- capture-to-committed-verdict latency p50/p99/p99.9 at 50 % and 90 % of that rate (the first
  second, warm-up, is left out of the latency but not of the drop count), and per-stage medians.
- the limit, same run: the bare ONNX Runtime session loaded exactly as a worker loads it (same
  config, threads and session options) on the same frames: best batch throughput, single-frame
  latency; and the transport alone (benchmarks/transport.py) at the same frame size.
- scaling: max rate with 1 and 2 workers (and 2 pinned to cores) at 256².
- many streams, in the form of the open edge reference's figure: 24 cameras x 10 fps at 256², the
  share of frames recorded as not inspected and the share silently lost (no row at all: must be 0).

Stage times come from each row (`timings_ms` of the worker, the group commit of record); they add
up to the capture-to-commit latency, which the results check (`stages_minus_latency_max_abs_ms`).

Results go to benchmarks/results/pipeline.json (`--out`); benchmarks/RESULTS.md shows them as `table()`
prints them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
import yaml

from linewatch.config import LineConfig, parse_config
from linewatch.emulator.parts import PartEmulator
from linewatch.failsafe import FailSafe
from linewatch.infer.health import load_model
from linewatch.model.onnx import Model
from linewatch.model.runtime import SessionSettings
from linewatch.wire import FrameHeader

REPO = Path(__file__).resolve().parent.parent
REFERENCE = REPO / "models" / "reference" / "reference.onnx"
RESULTS = REPO / "benchmarks" / "results" / "pipeline.json"
MAX_FPS = 2000.0  # cameras[].fps bound
ANCHORS = {  # open edge-inspection reference (camera -> YOLOX tiny -> Modbus coil), from issue #7
    "source": "open edge reference, Jetson Orin NX, capture to Modbus coil",
    "p50_ms_at_10fps": 9.3, "p99_ms_at_10fps": 9.5, "p50_ms_unthrottled": 35.9,
    "silently_dropped_at_24_streams_x_10fps": 0.54,
}
STAGES = ("acquire", "transport", "queue", "preprocess", "inference", "failsafe", "record", "event")


def model_for(side: int, folder: Path) -> Path:
    """The reference network for side x side frames: the in-graph pool widened to give the same 64x64 features."""
    if side == 256:
        return REFERENCE
    if side % 256:
        raise SystemExit(f"--sizes: {side} is not a multiple of 256 (the variants pool k x k of a 256² network)")
    m = onnx.load(str(REFERENCE))
    dims = m.graph.input[0].type.tensor_type.shape.dim
    dims[1].dim_value = dims[2].dim_value = side
    pool = next(n for n in m.graph.node if n.op_type == "AveragePool")
    for attr in pool.attribute:
        if attr.name in ("kernel_shape", "strides"):
            attr.ints[:] = [side // 64, side // 64]
    for p in m.metadata_props:
        if p.key in ("linewatch.input_height", "linewatch.input_width"):
            p.value = str(side)
        elif p.key == "linewatch.name":
            p.value = f"reference-{side}"
    path = folder / f"reference-{side}.onnx"
    if not path.exists():
        onnx.save(m, str(path))
        _check_variant(path, side)
    return path


def _check_variant(path: Path, side: int) -> None:
    """The variant must be the reference network: a frame blown up k x k gives the reference's output."""
    import onnxruntime as ort

    small = PartEmulator(256, 256, seed=1, defect_rate=0.5).render(1).pixels[None]
    k = side // 256
    big = np.ascontiguousarray(small.repeat(k, axis=1).repeat(k, axis=2))
    ref = ort.InferenceSession(str(REFERENCE), providers=["CPUExecutionProvider"]).run(None, {"image": small})[0]
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": big})[0]
    if not np.allclose(ref, got, atol=1e-4):
        raise SystemExit(f"{path.name}: output {got} differs from the reference's {ref}")


def frames_for(side: int, folder: Path, count: int = 32) -> Path:
    """A replay folder of emulator parts (5 % defective) with their truth manifest."""
    out = folder / f"frames-{side}"
    out.mkdir()
    emu = PartEmulator(side, side, seed=7, defect_rate=0.05)
    with (out / "manifest.jsonl").open("w") as manifest:
        for i in range(count):
            part = emu.render(i)
            cv2.imwrite(str(out / f"{i:03d}.bmp"), part.pixels)
            manifest.write(json.dumps({"file": f"{i:03d}.bmp", "truth": part.truth}) + "\n")
    return out


INFER_SETTINGS: dict[str, Any] = {}  # infer.* overrides from the command line (e.g. --frame-queue)
MODEL_PATH: dict[int, Path] = {}  # side -> the model the line runs, instead of the reference (pipeline_realistic.py)
THREADS: int | str = 1  # model.intra_op_threads of every run: single-threaded workers, as the tables were measured


def line_config(tmp: Path, side: int, rate: float, frames: int, workers: int, cpus: list[int],
                cameras: int = 1) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "data_dir": str(tmp / "data"), "api": {"port": 0},
        "model": {"path": str(MODEL_PATH.get(side) or model_for(side, tmp)), "intra_op_threads": THREADS},
        "cameras": [{"name": f"cam{i}", "width": side, "height": side, "fps": rate, "max_frames": frames,
                     "source": {"type": "replay", "path": str(tmp / f"frames-{side}"), "loop": True}}
                    for i in range(cameras)],
        "infer": {"workers": workers, "cpus": cpus, **INFER_SETTINGS},
    }
    with socket.socket() as s:  # the plc's Modbus port, free of other lines on this machine
        s.bind(("127.0.0.1", 0))
        cfg["plc"] = {"port": s.getsockname()[1]}
    return cfg


def run_line(tmp: Path, side: int, rate: float, seconds: float, workers: int = 1, cpus: list[int] | None = None,
             cameras: int = 1) -> dict[str, Any]:
    """One probe: the line at `rate` per camera for `seconds`; a line that never produced a row is started again."""
    try:
        return _run_line(tmp, side, rate, seconds, workers, cpus, cameras)
    except LineDidNotRun as exc:
        print(f"  (the line did not run, starting it again: {str(exc)[-300:]})", flush=True)
        return _run_line(tmp, side, rate, seconds, workers, cpus, cameras)


class LineDidNotRun(RuntimeError):
    """`linewatch run` exited or recorded nothing: a broken start, not a measurement."""


def start_line(run: Path, cfg: dict[str, Any]) -> tuple[subprocess.Popen[bytes], Path]:
    """`linewatch run` on `cfg` with its data under `run` (log in run/line.log); the process and its store."""
    cfg["data_dir"] = str(run / "data")
    (run / "line.yaml").write_text(yaml.safe_dump(cfg))
    with (run / "line.log").open("w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "linewatch", "run", "--config", str(run / "line.yaml")],
                                stdout=log, stderr=subprocess.STDOUT)
    return proc, run / "data" / "linewatch.db"


def count_rows(db: Path) -> int:
    """Rows in the store so far (0 before record has made it)."""
    with contextlib.suppress(sqlite3.OperationalError), \
            contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        return int(conn.execute("SELECT count(*) FROM inspections").fetchone()[0])
    return 0


def _run_line(tmp: Path, side: int, rate: float, seconds: float, workers: int, cpus: list[int] | None,
              cameras: int) -> dict[str, Any]:
    run = tmp / f"run-{side}-{rate:.0f}-{workers}-{len(cpus or [])}-{cameras}-{time.monotonic_ns()}"
    run.mkdir()
    frames = max(100, round(rate * seconds))
    cfg = line_config(tmp, side, rate, frames, workers, cpus or [], cameras)
    proc, db = start_line(run, cfg)
    end = time.monotonic() + 60 + 2 * frames / rate
    n = 0
    try:
        while n < frames * cameras and time.monotonic() < end and proc.poll() is None:
            time.sleep(0.5)
            n = count_rows(db)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    if n == 0:
        raise LineDidNotRun(f"see {run / 'line.log'}: {(run / 'line.log').read_text()[-2000:]}")
    return summarise(db, frames * cameras, rate * cameras)


def summarise(db: Path, frames: int, rate: float, window: slice | None = None) -> dict[str, Any]:
    """Drops, rate and capture-to-commit latency from the store; stage times from each row's timings. Latency
    and stages are over the parts after the first second, or over `window` (rows in seq order) when given: a
    measurement window that leaves out the line's warm-up."""
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    has = {r["name"] for r in conn.execute("PRAGMA table_info(inspections)")}
    commits = "commit_id" in has and conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'commits'").fetchone() is not None
    rows = [dict(r) for r in conn.execute(
        "SELECT i.*, " + ("c.t_committed_ns, c.t_published_ns" if commits else "NULL AS t_committed_ns, "
                          "NULL AS t_published_ns") + " FROM inspections i "
        + ("LEFT JOIN commits c ON c.id = i.commit_id " if commits else "") + "ORDER BY i.seq")]
    conn.close()
    failed = [r for r in rows if r["decided_by"] in ("not_inspected", "timeout")]
    achieved = 0.0  # summed over cameras: they start one after another
    for camera in {r["camera"] for r in rows}:
        t = [r["t_capture_ns"] for r in rows if r["camera"] == camera and r["t_capture_ns"]]
        achieved += (len(t) - 1) / ((max(t) - min(t)) / 1e9) if len(t) > 1 and max(t) > min(t) else 0.0
    decided = [r for r in rows if r not in failed and r["t_received_ns"]]
    first = {r["camera"]: r["t_capture_ns"] for r in reversed(rows) if r["t_capture_ns"]}
    steady = [r for r in decided if r["t_capture_ns"] - first[r["camera"]] > 1e9] or decided  # 1st s warms up
    if window is not None:
        inside = {(r["camera"], r["stream"], r["seq"]) for r in rows[window]}
        steady = [r for r in steady if (r["camera"], r["stream"], r["seq"]) in inside]
    out: dict[str, Any] = {
        "rate_asked": round(rate, 1), "rate_achieved": round(achieved, 1), "frames": frames, "rows": len(rows),
        "missing": frames - len(rows), "not_inspected": len(failed),
        "not_inspected_why": dict(Counter(f"{r['decided_by']}: {json.loads(r['reasons'] or '[]')[:1]}"[:120]
                                          for r in failed)),
        "sustained": bool(len(rows) == frames and not failed and achieved >= 0.97 * rate),
    }
    if not steady:
        return out
    committed = np.array([r["t_committed_ns"] or r["t_recorded_ns"] for r in steady], np.int64)
    lat = (committed - np.array([r["t_capture_ns"] for r in steady], np.int64)) / 1e6
    out.update({f"latency_ms_{k}": round(float(np.percentile(lat, q)), 2)
                for k, q in (("p50", 50), ("p99", 99), ("p999", 99.9))})
    stages = np.array([_stages(r, int(c)) for r, c in zip(steady, committed, strict=True)], float)
    out["stage_ms_p50"] = {s: round(float(np.nanmedian(stages[:, i])), 3) for i, s in enumerate(STAGES)}
    out["stage_ms_p99"] = {s: round(float(np.nanpercentile(stages[:, i], 99)), 3) for i, s in enumerate(STAGES)}
    gap = lat - np.nansum(stages[:, : len(STAGES) - 1], axis=1)  # event comes after the commit
    out["stages_minus_latency_max_abs_ms"] = round(float(np.max(np.abs(gap))), 3)
    return out


def _stages(r: dict[str, Any], t_committed: int) -> list[float]:
    """One row's stage times in STAGES order (older stores lack acquire/transport columns: from timestamps)."""
    acquire = r.get("acquire_ms")
    transport = r.get("transport_ms")
    return [
        acquire if acquire is not None else (r["t_sent_ns"] - r["t_capture_ns"]) / 1e6,
        transport if transport is not None else (r["t_received_ns"] - r["t_sent_ns"]) / 1e6,
        r["queue_ms"], r["preprocess_ms"], r["inference_ms"], r["failsafe_ms"],
        (t_committed - r["t_decided_ns"]) / 1e6,
        (r["t_published_ns"] - r["t_committed_ns"]) / 1e6 if r.get("t_published_ns") else float("nan"),
    ]


def max_rate(tmp: Path, side: int, seconds: float, steps: int, start: float, workers: int = 1,
             cpus: list[int] | None = None) -> tuple[float, list[dict[str, Any]]]:
    """Highest sustained rate: double from `start` until a probe fails, then bisect `steps` times."""
    probes: list[dict[str, Any]] = []

    def ok(rate: float) -> bool:
        probes.append(run_line(tmp, side, rate, seconds, workers, cpus))
        shown = {k: probes[-1].get(k) for k in ("rate_achieved", "not_inspected", "missing", "latency_ms_p99")}
        print(f"  {side}² {workers}w{' pinned' if cpus else ''} {rate:7.1f}/s: "
              f"{'ok' if probes[-1]['sustained'] else 'NO'} {json.dumps(shown)}", flush=True)
        return bool(probes[-1]["sustained"])

    good, bad = 0.0, None
    rate = start
    while bad is None:
        if ok(rate):
            good = rate
            if rate >= MAX_FPS:
                return good, probes
            rate = min(MAX_FPS, rate * 2)
        else:
            bad = rate
    for _ in range(steps):
        mid = (good + bad) / 2
        if ok(mid):
            good = mid
        else:
            bad = mid
    return good, probes


def bare_session(cfg_dict: dict[str, Any], frames: Path, batches: tuple[int, ...] = (1, 2, 4, 8, 16),
                 seconds: float = 1.0) -> dict[str, Any]:
    """The model alone, loaded as a worker loads it, on the same frames; and with the worker's fail-safe."""
    cfg = parse_config(cfg_dict)
    model = load_model(cfg.model, SessionSettings.for_line(cfg))
    pool = np.stack([np.asarray(cv2.imread(str(p), cv2.IMREAD_UNCHANGED)) for p in sorted(frames.glob("*.bmp"))])
    per_batch: dict[int, float] = {}
    for b in batches:
        x = np.ascontiguousarray(pool[:b] if b <= len(pool) else np.resize(pool, (b, *pool.shape[1:])))
        model.run(x)
        times: list[float] = []
        end = time.perf_counter() + seconds
        while time.perf_counter() < end or len(times) < 5:
            t0 = time.perf_counter()
            model.run(x)
            times.append(time.perf_counter() - t0)
        per_batch[b] = float(np.median(times))
    best = max(per_batch, key=lambda b: b / per_batch[b])
    return {"threads": cfg.cpu_plan.threads, "batch_ms": {b: round(t * 1e3, 3) for b, t in per_batch.items()},
            "best_batch": best, "parts_per_s": round(best / per_batch[best], 1),
            "single_frame_ms": round(per_batch[1] * 1e3, 3),
            "with_failsafe_ms": _with_failsafe(cfg, model, pool, seconds)}


def _with_failsafe(cfg: LineConfig, model: Model, pool: np.ndarray, seconds: float) -> dict[str, float]:
    """Per frame, one at a time: the worker's input rules, the model, the decision with its backup checks."""
    fs = FailSafe(cfg.failsafe, model.frame_shape, model.info)
    side = pool.shape[1]
    header = FrameHeader(camera="cam0", stream="bench", seq=0, part_id="p", t_capture_ns=1, t_sent_ns=1, width=side,
                         height=side, channels=1, dtype="uint8", pixel_format="Mono8")
    rules, run, decide = [], [], []
    end, i = time.perf_counter() + seconds, 0
    while time.perf_counter() < end or i < 5:
        px = pool[i % len(pool)]
        t0 = time.perf_counter()
        _, view = fs.check_frame(header, px)
        t1 = time.perf_counter()
        probs = model.run(px[None])[0]
        t2 = time.perf_counter()
        fs.decide(view, dict(zip(model.info.labels, map(float, probs), strict=True)))
        rules.append(t1 - t0)
        run.append(t2 - t1)
        decide.append(time.perf_counter() - t2)
        i += 1
    return {"input_rules": round(float(np.median(rules)) * 1e3, 3), "model": round(float(np.median(run)) * 1e3, 3),
            "decision": round(float(np.median(decide)) * 1e3, 3)}


def transport_alone(side: int, shm: bool, frames: int = 200) -> dict[str, Any]:
    """benchmarks/transport.py: sender process -> decoded array in a receiver, the line's transport and queue."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import transport
    except ImportError as exc:
        return {"error": f"benchmarks/transport.py: {exc}"}
    try:
        ms = transport.transport(shm=shm, frames=frames, hwm=2, w=side, h=side) * 1e3
    except Exception as exc:  # a changed signature: report it, do not hide it
        return {"error": f"benchmarks/transport.py transport(): {type(exc).__name__}: {exc}"}
    return {"path": "shm" if shm else "inline", "ms_per_frame": round(ms, 4)}


def study_size(tmp: Path, side: int, a: argparse.Namespace) -> dict[str, Any]:
    frames = frames_for(side, tmp)
    base = line_config(tmp, side, 10, 100, 1, [])
    bare = bare_session(base, frames)
    print(f"{side}²: bare session {json.dumps(bare)}", flush=True)
    top, probes = max_rate(tmp, side, a.seconds, a.steps, a.start)
    loads = {}
    for share in (0.5, 0.9):
        r = run_line(tmp, side, top * share, a.latency_seconds) if top else {}
        loads[f"{share:.0%}"] = r
        print(f"  at {share:.0%} ({top * share:.1f}/s): {json.dumps(r)}", flush=True)
    shm = getattr(parse_config(base).infer, "transport", "inline") == "shm"
    alone = transport_alone(side, shm)
    print(f"  transport alone: {json.dumps(alone)}", flush=True)
    half = loads["50%"]
    ratios = {
        "throughput_vs_bare": round(top / bare["parts_per_s"], 3) if bare["parts_per_s"] else None,
        "throughput_vs_bare_with_failsafe": round(top * sum(bare["with_failsafe_ms"].values()) / 1000, 3),
        "p99_at_50pct_vs_bound": round(half.get("latency_ms_p99", float("nan")) / (2 * bare["single_frame_ms"] + 5), 3),
        "transport_share_of_interval_at_max": round(  # in the line: sent -> received, p50 at 50 % load
            half.get("stage_ms_p50", {}).get("transport", float("nan")) * top / 1000, 4),
        "transport_alone_share_of_interval_at_max": round(alone["ms_per_frame"] * top / 1000, 4)
        if "ms_per_frame" in alone else None,
    }
    return {"side": side, "bare": bare, "max_sustained_per_s": round(top, 1), "probes": probes,
            "at_load": loads, "transport_alone": alone, "ratios": ratios}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024])
    ap.add_argument("--seconds", type=float, default=4.0, help="length of each rate probe")
    ap.add_argument("--latency-seconds", type=float, default=6.0, help="length of the 50 %% / 90 %% runs")
    ap.add_argument("--steps", type=int, default=3, help="bisection steps after the doubling")
    ap.add_argument("--start", type=float, default=50.0, help="first probe rate (parts/s)")
    ap.add_argument("--no-scaling", action="store_true", help="skip the 1/2-worker comparison")
    ap.add_argument("--streams", type=int, default=24, help="cameras in the many-streams run (0 = skip it)")
    ap.add_argument("--stream-fps", type=float, default=10.0, help="frame rate of each of those cameras")
    ap.add_argument("--frame-queue", type=int, help="infer.frame_queue: frames queued per worker (default: config)")
    ap.add_argument("--quick", action="store_true", help="256² only, short probes, two bisection steps")
    ap.add_argument("--out", type=Path, default=RESULTS)
    a = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwinds, so the running line is stopped too
    if a.quick:
        a.sizes, a.seconds, a.latency_seconds, a.steps = [256], 2.5, 4.0, 2
    if a.frame_queue:
        INFER_SETTINGS["frame_queue"] = a.frame_queue
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        sizes = [study_size(tmp, side, a) for side in a.sizes]
        scaling = {}
        if not a.no_scaling:
            side = a.sizes[0]
            one = next(s["max_sustained_per_s"] for s in sizes if s["side"] == side)
            cores = sorted(os.sched_getaffinity(0))
            for label, workers, cpus in (("2 workers", 2, []), ("2 workers pinned", 2, cores[:2])):
                top, _ = max_rate(tmp, side, a.seconds, a.steps, max(a.start, one), workers, cpus)
                scaling[label] = round(top, 1)
            scaling = {"side": side, "1 worker": one, **scaling}
        streams = {}
        if a.streams:
            r = run_line(tmp, a.sizes[0], a.stream_fps, a.latency_seconds, cameras=a.streams)
            streams = {"streams": a.streams, "fps_each": a.stream_fps, "side": a.sizes[0], **r,
                       "silently_dropped_share": round(r["missing"] / r["frames"], 4),
                       "not_inspected_share": round(r["not_inspected"] / r["frames"], 4)}
            print(f"{a.streams} streams x {a.stream_fps:g} fps: {json.dumps(streams)}", flush=True)
    result: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "loadavg_before_after": None}, "anchors": ANCHORS,
        "sizes": sizes, "scaling": scaling, "streams": streams, "seconds": round(time.monotonic() - t0),
        "goals": {"throughput_vs_bare": ">= 0.85", "p99_at_50pct_vs_bound": "<= 1 (bound: 2 x bare single + 5 ms)",
                  "transport_share_of_interval_at_max": "< 0.05"},
    }
    result["machine"]["loadavg_before_after"] = [LOAD_BEFORE, Path("/proc/loadavg").read_text().split()[:3]]
    result["command"] = " ".join(["benchmarks/pipeline.py", *sys.argv[1:]])
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    print(table(result))
    print(f"written to {a.out}")
    return 0


def table(r: dict[str, Any]) -> str:
    """The run's figures as benchmarks/RESULTS.md shows them (tests/test_docs.py checks RESULTS.md against
    benchmarks/results/pipeline.json through this function)."""

    def p(run: dict[str, Any]) -> str:
        return f"{run['latency_ms_p50']} / {run['latency_ms_p99']} / {run['latency_ms_p999']}"

    lines = ["| frame | bare session parts/s (1 frame ms) | line max parts/s, 0 drops (x bare; x bare + fail-safe) "
             "| p50 / p99 / p99.9 ms at 50 % (p99 bound: ratio) | p50 / p99 / p99.9 ms at 90 % "
             "| transport alone ms (share of interval at max) | not inspected / silently lost at 50 % and 90 % |",
             "|---|---|---|---|---|---|---|"]
    for s in r["sizes"]:
        half, most, bare, ratios = s["at_load"]["50%"], s["at_load"]["90%"], s["bare"], s["ratios"]
        bound = 2 * bare["single_frame_ms"] + 5
        lines.append(
            f"| {s['side']}² Mono8 | {bare['parts_per_s']:.0f} ({bare['single_frame_ms']:.2f}) "
            f"| {s['max_sustained_per_s']:.0f} ({ratios['throughput_vs_bare']:.2f}x; "
            f"{ratios['throughput_vs_bare_with_failsafe']:.2f}x) "
            f"| {p(half)} ({bound:.2f}: {ratios['p99_at_50pct_vs_bound']:.2f}x) | {p(most)} "
            f"| {s['transport_alone']['ms_per_frame']:.3f} "
            f"({100 * ratios['transport_alone_share_of_interval_at_max']:.1f} %) "
            f"| {half['not_inspected'] + most['not_inspected']} / {half['missing'] + most['missing']} |")
    lines += ["", "The worker's work per frame, one frame at a time (ms), against the bare session at its best batch:",
              "", "| frame | input rules | model | decision | bare session, best batch (ms a frame) |",
              "|---|---|---|---|---|"]
    for s in r["sizes"]:
        work, best = s["bare"]["with_failsafe_ms"], s["bare"]["best_batch"]
        batch_ms = {str(k): v for k, v in s["bare"]["batch_ms"].items()}  # int keys until written as JSON
        per_frame = batch_ms[str(best)] / best
        lines.append(f"| {s['side']}² | {work['input_rules']} | {work['model']} | {work['decision']} "
                     f"| {per_frame:.3f} (batch {best}) |")
    lines += ["", "Stage medians at 50 % load (ms); they add up to the capture → commit p50:", "",
              f"| frame | {' | '.join(STAGES)} | latency p50 |", "|---" * (len(STAGES) + 2) + "|"]
    for s in r["sizes"]:
        half = s["at_load"]["50%"]
        lines.append(f"| {s['side']}² | {' | '.join(str(half['stage_ms_p50'][k]) for k in STAGES)} "
                     f"| {half['latency_ms_p50']} |")
    if r.get("scaling"):
        sc = r["scaling"]
        lines += ["", f"Scaling at {sc['side']}² (line max parts/s, 0 drops): 1 worker {sc['1 worker']:.0f}, "
                  f"2 workers {sc['2 workers']:.0f}, 2 workers pinned to cores {sc['2 workers pinned']:.0f}."]
    if r.get("streams"):
        st, a = r["streams"], r["anchors"]
        lines += ["", f"{st['streams']} cameras x {st['fps_each']:g} fps at {st['side']}²: {st['frames']} frames, "
                  f"{st['not_inspected']} not inspected, {st['missing']} silently lost; capture → commit p50 / p99 / "
                  f"p99.9 {p(st)} ms. Reference ({a['source']}): p50 / p99 {a['p50_ms_at_10fps']} / "
                  f"{a['p99_ms_at_10fps']} ms at 10 fps, {a['p50_ms_unthrottled']} ms p50 unthrottled, "
                  f"{100 * a['silently_dropped_at_24_streams_x_10fps']:.0f} % of frames silently dropped at "
                  "24 streams x 10 fps."]
    return "\n".join(lines)


LOAD_BEFORE = Path("/proc/loadavg").read_text().split()[:3]

if __name__ == "__main__":
    raise SystemExit(main())
