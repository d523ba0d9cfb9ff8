"""acquire: one per camera. Grabs frames, stamps them, PUSHes them to the inference workers.

It never waits for a slow consumer: when the frame queue is full the frame is dropped, counted and
recorded as not inspected (FAIL), so the part is still rejected. Every frame is first announced to
record (header only), which starts its deadline.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from typing import Any

import zmq

from linewatch import metrics
from linewatch.config import LineConfig
from linewatch.messages import (
    KIND_ANNOUNCE,
    KIND_VERDICT,
    Endpoints,
    FrameHeader,
    Verdict,
    encode_frame,
    now_ns,
)
from linewatch.process import AlarmSender, mark_ready
from linewatch.sources import open_source

log = logging.getLogger("acquire")


class Acquire:
    def __init__(self, cfg: LineConfig, index: int, stop: threading.Event):
        self.cfg, self.cam, self.stop = cfg, cfg.cameras[index], stop
        self.endpoints = Endpoints(cfg.run_dir)
        self.stream = secrets.token_hex(4)

    def run(self) -> None:
        ctx: zmq.Context[Any] = zmq.Context()
        frames = ctx.socket(zmq.PUSH)
        frames.setsockopt(zmq.SNDHWM, self.cfg.infer.frame_queue)
        frames.setsockopt(zmq.LINGER, 0)
        frames.bind(self.endpoints.frames(self.cam.name))
        self._wait_for_worker(frames, timeout_s=10.0)
        to_record = ctx.socket(zmq.PUSH)
        to_record.setsockopt(zmq.SNDHWM, 100_000)
        to_record.setsockopt(zmq.LINGER, 2000)
        to_record.connect(self.endpoints.record)
        alarms = AlarmSender(ctx, self.endpoints, f"acquire[{self.cam.name}]")
        source = open_source(self.cam)
        mark_ready(self.cfg.run_dir, f"acquire[{self.cam.name}]", stream=self.stream)
        log.info("camera %s streaming %dx%d at %.1f fps (stream %s)", self.cam.name, self.cam.width,
                 self.cam.height, self.cam.fps, self.stream)
        acquired, dropped = (metrics.FRAMES_ACQUIRED.labels(self.cam.name),
                             metrics.FRAMES_DROPPED.labels(self.cam.name, "queue_full"))
        period = 1.0 / self.cam.fps
        next_t = time.monotonic()
        seq = 0
        try:
            while not self.stop.is_set():
                if self.cam.max_frames and seq >= self.cam.max_frames:
                    self.stop.wait(0.2)
                    continue
                delay = next_t - time.monotonic()
                if delay > 0 and self.stop.wait(delay):
                    break
                next_t = max(next_t + period, time.monotonic() - period)
                t_capture = now_ns()
                grabbed = source.grab()
                px = grabbed.pixels
                header = FrameHeader(
                    camera=self.cam.name, stream=self.stream, seq=seq, part_id=f"{self.cam.name}-{self.stream}-{seq}",
                    t_capture_ns=t_capture, t_sent_ns=now_ns(), width=px.shape[1], height=px.shape[0],
                    channels=1 if px.ndim == 2 else px.shape[2], dtype=str(px.dtype),
                    pixel_format=grabbed.pixel_format, truth=grabbed.truth,
                )
                seq += 1
                acquired.inc()
                self._send(to_record, [KIND_ANNOUNCE, header.to_bytes()], alarms)
                try:
                    frames.send_multipart(encode_frame(header, px), flags=zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    dropped.inc()
                    verdict = Verdict.not_inspected(header, self.cfg.recipe, "frame queue full: inference too slow")
                    self._send(to_record, [KIND_VERDICT, verdict.to_bytes()], alarms)
        finally:
            source.close()
            alarms.close()
            frames.close()
            to_record.close()
            ctx.term()

    def _wait_for_worker(self, frames: zmq.Socket[Any], timeout_s: float) -> None:
        """Start streaming once a worker is connected, so the first parts are not dropped for nothing."""
        monitor = frames.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
        try:
            if not monitor.poll(int(timeout_s * 1000)):
                log.warning("no inference worker connected after %.0f s; frames will be dropped until one is",
                            timeout_s)
        finally:
            frames.disable_monitor()
            monitor.close(linger=0)

    @staticmethod
    def _send(sock: zmq.Socket[Any], parts: list[bytes], alarms: AlarmSender) -> None:
        try:
            sock.send_multipart(parts, flags=zmq.NOBLOCK)
        except zmq.Again:
            # record is 100k messages behind: the part cannot be traced, so say so loudly.
            log.error("record queue full: message lost")
            alarms.raise_alarm("record_backlog", "record is not keeping up; announcements are being lost", "critical")
