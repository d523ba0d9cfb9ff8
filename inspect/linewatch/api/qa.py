"""REST routes of the QA side: current lot, operator review decisions and the report download.

The api only reads the store. A lot change or review decision is sent to record (the single writer)
as an `OperatorAction`; the route answers once record has committed its audit row, or 503.
"""

from __future__ import annotations

import sqlite3
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Literal

import cv2
import zmq
from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.background import BackgroundTask

from linewatch.config import LineConfig
from linewatch.reports.export import Query as ReportQuery
from linewatch.reports.export import ReportError, export, parse_time
from linewatch.shifts import shift_at
from linewatch.store import current_lot, open_reader, read_rows
from linewatch.store.images import load_overlay
from linewatch.wire import KIND_ACTION, Endpoints, OperatorAction, now_ns

CONFIRM_TIMEOUT_S = 3.0
MEDIA = {"csv": "text/csv", "json": "application/json", "pdf": "application/pdf"}


class LotChange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lot: str = Field(min_length=1, max_length=64, pattern=r"^\S(.*\S)?$", description="Lot or batch id.")
    actor: str = Field(min_length=1, max_length=64, description="Who sets it (operator badge or name).")


class ReviewDecision(BaseModel):
    model_config = ConfigDict(extra="forbid")
    decision: Literal["PASS", "FAIL"] = Field(description="The operator's call on the part.")
    label: str | None = Field(None, max_length=64, description="Defect type when FAIL (dataset label).")
    reviewer: str = Field(min_length=1, max_length=64, description="Who decided.")
    note: str | None = Field(None, max_length=1000, description="Free text.")


class Acknowledge(BaseModel):
    model_config = ConfigDict(extra="forbid")
    actor: str = Field(min_length=1, max_length=64, description="Who acknowledges.")


class ActionNotConfirmed(Exception):
    """record did not commit the action in time (not running, or it refused it)."""


def send_action(cfg: LineConfig, action: OperatorAction, timeout_s: float = CONFIRM_TIMEOUT_S) -> int:
    """Send an action to record and wait for its audit row; returns the row id."""
    ctx: zmq.Context[Any] = zmq.Context.instance()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDTIMEO, int(timeout_s * 1000))
    sock.setsockopt(zmq.LINGER, int(timeout_s * 1000))
    try:
        sock.connect(Endpoints(cfg.run_dir).record)
        sock.send_multipart([KIND_ACTION, action.to_bytes()])
    except zmq.Again:
        raise ActionNotConfirmed("record is not reachable") from None
    finally:
        sock.close()
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        try:
            conn = open_reader(cfg.data_dir)
            try:
                row = conn.execute("SELECT id FROM operator_actions WHERE request_id = ?",
                                   [action.request_id]).fetchone()
            finally:
                conn.close()
        except sqlite3.OperationalError:
            row = None  # store or table not there yet
        if row:
            return int(row[0])
        time.sleep(0.02)
    raise ActionNotConfirmed(f"record did not confirm the {action.action} within {timeout_s:.0f} s")


def qa_router(cfg: LineConfig) -> APIRouter:
    router = APIRouter(prefix="/api")

    def _confirm(action: OperatorAction) -> int:
        try:
            return send_action(cfg, action)
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

    @router.put("/lot")
    @router.post("/lot")
    def set_lot(change: LotChange) -> dict[str, Any]:
        """Set the current lot: applied by record to every following part, and audit-logged."""
        action = OperatorAction("set_lot", change.actor, uuid.uuid4().hex, {"lot": change.lot})
        return {"lot": change.lot, "actor": change.actor, "audit_id": _confirm(action)}

    @router.post("/inspections/{inspection_id}/review")
    def review(inspection_id: int, decision: ReviewDecision) -> dict[str, Any]:
        """Record an operator's decision on a part (REVIEW or contested); the review export uses it."""
        if not read_rows(cfg.data_dir, "SELECT 1 FROM inspections WHERE id = ?", [inspection_id]):
            raise HTTPException(404, f"no inspection with id {inspection_id}")
        detail = {"inspection_id": inspection_id, "decision": decision.decision, "label": decision.label,
                  "note": decision.note}
        action = OperatorAction("review", decision.reviewer, uuid.uuid4().hex, detail)
        return {"inspection_id": inspection_id, "decision": decision.decision, "audit_id": _confirm(action)}

    @router.get("/inspections/{inspection_id}/heatmap.png")
    def heatmap(inspection_id: int) -> Response:
        """The part's kept image with the model's anomaly map blended over it (models with an anomaly map)."""
        rows = read_rows(cfg.data_dir, "SELECT image, image_pruned_ns FROM inspections WHERE id = ?", (inspection_id,))
        if not rows:
            raise HTTPException(404, f"no inspection {inspection_id}")
        image, pruned = rows[0]
        overlay = load_overlay(cfg.data_dir, image) if image and not pruned else None
        if overlay is None:
            raise HTTPException(404, f"inspection {inspection_id} has no kept image with a heatmap")
        _, png = cv2.imencode(".png", cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
        return Response(png.tobytes(), media_type="image/png")

    @router.post("/alarms/{alarm_id}/ack")
    def acknowledge(alarm_id: int, ack: Acknowledge) -> dict[str, Any]:
        """Acknowledge an alarm: who and when go on the alarm and into the audit log."""
        if not read_rows(cfg.data_dir, "SELECT 1 FROM alarms WHERE id = ? AND acknowledged_by IS NULL", [alarm_id]):
            raise HTTPException(404, f"no unacknowledged alarm with id {alarm_id}")
        action = OperatorAction("ack_alarm", ack.actor, uuid.uuid4().hex, {"alarm_id": alarm_id})
        return {"alarm_id": alarm_id, "acknowledged_by": ack.actor, "audit_id": _confirm(action)}

    @router.get("/report")
    def report(t_from: str = Query(alias="from"), t_to: str = Query(alias="to"), lot: str | None = None,
               camera: str | None = None, format: str = Query("csv", pattern="^(csv|json|pdf)$")) -> FileResponse:
        """The QA export as a download (the same as `linewatch report`)."""
        tmp = Path(tempfile.mkstemp(suffix=f".{format}", prefix="linewatch-report-")[1])
        try:
            q = ReportQuery(parse_time(t_from, "from"), parse_time(t_to, "to"), lot, camera)
            export(cfg.data_dir, q, format, tmp)
        except ReportError as exc:
            tmp.unlink(missing_ok=True)
            raise HTTPException(422, str(exc)) from None
        name = f"linewatch-{lot or 'all'}-{t_from}-{t_to}.{format}".replace(":", "")
        return FileResponse(tmp, media_type=MEDIA[format], filename=name, background=BackgroundTask(tmp.unlink))

    return router
