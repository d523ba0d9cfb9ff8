"""record: the single writer of the store and the image archive, and the deadline watch.

Every announced frame ends as exactly one row: its verdict, or a FAIL decided by `timeout` when no
verdict arrives within the deadline. Rows are committed in small groups, then published as events.
A full data disk does not stop it (`disk_reserve`): images pause, the reserve gives the rows room,
and writes the store still refuses are held in memory and retried.
"""

from __future__ import annotations

import heapq
import json
import logging
import math
import sqlite3
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from functools import partial
from operator import itemgetter
from typing import Any

import zmq

from linewatch import metrics
from linewatch.config import LineConfig
from linewatch.failsafe.streaks import StreakWatch
from linewatch.record.retention import DiskLow, Retention
from linewatch.shifts import ShiftClock
from linewatch.store import (
    JSON_COLUMNS,
    ROW_COLUMNS,
    ActionError,
    Checkpointer,
    CommitRow,
    apply_action,
    clear_alarms,
    committed_values,
    current_lot,
    insert_alarm,
    insert_commit,
    insert_rows,
    mark_pruned,
    next_commit_id,
    open_writer,
    register_model,
    verdict_values,
)
from linewatch.store.disk import DiskReserve, is_disk_full
from linewatch.store.images import ImageWriter, image_relpath
from linewatch.wire import (
    KIND_ACTION,
    KIND_ALARM,
    KIND_ANNOUNCE,
    KIND_VERDICT,
    KIND_VERDICT_BATCH,
    KIND_VERDICTS,
    Alarm,
    Endpoints,
    FrameHeader,
    MessageError,
    OperatorAction,
    Verdict,
    VerdictError,
    decode_frame,
    encode_verdict_group,
    now_ns,
)
from linewatch.wire.ready import mark_ready

log = logging.getLogger("record")
_RECENT_KEYS = 200_000
MAX_SEQ_GAP = 100_000  # skipped seqs watched as lost frames; a bigger jump is alarmed instead

Key = tuple[str, str, int]
_COL = {name: i for i, name in enumerate(ROW_COLUMNS)}
_DECIDED = itemgetter(_COL["t_decided_ns"])
_COUNTED = itemgetter(_COL["camera"], _COL["final"], _COL["decided_by"])
_FINAL = itemgetter(_COL["camera"], _COL["final"])
_LATENCY = itemgetter(_COL["camera"], _COL["latency_ms"])
_MODEL = itemgetter(_COL["model_hash"], _COL["model_name"])


def _unseen(key: Key) -> FrameHeader:
    """A stand-in header for a part record never saw announced (no capture time: it is unknown)."""
    camera, stream, seq = key
    return FrameHeader(camera, stream, seq, f"{camera}-{stream}-{seq}", 0, 0, 1, 1, 1, "uint8", "")


