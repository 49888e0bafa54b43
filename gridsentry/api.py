"""The HTTP API: health, readiness, /metrics, devices, alerts and engineers' SQL.

Bound to loopback by default. Every route declares the role it needs (`gridsentry.auth.require`); every
state-changing request is written to `audit_log` with its actor. Handlers that read DuckDB are plain `def`s, so FastAPI runs them in
its thread pool on their own reader connection and the event loop (and ingest) never waits on a query.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import duckdb
from fastapi import FastAPI, HTTPException, Query, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

from alerts.lifecycle import AlertStateError
from gridsentry import __version__
from gridsentry.api_history import add_history_routes
from gridsentry.auth import principal_of, require

if TYPE_CHECKING:
    from gridsentry.service import Service

log = logging.getLogger("gridsentry.audit")

_CHANGING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

ALERT_COLUMNS = (
    "alert_id, event_class, state, device_id, site, rule_id, title, message, metric, value, threshold, unit, "
    "runbook, fired_at, created_at, updated_at, fire_count, acknowledged_at, acknowledged_by, assignee, "
    "resolved_at, closed_at, ack_due, onsite_due, restore_due"
)


class AlertAction(BaseModel):
    actor: str | None = Field(
        None,
        min_length=1,
        description="Who acts, when the token is shared (e.g. a duty desk): recorded as 'actor via token-holder'.",
    )
    comment: str | None = None


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

    @app.get("/api/alerts", tags=["alerts"], dependencies=[require("viewer")])
    def alerts(
        state: Literal["open", "firing", "acknowledged", "resolved", "closed", "all"] = "open",
        device_id: str | None = None,
        limit: int = Query(200, ge=1, le=10_000),
    ) -> list[dict[str, Any]]:
        """Alerts, newest first. `open` means firing or acknowledged."""
        states = {"open": ["firing", "acknowledged"], "all": ["firing", "acknowledged", "resolved", "closed"]}.get(
            state, [state]
        )
        con = reader()
        try:
            return _rows(
                con,
                f"SELECT {ALERT_COLUMNS} FROM alerts WHERE list_contains(?, state) "
                "AND (? IS NULL OR device_id = ?) ORDER BY alert_id DESC LIMIT ?",
                [states, device_id, device_id, limit],
            )
        finally:
            con.close()

    @app.get("/api/alerts/{alert_id}", tags=["alerts"], dependencies=[require("viewer")])
    def alert(alert_id: int) -> dict[str, Any]:
        """One alert with its audit trail."""
        con = reader()
        try:
            rows = _rows(con, f"SELECT {ALERT_COLUMNS} FROM alerts WHERE alert_id = ?", [alert_id])
            if not rows:
                raise HTTPException(404, f"alert #{alert_id} does not exist")
            rows[0]["events"] = _rows(
                con, "SELECT ts, action, actor, detail FROM alert_events WHERE alert_id = ? ORDER BY ts", [alert_id]
            )
            return rows[0]
        finally:
            con.close()

    async def _act(request: Request, alert_id: int, body: AlertAction | None, action: str) -> dict[str, Any]:
        fn = service.alerts.acknowledge if action == "acknowledge" else service.alerts.close
        holder = principal_of(request).name
        actor = f"{body.actor} via {holder}" if body is not None and body.actor else holder
        try:
            await fn(alert_id, actor, body.comment if body is not None else None)
        except LookupError as exc:
            raise HTTPException(404, str(exc)) from exc
        except AlertStateError as exc:
            raise HTTPException(409, str(exc)) from exc
        return await asyncio.to_thread(alert, alert_id)

    @app.post("/api/alerts/{alert_id}/ack", tags=["alerts"], dependencies=[require("operator")])
    async def acknowledge(request: Request, alert_id: int, body: AlertAction | None = None) -> dict[str, Any]:
        """Acknowledge a firing alert (stops the response clock)."""
        return await _act(request, alert_id, body, "acknowledge")

    @app.post("/api/alerts/{alert_id}/close", tags=["alerts"], dependencies=[require("operator")])
    async def close(request: Request, alert_id: int, body: AlertAction | None = None) -> dict[str, Any]:
        """Close an alert after the fault is cleared on site."""
        return await _act(request, alert_id, body, "close")

    add_history_routes(app, service)

    return app
