"""The whole line as a real process tree: every frame ends as exactly one row, faults included."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO, count_rows, db_rows, http_json, http_text, max_seq, metric, wait_for

pytestmark = pytest.mark.slow

FRAMES = 500
ACCURACY_TOLERANCE = 0.03  # 500 parts: the sampling error alone is ~0.004 at 99 % accuracy


def test_line_inspects_every_frame_exactly_once(line) -> None:
    # A deeper frame queue than the default: this test checks decisions, not drops under a loaded CI machine.
    ln = line(cameras=[{"name": "cam0", "fps": 60, "max_frames": FRAMES}], infer={"frame_queue": 16}).start()
    wait_for(lambda: count_rows(ln.data_dir) >= 50, 60, "the first verdicts")
    first = http_text(f"{ln.url}/metrics")
    wait_for(lambda: count_rows(ln.data_dir) >= 300, 60, "more verdicts")
    second = http_text(f"{ln.url}/metrics")
    for name in ("linewatch_frames_acquired_total", "linewatch_frames_inspected_total", "linewatch_verdicts_total"):
        assert metric(second, name) > metric(first, name) > 0, name
    assert "linewatch_inference_seconds_bucket" in second
    assert "linewatch_end_to_end_seconds_bucket" in second
    lint = subprocess.run(["promtool", "check", "metrics"], input=second, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    wait_for(lambda: count_rows(ln.data_dir) >= FRAMES, 60, f"{FRAMES} verdicts")
    assert ln.stop() < 5.0

    rows = db_rows(ln.data_dir, "SELECT * FROM inspections ORDER BY seq")
    assert [r["seq"] for r in rows] == list(range(FRAMES))
    assert len({r["stream"] for r in rows}) == 1
    card = json.loads((REPO / "models" / "reference" / "card.json").read_text())
    for r in rows:
        assert r["final"] in ("PASS", "FAIL", "REVIEW")
        assert r["decided_by"] == "model" or r["decided_by"].startswith("rule:"), dict(r)
        assert r["model_hash"] == card["sha256"]
        assert r["ruleset_hash"] and len(r["ruleset_hash"]) == 64
        for col in ("latency_ms", "inference_ms", "preprocess_ms", "queue_ms", "failsafe_ms"):
            assert r[col] is not None and r[col] >= 0, col
        assert r["t_capture_ns"] <= r["t_received_ns"] <= r["t_decided_ns"] <= r["t_recorded_ns"]
    agree = sum((r["final"] == "PASS") == (r["truth_label"] == "good") and r["final"] != "REVIEW" for r in rows)
    assert agree / FRAMES >= card["metrics"]["accuracy"] - ACCURACY_TOLERANCE
    kept = [r for r in rows if r["final"] != "PASS"]
    assert kept and all(r["image"] and (ln.data_dir / r["image"]).is_file() for r in kept)


def test_killed_worker_is_restarted_and_no_frame_is_lost(line) -> None:
    frames = 300
    ln = line(cameras=[{"name": "cam0", "fps": 40, "max_frames": frames}],
              record={"deadline_ms": 1000}).start()
    wait_for(lambda: count_rows(ln.data_dir) >= 60, 60, "the first verdicts")
    old_pid = ln.ready("infer")[0]["pid"]
    os.kill(old_pid, signal.SIGKILL)
    new = wait_for(lambda: [w for w in ln.ready("infer") if w["pid"] != old_pid], 30, "the worker's restart")
    assert new[0]["sha256"]
    wait_for(lambda: count_rows(ln.data_dir) >= frames, 60, f"{frames} rows")
    ln.stop()

    rows = db_rows(ln.data_dir, "SELECT seq, final, decided_by, reasons FROM inspections ORDER BY seq")
    assert [r["seq"] for r in rows] == list(range(frames)), "a sequence number is missing or repeated"
    lost = [r for r in rows if r["decided_by"] in ("timeout", "not_inspected")]
    assert lost, "frames sent while the worker was dead must be recorded as not inspected"
    assert all(r["final"] == "FAIL" and json.loads(r["reasons"]) for r in lost)
    decided_after = [r for r in rows if r["decided_by"] == "model" and r["seq"] > max(x["seq"] for x in lost)]
    assert decided_after, "the restarted worker decides parts again"
    alarms = db_rows(ln.data_dir, "SELECT * FROM alarms WHERE kind = 'process_restart'")
    assert any("infer[0]" in a["message"] and "SIGKILL" in a["message"] for a in alarms)


def test_corrupt_model_refuses_to_start_with_a_clear_error(line, tmp_path: Path) -> None:
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 100)
    ln = line(model={"path": str(bad)})
    out = subprocess.run([sys.executable, "-m", "linewatch", "run", "--config", str(ln.config)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert str(bad) in out.stderr and "cannot load" in out.stderr


def test_killed_record_is_restarted_and_every_frame_still_ends_as_one_row(line) -> None:
    frames, deadline_s, piled_up = 480, 1.0, 60
    ln = line(cameras=[{"name": "cam0", "fps": 40, "max_frames": frames}],
              record={"deadline_ms": deadline_s * 1000}).start()
    wait_for(lambda: count_rows(ln.data_dir) >= 60, 60, "the first verdicts")
    old_pid = ln.ready("record")[0]["pid"]
    os.kill(old_pid, signal.SIGSTOP)  # deaf, not dead: announcements and verdicts pile up in its sockets
    stopped_at = time.monotonic()
    try:
        committed = max_seq(ln.data_dir)  # a stopped record commits nothing more

        def acquired_past_deadline() -> int:
            """Frames acquired so far, once `piled_up` of them wait for record and the first is past its deadline."""
            n = int(metric(http_text(f"{ln.url}/metrics"), "linewatch_frames_acquired_total"))
            return n if n > committed + piled_up and time.monotonic() - stopped_at > 1.5 * deadline_s else 0

        acquired_at_kill = wait_for(acquired_past_deadline, 30,
                                    f"{piled_up} parts to pile up and pass their deadline while record is stopped")
    finally:
        os.kill(old_pid, signal.SIGKILL)  # loses whatever it held: pending parts, queued messages, uncommitted rows
    in_flight = range(committed + 1, acquired_at_kill)
    wait_for(lambda: [r for r in ln.ready("record") if r["pid"] != old_pid], 30, "record's restart")
    wait_for(lambda: count_rows(ln.data_dir) >= frames, 90, f"{frames} rows")
    ln.stop()

    rows = db_rows(ln.data_dir, "SELECT seq, final, decided_by FROM inspections ORDER BY seq")
    assert [r["seq"] for r in rows] == list(range(frames)), "a sequence number is missing or repeated"
    assert len(in_flight) >= piled_up, "parts were in flight when record was killed"
    failed = [r for r in rows if r["decided_by"] in ("timeout", "not_inspected")]
    assert [r for r in failed if r["seq"] in in_flight], "parts whose messages record lost end as FAIL rows"
    assert all(r["final"] == "FAIL" for r in failed)
    alarms = db_rows(ln.data_dir, "SELECT message FROM alarms WHERE kind = 'process_restart'")
    assert any("record died (signal SIGKILL)" in a["message"] for a in alarms)
    check = db_rows(ln.data_dir, "PRAGMA integrity_check")
    assert check[0][0] == "ok"


def _readyz(url: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_readyz_names_a_stopped_worker_while_healthz_stays_ok(line) -> None:
    # the worker is held stopped past readiness's 5 s on purpose: the supervisor must not kill it as hung meanwhile
    ln = line(cameras=[{"name": "cam0", "fps": 10}], supervisor={"hang_timeout_s": 60}).start()
    assert wait_for(lambda: _readyz(ln.url)[0] == 200, 30, "the line to be ready")
    worker = ln.ready("infer")[0]["pid"]
    os.kill(worker, signal.SIGSTOP)  # alive to the supervisor, but silent: only its heartbeat tells
    try:
        _, body = wait_for(lambda: (r := _readyz(ln.url))[0] == 503 and r, 15, "readyz to see the worker")
        assert body == {"status": "not ready", "down": ["infer[0]"]}
        assert http_json(f"{ln.url}/healthz") == {"status": "ok"}  # liveness: the web app itself
    finally:
        os.kill(worker, signal.SIGCONT)
    assert wait_for(lambda: _readyz(ln.url) == (200, {"status": "ready", "down": []}), 15, "ready again")
    ln.stop()


def test_every_child_runs_numpys_blas_on_one_thread_unless_the_operator_says_otherwise() -> None:
    """OpenBLAS starts a spinning thread per core: in record the drift watch's calibration then took both cores
    from the inference workers. A child's environment holds it to one thread; an operator's setting stands."""
    from linewatch.api.retrain import training_environment
    from linewatch.line.supervisor import child_environment

    parent = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "LINEWATCH_BLAS_DEFAULTED")}
    count_threads = "import os, numpy; print(len(os.listdir('/proc/self/task')))"
    env = child_environment({**parent, "NOTIFY_SOCKET": "/run/systemd/notify"})
    assert "NOTIFY_SOCKET" not in env, "only the supervisor talks to systemd"
    threads = subprocess.run([sys.executable, "-c", count_threads], env=env, capture_output=True, text=True,
                             check=True).stdout
    assert int(threads) == 1, "numpy started BLAS threads in a child"
    own = child_environment({**parent, "OPENBLAS_NUM_THREADS": "4"})
    assert own["OPENBLAS_NUM_THREADS"] == "4" and "LINEWATCH_BLAS_DEFAULTED" not in own
    # a retrain the api starts is no process of the line: BLAS on every core again, an operator's setting kept
    assert "OPENBLAS_NUM_THREADS" not in training_environment(env)
    assert training_environment(own)["OPENBLAS_NUM_THREADS"] == "4"
