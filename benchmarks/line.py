"""Whole-line smoke benchmark: run the default line at a set part rate and report from the store.

    .venv/bin/python benchmarks/line.py --fps 100 --frames 1000

Prints parts decided, drops, and capture-to-record latency percentiles, read back from SQLite.
(The full speed study — bare session vs pipeline, transport, scaling — is benchmarks/pipeline.py.)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fps", type=float, default=100)
    ap.add_argument("--frames", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--providers", default="auto", help="model.providers: auto, cpu, cuda or tensorrt")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        cfg = {"data_dir": str(data), "api": {"port": 0},
               "cameras": [{"name": "cam0", "fps": args.fps, "max_frames": args.frames}],
               "infer": {"workers": args.workers}, "model": {"providers": args.providers}}
        (Path(tmp) / "line.yaml").write_text(yaml.safe_dump(cfg))
        proc = subprocess.Popen([sys.executable, "-m", "linewatch", "run", "--config", str(Path(tmp) / "line.yaml")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        db = data / "linewatch.db"
        t_end = time.monotonic() + 60 + 3 * args.frames / args.fps
        n = 0
        while time.monotonic() < t_end and n < args.frames:
            time.sleep(0.5)
            if db.exists():
                with contextlib.suppress(sqlite3.OperationalError):  # not created yet
                    n = sqlite3.connect(f"file:{db}?mode=ro", uri=True).execute(
                        "SELECT count(*) FROM inspections").fetchone()[0]
        ready = data / "run" / "ready" / "infer[0]"  # what the worker really runs on (process.mark_ready)
        providers_running = json.loads(ready.read_text()).get("providers") if ready.exists() else None
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        conn = sqlite3.connect(db)
        rows = conn.execute("SELECT decided_by, latency_ms, inference_ms, t_capture_ns FROM inspections").fetchall()
    lat = np.array([r[1] for r in rows if r[1] is not None])
    span_s = (max(r[3] for r in rows) - min(r[3] for r in rows)) / 1e9
    result = {
        "fps_asked": args.fps, "frames": len(rows), "workers": args.workers, "providers": args.providers,
        "providers_running": providers_running,
        "parts_per_s": round((len(rows) - 1) / span_s, 1) if span_s else None,
        "not_inspected": sum(r[0] in ("not_inspected", "timeout") for r in rows),
        "latency_ms_p50": round(float(np.percentile(lat, 50)), 2),
        "latency_ms_p99": round(float(np.percentile(lat, 99)), 2),
        "inference_ms_p50": round(float(np.median([r[2] for r in rows if r[2] is not None])), 3),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
