"""A part's decision log for the operator: each input check of the rule set, the part's measured value,
the limit, and whether it held.

The worker measures every part's signals (`FrameView.signals`) with the same code the rules use, and
they are stored with the row; the limits are the rule set's. So the log is rebuilt from the row rather
than carried in every verdict on the hot path. It says which rule decided; the checks after a deciding
input rule did not run (the first input rule that fails decides).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from linewatch.config import FailsafeConfig


def _check(rule: str, what: str, value: float | None, op: str, limit: float) -> dict[str, Any]:
    held = None if value is None else {">=": value >= limit, "<=": value <= limit}[op]
    return {"rule": rule, "check": what, "value": value, "limit": f"{op} {limit:g}", "held": held}


def _checks(cfg: FailsafeConfig, s: dict[str, float]) -> Iterator[dict[str, Any]]:
    if cfg.exposure.enabled:
        e = cfg.exposure
        yield _check("exposure", "mean grey level", s.get("brightness"), ">=", e.min_mean)
        yield _check("exposure", "mean grey level", s.get("brightness"), "<=", e.max_mean)
        yield _check("exposure", "saturated share", s.get("saturation"), "<=", e.max_saturated)
        yield _check("exposure", "grey-level std", s.get("contrast"), ">=", e.min_std)
    if cfg.blur.enabled:
        yield _check("blur", "Laplacian variance", s.get("sharpness"), ">=", cfg.blur.min_laplacian_var)
    if cfg.presence.enabled:
        lo, hi = cfg.presence.area
        size = s.get("part_size", 0.0 if s else None)  # measured, and no part found: area 0
        yield _check("presence", "part area share", size, ">=", lo)
        yield _check("presence", "part area share", size, "<=", hi)


def decision_log(cfg: FailsafeConfig, row: dict[str, Any]) -> dict[str, Any]:
    """What decided the part and the input checks behind it, from its stored row (`row_to_api` shape)."""
    signals = row.get("signals") or {}
    return {
        "decided_by": row.get("decided_by"), "final": row.get("final"), "reasons": row.get("reasons") or [],
        "score": row.get("score"), "label": row.get("label"), "ruleset_hash": row.get("ruleset_hash"),
        "checks": list(_checks(cfg, signals)) if signals else [],
        "measured": bool(signals),  # parts never looked at (timeouts, dropped frames) have no measurements
    }
