"""Fixtures that start real parts: the whole line as a process tree, single children, real sockets."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
import zmq
from zmq.utils.monitor import recv_monitor_message

from linewatch.clock import Moment, mono_ns
from linewatch.config import LineConfig, parse_config
from linewatch.emulator.parts import PartEmulator
from linewatch.line.supervisor import prepare_run_dir, resolve_paths
from linewatch.wire import KIND_VERDICT, KIND_VERDICT_BATCH, Endpoints, FrameHeader, Verdict, encode_frame
from linewatch.wire.ready import ready_dir

REPO = Path(__file__).resolve().parent.parent
REFERENCE_MODEL = REPO / "models" / "reference" / "reference.onnx"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_ports(n: int) -> list[int]:
    """`n` distinct free ports: held open together while chosen, so two calls cannot return the same one."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


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


def max_seq(data_dir: Path) -> int:
    """The highest sequence number committed so far (-1 before the first row)."""
    rows = db_rows(data_dir, "SELECT max(seq) AS s FROM inspections")
    return int(rows[0]["s"]) if rows and rows[0]["s"] is not None else -1


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples in a Prometheus text exposition, over those with `labels`."""
    total = 0.0
    for m in re.finditer(rf"^{name}(?:{{([^}}]*)}})? (\S+)$", text, re.M):
        if all(f'{k}="{v}"' in (m.group(1) or "") for k, v in labels.items()):
            total += float(m.group(2))
    return total


class Line:
    """`linewatch run` as a real process tree on a temporary data directory."""

    def __init__(self, tmp: Path, overrides: dict[str, Any]):
        self.data_dir = Path(overrides.get("data_dir", tmp / "data"))
        # the plc process is on by default; concurrent lines must not share 5020, nor one line its two ports
        self.port, self.plc_port = free_ports(2)
        # one worker unless a test asks for more: `auto` starts one per core, which doubles every line's start
        # on CI's 2 cores (test_process runs a line on auto)
        cfg: dict[str, Any] = {"data_dir": str(self.data_dir), "api": {"port": self.port},
                               "plc": {"port": self.plc_port}, "infer": {"workers": 1}}
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
        # api starts last (supervisor.start_waves): the line is up when acquire and api both serve
        wait_for(lambda: (self.ready("acquire") and self.ready("api")) or self._died(), 90, "the line to start")
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


def start_child(role: str, name: str, cfg: LineConfig) -> subprocess.Popen[bytes]:
    """One process of the line, started the way the supervisor starts it, on cfg's prepared run directory;
    returns once it is ready (its ready file exists)."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(cfg.run_dir / "metrics")}
    proc = subprocess.Popen([sys.executable, "-m", "linewatch", "child", role, "0", "--run-dir", str(cfg.run_dir)],
                            env=env)
    wait_for(lambda: (ready_dir(cfg.run_dir) / name).exists() or proc.poll() is not None, 60, name)
    assert proc.poll() is None, f"{name} exited with code {proc.returncode} while starting"
    return proc


def subscribe(sub: zmq.Socket[Any], endpoint: str) -> None:
    """Connect a SUB socket and wait for its handshake with the publisher: the subscription goes out right behind
    it, so what is published from then on reaches the socket (a PUB drops what nobody has subscribed to yet)."""
    monitor = sub.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
    try:
        sub.connect(endpoint)
        wait_for(lambda: monitor.poll(100) and recv_monitor_message(monitor), 30, f"a subscription to {endpoint}")
    finally:
        sub.disable_monitor()
        monitor.close(linger=0)


