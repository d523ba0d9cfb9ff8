"""`GET /api/drift`: what the drift watch knows per camera (docs/drift.md): its reference, its detectors' latest
state, the performance estimates (CBPE, realised accuracy) and its drift alarms with their text.

Read from the store (`reports/drift.py`, `overview`), like every other answer of the api.
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request

from linewatch.api.body import JsonRoute
from linewatch.api.errors import invalid, refusals
from linewatch.api.qa import CONFIRM_TIMEOUT_S, NOT_CONFIRMED
from linewatch.auth.guard import actor_of
from linewatch.config import LineConfig
from linewatch.reports.drift import DriftOverview, overview
from linewatch.reports.export import ReportError, parse_time
from linewatch.store.actions import ActionNotConfirmed, send_action
from linewatch.store.drift import drift_cameras
from linewatch.wire import Endpoints, OperatorAction

# What parse_time takes, as the schema says it (as /api/report): an RFC 3339 date or date-time (no offset: local).
# The whole schema: FastAPI's own for an optional string (anyOf string, null) would be replaced by it anyway.
_WHEN = {"anyOf": [{"type": "string", "maxLength": 64, "format": "date"},
                   {"type": "string", "maxLength": 64, "format": "date-time"}]}


def drift_router(cfg: LineConfig) -> APIRouter:
    router = APIRouter(prefix="/api", route_class=JsonRoute)

    @router.get("/drift", response_model=DriftOverview, responses=refusals({404: "Unknown camera."}))
    def drift(camera: str | None = Query(None, max_length=64, description="Only this camera."),
              t_from: str | None = Query(None, alias="from", max_length=64, json_schema_extra=_WHEN,
                                         description="Alarms from (inclusive), e.g. 2026-11-27 or 2026-11-27T06:00."),
              t_to: str | None = Query(None, alias="to", max_length=64, json_schema_extra=_WHEN,
                                       description="Alarms before (exclusive); after `from`."),
              quantiles: bool = Query(False, description="Include each reference signal's stored quantiles."),
              limit: int = Query(100, ge=1, le=1000, description="Newest drift alarms per camera.")) -> DriftOverview:
        """Per camera: its reference (recipe, model, per-signal mean, sd and thresholds; null while it is being
        learnt), its detectors' latest state, the estimates and the drift alarms in the window."""
        window: dict[str, int] = {}
        for name, text in (("from", t_from), ("to", t_to)):
            if text is not None:
                try:
                    window[name] = parse_time(text, name)
                except ReportError as exc:
                    raise invalid(("query", name), str(exc)) from None
        if "from" in window and "to" in window and window["to"] <= window["from"]:
            raise invalid(("query", "to"), f"to ({t_to}) must be after from ({t_from})")
        known = [c.name for c in cfg.cameras]
        known += [c for c in drift_cameras(cfg.data_dir) if c not in known]
        if camera is not None and camera not in known:
            raise HTTPException(404, f"unknown camera {camera!r} (known: {', '.join(known) or 'none'})")
        return overview(cfg.data_dir, [camera] if camera else known, window.get("from"), window.get("to"),
                        window=cfg.watch.window, reference_parts=cfg.watch.reference_parts, quantiles=quantiles,
                        alarm_limit=limit)

    @router.post("/drift/{camera}/relearn", responses=refusals({404: "Unknown camera.", 503: NOT_CONFIRMED}))
    def relearn(request: Request, camera: str) -> dict[str, Any]:
        """Learn the camera's drift reference again from its next parts, after a deliberate change (a new lamp,
        a moved camera); audit-logged. Its drift alarms stay until acknowledged."""
        if camera not in [c.name for c in cfg.cameras]:
            raise HTTPException(404, f"unknown camera {camera!r} (known: {', '.join(c.name for c in cfg.cameras)})")
        actor = actor_of(request).actor
        action = OperatorAction("drift_relearn", actor, uuid.uuid4().hex, {"camera": camera})
        try:
            audit_id = send_action(Endpoints(cfg.run_dir), cfg.data_dir, action, CONFIRM_TIMEOUT_S)
        except ActionNotConfirmed as exc:
            raise HTTPException(503, str(exc)) from None
        return {"camera": camera, "relearn_by": actor, "audit_id": audit_id}

    return router
