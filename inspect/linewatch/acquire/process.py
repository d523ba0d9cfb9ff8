"""acquire: one per camera. Grabs frames, stamps them, PUSHes them to the inference workers.

It never waits for a slow consumer: when the frame queue is full the frame is dropped, counted and
recorded as not inspected (FAIL), so the part is still rejected. Every frame is first announced to
record (header only), which starts its deadline. Frames the camera lost (a gap in its frame ids),
delivered incomplete, or never delivered after a trigger are recorded the same way, each with its
own sequence number and reason. A lost camera raises an alarm and is reconnected with backoff.
Commands (software trigger, recipe, offline) arrive on the camera's control socket (`Endpoints.control`):
every part is stamped with the recipe in force at its capture, and while the camera is offline (or paused) each
part is recorded as not inspected with that reason, never dropped.
With `infer.transport: shm` the pixels go to a slot of the camera's frame ring (`wire/frame_ring.py`) and
only the header travels over ZeroMQ; no free slot means the frame is dropped and recorded, as above.
"""

from __future__ import annotations

import logging
import math
import secrets
import threading
import time
from typing import Any, cast

import numpy as np
import zmq

from linewatch import metrics
from linewatch.acquire.sources import CameraLost, FrameSource, Grabbed, SourceEnded, SourceError, open_source
from linewatch.clock import Moment, mono_ns
from linewatch.config import GenicamSource, LineConfig
from linewatch.store.queries import current_recipe, offline_cameras
from linewatch.wire import (
    KIND_ANNOUNCE,
    KIND_VERDICT,
    CameraCommand,
    CameraReply,
    Endpoints,
    FrameHeader,
    MessageError,
    PixelDtype,
    Verdict,
    encode_frame,
)
from linewatch.wire.channels import AlarmSender
from linewatch.wire.endpoints import tcp_frames
from linewatch.wire.frame_ring import FrameRing, RingError, clear_stale_rings, default_slots
from linewatch.wire.ready import first_frame_waits_for, mark_ready, wait_until_ready

log = logging.getLogger("acquire")
GRAB_SLICE_S = 0.1  # longest wait inside the source before the loop checks stop and commands
TRIGGER_TIMEOUT_S = 2.0  # a software trigger without a frame by then is a part not inspected
IDLE_LOOK_S = 0.001  # software trigger mode: how long acquire looks for a frame between commands
CATCH_UP_S = 0.02  # free-run makes up a late frame within this much time, so the mean rate holds


def frame_sndbuf(frame_bytes: int) -> int:
    """Kernel send buffer for the frame socket: about one large frame, so a multi-megapixel frame goes out
    in few system calls (benchmarks/transport.py) while the high-water mark still bounds the queue."""
    return max(256 * 1024, frame_bytes)


