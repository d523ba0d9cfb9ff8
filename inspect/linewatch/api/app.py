"""api: the web app — touchscreen HMI, REST API, live events (SSE) and Prometheus /metrics.

It only reads: results through read-only SQLite connections, live events from record's PUB
socket, metrics from the multiprocess directory every process writes to, and resource figures (CPU, memory,
disk, GPU) read at scrape time (`api/resources.py`).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import uvicorn
import zmq
import zmq.asyncio
from fastapi import FastAPI, HTTPException, Query
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.sse import EventSourceResponse, ServerSentEvent
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess

from linewatch.api.body import BodyLimit, JsonRoute
from linewatch.api.cameras import camera_router
from linewatch.api.drift import drift_router
from linewatch.api.errors import refusals, validation_refused
from linewatch.api.hmi import add_hmi_routes
from linewatch.api.line_ops import line_ops_router
from linewatch.api.methods import AllowedMethods, path_methods
from linewatch.api.notify import notify_router
from linewatch.api.qa import qa_router
from linewatch.api.resources import ResourceCollector
from linewatch.api.retrain import retrain_router
from linewatch.api.session import session_router
from linewatch.auth.guard import COOKIE, AuditLog, Guard
from linewatch.auth.roles import PERMISSIONS, PUBLIC, READ
from linewatch.config import LineConfig
from linewatch.paths import STATIC_DIR
from linewatch.store.images import IMAGES_DIR, live_path
from linewatch.store.queries import current_recipe, read_rows
from linewatch.store.rows import row_to_api, select_inspections
from linewatch.wire import KIND_VERDICTS, Endpoints, decode_verdict_group
from linewatch.wire.ready import child_name, down, line_children, mark_ready, read_ready

log = logging.getLogger("api")
STATIC = STATIC_DIR


def _workers(run_dir: Path) -> list[dict[str, Any]]:
    return [info for name, info in read_ready(run_dir).items() if name.startswith("infer")]


def create_app(cfg: LineConfig, stop: threading.Event | None = None) -> FastAPI:
    """The app; `stop` ends open event streams so a shutdown never waits on a browser."""
    stop = stop or threading.Event()
    # the API reference at /api/docs with Swagger UI from the fastapi-offline wheel: FastAPI's own page loads it
    # from a CDN, which an appliance on a plant network cannot reach (the page stayed blank)
    app = FastAPIOffline(title="linewatch", version="0.1.0", docs_url="/api/docs", redoc_url=None,
                         openapi_url="/api/openapi.json", static_url="/api/docs/assets", favicon_url="data:,",
                         swagger_ui_oauth2_redirect_url="/api/docs/oauth2-redirect")
    app.router.route_class = JsonRoute
    app.add_exception_handler(RequestValidationError, validation_refused)
    data_dir, run_dir = cfg.data_dir, cfg.run_dir
    endpoints = Endpoints(run_dir)
    zctx = zmq.asyncio.Context()
    (data_dir / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    resources = ResourceCollector(data_dir, run_dir)  # one per app: it keeps the archive walk and NVML open

    def query(sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        return read_rows(data_dir, sql, params)

    @app.get("/", include_in_schema=False)
    def hmi() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/api/status")
    def status() -> dict[str, Any]:
        counts = {"PASS": 0, "FAIL": 0, "REVIEW": 0}
        for r in query("SELECT final, count(*) AS n FROM inspections WHERE final != 'PASS' GROUP BY final"):
            counts[r["final"]] = r["n"]  # through the FAIL/REVIEW index; PASS rows are the rest
        total = sum(r["n"] for r in query("SELECT count(*) AS n FROM inspections"))
        counts["PASS"] = total - counts["FAIL"] - counts["REVIEW"]
        last = query(select_inspections() + " WHERE i.id = (SELECT max(id) FROM inspections)")
        active = query("SELECT count(*) AS n FROM alarms WHERE acknowledged_by IS NULL")
        workers = _workers(run_dir)
        model = ({"hash": workers[0].get("sha256"), "name": workers[0].get("model"),
                  "providers": workers[0].get("providers", [])} if workers else None)
        return {
            "line": cfg.line, "recipe": current_recipe(cfg.data_dir) or cfg.recipe,  # the latest switch, if any
            "cameras": [c.name for c in cfg.cameras], "model": model,
            "triggers": {c.name: c.trigger for c in cfg.cameras},
            "workers": workers, "counts": {**counts, "total": total},
            "yield": counts["PASS"] / total if total else None,
            "alarms_active": active[0]["n"] if active else 0, "last": row_to_api(last[0]) if last else None,
            "rules_only": any(w.get("rules_only") for w in workers),  # a worker decides on rules alone
        }

    @app.get("/api/inspections")
    def inspections(limit: int = Query(50, ge=1, le=1000), camera: str | None = Query(None, max_length=64),
                    final: str | None = Query(None, pattern="^(PASS|FAIL|REVIEW)$")) -> list[dict[str, Any]]:
        sql, params = select_inspections() + " WHERE 1=1", []
        if camera:
            sql += " AND i.camera = ?"
            params.append(camera)
        if final:
            sql += " AND i.final = ?" + (" AND i.final != 'PASS'" if final != "PASS" else "")  # FAIL/REVIEW index
            params.append(final)
        sql += " ORDER BY i.id DESC LIMIT ?"
        return [row_to_api(r) for r in query(sql, (*params, limit))]

    @app.get("/api/alarms")
    def alarms(active: bool = False, limit: int = Query(50, ge=1, le=1000)) -> list[dict[str, Any]]:
        where = "WHERE acknowledged_by IS NULL" if active else ""
        return [dict(r) for r in query(f"SELECT * FROM alarms {where} ORDER BY id DESC LIMIT ?", (limit,))]

    @app.get("/api/cameras/{camera}/live.jpg", response_class=Response, responses={
        200: {"content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}},
              "description": "The camera's latest frame."},
        **refusals({404: "Unknown camera, or no image from it yet."})})
    def live(camera: str) -> Response:
        """Read in one go: record replaces the file several times a second, and a response streamed from
        the path could mix two frames or run past the length it declared."""
        if camera not in {c.name for c in cfg.cameras}:
            raise HTTPException(404, f"unknown camera {camera!r}")
        try:
            jpeg = live_path(data_dir, camera).read_bytes()
        except FileNotFoundError:
            raise HTTPException(404, f"no image from camera {camera!r} yet") from None
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "no-store"})

    @app.get("/api/events", response_class=EventSourceResponse)
    async def events() -> AsyncIterator[ServerSentEvent]:
        sub = zctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, 1000)
        sub.subscribe(b"")
        sub.connect(endpoints.events)
        try:
            yield ServerSentEvent(event="hello", data={"line": cfg.line})
            while not stop.is_set():
                if await sub.poll(250):
                    kind, payload = await sub.recv_multipart()
                    if kind == KIND_VERDICTS:  # one group commit: one SSE `verdict` per row, as the HMI reads it
                        for row in decode_verdict_group(payload):
                            yield ServerSentEvent(event="verdict", raw_data=orjson.dumps(row_to_api(row)).decode())
                    else:
                        yield ServerSentEvent(event=kind.decode(), raw_data=payload.decode())
        finally:
            sub.close()

    @app.get("/metrics", include_in_schema=False)
    def metrics_endpoint() -> Response:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        registry.register(resources)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        """Liveness of the web app alone (a probe that restarts the whole line must not use readiness)."""
        return {"status": "ok"}

    expected = [child_name(cfg, role, i) for role, i in line_children(cfg)]

    @app.get("/readyz", include_in_schema=False)
    def readyz() -> JSONResponse:
        """Ready when every child of the line serves and beats; 503 naming what is down otherwise."""
        missing = down(cfg.run_dir, expected)
        if missing:
            return JSONResponse({"status": "not ready", "down": missing}, status_code=503)
        return JSONResponse({"status": "ready", "down": []})

    @app.get("/livez", include_in_schema=False)
    def livez() -> JSONResponse:
        """Alive unless a serving child has not beaten for supervisor.hang_timeout_s: the supervisor kills and
        restarts a hung child well before a liveness probe gives up, so a failing probe means it could not."""
        hung = [name for name, info in read_ready(cfg.run_dir).items()
                if info["beat_age_s"] > cfg.supervisor.hang_timeout_s]
        if hung:
            return JSONResponse({"status": "hung", "hung": hung}, status_code=503)
        return JSONResponse({"status": "alive", "hung": []})

    app.include_router(qa_router(cfg))
    app.include_router(camera_router(cfg))
    app.include_router(drift_router(cfg))
    app.include_router(add_hmi_routes(cfg))
    app.include_router(line_ops_router(cfg))
    app.include_router(notify_router(cfg))
    audit = AuditLog(cfg)
    app.include_router(session_router(cfg, audit))
    app.include_router(retrain_router(cfg))
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.mount("/images", StaticFiles(directory=data_dir / IMAGES_DIR, check_dir=False), name="images")
    _document_refusals(app)
    app.add_middleware(Guard, router=app.router, cfg=cfg, audit_log=audit)  # inside: after 405s, before the body
    app.add_middleware(AllowedMethods, table=path_methods(app))
    app.add_middleware(BodyLimit, max_bytes=cfg.api.max_body_bytes)  # outermost: no body is read past the cap
    return app


def _document_refusals(app: FastAPI) -> None:
    """The schema names the refusals of the guard on each operation: 401 and 403 wherever a role or the viewer
    level can be asked for, 403 on a public change (another origin)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        problem = {"application/json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
        for path, operations in schema["paths"].items():
            for method, operation in operations.items():
                rule = PERMISSIONS.get((method.upper(), path), "")
                if rule == PUBLIC and method == "get":
                    continue
                own = ({"403": "The request came from another origin."} if rule == PUBLIC else
                       {"401": "Not signed in, or the session or token no longer holds.",
                        "403": "The signed-in role is below the one the route needs, or the request came from "
                               "another origin."})
                for code, text in own.items():
                    operation["responses"].setdefault(code, {"description": text, "content": problem})
                if rule not in (PUBLIC, READ):
                    operation["security"] = [{"bearer": []}, {"session": []}]
                    operation["description"] = (operation.get("description", "") + f"\n\nNeeds the {rule} "
                                                "role or above.").strip()
        schema.setdefault("components", {})["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer", "description": "An API token (`linewatch tokens add`)."},
            "session": {"type": "apiKey", "in": "cookie", "name": COOKIE,
                        "description": "The session cookie `POST /api/session` sets (a change also needs this "
                                       "app's own Origin)."}}
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


class Api:
    def __init__(self, cfg: LineConfig, index: int, stop: threading.Event):
        self.cfg, self.stop = cfg, stop

    def run(self) -> None:
        app = create_app(self.cfg, self.stop)
        api = self.cfg.api
        tls = {"ssl_certfile": str(api.tls_cert), "ssl_keyfile": str(api.tls_key)} if api.tls_cert else {}
        if not tls and api.host not in ("127.0.0.1", "::1", "localhost"):
            log.warning("the web app listens on %s without TLS: sign-ins cross the network in clear "
                        "(set api.tls_cert and api.tls_key)", api.host)
        config = uvicorn.Config(app, host=api.host, port=api.port, log_level="warning", timeout_graceful_shutdown=2,
                                access_log=False, **tls)  # type: ignore[arg-type]
        server = uvicorn.Server(config)

        def _watch() -> None:
            while not server.started and not self.stop.wait(0.05):
                pass
            if server.started:
                scheme = "https" if api.tls_cert else "http"
                mark_ready(self.cfg.run_dir, "api", url=f"{scheme}://{api.host}:{api.port}")
            self.stop.wait()
            server.should_exit = True

        threading.Thread(target=_watch, daemon=True).start()
        server.run()
