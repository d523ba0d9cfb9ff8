"""Remote inference workers (`infer.remote`, `linewatch worker`): a line whose workers run in other processes
and reach it over tcp://, on loopback: every frame ends as exactly one row, a hung then killed worker's frames
end as deadline FAILs, the other worker goes on."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from linewatch.config import ConfigError, parse_config
from linewatch.wire.endpoints import EndpointError, RemoteEndpoints, parse_connect
from tests.conftest import REPO, count_rows, db_rows, wait_for

FRAMES = 200


def consecutive_free_ports(n: int) -> int:
    """A port p with p .. p + n - 1 all free on loopback (record's port, then one per camera), below the ephemeral
    range: there no outgoing connection takes it meanwhile (another test's, or a worker's own connection attempt
    to that very port, which TCP can turn into a connection to itself)."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(10_000, low - n)
        socks = [socket.socket() for _ in range(n)]
        try:
            for i, sock in enumerate(socks):
                sock.bind(("127.0.0.1", base + i))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise AssertionError("no block of free ports")


def start_worker(config: Path, tmp: Path, name: str, port: int) -> subprocess.Popen[bytes]:
    with (tmp / f"worker-{name}.log").open("wb") as log:
        return subprocess.Popen([sys.executable, "-m", "linewatch", "worker", "--connect", f"tcp://127.0.0.1:{port}",
                                 "--config", str(config), "--data-dir", str(tmp / f"worker-{name}"), "--name", name],
                                stdout=log, stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_remote_workers_decide_every_frame_and_a_killed_one_loses_only_its_queued_frames(line, tmp_path: Path) -> None:
    port = consecutive_free_ports(2)
    ln = line(cameras=[{"name": "cam0", "fps": 40, "max_frames": FRAMES}], record={"deadline_ms": 1000},
              infer={"workers": 0, "transport": "inline", "remote": {"enabled": True, "port": port}})
    workers = [start_worker(ln.config, tmp_path, name, port) for name in ("w0", "w1")]
    try:
        for i in range(2):  # each loads its model and serves (its ready file, in its own data dir)
            wait_for(lambda i=i: (tmp_path / f"worker-w{i}" / "run" / "ready" / f"infer[w{i}]").exists(), 60,
                     f"worker w{i} ready")
        ln.start()
        wait_for(lambda: count_rows(ln.data_dir) >= 60, 60, "the first verdicts")
        os.kill(workers[0].pid, signal.SIGSTOP)  # hung: frames pile up in its queue ...
        time.sleep(0.5)
        t_killed = time.time_ns()
        os.kill(workers[0].pid, signal.SIGKILL)  # ... and die with it
        workers[0].wait(timeout=10)
        wait_for(lambda: count_rows(ln.data_dir) >= FRAMES, 60, f"{FRAMES} rows")
        ln.stop()
    finally:
        for w in workers:
            if w.poll() is None:
                w.terminate()
                w.wait(timeout=10)
    assert workers[1].returncode == 0, (tmp_path / "worker-w1.log").read_text()

    rows = db_rows(ln.data_dir, "SELECT * FROM inspections ORDER BY seq")
    assert [r["seq"] for r in rows] == list(range(FRAMES)), "a sequence number is missing or repeated"
    decided = [r for r in rows if r["decided_by"] == "model" or r["decided_by"].startswith("rule:")]
    assert {r["worker"] for r in decided} == {"infer[w0]", "infer[w1]"}, "both remote workers decided parts"
    assert all(r["model_hash"] and r["t_capture_ns"] <= r["t_decided_ns"] for r in decided)
    assert all(r["worker"] == "infer[w1]" for r in decided if r["t_recorded_ns"] > t_killed + 10**9)
    lost = [r for r in rows if r["decided_by"] in ("timeout", "not_inspected")]
    assert lost, "the frames queued to the hung worker end as FAILs of the deadline watch"
    assert all(r["final"] == "FAIL" and json.loads(r["reasons"]) for r in lost)
    assert any(r["decided_by"] == "timeout" for r in lost)
    assert len(lost) < FRAMES // 4, f"{len(lost)} frames lost: more than the hung worker's share"


def test_connect_address_is_checked() -> None:
    assert parse_connect("tcp://10.0.0.5:5600") == ("10.0.0.5", 5600)
    assert parse_connect("tcp://[::1]:5600") == ("::1", 5600)
    for bad in ("10.0.0.5:5600", "tcp://host", "tcp://:5600", "tcp://host:99999", "ipc:///tmp/x"):
        with pytest.raises(EndpointError, match="tcp://HOST:PORT"):
            parse_connect(bad)
    ep = RemoteEndpoints(Path("/tmp"), "10.0.0.5", 5600, ("cam0", "cam1"))
    assert (ep.record, ep.frames("cam0"), ep.frames("cam1")) == (
        "tcp://10.0.0.5:5600", "tcp://10.0.0.5:5601", "tcp://10.0.0.5:5602")


@pytest.mark.parametrize(("infer", "message"), [
    ({"remote": {"enabled": True}}, "infer.remote needs infer.transport: inline"),
    ({"workers": 0}, "no worker would decide the parts"),
    ({"transport": "inline", "remote": {"enabled": True, "port": 8079}}, "api.port 8080 is one of infer.remote's"),
])
def test_remote_workers_config_is_refused_when_it_cannot_work(infer: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({"infer": infer})


def test_worker_refuses_a_bad_address_with_a_clear_error() -> None:
    out = subprocess.run([sys.executable, "-m", "linewatch", "worker", "--connect", "localhost:5600"],
                         capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.returncode == 2 and "expected tcp://HOST:PORT" in out.stderr
