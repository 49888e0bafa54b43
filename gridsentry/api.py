"""The HTTP API: health, readiness, /metrics, devices, alerts (gridsentry/api_alerts.py) and engineers' SQL.

Bound to loopback by default. Every route declares the role it needs (`gridsentry.auth.require`); every
state-changing request is written to `audit_log` with its actor. Handlers that read DuckDB are plain `def`s, so FastAPI runs them in
its thread pool on their own reader connection and the event loop (and ingest) never waits on a query.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import duckdb
from fastapi import APIRouter, FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from collector.modbus.api import modbus_router
from gridsentry import __version__
from gridsentry.api_alerts import alerts_router
from gridsentry.api_history import add_history_routes
from gridsentry.api_maintenance import maintenance_router
from gridsentry.api_reports import reports_router
from gridsentry.api_rules import rules_router
from gridsentry.auth import principal_of, require
from gridsentry.exporter import render_metrics
from gridsentry.screens.wall import install_wall

if TYPE_CHECKING:
    from gridsentry.service import Service

log = logging.getLogger("gridsentry.audit")

_CHANGING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def _rows(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
    cur = con.execute(sql, params or [])
    cols = [d[0] for d in cur.description or []]
    return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


def add_routes(app: FastAPI, router: APIRouter) -> None:
    """Add a stage's routes one by one: FastAPI's include_router wraps them in an object that hides each
    APIRoute (and its role guard) from the route list, which the guard test walks. An APIRouter already
    applied its prefix and dependencies when each route was declared."""
    app.router.routes.extend(router.routes)


def create_app(service: Service) -> FastAPI:
    app = FastAPI(
        title="GridSentry",
        version=__version__,
        description="Telemetry monitor for EV-charging, PV and box-transformer fleets.",
        # The built-in OpenAPI and docs routes would answer without a token; the schema is served below, guarded.
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.tokens = service.tokens

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI echoes the offending input by default; a body may carry a secret, so errors name the field only.
        problems = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", "invalid"), "type": e.get("type", "")}
            for e in exc.errors()
        ]
        return JSONResponse({"detail": problems}, status_code=422)

    @app.middleware("http")
    async def audit(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if request.method not in _CHANGING_METHODS:
            return await call_next(request)
        t0 = time.perf_counter()
        response = await call_next(request)
        principal = principal_of(request)
        service.audit(
            actor=principal.name,
            role=principal.role,
            action=request.method,
            target=request.url.path,
            status=response.status_code,
            client=request.client.host if request.client else None,
            duration_s=time.perf_counter() - t0,
            detail=getattr(request.state, "audit_detail", None),
        )
        return response

    @app.get("/api/openapi.json", tags=["health"], dependencies=[require("viewer")])
    def openapi() -> dict[str, Any]:
        """The OpenAPI schema of this API."""
        return app.openapi()

    add_routes(app, rules_router(service))

    def reader() -> duckdb.DuckDBPyConnection:
        try:
            return service.writer.reader()
        except RuntimeError as exc:
            raise HTTPException(503, "the database is not open (GridSentry is starting or stopping)") from exc

    add_routes(app, modbus_router(lambda: service.modbus))

    @app.get("/healthz", tags=["health"], dependencies=[require("viewer", public="healthz")])
    def healthz() -> dict[str, Any]:
        """Liveness: the process answers."""
        # Still alive while storage fails (the collector holds and retries), but say so.
        failing = service.writer.consecutive_failures
        return {
            "status": "degraded" if failing else "ok",
            "version": __version__,
            "uptime_s": round(service.uptime_s(), 1),
            **({"storage_error": service.writer.last_error, "failing_writes": failing} if failing else {}),
        }

    @app.get("/readyz", tags=["health"], dependencies=[require("viewer", public="healthz")])
    def readyz(response: Response) -> dict[str, Any]:
        """Readiness: storage open, rules loaded, and the MQTT broker connected (when enabled)."""
        checks = {
            "storage": service.writer.queue_depth < 10_000 and service.ready.is_set(),
            "storage_writable": service.writer.consecutive_failures == 0,
            "mqtt": all(c.stats.connected for c in service.collectors),
            "rules": len(service.engine.rules) > 0 or not service.cfg.rules.builtin_packs,
        }
        ok = all(checks.values())
        if not ok:
            response.status_code = 503
        return {"ready": ok, "checks": checks}

    @app.get("/metrics", tags=["health"], dependencies=[require("viewer", public="metrics")])
    def metrics() -> Response:
        return Response(render_metrics(service), media_type=CONTENT_TYPE_LATEST)

    @app.get("/api/devices", tags=["fleet"], dependencies=[require("viewer")])
    def devices(site: str | None = None, kind: str | None = None) -> list[dict[str, Any]]:
        """The device ledger with each device's last reading time."""
        con = reader()
        try:
            rows = _rows(
                con,
                "SELECT device_id, site, kind, vendor, model, rated_kw, parent_id, expected_interval_s, tags, source "
                "FROM devices WHERE (? IS NULL OR site = ?) AND (? IS NULL OR kind = ?) ORDER BY site, device_id",
                [site, site, kind, kind],
            )
        finally:
            con.close()
        now = datetime.now(UTC).timestamp()
        for r in rows:
            seen = service.last_seen.get(r["device_id"])
            r["last_seen"] = datetime.fromtimestamp(seen, UTC).isoformat() if seen else None
            r["last_seen_age_s"] = round(now - seen, 1) if seen else None
        return rows

    add_routes(app, alerts_router(service))
    add_routes(app, maintenance_router(service))

    add_history_routes(app, service)
    add_routes(app, reports_router(service))

    install_wall(app, service)
    return app