class RecordRig:
    """record as a real child process; the test pushes into it like acquire and the workers do (`push`) and
    listens to its events (`sub`, on the kinds in `events`). `start()` again after `close()` or a kill: the same
    store opens again. The owner terms `ctx` at the end."""

    def __init__(self, tmp: Path, record: dict[str, Any], events: bytes = b""):
        self.cfg: LineConfig = resolve_paths(parse_config({"data_dir": str(tmp), "record": record}))
        self.events = events
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.socks: list[zmq.Socket[Any]] = []
        self.start()

    def start(self) -> None:
        self._close_sockets()
        prepare_run_dir(self.cfg)
        self.proc = start_child("record", "record", self.cfg)
        ep = Endpoints(self.cfg.run_dir)
        self.push = self.ctx.socket(zmq.PUSH)
        self.push.setsockopt(zmq.LINGER, 0)
        self.push.connect(ep.record)
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.RCVHWM, 0)  # keep every acknowledgement
        self.sub.subscribe(self.events)
        self.socks = [self.push, self.sub]
        subscribe(self.sub, ep.events)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self._close_sockets()

    def _close_sockets(self) -> None:
        for sock in self.socks:
            sock.close(linger=0)
        self.socks = []


class InferRig:
    """One infer child; the test plays acquire (frames) and record (verdicts, alarms)."""

    def __init__(self, tmp: Path, model: Path, **overrides: Any):
        cfg = resolve_paths(parse_config({"data_dir": str(tmp), "model": {"path": str(model)}, **overrides}))
        prepare_run_dir(cfg)
        self.cfg: LineConfig = cfg
        ep = Endpoints(cfg.run_dir)
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.frames = self.ctx.socket(zmq.PUSH)
        self.frames.bind(ep.frames("cam0"))
        self.record = self.ctx.socket(zmq.PULL)
        self.record.bind(ep.record)
        self.proc = start_child("infer", "infer[0]", cfg)
        self.emu = PartEmulator(seed=3, defect_rate=0.5)
        self.batched: deque[Verdict] = deque()

    def header(self, seq: int, **kw: Any) -> FrameHeader:
        captured = Moment.now()  # as acquire stamps a part: wall time once, then monotonic time
        fields = dict(camera="cam0", stream="test", seq=seq, part_id=f"p{seq}", t_capture_ns=captured.wall_ns,
                      t_capture_mono_ns=captured.mono_ns, t_sent_ns=captured.wall_at(mono_ns()), width=256,
                      height=256, channels=1, dtype="uint8", pixel_format="Mono8")
        return FrameHeader(**{**fields, **kw})

    def send_part(self, seq: int) -> None:
        self.frames.send_multipart(encode_frame(self.header(seq), self.emu.render(seq).pixels))

    def receive(self, timeout_ms: int = 10_000) -> tuple[bytes, Any]:
        """The next message; the verdicts of a `verdict_batch` come one by one, as record takes them."""
        if self.batched:
            return KIND_VERDICT, self.batched.popleft()
        assert self.record.poll(timeout_ms), "no message from the worker"
        parts = self.record.recv_multipart()
        if parts[0] == KIND_VERDICT:
            return KIND_VERDICT, Verdict.from_bytes(parts[1])
        if parts[0] == KIND_VERDICT_BATCH:
            verdicts, errors = Verdict.many_from_bytes(parts[1])
            assert not errors and len(verdicts) > 1, errors  # a lone verdict travels as `verdict`
            self.batched.extend(verdicts)
            return self.receive(timeout_ms)
        return parts[0], json.loads(parts[1])

    def next_verdict(self) -> Verdict:
        while True:
            kind, msg = self.receive()
            if kind == KIND_VERDICT:
                return msg  # type: ignore[no-any-return]

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self.frames.close(linger=0)
        self.record.close(linger=0)
        self.ctx.term()


def emulated_parts(root: Path, n: int, seed: int = 0, size: int = 64, at_least: int = 3) -> Path:
    """A folder of class subfolders (good/, defect/) with `n` emulated parts of `size`², at least `at_least` of
    each class (the first ones are forced), the rest as the emulator drew them."""
    import cv2

    from linewatch.emulator.parts import PartEmulator

    emu = PartEmulator(size, size, seed=seed, defect_rate=0.5)
    for i in range(n):
        r = emu.render(i)
        label = "defect" if i < at_least else "good" if i < 2 * at_least else r.truth["label"]
        (root / label).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / label / f"{seed}-{i:03d}.png"), r.pixels)
    return root
