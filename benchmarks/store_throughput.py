"""Store throughput: sustained verdict rows/s through the real writer path (issue 6; goal >= 20,000 rows/s).

    .venv/bin/python benchmarks/store_throughput.py --rows 200000

Three figures, one run, same machine:
  store    verdict_row + insert_verdicts in groups of record.commit_rows on a WAL file (record's commit path)
  +reader  the same while another process (like the api) exports the table over and over through its
           read-only connection: WAL readers never block the writer (on 2 cores they share the CPU)
  record   a real record process fed over its ZeroMQ socket: decode, buffer, group commit, publish;
           once without images, once with a 256x256 FAIL image on every 10th verdict (encoding off the loop)
  paced    record at a steady rate, capture-to-commit latency percentiles without and with a FAIL image
           on every 5th verdict: image encoding must not stall the commit loop
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
import time
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from linewatch.config import parse_config
from linewatch.messages import KIND_VERDICT, Endpoints, FrameHeader, Verdict, encode_frame, now_ns
from linewatch.report import Query, load
from linewatch.store import insert_verdicts, open_writer, verdict_row
from linewatch.supervisor import prepare_run_dir, resolve_paths


def _verdict(seq: int, final: str = "PASS") -> Verdict:
    t = now_ns()
    return Verdict("cam0", "s1", seq, f"p{seq}", final, "model", reasons=[], recipe="default",  # type: ignore[arg-type]
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
        stop, reads = multiprocessing.Event(), multiprocessing.Value("q", 0)
        t = multiprocessing.Process(target=_reader, args=(Path(tmp), stop, reads))
        if with_reader:
            insert_verdicts(db, [verdict_row(_verdict(-i - 1), now_ns(), "LOT-1", "early") for i in range(1000)])
            t.start()
        t0, commit_ms = time.perf_counter(), []
        for start in range(0, rows, group):
            seqs = range(start, min(rows, start + group))
            batch = [verdict_row(_verdict(s), now_ns(), "LOT-1", "early") for s in seqs]
            tc = time.perf_counter()
            insert_verdicts(db, batch)
            commit_ms.append((time.perf_counter() - tc) * 1e3)
        dt = time.perf_counter() - t0
        stop.set()
        if with_reader:
            t.join()
        db.close()
    return {"rows": rows, "seconds": round(dt, 3), "rows_per_s": round(rows / dt), "rows_read_meanwhile": reads.value,
            "group_commit_ms_p50": round(float(np.percentile(commit_ms, 50)), 2),
            "group_commit_ms_p99": round(float(np.percentile(commit_ms, 99)), 2)}


def _message(seq: int, image_every: int, pixels: np.ndarray) -> list[Any]:
    if image_every and seq % image_every == 0:
        h = FrameHeader("cam0", "s1", seq, f"p{seq}", now_ns(), now_ns(), 256, 256, 1, "uint8", "Mono8")
        return [KIND_VERDICT, _verdict(seq, "FAIL").to_bytes(), *encode_frame(h, pixels)]
    return [KIND_VERDICT, _verdict(seq).to_bytes()]


def record_process(rows: int, image_every: int, rate: float = 0.0) -> dict[str, Any]:
    """Flood (rate 0: every message queued up front, rows/s) or paced at `rate` (latency percentiles)."""
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
        sub.subscribe(b"verdict")
        push.connect(ep.record)
        sub.connect(ep.events)
        time.sleep(0.3)
        pixels = np.random.default_rng(0).integers(0, 256, (256, 256), dtype=np.uint8)
        got = 0
        if rate:
            t0 = time.perf_counter()
            for seq in range(rows):
                while time.perf_counter() < t0 + seq / rate:
                    if sub.poll(0):
                        sub.recv_multipart()
                        got += 1
                    else:
                        time.sleep(0.0002)
                push.send_multipart(_message(seq, image_every, pixels))
        else:
            messages = [_message(seq, image_every, pixels) for seq in range(rows)]
            t0 = time.perf_counter()
            for m in messages:
                push.send_multipart(m)
        while got < rows and sub.poll(10_000):
            sub.recv_multipart()
            got += 1
        dt = time.perf_counter() - t0
        proc.terminate()
        proc.wait(30)
        push.close(0)
        sub.close(0)
        ctx.term()
        images = sum(1 for _ in (Path(tmp) / "images").rglob("*.png"))
        conn = sqlite3.connect(Path(tmp) / "linewatch.db")
        lat = np.array([r[0] for r in conn.execute("SELECT latency_ms FROM inspections")])
        conn.close()
    out = {"rows": rows, "committed": got, "seconds": round(dt, 3), "rows_per_s": round(got / dt),
           "image_every": image_every, "images_written": images}
    if rate:
        out |= {"rate": rate, "latency_ms_p50": round(float(np.percentile(lat, 50)), 2),
                "latency_ms_p99": round(float(np.percentile(lat, 99)), 2), "latency_ms_max": round(float(lat.max()), 2)}
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--group", type=int, default=200, help="rows per commit (record.commit_rows)")
    ap.add_argument("--paced-rate", type=int, default=500, help="verdicts/s of the paced latency runs (10 s each)")
    args = ap.parse_args()
    out = {
        "store": store_path(args.rows, args.group, with_reader=False),
        "store+reader": store_path(args.rows, args.group, with_reader=True),
        "record": record_process(args.rows // 2, 0),
        "record+images": record_process(args.rows // 2, 10),
        "paced": record_process(args.paced_rate * 10, 0, args.paced_rate),
        "paced+images": record_process(args.paced_rate * 10, 5, args.paced_rate),
    }
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
