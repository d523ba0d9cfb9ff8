"""The drift watch over a line's verdicts: per camera, recipe and model, a reference and one CUSUM per signal.

record feeds it every decided part (`observe`) after the verdict is final: a drift alarm never changes a verdict
(the fail-safe decides parts; the watch tells people the line has changed). A signal that alarms stays quiet until
its alarm is acknowledged (`acknowledged`), then watches again from zero: a drift that lasts alarms again.
Performance is estimated without labels (CBPE, as NannyML does): with calibrated probabilities p(defect), the
expected share of truly defective parts is mean(p) and the expected accuracy of PASS/FAIL verdicts is the mean of
p over FAILs and 1 - p over PASSes.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from linewatch.config import WatchConfig
from linewatch.watch.reference import Learning, Reference, SignalReference, calibrate
from linewatch.watch.signals import IMAGE_SIGNALS, SIGNALS, part_values
from linewatch.wire import Verdict

log = logging.getLogger("watch")

Key = tuple[str, str, str]  # camera, recipe, model hash ("" for none)
_SKIPPED = ("not_inspected", "timeout")  # parts that were never looked at say nothing about the line
_RULES_ONLY = "rule:model_"  # model_unavailable, _error, _output, _latency: the model is down, its own alarm says so
BACKLOG_MAX = 100_000  # parts kept while the thresholds are calibrated (a fraction of a second, normally)
KEYS_KEPT = 4  # references in memory per camera (a hot swap interleaves two models' verdicts for a moment)


@dataclass(frozen=True)
class DriftAlarm:
    """What drifted, by how much, and over how many parts; `text` is the alarm's message."""

    camera: str
    recipe: str
    model_hash: str
    signal: str
    direction: str
    reference: float
    current: float
    window_parts: int
    seq: int
    text: str


@dataclass
class _Watched:
    """One key's state: learning, calibrating (a future), or watching with its reference."""

    learning: Learning | None
    pending: Future[Reference] | None = None
    reference: Reference | None = None
    backlog: list[tuple[dict[str, float], list[float] | None, int]] = field(default_factory=list)  # while calibrating


@dataclass
class Cbpe:
    """Confidence-based performance estimation over the last `window` scored parts (None: every part added), kept
    as running sums: the expected defect rate is the mean p(defect); the expected accuracy of the model's PASS/FAIL
    verdicts is the mean of p over its FAILs and 1 - p over its PASSes."""

    window: int | None = None
    parts: deque[tuple[float, float | None]] = field(default_factory=deque)  # (p, correctness or None)
    scored: int = 0
    p_sum: float = 0.0
    correct_sum: float = 0.0
    decided: int = 0

    def add(self, p: float, final: str, by_model: bool) -> None:
        correct = (p if final == "FAIL" else 1.0 - p) if by_model and final in ("PASS", "FAIL") else None
        self.scored += 1
        self.p_sum += p
        if correct is not None:
            self.correct_sum += correct
            self.decided += 1
        if self.window is None:
            return
        self.parts.append((p, correct))
        if len(self.parts) > self.window:
            old_p, old_c = self.parts.popleft()
            self.scored -= 1
            self.p_sum -= old_p
            if old_c is not None:
                self.correct_sum -= old_c
                self.decided -= 1

    @property
    def defect_rate(self) -> float | None:
        return self.p_sum / self.scored if self.scored else None

    @property
    def accuracy(self) -> float | None:
        return self.correct_sum / self.decided if self.decided else None


