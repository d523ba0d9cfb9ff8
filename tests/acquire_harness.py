"""acquire in a thread with real ZeroMQ sockets standing in for record and one inference worker."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import zmq

from linewatch.acquire.process import Acquire
from linewatch.config import LineConfig, parse_config
from linewatch.wire import KIND_ALARM, KIND_ANNOUNCE, KIND_VERDICT, Alarm, Endpoints, FrameHeader, Verdict
from linewatch.wire.ready import first_frame_waits_for, mark_ready


class AcquireRig:
    """Collects what acquire sends: announcements, verdicts and alarms (record) and frames (a worker)."""

    def __init__(self, tmp: Path, camera: dict[str, Any], frame_queue: int = 50, worker: bool = True,
                 **sections: dict[str, Any]):
        """`worker=False`: no in-process worker socket (a test connects its own worker processes);
        `sections` are merged into the config (e.g. infer={"frame_slots": 4}, record={...})."""
        infer = {"frame_queue": frame_queue, **sections.pop("infer", {})}
        self.cfg: LineConfig = parse_config({"data_dir": str(tmp), "cameras": [camera], "infer": infer, **sections})
        self.cfg.run_dir.mkdir(parents=True, exist_ok=True)
        ep = Endpoints(self.cfg.run_dir)
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.record = self.ctx.socket(zmq.PULL)
        self.record.bind(ep.record)
        self.worker = self.ctx.socket(zmq.PULL)
        if worker:
            self.worker.connect(ep.frames(self.cfg.cameras[0].name))
        for name in first_frame_waits_for(self.cfg):  # the rig is the store (and the PLC) acquire waits for
            mark_ready(self.cfg.run_dir, name)
        self.announced: list[FrameHeader] = []
        self.verdicts: list[Verdict] = []
        self.alarms: list[Alarm] = []
        self.frames: list[FrameHeader] = []
        self.stop = threading.Event()
        self.acquire = Acquire(self.cfg, 0, self.stop)
        self.thread = threading.Thread(target=self.acquire.run, daemon=True)

    def start(self) -> AcquireRig:
        self.thread.start()
        return self

    def pump(self, seconds: float) -> None:
        """Receive for `seconds`."""
        end = time.monotonic() + seconds
        poller = zmq.Poller()
        poller.register(self.record, zmq.POLLIN)
        poller.register(self.worker, zmq.POLLIN)
        while (left := end - time.monotonic()) > 0:
            ready = dict(poller.poll(int(left * 1000) + 1))
            for sock in (self.worker, self.record):
                if sock not in ready:
                    continue
                parts = sock.recv_multipart()
                if sock is self.worker:
                    self.frames.append(FrameHeader.from_bytes(parts[0]))
                elif parts[0] == KIND_ANNOUNCE:
                    self.announced.append(FrameHeader.from_bytes(parts[1]))
                elif parts[0] == KIND_VERDICT:
                    self.verdicts.append(Verdict.from_bytes(parts[1]))
                elif parts[0] == KIND_ALARM:
                    self.alarms.append(Alarm.from_bytes(parts[1]))

    def pump_until(self, predicate: Any, timeout: float, what: str) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.pump(0.05)
            if predicate():
                return
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")

    def close(self) -> None:
        self.stop.set()
        if self.thread.ident is not None:  # started (a test may also call acquire.run() itself)
            self.thread.join(10)
            assert not self.thread.is_alive(), "acquire did not stop"
        self.record.close(0)
        self.worker.close(0)
        self.ctx.term()
