"""Emulator render rate on one core, and the accuracy of acquire's free-run rate control.

    .venv/bin/python benchmarks/emulator_render.py --frames 200

Renders 1024x1024 Mono8 frames of a scene with every camera effect on (noise, gain, vignetting,
distortion, defocus, motion blur, flicker, drift, dust, drops) with OpenCV held to one thread,
next to the default reference renderer. Then runs acquire's free-run loop (real sockets, the
default emulator) at set rates and reports the achieved rate from the frames' capture times.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from typing import Any

import cv2
import zmq

from linewatch.acquire.process import Acquire
from linewatch.config import parse_config
from linewatch.emulator.parts import PartEmulator, SceneEmulator
from linewatch.emulator.scene import Scene
from linewatch.wire import Endpoints, FrameHeader

ALL_EFFECTS = {
    "product": {"type": "round_part"},
    "defects": {"rate": 0.3, "types": ["scratch", "crack", "dent", "hole", "stain", "missing_feature"]},
    "camera": {"pixel_format": "Mono8", "gain_db": 6, "read_noise_e": 12, "defocus_px": 1.0, "vignetting": 0.3,
               "distortion_k1": -0.08, "flicker": 0.05, "drift": 0.05, "dust": 10, "drop_rate": 0.01,
               "incomplete_rate": 0.01},
    "line": {"speed_mm_s": 300, "spacing_mm": 80, "mm_per_px": 0.1},
    "scenarios": [{"at_s": 0, "over_s": 600, "lighting": 0.7}, {"at_s": 10, "shift_px": [10, -5]}],
}


def render_rate(frames: int, size: int) -> dict[str, float]:
    cv2.setNumThreads(1)
    scene = SceneEmulator(Scene.model_validate(ALL_EFFECTS), size, size, seed=1)
    ref = PartEmulator(size, size, seed=1)
    out = {}
    for name, render in (("scene_all_effects", scene.render), ("reference_part", ref.render)):
        render(0)
        t0 = time.perf_counter()
        for i in range(frames):
            render(i)
        out[f"{name}_fps"] = round(frames / (time.perf_counter() - t0), 1)
    return out


def rate_accuracy(fps: float, seconds: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = parse_config({"data_dir": tmp, "infer": {"frame_queue": 1000},
                            "cameras": [{"name": "r", "fps": fps, "width": 64, "height": 64}]})
        cfg.run_dir.mkdir(parents=True)
        ep = Endpoints(cfg.run_dir)
        ctx: zmq.Context[Any] = zmq.Context()
        record = ctx.socket(zmq.PULL)
        record.bind(ep.record)
        worker = ctx.socket(zmq.PULL)
        worker.connect(ep.frames("r"))
        stop = threading.Event()
        thread = threading.Thread(target=Acquire(cfg, 0, stop).run)
        thread.start()
        stamps: list[int] = []
        end = time.monotonic() + seconds + 1.0
        while time.monotonic() < end:
            if worker.poll(100):
                stamps.append(FrameHeader.from_bytes(worker.recv_multipart()[0]).t_capture_ns)
            while record.poll(0):
                record.recv_multipart()
        stop.set()
        thread.join()
        worker.close(0)
        record.close(0)
        ctx.term()
    skip = int(fps * 0.5)  # the first half second: start-up
    span = (stamps[-1] - stamps[skip]) / 1e9
    achieved = (len(stamps) - 1 - skip) / span
    return {"target_fps": fps, "achieved_fps": round(achieved, 2), "error_pct": round(100 * (achieved / fps - 1), 3)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--rates", default="20,100,500", help="free-run rates to check (comma separated)")
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    result: dict[str, Any] = {"size": f"{args.size}x{args.size} Mono8", "frames": args.frames,
                              **render_rate(args.frames, args.size)}
    result["rate_control"] = [rate_accuracy(float(r), args.seconds) for r in args.rates.split(",")]
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
