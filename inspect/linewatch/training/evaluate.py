"""Metrics the line cares about, from class probabilities: the same numbers for the card and the gate.

`escape_rate` is the share of defective parts that would PASS, `false_reject_rate` the share of good
parts that would FAIL, `review_rate` the share sent to REVIEW by the confidence band.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def auroc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney U with ties averaged); None with one class only."""
    pos, neg = int(positive.sum()), int((~positive).sum())
    if pos == 0 or neg == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), np.float64)
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[positive].sum() - pos * (pos + 1) / 2) / (pos * neg))


def choose_band(p_defect: np.ndarray, is_defect: np.ndarray, threshold: float = 0.5,
                target_escape: float = 0.01, max_review: float = 0.05,
                min_band: tuple[float, float] = (0.2, 0.8)) -> tuple[float, float]:
    """[low, high) around the threshold: at least `min_band` (a margin for parts unlike the validation
    set), wider where needed to bring escapes down to `target_escape` and false rejects down as far,
    narrowed only if more than `max_review` of the validation parts would go to REVIEW."""
    low, high = min(threshold, min_band[0]), max(threshold, min_band[1])
    defects, goods = np.sort(p_defect[is_defect]), np.sort(p_defect[~is_defect])
    if len(defects):
        low = min(low, float(np.quantile(defects, target_escape, method="lower")))
    if len(goods):
        high = max(high, float(np.quantile(goods, 1 - target_escape, method="higher")) + 1e-6)
    while low < high and np.mean((p_defect >= low) & (p_defect < high)) > max_review:
        low, high = low + (threshold - low) * 0.2, high - (high - threshold) * 0.2
        if threshold - low < 1e-3 and high - threshold < 1e-3:
            return threshold, threshold
    return round(low, 6), round(high, 6)


def evaluate(probs: np.ndarray, targets: np.ndarray, labels: list[str], band: tuple[float, float],
             threshold: float = 0.5) -> dict[str, Any]:
    """Card metrics for probabilities (N, classes) and true class indices; label 0 is the good class."""
    p_defect = probs[:, 1:].sum(axis=1)
    is_defect = targets != 0
    pred = probs.argmax(axis=1)
    fail = p_defect >= threshold
    review = (p_defect >= band[0]) & (p_defect < band[1])
    tp = int((fail & is_defect).sum())
    fp = int((fail & ~is_defect).sum())
    fn = int((~fail & is_defect).sum())
    confusion = np.zeros((len(labels), len(labels)), np.int64)
    np.add.at(confusion, (targets, pred), 1)
    n_def, n_good = max(1, int(is_defect.sum())), max(1, int((~is_defect).sum()))
    return {
        "count": len(targets),
        "accuracy": round(float((fail == is_defect).mean()), 4),
        "class_accuracy": round(float((pred == targets).mean()), 4),
        "f1": round(2 * tp / max(1, 2 * tp + fp + fn), 4),
        "auroc": None if (a := auroc(p_defect, is_defect)) is None else round(a, 4),
        "threshold": threshold,
        "band": list(band),
        # With the band in force: escapes are defects passed outright, false rejects good parts failed.
        "escape_rate": round(int((is_defect & (p_defect < band[0])).sum()) / n_def, 4),
        "false_reject_rate": round(int((~is_defect & (p_defect >= band[1])).sum()) / n_good, 4),
        "review_rate": round(float(review.mean()), 4),
        "model_alone": {"escape_rate": round(fn / n_def, 4), "false_reject_rate": round(fp / n_good, 4)},
        "confusion": {"labels": labels, "matrix": confusion.tolist()},
    }