class Acquire:
    def __init__(self, cfg: LineConfig, index: int, stop: threading.Event):
        self.cfg, self.cam, self.index, self.stop = cfg, cfg.cameras[index], index, stop
        self.endpoints = Endpoints(cfg.run_dir)
        self.stream = secrets.token_hex(4)
        self.seq = 0
        self.recipe = cfg.recipe  # the latest switch in the audit log replaces it at start (`run`)
        self.offline: str | None = None  # `offline` (PLC) or `paused` (HMI): parts are not inspected
        self._last_frame_id: int | None = None
        self.source: FrameSource | None = None  # open while running (tests reach the camera through it)
        self.ring: FrameRing | None = None  # the shared-memory frame ring (transport shm)
        src = self.cam.source
        self.backoff = src.reconnect_backoff_s if isinstance(src, GenicamSource) else (0.2, 10.0)

    def run(self) -> None:
        ctx: zmq.Context[Any] = zmq.Context()
        self.frames = ctx.socket(zmq.PUSH)
        self.frames.setsockopt(zmq.SNDHWM, self.cfg.infer.frame_queue)
        self.frames.setsockopt(zmq.LINGER, 0)
        self.frames.setsockopt(zmq.SNDBUF, frame_sndbuf(self.cam.width * self.cam.height * 3))
        self.frames.bind(self.endpoints.frames(self.cam.name))
        zap = None
        remote = self.cfg.infer.remote
        if remote.enabled:  # remote workers take this camera's frames over TCP too: enrolled ones, unless auth none
            if remote.auth == "curve":
                from linewatch.wire.remote_keys import serve_remote

                zap = serve_remote(self.frames, self.cfg.remote_keys_dir, f"acquire[{self.cam.name}]")
            self.frames.bind(tcp_frames(remote.host, remote.port, self.index))
        self._wait_for_worker(self.frames, timeout_s=10.0)
        self.to_record = ctx.socket(zmq.PUSH)
        self.to_record.setsockopt(zmq.SNDHWM, 100_000)
        self.to_record.setsockopt(zmq.LINGER, 2000)
        self.to_record.connect(self.endpoints.record)
        self.control = ctx.socket(zmq.REP)
        self.control.setsockopt(zmq.LINGER, 0)
        self.control.bind(self.endpoints.control(self.cam.name))
        self.alarms = AlarmSender(ctx, self.endpoints, f"acquire[{self.cam.name}]")
        self.acquired = metrics.FRAMES_ACQUIRED.labels(self.cam.name)
        self.ring = self._open_ring(ctx)
        switched = current_recipe(self.cfg.data_dir)
        if switched is not None and (not self.cfg.recipes or self.cfg.find_recipe(switched)):
            self.recipe = switched
        self.offline = offline_cameras(self.cfg.data_dir).get(self.cam.name)
        source: FrameSource | None = None
        try:
            source = self.source = self._open()
            if source is None:
                return
            mark_ready(self.cfg.run_dir, f"acquire[{self.cam.name}]", stream=self.stream, trigger=self.cam.trigger)
            log.info("camera %s streaming %dx%d, %s at %.1f fps (stream %s)", self.cam.name, self.cam.width,
                     self.cam.height, self.cam.trigger, self.cam.fps, self.stream)
            self._loop(source)
        finally:
            if source is not None:
                source.close()
            for sock in (self.alarms, self.frames, self.to_record, self.control):
                sock.close()
            if self.ring is not None:
                self.ring.close()
            if zap is not None:
                zap.stop()
            ctx.term()

    def _open_ring(self, ctx: zmq.Context[Any]) -> FrameRing | None:
        """The camera's frame ring (transport shm); without shared memory the line goes on inline, alarmed."""
        if self.cfg.infer.transport != "shm":
            return None
        clear_stale_rings(self.cfg.run_dir, self.cam.name)
        slot_bytes = self.cam.width * self.cam.height * (1 if self.cam.pixel_format == "Mono8" else 3)
        try:
            slots = default_slots(self.cfg.infer, self.cfg.cpu_plan.workers)
            ring = FrameRing(self.cfg.run_dir, self.cam.name, self.stream, slots, slot_bytes,
                             reclaim_after_s=self.cfg.record.deadline_ms / 1000 + 1.0)
        except RingError as exc:
            self.alarms.raise_alarm("frame_ring", f"camera {self.cam.name}: {exc}; frames travel inline", "warning")
            return None
        ring.listen(ctx, self.endpoints.releases(self.cam.name))
        return ring

    def _open(self) -> FrameSource | None:
        """The source; a camera absent at start is alarmed and retried like a lost one."""
        delay, alarmed = self.backoff[0], False
        while not self.stop.is_set():
            try:
                return open_source(self.cam, self.ring.view if self.ring is not None else None)
            except CameraLost as exc:
                if not alarmed:  # the line runs without it (alarmed); its frames start when it appears
                    self.alarms.raise_alarm("camera_lost", f"camera {self.cam.name}: {exc}", "critical")
                    mark_ready(self.cfg.run_dir, f"acquire[{self.cam.name}]", stream=self.stream, camera="away")
                    alarmed = True
                self.stop.wait(delay)
                delay = min(delay * 2, self.backoff[1])
            except SourceError as exc:
                self.alarms.raise_alarm("camera_config", f"camera {self.cam.name}: {exc}", "critical")
                log.error("camera %s cannot be used: %s", self.cam.name, exc)
                raise SystemExit(2) from None
        return None

    def _loop(self, source: FrameSource) -> None:
        period = 1.0 / self.cam.fps
        pace = self.cam.trigger == "free_run" and not source.paced_by_device
        next_t = time.monotonic()
        ended = False
        while not self.stop.is_set():
            self._serve_commands(source, 0)
            if ended or (self.cam.max_frames and self.seq >= self.cam.max_frames):
                self._serve_commands(source, 200)
                continue
            if pace:  # one wake-up a frame (a wake-up costs ~0.1 ms of CPU on a VM): up to a millisecond late
                delay = next_t - time.monotonic()
                if delay > 0:
                    self._serve_commands(source, math.ceil(delay * 1000))
                    if time.monotonic() < next_t:
                        continue  # a command came first
                next_t = max(next_t + period, time.monotonic() - max(period, CATCH_UP_S))
            if self.cam.trigger == "software":
                self._serve_commands(source, int(GRAB_SLICE_S * 1000))
            try:  # in software mode a short look: watches the camera and records any unasked-for frame
                grabbed = source.grab(IDLE_LOOK_S if self.cam.trigger == "software" else GRAB_SLICE_S)
            except CameraLost as exc:
                self._recover(source, exc)
                continue
            except SourceEnded as exc:
                log.info("%s; waiting for stop", exc)
                ended = True
                continue
            if grabbed is not None:
                self._emit(grabbed)

    def _serve_commands(self, source: FrameSource, timeout_ms: int) -> None:
        if not self.control.poll(max(0, timeout_ms)):
            return
        parts = self.control.recv_multipart()  # all of it: REP cannot answer a request it has read only part of
        try:
            if len(parts) != 1:
                raise MessageError(f"camera command: expected 1 part, got {len(parts)}")
            cmd = CameraCommand.from_bytes(parts[0])
            reply = self._trigger(source, cmd.part_id) if cmd.cmd == "trigger" else self._set(cmd)
        except MessageError as exc:
            metrics.MESSAGES_REJECTED.labels("acquire", str(exc).split(":")[0]).inc()
            reply = CameraReply(ok=False, error=str(exc))
        self.control.send(reply.to_bytes())

    def _set(self, cmd: CameraCommand) -> CameraReply:
        """A recipe or offline switch: it holds from the next part on (the reply's seq)."""
        if cmd.cmd == "set_recipe":
            if cmd.recipe is None or (self.cfg.recipes and not self.cfg.find_recipe(cmd.recipe)):
                return CameraReply(ok=False, error=f"recipe {cmd.recipe!r} is not among the line's recipes")
            self.recipe = cmd.recipe
        else:
            self.offline = cmd.offline
        log.info("camera %s: recipe %s, %s from seq %d", self.cam.name, self.recipe, self.offline or "online",
                 self.seq)
        return CameraReply(ok=True, seq=self.seq)

    def _trigger(self, source: FrameSource, part_id: str | None) -> CameraReply:
        if self.cam.trigger != "software":
            return CameraReply(ok=False, error=f"camera {self.cam.name} is in {self.cam.trigger} mode; software "
                                               "triggers need cameras[].trigger: software")
        t_trigger = Moment.now()
        try:
            source.trigger()
            end = time.monotonic() + TRIGGER_TIMEOUT_S
            grabbed = None
            while grabbed is None and time.monotonic() < end:
                grabbed = source.grab(min(GRAB_SLICE_S, end - time.monotonic()))
        except (CameraLost, SourceEnded) as exc:
            reason = str(exc)
            if isinstance(exc, CameraLost):
                self._recover(source, exc)
        else:
            if grabbed is not None:
                header = self._emit(grabbed, part_id)
                return CameraReply(ok=True, seq=header.seq, part_id=header.part_id)
            reason = f"software trigger sent but no frame within {TRIGGER_TIMEOUT_S:.0f} s"
        header = self._not_inspected(reason, "no_frame", part_id, t_trigger)
        return CameraReply(ok=False, seq=header.seq, part_id=header.part_id, error=reason)

    def _recover(self, source: FrameSource, exc: CameraLost) -> None:
        """Alarm, then reconnect with backoff until the camera is back (or the line stops)."""
        self.alarms.raise_alarm("camera_lost", f"camera {self.cam.name}: {exc}", "critical")
        delay = self.backoff[0]
        while not self.stop.wait(delay):
            try:
                source.reconnect()
            except SourceError as again:
                log.warning("camera %s still away (%s); next try in %.1f s", self.cam.name, again, delay)
                delay = min(delay * 2, self.backoff[1])
                continue
            self._last_frame_id = None  # the camera's counter restarts with the connection
            self.alarms.raise_alarm("camera_back", f"camera {self.cam.name} reconnected, profile re-applied", "info")
            return

    def _next_header(self, part_id: str | None, t_capture: Moment, shape: tuple[int, ...], dtype: str,
                     grabbed: Grabbed | None, slot: tuple[int, int] | None = None) -> FrameHeader:
        seq = self.seq
        self.seq += 1
        return FrameHeader(
            camera=self.cam.name, stream=self.stream, seq=seq,
            part_id=part_id or f"{self.cam.name}-{self.stream}-{seq}", t_capture_ns=t_capture.wall_ns,
            t_capture_mono_ns=t_capture.mono_ns, t_sent_ns=t_capture.wall_at(mono_ns()),
            width=shape[1], height=shape[0], channels=1 if len(shape) == 2 else shape[2],
            dtype=cast(PixelDtype, dtype),  # a source's other dtype is refused by the worker, naming it
            pixel_format=grabbed.pixel_format if grabbed else self.cam.pixel_format,
            truth=grabbed.truth if grabbed else None,
            device_frame_id=grabbed.frame_id if grabbed else None,
            device_timestamp_ns=grabbed.timestamp_ns if grabbed else None,
            slot=slot[0] if slot else None, gen=slot[1] if slot else None, recipe=self.recipe,
        )

    def _emit(self, grabbed: Grabbed, part_id: str | None = None) -> FrameHeader:
        t_capture = Moment.now()
        self._record_gaps(grabbed, t_capture)
        px = grabbed.pixels
        slot, full = (None, None) if self.offline else self._place(px)
        header = self._next_header(part_id, t_capture, px.shape, str(px.dtype), grabbed, slot)
        self.acquired.inc()
        raw = header.to_bytes()
        self._send([KIND_ANNOUNCE, raw])
        if self.offline:  # taken and recorded, not inspected: the PLC or an operator paused inspection
            self._drop(header, self.offline, self.offline)
            return header
        if full:
            self._drop(header, "ring_full", full)
            return header
        try:
            parts = [raw] if slot else encode_frame(header, px, raw)
            self.frames.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            if slot and self.ring is not None:
                self.ring.unsend(slot[0])
            self._drop(header, "queue_full", "frame queue full: inference too slow")
        return header

    def _place(self, px: np.ndarray) -> tuple[tuple[int, int] | None, str | None]:
        """(slot, gen) of the frame in the ring, or why it has none: (None, reason) when the ring is full;
        (None, None) when it travels inline (no ring, or a frame larger than the camera's slots)."""
        if self.ring is None:
            return None, None
        try:
            slot = self.ring.place(px)
        except RingError as exc:
            log.warning("camera %s: %s; this frame travels inline", self.cam.name, exc)
            return None, None
        if slot is None:
            return None, (f"frame ring full: all {self.ring.slots} slots held by inference workers "
                          "(inference too slow)")
        return slot, None

    def _drop(self, header: FrameHeader, why: str, reason: str) -> None:
        metrics.FRAMES_DROPPED.labels(self.cam.name, why).inc()
        self._send([KIND_VERDICT, Verdict.not_inspected(header, self.cfg.recipe, reason).to_bytes()])

    def _record_gaps(self, grabbed: Grabbed, t_capture: Moment) -> None:
        """Each frame the camera lost or tore since the last one becomes a not-inspected row."""
        for _ in range(grabbed.skipped_incomplete):
            self._not_inspected("incomplete buffer from the camera (discarded by the driver)", "incomplete",
                                None, t_capture)
        fid, last = grabbed.frame_id, self._last_frame_id
        if fid is not None:
            self._last_frame_id = fid
            if last is not None and fid > last + 1:
                for missing in range(last + 1, fid - grabbed.skipped_incomplete):
                    self._not_inspected(f"frame lost between camera and host (device frame id {missing} missing)",
                                        "lost", None, t_capture)

    def _not_inspected(self, reason: str, why: str, part_id: str | None, t_capture: Moment) -> FrameHeader:
        shape = (self.cam.height, self.cam.width) + (() if self.cam.pixel_format == "Mono8" else (3,))
        header = self._next_header(part_id, t_capture, shape, str(np.dtype(np.uint8)), None)
        self._send([KIND_ANNOUNCE, header.to_bytes()])
        self._drop(header, why, reason)
        return header

    def _wait_for_worker(self, frames: zmq.Socket[Any], timeout_s: float) -> None:
        """Start streaming once a worker is connected and every local worker, the store (and the PLC) serve,
        so the first parts are neither dropped nor unseen for nothing. The supervisor starts acquire beside
        them, so its own start overlaps theirs (`line.supervisor.start_waves`)."""
        end = time.monotonic() + timeout_s
        monitor = frames.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
        try:
            if not monitor.poll(int(timeout_s * 1000)):
                log.warning("no inference worker connected after %.0f s; frames will be dropped until one is",
                            timeout_s)
        finally:
            frames.disable_monitor()
            monitor.close(linger=0)
        missing = wait_until_ready(self.cfg.run_dir, first_frame_waits_for(self.cfg), self.stop,
                                   max(0.0, end - time.monotonic()))
        if missing:
            log.warning("%s not serving after %.0f s; streaming anyway", ", ".join(missing), timeout_s)

    def _send(self, parts: list[bytes]) -> None:
        try:
            self.to_record.send_multipart(parts, flags=zmq.NOBLOCK)
        except zmq.Again:
            # record is 100k messages behind: the part cannot be traced, so say so loudly.
            log.error("record queue full: message lost")
            self.alarms.raise_alarm("record_backlog", "record is not keeping up; announcements are being lost",
                                    "critical")
