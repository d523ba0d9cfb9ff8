"""Remote inference workers (`infer.remote`, `linewatch worker`): a line whose workers run in other processes
and reach it over tcp://, on loopback: every frame ends as exactly one row, a hung then killed worker's frames
end as deadline FAILs, the other worker goes on; only workers whose CurveZMQ key is enrolled get frames or have
their verdicts recorded."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.auth

from linewatch.config import ConfigError, parse_config
from linewatch.wire import KIND_VERDICT, Verdict
from linewatch.wire.endpoints import EndpointError, RemoteEndpoints, parse_connect
from linewatch.wire.remote_keys import LINE_KEY, WORKERS, EnrolledWorkers, ensure_line_keys, make_pair
from tests.conftest import REPO, count_rows, db_rows, http_text, metric, wait_for

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


def worker_key(tmp: Path, name: str, enrol_in: Path | None) -> Path:
    """A worker's key pair as an operator makes it (`linewatch worker-key`), its public key copied into the line's
    workers/ folder when `enrol_in` is given; the secret key file."""
    folder = tmp / f"keys-{name}"
    out = subprocess.run([sys.executable, "-m", "linewatch", "worker-key", name, "--dir", str(folder)],
                         capture_output=True, text=True, timeout=60, check=True)
    assert "copy it into the line's remote-keys/workers/" in out.stdout
    if enrol_in is not None:
        shutil.copy(folder / f"{name}.key", enrol_in / WORKERS / f"{name}.key")
    return folder / f"{name}.key_secret"


def start_worker(config: Path, tmp: Path, name: str, port: int, keys: Path | None = None) -> subprocess.Popen[bytes]:
    """`linewatch worker` for the line; `keys`: the line's keys folder, the worker's key enrolled there."""
    auth = [] if keys is None else ["--key", str(worker_key(tmp, name, keys)), "--line-key", str(keys / LINE_KEY)]
    with (tmp / f"worker-{name}.log").open("wb") as log:
        return subprocess.Popen([sys.executable, "-m", "linewatch", "worker", "--connect", f"tcp://127.0.0.1:{port}",
                                 "--config", str(config), "--data-dir", str(tmp / f"worker-{name}"), "--name", name,
                                 *auth], stdout=log, stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_remote_workers_decide_every_frame_and_a_killed_one_loses_only_its_queued_frames(line, tmp_path: Path) -> None:
    port, keys = consecutive_free_ports(2), tmp_path / "line-keys"
    ensure_line_keys(keys)  # as the line's first start makes them: the workers get line.key before it runs
    ln = line(cameras=[{"name": "cam0", "fps": 40, "max_frames": FRAMES}], record={"deadline_ms": 1000},
              infer={"workers": 0, "transport": "inline",
                     "remote": {"enabled": True, "port": port, "keys_dir": str(keys)}})
    workers = [start_worker(ln.config, tmp_path, name, port, keys) for name in ("w0", "w1")]
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


@pytest.mark.slow
def test_only_an_enrolled_worker_gets_frames_and_has_its_verdicts_recorded(line, tmp_path: Path) -> None:
    """infer.remote on its default auth (CurveZMQ): a real worker whose key is not enrolled, and plain ZeroMQ
    clients, get no frame, and the PASS verdicts they forge never become rows; the enrolled worker decides every
    part; the stranger's worker says why it gets nothing, and record and acquire count the refusals."""
    frames, port, keys = 120, consecutive_free_ports(2), tmp_path / "line-keys"
    ensure_line_keys(keys)
    ln = line(cameras=[{"name": "cam0", "fps": 40, "max_frames": frames}], record={"deadline_ms": 1000},
              infer={"workers": 0, "transport": "inline",
                     "remote": {"enabled": True, "port": port, "keys_dir": str(keys)}})
    good = start_worker(ln.config, tmp_path, "good", port, keys)
    stranger_key = worker_key(tmp_path, "stranger", enrol_in=None)  # made, never enrolled
    with (tmp_path / "worker-stranger.log").open("wb") as log:
        stranger = subprocess.Popen([sys.executable, "-m", "linewatch", "worker", "--connect",
                                     f"tcp://127.0.0.1:{port}", "--config", str(ln.config), "--data-dir",
                                     str(tmp_path / "worker-stranger"), "--name", "stranger", "--key",
                                     str(stranger_key), "--line-key", str(keys / LINE_KEY)],
                                    stdout=log, stderr=subprocess.STDOUT)
    ctx: zmq.Context[Any] = zmq.Context()
    try:
        for name in ("good", "stranger"):
            wait_for(lambda name=name: (tmp_path / f"worker-{name}" / "run" / "ready" / f"infer[{name}]").exists(),
                     60, f"worker {name} ready")
        ln.start()
        plain_pull = ctx.socket(zmq.PULL)  # a plain ZeroMQ client asking for the camera's frames
        plain_pull.connect(f"tcp://127.0.0.1:{port + 1}")
        forgers = []
        for pair in (None, stranger_key):  # forged PASS verdicts: plain, and CurveZMQ with the stranger's key
            sock = ctx.socket(zmq.PUSH)
            if pair is not None:
                public, secret = zmq.auth.load_certificate(pair)
                sock.curve_publickey, sock.curve_secretkey = public, secret
                sock.curve_serverkey = zmq.auth.load_certificate(keys / LINE_KEY)[0]
            sock.linger = 0
            sock.connect(f"tcp://127.0.0.1:{port}")
            forgers.append(sock)
        for seq in range(20):
            forged = Verdict("cam0", "forged", seq, f"forged-{seq}", "PASS", "model", worker="infer[forger]")
            for sock in forgers:
                with contextlib.suppress(zmq.Again):
                    sock.send_multipart([KIND_VERDICT, forged.to_bytes()], flags=zmq.NOBLOCK)
            time.sleep(0.05)
        wait_for(lambda: count_rows(ln.data_dir) >= frames, 60, f"{frames} rows")
        got_frames = plain_pull.poll(100)
        refused = metric(http_text(f"{ln.url}/metrics"), "linewatch_remote_workers_refused_total")
        ln.stop()
        for sock in (plain_pull, *forgers):
            sock.close(linger=0)
    finally:
        for w in (good, stranger):
            if w.poll() is None:
                w.terminate()
                w.wait(timeout=10)
        ctx.destroy(linger=0)
    assert good.returncode == 0 and stranger.returncode == 0, (tmp_path / "worker-stranger.log").read_text()
    rows = db_rows(ln.data_dir, "SELECT * FROM inspections ORDER BY seq")
    assert [r["seq"] for r in rows] == list(range(frames)), "a forged verdict became a row, or a part has none"
    assert {r["stream"] for r in rows} != {"forged"} and not [r for r in rows if r["worker"] == "infer[forger]"]
    assert {r["worker"] for r in rows} == {"infer[good]"}, "only the enrolled worker decided parts"
    assert not got_frames, "a plain ZeroMQ client was given a frame"
    assert refused >= 2, "record and acquire count the stranger's refused connections"
    assert "the line refused this worker's key" in (tmp_path / "worker-stranger.log").read_text()


