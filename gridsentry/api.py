"""The HTTP API: health, readiness, /metrics, devices, alerts and engineers' SQL.

Bound to loopback by default. Handlers that read DuckDB are plain `def`s, so FastAPI runs them in
its thread pool on their own reader connection and the event loop (and ingest) never waits on a query.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import duckdb
from fastapi import FastAPI, HTTPException, Query, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

from alerts.lifecycle import AlertStateError
from gridsentry import __version__
from gridsentry.api_rules import rules_router
from storage.sql import QueryRejectedError, QueryTimeoutError, run_read_query

if TYPE_CHECKING:
    from gridsentry.service import Service

ALERT_COLUMNS = (
    "alert_id, event_class, state, device_id, site, rule_id, title, message, metric, value, threshold, unit, "
    "runbook, fired_at, created_at, updated_at, fire_count, acknowledged_at, acknowledged_by, assignee, "
    "resolved_at, closed_at, ack_due, onsite_due, restore_due"
)


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


class AlertAction(BaseModel):
    actor: str = Field(min_length=1, description="Who acts: name or staff id, recorded in alert_events.")
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
    )

    app.include_router(rules_router(service))

    def reader() -> duckdb.DuckDBPyConnection:
        try:
            return service.writer.reader()
        except RuntimeError as exc:
            raise HTTPException(503, "the database is not open (GridSentry is starting or stopping)") from exc

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, Any]:
        """Liveness: the process answers."""
        return {"status": "ok", "version": __version__, "uptime_s": round(service.uptime_s(), 1)}

    @app.get("/readyz", tags=["health"])
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

    @app.get("/metrics", tags=["health"])
    def metrics() -> Response:
        return Response(generate_latest(service.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/api/devices", tags=["fleet"])
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

    @app.get("/api/alerts", tags=["alerts"])
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

    @app.get("/api/alerts/{alert_id}", tags=["alerts"])
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

    async def _act(alert_id: int, body: AlertAction, action: str) -> dict[str, Any]:
        fn = service.alerts.acknowledge if action == "acknowledge" else service.alerts.close
        try:
            await fn(alert_id, body.actor, body.comment)
        except LookupError as exc:
            raise HTTPException(404, str(exc)) from exc
        except AlertStateError as exc:
            raise HTTPException(409, str(exc)) from exc
        return await asyncio.to_thread(alert, alert_id)

    @app.post("/api/alerts/{alert_id}/ack", tags=["alerts"])
    async def acknowledge(alert_id: int, body: AlertAction) -> dict[str, Any]:
        """Acknowledge a firing alert (stops the response clock)."""
        return await _act(alert_id, body, "acknowledge")

    @app.post("/api/alerts/{alert_id}/close", tags=["alerts"])
    async def close(alert_id: int, body: AlertAction) -> dict[str, Any]:
        """Close an alert after the fault is cleared on site."""
        return await _act(alert_id, body, "close")

    @app.post("/api/sql", tags=["history"], response_model=SqlResponse)
    def sql(body: SqlRequest) -> SqlResponse:
        """Run one read-only statement against the live database."""
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
