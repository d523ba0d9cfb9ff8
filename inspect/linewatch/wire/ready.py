"""Ready files: each serving child says so in the run directory; the supervisor, api and plc read them.

A ready file is the line's health contract between processes: written when a child serves, removed by
the supervisor when it dies, read by anyone who must know what runs (readiness, the PLC status word).
"""

from __future__ import annotations

import gc
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from linewatch.config import LineConfig

#: A child beats (touches its ready file) this often; one silent for STALE_S is down (stopped, hung, dead).
BEAT_S = 1.0
STALE_S = 5.0
HEARTBEAT_THREAD = "heartbeat"


def child_name(cfg: LineConfig, role: str, index: int) -> str:
    """The name a child has in logs, alarms, metrics and the ready folder."""
    if role == "acquire":
        return f"acquire[{cfg.cameras[index].name}]"
    return f"infer[{index}]" if role == "infer" else role


def line_children(cfg: LineConfig) -> list[tuple[str, int]]:
    """(role, index) of every child of the line, in start order: record first (the store must be
    listening), then the workers (model loaded and warm), api, plc, ship, notify, and acquire last."""
    return [("record", 0), *(("infer", i) for i in range(cfg.cpu_plan.workers)), ("api", 0),
            *([("plc", 0)] if cfg.plc.enabled else []), *([("ship", 0)] if cfg.ship.enabled else []),
            *([("notify", 0)] if cfg.notify.active else []),
            *(("acquire", i) for i in range(len(cfg.cameras)))]


def first_frame_waits_for(cfg: LineConfig) -> list[str]:
    """The children a camera's first frame waits for: every local worker (a line restarted mid-shift gets
    parts at full rate at once, and one worker short it falls behind and times parts out), the store that
    records them and the PLC that is told (its event subscription would miss a result published before it)."""
    return ["record", *(f"infer[{i}]" for i in range(cfg.cpu_plan.workers)), *(["plc"] if cfg.plc.enabled else [])]


def wait_until_ready(run_dir: Path, names: list[str], stop: threading.Event, timeout_s: float) -> list[str]:
    """Block until every named child is serving (or `stop`, or the timeout); the names still not serving."""
    end = time.monotonic() + timeout_s
    missing = [n for n in names if not (ready_dir(run_dir) / n).exists()]
    while missing and time.monotonic() < end and not stop.wait(0.01):
        missing = [n for n in missing if not (ready_dir(run_dir) / n).exists()]
    return missing


def ready_dir(run_dir: Path) -> Path:
    return run_dir / "ready"


def mark_ready(run_dir: Path, name: str, **info: Any) -> None:
    """Tell the supervisor (and the api) that this child is serving; `info` describes it. The file also
    carries what the child bootstrap set up, read back from this process (`bootstrap_facts`)."""
    d = ready_dir(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f".{name}.tmp"
    tmp.write_text(json.dumps({"name": name, **bootstrap_facts(), **info}))
    os.replace(tmp, d / name)


def bootstrap_facts() -> dict[str, Any]:
    """The state the child bootstrap (`linewatch.line.child`) leaves in a process, observed rather than
    declared: objects frozen out of the collector, OpenCV's thread count (None when OpenCV is not loaded),
    a live heartbeat thread. A child whose start path skipped the bootstrap shows it in its ready file."""
    cv2 = sys.modules.get("cv2")
    return {"pid": os.getpid(), "gc_frozen": gc.get_freeze_count(),
            "opencv_threads": cv2.getNumThreads() if cv2 is not None else None,
            "heartbeat": any(t.name == HEARTBEAT_THREAD and t.is_alive() for t in threading.enumerate())}


def read_ready(run_dir: Path) -> dict[str, dict[str, Any]]:
    """What each serving child wrote with `mark_ready`, by name (one being replaced right now is left out),
    with `beat_age_s`: seconds since its last heartbeat."""
    d = ready_dir(run_dir)
    infos: dict[str, dict[str, Any]] = {}
    now = time.time()
    for f in sorted(d.glob("[!.]*")) if d.is_dir() else []:
        try:
            infos[f.name] = {**json.loads(f.read_text()), "beat_age_s": max(0.0, now - f.stat().st_mtime)}
        except (OSError, ValueError):
            continue
    return infos


def down(run_dir: Path, expected: list[str]) -> list[str]:
    """The expected children that are not serving: no ready file, or no heartbeat for STALE_S."""
    infos = read_ready(run_dir)
    return [name for name in expected if name not in infos or infos[name]["beat_age_s"] > STALE_S]


def start_heartbeat(run_dir: Path, name: str, stop: threading.Event) -> threading.Thread:
    """Touch this child's ready file every BEAT_S once it exists: a stopped or dead process falls silent.
    (A thread, so a main loop stuck in a long call still beats; its own watchdogs cover that.)"""

    def beat() -> None:
        path = ready_dir(run_dir) / name
        while not stop.wait(BEAT_S):
            try:
                os.utime(path)
            except FileNotFoundError:
                continue  # not serving yet
            except OSError:
                continue  # e.g. a full disk: the beat comes back with room

    thread = threading.Thread(target=beat, name=HEARTBEAT_THREAD, daemon=True)
    thread.start()
    return thread
