"""Micro-batching: the wait policy fed with synthetic timings, then a real worker batching real frames."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from linewatch.config import ConfigError, parse_config
from linewatch.infer.batching import BatchPolicy
from linewatch.wire import KIND_ALARM, KIND_VERDICT
from tests.conftest import REFERENCE_MODEL, InferRig


def _measured(policy: BatchPolicy, interval_ms: float, run_ms: dict[int, float]) -> BatchPolicy:
    for i in range(50):
        policy.arrived(round(i * interval_ms * 1e6))
    for size, ms in run_ms.items():
        policy.ran(size, ms)
    return policy


def test_adaptive_never_waits_before_it_has_measured_anything() -> None:
    assert BatchPolicy(8, None, 50).wait_ms(queued=1, oldest_age_ms=0) == 0


def test_adaptive_never_waits_when_single_frames_keep_up() -> None:
    p = _measured(BatchPolicy(8, None, 50), interval_ms=10, run_ms={1: 2.0, 8: 9.0})
    assert p.wait_ms(queued=1, oldest_age_ms=0) == 0


def test_adaptive_waits_for_the_batch_to_fill_when_frames_outpace_single_runs() -> None:
    p = _measured(BatchPolicy(8, None, 50), interval_ms=1.0, run_ms={1: 2.0, 8: 9.0})
    assert p.interval_ms == pytest.approx(1.0)
    assert p.wait_ms(queued=3, oldest_age_ms=0) == pytest.approx(5 * 1.0)  # five more frames, one per ms


def test_adaptive_wait_stops_at_the_latency_target() -> None:
    p = _measured(BatchPolicy(8, None, 12), interval_ms=1.0, run_ms={1: 2.0, 8: 9.0})
    assert p.wait_ms(queued=1, oldest_age_ms=1.0) == pytest.approx(12 - 9 - 1)
    assert p.wait_ms(queued=1, oldest_age_ms=5.0) == 0  # the oldest frame has no slack left


def test_adaptive_follows_a_rate_change() -> None:
    p = _measured(BatchPolicy(4, None, 50), interval_ms=0.5, run_ms={1: 1.0, 4: 2.0})
    assert p.wait_ms(queued=1, oldest_age_ms=0) > 0
    t = 50 * 0.5e6
    for _ in range(60):  # the line slows to one part every 20 ms
        t += 20e6
        p.arrived(round(t))
    assert p.wait_ms(queued=1, oldest_age_ms=0) == 0


def test_full_batch_or_empty_queue_never_waits() -> None:
    p = _measured(BatchPolicy(4, 5.0, 50), interval_ms=0.1, run_ms={1: 1.0})
    assert p.wait_ms(queued=4, oldest_age_ms=0) == 0
    assert p.wait_ms(queued=0, oldest_age_ms=0) == 0


def test_fixed_wait_counts_from_the_first_frame() -> None:
    p = BatchPolicy(4, 5.0, 50)
    assert p.wait_ms(queued=1, oldest_age_ms=2.0) == pytest.approx(3.0)
    assert p.wait_ms(queued=2, oldest_age_ms=7.0) == 0
    assert BatchPolicy(4, 0.0, 50).wait_ms(queued=1, oldest_age_ms=0) == 0


def test_unmeasured_batch_size_is_predicted_from_the_nearest_measured_one() -> None:
    p = BatchPolicy(8, None, 50)
    p.ran(2, 4.0)
    assert p.predicted_ms(8) == pytest.approx(16.0)  # linear upward: never optimistic
    assert p.predicted_ms(1) == pytest.approx(4.0)
    assert p.predicted_ms(2) == pytest.approx(4.0)


def test_interleaved_cameras_do_not_corrupt_the_interval() -> None:
    p = BatchPolicy(4, None, 50)
    for t in (0, 2_000_000, 1_000_000, 3_000_000):  # an older frame from another camera arrives late
        p.arrived(t)
    assert p.interval_ms is not None and p.interval_ms > 0


@pytest.mark.parametrize(
    ("infer", "problem"),
    [
        ({"latency_target_ms": 2000}, "infer.latency_target_ms (2000) must be below record.deadline_ms (2000)"),
        ({"batch_wait_ms": -1}, "batch_wait_ms"),
        ({"cpus": [-1]}, "cpus"),
    ],
)
def test_batching_config_is_checked(infer: dict[str, object], problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"infer": infer})
    assert problem in str(err.value)


def _stage_sum(v: object) -> float:
    return sum(v.timings_ms.values())  # type: ignore[attr-defined]


def test_worker_batches_frames_within_the_fixed_wait_and_stages_add_up(tmp_path: Path) -> None:
    rig = InferRig(tmp_path, REFERENCE_MODEL, infer={"max_batch": 4, "batch_wait_ms": 400})
    try:
        for seq in range(4):
            rig.send_part(seq)
            time.sleep(0.03)
        verdicts = [rig.next_verdict() for _ in range(4)]
    finally:
        rig.close()
    assert [v.seq for v in verdicts] == [0, 1, 2, 3]
    assert len({v.timings_ms["inference"] for v in verdicts}) == 1  # one model run for the four
    assert verdicts[0].timings_ms["queue"] >= 60  # the first waited for the three that followed
    assert verdicts[0].timings_ms["queue"] > verdicts[3].timings_ms["queue"]
    for v in verdicts:
        assert set(v.timings_ms) == {"acquire", "transport", "queue", "preprocess", "inference", "failsafe"}
        assert _stage_sum(v) == pytest.approx((v.t_decided_ns - v.t_capture_ns) / 1e6, abs=0.001)


def test_adaptive_worker_does_not_hold_frames_at_a_low_rate(tmp_path: Path) -> None:
    rig = InferRig(tmp_path, REFERENCE_MODEL, infer={"max_batch": 8})
    try:
        verdicts = []
        for seq in range(10):
            rig.send_part(seq)
            verdicts.append(rig.next_verdict())
            time.sleep(0.02)
    finally:
        rig.close()
    assert [v.seq for v in verdicts] == list(range(10))
    assert max(v.timings_ms["queue"] for v in verdicts) < 5  # received -> batch start: no waiting for company
    assert len({v.timings_ms["inference"] for v in verdicts}) > 1  # each frame ran on its own


def test_worker_pins_itself_to_its_core_or_alarms(tmp_path: Path) -> None:
    core = sorted(os.sched_getaffinity(0))[-1]
    rig = InferRig(tmp_path / "a", REFERENCE_MODEL, infer={"cpus": [core]})
    try:
        assert os.sched_getaffinity(rig.proc.pid) == {core}
        rig.send_part(0)
        assert rig.next_verdict().seq == 0
    finally:
        rig.close()
    rig = InferRig(tmp_path / "b", REFERENCE_MODEL, infer={"cpus": [4095]})
    try:
        kind, alarm = rig.receive()
        assert kind == KIND_ALARM and alarm["kind"] == "cpu_pinning" and "CPU 4095" in alarm["message"]
        assert os.sched_getaffinity(rig.proc.pid) == os.sched_getaffinity(0)
        rig.send_part(0)
        kind, _ = rig.receive()
        while kind != KIND_VERDICT:
            kind, _ = rig.receive()
    finally:
        rig.close()
