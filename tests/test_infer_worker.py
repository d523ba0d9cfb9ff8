"""A real inference worker process between real ZeroMQ sockets: good, malformed and unmodelled input."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from linewatch.emulator.parts import PartEmulator
from linewatch.line.child import config_path
from linewatch.model.files import file_sha256
from linewatch.wire import (
    KIND_ALARM,
    KIND_VERDICT,
    KIND_VERDICT_BATCH,
    FrameHeader,
    Verdict,
    decode_frame,
    encode_frame,
)
from tests.conftest import REFERENCE_MODEL, InferRig
from tests.test_adapters import anomalib_model


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[InferRig]:
    r = InferRig(tmp_path, REFERENCE_MODEL)
    yield r
    r.close()


def test_good_frame_gets_a_model_verdict_with_hash_and_timings(rig: InferRig) -> None:
    rig.send_part(0)
    v = rig.next_verdict()
    assert (v.camera, v.stream, v.seq) == ("cam0", "test", 0)
    assert v.decided_by in ("model", "rule:confidence_band")
    assert v.model_hash == file_sha256(REFERENCE_MODEL)
    assert v.probs is not None and abs(sum(v.probs.values()) - 1) < 1e-4
    assert set(v.timings_ms) >= {"queue", "preprocess", "inference", "failsafe"}


@pytest.mark.parametrize(
    ("parts", "expect_verdict", "reason"),
    [
        ([b"only-one-part"], False, "expected 2 parts"),
        ([b"{not json", b"x"], False, "not valid JSON"),
        ([b'{"v":1,"camera":"cam0","stream":"test","seq":7}', b"x"], True, "missing required field"),
        ([FrameHeader("cam0", "test", 8, "p8", 1, 1, 256, 256, 1, "uint8", "Mono8").to_bytes(), b"\0" * 100],
         True, "pixel buffer has 100 bytes"),
        ([FrameHeader("cam0", "test", 9, "p9", 1, 1, 256, 256, 1, "float64", "Mono8").to_bytes(), b"\0" * 8],
         True, "dtype"),
    ],
)
def test_malformed_frames_are_refused_and_the_worker_keeps_running(rig: InferRig, parts: list[bytes],
                                                                   expect_verdict: bool, reason: str) -> None:
    rig.frames.send_multipart(parts)
    kind, msg = rig.receive()
    if expect_verdict:
        assert kind == KIND_VERDICT
        assert msg.final == "FAIL" and msg.decided_by == "not_inspected"
        assert reason in msg.reasons[0]
    else:
        assert kind == KIND_ALARM and reason in msg["message"]
    rig.send_part(100)
    assert rig.next_verdict().seq == 100
    assert rig.proc.poll() is None


def test_a_burst_of_imageless_verdicts_goes_to_record_as_batches(tmp_path: Path) -> None:
    """Frames waiting together are decided together; their verdicts travel as one `verdict_batch` message
    each (record's per-row cost), every frame exactly once, in order within a batch."""
    rig = InferRig(tmp_path, REFERENCE_MODEL, infer={"max_batch": 4, "batch_wait_ms": 50},
              record={"pass_sample_every": 0, "live_view_hz": 0})
    try:
        good = PartEmulator(seed=4, defect_rate=0.0)
        for seq in range(12):
            rig.frames.send_multipart(encode_frame(rig.header(seq), good.render(seq).pixels))
        seqs, kinds = [], []
        while len(seqs) < 12:
            assert rig.record.poll(10_000), f"only {seqs}"
            parts = rig.record.recv_multipart()
            kinds.append(parts[0])
            if parts[0] == KIND_VERDICT_BATCH:
                verdicts, errors = Verdict.many_from_bytes(parts[1])
                assert not errors
                seqs += [v.seq for v in verdicts]
                assert [v.seq for v in verdicts] == sorted(v.seq for v in verdicts)
                assert all(v.model_hash == file_sha256(REFERENCE_MODEL) for v in verdicts if v.final == "PASS")
            elif parts[0] == KIND_VERDICT:
                assert len(parts) == 2, "a verdict without an image was sent with image parts"
                seqs.append(Verdict.from_bytes(parts[1]).seq)
        assert sorted(seqs) == list(range(12))
        assert KIND_VERDICT_BATCH in kinds and len(kinds) < 12
    finally:
        rig.close()


def test_a_batch_of_mixed_frame_sizes_runs_per_size_and_each_frame_keeps_its_own_heatmap(tmp_path: Path) -> None:
    """A resizing adapter takes any frame size, so one batch can hold several: the model runs once per size and
    every verdict, kept image and heatmap stays with its own frame (a dark frame scores high, its map is hot:
    a map from a neighbour of the other size and level would be off by 140 grey levels)."""
    byo = tmp_path / "byo"
    byo.mkdir()
    rules_off = {name: {"enabled": False} for name in ("exposure", "presence", "blur", "statistics", "dark_spot")}
    rig = InferRig(tmp_path, anomalib_model(byo), infer={"max_batch": 4, "batch_wait_ms": 200},
              record={"pass_sample_every": 1, "live_view_hz": 0}, failsafe=rules_off)
    try:
        frames = [((100, 120), 60), ((80, 96), 200), ((100, 120), 200), ((80, 96), 60)]
        for seq, (shape, level) in enumerate(frames):
            header = rig.header(seq, height=shape[0], width=shape[1])
            rig.frames.send_multipart(encode_frame(header, np.full(shape, level, np.uint8)))
        got: dict[int, tuple[Verdict, float, tuple[int, ...], float]] = {}
        while len(got) < len(frames):
            assert rig.record.poll(10_000), f"only {sorted(got)}"
            parts = rig.record.recv_multipart()
            if parts[0] != KIND_VERDICT:
                continue
            v = Verdict.from_bytes(parts[1])
            assert len(parts) == 5, "the kept image and its heatmap travel with the verdict"
            header, pixels = decode_frame(parts[2:4])
            heat = cv2.imdecode(np.frombuffer(parts[4], np.uint8), cv2.IMREAD_GRAYSCALE)
            got[v.seq] = (v, float(heat.mean()), header.shape, float(pixels.mean()))
        assert len({v.timings_ms["inference"] for v, *_ in got.values()}) == 1, "one batch"
        for seq, (shape, level) in enumerate(frames):
            v, heat, kept_shape, kept_level = got[seq]
            assert (kept_shape, kept_level) == (shape, level)
            assert abs(heat - (255 - level)) <= 2, (seq, heat)  # the map is 1 - the frame's grey level
            assert v.score is not None
        assert got[0][0].score > got[1][0].score and got[3][0].score > got[2][0].score  # type: ignore[operator]
    finally:
        rig.close()


def test_wrong_sized_frame_fails_by_rule(rig: InferRig) -> None:
    rig.frames.send_multipart(encode_frame(rig.header(5, width=128, height=64), np.zeros((64, 128), np.uint8)))
    v = rig.next_verdict()
    assert (v.final, v.decided_by) == ("FAIL", "rule:frame_shape")
    assert "(64, 128)" in v.reasons[0] and "(256, 256)" in v.reasons[0]


def test_corrupt_model_gives_safe_verdicts_and_an_alarm(tmp_path: Path) -> None:
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(REFERENCE_MODEL.read_bytes()[:5000])  # truncated: a copy interrupted mid-write
    rig = InferRig(tmp_path, bad)
    try:
        kind, alarm = rig.receive()
        assert kind == KIND_ALARM and alarm["kind"] == "model_unavailable" and str(bad) in alarm["message"]
        ready = json.loads((rig.cfg.run_dir / "ready" / "infer[0]").read_text())
        assert ready["model_error"] and "cannot load" in ready["model_error"]
        for seq in range(3):
            rig.send_part(seq)
            v = rig.next_verdict()
            assert (v.seq, v.final, v.decided_by) == (seq, "FAIL", "rule:model_unavailable")
            assert str(bad) in v.reasons[0]
    finally:
        rig.close()
    assert config_path(rig.cfg.run_dir).exists()
