"""What the drift watch knows, per camera, read from the store: its reference, its detectors' latest state, the
performance estimates, and its drift alarms (`overview`, served as `GET /api/drift`); and each signal over time
(`load_series`) for the drift report (`drift_report`, an HTML page drawn by `reports/drift_page.py`).

Everything is read through read-only connections (`store/drift.py`): a report never blocks the line.
"""

from __future__ import annotations

import sqlite3
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field

from linewatch.reports.export import ReportError, iso
from linewatch.store.drift import (
    drift_alarms,
    drift_state,
    read_realised_accuracy,
    recent_parts,
    stored_references,
    watched_parts,
)
from linewatch.watch.signals import SIGNALS
from linewatch.watch.watch import Cbpe

NS_MAX = 2**63 - 1
ESTIMATES = ("estimated_defect_rate", "estimated_accuracy")  # drift_state rows that hold the CBPE estimates


class ReferenceSignal(BaseModel):
    what: str = Field(description="What the signal is (docs/drift.md).")
    unit: str
    rate: bool = Field(description="A 0/1 indicator per part: its mean is a rate.")
    source: str = Field(description="`learned` on the line, or `model` (its training images).")
    parts: int = Field(description="Parts the reference stands for.")
    mean: float
    sd: float = Field(description="Standard deviation the signal is standardised with (floored).")
    k: float = Field(description="CUSUM allowance, in sd.")
    h_up: float = Field(description="CUSUM threshold of the upward side, in sd.")
    h_down: float = Field(description="CUSUM threshold of the downward side, in sd.")
    quantiles: list[float] | None = Field(None, description="The reference distribution (only with ?quantiles=true).")


class Reference(BaseModel):
    recipe: str
    model_hash: str
    t_ns: int = Field(description="When it was stored (ns since the epoch).")
    at: str | None = Field(description="The same, ISO 8601 local time.")
    parts: int = Field(description="Parts it was learnt from.")
    signals: dict[str, ReferenceSignal]


class Learning(BaseModel):
    """A camera without a reference for its current recipe and model is learning one."""

    parts: int = Field(description="Watched parts recorded since the last recipe or model change (counted over "
                                   "the store's latest rows).")
    of: int = Field(description="Parts the reference is learnt from (`watch.reference_parts`).")


class DetectorState(BaseModel):
    t_ns: int
    at: str | None
    reference: float | None = Field(description="The reference mean.")
    statistic_up: float | None = Field(description="Upward CUSUM over its threshold: 1 alarms.")
    statistic_down: float | None = Field(description="Downward CUSUM over its threshold: 1 alarms.")
    window_parts: int | None = Field(description="Parts since the leading side last stood at zero.")
    window_mean: float | None = Field(description="The signal's mean over those parts.")
    in_drift: bool = Field(description="A drift alarm on this signal is not yet acknowledged.")


class Estimate(BaseModel):
    value: float | None
    parts: int = Field(description="Parts (or reviews) it is computed over.")
    t_ns: int | None = None
    at: str | None = None


class Estimates(BaseModel):
    defect_rate: Estimate | None = Field(description="CBPE: expected share of truly defective parts.")
    accuracy: Estimate | None = Field(description="CBPE: expected accuracy of the model's PASS/FAIL verdicts.")
    realised_accuracy: Estimate | None = Field(
        description="Share of the last `watch.window` reviewed PASS/FAIL parts whose verdict the reviewer confirmed.")


class DriftAlarm(BaseModel):
    alarm_id: int
    t_ns: int
    at: str | None
    signal: str
    direction: str | None = Field(description="`up` or `down`.")
    statistic: str | None
    reference: float | None = Field(description="The reference mean.")
    current: float | None = Field(description="The mean over the alarm's window.")
    window_parts: int | None
    seq: int | None = Field(description="Sequence number of the part that completed the alarm.")
    recipe: str | None
    model_hash: str | None
    message: str | None = Field(description="The alarm's text, as the HMI shows it.")
    acknowledged_by: str | None
    acknowledged_at: str | None


