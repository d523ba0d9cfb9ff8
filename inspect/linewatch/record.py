"""record: the single writer of the store and the image archive, and the deadline watch.

Every announced frame ends as exactly one row: its verdict, or a FAIL decided by `timeout` when no
verdict arrives within the deadline. Rows are committed in small groups, then published as events.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from typing import Any

import zmq

from linewatch import metrics
from linewatch.config import LineConfig
from linewatch.images import ImageWriter, image_relpath
from linewatch.lots import ShiftClock
from linewatch.messages import (
    KIND_ACTION,
    KIND_ALARM,
    KIND_ANNOUNCE,
    KIND_VERDICT,
    Alarm,
    Endpoints,
    FrameHeader,
    MessageError,
    OperatorAction,
    Verdict,
    decode_frame,
    now_ns,
)
from linewatch.process import mark_ready
from linewatch.retention import DiskLow, Retention
from linewatch.store import (
    ActionError,
    apply_action,
    clear_alarms,
    current_lot,
    insert_alarm,
    insert_verdicts,
    mark_pruned,
    open_writer,
    register_model,
    row_event,
    verdict_row,
)
from linewatch.streaks import StreakWatch

log = logging.getLogger("record")
_RECENT_KEYS = 200_000

Key = tuple[str, str, int]


class Record:
    def __init__(self, cfg: LineConfig, index: int, stop: threading.Event):
        self.cfg, self.stop = cfg, stop
        self.endpoints = Endpoints(cfg.run_dir)
        self.pending: dict[Key, tuple[FrameHeader, int]] = {}  # announced, not yet decided: (header, deadline_ns)
        self.last_seq: dict[tuple[str, str], int] = {}  # highest seq seen per (camera, stream)
        self.recorded: dict[Key, None] = {}  # recently recorded keys, oldest first
        self.buffer: list[dict[str, Any]] = []
        self.buffer_since = 0.0
        self._last_live: dict[str, float] = {}
        self._image_alarm_at = -1e9
        self.models_seen: set[str] = set()
        self.streaks = StreakWatch(cfg.failsafe.streak)  # over committed verdicts

    def run(self) -> None:
        self.db = open_writer(self.cfg.data_dir)
        self.last_seq = {(c, s): int(m) for c, s, m in self.db.execute(
            "SELECT camera, stream, max(seq) FROM inspections GROUP BY camera, stream").fetchall()}
        self.lot = current_lot(self.db)
        self.shifts = ShiftClock(self.cfg.shifts)
        rc = self.cfg.record
        self.images = ImageWriter(self.cfg.data_dir, rc.jpeg_quality, rc.image_queue)
        self.retention = Retention(self.cfg.data_dir, rc, self.stop)
        self.retention.start()
        ctx: zmq.Context[Any] = zmq.Context()
        inbound = ctx.socket(zmq.PULL)
        inbound.setsockopt(zmq.RCVHWM, 100_000)
        inbound.setsockopt(zmq.LINGER, 0)
        inbound.bind(self.endpoints.record)
        self.events = ctx.socket(zmq.PUB)
        self.events.setsockopt(zmq.SNDHWM, 10_000)
        self.events.setsockopt(zmq.LINGER, 0)
        self.events.bind(self.endpoints.events)
        mark_ready(self.cfg.run_dir, "record")
        try:
            while not self.stop.is_set():
                self._pump(inbound, timeout_ms=self._wait_ms())
            self._drain_on_stop(inbound)
        finally:
            self._flush()
            self.images.close()
            inbound.close()
            self.events.close()
            ctx.term()
            self.db.close()

    def _wait_ms(self) -> int:
        if not self.buffer:
            return 50
        left = self.cfg.record.commit_ms / 1e3 - (time.monotonic() - self.buffer_since)
        return max(0, min(50, int(left * 1e3)))

    def _pump(self, sock: zmq.Socket[Any], timeout_ms: int) -> bool:
        """Handle what arrives within timeout_ms; check deadlines; commit when due. True if anything came."""
        got = False
        if sock.poll(timeout_ms):
            for _ in range(1000):
                try:
                    parts = sock.recv_multipart(flags=zmq.NOBLOCK)
                except zmq.Again:
                    break
                got = True
                self._handle(parts)
        self._check_deadlines()
        self._apply_retention()
        rc = self.cfg.record
        if self.buffer and (len(self.buffer) >= rc.commit_rows
                            or time.monotonic() - self.buffer_since >= rc.commit_ms / 1e3):
            self._flush()
        return got

    def _drain_on_stop(self, sock: zmq.Socket[Any]) -> None:
        """Take what is still in flight, then fail what will never be decided."""
        quiet_since = time.monotonic()
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline and time.monotonic() - quiet_since < 0.3:
            if self._pump(sock, 50):
                quiet_since = time.monotonic()
        for key in list(self.pending):
            self._fail_pending(key, "not_inspected", "line stopped before a verdict arrived")

    def _handle(self, parts: list[bytes]) -> None:
        kind = parts[0] if parts else b""
        try:
            if kind == KIND_ANNOUNCE and len(parts) == 2:
                self._on_announce(FrameHeader.from_bytes(parts[1]))
            elif kind == KIND_VERDICT and len(parts) in (2, 4):
                self._on_verdict(Verdict.from_bytes(parts[1]), parts[2:])
            elif kind == KIND_ALARM and len(parts) == 2:
                self._on_alarm(Alarm.from_bytes(parts[1]))
            elif kind == KIND_ACTION and len(parts) == 2:
                self._on_action(OperatorAction.from_bytes(parts[1]))
            else:
                raise MessageError(f"record message: unknown kind {kind[:20]!r} with {len(parts)} parts")
        except MessageError as exc:
            metrics.MESSAGES_REJECTED.labels("record", str(exc).split(":")[0]).inc()
            log.error("rejected message: %s", exc)

    def _on_announce(self, h: FrameHeader) -> None:
        key = (h.camera, h.stream, h.seq)
        self._track_gaps(*key)
        if key not in self.recorded:
            self.pending[key] = (h, h.t_capture_ns + int(self.cfg.record.deadline_ms * 1e6))

    def _track_gaps(self, camera: str, stream: str, seq: int) -> None:
        """Sequence numbers skipped in a stream become pending too, so a frame whose messages were lost
        (e.g. in record's own crash) still ends as a row: its verdict if it arrives, else a FAIL."""
        last = self.last_seq.get((camera, stream), -1)
        if seq <= last:
            return
        self.last_seq[(camera, stream)] = seq
        deadline = now_ns() + int(self.cfg.record.deadline_ms * 1e6)
        for missing in range(last + 1, seq):
            key = (camera, stream, missing)
            if key not in self.recorded and key not in self.pending:
                h = FrameHeader(camera, stream, missing, f"{camera}-{stream}-{missing}", 0, 0, 1, 1, 1, "uint8", "")
                self.pending[key] = (h, deadline)

    def _on_verdict(self, v: Verdict, image_parts: list[bytes]) -> None:
        key = (v.camera, v.stream, v.seq)
        self._track_gaps(*key)
        if key in self.recorded:
            metrics.LATE_VERDICTS.labels(v.camera).inc()
            log.warning("late verdict for %s seq %d ignored: already recorded", v.camera, v.seq)
            return
        self.pending.pop(key, None)
        if image_parts:
            self._keep_image(v, image_parts)
        self._buffer(v)

    def _keep_image(self, v: Verdict, image_parts: list[bytes]) -> None:
        try:
            _, pixels = decode_frame(image_parts)
        except MessageError as exc:
            log.error("verdict image for %s seq %d unreadable: %s", v.camera, v.seq, exc)
            return
        rc = self.cfg.record
        if v.final != "PASS" or (rc.pass_sample_every and v.seq % rc.pass_sample_every == 0):
            relpath = image_relpath(v.camera, v.stream, v.seq, v.final, rc.image_format)
            if self.images.submit(relpath, v.camera, pixels):
                v.image = relpath
            else:  # the writer is behind: the row is kept without its image
                metrics.IMAGES_DROPPED.labels(v.camera, v.final).inc()
                if v.final != "PASS" and time.monotonic() - self._image_alarm_at > 60:
                    self._image_alarm_at = time.monotonic()
                    metrics.ALARMS.labels("image_dropped").inc()
                    self._on_alarm(Alarm("record", "image_dropped", f"{v.final} image of {v.camera} seq {v.seq} "
                                         "not kept: the image writer is behind (disk too slow?)"))
        now = time.monotonic()
        if rc.live_view_hz and now - self._last_live.get(v.camera, 0.0) >= 1.0 / rc.live_view_hz:
            self._last_live[v.camera] = now
            self.images.submit(None, v.camera, pixels)

    def _on_action(self, action: OperatorAction) -> None:
        """Apply an operator's action (lot change, review decision) and publish it once committed."""
        try:
            audit_id = apply_action(self.db, action)
        except ActionError as exc:
            metrics.MESSAGES_REJECTED.labels("record", "action").inc()
            log.error("operator action refused: %s", exc)
            return
        if action.action == "set_lot":
            self.lot = action.detail["lot"]
            log.info("lot %s set by %s", self.lot, action.actor)
        if audit_id:
            self.events.send_multipart([b"action", json.dumps({"id": audit_id, **action.__dict__}).encode()])

    def _apply_retention(self) -> None:
        """Write down what retention removed and raise or clear the disk-low alarm (record is the writer)."""
        while not self.retention.events.empty():
            event = self.retention.events.get_nowait()
            if isinstance(event, DiskLow):
                if event.alarm is not None:
                    metrics.ALARMS.labels(event.alarm.kind).inc()
                    self._on_alarm(event.alarm)
                else:
                    clear_alarms(self.db, "disk_low", "record", now_ns())
            else:
                mark_pruned(self.db, event.ids, event.t_ns)
                metrics.IMAGES_PRUNED.inc(len(event.ids))

    def _on_alarm(self, alarm: Alarm) -> None:
        alarm_id = insert_alarm(self.db, alarm)
        self.events.send_multipart([b"alarm", json.dumps({"id": alarm_id, **alarm.__dict__}).encode()])

    def _check_deadlines(self) -> None:
        now = now_ns()
        for key, (h, deadline) in list(self.pending.items()):
            if deadline > now:
                break  # pending is in arrival order, so later ones are due later
            if h.t_capture_ns:
                self._fail_pending(key, "timeout", f"no verdict within {self.cfg.record.deadline_ms:.0f} ms of capture")
            else:
                self._fail_pending(key, "not_inspected", "sequence gap: its messages were lost (record restart?)")

    def _fail_pending(self, key: Key, decided_by: str, reason: str) -> None:
        h, _ = self.pending.pop(key)
        v = Verdict.not_inspected(h, self.cfg.recipe, reason)
        v.decided_by = decided_by
        self._buffer(v)

    def _buffer(self, v: Verdict) -> None:
        key = (v.camera, v.stream, v.seq)
        self.recorded[key] = None
        if len(self.recorded) > _RECENT_KEYS:
            del self.recorded[next(iter(self.recorded))]
        if not self.buffer:
            self.buffer_since = time.monotonic()
        self.buffer.append(verdict_row(v, 0, self.lot, self.shifts.at(v.t_capture_ns or now_ns())))

    def _flush(self) -> None:
        if not self.buffer:
            return
        rows, self.buffer = self.buffer, []
        t = now_ns()
        for r in rows:
            r["t_recorded_ns"] = t
            r["latency_ms"] = (t - r["t_capture_ns"]) / 1e6 if r["t_capture_ns"] else None
        for r in rows:
            if r["model_hash"] and r["model_hash"] not in self.models_seen:
                self.models_seen.add(r["model_hash"])
                register_model(self.db, r["model_hash"], r["model_name"] or "", str(self.cfg.model.path))
        insert_verdicts(self.db, rows)
        for (camera, final, decided_by), n in Counter((r["camera"], r["final"], r["decided_by"]) for r in rows).items():
            metrics.VERDICTS.labels(camera, final, decided_by).inc(n)
        for r in rows:
            if r["latency_ms"] is not None:
                metrics.END_TO_END_SECONDS.labels(r["camera"]).observe(r["latency_ms"] / 1e3)
            self.events.send_multipart([b"verdict", row_event(r)])
        for alarm in self.streaks.observe(rows):
            metrics.ALARMS.labels(alarm.kind).inc()
            self._on_alarm(alarm)
