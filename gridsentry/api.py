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
from fastapi import FastAPI, HTTPException, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

from gridsentry import __version__
from gridsentry.api_alerts import alerts_router
from gridsentry.auth import principal_of, require
from storage.sql import QueryRejectedError, QueryTimeoutError, run_read_query

if TYPE_CHECKING:
    from gridsentry.service import Service

log = logging.getLogger("gridsentry.audit")

_CHANGING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class SqlRequest(BaseModel):
    query: str = Field(description="One read statement: SELECT, WITH, EXPLAIN, DESCRIBE or SUMMARIZE.")
    max_rows: int = Field(10_000, ge=1, le=1_000_000)
    timeout_s: float = Field(30.0, gt=0, le=600)


class SqlResponse(BaseModel):
    columns: list[str]
    types: list[str]
    rows: list[list[Any]]
    truncated: bool
    seconds: float


def _rows(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
    cur = con.execute(sql, params or [])
    cols = [d[0] for d in cur.description or []]
    return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


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

    def reader() -> duckdb.DuckDBPyConnection:
        try:
            return service.writer.reader()
        except RuntimeError as exc:
            raise HTTPException(503, "the database is not open (GridSentry is starting or stopping)") from exc

    @app.get("/healthz", tags=["health"], dependencies=[require("viewer", public="healthz")])
    def healthz() -> dict[str, Any]:
        """Liveness: the process answers."""
        return {"status": "ok", "version": __version__, "uptime_s": round(service.uptime_s(), 1)}

    @app.get("/readyz", tags=["health"], dependencies=[require("viewer", public="healthz")])
    def readyz(response: Response) -> dict[str, Any]:
        """Readiness: storage open, rules loaded, and the MQTT broker connected (when enabled)."""
        checks = {
            "storage": service.writer.queue_depth < 10_000 and service.ready.is_set(),
            "mqtt": all(c.stats.connected for c in service.collectors),
            "rules": len(service.engine.rules) > 0 or not service.cfg.rules.builtin_packs,
        }
        ok = all(checks.values())
        if not ok:
            response.status_code = 503
        return {"ready": ok, "checks": checks}

    @app.get("/metrics", tags=["health"], dependencies=[require("viewer", public="metrics")])
    def metrics() -> Response:
        return Response(generate_latest(service.registry), media_type=CONTENT_TYPE_LATEST)

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

    # Routes are added one by one (not include_router) so the app lists each guarded APIRoute itself.
    app.router.routes.extend(alerts_router(service).routes)

    @app.post("/api/sql", tags=["history"], response_model=SqlResponse, dependencies=[require("engineer")])
    def sql(request: Request, body: SqlRequest) -> SqlResponse:
        """Run one read-only statement against the live database."""
        request.state.audit_detail = body.query
        con = reader()
        try:
            res = run_read_query(con, body.query, timeout_s=body.timeout_s, max_rows=body.max_rows)
        except QueryRejectedError as exc:
            raise HTTPException(400, str(exc)) from exc
        except QueryTimeoutError as exc:
            raise HTTPException(408, str(exc)) from exc
        except duckdb.Error as exc:
            raise HTTPException(400, f"the query failed: {exc}") from exc
        finally:
            con.close()
        return SqlResponse(
            columns=res.columns,
            types=res.types,
            rows=[[_jsonable(v) for v in r] for r in res.rows],
            truncated=res.truncated,
            seconds=res.seconds,
        )

    return app


def _jsonable(v: Any) -> Any:
    if isinstance(v, datetime):
        return v.isoformat()
    if isinstance(v, bytes | bytearray):
        return v.hex()
    if isinstance(v, int | float | str | bool) or v is None:
        return v
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return str(v)
