"""Acquisition-to-worker transport of 5-megapixel Mono8 frames over ipc://, against memcpy.

    .venv/bin/python benchmarks/transport.py --frames 300

A sender process PUSHes `[header, pixels]` exactly as acquire does (`encode_frame`, pixels without
a copy, acquire's kernel send buffer `frame_sndbuf`; also once with the OS default); the receiver
PULLs and decodes them as a worker does (`decode_frame`). In the same run, a plain memcpy
(`np.copyto`) of the same bytes gives the physical limit of this machine's memory. Reports medians
over `--repeat` interleaved runs: frames/s, GB/s, and the transport's share of the 20 ms frame
interval at 50 fps.
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

from linewatch.acquire import frame_sndbuf
from linewatch.messages import FrameHeader, decode_frame, encode_frame

W, H = 2448, 2048  # 5.0 MP, a common 2/3" sensor


def _sender(endpoint: str, frames: int, hwm: int, sndbuf: int) -> None:
    ctx: zmq.Context[Any] = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, hwm)
    if sndbuf:
        sock.setsockopt(zmq.SNDBUF, sndbuf)
    sock.connect(endpoint)
    pixels = np.random.default_rng(0).integers(0, 256, (H, W), np.uint8)
    for seq in range(frames + 1):  # frame 0 warms the connection up
        header = FrameHeader(camera="bench", stream="s", seq=seq, part_id=str(seq), t_capture_ns=0,
                             t_sent_ns=time.time_ns(), width=W, height=H, channels=1, dtype="uint8",
                             pixel_format="Mono8")
        sock.send_multipart(encode_frame(header, pixels), copy=False)
    sock.close(linger=-1)
    ctx.term()


def transport(frames: int, hwm: int, sndbuf: int) -> float:
    """Seconds per frame, sender process to decoded array in the receiver."""
    with tempfile.TemporaryDirectory() as tmp:
        endpoint = f"ipc://{Path(tmp) / 'frames.sock'}"
        ctx: zmq.Context[Any] = zmq.Context()
        sock = ctx.socket(zmq.PULL)
        sock.setsockopt(zmq.RCVHWM, hwm)
        sock.bind(endpoint)
        proc = mp.get_context("spawn").Process(target=_sender, args=(endpoint, frames, hwm, sndbuf))
        proc.start()
        decode_frame(sock.recv_multipart(copy=False))
        t0 = time.perf_counter()
        checksum = 0
        for _ in range(frames):
            header, px = decode_frame(sock.recv_multipart(copy=False))
            checksum += int(px[header.height // 2, header.width // 2])  # touch the pixels as a worker would
        elapsed = time.perf_counter() - t0
        proc.join()
        sock.close()
        ctx.term()
    return elapsed / frames


def memcpy(frames: int) -> float:
    """Seconds per frame for a plain copy of the same bytes into a preallocated buffer."""
    src = np.random.default_rng(1).integers(0, 256, (H, W), np.uint8)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    t0 = time.perf_counter()
    for _ in range(frames):
        np.copyto(dst, src)
    return (time.perf_counter() - t0) / frames


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--hwm", type=int, default=2, help="high-water mark (the line's infer.frame_queue)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each measurement; the median is reported")
    args = ap.parse_args()
    nbytes = W * H
    runs = [(transport(args.frames, args.hwm, 0), transport(args.frames, args.hwm, frame_sndbuf(nbytes)),
             memcpy(args.frames)) for _ in range(args.repeat)]  # interleaved, so load hits all three alike
    t_default, t_zmq, t_copy = (float(np.median(col)) for col in zip(*runs, strict=True))
    result = {
        "frame": f"{W}x{H} Mono8 ({nbytes / 1e6:.2f} MB)", "frames": args.frames, "repeat": args.repeat,
        "ipc_default_sndbuf_ms_per_frame": round(t_default * 1e3, 2),
        "ipc_frames_per_s": round(1 / t_zmq, 1), "ipc_GB_per_s": round(nbytes / t_zmq / 1e9, 2),
        "ipc_ms_per_frame": round(t_zmq * 1e3, 2),
        "memcpy_frames_per_s": round(1 / t_copy, 1), "memcpy_GB_per_s": round(nbytes / t_copy / 1e9, 2),
        "memcpy_ms_per_frame": round(t_copy * 1e3, 3),
        "ipc_vs_memcpy": round(t_zmq / t_copy, 1),
        "share_of_50fps_interval": round(t_zmq / 0.020, 3),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