class CameraDrift(BaseModel):
    camera: str
    recipe: str | None = Field(description="The recipe the camera's watch follows now.")
    model_hash: str | None = Field(description="The model the camera's watch follows now.")
    reference: Reference | None = Field(description="Its reference; null while none is learnt yet.")
    learning: Learning | None = Field(description="How far learning the reference is (only without one).")
    state: dict[str, DetectorState] = Field(description="The detectors' latest state per signal.")
    estimates: Estimates
    alarms: list[DriftAlarm] = Field(description="Drift alarms in the window, oldest first (the newest `limit`).")
    alarms_in_window: int


class DriftOverview(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    t_from: str | None = Field(alias="from", description="Start of the alarms' window (inclusive), if given.")
    t_to: str | None = Field(alias="to", description="End of the alarms' window (exclusive), if given.")
    cameras: list[CameraDrift]


def overview(data_dir: Path, cameras: Sequence[str], since_ns: int | None = None, until_ns: int | None = None, *,
             window: int = 500, reference_parts: int = 1000, quantiles: bool = False,
             alarm_limit: int | None = None) -> DriftOverview:
    """The drift watch's view of each camera: its reference, detectors, estimates and the alarms in the window."""
    refs, states = stored_references(data_dir), drift_state(data_dir)
    alarms = drift_alarms(data_dir, _stored(since_ns or 0), _stored(NS_MAX if until_ns is None else until_ns) - 1)
    return DriftOverview(
        t_from=iso(since_ns) if since_ns is not None else None, t_to=iso(until_ns) if until_ns is not None else None,
        cameras=[_camera(data_dir, c, [r for r in refs if r["camera"] == c], [s for s in states if s["camera"] == c],
                         [a for a in alarms if a["camera"] == c], window, reference_parts, quantiles, alarm_limit,
                         len(cameras)) for c in cameras])


def _camera(data_dir: Path, camera: str, refs: list[dict[str, Any]], states: list[dict[str, Any]],
            alarms: list[dict[str, Any]], window: int, reference_parts: int, quantiles: bool,
            alarm_limit: int | None, n_cameras: int) -> CameraDrift:
    span = reference_parts * max(8, 2 * n_cameras)  # the store's latest rows looked at: a bounded scan
    key = _current_key(data_dir, camera, states, refs, span)
    stored = next((r for r in refs if key and (r["recipe"], r["model_hash"]) == key), None)
    reference = _reference(stored, quantiles) if stored else None
    learning = None
    if reference is None:
        learning = Learning(parts=_parts_since_change(data_dir, camera, key, reference_parts, span), of=reference_parts)
    realised = read_realised_accuracy(data_dir, camera, window)
    est = {s["signal"]: s for s in states if s["signal"] in ESTIMATES}
    shown = alarms if alarm_limit is None else alarms[-alarm_limit:]
    return CameraDrift(
        camera=camera, recipe=key[0] if key else None, model_hash=key[1] if key else None, reference=reference,
        learning=learning,
        state={s["signal"]: _state(s) for s in states
               if s["signal"] not in ESTIMATES and key and (s["recipe"], s["model_hash"]) == key},
        estimates=Estimates(defect_rate=_estimate(est.get("estimated_defect_rate")),
                            accuracy=_estimate(est.get("estimated_accuracy")),
                            realised_accuracy=Estimate(value=realised[0], parts=realised[1]) if realised else None),
        alarms=[_alarm(a) for a in shown], alarms_in_window=len(alarms))


def _current_key(data_dir: Path, camera: str, states: list[dict[str, Any]], refs: list[dict[str, Any]],
                 span: int) -> tuple[str, str] | None:
    """The (recipe, model hash) the camera's watch follows: its latest state's, else its latest watched part's,
    else its newest stored reference's."""
    if states:
        latest = max(states, key=lambda s: s["t_ns"])
        return str(latest["recipe"]), str(latest["model_hash"])
    for r in recent_parts(data_dir, camera, 1000, span):
        if _is_watched(r["decided_by"]) and r["model_hash"] is not None:
            return str(r["recipe"]), str(r["model_hash"])
    return (str(refs[0]["recipe"]), str(refs[0]["model_hash"])) if refs else None


def _parts_since_change(data_dir: Path, camera: str, key: tuple[str, str] | None, limit: int, span: int) -> int:
    if key is None:
        return 0
    n = 0
    for r in recent_parts(data_dir, camera, limit * 2, span):
        if not _is_watched(r["decided_by"]) or r["model_hash"] is None:
            continue
        if (r["recipe"], r["model_hash"]) != key:
            break
        n += 1
    return min(n, limit)


def _is_watched(decided_by: str) -> bool:
    return decided_by == "model" or decided_by.startswith("rule:")


def _reference(stored: dict[str, Any], quantiles: bool) -> Reference | None:
    ref = stored["reference"]
    try:
        signals = {name: _reference_signal(name, s, quantiles) for name, s in ref["signals"].items()}
        return Reference(recipe=stored["recipe"], model_hash=stored["model_hash"], t_ns=stored["t_ns"],
                         at=iso(stored["t_ns"]), parts=int(stored["parts"] or ref["parts"]), signals=signals)
    except (KeyError, TypeError, ValueError):  # unreadable: the watch learns it again too
        return None


def _reference_signal(name: str, s: dict[str, Any], quantiles: bool) -> ReferenceSignal:
    spec = SIGNALS.get(name)
    return ReferenceSignal(
        what=spec.what if spec else name, unit=spec.unit if spec else "", rate=spec.rate if spec else False,
        source=str(s.get("source", "learned")), parts=int(s["parts"]), mean=float(s["mean"]), sd=float(s["sd"]),
        k=float(s["k"]), h_up=float(s["h_up"]), h_down=float(s["h_down"]),
        quantiles=[float(q) for q in s["quantiles"]] if quantiles else None)


def _state(s: dict[str, Any]) -> DetectorState:
    return DetectorState(t_ns=s["t_ns"], at=iso(s["t_ns"]), reference=s["reference"], statistic_up=s["statistic_up"],
                         statistic_down=s["statistic_down"], window_parts=s["window_parts"],
                         window_mean=s["window_mean"], in_drift=bool(s["in_drift"]))


def _estimate(s: dict[str, Any] | None) -> Estimate | None:
    if s is None:
        return None
    return Estimate(value=s["window_mean"], parts=s["window_parts"] or 0, t_ns=s["t_ns"], at=iso(s["t_ns"]))


def _alarm(a: dict[str, Any]) -> DriftAlarm:
    return DriftAlarm(alarm_id=a["alarm_id"], t_ns=a["t_ns"], at=iso(a["t_ns"]), signal=a["signal"],
                      direction=a["direction"], statistic=a["statistic"], reference=a["reference"],
                      current=a["current"], window_parts=a["window_parts"], seq=a["seq"], recipe=a["recipe"],
                      model_hash=a["model_hash"], message=a["message"], acknowledged_by=a["acknowledged_by"],
                      acknowledged_at=iso(a["t_ack_ns"]))


def _stored(t_ns: int) -> int:
    """A window bound as the store can compare it (a bound past 1677-2262 would not fit its integers)."""
    return min(max(t_ns, -(2**63) + 1), NS_MAX)


# --- each signal over time, for the report -------------------------------------------------------------------

@dataclass
class Series:
    """One signal of one camera over the window: capture times (ns) and per-part values, in capture order."""

    t: array[int] = field(default_factory=lambda: array("q"))
    v: array[float] = field(default_factory=lambda: array("d"))

    def add(self, t_ns: int, value: float) -> None:
        self.t.append(t_ns)
        self.v.append(value)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return np.frombuffer(self.t, np.int64), np.frombuffer(self.v, np.float64)


@dataclass
class CameraSeries:
    """A camera's signals over the window, and when each (recipe, model) was seen in it (its reference's span)."""

    signals: dict[str, Series] = field(default_factory=dict)
    spans: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    parts: int = 0
    estimates: Cbpe = field(default_factory=Cbpe)  # CBPE over the whole window, as the watch does over its own

    def add(self, name: str, t_ns: int, value: float) -> None:
        self.signals.setdefault(name, Series()).add(t_ns, value)

    def cbpe(self) -> tuple[Estimate | None, Estimate | None]:
        """(expected defect rate, expected accuracy of the model's PASS/FAIL verdicts) over the window."""
        e = self.estimates
        rate = Estimate(value=e.defect_rate, parts=e.scored) if e.defect_rate is not None else None
        return rate, Estimate(value=e.accuracy, parts=e.decided) if e.accuracy is not None else None


def load_series(data_dir: Path, since_ns: int, until_ns: int, camera: str | None = None) -> dict[str, CameraSeries]:
    """Every watched part's signals in [since_ns, until_ns), per camera: the image signals from its row's `signals`,
    the model's `score`, and the 0/1 `defect_rate` (FAIL or REVIEW) and `override_rate` (a rule decided)."""
    out: dict[str, CameraSeries] = {}
    try:
        for cam, t, recipe, model_hash, final, decided_by, score, signals in watched_parts(
                data_dir, _stored(since_ns), _stored(until_ns), camera):
            cs = out.setdefault(cam, CameraSeries())
            cs.parts += 1
            span = cs.spans.setdefault((recipe, model_hash), [t, t])
            span[1] = t
            if signals:
                for name, value in orjson.loads(signals).items():
                    if name in SIGNALS and isinstance(value, int | float):
                        cs.add(name, t, float(value))
            if score is not None:
                cs.add("score", t, float(score))
                cs.estimates.add(float(score), final, decided_by == "model")
            cs.add("defect_rate", t, float(final != "PASS"))
            cs.add("override_rate", t, float(decided_by.startswith("rule:")))
    except sqlite3.OperationalError as exc:
        raise ReportError(f"no store to report on in {data_dir}: {exc}") from None
    return out


@dataclass(frozen=True)
class DriftQuery:
    t_from_ns: int
    t_to_ns: int
    camera: str | None = None


def drift_report(data_dir: Path, q: DriftQuery, out: Path, *, window: int = 500, reference_parts: int = 1000,
                 title: str = "linewatch") -> Path:
    """Write the drift report of the window to `out` (HTML, plots embedded); ReportError when there is nothing to
    report (no store, or no watched part and no drift alarm in the window)."""
    from linewatch.reports.drift_page import render  # matplotlib loads only for the report

    if q.t_to_ns <= q.t_from_ns:
        raise ReportError(f"--to ({iso(q.t_to_ns)}) must be after --from ({iso(q.t_from_ns)})")
    if not (data_dir / "linewatch.db").is_file():
        raise ReportError(f"no store to report on in {data_dir} (the line has not run on this data_dir yet)")
    series = load_series(data_dir, q.t_from_ns, q.t_to_ns, q.camera)
    alarmed = {a["camera"] for a in drift_alarms(data_dir, _stored(q.t_from_ns), _stored(q.t_to_ns) - 1, q.camera)}
    cameras = sorted(set(series) | alarmed)
    if not cameras:
        raise ReportError(f"nothing to report: no inspected part and no drift alarm between {iso(q.t_from_ns)} and "
                          f"{iso(q.t_to_ns)}" + (f" on camera {q.camera}" if q.camera else ""))
    view = overview(data_dir, cameras, q.t_from_ns, q.t_to_ns, window=window, reference_parts=reference_parts)
    refs = stored_references(data_dir)
    realised = {c: read_realised_accuracy(data_dir, c, None, _stored(q.t_from_ns), _stored(q.t_to_ns)) for c in cameras}
    page = render(view, series, refs, realised, window=window, title=title)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out
