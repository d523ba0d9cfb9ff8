"""The shared-memory frame ring between acquire and the workers: real acquire, sockets, processes and signals."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from prometheus_client import REGISTRY

from linewatch.emulator.parts import PartEmulator
from linewatch.wire import KIND_VERDICT, Endpoints, FrameHeader, MessageError, SlotRelease, Verdict, encode_frame
from linewatch.wire.frame_ring import FrameReader, FrameRing, ring_path
from tests.acquire_harness import AcquireRig
from tests.conftest import REFERENCE_MODEL, InferRig, count_rows, db_rows, wait_for

CAMERA = {"name": "cam0", "fps": 100, "source": {"type": "emulator"}}


def _truth(seq: int) -> np.ndarray:
    """The pixels the default emulator camera renders for frame `seq` (256x256 Mono8, seed 0)."""
    return PartEmulator(256, 256, seed=0, defect_rate=0.2, exposure_us=5000.0).render(seq).pixels


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.mark.slow
@pytest.mark.parametrize("transport", ["shm", "inline"])
def test_line_decides_and_records_every_frame_once_with_its_own_pixels(line: Any, transport: str) -> None:
    frames = 120
    ln = line(cameras=[{"name": "cam0", "fps": 40, "max_frames": frames}],
              infer={"transport": transport, "frame_queue": 16}, record={"pass_sample_every": 1}).start()
    run_dir = ln.data_dir / "run"
    rings = ring_path(run_dir, "cam0", "*")
    assert len(list(rings.parent.glob(rings.name))) == (1 if transport == "shm" else 0)
    wait_for(lambda: count_rows(ln.data_dir) >= frames, 90, f"{frames} verdicts")
    ln.stop()
    assert not list(rings.parent.glob(rings.name)), "the ring is removed when the line stops"
    rows = db_rows(ln.data_dir, "SELECT * FROM inspections ORDER BY seq")
    assert [r["seq"] for r in rows] == list(range(frames))
    for r in rows:
        assert r["decided_by"] == "model" or r["decided_by"].startswith("rule:"), dict(r)
        kept = cv2.imread(str(ln.data_dir / r["image"]), cv2.IMREAD_UNCHANGED)
        assert kept is not None and np.array_equal(kept, _truth(r["seq"])), f"frame {r['seq']}: kept image differs"


def test_ring_full_drops_frames_as_not_inspected_and_released_slots_come_back(tmp_path: Path) -> None:
    rig = AcquireRig(tmp_path, CAMERA, infer={"frame_slots": 3}, record={"deadline_ms": 60_000}).start()
    reader = FrameReader(rig.ctx, Endpoints(rig.cfg.run_dir))
    try:
        rig.pump_until(lambda: len(rig.frames) >= 3 and len(rig.verdicts) >= 3, 10, "a full ring")
        held = rig.frames[:3]
        assert sorted(h.slot for h in held if h.slot is not None) == [0, 1, 2]
        for h in held:
            _, px = reader.decode([h.to_bytes()])
            assert np.array_equal(px, _truth(h.seq))
        dropped = rig.verdicts[:]
        assert len(rig.frames) == 3, "nothing is sent while every slot is held"
        for v in dropped:
            assert (v.final, v.decided_by) == ("FAIL", "not_inspected")
            assert v.reasons == ["frame ring full: all 3 slots held by inference workers (inference too slow)"]
        assert _sample("linewatch_frames_dropped_total", camera="cam0", reason="ring_full") >= len(dropped)
        for h in held:
            assert reader.finish(h) is None
        reader.flush()
        rig.pump_until(lambda: len(rig.frames) > 3, 10, "frames in the released slots")
        again = rig.frames[3]
        assert again.seq > max(v.seq for v in dropped)
        assert again.slot in (0, 1, 2) and again.gen is not None and again.gen >= 2
        assert np.array_equal(reader.decode([again.to_bytes()])[1], _truth(again.seq))
        # The camera keeps running: wait for a moment when no frame is between its announcement and its outcome.
        rig.pump_until(lambda: {h.seq for h in rig.frames} | {v.seq for v in rig.verdicts}
                       == {h.seq for h in rig.announced}, 10, "a frame or a drop for every announced frame")
    finally:
        reader.close()
        rig.close()
    assert not {h.seq for h in rig.frames} & {v.seq for v in rig.verdicts}, \
        "a frame is either sent or recorded as dropped, never both"


_WORKER = """
import os, sys, time
from pathlib import Path
import numpy as np, zmq
from linewatch.emulator.parts import PartEmulator
from linewatch.wire.frame_ring import FrameReader
from linewatch.wire import Endpoints
ep, hold = Endpoints(Path(sys.argv[1])), int(sys.argv[2])
ctx = zmq.Context()
pull = ctx.socket(zmq.PULL)
pull.setsockopt(zmq.RCVHWM, 1)
pull.connect(ep.frames("cam0"))
reader, emu, n = FrameReader(ctx, ep), PartEmulator(256, 256, seed=0, defect_rate=0.2, exposure_us=5000.0), 0
while True:
    h, px = reader.decode(pull.recv_multipart(copy=False))
    ok = bool(np.array_equal(px, emu.render(h.seq).pixels))
    n += 1
    if not hold:
        ok = ok and reader.finish(h) is None
        reader.flush()
    os.write(1, f"{h.seq} {h.slot} {ok}\\n".encode())  # one write a line: a SIGKILL never leaves half of one
    if hold and n >= hold:
        os.write(1, b"holding\\n")
        time.sleep(600)
