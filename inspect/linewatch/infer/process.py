"""infer: one or more workers, load-balanced by ZeroMQ. Model + fail-safe -> one verdict per frame.

A frame that cannot be read, or that the model is not made for, still gets a verdict (FAIL with
its reason). When the model cannot be loaded or run, gives bad output or is too slow, the worker
enters rules-only mode: parts get the fail-safe's safe verdict and an alarm is raised, until the
model is healthy again. The worker follows the configured model file: a changed file is loaded and
warmed up beside the running model and swapped in between batches (a corrupt one means rules-only).
Each part is inspected under the recipe stamped on it at capture (`FrameHeader.recipe`): a part of another
recipe than the last one switches the worker to that recipe's model and fail-safe rules first (`_use_recipe`;
each recipe's model is loaded once and kept).

Frames are run in micro-batches (`batching.BatchPolicy` decides how long to wait for one to fill),
copied into the model's reused input buffer (`Model.batch_buffer`). Every verdict carries its stage times;
they tile capture to decision without gap or overlap:
acquire (capture -> sent) + transport (sent, or the worker getting free if later, -> received here)
+ queue (waiting for the worker to get free + received -> batch start)
+ preprocess (batch start -> model start: decoding, input-sanity rules, filling the buffer)
+ inference (the model run of the batch) + failsafe (model end -> this frame's verdict, so it
includes the decisions of the frames before it in the batch) = t_decided - t_capture.
All of them are monotonic (`clock.py`): a step of the wall clock changes no stage time.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import zmq

from linewatch import metrics
from linewatch.clock import mono_ns, part_wall_ns
from linewatch.config import LineConfig
from linewatch.failsafe import Decision, FailSafe, FrameView, RulesetError
from linewatch.infer.batching import BatchPolicy
from linewatch.infer.health import ModelFileWatch, ModelHealth, load_model
from linewatch.model.onnx import Model, ModelError, ModelOutputError
from linewatch.model.runtime import SessionSettings
from linewatch.store.images import ImagePolicy, png_bytes
from linewatch.store.queries import current_recipe
from linewatch.watch import sketch
from linewatch.wire import (
    KIND_VERDICT,
    KIND_VERDICT_BATCH,
    Detection,
    Endpoints,
    FrameHeader,
    MessageError,
    Verdict,
    encode_verdict_batch,
    now_ns,
    peek_identity,
)
from linewatch.wire.channels import AlarmSender
from linewatch.wire.endpoints import RemoteEndpoints
from linewatch.wire.frame_ring import FrameReader
from linewatch.wire.ready import mark_ready

log = logging.getLogger("infer")


@dataclass
class _Job:
    header: FrameHeader
    raw_header: Any  # as received: sent back with a kept image, not serialised again
    pixels: np.ndarray
    t_received_mono: int
    t_sent_mono: int
    t_pickup_mono: int  # sent, or when the worker got free to take it if later: transport starts here
    view: FrameView | None = None
    decision: Decision | None = None
    probs: np.ndarray | None = None
    heatmap: np.ndarray | None = None  # the model's anomaly map for this frame, when it has one
    detections: list[Detection] | None = None  # a detection model's boxes for this frame
    embedding: np.ndarray | None = None  # the model's embedding of this frame, when it has one


class Infer:
    """One worker. A child of the line by default; `remote` = (host, port) of a line's `infer.remote` makes it a
    remote worker (`linewatch worker`): frames and record over TCP, its ready file in its own run_dir; with
    `keys` (its own secret key file, the line's public key file) every connection is a CurveZMQ client."""

    def __init__(self, cfg: LineConfig, index: int, stop: threading.Event, remote: tuple[str, int] | None = None,
                 name: str | None = None, keys: tuple[Path, Path] | None = None):
        self.cfg, self.line_cfg, self.index, self.stop = cfg, cfg, index, stop
        self.remote, self.keys = remote, keys
        # by recipe, loaded on its first part, with the model file's signature when it was loaded
        self.models: dict[str, tuple[Model | ModelError, Any]] = {}
        self.name = f"infer[{name if name is not None else index}]"
        self.endpoints = Endpoints(cfg.run_dir) if remote is None else RemoteEndpoints(
            cfg.run_dir, remote[0], remote[1], tuple(c.name for c in cfg.cameras))
        self.model: Model | None = None
        self.health = ModelHealth(cfg.failsafe.model_health.recover_after)
        self.frame_shape: tuple[int, ...] | None = None
        self.images = ImagePolicy(cfg.record)  # the pixels of a verdict travel to record only when kept
        self._last_reject_alarm = 0.0
        self.watch_cpu_ns, self._watch_counted_at = 0, time.monotonic()
        ic = cfg.infer
        self.batching = BatchPolicy(ic.max_batch, ic.batch_wait_ms, ic.latency_target_ms)

    def _use_model(self, loaded: Model | ModelError, alarms: AlarmSender) -> None:
        """Swap in a loaded model (or drop the old one when the configured file is unusable)."""
        if self.model is not None:
            for p in self.model.providers:
                metrics.MODEL_INFO.labels(self.name, self.model.info.name, self.model.info.sha256, p).set(0)
        self.model = loaded if isinstance(loaded, Model) else None
        if self.model is not None:
            self.frame_shape = self.model.frame_shape
        try:
            self.failsafe = FailSafe(self.cfg.failsafe, self.frame_shape, self.model.info if self.model else None)
        except RulesetError as exc:
            self.model, loaded = None, ModelError(f"fail-safe rules for this model: {exc}")
            self.failsafe = FailSafe(self.cfg.failsafe)  # rules that need no model; `run` checked the rest
        if self.model is None:
            assert isinstance(loaded, ModelError)
            self._fault("model_unavailable", str(loaded), alarms)
        else:
            info = self.model.info
            for p in self.model.providers:
                metrics.MODEL_INFO.labels(self.name, info.name, info.sha256, p).set(1)
            for reason in self.model.fallbacks:  # auto fell back from a GPU provider: runs, but slower
                alarms.raise_alarm("model_provider_fallback", f"{self.name}: {reason}; running on "
                                   f"{self.model.providers[0]}", "warning")
            if self.health.loaded():
                alarms.raise_alarm("model_recovered", f"{self.name}: model {info.name} ({info.sha256[:12]}) "
                                   "loaded and healthy; rules-only mode ended", "info")
            self._publish_health()

    def _fault(self, kind: str, reason: str, alarms: AlarmSender) -> None:
        """A model fault: enter (or stay in) rules-only mode; alarm on entering."""
        if self.health.failed(reason):
            alarms.raise_alarm(kind, f"{self.name}: {reason}; rules-only mode, parts get the safe verdict "
                               f"({self.cfg.failsafe.model_down_verdict})", "critical")
        self._publish_health()

    def _publish_health(self) -> None:
        metrics.MODEL_UP.labels(self.name).set(0 if self.health.rules_only else 1)
        metrics.RULES_ONLY.labels(self.name).set(1 if self.health.rules_only else 0)
        info = self.model.info if self.model else None
        mark_ready(self.cfg.run_dir, self.name, model=info.name if info else None,
                   sha256=info.sha256 if info else None, providers=self.model.providers if self.model else [],
                   model_error=self.health.fault if self.model is None else None,
                   rules_only=self.health.rules_only, fault=self.health.fault, ruleset_hash=self.failsafe.ruleset_hash,
                   threads=self.session.intra_op_threads)

    def _follow_model_file(self, alarms: AlarmSender) -> None:
        loaded = self.watch.poll()
        if loaded is not None:
            self.models[self.cfg.recipe] = (loaded, self.watch.seen)
            self._use_model(loaded, alarms)

    def _recipe_model(self) -> Model | ModelError:
        """The model of the recipe in `self.cfg` (loaded on first use, then kept), its file followed from now on:
        a file that changed while the recipe was not in force is loaded by the watch, as any change."""
        self.watch = ModelFileWatch(self.cfg.model, self.cfg.failsafe.model_health, self.session)
        if self.cfg.recipe in self.models:
            model, self.watch.seen = self.models[self.cfg.recipe]
            return model
        try:
            model = load_model(self.cfg.model, self.session)
        except ModelError as exc:
            model = exc
        self.models[self.cfg.recipe] = (model, self.watch.seen)
        return model

    def _use_recipe(self, recipe: str, alarms: AlarmSender) -> None:
        """Switch to `recipe`'s model and rules before deciding its parts (a no-op for the current one)."""
        if recipe != self.cfg.recipe:
            log.info("%s: recipe %s from now on", self.name, recipe)
            self.cfg = self.line_cfg.for_recipe(recipe)
            self._use_model(self._recipe_model(), alarms)

    def run(self) -> None:
        ctx: zmq.Context[Any] = zmq.Context()
        if self.keys is not None:
            from linewatch.wire.remote_keys import join_remote

            join_remote(ctx, *self.keys)
        pull = ctx.socket(zmq.PULL)
        pull.setsockopt(zmq.RCVHWM, self.cfg.infer.frame_queue)
        pull.setsockopt(zmq.LINGER, 0)
        out = ctx.socket(zmq.PUSH)
        out.setsockopt(zmq.SNDHWM, 10_000)
        out.setsockopt(zmq.SNDTIMEO, 1000)
        out.setsockopt(zmq.LINGER, 2000)
        out.connect(self.endpoints.record)
        if self.remote is not None:
            from linewatch.wire.remote_keys import report_refusals

            report_refusals(pull, "frames")
            report_refusals(out, "verdicts")
        alarms = AlarmSender(ctx, self.endpoints, self.name)
        self.frames = FrameReader(ctx, self.endpoints)  # pixels inline or in a camera's shared-memory ring
        self._pin(alarms)  # before the model loads, so ONNX Runtime's threads inherit the core
        self.session = SessionSettings.for_line(self.cfg)
        self.cfg = self.line_cfg.for_recipe(current_recipe(self.cfg.data_dir) or self.cfg.recipe)
        self._use_model(self._recipe_model(), alarms)
        for cam in self.cfg.cameras:  # only now: acquire deals frames to every connected worker, and one still
            pull.connect(self.endpoints.frames(cam.name))  # loading its model would hold them for seconds
        try:
            while not self.stop.is_set():
                self._follow_model_file(alarms)
                t_ready = mono_ns()  # free to take frames: one sent before this waited for the worker, not the wire
                if not pull.poll(100):
                    continue
                for message in self.process(self._collect(pull), alarms, t_ready):
                    try:
                        out.send_multipart(message, copy=False)
                    except zmq.Again:
                        log.error("record not accepting verdicts; the deadline watch will fail these parts")
                self.frames.flush()  # the batch's ring slots go back to acquire
                if time.monotonic() - self._watch_counted_at > 1.0:
                    metrics.WATCH_SECONDS.labels("infer").inc(self.watch_cpu_ns / 1e9)
                    self.watch_cpu_ns, self._watch_counted_at = 0, time.monotonic()
        finally:
            self.frames.close()
            alarms.close()
            pull.close()
            out.close()
            ctx.term()

    def _pin(self, alarms: AlarmSender) -> None:
        """Pin this worker to its core (`infer.cpus`); a core that cannot be used alarms and runs unpinned."""
        cpus = self.cfg.infer.cpus
        if not cpus:
            return
        cpu = cpus[self.index % len(cpus)]
        try:
            os.sched_setaffinity(0, {cpu})
        except OSError as exc:
            alarms.raise_alarm("cpu_pinning", f"{self.name}: cannot pin to CPU {cpu} ({exc.strerror}); "
                               f"running unpinned (this machine has CPUs {sorted(os.sched_getaffinity(0))})")
            return
        log.info("%s pinned to CPU %d", self.name, cpu)

    def _collect(self, pull: zmq.Socket[Any]) -> list[tuple[Any, int]]:
        """Every frame already queued (up to max_batch), then more while the batch policy says to wait."""
        batch: list[tuple[Any, int]] = []
        limit = self.batching.max_batch
        while len(batch) < limit:
            try:
                batch.append((pull.recv_multipart(flags=zmq.NOBLOCK, copy=False), mono_ns()))
                continue
            except zmq.Again:
                pass
            if not batch:
                break
            wait = self.batching.wait_ms(len(batch), (mono_ns() - batch[0][1]) / 1e6)
            if wait <= 0 or not pull.poll(math.ceil(wait)):
                break
        return batch

    def process(self, batch: list[tuple[Any, int]], alarms: AlarmSender,
                t_ready: int = 0) -> list[list[Any]]:
        """Decide every frame of a batch of (message, monotonic time received); return the messages for record: one
        per verdict with an image, one `verdict_batch` for the others.

        `t_ready`: when the worker got free to receive them (the time a frame sent earlier spent waiting
        for the worker counts as queue, not transport)."""
        t_batch = mono_ns()
        results: list[tuple[Verdict, list[Any]]] = []
        decoded = []
        for msg, t_received in batch:
            try:
                decoded.append((msg, t_received, *self.frames.decode(msg)))
            except MessageError as exc:
                results.extend(self._reject(msg, exc, alarms))
        for recipe, run in groupby(decoded, key=lambda d: d[2].recipe or self.line_cfg.recipe):
            self._use_recipe(recipe, alarms)
            results.extend(self._decide(list(run), alarms, t_ready, t_batch))
        return _messages(results)

    def _decide(self, batch: list[tuple[Any, int, FrameHeader, np.ndarray]], alarms: AlarmSender, t_ready: int,
                t_batch: int) -> list[tuple[Verdict, list[Any]]]:
        """The verdicts of frames of one recipe."""
        jobs: list[_Job] = []
        for msg, t_received, header, pixels in batch:
            sent = header.t_sent_mono_ns or t_received  # a header without monotonic times: from receipt
            self.batching.arrived(sent)
            job = _Job(header, msg[0], pixels, t_received, sent, min(max(sent, t_ready), t_received))
            job.decision, job.view = self.failsafe.check_frame(header, pixels)
            jobs.append(job)
        ready = [j for j in jobs if j.decision is None]
        t_model = t_done = 0
        if ready and self.model is not None:
            t_model, t_done = self._run_model(ready, alarms)
        if not t_done:
            t_model = t_done = mono_ns()
        for j in ready:
            if j.decision is None and (j.probs is None or self.health.rules_only):
                j.decision = self.failsafe.model_down(f"rules-only mode: {self.health.fault}", j.view)
        return [self._verdict(j, t_batch, t_model, t_done) for j in jobs]

    def _batch(self, jobs: list[_Job]) -> np.ndarray:
        """The jobs' frames as one batch: in the model's own reused input buffer when they have its frame
        shape (on a GPU that buffer is what IOBinding copies from), else stacked (adapters that resize)."""
        assert self.model is not None
        px = jobs[0].pixels
        if px.shape == self.model.frame_shape and px.dtype == np.uint8:
            buf = self.model.batch_buffer(len(jobs))
            for i, j in enumerate(jobs):
                buf[i] = j.pixels
            return buf
        return np.stack([j.pixels for j in jobs])

    def _run_model(self, ready: list[_Job], alarms: AlarmSender) -> tuple[int, int]:
        """Run the model on a batch; a fault gives these parts the safe verdict. Returns its start and end (ns)."""
        assert self.model is not None
        groups: dict[tuple[tuple[int, ...], str], list[_Job]] = {}  # one model run per frame shape
        for j in ready:
            groups.setdefault((j.pixels.shape, j.pixels.dtype.str), []).append(j)
        t_model = mono_ns()
        try:
            for group in groups.values():
                pred = self.model.predict(self._batch(group))
                maps, boxes, emb = pred.anomaly_maps, pred.detections, pred.embeddings
                for i, (j, p) in enumerate(zip(group, pred.probs, strict=True)):
                    j.probs, j.heatmap = p, None if maps is None else maps[i]
                    j.detections = None if boxes is None else boxes[i]
                    j.embedding = None if emb is None else emb[i]
        except ModelError as exc:
            rule = "model_output" if isinstance(exc, ModelOutputError) else "model_error"
            self._fault(rule, str(exc), alarms)
            for j in ready:
                j.probs = j.heatmap = j.detections = None
                j.decision = self.failsafe.model_down(str(exc), j.view, f"rule:{rule}")
            return t_model, mono_ns()
        t_done = mono_ns()
        infer_ms = (t_done - t_model) / 1e6
        metrics.INFERENCE_SECONDS.observe(infer_ms / 1e3)
        budget = self.cfg.failsafe.model_health.latency_budget_ms
        if infer_ms > budget:
            reason = f"model_latency: batch of {len(ready)} took {infer_ms:.4g} ms > threshold {budget:.4g} ms"
            self._fault("model_latency", reason, alarms)
            for j in ready:
                j.probs = j.heatmap = j.detections = None  # too late to be trusted
                j.decision = self.failsafe.model_down(reason, j.view, "rule:model_latency")
            return t_model, t_done
        self.batching.ran(len(ready), infer_ms)
        if self.health.ran_clean():
            alarms.raise_alarm("model_recovered", f"{self.name}: model healthy again; rules-only mode ended", "info")
            self._publish_health()
        return t_model, t_done

    def _verdict(self, j: _Job, t_batch: int, t_model: int, t_done: int) -> tuple[Verdict, list[Any]]:
        info = self.model.info if self.model else None
        label = score = probs = None
        if j.probs is not None and info is not None:
            probs = {name: float(x) for name, x in zip(info.labels, j.probs, strict=True)}
            score = float(sum(probs[name] for name in info.defect_labels))
            label = info.labels[int(np.argmax(j.probs))]
            if j.decision is None:
                j.decision = self.failsafe.decide(j.view, probs)
        decision = j.decision
        assert decision is not None
        h = j.header
        t_decided = mono_ns()
        timings = _stage_timings(h, j, t_batch, t_model, t_done, t_decided)
        verdict = Verdict(
            camera=h.camera, stream=h.stream, seq=h.seq, part_id=h.part_id, final=decision.final,
            decided_by=decision.decided_by, reasons=list(decision.reasons), recipe=self.cfg.recipe,
            model_hash=info.sha256 if info else None, model_name=info.name if info else None,
            ruleset_hash=self.failsafe.ruleset_hash, label=label, score=score, probs=probs,
            t_capture_ns=h.t_capture_ns, t_sent_ns=h.t_sent_ns,
            t_received_ns=part_wall_ns(h.t_capture_ns, h.t_capture_mono_ns, j.t_received_mono),
            t_decided_ns=part_wall_ns(h.t_capture_ns, h.t_capture_mono_ns, t_decided),
            t_capture_mono_ns=h.t_capture_mono_ns, timings_ms=timings, worker=self.name, truth=h.truth,
            detections=j.detections,
        )
        if self.cfg.watch.enabled:
            verdict.signals, verdict.embedding = self._signals(j)
        pixels: list[Any] = []
        if self._wants_image(verdict):
            pixels = [j.raw_header, self.frames.image(h, j.pixels)]  # taken before the ring slot goes back
            if j.heatmap is not None:  # kept beside the image: a small grey PNG at the map's resolution
                pixels.append(png_bytes((j.heatmap * 255).astype(np.uint8)))
        overwritten = self.frames.finish(h)
        if overwritten is not None:  # the slot was reclaimed mid-inspection: no verdict on mixed pixels
            verdict, pixels = Verdict.not_inspected(h, self.cfg.recipe, overwritten), []
            verdict.worker = self.name
            return verdict, pixels
        metrics.FRAMES_INSPECTED.labels(h.camera).inc()
        if decision.decided_by.startswith("rule:"):
            metrics.FAILSAFE_OVERRIDES.labels(decision.decided_by.removeprefix("rule:"), decision.final).inc()
        return verdict, pixels

    def _signals(self, j: _Job) -> tuple[dict[str, float] | None, list[float] | None]:
        """The frame's drift signals (finite ones: a verdict carries no NaN) and its embedding's sketch, timed as
        the watch's cost."""
        t0 = time.thread_time_ns()
        signals = None
        if j.view is not None:
            try:
                signals = {k: round(x, 6) for k, x in j.view.signals(self.cfg.failsafe.blur.size).items()
                           if math.isfinite(x)}
            except cv2.error as exc:  # a frame the rules could not measure was decided by them already
                log.warning("%s: drift signals of %s seq %d not measured: %s", self.name, j.header.camera,
                            j.header.seq, exc)
        embedding = sketch(j.embedding) if j.embedding is not None else None
        self.watch_cpu_ns += time.thread_time_ns() - t0
        return signals, embedding

    def _wants_image(self, v: Verdict) -> bool:
        return self.images.keeps(v.final, v.seq) or self.images.live_due(v.camera)

    def _reject(self, msg: list[Any], exc: MessageError, alarms: AlarmSender) -> list[tuple[Verdict, list[Any]]]:
        """A malformed frame: a not-inspected FAIL when it can be traced to a part, else an alarm."""
        reason = str(exc)
        metrics.MESSAGES_REJECTED.labels("infer", reason.split(":")[0]).inc()
        log.error("rejected frame message: %s", reason)
        ident = peek_identity(bytes(msg[0])) if msg else None
        if ident is not None:
            cam, stream, seq = ident
            v = Verdict(camera=cam, stream=stream, seq=seq, part_id=f"{cam}-{stream}-{seq}", final="FAIL",
                        decided_by="not_inspected", reasons=[f"malformed frame: {reason}"],
                        recipe=self.cfg.recipe, ruleset_hash=self.failsafe.ruleset_hash,
                        t_decided_ns=now_ns(), worker=self.name)
            return [(v, [])]
        if time.monotonic() - self._last_reject_alarm > 10:
            self._last_reject_alarm = time.monotonic()
            alarms.raise_alarm("malformed_message", f"{self.name} rejected an untraceable frame message: {reason}")
        return []


def _messages(results: list[tuple[Verdict, list[Any]]]) -> list[list[Any]]:
    """A verdict with its image parts travels alone; the batch's other verdicts go as one message."""
    plain = [v for v, image in results if not image]
    messages = [[KIND_VERDICT, v.to_bytes(), *image] for v, image in results if image]
    if len(plain) == 1:
        messages.append([KIND_VERDICT, plain[0].to_bytes()])
    elif plain:
        messages.append([KIND_VERDICT_BATCH, encode_verdict_batch(plain)])
    return messages


_STAGES = ("acquire", "transport", "queue", "preprocess", "inference", "failsafe")
_STAGE_METRICS = [metrics.STAGE_SECONDS.labels(stage) for stage in _STAGES]  # resolved once, not per frame


def _stage_timings(h: FrameHeader, j: _Job, t_batch: int, t_model: int, t_done: int,
                   t_decided: int) -> dict[str, float]:
    """Per-stage ms of one frame (see the module docstring); also observed in the stage histogram."""
    t_pickup, t_received = j.t_pickup_mono, j.t_received_mono
    spans = (h.t_sent_ns - (h.t_capture_ns or h.t_sent_ns), t_received - t_pickup,
             (t_pickup - j.t_sent_mono) + (t_batch - t_received), t_model - t_batch, t_done - t_model,
             t_decided - t_done)
    timings = {}
    for i, stage in enumerate(_STAGES):
        ns = spans[i]
        timings[stage] = round(ns / 1e6, 4)
        _STAGE_METRICS[i].observe(ns / 1e9)
    return timings
