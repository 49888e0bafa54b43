"""The built-in wall screen at / and its data route, for sites without Grafana.

One HTML document with its CSS and script inlined (files under gridsentry/static/, no build step, no
external network). The page holds no data: it asks `/api/wall` for it with the token kept in the browser.
When the `wall` area is not public, opening / without a token answers 401 with the same page, which then
asks for a token once and keeps it in localStorage.
"""

from __future__ import annotations

import json
import logging
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import HTMLResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from gridsentry.api_reports import VisitList
from gridsentry.auth import require

if TYPE_CHECKING:
    from gridsentry.service import Service

log = logging.getLogger("gridsentry.screens")

WALL_ALERT_LIMIT = 200
WALL_ALERT_COLUMNS = (
    "alert_id, event_class, state, device_id, site, rule_id, title, message, metric, value, unit, created_at, "
    "acknowledged_at, acknowledged_by, assignee, resolved_at, ack_due, onsite_due, restore_due"
)


@cache
def _asset(name: str) -> str:
    return resources.files("gridsentry").joinpath("static", name).read_text(encoding="utf-8")


def wall_page(service: Service) -> str:
    wall = service.cfg.screens.wall
    config = {"refresh_s": wall.refresh_s, "sla_warn_s": wall.sla_warn_s}
    # Inside <script> a "</" would end the element early; JSON allows escaping it.
    config_json = json.dumps(config).replace("</", "<\\/")
    title = wall.title.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return (
        _asset("wall.html")
        .replace("__CSS__", _asset("wall.css"))
        .replace("__JS__", _asset("wall.js"))
        .replace("__CONFIG__", config_json)
        .replace("__TITLE__", title)
    )


def _jsonable(v: Any) -> Any:
    return v.isoformat() if hasattr(v, "isoformat") else v


def install_wall(app: FastAPI, service: Service) -> None:
    # Ranked again at most every ten wall refreshes (and at least once a minute): it moves in minutes, not seconds.
    ttl_s = min(60.0, 10.0 * service.cfg.screens.wall.refresh_s)
    visit_list = VisitList(service.writer.reader, ZoneInfo(service.cfg.alerts.sla.standby.timezone), ttl_s=ttl_s)

    def visit_first() -> list[dict[str, Any]] | None:
        try:
            return visit_list.rows()
        except Exception as exc:  # the wall still shows alerts and the fleet
            log.warning("the wall screen could not rank the devices to visit: %s", exc)
            return None

    # Registered on the app itself: this FastAPI wraps include_router() in one opaque entry, and the route-list
    # test (tests/integration/test_auth.py) must see each guarded route.
    @app.get("/", tags=["wall"], response_class=HTMLResponse, dependencies=[require("viewer", public="wall")])
    def wall() -> HTMLResponse:
        """The wall screen: open alerts with SLA countdowns, fleet tiles by state, key power figures."""
        return HTMLResponse(wall_page(service), headers={"Cache-Control": "no-store"})

    @app.get("/api/wall", tags=["wall"], dependencies=[require("viewer", public="wall")])
    def wall_data() -> dict[str, Any]:
        """Everything the wall screen shows, in one answer: open alerts (as /api/alerts), fleet, power."""
        try:
            con = service.writer.reader()
        except RuntimeError as exc:
            raise HTTPException(503, "the database is not open (GridSentry is starting or stopping)") from exc
        try:
            cur = con.execute(
                f"SELECT {WALL_ALERT_COLUMNS} FROM alerts WHERE state IN ('firing', 'acknowledged') "
                # Most severe first, unacknowledged before acknowledged, newest first within that.
                "ORDER BY CASE event_class WHEN 'I' THEN 1 WHEN 'II' THEN 2 WHEN 'III' THEN 3 ELSE 4 END, "
                "state = 'acknowledged', alert_id DESC LIMIT ?",
                [WALL_ALERT_LIMIT + 1],
            )
            cols = [d[0] for d in cur.description or []]
            rows = [{c: _jsonable(v) for c, v in zip(cols, r, strict=True)} for r in cur.fetchall()]
        finally:
            con.close()
        return {
            "title": service.cfg.screens.wall.title,
            "alerts": rows[:WALL_ALERT_LIMIT],
            "alerts_truncated": len(rows) > WALL_ALERT_LIMIT,
            "fleet": service.screens.wall_fleet(),
            "oncall": oncall_now(),
            "visit_first": visit_first(),
        }

    def oncall_now() -> list[Any] | None:
        """Who is paged now, per escalation level, from the on-call route when this server has one.

        Asked here rather than by the page, so a public wall shows it without a token and the browser never
        logs a 401 or 404 for it.
        """
        for route in app.routes:
            if isinstance(route, APIRoute) and route.path == "/api/oncall" and "GET" in (route.methods or ()):
                try:
                    result = route.endpoint()
                except Exception as exc:  # the wall still shows alerts and the fleet
                    log.warning("the wall screen could not read who is on call: %s", exc)
                    return None
                return list(result) if isinstance(result, list) else [result]
        return None

    @app.exception_handler(StarletteHTTPException)
    async def wall_login(request: Request, exc: StarletteHTTPException) -> Response:
        # A browser opening the wall without a token gets the page itself (still 401), which asks for one.
        if exc.status_code == 401 and request.url.path == "/" and request.method == "GET":
            return HTMLResponse(wall_page(service), status_code=401, headers=exc.headers)
        return await http_exception_handler(request, exc)