"""


class _Worker:
    """A worker process reading frames from the ring; `hold` > 0: it keeps that many slots and never releases."""

    def __init__(self, run_dir: Path, hold: int):
        self.proc = subprocess.Popen([sys.executable, "-c", _WORKER, str(run_dir), str(hold)],
                                     stdout=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.strip())

    def frames(self) -> list[tuple[int, int, bool]]:
        lines = [ln.split() for ln in self.lines if ln != "holding"]
        assert all(len(fields) == 3 for fields in lines), f"the worker wrote something else: {self.lines}"
        return [(int(a), int(b), c == "True") for a, b, c in lines]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.reader.join(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def test_slots_of_a_killed_worker_are_reclaimed_and_the_line_goes_on(tmp_path: Path) -> None:
    rig = AcquireRig(tmp_path, {**CAMERA, "fps": 50}, worker=False, infer={"frame_slots": 4},
                     record={"deadline_ms": 300})
    holder = _Worker(rig.cfg.run_dir, hold=4)
    rig.start()
    second: _Worker | None = None
    reclaimed_before = _sample("linewatch_frame_slots_reclaimed_total", camera="cam0")
    try:
        rig.pump_until(lambda: "holding" in holder.lines, 30, "the first worker to hold 4 slots")
        rig.pump_until(lambda: any("frame ring full" in v.reasons[0] for v in rig.verdicts), 10, "a full ring")
        holder.kill()
        second = _Worker(rig.cfg.run_dir, hold=0)
        rig.pump_until(lambda: len(second.frames()) >= 20, 30, "the line to go on with a new worker")
    finally:
        holder.kill()
        if second is not None:
            second.kill()
        rig.close()
    assert _sample("linewatch_frame_slots_reclaimed_total", camera="cam0") - reclaimed_before >= 4
    got = holder.frames() + second.frames()
    assert all(ok for _, _, ok in got), "every frame read from a slot has the pixels captured for it"
    assert {slot for _, slot, _ in got} <= {0, 1, 2, 3}
    sent = [seq for seq, _, _ in got]
    assert len(sent) == len(set(sent))
    dropped = {v.seq for v in rig.verdicts}
    assert not set(sent) & dropped
    assert all(v.decided_by == "not_inspected" and v.reasons[0].startswith(("frame ring full", "frame queue full"))
               for v in rig.verdicts)


def test_a_frame_whose_slot_was_reclaimed_mid_inspection_is_not_trusted(tmp_path: Path) -> None:
    rig = AcquireRig(tmp_path, CAMERA, infer={"frame_slots": 2}, record={"deadline_ms": 200}).start()
    reader = FrameReader(rig.ctx, Endpoints(rig.cfg.run_dir))
    try:
        rig.pump_until(lambda: len(rig.frames) >= 1, 10, "a frame")
        first = rig.frames[0]
        _, px = reader.decode([first.to_bytes()])
        before = px.copy()
        assert np.array_equal(before, _truth(first.seq))
        rig.pump_until(lambda: any(h.slot == first.slot and h.seq != first.seq for h in rig.frames), 10,
                       "the slot to be reclaimed and reused")
        reason = reader.finish(first)
        assert reason is not None and f"frame slot {first.slot} was reused during inspection" in reason
        assert not np.array_equal(px, before), "the slot now holds another part: a verdict on it would be wrong"
    finally:
        reader.close()
        rig.close()


def test_a_worker_process_reads_slots_keeps_images_and_hands_slots_back(tmp_path: Path) -> None:
    rig = InferRig(tmp_path, REFERENCE_MODEL, record={"pass_sample_every": 1})
    ring = FrameRing(rig.cfg.run_dir, "cam0", "test", 4, 256 * 256)
    ring.listen(rig.ctx, Endpoints(rig.cfg.run_dir).releases("cam0"))
    try:
        for seq in range(3):
            pixels = rig.emu.render(seq).pixels
            placed = ring.place(pixels)
            assert placed is not None
            rig.frames.send_multipart([rig.header(seq, slot=placed[0], gen=placed[1]).to_bytes()])
            rig.frames.send_multipart(encode_frame(rig.header(100 + seq), pixels))  # the same part, inline
        by_seq: dict[int, tuple[Verdict, bytes]] = {}
        while len(by_seq) < 6:
            assert rig.record.poll(10_000), "no verdict from the worker"
            parts = rig.record.recv_multipart()
            if parts[0] == KIND_VERDICT:
                v = Verdict.from_bytes(parts[1])
                by_seq[v.seq] = (v, parts[3])
        for seq in range(3):
            shm, inline = by_seq[seq], by_seq[100 + seq]
            assert shm[0].decided_by in ("model", "rule:confidence_band")
            assert shm[0].probs == inline[0].probs, "the model saw the same pixels through both transports"
            assert shm[1] == rig.emu.render(seq).pixels.tobytes() == inline[1]
        def all_free() -> bool:
            ring.collect()
            return len(ring.free) == 4

        wait_for(all_free, 10, "the worker to hand the slots back")
        rig.frames.send_multipart([rig.header(9, slot=4, gen=1).to_bytes()])
        v = rig.next_verdict()
        assert (v.seq, v.decided_by) == (9, "not_inspected") and "field 'slot' is 4" in v.reasons[0]
        placed = ring.place(rig.emu.render(10).pixels)
        assert placed is not None  # the header's generation is stale: the slot has since held another frame
        rig.frames.send_multipart([rig.header(10, slot=placed[0], gen=placed[1] - 1).to_bytes()])
        v = rig.next_verdict()
        assert (v.seq, v.final, v.decided_by) == (10, "FAIL", "not_inspected") and v.worker == "infer[0]"
        assert f"frame slot {placed[0]} was reused during inspection" in v.reasons[0]
        assert rig.proc.poll() is None
    finally:
        ring.close()
        rig.close()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"slot": -1, "gen": 1}, r"(\$\.|')slot"),
        ({"slot": "3", "gen": 1}, r"(\$\.|')slot"),
        ({"slot": True, "gen": 1}, r"(\$\.|')slot"),
        ({"slot": 1}, r"(\$\.|')gen"),
        ({"gen": 4}, r"(\$\.|')slot"),
        ({"slot": 1, "gen": 0}, r"(\$\.|')gen"),
        ({"slot": 1, "gen": 1.5}, r"(\$\.|')gen"),
        ({"v": 1, "slot": 1, "gen": 1}, r"(\$\.|')slot"),
        ({"v": 3}, "version"),
    ],
)
def test_malformed_slot_fields_are_rejected_naming_the_field(change: dict[str, Any], field: str) -> None:
    h = FrameHeader("cam0", "s", 1, "p1", 1, 1, 8, 8, 1, "uint8", "Mono8")
    raw = json.dumps({**json.loads(h.to_bytes()), **change}).encode()
    with pytest.raises(MessageError, match=field):
        FrameHeader.from_bytes(raw)


def test_slots_out_of_the_ring_are_rejected_naming_the_field(tmp_path: Path) -> None:
    ring = FrameRing(tmp_path, "cam0", "s1", 2, 64)
    reader = FrameReader(None, Endpoints(tmp_path))  # type: ignore[arg-type]  # decoding needs no socket
    try:
        h = FrameHeader("cam0", "s1", 1, "p1", 1, 1, 8, 8, 1, "uint8", "Mono8", slot=1, gen=1)
        assert reader.decode([h.to_bytes()])[1].shape == (8, 8)
        cases = [(h.__class__(**{**h.__dict__, "slot": 2}), "field 'slot' is 2"),
                 (h.__class__(**{**h.__dict__, "width": 9}), "'width'"),
                 (h.__class__(**{**h.__dict__, "stream": "gone"}), "field 'stream'")]
        for bad, field in cases:
            with pytest.raises(MessageError, match=field):
                reader.decode([bad.to_bytes()])
        with pytest.raises(MessageError, match="'slot' is missing"):
            reader.decode([h.__class__(**{**h.__dict__, "slot": None, "gen": None}).to_bytes()])
        with pytest.raises(MessageError, match=r"slot release: Expected `int` >= 0 - at `\$\.slots\[0\]\[1\]`"):
            SlotRelease.from_bytes(b'{"camera":"cam0","stream":"s1","slots":[[1,-2]]}')
    finally:
        ring.close()


def test_sources_convert_straight_into_the_ring_slot(tmp_path: Path) -> None:
    """The one copy: the conversion out of the driver buffer (GenTL) or the emulator's render lands in the slot."""
    from linewatch.acquire.sources import open_source
    from linewatch.config import CameraConfig
    from tests.test_genicam import _camera

    cameras = [CameraConfig.model_validate(_camera()),  # viky RGBa8 -> Mono8 through cv2, 256x256 (profile)
               CameraConfig.model_validate({"name": "rgb", "pixel_format": "RGB8", "source": {"type": "emulator"}})]
    for cam in cameras:
        ring = FrameRing(tmp_path, cam.name, "s", 2, 256 * 256 * 3)
        source = open_source(cam, ring.view)
        try:
            grabbed = None
            while grabbed is None:
                grabbed = source.grab(1.0)
            assert np.shares_memory(grabbed.pixels, ring.map.base), f"{cam.name}: converted outside the ring"
            placed = ring.place(grabbed.pixels)
            assert placed is not None
            assert np.array_equal(ring.map.view(placed[0], grabbed.pixels.shape, np.uint8), grabbed.pixels)
        finally:
            source.close()
            ring.close()
