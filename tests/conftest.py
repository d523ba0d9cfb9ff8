"""Fixtures that start real parts: the whole line as a process tree, single children, real sockets."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
REFERENCE_MODEL = REPO / "models" / "reference" / "reference.onnx"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def http_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def http_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return str(r.read().decode())


def db_rows(data_dir: Path, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
    db = data_dir / "linewatch.db"
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql, params).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def count_rows(data_dir: Path) -> int:
    rows = db_rows(data_dir, "SELECT count(*) AS n FROM inspections")
    return int(rows[0]["n"]) if rows else 0


class Line:
    """`linewatch run` as a real process tree on a temporary data directory."""

    def __init__(self, tmp: Path, overrides: dict[str, Any]):
        self.data_dir = Path(overrides.get("data_dir", tmp / "data"))
        self.port = free_port()
        self.plc_port = free_port()  # the plc process is on by default; concurrent lines must not share 5020
        cfg: dict[str, Any] = {"data_dir": str(self.data_dir), "api": {"port": self.port},
                               "plc": {"port": self.plc_port}}
        for key, value in overrides.items():
            cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
        self.config = tmp / "line.yaml"
        self.config.write_text(yaml.safe_dump(cfg))
        self.log = tmp / "line.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Line:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "linewatch", "run", "--config", str(self.config)],
                                         stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        wait_for(lambda: self.ready("acquire") or self._died(), 90, "the line to start")
        assert self.proc.poll() is None, f"line exited early:\n{self.log.read_text()}"
        return self

    def _died(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def ready(self, prefix: str) -> list[dict[str, Any]]:
        d = self.data_dir / "run" / "ready"
        return [json.loads(f.read_text()) for f in sorted(d.glob(f"{prefix}*"))] if d.exists() else []

    def stop(self, sig: int = signal.SIGTERM) -> float:
        """Signal the supervisor; return seconds until the whole tree has exited."""
        assert self.proc is not None
        t0 = time.monotonic()
        self.proc.send_signal(sig)
        self.proc.wait(timeout=30)
        wait_for(lambda: not self.children_alive(), 10, "all children to exit")
        return time.monotonic() - t0

    def children_alive(self) -> list[int]:
        assert self.proc is not None
        alive = []
        for info in self.ready(""):
            try:
                os.kill(info["pid"], 0)
                alive.append(info["pid"])
            except ProcessLookupError:
                pass
        return alive

    def kill_tree(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
def line(tmp_path: Path) -> Iterator[Callable[..., Line]]:
    started: list[Line] = []

    def make(**overrides: Any) -> Line:
        ln = Line(tmp_path, overrides)
        started.append(ln)
        return ln

    yield make
    for ln in started:
        ln.kill_tree()