class Record:
    def __init__(self, cfg: LineConfig, index: int, stop: threading.Event):
        self.cfg, self.stop = cfg, stop
        self.endpoints = Endpoints(cfg.run_dir)
        self.pending: dict[Key, tuple[FrameHeader, int]] = {}  # announced, not yet decided: (header, deadline_ns)
        self.deadlines: list[tuple[int, Key]] = []  # heap over pending; entries of decided keys are skipped
        self.last_seq: dict[tuple[str, str], int] = {}  # highest seq seen per (camera, stream)
        self.recorded: set[Key] = set()  # recently recorded keys (late verdicts and re-announcements)
        self.recorded_order: deque[Key] = deque()  # the same keys, oldest first, to forget the oldest
        self.buffer: list[tuple[Any, ...]] = []  # `verdict_values` of the group being gathered
        self.buffer_since = 0.0
        self.unwritten_commit: CommitRow | None = None  # the last group's commit row, written with the next group
        self.published_at = 0.0
        self._last_live: dict[str, float] = {}
        self._image_alarm_at = -1e9
        self.models_seen: set[str] = set()
        self.streaks = StreakWatch(cfg.failsafe.streak)  # over committed verdicts
        self.store_down: str | None = None  # why the store refuses writes: rows wait in `buffer`, writes in `held`
        self.held: list[Callable[[], object]] = []  # store writes refused by a full disk, retried in order
        self.retry_at = 0.0
        self.disk_full = False  # disk_full alarm raised: kept images pause until the disk has room again
        self.rows_lost = 0

    def run(self) -> None:
        self.cfg.data_dir.mkdir(parents=True, exist_ok=True)
        self.reserve = DiskReserve(self.cfg.data_dir, self.cfg.record.disk_reserve_mb, self.cfg.record.disk_low_free_mb)
        try:
            self.db = open_writer(self.cfg.data_dir)
        except sqlite3.Error as exc:  # a full disk at start: the reserve makes room to open and migrate
            if not (is_disk_full(exc) and self.reserve.release()):
                raise
            self.db = open_writer(self.cfg.data_dir)
        self.last_seq = {(c, s): int(m) for c, s, m in self.db.execute(
            "SELECT camera, stream, max(seq) FROM inspections GROUP BY camera, stream").fetchall()}
        self.lot = current_lot(self.db)
        self.commit_id = next_commit_id(self.db)
        self.stage_record = metrics.STAGE_SECONDS.labels("record")
        self.stage_event = metrics.STAGE_SECONDS.labels("event")
        self.shifts = ShiftClock(self.cfg.shifts)
        rc = self.cfg.record
        self.images = ImageWriter(self.cfg.data_dir, rc.jpeg_quality, rc.image_queue)
        self.retention = Retention(self.cfg.data_dir, rc, self.stop)
        self.retention.start()
        self.checkpointer = Checkpointer(self.cfg.data_dir, self.stop)
        self.checkpointer.start()
        ctx: zmq.Context[Any] = zmq.Context()
        inbound = ctx.socket(zmq.PULL)
        inbound.setsockopt(zmq.RCVHWM, 100_000)
        inbound.setsockopt(zmq.LINGER, 0)
        inbound.bind(self.endpoints.record)
        self.events = ctx.socket(zmq.PUB)
        self.events.setsockopt(zmq.SNDHWM, 10_000)
        self.events.setsockopt(zmq.LINGER, 0)
        self.events.bind(self.endpoints.events)
        self.room_check_at = time.monotonic()
        if not self.reserve.allocate():
            self._enter_disk_full(f"no room for the {self.reserve.size / 2**20:.1f} MB disk reserve")
        mark_ready(self.cfg.run_dir, "record")
        try:
            while not self.stop.is_set():
                self._pump(inbound, timeout_ms=self._wait_ms())
            self._drain_on_stop(inbound)
        finally:
            self.stop.set()  # also when leaving on an error: the checkpoint and retention threads end
            self.retention.wake()
            self._flush_all()
            self._write_commit()
            if self.store_down is not None:
                log.error("stopped with %d verdict row(s) and %d other write(s) the store refused (%s)",
                          len(self.buffer), len(self.held), self.store_down)
            self.images.close()
            inbound.close()
            self.events.close()
            ctx.term()
            self.checkpointer.join(5)
            self.db.close()

    def _wait_ms(self) -> int:
        if self.store_down is not None:
            left = self.retry_at - time.monotonic()
        elif not self.buffer:
            return 50
        else:
            left = self.cfg.record.commit_ms / 1e3 - (time.monotonic() - self.buffer_since)
        return max(0, min(50, math.ceil(left * 1e3)))  # rounding down would spin on poll(0) until due

    def _pump(self, sock: zmq.Socket[Any], timeout_ms: int) -> bool:
        """Handle what arrives within timeout_ms; check deadlines; commit when due. True if anything came."""
        got = drained = False
        rc = self.cfg.record
        if sock.poll(timeout_ms):
            for _ in range(1000):  # drain what is waiting, up to one group
                try:
                    parts = sock.recv_multipart(flags=zmq.NOBLOCK)
                except zmq.Again:
                    drained = True
                    break
                got = True
                self._handle(parts)
                if len(self.buffer) >= rc.commit_rows:
                    break
        self._check_deadlines()
        self._apply_retention()
        self._watch_disk()
        # A group is what has arrived: nothing waiting means commit now (a lone verdict does not wait for
        # company); under load groups grow by themselves, up to commit_rows or commit_ms.
        if self.store_down is not None:
            if time.monotonic() >= self.retry_at:
                self._retry_store()
        elif self.buffer and ((drained and rc.commit_when_drained) or len(self.buffer) >= rc.commit_rows
                              or time.monotonic() - self.buffer_since >= rc.commit_ms / 1e3):
            self._flush()
        elif not self.buffer and time.monotonic() - self.published_at >= rc.commit_ms / 1e3:
            self._write_commit()  # no next group came: the commit row goes on its own
        return got

    def _write_commit(self) -> None:
        if self.unwritten_commit is not None:
            self._write(partial(insert_commit, self.db, self.unwritten_commit))
            self.unwritten_commit = None

    def _write(self, write: Callable[[], object]) -> None:
        """A store write other than the rows; refused for a full disk, it is held and retried in order."""
        if self.store_down is None:
            try:
                write()
                return
            except sqlite3.Error as exc:
                if not is_disk_full(exc):
                    raise
                self._store_refused(exc)
        self.held.append(write)

    def _store_refused(self, exc: sqlite3.Error) -> None:
        """The disk took no more: release the reserve (then retry at once), else retry every second."""
        if self.store_down is None:
            log.error("the store refuses writes (%s): rows are held in memory and retried", exc)
        self.store_down = str(exc)
        released = self._enter_disk_full(f"the store refused a write: {exc}")
        self.retry_at = time.monotonic() + (0.0 if released else 1.0)

    def _retry_store(self) -> None:
        """Write what was held, then the rows, in groups; stay down (and retry later) if the disk is still full."""
        self.retry_at = time.monotonic() + 1.0
        try:
            while self.held:
                self.held[0]()
                self.held.pop(0)
        except sqlite3.Error as exc:
            if not is_disk_full(exc):
                raise
            return
        log.warning("the store takes writes again: committing %d held row(s)", len(self.buffer))
        self.store_down = None
        self._flush_all()

    def _flush_all(self) -> None:
        while self.buffer and self.store_down is None:
            self._flush()

    def _enter_disk_full(self, why: str) -> bool:
        """Pause kept images, release the reserve and raise the critical alarm once; True if a reserve was freed."""
        released = self.reserve.release()
        self.retention.wake()  # prune PASS samples now, not at the next interval
        if not self.disk_full:
            self.disk_full = True
            room = "disk reserve released for verdict rows" if released else "no disk reserve left"
            self._raise_alarm(Alarm("record", "disk_full", f"data disk {self.cfg.data_dir} is full ({why}); "
                                    f"kept images paused, {room}", "critical"))
        return released

    def _watch_disk(self) -> None:
        """Enter the disk-full state on an image write refused for space; leave it once the reserve fits again."""
        if self.images.disk_full and not self.disk_full:
            self._enter_disk_full(f"an image write failed: {self.images.disk_full}")
        now = time.monotonic()
        if not self.disk_full or self.store_down is not None or now < self.room_check_at:
            return
        self.room_check_at = now + 1.0
        if self.reserve.allocate(after_full=True):
            self.disk_full = False
            self.images.disk_full = None
            log.warning("data disk has room again: disk reserve allocated, kept images resume")
            self._write(partial(clear_alarms, self.db, "disk_full", "record", now_ns()))

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
            if kind == KIND_VERDICT and len(parts) in (2, 4, 5):
                self._on_verdict(Verdict.from_bytes(parts[1]), parts[2:])
            elif kind == KIND_VERDICT_BATCH and len(parts) == 2:
                verdicts, errors = Verdict.many_from_bytes(parts[1])
                for v in verdicts:
                    self._on_verdict(v, ())
                for error in errors:
                    self._reject(error)
            elif kind == KIND_ANNOUNCE and len(parts) == 2:
                self._on_announce(FrameHeader.from_bytes(parts[1]))
            elif kind == KIND_ALARM and len(parts) == 2:
                self._on_alarm(Alarm.from_bytes(parts[1]))
            elif kind == KIND_ACTION and len(parts) == 2:
                self._on_action(OperatorAction.from_bytes(parts[1]))
            else:
                raise MessageError(f"record message: unknown kind {kind[:20]!r} with {len(parts)} parts")
        except MessageError as exc:
            self._reject(exc)

    def _reject(self, exc: MessageError) -> None:
        """Count and log a malformed message; a verdict whose part is known fails that part now, naming why."""
        metrics.MESSAGES_REJECTED.labels("record", str(exc).split(":")[0]).inc()
        identity = exc.identity if isinstance(exc, VerdictError) else None
        log.error("rejected message%s: %s", f" for {identity}" if identity else "", exc)
        if identity in self.pending:
            self._fail_pending(identity, "not_inspected", f"malformed verdict: {exc}")
        elif identity is not None:  # never announced: recorded now, unless already recorded (a late duplicate)
            self._on_verdict(Verdict.not_inspected(_unseen(identity), self.cfg.recipe, f"malformed verdict: {exc}"), ())

    def _on_announce(self, h: FrameHeader) -> None:
        key = (h.camera, h.stream, h.seq)
        self._track_gaps(*key)
        if key not in self.recorded:
            self._watch(key, h, h.t_capture_ns + int(self.cfg.record.deadline_ms * 1e6))

    def _watch(self, key: Key, h: FrameHeader, deadline_ns: int) -> None:
        self.pending[key] = (h, deadline_ns)
        heapq.heappush(self.deadlines, (deadline_ns, key))

    def _track_gaps(self, camera: str, stream: str, seq: int) -> None:
        """Sequence numbers skipped in a stream become pending too, so a frame whose messages were lost
        (e.g. in record's own crash) still ends as a row: its verdict if it arrives, else a FAIL."""
        last = self.last_seq.get((camera, stream), -1)
        if seq <= last:
            return
        self.last_seq[(camera, stream)] = seq
        if seq == last + 1:
            return
        if last >= 0 and seq - last > MAX_SEQ_GAP:  # a counter reset or a corrupt seq, not lost frames
            self._raise_alarm(Alarm("record", "sequence_jump", f"{camera} stream {stream}: seq jumped from {last} to "
                                    f"{seq}; the {seq - last - 1} numbers between are not watched as lost frames"))
            return
        deadline = now_ns() + int(self.cfg.record.deadline_ms * 1e6)
        for missing in range(last + 1, seq):
            key = (camera, stream, missing)
            if key not in self.recorded and key not in self.pending:
                self._watch(key, _unseen(key), deadline)

    def _on_verdict(self, v: Verdict, image_parts: Sequence[bytes]) -> None:
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

    def _keep_image(self, v: Verdict, image_parts: Sequence[bytes]) -> None:
        """[header, pixels] and, from a model with an anomaly map, its PNG (kept as `<image>.heat.png`)."""
        try:
            _, pixels = decode_frame(list(image_parts[:2]))
        except MessageError as exc:
            log.error("verdict image for %s seq %d unreadable: %s", v.camera, v.seq, exc)
            return
        heatmap = bytes(image_parts[2]) if len(image_parts) == 3 else None
        if heatmap is not None and not heatmap.startswith(b"\x89PNG\r\n\x1a\n"):
            log.error("heatmap for %s seq %d is not a PNG; image kept without it", v.camera, v.seq)
            heatmap = None
        rc = self.cfg.record
        if self.disk_full:
            return  # no image, no live view: what room is left is for the rows
        sample = rc.pass_sample_every and v.seq % rc.pass_sample_every == 0 and not self.retention.disk_low
        if v.final != "PASS" or sample:
            relpath = image_relpath(v.camera, v.stream, v.seq, v.final, rc.image_format)
            if self.images.submit(relpath, v.camera, pixels, heatmap):
                v.image = relpath
            else:  # the writer is behind: the row is kept without its image
                metrics.IMAGES_DROPPED.labels(v.camera, v.final).inc()
                if v.final != "PASS" and time.monotonic() - self._image_alarm_at > 60:
                    self._image_alarm_at = time.monotonic()
                    self._raise_alarm(Alarm("record", "image_dropped", f"{v.final} image of {v.camera} seq {v.seq} "
                                            "not kept: the image writer is behind (disk too slow?)"))
        now = time.monotonic()
        if rc.live_view_hz and now - self._last_live.get(v.camera, 0.0) >= 1.0 / rc.live_view_hz:
            self._last_live[v.camera] = now
            self.images.submit(None, v.camera, pixels)

    def _on_action(self, action: OperatorAction) -> None:
        self._write(partial(self._apply_action, action))

    def _apply_action(self, action: OperatorAction) -> None:
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
                    self._raise_alarm(event.alarm)
                else:
                    self._write(partial(clear_alarms, self.db, "disk_low", "record", now_ns()))
            else:
                self._write(partial(mark_pruned, self.db, event.ids, event.t_ns))
                metrics.IMAGES_PRUNED.inc(len(event.ids))

    def _raise_alarm(self, alarm: Alarm) -> None:
        """An alarm of record's own: counted here (the other processes' alarms are counted by their sender)."""
        metrics.ALARMS.labels(alarm.kind).inc()
        self._on_alarm(alarm)

    def _on_alarm(self, alarm: Alarm) -> None:
        self._write(partial(self._store_alarm, alarm))

    def _store_alarm(self, alarm: Alarm) -> None:
        alarm_id = insert_alarm(self.db, alarm)
        self.events.send_multipart([b"alarm", json.dumps({"id": alarm_id, **alarm.__dict__}).encode()])

    def _check_deadlines(self) -> None:
        """Fail what is due; the cost is the number of due entries, not the number pending."""
        now, heap = now_ns(), self.deadlines
        while heap and heap[0][0] <= now:
            deadline, key = heapq.heappop(heap)
            entry = self.pending.get(key)
            if entry is None or entry[1] != deadline:
                continue  # decided meanwhile (or watched again with another deadline)
            h = entry[0]
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
        self.recorded.add(key)
        self.recorded_order.append(key)
        if len(self.recorded_order) > _RECENT_KEYS:
            self.recorded.discard(self.recorded_order.popleft())
        if len(self.buffer) >= self.cfg.record.held_rows:  # only while the store refuses writes
            self.rows_lost += 1
            metrics.ROWS_LOST.inc()
            if self.rows_lost % 1000 == 1:
                log.critical("verdict row for %s seq %d lost: the store refuses writes (%s) and %d rows are held; "
                             "%d lost so far", v.camera, v.seq, self.store_down, len(self.buffer), self.rows_lost)
            return
        if not self.buffer:
            self.buffer_since = time.monotonic()
        self.buffer.append(verdict_values(v, self.lot, self.shifts.at(v.t_capture_ns or now_ns())))

    def _flush(self) -> None:
        """Commit the buffered rows as one group, then publish them as one `verdicts` event.

        `record` (verdict decided -> group committed) and `event` (committed -> the group's event handed to
        the socket) are known only after the INSERT, so they go to the event, the stage histograms and the
        group's `commits` row, which each row points to by `commit_id`. That row is written in the next
        group's transaction (or alone after commit_ms without one): no second commit per group.
        """
        if not self.buffer or self.store_down is not None:
            return
        t = now_ns()
        commit_id = self.commit_id
        group = self.cfg.record.commit_rows  # rows held through a full disk go in groups too
        rows = [committed_values(r, t, commit_id) for r in self.buffer[:group]]
        try:
            for model_hash, model_name in set(map(_MODEL, rows)):
                if model_hash and model_hash not in self.models_seen:
                    register_model(self.db, model_hash, model_name or "", str(self.cfg.model.path))
                    self.models_seen.add(model_hash)
            insert_rows(self.db, rows, self.unwritten_commit)
        except sqlite3.Error as exc:  # the rows stay in the buffer
            if not is_disk_full(exc):
                raise
            self._store_refused(exc)
            return
        self.commit_id += 1
        del self.buffer[:group]
        self.buffer_since = time.monotonic()
        self.unwritten_commit = None
        t_committed = now_ns()
        event = encode_verdict_group(ROW_COLUMNS, rows, JSON_COLUMNS, commit_id, t_committed,
                                     (now_ns() - t_committed) / 1e6)
        self.events.send_multipart((KIND_VERDICTS, event), copy=False)  # ~100 kB: handed over, not copied
        t_published = now_ns()
        self.unwritten_commit, self.published_at = (commit_id, t_committed, t_published, len(rows)), time.monotonic()
        metrics.observe_many(self.stage_record, [(t_committed - d) / 1e9 for d in map(_DECIDED, rows) if d])
        metrics.observe_many(self.stage_event, [(t_published - t_committed) / 1e9] * len(rows))
        for (camera, final, decided_by), n in Counter(map(_COUNTED, rows)).items():
            metrics.VERDICTS.labels(camera, final, decided_by).inc(n)
        by_camera: dict[str, list[float]] = {}
        for camera, latency_ms in map(_LATENCY, rows):
            if latency_ms is not None:
                by_camera.setdefault(camera, []).append(latency_ms / 1e3)
        for camera, latencies in by_camera.items():
            metrics.observe_many(metrics.END_TO_END_SECONDS.labels(camera), latencies)
        for alarm in self.streaks.observe_finals(map(_FINAL, rows)):
            self._raise_alarm(alarm)
