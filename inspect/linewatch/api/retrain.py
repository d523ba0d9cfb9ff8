"""`POST /api/retrain` starts the loop from reviewed parts to a better model (`linewatch retrain`, docs/data.md) as
its own process; `GET /api/retrain/{run_id}` follows its progress and outcome, `GET /api/retrain` lists the runs.

Intended role: `engineer` (a retrain can put a new model on the running line); the permission is wired where the
api's roles are. The run writes its record (`retrain/runs.py`) as it goes; these routes only read it. One run at a
time: a second POST while one runs is refused with 409, naming it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi import Path as InPath
from pydantic import BaseModel, ConfigDict, Field

from linewatch.api.body import JsonRoute
from linewatch.api.errors import refusals
from linewatch.auth.guard import actor_of
from linewatch.config import LineConfig, to_json
from linewatch.config.line import BLAS_DEFAULTED, BLAS_THREADS
from linewatch.retrain.runs import RUNS_DIR, RunLog, list_runs, new_run_id, read_run, running

RUN_ID = r"^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{4}$"


class RetrainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    recipe: str | None = Field(None, max_length=64, description="Recipe to retrain (default: the line's).")



def training_environment(parent: Mapping[str, str]) -> dict[str, str]:
    """The api's environment for a retrain run, which is not one of the line's processes: no metrics folder of
    the line's, and BLAS on every core again unless the operator set its threads (`config.line.BLAS_DEFAULTED`)."""
    env = {k: v for k, v in parent.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    if env.pop(BLAS_DEFAULTED, None):
        env.pop(BLAS_THREADS, None)
    return env

def retrain_router(cfg: LineConfig) -> APIRouter:
    router = APIRouter(prefix="/api", route_class=JsonRoute)
    runs_dir = cfg.data_dir / "datasets" / RUNS_DIR
    started: list[subprocess.Popen[bytes]] = []  # reaped as later requests come

    @router.post("/retrain", status_code=202, responses=refusals({
        404: "No usable retrain settings for the recipe.", 409: "A retrain is already running."}))
    def start(http: Request, request: RetrainRequest) -> dict[str, Any]:
        """Start a retrain of the recipe: base snapshot + reviewed parts -> check -> train -> gate -> promote or
        refuse. Answers at once with the run's id; follow it at `/api/retrain/{run_id}`."""
        from linewatch.retrain.loop import RetrainError, settings  # data, training, model: loaded on the first run

        actor = actor_of(http).actor  # the signed-in engineer or token, never the body
        started[:] = [p for p in started if p.poll() is None]
        recipe = request.recipe or cfg.recipe
        try:
            settings(cfg, recipe)
        except RetrainError as exc:
            raise HTTPException(404, str(exc)) from None
        busy = running(runs_dir)
        if busy is not None:
            raise HTTPException(409, f"retrain run {busy['id']} of recipe {busy['recipe']!r} is running "
                                     f"({busy['stage']}, {100 * busy['progress']:.0f} %)")
        run_id = new_run_id()
        config = cfg.run_dir / f"retrain-{run_id}.json"
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(to_json(cfg))
        log = (cfg.run_dir / f"retrain-{run_id}.log").open("wb")
        env = training_environment(os.environ)
        with log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "linewatch", "retrain", "--recipe", recipe, "--config", str(config),
                 "--actor", actor, "--run-id", run_id], stdout=log, stderr=subprocess.STDOUT, env=env)
        started.append(proc)
        first = RunLog(runs_dir, run_id, recipe, actor)  # on disk at once: a second POST sees it running
        first.update(pid=proc.pid)
        return {"run_id": run_id, "recipe": recipe, "status": f"/api/retrain/{run_id}"}

    @router.get("/retrain")
    def runs(limit: int = Query(20, ge=1, le=200, description="Newest runs.")) -> list[dict[str, Any]]:
        """The newest retrain runs, each as its record: stage, progress, snapshot, model, outcome."""
        return list_runs(runs_dir, limit)

    @router.get("/retrain/{run_id}", responses=refusals({404: "No run with this id (yet)."}))
    def progress(run_id: str = InPath(pattern=RUN_ID, description="The id POST /api/retrain answered.")
                 ) -> dict[str, Any]:
        """One run's record: state (running, promoted, refused, failed), stage, progress 0-1, epoch, the snapshot
        it made, the model, the gate's comparison and the message."""
        run = read_run(runs_dir, run_id)
        if run is None:
            raise HTTPException(404, f"no retrain run {run_id} (yet: a run writes its record once it starts)")
        return run

    return router
