"""The composition root: `linewatch run` starts the line's processes in order and keeps them alive.

Start: record (it creates and migrates the store); then the infer workers (model loaded and warm), plc
(when enabled), notify (when hooks or MQTT are configured), ship, and acquire together, acquire holding
its first frame until the workers and the PLC serve; then api (`start_waves`). Stop is the reverse. A
child that dies is restarted with exponential backoff and an alarm is recorded; so is a child that hangs
(alive but silent: its heartbeat stopped for `supervisor.hang_timeout_s`), after the supervisor kills it.
systemd hears of it too (`line.notify`).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from linewatch.config import LineConfig, to_json
from linewatch.config.line import BLAS_DEFAULTED, BLAS_THREADS
from linewatch.line.child import config_path
from linewatch.line.notify import ServiceNotifier
from linewatch.wire.ready import child_name, down, line_children, read_ready, ready_dir

log = logging.getLogger("supervisor")
MAX_IPC_PATH = 100  # Linux sun_path limit is 107 bytes


class StartError(Exception):
    """The line cannot start (bad model, socket path too long, a child never became ready)."""


class StartRefused(Exception):
    """The start-up check refused the line (its model, rule set or auth database); the message says why."""


@dataclass
class ChildProc:
    role: str
    index: int
    name: str
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    failures: int = 0
    restart_at: float | None = None
    restarts: int = field(default=0)
    hung_for: float | None = None  # seconds of silence when the supervisor killed it as hung


def resolve_paths(cfg: LineConfig) -> LineConfig:
    """Absolute paths, so every child sees the same files whatever its working directory; `auto` workers and
    threads as numbers, so every child agrees on them (a pinned worker sees fewer cores than the line)."""
    data_dir = cfg.data_dir.resolve()
    run_dir = (cfg.runtime_dir or data_dir / "run").resolve()
    plan = cfg.cpu_plan
    # absolute(), not resolve(): a registry link (models/active/<recipe>.onnx) must stay a link to watch
    model = cfg.model.model_copy(update={"path": cfg.model.path.absolute(), "intra_op_threads": plan.threads})
    keys = (cfg.infer.remote.keys_dir or data_dir / "remote-keys").resolve()
    infer = cfg.infer.model_copy(update={"workers": plan.workers,
                                         "remote": cfg.infer.remote.model_copy(update={"keys_dir": keys})})
    return cfg.model_copy(update={"data_dir": data_dir, "runtime_dir": run_dir, "model": model, "infer": infer})


def prepare_run_dir(cfg: LineConfig) -> None:
    run_dir = cfg.run_dir
    longest = max(len(str(run_dir / f"frames-{c.name}.sock")) for c in cfg.cameras)
    if longest > MAX_IPC_PATH:
        raise StartError(f"runtime_dir: {run_dir} is too long for ipc:// sockets ({longest} > {MAX_IPC_PATH} chars)")
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("ready", "metrics"):
        shutil.rmtree(run_dir / stale, ignore_errors=True)
    (run_dir / "metrics").mkdir()
    # a line killed as a whole (power cut of the process tree) left its frame rings in /dev/shm: every
    # camera's, including one no longer configured. (Imported here: its metrics need the folder made above.)
    from linewatch.wire.frame_ring import clear_stale_rings

    clear_stale_rings(run_dir, "*")
    remote = cfg.infer.remote
    if remote.enabled and remote.auth == "curve":
        from linewatch.wire.remote_keys import LINE_KEY, WORKERS, ensure_line_keys

        if ensure_line_keys(cfg.remote_keys_dir):
            log.warning("remote workers: the line's key pair is made; give %s to each worker host and enrol a "
                        "worker by copying its public key (`linewatch worker-key NAME`) into %s",
                        cfg.remote_keys_dir / LINE_KEY, cfg.remote_keys_dir / WORKERS)
    config_path(run_dir).write_text(to_json(cfg))


def start_timeout(role: str) -> float:
    """Seconds a child may take to become ready: a worker loads and warms its model."""
    return 60.0 if role == "infer" else 15.0


def start_waves(children: list[ChildProc]) -> list[list[ChildProc]]:
    """The children in the groups they start in, each group spawned at once and waited for before the next.
    record first: it creates and migrates the store, which plc, notify and ship read as they start (one of
    them reading a store mid-migration found a column missing). Then all but api together: ZeroMQ lets
    either end of a socket come first, and acquire holds its first frame until the workers and plc serve
    (`wire.ready.first_frame_waits_for`), so their imports overlap. api comes last: the HMI shows parts
    from the store, so it misses none by starting later, and its start-up (the heaviest: FastAPI and its
    routes) no longer delays the first verdict."""
    groups = [[c for c in children if c.role == "record"], [c for c in children if c.role not in ("record", "api")],
              [c for c in children if c.role == "api"]]
    return [wave for wave in groups if wave]


def child_environment(parent: Mapping[str, str]) -> dict[str, str]:
    """A child's environment: the supervisor's, less systemd's notify socket and watchdog (the supervisor alone
    talks to systemd), with NumPy's BLAS on one thread unless the operator set it. Why: OpenBLAS starts a
    thread per core and spins them on every call; the drift watch's calibration (a few hundred small solves in
    record) then took both cores for about half a second, and the workers' inference waited for a core (the
    line's p99 at 50 % load doubled while it ran). One thread did the same work in less wall time. The line's
    parallelism is its processes, as for OpenCV (`line.child.single_threaded_opencv`). A retrain the api starts
    is not a process of the line: it drops this default again (`BLAS_DEFAULTED`, `api/retrain.py`)."""
    env = {k: v for k, v in parent.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
    if BLAS_THREADS not in env:
        env[BLAS_THREADS], env[BLAS_DEFAULTED] = "1", "1"
    return env


class Supervisor:
    def __init__(self, cfg: LineConfig):
        self.cfg = resolve_paths(cfg)
        self.stop = threading.Event()
        self.children = [ChildProc(role, i, child_name(self.cfg, role, i)) for role, i in line_children(self.cfg)]

    def _spawn(self, child: ChildProc) -> None:
        cmd = [sys.executable, "-m", "linewatch", "child", child.role, str(child.index),
               "--run-dir", str(self.cfg.run_dir)]
        child.proc = subprocess.Popen(cmd, env=child_environment(os.environ))
        child.started_at = time.monotonic()
        child.restart_at = None
        child.hung_for = None
        log.info("started %s (pid %d)", child.name, child.proc.pid)

    def _wait_ready(self, child: ChildProc, timeout: float) -> None:
        marker = ready_dir(self.cfg.run_dir) / child.name
        end = time.monotonic() + timeout
        while time.monotonic() < end and not self.stop.is_set():
            if marker.exists():
                return
            if child.proc is not None and child.proc.poll() is not None:
                raise StartError(f"{child.name} exited with code {child.proc.returncode} while starting")
            time.sleep(0.05)
        if not self.stop.is_set():
            raise StartError(f"{child.name} not ready after {timeout:.0f} s")

    def run(self, check: Callable[[], None] | None = None) -> int:
        """Start the children and keep them alive until SIGTERM/SIGINT. `check` (it raises StartRefused)
        runs once the first children are spawned, so that its imports and model load overlap theirs; when it
        refuses, they are stopped and StartRefused propagates."""
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(self.cfg.run_dir / "metrics")
        prepare_run_dir(self.cfg)
        import zmq

        from linewatch import metrics
        from linewatch.wire import Endpoints
        from linewatch.wire.channels import AlarmSender

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda s, f: self.stop.set())
        ctx: zmq.Context[Any] = zmq.Context()
        alarms = AlarmSender(ctx, Endpoints(self.cfg.run_dir), "supervisor")
        notifier = ServiceNotifier()
        expected = [c.name for c in self.children]
        try:
            for wave in start_waves(self.children):
                if self.stop.is_set():
                    break
                for child in wave:
                    self._spawn(child)
                if check is not None:
                    check()
                    check = None
                for child in wave:
                    self._wait_ready(child, start_timeout(child.role))
            log.info("line %s running: http://%s:%d", self.cfg.line, self.cfg.api.host, self.cfg.api.port)
            if not self.stop.is_set():
                notifier.ready(f"line {self.cfg.line}: {len(self.children)} processes serving")
            while not self.stop.wait(0.2):
                self._kill_hung()
                self._watch(alarms, metrics.RESTARTS)
                if notifier.enabled:
                    notifier.beat(down(self.cfg.run_dir, expected))
        except StartError as exc:
            log.error("cannot start the line: %s", exc)
            return 1
        finally:
            notifier.stopping()
            self._stop_all()
            alarms.close()
            ctx.term()
        return 0

    def _kill_hung(self) -> None:
        """SIGKILL (a stopped process takes no SIGTERM) each child that is alive but silent: its heartbeat
        stopped for hang_timeout_s, or it never became ready after a restart. `_watch` then restarts it."""
        limit = self.cfg.supervisor.hang_timeout_s
        beats = read_ready(self.cfg.run_dir)
        now = time.monotonic()
        for child in self.children:
            if child.proc is None or child.restart_at is not None or child.hung_for is not None:
                continue
            if child.proc.poll() is not None:
                continue
            info = beats.get(child.name)
            if info is not None and info.get("pid") == child.proc.pid:
                silent = float(info["beat_age_s"])
            else:  # not ready yet: silent since it started, once its start time is spent
                silent = now - child.started_at - start_timeout(child.role)
            if silent > limit:
                log.error("%s hung: no heartbeat for %.1f s; killing it", child.name, silent)
                child.hung_for = silent
                child.proc.kill()

    def _watch(self, alarms: Any, restarts: Any) -> None:
        from prometheus_client import multiprocess

        low, high = self.cfg.supervisor.restart_backoff_s
        now = time.monotonic()
        for child in self.children:
            if child.restart_at is not None:
                if now >= child.restart_at:
                    self._spawn(child)
                continue
            if child.proc is None or child.proc.poll() is None:
                continue
            code = child.proc.returncode
            multiprocess.mark_process_dead(child.proc.pid)  # type: ignore[no-untyped-call]
            (ready_dir(self.cfg.run_dir) / child.name).unlink(missing_ok=True)
            child.failures = 1 if now - child.started_at > 60 else child.failures + 1
            delay = min(high, low * 2 ** (child.failures - 1))
            child.restart_at = now + delay
            child.restarts += 1
            restarts.labels(child.name).inc()
            how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
            if child.hung_for is not None:
                alarms.raise_alarm("process_hang", f"{child.name} hung (no heartbeat for {child.hung_for:.1f} s), "
                                   f"killed; restarting in {delay:.1f} s")
            else:
                alarms.raise_alarm("process_restart", f"{child.name} died ({how}); restarting in {delay:.1f} s")

    def _stop_all(self) -> None:
        """Reverse start order: acquire, api/plc/notify/infer/ship, record; what is left after the grace is killed."""
        budget_end = time.monotonic() + self.cfg.supervisor.stop_timeout_s
        stages = [["acquire"], ["api", "plc", "notify", "infer", "ship"], ["record"]]
        for roles in stages:
            group = [c for c in self.children if c.role in roles and c.proc and c.proc.poll() is None]
            for c in group:
                assert c.proc is not None
                c.proc.send_signal(signal.SIGTERM)
            for c in group:
                assert c.proc is not None
                try:
                    c.proc.wait(timeout=max(0.05, budget_end - time.monotonic()))
                except subprocess.TimeoutExpired:
                    log.error("%s did not stop in time; killing it", c.name)
                    c.proc.kill()
                    c.proc.wait()
        from linewatch.wire.frame_ring import clear_stale_rings

        for cam in self.cfg.cameras:  # a killed acquire cannot remove its shared-memory frame ring
            clear_stale_rings(self.cfg.run_dir, cam.name)
        log.info("line stopped")
