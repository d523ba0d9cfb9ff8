"""The drift report as one self-contained HTML page: per camera, each signal over time against its reference (mean
and ±1 sd band) with its drift alarms marked, their text below, and a table of the performance estimates.

Plots are PNGs drawn with matplotlib and embedded as base64 data URIs, so the page opens anywhere, offline.
"""

from __future__ import annotations

import base64
import io
from datetime import datetime
from html import escape
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import PercentFormatter

from linewatch.reports.drift import CameraDrift, CameraSeries, DriftAlarm, DriftOverview, Estimate
from linewatch.reports.export import iso
from linewatch.watch.signals import SIGNALS

MAX_POINTS = 2000  # points a plot draws per line: per-part values beyond this are averaged in equal-count bins
_CSS = """body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1000px;color:#222}
h2{border-bottom:2px solid #2c3e50;padding-bottom:.2em;margin-top:2em}h3{margin:1.4em 0 .3em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}
th{background:#f3f3f3}.drift{color:#c0392b;font-weight:bold}.muted{color:#777}img{max-width:100%}
ol.alarms li{margin:.2em 0}"""


def thin(t: np.ndarray, v: np.ndarray, max_points: int = MAX_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """At most `max_points` points: the values themselves, or their means over equal-count bins (at mid-bin times)."""
    n = len(v)
    if n <= max_points:
        return t, v
    edges = np.linspace(0, n, max_points + 1).astype(np.int64)
    means = np.add.reduceat(v, edges[:-1]) / np.diff(edges)
    return t[(edges[:-1] + edges[1:] - 1) // 2], means


def rolling(t: np.ndarray, v: np.ndarray, w: int, max_points: int = MAX_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """The mean over the last `w` parts at each part (from the w-th on), sampled to at most `max_points` points."""
    c = np.concatenate(([0.0], np.cumsum(v)))
    r = (c[w:] - c[:-w]) / w
    idx = np.unique(np.linspace(0, len(r) - 1, min(len(r), max_points)).astype(np.int64))
    return t[w - 1:][idx], r[idx]


def _dates(t_ns: np.ndarray) -> np.ndarray:
    return np.asarray(mdates.date2num(np.asarray(t_ns, np.int64).astype("datetime64[ns]")))  # type: ignore[no-untyped-call]


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _plot(name: str, t: np.ndarray, v: np.ndarray, w: int, refs: list[tuple[int, int, float, float]],
          alarms: list[tuple[int, int]]) -> str:
    """One signal over time: per-part values (or bin means), the rolling mean, each reference's mean and ±1 sd band
    over the span its recipe and model were in force, and the alarms as numbered vertical lines."""
    spec = SIGNALS[name]
    tz = datetime.now().astimezone().tzinfo
    fig, ax = plt.subplots(figsize=(9, 2.6))
    if not spec.rate or len(v) > MAX_POINTS:  # a rate's per-part 0/1 values say nothing drawn one by one
        bt, bv = thin(t, v)
        label = "per part" if len(v) <= MAX_POINTS else f"mean of ~{len(v) // MAX_POINTS + 1} parts"
        ax.plot(_dates(bt), bv, ".", ms=2.5, color="#95a5a6", label=label)
    rt, rv = rolling(t, v, w)
    ax.plot(_dates(rt), rv, color="#2c3e50", lw=1.4, label=f"rolling {'share' if spec.rate else 'mean'} ({w} parts)")
    for i, (t0, t1, mean, sd) in enumerate(refs):
        band = sd / np.sqrt(w) if spec.rate else sd  # a rate's band is that of its rolling share
        x0, x1 = _dates(np.array([t0, max(t1, t0 + 1)]))
        ax.hlines(mean, x0, x1, color="#27ae60", lw=1.2, label="reference mean" if i == 0 else "_nolegend_")
        ax.fill_between([x0, x1], mean - band, mean + band, color="#27ae60", alpha=0.15,
                        label=("±1 sd of the rolling share" if spec.rate else "±1 sd") if i == 0 else "_nolegend_")
    for num, t_ns in alarms:
        x = float(_dates(np.array([t_ns]))[0])
        ax.axvline(x, color="#c0392b", ls="--", lw=1)
        ax.text(x, 0.97, f" [{num}]", transform=ax.get_xaxis_transform(), color="#c0392b", va="top", fontsize=8)
    locator = mdates.AutoDateLocator(tz=tz)  # type: ignore[no-untyped-call]
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=tz))  # type: ignore[no-untyped-call]
    if spec.rate:
        ax.yaxis.set_major_formatter(PercentFormatter(xmax=1))
    ax.set_ylabel(spec.unit, fontsize=8)
    ax.tick_params(labelsize=8)
    ax.legend(fontsize=7, loc="lower left", bbox_to_anchor=(0, 1), ncol=4, frameon=False)  # above: hides no point
    ax.grid(alpha=0.3)
    return _png(fig)


def _fmt(value: float | None, rate: bool = False) -> str:
    if value is None:
        return "—"
    return f"{100 * value:.2f} %" if rate else f"{value:.4g}"


def _estimate(e: Estimate | None) -> str:
    return "—" if e is None or e.value is None else f"{100 * e.value:.2f} % <span class=muted>({e.parts} parts)</span>"


def _estimates_table(cam: CameraDrift, cs: CameraSeries | None, realised: tuple[float, int] | None) -> str:
    defect, accuracy = cs.cbpe() if cs else (None, None)
    rates = cs.signals.get("defect_rate") if cs else None
    observed = Estimate(value=float(np.mean(rates.v)), parts=len(rates.v)) if rates and len(rates.v) else None
    here = Estimate(value=realised[0], parts=realised[1]) if realised else None
    e = cam.estimates
    rows = [("estimated defect rate (CBPE)", defect, e.defect_rate),
            ("estimated accuracy (CBPE)", accuracy, e.accuracy),
            ("realised accuracy (reviews)", here, e.realised_accuracy),
            ("observed defect rate (FAIL or REVIEW)", observed, None)]
    body = "".join(f"<tr><td>{escape(n)}</td><td>{_estimate(a)}</td><td>{_estimate(b)}</td></tr>" for n, a, b in rows)
    at = e.defect_rate.at if e.defect_rate else None
    latest = f"latest on the line{f' ({escape(at)})' if at else ''}"
    return f"<table><tr><th></th><th>over this window</th><th>{latest}</th></tr>{body}</table>"


def _alarm_items(alarms: list[tuple[int, DriftAlarm]]) -> str:
    items = []
    for num, a in alarms:
        ack = (f"acknowledged by {escape(a.acknowledged_by)} at {escape(a.acknowledged_at or '')}"
               if a.acknowledged_by else "<span class=drift>not acknowledged</span>")
        items.append(f"<li value={num}>{escape(a.at or '')}: {escape(a.message or a.signal)} — {ack}</li>")
    return f"<ol class=alarms>{''.join(items)}</ol>" if items else ""


def _camera_section(cam: CameraDrift, cs: CameraSeries | None, refs: list[dict[str, Any]],
                    realised: tuple[float, int] | None, window: int) -> str:
    out = [f"<h2>Camera {escape(cam.camera)}</h2>"]
    if cam.reference:
        r = cam.reference
        out.append(f"<p>Recipe <b>{escape(r.recipe)}</b>, model <code>{escape(r.model_hash[:12])}</code>: reference "
                   f"of {r.parts} parts stored {escape(r.at or '')}.</p>")
    elif cam.learning:
        out.append(f"<p>No reference yet for recipe {escape(cam.recipe or '—')}, model "
                   f"<code>{escape((cam.model_hash or '—')[:12])}</code>: {cam.learning.parts} of "
                   f"{cam.learning.of} parts recorded since the last recipe or model change.</p>")
    out += ["<h3>Performance estimates</h3>", _estimates_table(cam, cs, realised)]
    numbered = list(enumerate(cam.alarms, 1))
    plotted = set()
    for name, spec in SIGNALS.items():
        series = cs.signals.get(name) if cs else None
        if series is None or not len(series.v):
            continue
        plotted.add(name)
        assert cs is not None
        t, v = series.arrays()
        spans = []
        for key, (t0, t1) in cs.spans.items():
            ref = _mean_sd(refs, cam.camera, key, name)
            if ref is not None:
                spans.append((t0, t1, *ref))
        mine = [(n, a) for n, a in numbered if a.signal == name]
        w = max(1, min(window, len(v) // 5))
        img = _plot(name, t, v, w, spans, [(n, a.t_ns) for n, a in mine])
        out += [f"<h3>{escape(spec.what)} <span class=muted>({escape(name)}, {escape(spec.unit)})</span></h3>",
                f'<img alt="{escape(name)} over time" src="{img}">', _detector_line(cam, name, spec.rate),
                _alarm_items(mine)]
    others = [(n, a) for n, a in numbered if a.signal not in plotted]
    if others:
        out += ["<h3>Drift alarms on signals without values in this window</h3>", _alarm_items(others)]
    if not cs:
        out.append("<p class=muted>No inspected part from this camera in the window.</p>")
    return "\n".join(out)


def _mean_sd(refs: list[dict[str, Any]], camera: str, key: tuple[str, str], name: str) -> tuple[float, float] | None:
    """The stored reference's mean and sd of a signal for a camera, recipe and model (None: none)."""
    for r in refs:
        if r["camera"] == camera and (r["recipe"], r["model_hash"]) == key and isinstance(r["reference"], dict):
            s = r["reference"].get("signals", {}).get(name)
            try:
                return float(s["mean"]), float(s["sd"])
            except (KeyError, TypeError, ValueError):  # no such signal in it, or unreadable: no band drawn
                return None
    return None


def _detector_line(cam: CameraDrift, name: str, rate: bool) -> str:
    ref = cam.reference.signals.get(name) if cam.reference else None
    state = cam.state.get(name)
    parts = []
    if ref:
        parts.append(f"reference mean {_fmt(ref.mean, rate)}, sd {_fmt(ref.sd, rate)} ({ref.parts} {ref.source} "
                     f"parts; thresholds {ref.h_up:.3g} up, {ref.h_down:.3g} down)")
    if state:
        parts.append(f"CUSUM at {_fmt(state.statistic_up)} (up) and {_fmt(state.statistic_down)} (down) of its "
                     f"threshold, over {state.window_parts or 0} parts of mean {_fmt(state.window_mean, rate)}")
        if state.in_drift:
            parts.append("<span class=drift>in drift</span>")
    return f"<p class=muted>{'; '.join(parts)}</p>" if parts else ""


def render(view: DriftOverview, series: dict[str, CameraSeries], refs: list[dict[str, Any]],
           realised: dict[str, tuple[float, int] | None], *, window: int, title: str) -> str:
    """The whole page: a header with the window, then one section per camera."""
    sections = [_camera_section(cam, series.get(cam.camera), refs, realised.get(cam.camera), window)
                for cam in view.cameras]
    generated = iso(int(datetime.now().timestamp() * 1e9))
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{escape(title)} drift report</title>"
            f"<style>{_CSS}</style></head><body><h1>{escape(title)}: drift report</h1>"
            f"<p>From {escape(view.t_from or '')} to {escape(view.t_to or '')} (generated {escape(generated or '')}). "
            "Each signal against its reference (docs/drift.md); red dashed lines are drift alarms, numbered as listed "
            "below each plot.</p>" + "\n".join(sections) + "</body></html>\n")
