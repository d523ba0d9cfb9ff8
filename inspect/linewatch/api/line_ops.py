"""REST routes that change what the whole line does: pause and resume inspection, switch the recipe.

They call the same line-level operations as the PLC's handshake (`operations.py`), so a pause from the
HMI and Set Offline from the PLC leave the same trace: the cameras switch between two parts, parts
acquired while paused are recorded as not inspected with reason `paused`, and every change is in the
audit log with the signed-in user.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field

from linewatch.api.body import JsonRoute
from linewatch.api.errors import refusals
from linewatch.auth.guard import actor_of
from linewatch.config import FailsafeConfig, LineConfig
from linewatch.operations import OperationFailed, set_offline, switch_recipe
from linewatch.store.queries import current_recipe, offline_cameras

OPERATION_TIMEOUT_S = 3.0
# 409, not 503: the request is sound, the line's state (a camera or record not answering) refused it
NOT_DONE = "The line did not take the change everywhere (a camera or record not answering); the text says where."


class Pause(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cameras: list[str] | None = Field(None, max_length=64, description="Cameras to pause (default: all).")


class RecipeChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    recipe: str = Field(min_length=1, max_length=32, description="Name of one of the line's recipes.")


def _rules(fs: FailsafeConfig) -> list[str]:
    """What a recipe's fail-safe checks, in words an operator confirms before switching."""
    out = [f"review band {fs.review_band[0]:g}-{fs.review_band[1]:g}"]
    if fs.exposure.enabled:
        out.append(f"exposure grey {fs.exposure.min_mean:g}-{fs.exposure.max_mean:g}")
    if fs.blur.enabled:
        out.append(f"blur >= {fs.blur.min_laplacian_var:g}")
    if fs.presence.enabled:
        out.append(f"presence area {fs.presence.area[0]:g}-{fs.presence.area[1]:g}")
    if fs.statistics.enabled:
        out.append(f"statistics z <= {fs.statistics.max_z:g}")
    return out


def recipes(cfg: LineConfig) -> list[dict[str, Any]]:
    """The recipes an operator may switch to, each with its job number, model and rules."""
    listed = cfg.recipes or []
    if not listed:
        return [{"name": cfg.recipe, "job": 0, "model": cfg.model.path.name, "rules": _rules(cfg.failsafe)}]
    return [{"name": r.name, "job": r.job, "model": (r.model or cfg.model).path.name,
             "rules": _rules(r.failsafe or cfg.failsafe)} for r in listed]


def line_ops_router(cfg: LineConfig) -> APIRouter:
    router = APIRouter(prefix="/api", route_class=JsonRoute)

    @router.get("/recipes")
    def get_recipes() -> dict[str, Any]:
        """The line's recipes (name, job number, model file, the fail-safe's checks) and the one in force."""
        return {"in_force": current_recipe(cfg.data_dir) or cfg.recipe, "recipes": recipes(cfg),
                "offline": offline_cameras(cfg.data_dir)}

    @router.post("/line/recipe", responses=refusals({409: f"Not one of the line's recipes, or: {NOT_DONE}"}))
    async def set_recipe(request: Request, choice: RecipeChoice) -> dict[str, Any]:
        """Switch the whole line to a recipe between two parts (model, rules); audit-logged."""
        if choice.recipe not in {r["name"] for r in recipes(cfg)}:
            raise HTTPException(409, f"recipe {choice.recipe!r} is not among the line's recipes "
                                     f"({', '.join(r['name'] for r in recipes(cfg))})")
        actor = actor_of(request).actor
        try:
            audit_id = await switch_recipe(cfg, choice.recipe, actor, OPERATION_TIMEOUT_S)
        except OperationFailed as exc:
            raise HTTPException(409, str(exc)) from None
        return {"recipe": choice.recipe, "by": actor, "audit_id": audit_id}

    async def _offline(request: Request, cameras: list[str] | None, reason: str | None) -> dict[str, Any]:
        names = cameras or [c.name for c in cfg.cameras]
        unknown = sorted(set(names) - {c.name for c in cfg.cameras})
        if unknown:
            raise HTTPException(409, f"unknown camera(s) {', '.join(unknown)} (the line has "
                                     f"{', '.join(c.name for c in cfg.cameras)})")
        actor = actor_of(request).actor
        try:
            audit_id = await set_offline(cfg, names, reason, actor, OPERATION_TIMEOUT_S)
        except OperationFailed as exc:
            raise HTTPException(409, str(exc)) from None
        return {"cameras": names, "paused": reason is not None, "by": actor, "audit_id": audit_id}

    @router.post("/line/pause", responses=refusals({409: f"A camera the line does not have, or: {NOT_DONE}"}))
    async def pause(request: Request, body: Pause) -> dict[str, Any]:
        """Stop inspecting: the following parts are recorded as not inspected with reason `paused`."""
        return await _offline(request, body.cameras, "paused")

    @router.post("/line/resume", responses=refusals({409: f"A camera the line does not have, or: {NOT_DONE}"}))
    async def resume(request: Request, body: Pause) -> dict[str, Any]:
        """Inspect again from the next part."""
        return await _offline(request, body.cameras, None)

    return router
