"""The watchdog: a hung child (alive, silent) is killed and restarted with an alarm; systemd hears READY=1 once
the line serves and WATCHDOG=1 only while every child beats; a line killed as a whole leaves no frame ring behind
its next start. Real processes, real signals, a real unix datagram socket as systemd's NOTIFY_SOCKET."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from fastapi.testclient import TestClient

from linewatch.api.app import create_app
from linewatch.config import parse_config
from linewatch.line.notify import ServiceNotifier
from linewatch.wire.frame_ring import ring_path
from linewatch.wire.ready import BEAT_S, mark_ready, read_ready, ready_dir
from tests.conftest import REPO, db_rows, http_json, wait_for

HANG_S = 4.0  # supervisor.hang_timeout_s in these lines: killed after 4 s of silence, restarted within 15 s
RESTARTED_WITHIN_S = 15.0


class NotifySocket:
    """What systemd listens on: a bound unix datagram socket; every datagram is kept with its arrival time."""

    def __init__(self, address: str):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._listen, daemon=True)
        self.thread.start()

    def _listen(self) -> None:
        while not self.closed.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.messages.append((time.monotonic(), data.decode()))

    def fields(self) -> list[tuple[float, str]]:
        """Every `KEY=value` line received, in order (a datagram may carry several)."""
        return [(t, line) for t, msg in list(self.messages) for line in msg.split("\n")]

    def close(self) -> None:
        self.closed.set()
        self.thread.join()
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifySocket]:
    path = tmp_path / "notify"
    listener = NotifySocket(str(path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")  # WatchdogSec=2: a ping every second
    yield listener
    listener.close()


def test_notifier_speaks_the_sd_notify_datagram_protocol(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"linewatch-test-{os.getpid()}"
    listener = NotifySocket("\0" + name)  # the abstract namespace, written `@name` in NOTIFY_SOCKET
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        monkeypatch.setenv("WATCHDOG_USEC", "600000")
        notifier = ServiceNotifier()
        assert notifier.interval_s == pytest.approx(0.3)
        notifier.ready("line1: 5 processes serving")
        notifier.beat([])
        notifier.beat([])  # too soon after the last ping: nothing sent
        notifier.beat(["infer[0]"])
        notifier.beat(["infer[0]"])  # said once
        notifier.beat([])  # back: told at once, and pinged
        notifier.stopping()
        wait_for(lambda: len(listener.messages) >= 6, 5, "six datagrams")
        assert [m for _, m in listener.messages] == [
            "READY=1\nSTATUS=line1: 5 processes serving", "WATCHDOG=1", "STATUS=not beating: infer[0]",
            "STATUS=running", "WATCHDOG=1", "STOPPING=1\nSTATUS=stopping"]
    finally:
        listener.close()
    monkeypatch.delenv("NOTIFY_SOCKET")
    silent = ServiceNotifier()  # outside systemd: no socket, nothing sent, nothing raised
    silent.ready("x")
    silent.beat(["record"])
    silent.stopping()
    assert not silent.enabled


def test_livez_fails_only_for_a_child_silent_past_the_hang_timeout(tmp_path: Path) -> None:
    cfg = parse_config({"data_dir": str(tmp_path), "runtime_dir": str(tmp_path / "run"),
                        "supervisor": {"hang_timeout_s": 10}})
    client = TestClient(create_app(cfg))
    mark_ready(cfg.run_dir, "record")
    mark_ready(cfg.run_dir, "infer[0]")
    assert client.get("/livez").json() == {"status": "alive", "hung": []}
    now = time.time()
    os.utime(ready_dir(cfg.run_dir) / "infer[0]", (now - 7, now - 7))  # down for /readyz (5 s), not hung yet
    assert client.get("/livez").status_code == 200
    assert client.get("/readyz").status_code == 503
    os.utime(ready_dir(cfg.run_dir) / "infer[0]", (now - 11, now - 11))
    r = client.get("/livez")
    assert r.status_code == 503 and r.json() == {"status": "hung", "hung": ["infer[0]"]}
    assert client.get("/healthz").json() == {"status": "ok"}  # the web app itself still answers


ROLES = {"record": ("record", "0"), "acquire[cam0]": ("acquire", "0"), "infer[0]": ("infer", "0"),
         "api": ("api", "0"), "plc": ("plc", "0")}


def _spawned(supervisor: int, role: tuple[str, str]) -> set[int]:
    """Pids of the supervisor's live children started as `linewatch child ROLE INDEX`."""
    found = set()
    for proc in psutil.Process(supervisor).children():
        try:
            cmd = proc.cmdline()
        except psutil.NoSuchProcess:
            continue
        if "child" in cmd and tuple(cmd[cmd.index("child") + 1:cmd.index("child") + 3]) == role:
            found.add(proc.pid)
    return found


def _pid(run_dir: Path, name: str) -> int | None:
    info = read_ready(run_dir).get(name)
    return int(info["pid"]) if info else None


