"""Soak: the default line for a long run; does any process keep growing?

Runs `linewatch run` on its embedded default (one emulated 256² camera at 20 frames/s, one worker,
record, api, plc) with only the data directory and the ports moved, samples the resident memory (RSS)
of every process of the tree every `--every` seconds, and reports per process the growth after
warm-up as % of its RSS per hour (least-squares slope over the samples after `--warmup` minutes,
over the RSS at the end of warm-up; goal < 5 %/h), plus the store's and the image archive's growth
per hour and the parts recorded.

    python benchmarks/soak.py --minutes 30 --out benchmarks/results/soak.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import yaml

REPO = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tree_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def _file_size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else 0


def _processes(run_dir: Path) -> dict[str, int]:
    """name -> pid of every child of the line, from its ready files."""
    out = {}
    for f in (run_dir / "ready").glob("[!.]*"):
        try:
            info = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        out[info["name"]] = int(info["pid"])
    return out


def _rows(data_dir: Path) -> int:
    try:
        conn = sqlite3.connect(f"file:{data_dir / 'linewatch.db'}?mode=ro", uri=True, timeout=5)
        try:
            return int(conn.execute("SELECT count(*) FROM inspections").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error:
        return 0


def _growth_pct_per_hour(t_s: list[float], rss: list[float]) -> float:
    slope = float(np.polyfit(np.asarray(t_s), np.asarray(rss), 1)[0])  # bytes per second
    return round(slope * 3600 / rss[0] * 100, 2)


def soak(minutes: float, warmup_min: float, every_s: float) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="linewatch-soak-"))
    data_dir = work / "data"
    cfg = {"data_dir": str(data_dir), "api": {"port": _free_port()}, "plc": {"port": _free_port()}}
    (work / "line.yaml").write_text(yaml.safe_dump(cfg))
    log = (work / "line.log").open("wb")
    line = subprocess.Popen([sys.executable, "-m", "linewatch", "run", "--config", str(work / "line.yaml")],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    samples: dict[str, list[tuple[float, int]]] = {}
    growth_at: list[tuple[float, int, int, int]] = []  # (t, db bytes, image bytes, rows) after warm-up
    pids: dict[str, int] = {}
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 120 and len(pids) < 5:
            if line.poll() is not None:
                raise SystemExit(f"the line exited early:\n{(work / 'line.log').read_text()}")
            pids = _processes(data_dir / "run")
            time.sleep(1)
        pids["supervisor"] = line.pid
        start = time.monotonic()
        while (now := time.monotonic()) - start < minutes * 60:
            if line.poll() is not None:
                raise SystemExit(f"the line exited:\n{(work / 'line.log').read_text()[-4000:]}")
            current = _processes(data_dir / "run") | {"supervisor": line.pid}
            for name, pid in current.items():
                if pids.get(name) != pid:  # a restarted child: its memory starts over
                    samples.pop(name, None)
                    pids[name] = pid
                try:
                    samples.setdefault(name, []).append((now - start, psutil.Process(pid).memory_info().rss))
                except psutil.NoSuchProcess:
                    continue
            if now - start >= warmup_min * 60:
                db = sum(_file_size(data_dir / name) for name in ("linewatch.db", "linewatch.db-wal"))
                growth_at.append((now - start, db, _tree_size(data_dir / "images"), _rows(data_dir)))
            time.sleep(every_s)
    finally:
        os.killpg(line.pid, signal.SIGTERM)
        try:
            line.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(line.pid, signal.SIGKILL)
        log.close()
    restarts = (work / "line.log").read_text().count("restarting")
    shutil.rmtree(work, ignore_errors=True)
    warm = warmup_min * 60
    rss_growth, rss_mb = {}, {}
    for name, points in sorted(samples.items()):
        after = [(t, r) for t, r in points if t >= warm]
        if len(after) < 3:
            continue
        rss_growth[name] = _growth_pct_per_hour([t for t, _ in after], [r for _, r in after])
        rss_mb[name] = {"after_warmup": round(after[0][1] / 2**20, 1), "end": round(after[-1][1] / 2**20, 1)}
    (t_a, db_a, img_a, rows_a), (t_b, db_b, img_b, rows_b) = growth_at[0], growth_at[-1]
    hours = (t_b - t_a) / 3600
    return {
        "minutes": minutes, "warmup_minutes": warmup_min, "sample_every_s": every_s,
        "rss_growth_pct_per_hour": rss_growth, "rss_mb": rss_mb,
        "db_growth_mb_per_hour": round((db_b - db_a) / 2**20 / hours, 2),
        "images_growth_mb_per_hour": round((img_b - img_a) / 2**20 / hours, 2),
        "parts_recorded_per_s": round((rows_b - rows_a) / (t_b - t_a), 2),
        "child_restarts": restarts,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "command": " ".join(["python", "benchmarks/soak.py", *sys.argv[1:]]),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--warmup", type=float, default=5.0, help="minutes left out of the growth figures")
    ap.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "soak.json")
    args = ap.parse_args()
    if args.warmup >= args.minutes:
        ap.error("--warmup must be shorter than --minutes")
    out = soak(args.minutes, args.warmup, args.every)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
