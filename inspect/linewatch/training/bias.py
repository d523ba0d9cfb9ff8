"""Bias audit: the line's metrics per segment (camera, product variant, lighting, shift, lot: whatever columns
the data's manifest has), each with a bootstrap confidence interval, and the largest gap between two segments.

The same numbers serve the model card (on the validation split), the promotion gate (on the recipe's holdout,
candidate against active) and the QA report. A part's decision is the line's: FAIL at `threshold`, REVIEW
inside the band, as in `evaluate.py`.
"""

from __future__ import annotations

from itertools import combinations
from typing import Any

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 999
MAX_SEGMENT_VALUES = 20  # more distinct values: an id column (seq, part, path), not a segment
MIN_GAP_SAMPLES = 10  # parts a segment needs to take part in the largest gap of a card
NO_VALUE = "(none)"  # a part without this column
GAP_METRICS = ("accuracy", "escape_rate", "false_reject_rate")


def _interval(hits: np.ndarray) -> list[float] | None:
    """The bootstrap percentile interval of a rate (the mean of 0/1 outcomes); None under two outcomes.

    RESAMPLES resamples of the parts with replacement from a fixed seed, the rate of each, and the quantiles
    of those rates at (1 - CONFIDENCE) / 2 and 1 - that: SciPy's `bootstrap(method="percentile")` with the same
    generator draws the same resamples (its quantile interpolates in another order: a bound exactly halfway
    between two 4-decimal values may round the other way)."""
    if len(hits) < 2:
        return None
    if hits.min() == hits.max():  # every resample gives the same rate: the interval is that point
        return [float(hits[0]), float(hits[0])]
    resampled = hits.astype(np.float64)[np.random.default_rng(0).integers(0, len(hits), (RESAMPLES, len(hits)))]
    alpha = (1 - CONFIDENCE) / 2
    low, high = np.quantile(resampled.mean(axis=1), [alpha, 1 - alpha])
    return [round(float(low), 4), round(float(high), 4)]


def _rate(hits: np.ndarray) -> tuple[float | None, list[float] | None]:
    return (round(float(hits.mean()), 4) if len(hits) else None), _interval(hits)


def segment_metrics(p_defect: np.ndarray, is_defect: np.ndarray, band: tuple[float, float],
                    threshold: float = 0.5) -> dict[str, Any]:
    """Count, accuracy, escape, false-reject and REVIEW rates of one segment's parts, the first three with their
    interval (`<metric>_ci`, None when the segment has fewer than two parts of the kind the rate counts)."""
    fail = p_defect >= threshold
    accuracy, accuracy_ci = _rate(fail == is_defect)
    escape, escape_ci = _rate(p_defect[is_defect] < band[0])
    false_reject, false_reject_ci = _rate(p_defect[~is_defect] >= band[1])
    review = (p_defect >= band[0]) & (p_defect < band[1])
    return {"count": len(p_defect), "defects": int(is_defect.sum()),
            "accuracy": accuracy, "accuracy_ci": accuracy_ci, "escape_rate": escape, "escape_rate_ci": escape_ci,
            "false_reject_rate": false_reject, "false_reject_rate_ci": false_reject_ci,
            "review_rate": round(float(review.mean()), 4) if len(review) else None}


def audit(segments: list[dict[str, str]], p_defect: np.ndarray, is_defect: np.ndarray, band: tuple[float, float],
          threshold: float = 0.5, min_samples: int = MIN_GAP_SAMPLES) -> dict[str, Any]:
    """Per column and value, `segment_metrics`; and the largest gap between two values of one column, among
    values with at least `min_samples` parts. `segments[i]` is part i's manifest columns."""
    columns: dict[str, Any] = {}
    for col in sorted({k for s in segments for k in s}):
        values = np.array([s.get(col) or NO_VALUE for s in segments])
        distinct = sorted(set(values.tolist()))
        if len(distinct) > MAX_SEGMENT_VALUES:
            continue
        columns[col] = {v: segment_metrics(p_defect[values == v], is_defect[values == v], band, threshold)
                        for v in distinct}
    return {"confidence": CONFIDENCE, "resamples": RESAMPLES, "min_samples": min_samples, "segments": columns,
            "largest_gap": largest_gap(columns, min_samples)}