@pytest.mark.slow
def test_hung_children_are_replaced_systemd_hears_of_it_and_a_line_killed_whole_leaves_no_ring(
        line, notify_socket: NotifySocket) -> None:  # type: ignore[no-untyped-def]
    """One line for both (a line start is the slow part): SIGSTOP on every role, then a power cut and a new start,
    stopped (SIGTERM) while it starts."""
    ln = line(cameras=[{"name": "cam0", "fps": 10}], supervisor={"hang_timeout_s": HANG_S}).start()
    ready_at = wait_for(lambda: [t for t, f in notify_socket.fields() if f == "READY=1"], 10, "READY=1")[0]
    run_dir = ln.data_dir / "run"
    assert len(ln.ready("")) == 5  # READY=1 came after every child said it serves (api, the last, included)
    wait_for(lambda: [t for t, f in notify_socket.fields() if f == "WATCHDOG=1" and t > ready_at], 5, "a ping")
    # record first, alone: the others' alarms travel to it
    for group in (["record"], ["acquire[cam0]", "infer[0]", "api", "plc"]):
        pids = {name: _pid(run_dir, name) for name in group}
        stopped_at = time.monotonic()
        for pid in pids.values():
            assert pid is not None
            os.kill(pid, signal.SIGSTOP)
        for name, pid in pids.items():
            wait_for(lambda n=name, p=pid: _spawned(ln.proc.pid, ROLES[n]) - {p},
                     RESTARTED_WITHIN_S - (time.monotonic() - stopped_at), f"{name} to be killed and restarted")
            with pytest.raises(psutil.NoSuchProcess):
                psutil.Process(pid).status()  # killed and reaped, not merely left stopped
        took = time.monotonic() - stopped_at
        # silent since its last beat, up to BEAT_S before the stop: never killed while it beats
        assert HANG_S - BEAT_S <= took < RESTARTED_WITHIN_S, f"{group} restarted after {took:.1f} s"
        for name, pid in pids.items():  # and serving again (a worker loads its model first)
            wait_for(lambda n=name, p=pid: _pid(run_dir, n) not in (None, p), 60, f"{name} to serve again")

    def hang_alarms() -> list[str]:
        return [r["message"] for r in db_rows(ln.data_dir, "SELECT message FROM alarms WHERE kind = 'process_hang'")]

    names = ["record", "acquire[cam0]", "infer[0]", "api", "plc"]
    alarms = wait_for(lambda: (a := hang_alarms()) and all(any(m.startswith(f"{n} hung") for m in a) for n in names)
                      and a, 10, "a process_hang alarm for every role")
    assert all("no heartbeat for" in m for m in alarms)
    assert http_json(f"{ln.url}/livez") == {"status": "alive", "hung": []}

    def pinged_since_withheld() -> bool:
        fields = notify_socket.fields()
        last = max(i for i, (_, f) in enumerate(fields) if f.startswith("STATUS=not beating:"))
        return "STATUS=running" in [f for _, f in fields[last:]] and "WATCHDOG=1" in [f for _, f in fields[last:]]

    wait_for(pinged_since_withheld, 5, "the watchdog fed again once every child beats")
    fields = notify_socket.fields()
    withheld = [i for i, (_, f) in enumerate(fields) if f.startswith("STATUS=not beating:")]
    assert withheld and "record" in fields[withheld[0]][1]
    for i in withheld:  # no ping while a child is not beating, until the line says it runs again
        back = next(j for j in range(i, len(fields)) if fields[j][1] == "STATUS=running")
        assert "WATCHDOG=1" not in [f for _, f in fields[i:back]], fields[i:back]

    # a power cut of the process tree: nobody unlinks anything
    ring_glob = ring_path(run_dir.resolve(), "*", "*")
    rings = sorted(ring_glob.parent.glob(ring_glob.name))
    assert rings and all("-cam0-" in r.name for r in rings)
    other_line = ring_glob.parent / "linewatch-0123456789ab-cam0-other.ring"  # another line's ring: not ours
    other_line.write_bytes(b"")
    try:
        ln.kill_tree()
        assert all(r.exists() for r in rings), "the killed line's ring is gone before the new start"
        # the next start runs another camera: cam0's ring is no acquire's to clear any more
        old_record = _pid(run_dir, "record")
        second = line(data_dir=str(ln.data_dir), cameras=[{"name": "camB", "fps": 10}])
        second.proc = subprocess.Popen([sys.executable, "-m", "linewatch", "run", "--config", str(second.config)],
                                       start_new_session=True)
        # its first child serves: the start has prepared its run directory
        wait_for(lambda: _pid(run_dir, "record") not in (None, old_record), 30, "the new line's record")
        assert not [r for r in rings if r.exists()], "a stale ring of this line survived its new start"
        assert other_line.exists()
        second.stop()
    finally:
        other_line.unlink(missing_ok=True)
    fields = notify_socket.fields()
    assert [f for _, f in fields[-2:]] == ["STOPPING=1", "STATUS=stopping"]


def test_systemd_unit_is_a_notify_service_with_a_watchdog_and_verifies_clean(tmp_path: Path) -> None:
    """`systemd-analyze verify` on the unit as shipped, under a root that has the unit's executable and systemd's
    own units (verify refuses a unit whose ExecStart= is missing, and it resolves dependencies like After=)."""
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze (Debian: systemd) is needed to verify the unit"
    unit = REPO / "systemd" / "linewatch.service"
    text = unit.read_text()
    assert "\nType=notify\n" in text and "\nWatchdogSec=" in text
    exe = tmp_path / "opt/linewatch/venv/bin/linewatch"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    (tmp_path / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(unit, tmp_path / "etc/systemd/system/linewatch.service")
    shutil.copytree("/usr/lib/systemd/system", tmp_path / "usr/lib/systemd/system", symlinks=True)
    out = subprocess.run([analyze, "verify", f"--root={tmp_path}", "linewatch.service"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and not out.stderr.strip() and not out.stdout.strip(), out.stdout + out.stderr
