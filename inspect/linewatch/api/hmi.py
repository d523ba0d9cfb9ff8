"""REST routes the operator's screens read: counters per period, the line's state, the review queue,
one part in full (image, decision log, stage times) and the counter reset.

Counters are counted in the store over a capture-time range (its index), so they equal the database;
a short cache keeps several screens polling from counting a whole shift again each time.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import Response

from linewatch.api.body import JsonRoute
from linewatch.api.errors import refusals
from linewatch.api.qa import CONFIRM_TIMEOUT_S, NOT_CONFIRMED, RowId
from linewatch.auth.guard import actor_of
from linewatch.config import LineConfig
from linewatch.failsafe.explain import decision_log
from linewatch.shifts import current_shift
from linewatch.store.actions import ActionNotConfirmed, send_action
from linewatch.store.queries import offline_cameras, read_rows
from linewatch.store.rows import row_to_api, select_inspections
from linewatch.wire import Endpoints, OperatorAction, now_ns
from linewatch.wire.ready import child_name, down, line_children, read_ready

COUNTS_CACHE_S = 1.0
_MEDIA = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
Period = Literal["shift", "lot", "reset", "all"]


def _counts(data_dir: Path, t_from_ns: int | None, lot: str | None = None) -> dict[str, Any]:
    sql, params = "SELECT final, count(*) AS n FROM inspections WHERE 1=1", list[Any]()
    if t_from_ns is not None:
        sql += " AND t_capture_ns >= ?"
        params.append(t_from_ns)
    if lot is not None:
        sql += " AND lot = ?"
        params.append(lot)
    c = {"PASS": 0, "FAIL": 0, "REVIEW": 0}
    for r in read_rows(data_dir, sql + " GROUP BY final", params):
        c[r["final"]] = r["n"]
    total = sum(c.values())
    return {**c, "total": total, "yield": c["PASS"] / total if total else None}


def _latest_action(data_dir: Path, action: str) -> dict[str, Any] | None:
    rows = read_rows(data_dir, "SELECT t_ns, actor, detail FROM operator_actions WHERE action = ? "
                               "ORDER BY id DESC LIMIT 1", (action,))
    return dict(rows[0]) if rows else None


def counters(cfg: LineConfig, t_ns: int) -> dict[str, Any]:
    """Counts of PASS/FAIL/REVIEW and yield for the current shift, the current lot (since it was set), since
    the last counter reset, and all time, each with the start of its period."""
    d = cfg.data_dir
    shift, shift_from = current_shift(cfg.shifts, t_ns)
    periods: dict[str, Any] = {"shift": {"name": shift, "from_ns": shift_from, **_counts(d, shift_from)}}
    lot = _latest_action(d, "set_lot")
    if lot is not None:
        name = json.loads(lot["detail"])["lot"]
        periods["lot"] = {"name": name, "from_ns": lot["t_ns"], **_counts(d, lot["t_ns"], name)}
    else:
        periods["lot"] = {"name": None, "from_ns": None, "PASS": 0, "FAIL": 0, "REVIEW": 0, "total": 0, "yield": None}
    reset = _latest_action(d, "reset_counters")
    periods["reset"] = {"name": f"since reset by {reset['actor']}" if reset else "since start",
                        "from_ns": reset["t_ns"] if reset else None, **_counts(d, reset["t_ns"] if reset else None)}
    periods["all"] = {"name": "all time", "from_ns": None, **_counts(d, None)}
    minute = read_rows(d, "SELECT count(*) AS n FROM inspections WHERE t_capture_ns >= ?", (t_ns - 60 * 10**9,))
    return {"t_ns": t_ns, "periods": periods, "parts_per_minute": minute[0]["n"] if minute else 0}


def line_state(cfg: LineConfig) -> dict[str, Any]:
    """The line's state for the run screen: every condition that holds, most serious first, and the one to show."""
    d, run_dir = cfg.data_dir, cfg.run_dir
    states: list[dict[str, str]] = []
    missing = down(run_dir, [child_name(cfg, role, i) for role, i in line_children(cfg)])
    if missing:
        states.append({"state": "process down", "detail": ", ".join(missing)})
    for camera, reason in sorted(offline_cameras(d).items()):
        states.append({"state": reason, "detail": f"camera {camera}: parts recorded as not inspected ({reason})"})
    for cam in cfg.cameras:
        last = read_rows(d, "SELECT kind, message FROM alarms WHERE source = ? AND kind IN ('camera_lost', "
                            "'camera_back') ORDER BY id DESC LIMIT 1", (f"acquire[{cam.name}]",))
        if last and last[0]["kind"] == "camera_lost":
            states.append({"state": "camera lost", "detail": str(last[0]["message"])})
    workers = [i for n, i in read_ready(run_dir).items() if n.startswith("infer")]
    if any(w.get("rules_only") for w in workers):
        states.append({"state": "model down", "detail": "parts decided by the fail-safe rules alone"})
    drift = read_rows(d, "SELECT DISTINCT camera, signal FROM drift_state WHERE in_drift = 1")
    if drift:
        states.append({"state": "drift", "detail": ", ".join(f"{r['camera']} {r['signal']}" for r in drift)})
    return {"state": states[0]["state"] if states else "running", "conditions": states}