def largest_gap(columns: dict[str, Any], min_samples: int) -> dict[str, Any] | None:
    """The two values of one column furthest apart in one metric (accuracy, escape or false-reject rate), both
    with at least `min_samples` parts; `overlap` says whether their intervals overlap (a gap within the noise)."""
    best: dict[str, Any] | None = None
    for col, values in columns.items():
        enough = {v: m for v, m in values.items() if m["count"] >= min_samples}
        for metric in GAP_METRICS:
            for (a, ma), (b, mb) in combinations(enough.items(), 2):
                if ma[metric] is None or mb[metric] is None:
                    continue
                diff = abs(ma[metric] - mb[metric])
                if best is None or diff > best["difference"]:
                    better_high = metric == "accuracy"
                    (worse, mw), (other, mo) = sorted([(a, ma), (b, mb)], key=lambda x: x[1][metric],
                                                      reverse=not better_high)
                    cw, co = mw[f"{metric}_ci"], mo[f"{metric}_ci"]
                    best = {"column": col, "metric": metric, "worse": worse, "better": other,
                            "worse_value": mw[metric], "better_value": mo[metric], "difference": round(diff, 4),
                            "overlap": None if cw is None or co is None else bool(cw[0] <= co[1] and co[0] <= cw[1])}
    return best


def describe_gap(gap: dict[str, Any] | None) -> str:
    """One line for people: which segment is worst, in what, by how much."""
    if gap is None:
        return "largest gap: none (no two segments of one column with enough parts)"
    unit = 100 * gap["difference"]
    noise = {True: "; the intervals overlap", False: "; the intervals do not overlap", None: ""}[gap["overlap"]]
    return (f"largest gap: {gap['column']} {gap['worse']} vs {gap['better']}, {gap['metric'].replace('_', ' ')} "
            f"{100 * gap['worse_value']:.1f} % vs {100 * gap['better_value']:.1f} % ({unit:.1f} points{noise})")


def regressions(candidate: dict[str, Any], active: dict[str, Any], tolerance: float, min_samples: int) -> list[str]:
    """Where the candidate is worse than the active model beyond `tolerance`, segment by segment (audits of the
    same holdout); segments with fewer than `min_samples` parts are not judged."""
    worse = []
    for col, values in candidate.get("segments", {}).items():
        for value, c in values.items():
            a = active.get("segments", {}).get(col, {}).get(value)
            if a is None or c["count"] < min_samples:
                continue
            where = f"segment {col}={value} ({c['count']} parts)"
            if c["accuracy"] < a["accuracy"] - tolerance:
                worse.append(f"{where}: accuracy {c['accuracy']:.4f} < {a['accuracy']:.4f} - {tolerance} "
                             f"(by {a['accuracy'] - c['accuracy']:.4f})")
            if c["escape_rate"] is not None and a["escape_rate"] is not None \
                    and c["escape_rate"] > a["escape_rate"] + tolerance:
                worse.append(f"{where}: escape rate {c['escape_rate']:.4f} > {a['escape_rate']:.4f} + {tolerance} "
                             f"(by {c['escape_rate'] - a['escape_rate']:.4f})")
    return worse


def card_fields(segments: list[dict[str, str]], p_defect: np.ndarray, is_defect: np.ndarray,
                band: tuple[float, float], threshold: float = 0.5) -> dict[str, Any]:
    """The card's `segments` (per column and value) and `bias` (interval settings, the largest gap and its line
    for people, `summary`, which the QA report prints as it is)."""
    found = audit(segments, p_defect, is_defect, band, threshold)
    return {"segments": found.pop("segments"), "bias": {**found, "summary": describe_gap(found["largest_gap"])}}
