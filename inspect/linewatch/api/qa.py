"""REST routes of the QA side: current lot, operator review decisions and the report download.

The api only reads the store. A lot change or review decision is sent to record (the single writer)
as an `OperatorAction`; the route answers once record has committed its audit row, or 503. The actor is
the signed-in user or token of the request (`actor_of`), never a field of the body.
"""

from __future__ import annotations

import json
import sqlite3
import tempfile
import uuid
from pathlib import Path
from typing import Annotated, Any, Literal

import cv2
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi import Path as InPath
from fastapi.responses import FileResponse, Response
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from starlette.background import BackgroundTask

from linewatch.api.body import JsonRoute
from linewatch.api.errors import invalid, refusals
from linewatch.auth.guard import actor_of
from linewatch.config import LineConfig
from linewatch.reports.export import Issuer, ReportError, export, parse_time
from linewatch.reports.export import Query as ReportQuery
from linewatch.shifts import shift_at
from linewatch.store.actions import ActionNotConfirmed, send_action
from linewatch.store.images import load_overlay
from linewatch.store.queries import current_lot, open_reader, read_rows
from linewatch.wire import LOT_MAX_CHARS, Endpoints, OperatorAction, check_lot, now_ns

CONFIRM_TIMEOUT_S = 3.0
MEDIA = {"csv": "text/csv", "json": "application/json", "pdf": "application/pdf"}
FILE = {"type": "string", "format": "binary"}  # the schema of a download
ROW_ID_MAX = 2**63 - 1  # SQLite's largest rowid; a larger id is refused before it reaches the store
# check_lot as a JSON Schema pattern, so a client (or a fuzzer) can tell a valid lot from the schema alone.
LOT_PATTERN = r"^[^\s\x00-\x1f\x7f-\x9f](?:[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f])?$"
NOT_CONFIRMED = f"record did not confirm the action within {CONFIRM_TIMEOUT_S:g} s (not running, or it refused it)."
# What parse_time takes, as the schema says it: an RFC 3339 date or date-time (no offset: local time).
_WHEN = {"anyOf": [{"format": "date"}, {"format": "date-time"}]}

# A row id in a path: a positive SQLite integer (left unbounded, ids past 64 bits reached the store: a 500).
RowId = Annotated[int, InPath(ge=1, le=ROW_ID_MAX, description="Row id (1 to 2^63-1).")]


class LotChange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lot: Annotated[str, AfterValidator(check_lot)] = Field(
        description=f"Lot or batch id: 1-{LOT_MAX_CHARS} characters without leading or trailing spaces or "
                    "control characters.",
        json_schema_extra={"minLength": 1, "maxLength": LOT_MAX_CHARS, "pattern": LOT_PATTERN})


class ReviewDecision(BaseModel):
    model_config = ConfigDict(extra="forbid")
    decision: Literal["PASS", "FAIL"] = Field(description="The operator's call on the part.")
    label: str | None = Field(None, max_length=64, description="Defect type when FAIL (dataset label).")
    note: str | None = Field(None, max_length=1000, description="Free text.")


