"""infer: one or more workers, load-balanced by ZeroMQ. Model + fail-safe -> one verdict per frame.

A frame that cannot be read, or that the model is not made for, still gets a verdict (FAIL with
its reason). When the model cannot be loaded or run, every frame gets the fail-safe's model-down
verdict and an alarm is raised: the line keeps a safe state instead of stopping.
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
from linewatch.failsafe import Decision, FailSafe
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
from linewatch.model import Model, ModelError
from linewatch.process import AlarmSender, mark_ready

log = logging.getLogger("infer")


@dataclass
class _Job:
    header: FrameHeader
    pixels: np.ndarray
    t_received_ns: int
    decision: Decision | None = None
    probs: np.ndarray | None = None


class Infer:
    def __init__(self, cfg: LineConfig, index: int, stop: threading.Event):
        self.cfg, self.index, self.stop = cfg, index, stop
        self.name = f"infer[{index}]"
        self.endpoints = Endpoints(cfg.run_dir)
        self.model: Model | None = None
        self._last_live: dict[str, float] = {}
        self._last_reject_alarm = 0.0

    def _load_model(self, alarms: AlarmSender) -> None:
        mc = self.cfg.model
        try:
            self.model = Model(mc.path, mc.providers, mc.intra_op_threads)
            self.model.warm_up()
        except ModelError as exc:
            self.model = None
            self.model_error = str(exc)
            alarms.raise_alarm("model_unavailable", f"{self.name}: {exc}; every part gets the safe verdict",
                               "critical")
            metrics.MODEL_UP.labels(self.name).set(0)
            return
        info = self.model.info
        for p in self.model.providers:
            metrics.MODEL_INFO.labels(self.name, info.name, info.sha256, p).set(1)
        metrics.MODEL_UP.labels(self.name).set(1)

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
        self._load_model(alarms)
        shape = self.model.frame_shape if self.model else None
        self.failsafe = FailSafe(self.cfg.failsafe, shape)
        info = self.model.info if self.model else None
        mark_ready(self.cfg.run_dir, self.name, model=info.name if info else None,
                   sha256=info.sha256 if info else None, providers=self.model.providers if self.model else [],
                   model_error=None if self.model else self.model_error)
        try:
            while not self.stop.is_set():
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
            job = _Job(header, pixels, t_recv)
            job.decision = self.failsafe.check_frame(header, pixels)
            jobs.append(job)
        t_pre = time.perf_counter()
        ready = [j for j in jobs if j.decision is None]
        infer_ms = 0.0
        if ready and self.model is None:
            for j in ready:
                j.decision = self.failsafe.model_down(getattr(self, "model_error", "model not loaded"))
        elif ready and self.model is not None:
            stacked = np.stack([j.pixels for j in ready])
            t_inf = time.perf_counter()
            try:
                probs = self.model.run(stacked)
            except ModelError as exc:
                alarms.raise_alarm("model_error", f"{self.name}: {exc}", "critical")
                for j in ready:
                    j.decision = self.failsafe.model_down(str(exc))
            else:
                infer_ms = (time.perf_counter() - t_inf) * 1e3
                metrics.INFERENCE_SECONDS.observe(infer_ms / 1e3)
                for j, p in zip(ready, probs, strict=True):
                    j.probs = p
        pre_ms = (time.perf_counter() - t_pre) * 1e3 - infer_ms
        for j in jobs:
            results.append(self._verdict(j, pre_ms, infer_ms))
        return results

    def _verdict(self, j: _Job, pre_ms: float, infer_ms: float) -> tuple[list[Any], list[Any]]:
        t0 = time.perf_counter()
        info = self.model.info if self.model else None
        label = score = probs = None
        if j.probs is not None and info is not None:
            probs = {name: float(x) for name, x in zip(info.labels, j.probs, strict=True)}
            score = float(sum(probs[name] for name in info.defect_labels))
            label = info.labels[int(np.argmax(j.probs))]
            j.decision = self.failsafe.decide(score)
        decision = j.decision
        assert decision is not None
        h = j.header
        metrics.FRAMES_INSPECTED.labels(h.camera).inc()
        verdict = Verdict(
            camera=h.camera, stream=h.stream, seq=h.seq, part_id=h.part_id, final=decision.final,
            decided_by=decision.decided_by, reasons=list(decision.reasons), recipe=self.cfg.recipe,
            model_hash=info.sha256 if info else None, model_name=info.name if info else None,
            ruleset_hash=self.failsafe.ruleset_hash, label=label, score=score, probs=probs,
            t_capture_ns=h.t_capture_ns, t_sent_ns=h.t_sent_ns, t_received_ns=j.t_received_ns, t_decided_ns=now_ns(),
            timings_ms={"queue": round((j.t_received_ns - h.t_sent_ns) / 1e6, 4), "preprocess": round(pre_ms, 4),
                        "inference": round(infer_ms, 4), "failsafe": round((time.perf_counter() - t0) * 1e3, 4)},
            worker=self.name, truth=h.truth,
        )
        pixels: list[Any] = []
        if self._wants_image(verdict):
            pixels = [h.to_bytes(), np.ascontiguousarray(j.pixels).data.cast("B")]
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
