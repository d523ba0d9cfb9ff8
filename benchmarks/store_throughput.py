"""Store throughput: sustained verdict rows/s through the real writer path (issue 6; goal >= 20,000 rows/s).

    .venv/bin/python benchmarks/store_throughput.py --rows 200000

Figures of one run, same machine:
  store    verdict_row + insert_verdicts in groups of record.commit_rows on a WAL file (record's commit path,
           with its checkpoint thread)
  +reader  the same while another process (like the api) exports the table over and over through its
           read-only connection: WAL readers never block the writer (on 2 cores they share the CPU)
  record   the whole record process (real process, ZeroMQ socket, SQLite file in WAL, group commits,
           deadline watch, one event per group commit) flooded by sender processes with pre-encoded verdicts
           as infer sends them under load (a `verdict_batch` per full batch of infer.max_batch; also
           reported with one verdict per message); rows/s = rows / (first send -> last event received),
           every row checked in the file afterwards; `--repeat` runs, the median reported, the goal
           checked on the slowest.
           `senders` gives the senders' own rate (they must not be the bottleneck) and `record_vs_store`
           the ratio to the storage path alone measured in the same run
  +announce the same with each verdict preceded by its announcement, as acquire sends them (the deadline
           watch tracks every frame: two messages per row)
  +images  with a 256x256 FAIL image on every 10th verdict (encoding off the loop)
  paced    record at a steady rate, capture-to-commit latency percentiles without and with a FAIL image
           on every 5th verdict: image encoding must not stall the commit loop
  png      CPU ms and kB per kept image: `store.images.png_bytes` (SUB filter, run-length deflate) against
           zlib level 1 with OpenCV's default filters, on 32 emulator frames (256² Mono8) and, with the
           `bench` extra installed, 32 ELPV cells (300² real EL images)
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import orjson
import psutil
import zmq

from linewatch.config import parse_config
from linewatch.line.supervisor import prepare_run_dir, resolve_paths
from linewatch.reports.export import Query, load
from linewatch.store.rows import verdict_row
from linewatch.store.schema import open_writer
from linewatch.store.writer import Checkpointer, insert_verdicts
from linewatch.wire import (
    KIND_ANNOUNCE,
    KIND_VERDICT,
    KIND_VERDICT_BATCH,
    KIND_VERDICTS,
    Endpoints,
    FrameHeader,
    Verdict,
    encode_frame,
    encode_verdict_batch,
    now_ns,
)


def _verdict(seq: int, final: str = "PASS", camera: str = "cam0") -> Verdict:
    t = now_ns()
    return Verdict(camera, "s1", seq, f"p{seq}", final, "model", reasons=[], recipe="default",  # type: ignore[arg-type]
                   model_hash="ab" * 32, model_name="reference", ruleset_hash="cd" * 32, label="good", score=0.03,
                   probs={"good": 0.97, "defect": 0.03}, t_capture_ns=t, t_sent_ns=t, t_received_ns=t, t_decided_ns=t,
                   timings_ms={"queue": 0.1, "preprocess": 0.2, "inference": 1.5, "failsafe": 0.01}, worker="infer0",
                   truth={"label": "good", "type": None})


def _reader(data_dir: Path, stop: Any, reads: Any) -> None:
    while not stop.is_set():
        n = len(load(data_dir, Query(0, 2**62)).rows)
        with reads.get_lock():
            reads.value += n


def store_path(rows: int, group: int, with_reader: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        db = open_writer(Path(tmp))
        checkpoints = threading.Event()
        checkpointer = Checkpointer(Path(tmp), checkpoints)  # as record runs it
        checkpointer.start()
        stop, reads = multiprocessing.Event(), multiprocessing.Value("q", 0)
        t = multiprocessing.Process(target=_reader, args=(Path(tmp), stop, reads))
        if with_reader:
            insert_verdicts(db, [verdict_row(_verdict(-i - 1), now_ns(), "LOT-1", "early") for i in range(1000)])
            t.start()
        t0, cpu0, commit_ms = time.perf_counter(), time.process_time(), []
        for start in range(0, rows, group):
            seqs = range(start, min(rows, start + group))
            batch = [verdict_row(_verdict(s), now_ns(), "LOT-1", "early") for s in seqs]
            tc = time.perf_counter()
            insert_verdicts(db, batch)
            commit_ms.append((time.perf_counter() - tc) * 1e3)
        dt, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        stop.set()
        checkpoints.set()
        checkpointer.join()
        if with_reader:
            t.join()
        db.close()
    return {"rows": rows, "seconds": round(dt, 3), "rows_per_s": round(rows / dt),
            "cpu_us_per_row": round(cpu / rows * 1e6, 1), "rows_read_meanwhile": reads.value,
            "group_commit_ms_p50": round(float(np.percentile(commit_ms, 50)), 2),
            "group_commit_ms_p99": round(float(np.percentile(commit_ms, 99)), 2)}


def _message(seq: int, image_every: int, pixels: np.ndarray, camera: str = "cam0") -> list[Any]:
    if image_every and seq % image_every == 0:
        h = FrameHeader(camera, "s1", seq, f"p{seq}", now_ns(), now_ns(), 256, 256, 1, "uint8", "Mono8")
        return [KIND_VERDICT, _verdict(seq, "FAIL", camera).to_bytes(), *encode_frame(h, pixels)]
    return [KIND_VERDICT, _verdict(seq, camera=camera).to_bytes()]


def _sender(address: str, camera: str, rows: int, image_every: int, announce: bool, per_message: int, start: Any,
            out: Any) -> None:
    """One sender process: encode every message first, then push them as fast as ZeroMQ takes them.
    `per_message` > 1: imageless verdicts go `per_message` to a `verdict_batch`, as infer sends a full batch."""
    pixels = np.random.default_rng(0).integers(0, 256, (256, 256), dtype=np.uint8)
    messages: list[list[Any]] = []
    plain: list[Verdict] = []
    for seq in range(rows):
        if announce:
            h = FrameHeader(camera, "s1", seq, f"p{seq}", now_ns(), now_ns(), 256, 256, 1, "uint8", "Mono8")
            messages.append([KIND_ANNOUNCE, h.to_bytes()])
        if per_message > 1 and not (image_every and seq % image_every == 0):
            plain.append(_verdict(seq, camera=camera))
            if len(plain) == per_message:
                messages.append([KIND_VERDICT_BATCH, encode_verdict_batch(plain)])
                plain = []
        else:
            messages.append(_message(seq, image_every, pixels, camera))
    if plain:
        messages.append([KIND_VERDICT_BATCH, encode_verdict_batch(plain)])
    ctx: zmq.Context[Any] = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.SNDHWM, 0)
    push.connect(address)
    out.put(("ready", 0, 0.0))
    start.wait()
    t0 = time.perf_counter()
    for m in messages:
        push.send_multipart(m)
    out.put(("sent", len(messages), time.perf_counter() - t0))
    push.close(linger=-1)  # stay until ZeroMQ has handed over every message
    ctx.term()


def _rows_in(event: list[bytes]) -> int:
    """Rows acknowledged by one `verdicts` event (one per group commit)."""
    return len(orjson.loads(event[1])["rows"])


def _thread_cpu(process: psutil.Process, tid: int) -> float:
    return sum(t.user_time + t.system_time for t in process.threads() if t.id == tid)


def record_process(rows: int, image_every: int, rate: float = 0.0, senders: int = 1,
                   announce: bool = False, per_message: int = 1) -> dict[str, Any]:
    """Flood (rate 0: sender processes push pre-encoded messages, rows/s) or paced at `rate` (latency
    percentiles, sent from this process)."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = resolve_paths(parse_config({"data_dir": tmp, "record": {"deadline_ms": 600_000}}))
        prepare_run_dir(cfg)
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(cfg.run_dir / "metrics")}
        proc = subprocess.Popen([sys.executable, "-m", "linewatch", "child", "record", "0", "--run-dir",
                                 str(cfg.run_dir)], env=env, stderr=subprocess.DEVNULL)
        while not (cfg.run_dir / "ready" / "record").exists():
            time.sleep(0.05)
        ctx: zmq.Context[Any] = zmq.Context()
        ep = Endpoints(cfg.run_dir)
        push, sub = ctx.socket(zmq.PUSH), ctx.socket(zmq.SUB)
        push.setsockopt(zmq.SNDHWM, 0)
        sub.setsockopt(zmq.RCVHWM, 0)
        sub.subscribe(KIND_VERDICTS)
        push.connect(ep.record)
        sub.connect(ep.events)
        time.sleep(0.3)
        pixels = np.random.default_rng(0).integers(0, 256, (256, 256), dtype=np.uint8)
        got, sent, procs = 0, [], []
        start, reports = multiprocessing.Event(), multiprocessing.Queue()  # type: ignore[var-annotated]
        if not rate:  # senders first encode everything, then all start together
            procs = [multiprocessing.Process(target=_sender, args=(
                ep.record, f"cam{i}", rows // senders, image_every, announce, per_message, start, reports))
                for i in range(senders)]
            for p in procs:
                p.start()
            for _ in procs:
                reports.get(timeout=600)
            rows = rows // senders * senders
        cpu = psutil.Process(proc.pid)
        cpu0 = sum(cpu.cpu_times()[:2])  # record's own CPU time (all its threads), not the machine's load
        main0 = _thread_cpu(cpu, proc.pid)
        t0 = time.perf_counter()
        if rate:
            for seq in range(rows):
                while time.perf_counter() < t0 + seq / rate:
                    if sub.poll(0):
                        got += _rows_in(sub.recv_multipart())
                    else:
                        time.sleep(0.0002)
                push.send_multipart(_message(seq, image_every, pixels))
        else:
            start.set()
        while got < rows and sub.poll(10_000):
            got += _rows_in(sub.recv_multipart())
        dt = time.perf_counter() - t0
        cpu_s = sum(cpu.cpu_times()[:2]) - cpu0
        main_cpu_s = _thread_cpu(cpu, proc.pid) - main0
        sent = [reports.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(30)
        proc.terminate()
        proc.wait(30)
        push.close(0)
        sub.close(0)
        ctx.term()
        images = sum(1 for _ in (Path(tmp) / "images").rglob("*.png"))
        conn = sqlite3.connect(Path(tmp) / "linewatch.db")
        lat = np.array([r[0] for r in conn.execute("SELECT latency_ms FROM inspections")])
        record_ms = np.array([r[0] for r in conn.execute(
            "SELECT (c.t_committed_ns - i.t_decided_ns) / 1e6 FROM inspections i "
            "JOIN commits c ON c.id = i.commit_id")])
        event_ms, per_commit = conn.execute("SELECT avg((t_published_ns - t_committed_ns) / 1e6), avg(rows) "
                                            "FROM commits").fetchone()
        conn.close()
    out = {"rows": rows, "committed": got, "rows_in_file": len(lat), "seconds": round(dt, 3),
           "rows_per_s": round(got / dt), "cpu_us_per_row": round(cpu_s / max(got, 1) * 1e6, 1),
           "main_thread_cpu_us_per_row": round(main_cpu_s / max(got, 1) * 1e6, 1),
           "image_every": image_every, "images_written": images, "verdicts_per_message": per_message}
    out |= {"rows_with_commit": len(record_ms), "rows_per_commit_mean": round(per_commit, 1),
            "event_stage_ms_per_commit_mean": round(event_ms, 3)}  # commit -> the group's event sent
    if not rate:  # (the record stage of a flood is mostly the time the pre-encoded verdicts waited in the queue)
        n_msgs, send_s = sum(n for _, n, _ in sent), max(s for _, _, s in sent)
        out |= {"senders": senders, "messages": n_msgs, "senders_msgs_per_s": round(n_msgs / send_s),
                "senders_vs_record": round(n_msgs / send_s / (got / dt), 1)}
    if rate:
        out |= {"rate": rate, "latency_ms_p50": round(float(np.percentile(lat, 50)), 2),
                "latency_ms_p99": round(float(np.percentile(lat, 99)), 2), "latency_ms_max": round(float(lat.max()), 2),
                "record_stage_ms_p50": round(float(np.percentile(record_ms, 50)), 2),
                "record_stage_ms_p99": round(float(np.percentile(record_ms, 99)), 2)}
    return out


def kept_png() -> dict[str, Any]:
    """Encoding cost and size of a kept image, the line's settings against plain zlib level 1."""
    from linewatch.emulator.parts import PartEmulator
    from linewatch.store.images import PNG_FAST

    sets = {"emulator_256": [PartEmulator(256, 256, seed=5, defect_rate=0.2).render(i).pixels for i in range(32)]}
    try:
        import elpv_dataset

        cells = sorted(Path(elpv_dataset.__file__).parent.rglob("*.png"))[:32]
        sets["elpv_300"] = [cv2.imread(str(f), cv2.IMREAD_UNCHANGED) for f in cells]
    except ImportError:
        pass
    out: dict[str, Any] = {}
    for name, frames in sets.items():
        for setting, params in (("line", PNG_FAST), ("zlib1_default_filters", [cv2.IMWRITE_PNG_COMPRESSION, 1])):
            t0, size = time.process_time(), 0
            for _ in range(5):
                size = sum(len(cv2.imencode(".png", f, params)[1]) for f in frames)
            out[f"{name}/{setting}"] = {"ms": round((time.process_time() - t0) * 1e3 / (5 * len(frames)), 3),
                                        "kB": round(size / len(frames) / 1e3, 1)}
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--group", type=int, default=200, help="rows per commit (record.commit_rows)")
    ap.add_argument("--paced-rate", type=int, default=500, help="verdicts/s of the paced latency runs (10 s each)")
    ap.add_argument("--senders", type=int, default=1, help="sender processes of the flood runs (one camera each)")
    ap.add_argument("--repeat", type=int, default=3, help="flood runs of the headline figure (median reported)")
    args = ap.parse_args()
    store = store_path(args.rows, args.group, with_reader=False)
    batch = parse_config({}).infer.max_batch
    runs = [record_process(args.rows, 0, senders=args.senders, per_message=batch) for _ in range(args.repeat)]
    record = sorted(runs, key=lambda r: r["rows_per_s"])[len(runs) // 2]  # the median run
    singles = [record_process(args.rows, 0, senders=args.senders) for _ in range(args.repeat)]
    out = {
        "store": store,
        "record": record,
        "record_rows_per_s_runs": [r["rows_per_s"] for r in runs],
        "record_vs_store": round(record["rows_per_s"] / store["rows_per_s"], 3),
        "record_vs_store_cpu": round(store["cpu_us_per_row"] / record["cpu_us_per_row"], 3),
        "record_goal_20000_met": min(r["rows_per_s"] for r in runs) >= 20_000,
        "record_one_verdict_per_message_rows_per_s_runs": [r["rows_per_s"] for r in singles],
        "record+announce": record_process(args.rows // 2, 0, senders=args.senders, announce=True, per_message=batch),
        "store+reader": store_path(args.rows, args.group, with_reader=True),
        "record+images": record_process(args.rows // 2, 10, senders=args.senders, per_message=batch),
        "paced": record_process(args.paced_rate * 10, 0, args.paced_rate),
        "paced+images": record_process(args.paced_rate * 10, 5, args.paced_rate),
        "png": kept_png(),
    }
    out["loadavg"] = Path("/proc/loadavg").read_text().split()[:3]
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
