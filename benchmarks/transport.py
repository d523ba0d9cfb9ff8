"""Acquisition-to-worker transport over ipc://: inline ZeroMQ and the shared-memory ring, against memcpy.

    .venv/bin/python benchmarks/transport.py --frames 300 --repeat 3

For 5 MP Mono8 (2448x2048) and 256², 512², 1024² Mono8, in one run and interleaved so that load hits
all alike: a plain memcpy (`np.copyto`) of the same bytes (the physical limit); the inline path
(`[header, pixels]` as acquire sends it with `infer.transport: inline`: `encode_frame`, pixels not
copied, acquire's kernel send buffer; the receiver decodes with `decode_frame`); and the shm path
(`infer.transport: shm`: the sender writes each frame into a free `FrameRing` slot (the source's one
copy, counted here although the inline path gets its pixels for free) and sends the header alone;
the receiver maps the ring with `FrameReader`, reads the frame in place, checks its generation and
hands the slot back, batched like a worker's releases: up to 4 frames, or fewer when no more are
waiting). Reports medians over
`--repeat` runs: ms per frame, frames/s, GB/s, the share of the 20 ms interval at 50 fps and of the
interval at `--fps` (the line benchmark's default part rate), and the ratios between the paths.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from linewatch.acquire.process import frame_sndbuf
from linewatch.config import InferConfig
from linewatch.wire import Endpoints, FrameHeader, decode_frame, encode_frame
from linewatch.wire.frame_ring import FrameReader, FrameRing, default_slots

SIZES = {"5MP": (2448, 2048), "256²": (256, 256), "512²": (512, 512), "1024²": (1024, 1024)}
CAMERA = "bench"


def _header(seq: int, w: int, h: int, slot: tuple[int, int] | None = None) -> FrameHeader:
    return FrameHeader(camera=CAMERA, stream="s", seq=seq, part_id=str(seq), t_capture_ns=0,
                       t_sent_ns=time.time_ns(), width=w, height=h, channels=1, dtype="uint8",
                       pixel_format="Mono8", slot=slot[0] if slot else None, gen=slot[1] if slot else None)


def _inline_sender(run_dir: str, frames: int, hwm: int, w: int, h: int) -> None:
    ctx: zmq.Context[Any] = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.SNDBUF, frame_sndbuf(w * h))
    sock.connect(Endpoints(Path(run_dir)).frames(CAMERA))
    pixels = np.random.default_rng(0).integers(0, 256, (h, w), np.uint8)
    for seq in range(frames + 1):  # frame 0 warms the connection up
        sock.send_multipart(encode_frame(_header(seq, w, h), pixels), copy=False)
    sock.close(linger=-1)
    ctx.term()


def _shm_sender(run_dir: str, frames: int, hwm: int, w: int, h: int) -> None:
    ctx: zmq.Context[Any] = zmq.Context()
    ep = Endpoints(Path(run_dir))
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.connect(ep.frames(CAMERA))
    ring = FrameRing(Path(run_dir), CAMERA, "s", default_slots(InferConfig(frame_queue=hwm), 1), w * h, 60.0)
    ring.listen(ctx, ep.releases(CAMERA))
    assert ring.releases is not None
    pixels = np.random.default_rng(0).integers(0, 256, (h, w), np.uint8)
    for seq in range(frames + 1):
        while (view := ring.view((h, w))) is None:  # ring full: wait for the receiver's releases
            ring.releases.poll(10)
        np.copyto(view, pixels)  # the source's conversion writes the frame into its slot: the one copy
        placed = ring.place(view)
        sock.send(_header(seq, w, h, placed).to_bytes())
    end = time.monotonic() + 10
    while len(ring.free) < ring.slots and time.monotonic() < end:  # keep the ring until everything is read
        ring.releases.poll(10)
        ring.collect()
    sock.close(linger=-1)
    ring.close()
    ctx.term()


def transport(shm: bool, frames: int, hwm: int, w: int, h: int) -> float:
    """Seconds per frame, sender process to a decoded array in the receiver (a worker's side)."""
    with tempfile.TemporaryDirectory() as tmp:
        ep = Endpoints(Path(tmp))
        ctx: zmq.Context[Any] = zmq.Context()
        sock = ctx.socket(zmq.PULL)
        sock.setsockopt(zmq.RCVHWM, hwm)
        sock.bind(ep.frames(CAMERA))
        reader = FrameReader(ctx, ep)
        target = _shm_sender if shm else _inline_sender
        proc = mp.get_context("spawn").Process(target=target, args=(tmp, frames, hwm, w, h))
        proc.start()

        pending = 0

        def receive() -> int:
            nonlocal pending
            parts = sock.recv_multipart(copy=False)
            header, px = reader.decode(parts) if shm else decode_frame(parts)
            value = int(px[header.height // 2, header.width // 2])  # touch the pixels as a worker would
            if shm:
                assert reader.finish(header) is None
                pending += 1
                if pending == 4 or not sock.poll(0):  # a worker hands its batch's slots back together
                    reader.flush()
                    pending = 0
            return value

        receive()
        t0 = time.perf_counter()
        checksum = sum(receive() for _ in range(frames))
        elapsed = time.perf_counter() - t0
        proc.join()
        assert checksum >= 0
        reader.close()
        sock.close()
        ctx.term()
    return elapsed / frames


def _buffer(w: int, h: int, offset: int) -> np.ndarray:
    raw = np.empty(w * h + 2 * 4096, np.uint8)
    start = -raw.__array_interface__["data"][0] % 4096 + offset
    return raw[start:start + w * h].reshape(h, w)


def memcpy(frames: int, w: int, h: int) -> float:
    """Seconds per frame for a plain copy of the same bytes into a preallocated buffer (source and
    destination half a page apart: equal page offsets alias in the CPU's store buffer, up to 10x slower)."""
    src = _buffer(w, h, 0)
    src[:] = np.random.default_rng(1).integers(0, 256, (h, w), np.uint8)
    dst = _buffer(w, h, 2048)
    np.copyto(dst, src)
    t0 = time.perf_counter()
    for _ in range(frames):
        np.copyto(dst, src)
    return (time.perf_counter() - t0) / frames


def _figures(t: float, nbytes: int, fps: float) -> dict[str, float]:
    return {"ms_per_frame": round(t * 1e3, 4), "frames_per_s": round(1 / t, 1),
            "GB_per_s": round(nbytes / t / 1e9, 2), "pct_of_50fps_interval": round(t * 50 * 100, 2),
            f"pct_of_{fps:g}fps_interval": round(t * fps * 100, 2)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=300, help="frames per 5 MP run (smaller frames: more)")
    ap.add_argument("--hwm", type=int, default=2, help="high-water mark (the line's infer.frame_queue)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each measurement; the median is reported")
    ap.add_argument("--fps", type=float, default=100.0, help="a second part rate to express the cost against")
    ap.add_argument("--sizes", default=",".join(SIZES), help=f"comma-separated subset of {', '.join(SIZES)}")
    args = ap.parse_args()
    big = SIZES["5MP"][0] * SIZES["5MP"][1]
    results: dict[str, Any] = {"load_average_before": Path("/proc/loadavg").read_text().split()[:3]}
    for name in args.sizes.split(","):
        w, h = SIZES[name]
        nbytes = w * h
        n = args.frames * min(10, max(1, big // nbytes))
        runs = [(memcpy(n, w, h), transport(False, n, args.hwm, w, h), transport(True, n, args.hwm, w, h))
                for _ in range(args.repeat)]  # interleaved, so load hits all three alike
        t_copy, t_inline, t_shm = (float(np.median(col)) for col in zip(*runs, strict=True))
        results[name] = {
            "frame": f"{w}x{h} Mono8 ({nbytes / 1e6:.3f} MB)", "frames": n,
            "memcpy": _figures(t_copy, nbytes, args.fps), "inline": _figures(t_inline, nbytes, args.fps),
            "shm": _figures(t_shm, nbytes, args.fps),
            "inline_vs_memcpy": round(t_inline / t_copy, 2), "shm_vs_memcpy": round(t_shm / t_copy, 2),
            "inline_vs_shm": round(t_inline / t_shm, 2),
        }
    results["load_average_after"] = Path("/proc/loadavg").read_text().split()[:3]
    print(json.dumps(results, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