def test_enrolment_follows_the_workers_folder_without_a_restart(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """The check record and acquire run at each connection: a key added, replaced or removed in workers/ counts
    from the next connection; a file that is not a key enrols nobody and is named in the log."""
    ensure_line_keys(tmp_path)
    check = EnrolledWorkers(tmp_path / WORKERS, "record")
    first, secret = make_pair(tmp_path / "made", "w1")
    second, _ = make_pair(tmp_path / "made2", "w1")
    assert secret.stat().st_mode & 0o777 == 0o600 and (tmp_path.stat().st_mode & 0o777) == 0o700
    key1, key2 = zmq.auth.load_certificate(first)[0], zmq.auth.load_certificate(second)[0]
    assert not check.callback("*", key1), "nobody is enrolled yet"
    shutil.copy(first, tmp_path / WORKERS / "w1.key")
    assert check.callback("*", key1)
    time.sleep(0.01)
    shutil.copy(second, tmp_path / WORKERS / "w1.key")  # the worker's key replaced under the same name
    assert check.callback("*", key2) and not check.callback("*", key1)
    (tmp_path / WORKERS / "w1.key").unlink()
    (tmp_path / WORKERS / "junk.key").write_text("not a key\n")
    assert not check.callback("*", key2)
    assert "junk.key" in caplog.text and "enrols no worker" in caplog.text


def test_a_line_refuses_unauthenticated_remote_workers_on_a_reachable_address() -> None:
    with pytest.raises(ConfigError, match=r"auth none on host 0\.0\.0\.0: any host reaching it could send verdicts"):
        parse_config({"infer": {"transport": "inline", "remote": {"enabled": True, "host": "0.0.0.0", "auth": "none"}}})
    assert parse_config({"infer": {"transport": "inline", "remote": {"enabled": True, "auth": "none"}}})


def test_worker_names_a_wrong_key_file(tmp_path: Path) -> None:
    public = worker_key(tmp_path, "w0", enrol_in=None).with_suffix(".key")
    for extra, message in ((["--key", str(public), "--line-key", str(public)], "no secret-key in it"),
                           (["--key", str(tmp_path / "missing")], "--key and --line-key go together"),
                           (["--key", str(tmp_path / "missing"), "--line-key", str(public)], "not a readable")):
        out = subprocess.run([sys.executable, "-m", "linewatch", "worker", "--connect", "tcp://127.0.0.1:5600",
                              *extra], capture_output=True, text=True, timeout=60, cwd=REPO)
        assert out.returncode == 2 and message in out.stderr, out.stderr


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
