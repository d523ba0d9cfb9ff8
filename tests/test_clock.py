"""A step of the wall clock (NTP, PTP) while parts are in flight times out no part and bends no duration."""

from __future__ import annotations

import os
import signal
import time

import pytest

from linewatch import clock
from tests.conftest import db_rows, wait_for

HOUR_NS = 3600 * 10**9


def test_the_step_hook_moves_the_wall_clock_once_the_monotonic_clock_passes_it() -> None:
    at = time.monotonic() + 0.2
    stepped = clock._wall_clock(f"{at}:3600")
    assert abs(stepped() - time.time_ns()) < 10**9
    time.sleep(0.25)
    assert abs(stepped() - time.time_ns() - HOUR_NS) < 10**9
    with pytest.raises(ValueError, match="LINEWATCH_CLOCK_STEP='soon'"):
        clock._wall_clock("soon")


def test_a_part_s_later_wall_times_are_its_capture_plus_monotonic_time() -> None:
    captured = clock.Moment(wall_ns=5 * HOUR_NS, mono_ns=1_000)
    assert captured.wall_at(1_000 + 7) == 5 * HOUR_NS + 7
    assert clock.part_wall_ns(5 * HOUR_NS, 1_000, 1_500) == 5 * HOUR_NS + 500
    assert abs(clock.part_wall_ns(0, None) - time.time_ns()) < 10**9  # nothing to count from: the wall clock


@pytest.mark.slow
def test_a_wall_clock_step_of_an_hour_mid_stream_times_out_no_part(line, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker is held (SIGSTOP) across the step, so parts are surely in flight when the clock jumps."""
    fps = 20
    step_at = time.monotonic() + 20  # after the line is up and streaming
    monkeypatch.setenv("LINEWATCH_CLOCK_STEP", f"{step_at}:3600")
    ln = line(cameras=[{"name": "cam0", "fps": fps, "max_frames": 100_000}], infer={"frame_queue": 32},
              record={"deadline_ms": 2500}).start()
    t_before = time.time_ns()
    workers = [info["pid"] for info in wait_for(lambda: ln.ready("infer"), 30, "the worker")]
    wait_for(lambda: time.monotonic() > step_at - 0.7, 60, "the moment before the step")
    for pid in workers:
        os.kill(pid, signal.SIGSTOP)
    try:
        wait_for(lambda: time.monotonic() > step_at + 0.7, 5, "the moment after the step")
    finally:
        for pid in workers:
            os.kill(pid, signal.SIGCONT)
    wait_for(lambda: time.monotonic() > step_at + 4, 10, "more parts after the step")
    ln.stop()
    rows = db_rows(ln.data_dir, "SELECT * FROM inspections ORDER BY seq")
    assert [r["seq"] for r in rows] == list(range(len(rows)))
    before = [r for r in rows if r["t_capture_ns"] < t_before + HOUR_NS / 2]
    after = [r for r in rows if r["t_capture_ns"] > t_before + HOUR_NS / 2]
    assert len(before) > fps and len(after) > fps, "the line's wall clock did not step mid-stream"
    assert [(r["seq"], r["reasons"]) for r in rows if r["decided_by"] in ("timeout", "not_inspected")] == []
    # held over 0.7 s by the stopped worker: captured before the step, decided after it
    assert [r for r in before if r["latency_ms"] > 700], "no part was in flight across the step"
    for r in rows:
        assert 0 <= r["latency_ms"] < 2500, dict(r)
        assert r["t_capture_ns"] <= r["t_received_ns"] <= r["t_decided_ns"] <= r["t_recorded_ns"], dict(r)
        assert r["t_recorded_ns"] - r["t_capture_ns"] < 2500 * 10**6, dict(r)
