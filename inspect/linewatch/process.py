"""What every child process shares: logging, signals, the stop event, the alarm channel.

A child is built from `(config, index, stop_event)` and its `run()` opens its own resources; it
returns when the stop event is set (SIGTERM/SIGINT). The supervisor starts children as
`python -m linewatch child ROLE INDEX` so each is a real, separately killable process.
"""

from __future__ import annotations

import gc
import importlib
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Protocol

import cv2
import zmq

from linewatch.config import LineConfig, from_json
from linewatch.messages import KIND_ALARM, Alarm, Endpoints

ROLES = {
    "record": "linewatch.record:Record",
    "infer": "linewatch.infer:Infer",
    "acquire": "linewatch.acquire:Acquire",
    "api": "linewatch.api:Api",
    "plc": "linewatch.plc:Plc",
}


class Child(Protocol):
    def run(self) -> None: ...


def child_name(cfg: LineConfig, role: str, index: int) -> str:
    """The name a child has in logs, alarms, metrics and the ready folder."""
    if role == "acquire":
        return f"acquire[{cfg.cameras[index].name}]"
    return f"infer[{index}]" if role == "infer" else role


def setup_logging(tag: str) -> None:
    level = os.environ.get("LINEWATCH_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(level=level, format=f"%(asctime)s %(levelname)-7s [{tag}] %(name)s: %(message)s",
                        stream=sys.stderr, force=True)


class AlarmSender:
    """Pushes alarms to record (the single writer); never blocks the caller."""

    def __init__(self, ctx: zmq.Context[Any], endpoints: Endpoints, source: str):
        self.source = source
        self.sock = ctx.socket(zmq.PUSH)
        self.sock.setsockopt(zmq.SNDHWM, 1000)
        self.sock.setsockopt(zmq.LINGER, 500)
        self.sock.connect(endpoints.record)

    def raise_alarm(self, kind: str, message: str, severity: str = "warning") -> None:
        from linewatch import metrics

        logging.getLogger(self.source).warning("ALARM %s: %s", kind, message)
        metrics.ALARMS.labels(kind).inc()
        alarm = Alarm(source=self.source, kind=kind, message=message, severity=severity)  # type: ignore[arg-type]
        try:
            self.sock.send_multipart([KIND_ALARM, alarm.to_bytes()], flags=zmq.NOBLOCK)
        except zmq.Again:
            logging.getLogger(self.source).error("alarm queue full, alarm only logged: %s", message)

    def close(self) -> None:
        self.sock.close()


def config_path(run_dir: Path) -> Path:
    return run_dir / "config.json"


def child_main(role: str, index: int, run_dir: Path) -> int:
    """Entry point of one child process."""
    setup_logging(role)
    try:
        cfg: LineConfig = from_json(config_path(run_dir).read_text())
    except (OSError, ValueError) as exc:
        logging.getLogger(role).error("cannot read the line config in %s: %s", run_dir, exc)
        return 2
    tag = child_name(cfg, role, index)
    setup_logging(tag)
    stop = threading.Event()

    def _on_signal(signum: int, _frame: Any) -> None:
        logging.getLogger(tag).info("%s received, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    single_threaded_opencv()
    module_name, cls_name = ROLES[role].split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    child: Child = cls(cfg, index, stop)
    freeze_startup_objects()
    child.run()
    return 0


def single_threaded_opencv() -> None:
    """OpenCV's worker pool spins after each call: on per-frame images that doubled the fail-safe's CPU
    (0.63-0.77 against 1.27-1.41 ms a frame at 200 frames/s, measured) and took it from the other
    processes. The line's parallelism is its processes, so every child runs OpenCV on one thread."""
    cv2.setNumThreads(0)


def freeze_startup_objects() -> None:
    """Move what the imports and the setup allocated (~75k objects in a worker) out of the garbage
    collector's reach: a full collection over them stalled a process for 15-30 ms (measured), long enough
    to overflow a worker's frame queue at a few hundred parts/s. Later objects are collected as usual.
    Frozen objects are still freed by reference counting, but a cycle among them never is: so a child's
    constructor stays light, and whatever is replaced while running (models, sockets) is made in `run()`."""
    gc.collect()
    gc.freeze()


def ready_dir(run_dir: Path) -> Path:
    return run_dir / "ready"


def mark_ready(run_dir: Path, name: str, **info: Any) -> None:
    """Tell the supervisor (and the api) that this child is serving; `info` describes it."""
    d = ready_dir(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f".{name}.tmp"
    tmp.write_text(json.dumps({"name": name, "pid": os.getpid(), **info}))
    os.replace(tmp, d / name)


def read_ready(run_dir: Path) -> dict[str, dict[str, Any]]:
    """What each serving child wrote with `mark_ready`, by name (one being replaced right now is left out)."""
    d = ready_dir(run_dir)
    infos: dict[str, dict[str, Any]] = {}
    for f in sorted(d.glob("[!.]*")) if d.is_dir() else []:
        try:
            infos[f.name] = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
    return infos
