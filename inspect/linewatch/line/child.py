"""What every child process shares: logging, signals, the stop event, the alarm channel.

A child is built from `(config, index, stop_event)` and its `run()` opens its own resources; it
returns when the stop event is set (SIGTERM/SIGINT). The supervisor starts children as
`python -m linewatch child ROLE INDEX` so each is a real, separately killable process.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Protocol

import cv2

from linewatch.config import LineConfig, from_json
from linewatch.wire.ready import child_name, start_heartbeat

ROLES = {
    "record": "linewatch.record.process:Record",
    "infer": "linewatch.infer.process:Infer",
    "acquire": "linewatch.acquire.process:Acquire",
    "api": "linewatch.api.app:Api",
    "plc": "linewatch.plc.process:Plc",
    "ship": "linewatch.ship.process:Ship",
    "notify": "linewatch.notify.process:Notify",
}


class Child(Protocol):
    def run(self) -> None: ...


def setup_logging(tag: str) -> None:
    level = os.environ.get("LINEWATCH_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(level=level, format=f"%(asctime)s %(levelname)-7s [{tag}] %(name)s: %(message)s",
                        stream=sys.stderr, force=True)




def config_path(run_dir: Path) -> Path:
    return run_dir / "config.json"


def child_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """`child ROLE INDEX --run-dir DIR`: the internal command one process of the line is started with."""
    parser.add_argument("role", choices=sorted(ROLES))
    parser.add_argument("index", type=int)
    parser.add_argument("--run-dir", required=True)
    return parser


def child_cli(argv: list[str]) -> int:
    """`python -m linewatch child ...` without the rest of the command line."""
    args = child_arguments(argparse.ArgumentParser(prog="linewatch child")).parse_args(argv)
    return child_main(args.role, args.index, Path(args.run_dir))


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
    stop = stop_on_signals(tag)
    single_threaded_opencv()
    module_name, cls_name = ROLES[role].split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    child: Child = cls(cfg, index, stop)
    serve(child, run_dir, tag, stop)
    return 0


def stop_on_signals(tag: str) -> threading.Event:
    """The process's stop event, set by SIGTERM or SIGINT."""
    stop = threading.Event()

    def _on_signal(signum: int, _frame: Any) -> None:
        logging.getLogger(tag).info("%s received, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    return stop


def serve(child: Child, run_dir: Path, tag: str, stop: threading.Event) -> None:
    """Run a built child: heartbeat on its ready file, startup objects frozen, then its `run()` until `stop`."""
    start_heartbeat(run_dir, tag, stop)
    freeze_startup_objects()
    child.run()


def single_threaded_opencv() -> None:
    """OpenCV's worker pool spins after each call: on per-frame images that doubled the fail-safe's CPU
    (benchmarks/RESULTS.md) and took it from the other processes. The line's parallelism is its
    processes, so every child runs OpenCV on one thread."""
    cv2.setNumThreads(0)


def freeze_startup_objects() -> None:
    """Move what the imports and the setup allocated out of the garbage collector's reach: a full
    collection over them stalled a process long enough to overflow a worker's frame queue
    (benchmarks/RESULTS.md). Later objects are collected as usual.
    Frozen objects are still freed by reference counting, but a cycle among them never is: so a child's
    constructor stays light, and whatever is replaced while running (models, sockets) is made in `run()`."""
    gc.collect()
    gc.freeze()


