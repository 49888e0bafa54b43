"""Report routes (viewer role): the monthly operations report and the maintenance priorities, read from the
running service's database, so operators and the scheduled reports' links need no stopped service."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any
from zoneinfo import ZoneInfo

import duckdb
from fastapi import APIRouter, HTTPException, Query, Response
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse

from gridsentry.auth import require
from reports import maintenance, monthly

if TYPE_CHECKING:
    from gridsentry.service import Service


class MonthlyFormat(StrEnum):
    md = "md"
    html = "html"
    json = "json"


class MaintenanceFormat(StrEnum):
    md = "md"
    json = "json"
    csv = "csv"


def monthly_html(report: monthly.MonthlyReport) -> str:
    """The report's own HTML when the monthly module renders one; otherwise its Markdown as a printable page."""
    render: Callable[[monthly.MonthlyReport], str] | None = getattr(monthly, "render_html", None)
    if render is not None:
        return str(render(report))
    from markdown_it import MarkdownIt

    body: str = MarkdownIt("commonmark", {"html": False}).enable("table").render(monthly.render_markdown(report))
    title = f"Monthly operations report {report.month}"
    return (
        f'<!doctype html><html lang="zh-CN"><head><meta charset="utf-8"><title>{title}</title>'
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #999;padding:.2em .6em;text-align:right}td:first-child{text-align:left}"
        "</style></head><body>" + body + "</body></html>"
    )


def monthly_dict(report: monthly.MonthlyReport) -> dict[str, Any]:
    out = dataclasses.asdict(report)
    out["kpis"] = [k.as_dict() for k in report.kpis]
    return out


def default_month(zone: ZoneInfo, now: datetime | None = None) -> str:
    """The month that just ended: the report people ask for in its first days."""
    local = (now or datetime.now(zone)).astimezone(zone)
    year, month = (local.year, local.month - 1) if local.month > 1 else (local.year - 1, 12)
    return f"{year:04d}-{month:02d}"


class VisitList:
    """The wall's "visit first" panel: the top of the maintenance ranking, recomputed at most once a minute."""

    def __init__(
        self,
        connect: Callable[[], duckdb.DuckDBPyConnection],
        zone: ZoneInfo,
        top: int = 8,
        ttl_s: float = 60.0,  # the ranking moves in minutes
    ) -> None:
        self._connect = connect
        self._zone = zone
        self._top = top
        self._ttl_s = ttl_s
        self._at = -1e18
        self._rows: list[dict[str, Any]] = []

    def rows(self) -> list[dict[str, Any]]:
        if time.monotonic() - self._at < self._ttl_s:
            return self._rows
        con = self._connect()
        try:
            report = maintenance.build_maintenance(con, zone=self._zone, limit=self._top)
        finally:
            con.close()
        self._rows = [
            {"rank": p.rank, "device_id": p.device_id, "site": p.site, "kind": p.device_kind, "score": p.score,
             "reasons": p.reasons}
            for p in report.priorities
        ]  # fmt: skip
        self._at = time.monotonic()
        return self._rows


def reports_router(service: Service) -> APIRouter:
    router = APIRouter(prefix="/api/reports", tags=["reports"])
    zone = ZoneInfo(service.cfg.alerts.sla.standby.timezone)

    def reader() -> duckdb.DuckDBPyConnection:
        try:
            return service.writer.reader()
        except RuntimeError as exc:
            raise HTTPException(503, "the database is not open (GridSentry is starting or stopping)") from exc

    @router.get("/monthly", dependencies=[require("viewer")])
    async def monthly_report(
        month: Annotated[str | None, Query(description="YYYY-MM in the standby time zone; default last month.")] = None,
        site: Annotated[str | None, Query(description="Only this site's chargers.")] = None,
        format: Annotated[MonthlyFormat, Query(description="md, html or json.")] = MonthlyFormat.md,
    ) -> Response:
        """The monthly operations report: uses, kWh charged and faults per charger; alert KPIs per class."""
        wanted = month or default_month(zone)

        def build() -> monthly.MonthlyReport:
            con = reader()
            try:
                return monthly.build_monthly(con, wanted, zone, site)
            finally:
                con.close()

        try:
            report = await asyncio.to_thread(build)
        except ValueError as exc:
            raise HTTPException(422, f"month={wanted!r}: {exc}") from exc
        if format is MonthlyFormat.html:
            return HTMLResponse(monthly_html(report))
        if format is MonthlyFormat.json:
            return JSONResponse(monthly_dict(report))
        return PlainTextResponse(monthly.render_markdown(report), media_type="text/markdown; charset=utf-8")

    @router.get("/maintenance", dependencies=[require("viewer")])
    async def maintenance_report(
        site: Annotated[str | None, Query(description="Only this site's devices.")] = None,
        days: Annotated[int, Query(ge=1, le=3660, description="Fault-rate period: the last N days.")] = 30,
        top: Annotated[int | None, Query(ge=1, description="Only the first N devices to visit.")] = None,
        format: Annotated[MaintenanceFormat, Query(description="md, json or csv.")] = MaintenanceFormat.json,
    ) -> Response:
        """Fault rates per device model per 1,000 operating hours, and the devices to visit first with why."""

        def build() -> maintenance.MaintenanceReport:
            con = reader()
            try:
                return maintenance.build_maintenance(con, days=days, site=site, zone=zone, limit=top)
            finally:
                con.close()

        try:
            report = await asyncio.to_thread(build)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from exc
        if format is MaintenanceFormat.md:
            return PlainTextResponse(maintenance.render_markdown(report), media_type="text/markdown; charset=utf-8")
        if format is MaintenanceFormat.csv:
            return PlainTextResponse(maintenance.render_csv(report), media_type="text/csv; charset=utf-8")
        return JSONResponse(maintenance.report_dict(report))

    return router