def add_hmi_routes(cfg: LineConfig) -> APIRouter:
    router = APIRouter(prefix="/api", route_class=JsonRoute)
    cache: dict[str, tuple[float, dict[str, Any]]] = {}

    @router.get("/counters")
    def get_counters() -> dict[str, Any]:
        """PASS/FAIL/REVIEW counts and yield per period (`shift`, `lot`, `reset`, `all`), each with its start,
        and the parts of the last minute."""
        hit = cache.get("counters")
        if hit is None or time.monotonic() - hit[0] > COUNTS_CACHE_S:
            hit = cache["counters"] = (time.monotonic(), counters(cfg, now_ns()))
        return hit[1]

    @router.post("/counters/reset", responses=refusals({503: NOT_CONFIRMED}))
    def reset_counters(request: Request) -> dict[str, Any]:
        """Start the `reset` period now (the shift, lot and all-time counts are unchanged); audit-logged with
        the signed-in user."""
        actor = actor_of(request).actor
        action = OperatorAction("reset_counters", actor, uuid.uuid4().hex, {})
        try:
            audit_id = send_action(Endpoints(cfg.run_dir), cfg.data_dir, action, CONFIRM_TIMEOUT_S)
        except ActionNotConfirmed as exc:
            raise HTTPException(503, str(exc)) from None
        cache.clear()
        return {"reset_by": actor, "audit_id": audit_id}

    @router.get("/line")
    def get_line() -> dict[str, Any]:
        """The line's state (`running`, or the most serious of `process down`, `paused`, `offline`, `camera lost`,
        `model down`, `drift`) with every condition that holds."""
        return line_state(cfg)

    @router.get("/review/queue")
    def review_queue(limit: int = Query(10, ge=1, le=200)) -> dict[str, Any]:
        """REVIEW parts without an operator's decision, oldest first, and how many wait in all."""
        waiting = "i.final = 'REVIEW' AND NOT EXISTS (SELECT 1 FROM review_decisions r WHERE r.inspection_id = i.id)"
        n = read_rows(cfg.data_dir, f"SELECT count(*) AS n FROM inspections i WHERE {waiting}")
        rows = read_rows(cfg.data_dir, select_inspections() + f" WHERE {waiting} ORDER BY i.id LIMIT ?", (limit,))
        return {"waiting": n[0]["n"] if n else 0, "items": [row_to_api(r) for r in rows]}

    @router.get("/inspections/{inspection_id}", responses=refusals({404: "No inspection with this id."}))
    def inspection(inspection_id: RowId) -> dict[str, Any]:
        """One part in full: its row, its latest review, whether a kept image and heatmap exist, and its
        decision log (each input check with the part's value and the limit)."""
        rows = read_rows(cfg.data_dir, select_inspections() + " WHERE i.id = ?", (inspection_id,))
        if not rows:
            raise HTTPException(404, f"no inspection with id {inspection_id}")
        row = row_to_api(rows[0])
        review = read_rows(cfg.data_dir, "SELECT decision, label, reviewer, t_ns, note FROM review_decisions "
                                         "WHERE inspection_id = ? ORDER BY id DESC LIMIT 1", (inspection_id,))
        kept = bool(row["image"]) and not row["image_pruned_ns"] and (cfg.data_dir / row["image"]).is_file()
        return {"inspection": row, "review": dict(review[0]) if review else None, "image": kept,
                "decision_log": decision_log(cfg.failsafe, row)}

    @router.get("/inspections/{inspection_id}/image", response_class=Response, responses={
        200: {"content": {m: {"schema": {"type": "string", "format": "binary"}} for m in set(_MEDIA.values())},
              "description": "The part's kept image as it was stored."},
        **refusals({404: "No inspection with this id, or its image was not kept or was pruned."})})
    def image(inspection_id: RowId) -> Response:
        rows = read_rows(cfg.data_dir, "SELECT image, image_pruned_ns FROM inspections WHERE id = ?",
                         (inspection_id,))
        if not rows or not rows[0]["image"] or rows[0]["image_pruned_ns"]:
            raise HTTPException(404, f"inspection {inspection_id} has no kept image")
        path = cfg.data_dir / rows[0]["image"]
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise HTTPException(404, f"inspection {inspection_id}: its image file is gone") from None
        return Response(data, media_type=_MEDIA.get(path.suffix.lower(), "application/octet-stream"),
                        headers={"Cache-Control": "max-age=3600"})

    return router
