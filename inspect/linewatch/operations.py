"""Line-level operations the PLC, the HMI and the REST API share: switch the recipe, take cameras offline.

Both act at the only place that sees every part in order, each camera's acquire process (its control socket):
from the next part on, acquire stamps the new recipe on the part (the workers switch model and rules when the
first part of it reaches them, `infer.process`), or records the parts as not inspected with the reason
`offline` (PLC) or `paused` (HMI). Each operation is written to the audit log by record as an operator action
with its actor (`plc:<client address>`, an operator's name); a restarted acquire or worker takes the recipe of
the latest `set_recipe` row.
"""

from __future__ import annotations

import asyncio
import uuid

import zmq.asyncio

from linewatch.config import LineConfig
from linewatch.store.actions import ActionNotConfirmed, send_action_async
from linewatch.wire import CameraCommand, Endpoints, MessageError, OperatorAction
from linewatch.wire.camera_client import CameraNoAnswer, request_camera_async

OFFLINE_REASONS = ("offline", "paused")  # the PLC's Set Offline; the HMI's pause


class OperationFailed(Exception):
    """The operation did not take effect everywhere; the text names where and why."""


def recipe_job(cfg: LineConfig, recipe: str) -> int:
    """The job number of a recipe (0: the configured recipe when the line lists none)."""
    found = cfg.find_recipe(recipe)
    return found.job if found else 0


async def switch_recipe(cfg: LineConfig, recipe: str, actor: str, timeout_s: float,
                        ctx: zmq.asyncio.Context | None = None) -> int:
    """Switch every camera to `recipe` between two parts; returns the audit row id. The switch is audited
    first, so a camera that misses it (stopped, restarting) takes it from the audit log when it starts."""
    if cfg.recipes and cfg.find_recipe(recipe) is None:
        raise OperationFailed(f"recipe {recipe!r} is not among the line's recipes "
                              f"({', '.join(r.name for r in cfg.recipes)})")
    if not cfg.recipes and recipe != cfg.recipe:
        raise OperationFailed(f"the line lists no recipes: only {cfg.recipe!r} can be selected")
    action = OperatorAction("set_recipe", actor, uuid.uuid4().hex, {"recipe": recipe, "job": recipe_job(cfg, recipe)})
    audit_id = await _audit(cfg, action, timeout_s)
    await _tell_cameras(cfg, [c.name for c in cfg.cameras], CameraCommand(cmd="set_recipe", recipe=recipe),
                        timeout_s, ctx)
    return audit_id


async def set_offline(cfg: LineConfig, cameras: list[str], reason: str | None, actor: str, timeout_s: float,
                      ctx: zmq.asyncio.Context | None = None) -> int:
    """Record the next parts of `cameras` as not inspected with `reason` (`offline` or `paused`), or inspect
    them again (None); returns the audit row id. The cameras switch first: that is what the line must do now."""
    if reason is not None and reason not in OFFLINE_REASONS:
        raise OperationFailed(f"offline reason must be one of {', '.join(OFFLINE_REASONS)}, got {reason!r}")
    known = {c.name for c in cfg.cameras}
    if not cameras or any(c not in known for c in cameras):
        raise OperationFailed(f"cameras must be some of {', '.join(sorted(known))}, got {cameras!r}")
    await _tell_cameras(cfg, cameras, CameraCommand(cmd="set_offline", offline=reason), timeout_s, ctx)  # type: ignore[arg-type]
    action = OperatorAction("set_offline", actor, uuid.uuid4().hex, {"cameras": cameras, "reason": reason})
    return await _audit(cfg, action, timeout_s)


async def _audit(cfg: LineConfig, action: OperatorAction, timeout_s: float) -> int:
    try:
        return await send_action_async(Endpoints(cfg.run_dir), cfg.data_dir, action, timeout_s)
    except ActionNotConfirmed as exc:
        raise OperationFailed(str(exc)) from None


async def _tell_cameras(cfg: LineConfig, cameras: list[str], command: CameraCommand, timeout_s: float,
                        ctx: zmq.asyncio.Context | None) -> None:
    endpoints = Endpoints(cfg.run_dir)
    replies = await asyncio.gather(*(request_camera_async(endpoints, name, command, timeout_s, ctx)
                                     for name in cameras), return_exceptions=True)
    problems = []
    for name, reply in zip(cameras, replies, strict=True):
        if isinstance(reply, (CameraNoAnswer, MessageError)):
            problems.append(str(reply))
        elif isinstance(reply, BaseException):
            raise reply
        elif not reply.ok:
            problems.append(f"camera {name!r}: {reply.error}")
    if problems:
        raise OperationFailed("; ".join(problems))