def qa_router(cfg: LineConfig) -> APIRouter:
    router = APIRouter(prefix="/api", route_class=JsonRoute)
    endpoints = Endpoints(cfg.run_dir)

    def _confirm(action: OperatorAction) -> int:
        try:
            return send_action(endpoints, cfg.data_dir, action, CONFIRM_TIMEOUT_S)
        except ActionNotConfirmed as exc:
            raise HTTPException(503, str(exc)) from None

    @router.get("/lot")
    def get_lot() -> dict[str, Any]:
        """The lot in force and the current shift."""
        try:
            conn = open_reader(cfg.data_dir)
            try:
                lot = current_lot(conn)
            finally:
                conn.close()
        except sqlite3.OperationalError:
            lot = None
        return {"lot": lot, "shift": shift_at(list(cfg.shifts), now_ns())}

    @router.put("/lot", responses=refusals({503: NOT_CONFIRMED}))
    @router.post("/lot", responses=refusals({503: NOT_CONFIRMED}))
    def set_lot(request: Request, change: LotChange) -> dict[str, Any]:
        """Set the current lot: applied by record to every following part, and audit-logged under the signed-in
        user."""
        actor = actor_of(request).actor
        action = OperatorAction("set_lot", actor, uuid.uuid4().hex, {"lot": change.lot})
        return {"lot": change.lot, "actor": actor, "audit_id": _confirm(action)}

    @router.post("/inspections/{inspection_id}/review",
                 responses=refusals({404: "No inspection with this id.", 503: NOT_CONFIRMED}))
    def review(request: Request, inspection_id: RowId, decision: ReviewDecision) -> dict[str, Any]:
        """Record an operator's decision on a part (REVIEW or contested); the review export uses it."""
        if not read_rows(cfg.data_dir, "SELECT 1 FROM inspections WHERE id = ?", [inspection_id]):
            raise HTTPException(404, f"no inspection with id {inspection_id}")
        detail = {"inspection_id": inspection_id, "decision": decision.decision, "label": decision.label,
                  "note": decision.note}
        action = OperatorAction("review", actor_of(request).actor, uuid.uuid4().hex, detail)
        return {"inspection_id": inspection_id, "decision": decision.decision, "audit_id": _confirm(action)}

    @router.get("/inspections/{inspection_id}/heatmap.png", response_class=Response, responses={
        200: {"content": {"image/png": {"schema": FILE}},
              "description": "The kept image with the anomaly map and detection boxes over it."},
        **refusals({404: "No inspection with this id, or it has no kept image with a heatmap or boxes."})})
    def heatmap(inspection_id: RowId) -> Response:
        """The part's kept image with what the model saw: its anomaly map blended over it (anomaly models,
        classifiers' class-activation maps) and its detection boxes (detection models)."""
        rows = read_rows(cfg.data_dir, "SELECT image, image_pruned_ns, detections FROM inspections WHERE id = ?",
                         (inspection_id,))
        if not rows:
            raise HTTPException(404, f"no inspection {inspection_id}")
        image, pruned, boxes = rows[0]
        detections = json.loads(boxes) if boxes else None
        overlay = load_overlay(cfg.data_dir, image, detections) if image and not pruned else None
        if overlay is None:
            raise HTTPException(404, f"inspection {inspection_id} has no kept image with a heatmap or boxes")
        _, png = cv2.imencode(".png", cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
        return Response(png.tobytes(), media_type="image/png")

    @router.post("/alarms/{alarm_id}/ack",
                 responses=refusals({404: "No unacknowledged alarm with this id.", 503: NOT_CONFIRMED}))
    def acknowledge(request: Request, alarm_id: RowId) -> dict[str, Any]:
        """Acknowledge an alarm: who and when go on the alarm and into the audit log."""
        if not read_rows(cfg.data_dir, "SELECT 1 FROM alarms WHERE id = ? AND acknowledged_by IS NULL", [alarm_id]):
            raise HTTPException(404, f"no unacknowledged alarm with id {alarm_id}")
        actor = actor_of(request).actor
        action = OperatorAction("ack_alarm", actor, uuid.uuid4().hex, {"alarm_id": alarm_id})
        return {"alarm_id": alarm_id, "acknowledged_by": actor, "audit_id": _confirm(action)}

    @router.get("/report", response_class=FileResponse, responses={
        200: {"content": {media: {"schema": {"type": "object"} if fmt == "json" else FILE}
                          for fmt, media in MEDIA.items()},
              "description": "The export as a file in the format asked for (columns: docs/export.md)."},
        **refusals({503: "No store to report on (the line has not run on this data_dir yet)."})})
    def report(t_from: str = Query(alias="from", max_length=64, json_schema_extra=_WHEN,
                                   description="Start of the window (inclusive), e.g. 2026-11-27 or 2026-11-27T06:00."),
               t_to: str = Query(alias="to", max_length=64, json_schema_extra=_WHEN,
                                 description="End of the window (exclusive); after `from`."),
               lot: str | None = Query(None, max_length=LOT_MAX_CHARS), camera: str | None = Query(None, max_length=64),
               format: Literal["csv", "json", "pdf"] = "csv") -> FileResponse:
        """The QA export as a download (the same as `linewatch report`)."""
        window = []
        for name, text in (("from", t_from), ("to", t_to)):
            try:
                window.append(parse_time(text, name))
            except ReportError as exc:
                raise invalid(("query", name), str(exc)) from None
        if window[1] <= window[0]:
            raise invalid(("query", "to"), f"to ({t_to}) must be after from ({t_from})")
        tmp = Path(tempfile.mkstemp(suffix=f".{format}", prefix="linewatch-report-")[1])
        try:
            export(cfg.data_dir, ReportQuery(window[0], window[1], lot, camera), format, tmp,
                   Issuer(cfg.line, "api"))
        except ReportError as exc:  # the window is checked above: what is left is a missing store
            tmp.unlink(missing_ok=True)
            raise HTTPException(503, str(exc)) from None
        name = f"linewatch-{lot or 'all'}-{t_from}-{t_to}.{format}".replace(":", "")
        return FileResponse(tmp, media_type=MEDIA[format], filename=name, background=BackgroundTask(tmp.unlink))

    return router
