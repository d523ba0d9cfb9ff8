"""REST for cameras: `POST /api/cameras/{camera}/trigger` takes one frame now (software trigger).

The api forwards the trigger to the camera's acquire process over its control socket; the frame
then takes the same announce/verdict path as every other frame, so the part is recorded whatever
happens. The reply names the sequence number and part id it was recorded under.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, Field

from linewatch.api.body import JsonRoute
from linewatch.api.errors import refusals
from linewatch.config import LineConfig
from linewatch.wire import CameraCommand, Endpoints, MessageError
from linewatch.wire.camera_client import CameraNoAnswer, request_camera_async

TRIGGER_REPLY_TIMEOUT_S = 5.0  # acquire answers within its own 2 s trigger timeout


class NoFrame(BaseModel):
    error: str | None = Field(description="Why acquire has no frame.")
    seq: int | None = Field(description="Sequence number the part was recorded under (as not inspected), if any.")
    part_id: str | None = Field(description="Part id it was recorded under, if any.")


class TriggerFailed(BaseModel):
    """The 503 of a trigger: the camera took no frame, but the part may still be on record."""

    detail: NoFrame


def camera_router(cfg: LineConfig) -> APIRouter:
    router = APIRouter(route_class=JsonRoute)
    endpoints = Endpoints(cfg.run_dir)
    modes = {c.name: c.trigger for c in cfg.cameras}

    @router.post("/api/cameras/{camera}/trigger", responses={
        **refusals({404: "Unknown camera.", 409: "The camera is not in software trigger mode.",
                    502: "acquire answered with a message the api cannot read.",
                    504: "acquire did not answer the trigger in time."}),
        503: {"model": TriggerFailed, "description": "The camera took no frame."}})
    async def trigger(camera: str, part_id: str | None = Query(None, min_length=1, max_length=128)) -> dict[str, Any]:
        if camera not in modes:
            raise HTTPException(404, f"unknown camera {camera!r}")
        if modes[camera] != "software":
            raise HTTPException(409, f"camera {camera!r} is in {modes[camera]} mode; software triggers need "
                                     "cameras[].trigger: software")
        command = CameraCommand(cmd="trigger", part_id=part_id)
        try:
            reply = await request_camera_async(endpoints, camera, command, TRIGGER_REPLY_TIMEOUT_S)
        except CameraNoAnswer as exc:
            raise HTTPException(504, str(exc)) from None
        except MessageError as exc:
            raise HTTPException(502, str(exc)) from None
        if not reply.ok:
            # The part was still recorded (as not inspected) when the reply carries its seq.
            raise HTTPException(503, {"error": reply.error, "seq": reply.seq, "part_id": reply.part_id})
        return {"camera": camera, "seq": reply.seq, "part_id": reply.part_id}

    return router
