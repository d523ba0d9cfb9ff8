"""The HMI's cost in the browser at a fast line: Debian's chromium on the run screen of a line at 50 parts/s.

    .venv/bin/python benchmarks/hmi.py [--fps 50] [--seconds 30]

Measures, over the same window, the page's main-thread busy time (Chrome DevTools Performance metrics:
TaskDuration, ScriptDuration, LayoutDuration, RecalcStyleDuration) as a share of one core, the parts
the line decided per second, and whether the page kept up: how many parts its list of recent parts is
behind the newest row in the store when the window ends (the verdict tile holds a reject on purpose,
so it is not the measure). Writes benchmarks/results/hmi.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from playwright.sync_api import sync_playwright

OUT = Path(__file__).parent / "results" / "hmi.json"
METRICS = ("TaskDuration", "ScriptDuration", "LayoutDuration", "RecalcStyleDuration")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rows(db: Path) -> int:
    try:
        return int(sqlite3.connect(f"file:{db}?mode=ro", uri=True).execute("SELECT count(*) FROM inspections")
                   .fetchone()[0])
    except sqlite3.OperationalError:
        return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fps", type=float, default=50)
    ap.add_argument("--seconds", type=float, default=30)
    args = ap.parse_args()
    port, plc = _free_port(), _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        cfg = {"data_dir": str(data), "api": {"port": port}, "plc": {"port": plc},
               "cameras": [{"name": "cam0", "fps": args.fps}]}
        (Path(tmp) / "line.yaml").write_text(yaml.safe_dump(cfg))
        proc = subprocess.Popen([sys.executable, "-m", "linewatch", "run", "--config", str(Path(tmp) / "line.yaml")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            deadline = time.monotonic() + 120
            while _rows(data / "linewatch.db") < 50 and time.monotonic() < deadline:
                time.sleep(0.5)
            result = _measure(f"http://127.0.0.1:{port}", data / "linewatch.db", args.seconds)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
    result.update(fps_asked=args.fps, load_1min=os.getloadavg()[0], cores=os.cpu_count(),
                  command=f"benchmarks/hmi.py --fps {args.fps:g} --seconds {args.seconds:g}")
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


def _measure(url: str, db: Path, seconds: float) -> dict[str, object]:
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(url + "/#run")
        page.wait_for_function("document.body.dataset.ready === '1'", timeout=30_000)
        page.wait_for_timeout(3000)  # past the first loads
        cdp = page.context.new_cdp_session(page)
        cdp.send("Performance.enable")

        def metrics() -> dict[str, float]:
            return {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}

        m0, n0, t0 = metrics(), _rows(db), time.monotonic()
        page.wait_for_timeout(seconds * 1000)
        m1, n1, t1 = metrics(), _rows(db), time.monotonic()
        newest = sqlite3.connect(f"file:{db}?mode=ro", uri=True).execute(
            "SELECT max(seq) FROM inspections").fetchone()[0]
        shown = page.locator("#recent tr:first-child td:nth-child(2)").text_content() or ""
        browser.close()
    wall = t1 - t0
    busy = {k: (m1.get(k, 0.0) - m0.get(k, 0.0)) / wall for k in METRICS}
    shown_seq = int(shown) if shown.isdigit() else None
    return {
        "parts_per_s": round((n1 - n0) / wall, 1), "window_s": round(wall, 1),
        "page_main_thread_share_of_a_core": round(busy["TaskDuration"], 4),
        "page_script_share": round(busy["ScriptDuration"], 4), "page_layout_share": round(busy["LayoutDuration"], 4),
        "page_style_share": round(busy["RecalcStyleDuration"], 4),
        "recent_list_behind_newest_parts": None if shown_seq is None else int(newest) - shown_seq,
    }


if __name__ == "__main__":
    raise SystemExit(main())
