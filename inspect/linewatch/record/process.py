"""record: the single writer of the store and the image archive.

Every announced frame ends as exactly one row: its verdict, or a FAIL decided by `timeout` when no
verdict arrives within the deadline (`deadlines.DeadlineWatch`). Rows are committed in small groups,
then published as events (`committer.GroupCommitter`). A full data disk does not stop it
(`store/disk.py`): images pause, the reserve gives the rows room, and writes the store still refuses
are held in memory and retried.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Sequence
from functools import partial
from operator import itemgetter
from typing import TYPE_CHECKING, Any

import zmq

from linewatch import metrics
from linewatch.clock import mono_ns
from linewatch.config import LineConfig
from linewatch.record.committer import GroupCommitter
from linewatch.record.deadlines import MAX_SEQ_GAP, DeadlineWatch, Key
from linewatch.record.retention import DiskLow, Retention
from linewatch.record.streaks import StreakWatch
from linewatch.shifts import ShiftClock
from linewatch.store.disk import DiskReserve, is_disk_full
from linewatch.store.drift import (
    insert_drift_alarm,
    realised_accuracy,
    save_reference,
    stored_reference,
    unacknowledged_drift,
    write_state,
)
from linewatch.store.images import ImagePolicy, ImageWriter, image_relpath
from linewatch.store.queries import current_lot
from linewatch.store.rows import JSON_COLUMNS, ROW_COLUMNS, verdict_values
from linewatch.store.schema import open_writer
from linewatch.store.writer import (
    ActionError,
    Checkpointer,
    apply_action,
    clear_alarms,
    insert_alarm,
    mark_pruned,
    next_commit_id,
)
from linewatch.watch import DriftAlarm, DriftWatch, Reference, ReferenceError
from linewatch.watch import Key as DriftKey
from linewatch.watch.model_reference import model_signals
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
from linewatch.wire.endpoints import tcp_record
from linewatch.wire.ready import mark_ready

if TYPE_CHECKING:
    from zmq.auth.thread import ThreadAuthenticator

log = logging.getLogger("record")

_COL = {name: i for i, name in enumerate(ROW_COLUMNS)}
_STAGE_TIMES = itemgetter(_COL["t_decided_ns"], _COL["t_recorded_ns"])
_COUNTED = itemgetter(_COL["camera"], _COL["final"], _COL["decided_by"])
_FINAL = itemgetter(_COL["camera"], _COL["final"])
_LATENCY = itemgetter(_COL["camera"], _COL["latency_ms"])


class Record:
    def __init__(self, cfg: LineConfig, index: int, stop: threading.Event):
        self.cfg, self.stop = cfg, stop
        self.endpoints = Endpoints(cfg.run_dir)
        self.keeping = ImagePolicy(cfg.record)
        self._image_alarm_at = -1e9
        self.streaks = StreakWatch(cfg.failsafe.streak)  # over committed verdicts
        self.disk_full = False  # disk_full alarm raised: kept images pause until the disk has room again

    def run(self) -> None:
        self.cfg.data_dir.mkdir(parents=True, exist_ok=True)
        rc = self.cfg.record
        self.reserve = DiskReserve(self.cfg.data_dir, rc.disk_reserve_mb, rc.disk_low_free_mb)
        try:
            self.db = open_writer(self.cfg.data_dir)
        except sqlite3.Error as exc:  # a full disk at start: the reserve makes room to open and migrate
            if not (is_disk_full(exc) and self.reserve.release()):
                raise
            self.db = open_writer(self.cfg.data_dir)
        self.watch = self._resume_watch()
        supplied = partial(model_signals, self.cfg.model.path)
        self.drift = DriftWatch(self.cfg.watch, self._stored_reference, supplied) if self.cfg.watch.enabled else None
        if self.drift is not None:
            self.drift.latched = unacknowledged_drift(self.db)
        self.drift_cpu_ns, self._watch_error_at = 0, -1e9
        self.drift_due = time.monotonic() + self.cfg.watch.state_interval_s
        self.lot = current_lot(self.db)
        self.committer = GroupCommitter(self.db, rc, str(self.cfg.model.path), next_commit_id(self.db),
                                        self._publish, self._on_refused)
        self.stage_record = metrics.STAGE_SECONDS.labels("record")
        self.stage_event = metrics.STAGE_SECONDS.labels("event")
        self.shifts = ShiftClock(self.cfg.shifts)
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
        zap = self._bind_remote(inbound)
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
                self._pump(inbound, timeout_ms=self.committer.wait_ms())
            self._drain_on_stop(inbound)
        finally:
            self.stop.set()  # also when leaving on an error: the checkpoint and retention threads end
            self.retention.wake()
            self._drift_housekeeping(final=True)  # references learnt since the last interval are kept
            self.committer.commit_all()
            self.committer.write_commit()
            if self.committer.store_down is not None:
                log.error("stopped with %d verdict row(s) and %d other write(s) the store refused (%s)",
                          len(self.committer.gathered), len(self.committer.held), self.committer.store_down)
            self.images.close()
            if self.drift is not None:
                self.drift.close()
            inbound.close()
            self.events.close()
            if zap is not None:
                zap.stop()
            ctx.term()
            self.checkpointer.join(5)
            self.db.close()

    def _bind_remote(self, inbound: zmq.Socket[Any]) -> ThreadAuthenticator | None:
        """Verdicts and alarms of remote workers on TCP, from enrolled workers only unless auth is none."""
        remote = self.cfg.infer.remote
        if not remote.enabled:
            return None
        from linewatch.wire.remote_keys import serve_remote  # here: a line without remote workers never loads it

        zap = serve_remote(inbound, self.cfg.remote_keys_dir, "record") if remote.auth == "curve" else None
        inbound.bind(tcp_record(remote.host, remote.port))
        return zap

    def _resume_watch(self) -> DeadlineWatch:
        """The deadline watch as the store left it: each stream's highest seq, and the holes below it (parts
        in flight when record or the whole box went down) watched as lost, so each still ends as one row."""
        streams = self.db.execute("SELECT camera, stream, max(seq), count(*) FROM inspections "
                                  "GROUP BY camera, stream").fetchall()
        watch = DeadlineWatch(self.cfg.record.deadline_ms, {(c, s): int(top) for c, s, top, _ in streams})
        for camera, stream, top, n in streams:
            if n > top:  # seqs start at 0: no hole
                continue
            low = max(0, top - MAX_SEQ_GAP)
            stored = [seq for (seq,) in self.db.execute(
                "SELECT seq FROM inspections WHERE camera = ? AND stream = ? AND seq >= ?", (camera, stream, low))]
            holes: list[Key] = []
            prev = -1 if low == 0 else min(stored)
            for seq in sorted(stored):  # a jump too big to be lost frames was alarmed, not watched: not a hole
                if 1 < seq - prev <= MAX_SEQ_GAP:
                    holes.extend((camera, stream, missing) for missing in range(prev + 1, seq))
                prev = seq
            if holes:
                log.warning("%s stream %s: %d part(s) below seq %d have no row (in flight when the line went "
                            "down); recorded as not inspected unless their verdicts come", camera, stream,
                            len(holes), top)
                watch.lost(holes, mono_ns())
        return watch

    def _pump(self, sock: zmq.Socket[Any], timeout_ms: int) -> bool:
        """Handle what arrives within timeout_ms; fail what is due; commit when due. True if anything came."""
        got = drained = False
        if sock.poll(timeout_ms):
            for _ in range(1000):  # drain what is waiting, up to one group
                try:
                    parts = sock.recv_multipart(flags=zmq.NOBLOCK)
                except zmq.Again:
                    drained = True
                    break
                got = True
                self._handle(parts)
                if len(self.committer.gathered) >= self.cfg.record.commit_rows:
                    break
        for due in self.watch.due(mono_ns()):
            self._gather(Verdict.not_inspected(due.header or due.key, self.cfg.recipe, due.reason, due.decided_by))
        self._apply_retention()
        self._watch_disk()
        self._drift_housekeeping()
        self.committer.tick(drained)
        return got

    def _publish(self, commit_id: int, rows: list[tuple[Any, ...]], t_committed: int) -> None:
        """A committed group as one `verdicts` event, then its metrics and streaks.

        `record` (verdict decided -> row recorded) and `event` (committed -> the group's event handed to
        the socket) are known only after the INSERT, so they go to the event, the stage histograms and the
        group's `commits` row, which each row points to by `commit_id`."""
        t0 = time.perf_counter_ns()
        event = encode_verdict_group(ROW_COLUMNS, rows, JSON_COLUMNS, commit_id, t_committed)
        self.events.send_multipart((KIND_VERDICTS, event), copy=False)  # ~100 kB: handed over, not copied
        metrics.observe_many(self.stage_record, [(rec - d) / 1e9 for d, rec in map(_STAGE_TIMES, rows) if d])
        metrics.observe_many(self.stage_event, [(time.perf_counter_ns() - t0) / 1e9] * len(rows))
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

    def _on_refused(self, exc: sqlite3.Error) -> bool:
        """The disk took no more: release the reserve (True: retry at once)."""
        return self._enter_disk_full(f"the store refused a write: {exc}")

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
        if not self.disk_full or self.committer.store_down is not None or now < self.room_check_at:
            return
        self.room_check_at = now + 1.0
        if self.reserve.allocate(after_full=True):
            self.disk_full = False
            self.images.disk_full = None
            log.warning("data disk has room again: disk reserve allocated, kept images resume")
            self.committer.write(partial(clear_alarms, self.db, "disk_full", "record", now_ns()))

    def _drain_on_stop(self, sock: zmq.Socket[Any]) -> None:
        """Take what is still in flight, then fail what will never be decided."""
        quiet_since = time.monotonic()
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline and time.monotonic() - quiet_since < 0.3:
            if self._pump(sock, 50):
                quiet_since = time.monotonic()
        for due in self.watch.abandon("line stopped before a verdict arrived"):
            self._gather(Verdict.not_inspected(due.header or due.key, self.cfg.recipe, due.reason, due.decided_by))

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
        if identity is not None:  # fails that part now (a late duplicate if it already has its row)
            part = self.watch.header(identity) or identity
            self._on_verdict(Verdict.not_inspected(part, self.cfg.recipe, f"malformed verdict: {exc}"), ())

    def _on_announce(self, h: FrameHeader) -> None:
        now = mono_ns()
        self._seen((h.camera, h.stream, h.seq), now)
        self.watch.announced(h, now)

    def _seen(self, key: Key, now: int) -> None:
        jump = self.watch.seen(key, now)
        if jump is not None:
            self._raise_alarm(Alarm("record", "sequence_jump", jump))

    def _on_verdict(self, v: Verdict, image_parts: Sequence[bytes]) -> None:
        key = (v.camera, v.stream, v.seq)
        self._seen(key, mono_ns())
        if self.watch.has_row(key):
            metrics.LATE_VERDICTS.labels(v.camera).inc()
            log.warning("late verdict for %s seq %d ignored: already recorded", v.camera, v.seq)
            return
        if image_parts:
            self._keep_image(v, image_parts)
        self._gather(v)

    def _gather(self, v: Verdict) -> None:
        """The part's row goes to the next group: settled in the watch, so it never gets a second one."""
        if self.watch.settle((v.camera, v.stream, v.seq)):
            if self.drift is not None:
                self._watch_drift(v)
            values = verdict_values(v, self.lot, self.shifts.at(v.t_capture_ns or now_ns()))
            self.committer.add(values, v.t_capture_mono_ns)

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
        if self.keeping.keeps(v.final, v.seq, pass_samples=not self.retention.disk_low):
            relpath = image_relpath(v.camera, v.stream, v.seq, v.final, rc.image_format)
            if self.images.submit(relpath, v.camera, pixels, heatmap):
                v.image = relpath
            else:  # the writer is behind: the row is kept without its image
                metrics.IMAGES_DROPPED.labels(v.camera, v.final).inc()
                if v.final != "PASS" and time.monotonic() - self._image_alarm_at > 60:
                    self._image_alarm_at = time.monotonic()
                    self._raise_alarm(Alarm("record", "image_dropped", f"{v.final} image of {v.camera} seq {v.seq} "
                                            "not kept: the image writer is behind (disk too slow?)"))
        if self.keeping.live_due(v.camera):
            self.images.submit(None, v.camera, pixels)

    def _on_action(self, action: OperatorAction) -> None:
        self.committer.write(partial(self._apply_action, action))

    def _apply_action(self, action: OperatorAction) -> None:
        """Apply an operator's action (lot change, review decision) and publish it once committed."""
        try:
            audit_id = apply_action(self.db, action)
        except ActionError as exc:
            metrics.MESSAGES_REJECTED.labels("record", "action").inc()
            log.error("operator action refused: %s", exc)
            return
        if action.action == "ack_alarm" and self.drift is not None:
            self.drift.acknowledged(unacknowledged_drift(self.db))
        if action.action == "drift_relearn" and self.drift is not None:
            self.drift.relearn(action.detail["camera"])
            log.info("camera %s: drift reference learnt again from the next parts, asked by %s",
                     action.detail["camera"], action.actor)
        if action.action == "review" and self.drift is not None:
            self._realised_accuracy()
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
                    self.committer.write(partial(clear_alarms, self.db, "disk_low", "record", now_ns()))
            else:
                self.committer.write(partial(mark_pruned, self.db, event.ids, event.t_ns))
                metrics.IMAGES_PRUNED.inc(len(event.ids))

    def _raise_alarm(self, alarm: Alarm) -> None:
        """An alarm of record's own: counted here (the other processes' alarms are counted by their sender)."""
        metrics.ALARMS.labels(alarm.kind).inc()
        self._on_alarm(alarm)

    def _on_alarm(self, alarm: Alarm) -> None:
        self.committer.write(partial(self._store_alarm, alarm))

    def _store_alarm(self, alarm: Alarm) -> None:
        alarm_id = insert_alarm(self.db, alarm)
        self.events.send_multipart([b"alarm", json.dumps({"id": alarm_id, **alarm.__dict__}).encode()])

    def _stored_reference(self, key: DriftKey) -> Reference | None:
        try:
            stored = stored_reference(self.db, *key)
            return None if stored is None else Reference.from_json(stored)
        except (ReferenceError, ValueError) as exc:  # unreadable JSON or values: learnt again rather than trusted
            log.error("camera %s: stored drift reference unreadable (%s); learning it again", key[0], exc)
            return None
        except sqlite3.Error as exc:  # a full disk or a locked store: learn again, the line goes on
            log.error("camera %s: drift reference not read from the store (%s); learning it again", key[0], exc)
            return None

    def _watch_drift(self, v: Verdict) -> None:
        """The part through the drift watch (its row gets the signals); a fault in the watch costs no row."""
        assert self.drift is not None
        t0 = time.thread_time_ns()
        try:
            v.signals, alarms = self.drift.observe(v)
        except Exception:  # the watch is advice; the part's row is the promise
            alarms = []
            if time.monotonic() - self._watch_error_at > 60:
                self._watch_error_at = time.monotonic()
                log.exception("drift watch failed on %s seq %d; the part is recorded without it", v.camera, v.seq)
        self.drift_cpu_ns += time.thread_time_ns() - t0
        for alarm in alarms:
            metrics.ALARMS.labels("drift").inc()
            self.committer.write(partial(self._store_drift_alarm, alarm))

    def _store_drift_alarm(self, alarm: DriftAlarm) -> None:
        stored = Alarm("watch", "drift", alarm.text)
        with self.db.atomic():  # both or neither: a write the full disk refuses is retried whole
            alarm_id = insert_alarm(self.db, stored)
            insert_drift_alarm(self.db, alarm_id, stored.t_ns, {
            "camera": alarm.camera, "recipe": alarm.recipe, "model_hash": alarm.model_hash, "signal": alarm.signal,
            "direction": alarm.direction, "reference": alarm.reference, "current": alarm.current,
                "window_parts": alarm.window_parts, "seq": alarm.seq})
        log.warning("%s", alarm.text)
        self.events.send_multipart([b"alarm", json.dumps({"id": alarm_id, **stored.__dict__}).encode()])

    def _drift_housekeeping(self, final: bool = False) -> None:
        """Every watch.state_interval_s (and at stop): store new references and the detectors' state, set the
        gauges."""
        drift = self.drift
        if drift is None or (time.monotonic() < self.drift_due and not final):
            return
        self.drift_due = time.monotonic() + self.cfg.watch.state_interval_s
        t0 = time.thread_time_ns()
        try:
            self._drift_state(drift)
        except Exception:  # state and gauges are a view: a fault here must not stop record
            log.exception("drift watch state not written")
        self.drift_cpu_ns += time.thread_time_ns() - t0
        metrics.WATCH_SECONDS.labels("record").inc(self.drift_cpu_ns / 1e9)
        self.drift_cpu_ns = 0

    def _drift_state(self, drift: DriftWatch) -> None:
        for (camera, recipe, model_hash), learnt in drift.completed:
            self.committer.write(partial(save_reference, self.db, camera, recipe, model_hash, learnt.parts,
                                         learnt.to_json(), now_ns()))
        drift.completed.clear()
        rows = []
        for camera, key in drift.current.items():
            est = drift.estimates.get(camera)
            if est is not None and est.defect_rate is not None:
                metrics.ESTIMATED_DEFECT_RATE.labels(camera).set(est.defect_rate)
                if est.accuracy is not None:
                    metrics.ESTIMATED_ACCURACY.labels(camera).set(est.accuracy)
                rows.append({"camera": camera, "signal": "estimated_defect_rate", "recipe": key[1],
                             "model_hash": key[2], "window_parts": len(est.parts), "window_mean": est.defect_rate})
                rows.append({"camera": camera, "signal": "estimated_accuracy", "recipe": key[1], "model_hash": key[2],
                             "window_parts": est.decided, "window_mean": est.accuracy})
            ref = drift.references(camera)
            for name, sref in (ref.signals.items() if ref else ()):
                up, down = sref.cusum.up, sref.cusum.down
                metrics.DRIFT_STATISTIC.labels(camera, name, "up").set(up.s / up.h)
                metrics.DRIFT_STATISTIC.labels(camera, name, "down").set(down.s / down.h)
                in_drift = (camera, name) in drift.latched
                metrics.DRIFT_ACTIVE.labels(camera, name).set(int(in_drift))
                side = up if up.s / up.h >= down.s / down.h else down
                rows.append({"camera": camera, "signal": name, "recipe": key[1], "model_hash": key[2],
                             "reference": sref.mean, "statistic_up": up.s / up.h, "statistic_down": down.s / down.h,
                             "window_parts": side.n, "window_mean": side.total / side.n if side.n else None,
                             "in_drift": int(in_drift)})
        if rows:
            self.committer.write(partial(write_state, self.db, now_ns(), rows))

    def _realised_accuracy(self) -> None:
        assert self.drift is not None
        for camera in self.drift.current:
            got = realised_accuracy(self.db, camera, self.cfg.watch.window)
            if got is not None:
                metrics.REALISED_ACCURACY.labels(camera).set(got[0])
