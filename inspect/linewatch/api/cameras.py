"""REST for cameras: `POST /api/cameras/{camera}/trigger` takes one frame now (software trigger).

The api forwards the trigger to the camera's acquire process over its control socket; the frame
then takes the same announce/verdict path as every other frame, so the part is recorded whatever
happens. The reply names the sequence number and part id it was recorded under.
"""

from __future__ import annotations

from typing import Any

import zmq
import zmq.asyncio
from fastapi import APIRouter, HTTPException, Query

from linewatch.config import LineConfig
from linewatch.wire import CameraCommand, CameraReply, Endpoints, MessageError

TRIGGER_REPLY_TIMEOUT_S = 5.0  # acquire answers within its own 2 s trigger timeout


def camera_router(cfg: LineConfig) -> APIRouter:
    router = APIRouter()
    endpoints = Endpoints(cfg.run_dir)
    zctx = zmq.asyncio.Context.instance()
    modes = {c.name: c.trigger for c in cfg.cameras}

    @router.post("/api/cameras/{camera}/trigger")
    async def trigger(camera: str, part_id: str | None = Query(None, min_length=1, max_length=128)) -> dict[str, Any]:
        if camera not in modes:
            raise HTTPException(404, f"unknown camera {camera!r}")
        if modes[camera] != "software":
            raise HTTPException(409, f"camera {camera!r} is in {modes[camera]} mode; software triggers need "
                                     "cameras[].trigger: software")
        sock = zctx.socket(zmq.REQ)  # one per request: a REQ that timed out cannot be reused
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.connect(endpoints.control(camera))
            await sock.send(CameraCommand(cmd="trigger", part_id=part_id).to_bytes())
            if not await sock.poll(int(TRIGGER_REPLY_TIMEOUT_S * 1000)):
                raise HTTPException(504, f"camera {camera!r}: acquire did not answer the trigger")
            reply = CameraReply.from_bytes(await sock.recv())
        except MessageError as exc:
            raise HTTPException(502, f"camera {camera!r}: {exc}") from None
        finally:
            sock.close()
        if not reply.ok:
            # The part was still recorded (as not inspected) when the reply carries its seq.
            raise HTTPException(503, {"error": reply.error, "seq": reply.seq, "part_id": reply.part_id})
        return {"camera": camera, "seq": reply.seq, "part_id": reply.part_id}

    return router