class DriftWatch:
    """`stored(key)`: the reference the store holds for a key, if any; `model_signals(model_hash, k, target_arl,
    parts)`: the image signals' references a model supplies (its training images), if any."""

    def __init__(self, cfg: WatchConfig, stored: Callable[[Key], Reference | None],
                 model_signals: Callable[[str, float, float, int], dict[str, SignalReference]] | None = None):
        self.cfg = cfg
        self.k = cfg.shift_sd / 2
        watched: list[str] = list(cfg.signals)
        self.watched, self._watched_names = watched, frozenset(watched)
        # each side of each signal alone alarms once in this many parts: together, once in ert_parts per camera
        self.target_arl = cfg.ert_parts * 2 * len(watched)
        self._stored, self._model_signals = stored, model_signals
        self._keys: dict[str, dict[Key, _Watched]] = {}
        self.current: dict[str, Key] = {}  # each camera's latest key: the one its gauges and state show
        self.latched: set[tuple[str, str]] = set()  # (camera, signal) in drift, until acknowledged
        self.estimates: dict[str, Cbpe] = {}
        self.completed: list[tuple[Key, Reference]] = []  # references calibrated since last taken (to store)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="watch-calibrate")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def observe(self, v: Verdict) -> tuple[dict[str, float] | None, list[DriftAlarm]]:
        """One decided part: its signal values (for its row) and the drift alarms it completes."""
        if v.decided_by in _SKIPPED or v.decided_by.startswith(_RULES_ONLY) or v.model_hash is None:
            return v.signals, []
        key = (v.camera, v.recipe, v.model_hash)
        values = part_values(v)
        watched = self._watched(key)
        self.current[v.camera] = key
        if v.score is not None:
            est = self.estimates.setdefault(v.camera, Cbpe(self.cfg.window))
            est.add(v.score, v.final, v.decided_by == "model")
        ref = self._ready(key, watched)
        if ref is None:
            if watched.pending is not None:  # watched as soon as the thresholds are known: no part goes unwatched
                if len(watched.backlog) < BACKLOG_MAX:
                    watched.backlog.append((values, v.embedding, v.seq))
            elif watched.learning is not None and watched.learning.add(values, v.embedding):
                watched.pending = self._pool.submit(self._calibrate, key, watched.learning)
            return _row_signals(v, None), []
        alarms = []
        if watched.backlog:
            for old_values, old_embedding, seq in watched.backlog:
                alarms += self._detect(key, ref, old_values, old_embedding, seq)[1]
            watched.backlog.clear()
        distance, found = self._detect(key, ref, values, v.embedding, v.seq)
        return _row_signals(v, distance), alarms + found

    def _detect(self, key: Key, ref: Reference, values: dict[str, float], embedding: list[float] | None,
                seq: int) -> tuple[float | None, list[DriftAlarm]]:
        """One part through the detectors: its embedding's distance and the alarms it completes."""
        distance = ref.distance(embedding)
        if distance is not None:
            values["embedding"] = distance
        alarms = []
        for name, sref in ref.signals.items():
            value = values.get(name)
            if value is None or name not in self._watched_names or (key[0], name) in self.latched:
                continue
            side = sref.cusum.update(value)
            if side is not None:
                alarms.append(self._alarm(key, name, sref, side, seq))
        return distance, alarms

    def _watched(self, key: Key) -> _Watched:
        by_key = self._keys.setdefault(key[0], {})
        watched = by_key.get(key)
        if watched is None:
            stored = self._stored(key)
            if stored is None:
                watched = _Watched(Learning(self.cfg.reference_parts))
            elif stored.calibrated_for(self.k, self.target_arl):
                watched = _Watched(None, reference=stored)
                log.info("camera %s: drift reference of recipe %s, model %s taken from the store", *key)
            else:  # the config asks for another allowance or false-alarm rate: the stored distribution, recalibrated
                watched = _Watched(None, self._pool.submit(stored.recalibrated, self.k, self.target_arl))
                log.info("camera %s: stored drift reference of recipe %s, model %s recalibrated for the config", *key)
            by_key[key] = watched
            while len(by_key) > KEYS_KEPT:
                del by_key[next(iter(by_key))]
        return watched

    def _ready(self, key: Key, watched: _Watched) -> Reference | None:
        if watched.reference is None and watched.pending is not None and watched.pending.done():
            try:
                watched.reference = watched.pending.result()
            except Exception:  # a calibration bug must not stop record: learn again, and say so
                log.exception("camera %s: drift reference calibration failed; learning it again", key[0])
                watched.learning, watched.pending = Learning(self.cfg.reference_parts), None
                watched.backlog.clear()
                return None
            watched.learning = watched.pending = None
            self.completed.append((key, watched.reference))
            log.info("camera %s: drift reference learnt over %d parts (recipe %s, model %s): %s", key[0],
                     watched.reference.parts, key[1], key[2][:12], ", ".join(sorted(watched.reference.signals)))
        return watched.reference

    def _calibrate(self, key: Key, learning: Learning) -> Reference:
        given = {}
        if self.cfg.reference == "auto" and self._model_signals is not None:
            supplied = self._model_signals(key[2], self.k, self.target_arl, self.cfg.reference_parts)
            given = {n: r for n, r in supplied.items() if n in IMAGE_SIGNALS and n in self.watched}
        return calibrate(learning, self.watched, self.k, self.target_arl, given)

    def _alarm(self, key: Key, name: str, sref: SignalReference, side: str, seq: int) -> DriftAlarm:
        camera = key[0]
        state = sref.cusum.up if side == "up" else sref.cusum.down
        window, current, ref = state.n, state.total / state.n if state.n else sref.mean, sref.mean
        sref.cusum.reset()
        self.latched.add((camera, name))
        spec = SIGNALS[name]
        if spec.rate:
            change = f"{ref * 100:.1f} % -> {current * 100:.1f} %"
        else:
            rel = f" ({(current - ref) / abs(ref) * 100:+.0f} %)" if abs(ref) > 1e-9 else ""
            change = f"{ref:.3g} -> {current:.3g}{rel}"
        text = (f"drift: camera {camera}, {spec.what} {change}, CUSUM over {window} parts "
                f"(recipe {key[1]}, reference of {sref.parts} {sref.source} parts)")
        return DriftAlarm(camera, key[1], key[2], name, side, ref, current, window, seq, text)

    def acknowledged(self, in_drift: set[tuple[str, str]]) -> None:
        """The (camera, signal) pairs whose drift alarm is still unacknowledged; the others watch again from 0."""
        for camera, name in self.latched - in_drift:
            for watched in self._keys.get(camera, {}).values():
                if watched.reference is not None and name in watched.reference.signals:
                    watched.reference.signals[name].cusum.reset()
        self.latched = set(in_drift)

    def relearn(self, camera: str) -> None:
        """Forget the camera's references (the store's are deleted by the action): its next parts are learnt
        anew, after a deliberate change such as a new lamp or a moved camera."""
        self._keys.pop(camera, None)
        self.current.pop(camera, None)
        self.estimates.pop(camera, None)
        self.latched = {(c, s) for c, s in self.latched if c != camera}

    def references(self, camera: str) -> Reference | None:
        key = self.current.get(camera)
        watched = self._keys.get(camera, {}).get(key) if key else None
        return watched.reference if watched else None

    def learning_progress(self, camera: str) -> tuple[int, int] | None:
        """(parts seen, parts needed) while the camera's current key is still learning its reference."""
        key = self.current.get(camera)
        watched = self._keys.get(camera, {}).get(key) if key else None
        if watched is None or watched.learning is None:
            return None
        return watched.learning.seen, watched.learning.parts


def _row_signals(v: Verdict, distance: float | None) -> dict[str, float] | None:
    """What the part's row keeps: its image signals and its embedding's distance when measured."""
    if distance is None:
        return v.signals
    return {**(v.signals or {}), "embedding": round(distance, 5)}
