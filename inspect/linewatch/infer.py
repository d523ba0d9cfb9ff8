"""infer: one or more workers, load-balanced by ZeroMQ. Model + fail-safe -> one verdict per frame.

A frame that cannot be read, or that the model is not made for, still gets a verdict (FAIL with
its reason). When the model cannot be loaded or run, gives bad output or is too slow, the worker
enters rules-only mode: parts get the fail-safe's safe verdict and an alarm is raised, until the
model is healthy again. The worker follows the configured model file: a changed file is loaded and
warmed up beside the running model and swapped in between batches (a corrupt one means rules-only).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import zmq

from linewatch import metrics
from linewatch.config import LineConfig
from linewatch.failsafe import Decision, FailSafe, FrameView, RulesetError
from linewatch.failsafe.health import ModelFileWatch, ModelHealth, load_model
from linewatch.messages import (
    KIND_VERDICT,
    Endpoints,
    FrameHeader,
    MessageError,
    Verdict,
    decode_frame,
    now_ns,
    peek_identity,
)
from linewatch.model import Model, ModelError, ModelOutputError
from linewatch.process import AlarmSender, mark_ready

log = logging.getLogger("infer")


@dataclass
class _Job:
    header: FrameHeader
    raw_header: Any  # as received: sent back with a kept image, not serialised again
    pixels: np.ndarray
    t_received_ns: int
    view: FrameView | None = None
    rules_ms: float = 0.0  # input sanity rules, counted in the verdict's failsafe time
    decision: Decision | None = None
    probs: np.ndarray | None = None


class Infer:
    def __init__(self, cfg: LineConfig, index: int, stop: threading.Event):
        self.cfg, self.index, self.stop = cfg, index, stop
        self.name = f"infer[{index}]"
        self.endpoints = Endpoints(cfg.run_dir)
        self.model: Model | None = None
        self.health = ModelHealth(cfg.failsafe.model_health.recover_after)
        self.frame_shape: tuple[int, ...] | None = None
        self._last_live: dict[str, float] = {}
        self._last_reject_alarm = 0.0

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
                   rules_only=self.health.rules_only, fault=self.health.fault, ruleset_hash=self.failsafe.ruleset_hash)

    def _follow_model_file(self, alarms: AlarmSender) -> None:
        loaded = self.watch.poll()
        if loaded is not None:
            self._use_model(loaded, alarms)

    def run(self) -> None:
        ctx: zmq.Context[Any] = zmq.Context()
        pull = ctx.socket(zmq.PULL)
        pull.setsockopt(zmq.RCVHWM, self.cfg.infer.frame_queue)
        pull.setsockopt(zmq.LINGER, 0)
        for cam in self.cfg.cameras:
            pull.connect(self.endpoints.frames(cam.name))
        out = ctx.socket(zmq.PUSH)
        out.setsockopt(zmq.SNDHWM, 10_000)
        out.setsockopt(zmq.SNDTIMEO, 1000)
        out.setsockopt(zmq.LINGER, 2000)
        out.connect(self.endpoints.record)
        alarms = AlarmSender(ctx, self.endpoints, self.name)
        self.watch = ModelFileWatch(self.cfg.model, self.cfg.failsafe.model_health)
        try:
            first: Model | ModelError = load_model(self.cfg.model)
        except ModelError as exc:
            first = exc
        self._use_model(first, alarms)
        try:
            while not self.stop.is_set():
                self._follow_model_file(alarms)
                if not pull.poll(100):
                    continue
                batch: list[list[Any]] = []
                while len(batch) < self.cfg.infer.max_batch:
                    try:
                        batch.append(pull.recv_multipart(flags=zmq.NOBLOCK, copy=False))
                    except zmq.Again:
                        break
                for parts, pixels in self.process(batch, alarms):
                    try:
                        out.send_multipart(parts + pixels, copy=False)
                    except zmq.Again:
                        log.error("record not accepting verdicts; the deadline watch will fail these parts")
        finally:
            alarms.close()
            pull.close()
            out.close()
            ctx.term()

    def process(self, batch: list[list[Any]], alarms: AlarmSender) -> list[tuple[list[Any], list[Any]]]:
        """Decide every frame in a batch; return the messages for record."""
        t_recv = now_ns()
        jobs: list[_Job] = []
        results: list[tuple[list[Any], list[Any]]] = []
        for msg in batch:
            try:
                header, pixels = decode_frame(msg)
            except MessageError as exc:
                results.extend(self._reject(msg, exc, alarms))
                continue
            job = _Job(header, msg[0], pixels, t_recv)
            t_rules = time.perf_counter()
            job.decision, job.view = self.failsafe.check_frame(header, pixels)
            job.rules_ms = (time.perf_counter() - t_rules) * 1e3
            jobs.append(job)
        t_pre = time.perf_counter()
        ready = [j for j in jobs if j.decision is None]
        infer_ms = 0.0
        if ready and self.model is not None:
            infer_ms = self._run_model(ready, alarms)
        for j in ready:
            if j.decision is None and (j.probs is None or self.health.rules_only):
                j.decision = self.failsafe.model_down(f"rules-only mode: {self.health.fault}", j.view)
        pre_ms = (time.perf_counter() - t_pre) * 1e3 - infer_ms
        for j in jobs:
            results.append(self._verdict(j, pre_ms, infer_ms))
        return results

    def _run_model(self, ready: list[_Job], alarms: AlarmSender) -> float:
        """Run the model on a batch; a fault gives these parts the safe verdict. Returns its time in ms."""
        assert self.model is not None
        t_inf = time.perf_counter()
        try:
            probs = self.model.run(np.stack([j.pixels for j in ready]))
        except ModelError as exc:
            rule = "model_output" if isinstance(exc, ModelOutputError) else "model_error"
            self._fault(rule, str(exc), alarms)
            for j in ready:
                j.decision = self.failsafe.model_down(str(exc), j.view, f"rule:{rule}")
            return (time.perf_counter() - t_inf) * 1e3
        infer_ms = (time.perf_counter() - t_inf) * 1e3
        metrics.INFERENCE_SECONDS.observe(infer_ms / 1e3)
        budget = self.cfg.failsafe.model_health.latency_budget_ms
        if infer_ms > budget:
            reason = f"model_latency: batch of {len(ready)} took {infer_ms:.4g} ms > threshold {budget:.4g} ms"
            self._fault("model_latency", reason, alarms)
            for j in ready:
                j.decision = self.failsafe.model_down(reason, j.view, "rule:model_latency")
            return infer_ms
        if self.health.ran_clean():
            alarms.raise_alarm("model_recovered", f"{self.name}: model healthy again; rules-only mode ended", "info")
            self._publish_health()
        for j, p in zip(ready, probs, strict=True):
            j.probs = p
        return infer_ms

    def _verdict(self, j: _Job, pre_ms: float, infer_ms: float) -> tuple[list[Any], list[Any]]:
        t0 = time.perf_counter()
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
        metrics.FRAMES_INSPECTED.labels(h.camera).inc()
        if decision.decided_by.startswith("rule:"):
            metrics.FAILSAFE_OVERRIDES.labels(decision.decided_by.removeprefix("rule:"), decision.final).inc()
        verdict = Verdict(
            camera=h.camera, stream=h.stream, seq=h.seq, part_id=h.part_id, final=decision.final,
            decided_by=decision.decided_by, reasons=list(decision.reasons), recipe=self.cfg.recipe,
            model_hash=info.sha256 if info else None, model_name=info.name if info else None,
            ruleset_hash=self.failsafe.ruleset_hash, label=label, score=score, probs=probs,
            t_capture_ns=h.t_capture_ns, t_sent_ns=h.t_sent_ns, t_received_ns=j.t_received_ns, t_decided_ns=now_ns(),
            timings_ms={"queue": round((j.t_received_ns - h.t_sent_ns) / 1e6, 4), "preprocess": round(pre_ms, 4),
                        "inference": round(infer_ms, 4),
                        "failsafe": round(j.rules_ms + (time.perf_counter() - t0) * 1e3, 4)},
            worker=self.name, truth=h.truth,
        )
        pixels: list[Any] = []
        if self._wants_image(verdict):
            pixels = [j.raw_header, j.pixels.data.cast("B")]  # pixels: a view of the received buffer
        return [KIND_VERDICT, verdict.to_bytes()], pixels

    def _wants_image(self, v: Verdict) -> bool:
        rc = self.cfg.record
        if v.final != "PASS" or (rc.pass_sample_every and v.seq % rc.pass_sample_every == 0):
            return True
        now = time.monotonic()
        if rc.live_view_hz and now - self._last_live.get(v.camera, 0.0) >= 1.0 / rc.live_view_hz:
            self._last_live[v.camera] = now
            return True
        return False

    def _reject(self, msg: list[Any], exc: MessageError, alarms: AlarmSender) -> list[tuple[list[Any], list[Any]]]:
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
            return [([KIND_VERDICT, v.to_bytes()], [])]
        if time.monotonic() - self._last_reject_alarm > 10:
            self._last_reject_alarm = time.monotonic()
            alarms.raise_alarm("malformed_message", f"{self.name} rejected an untraceable frame message: {reason}")
        return []
