"""HTTP routes of the alert stage: alerts and their actions, silences, who is on call, the outbox, SLA KPIs.

Reads run in FastAPI's thread pool on their own reader connection; every change goes through the alert
lifecycle (the single writer), so the transition, its trail and its notifications commit together.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

import duckdb
from fastapi import APIRouter, HTTPException, Query, Request
from pydantic import BaseModel, Field, model_validator

from alerts.kpi import monthly_kpis
from alerts.lifecycle import ALERT_COLUMNS, AlertStateError
from gridsentry.auth import principal_of, require
from rules.model import parse_duration

if TYPE_CHECKING:
    from gridsentry.service import Service

STATES = ("pending", "firing", "acknowledged", "resolved", "closed")


class AlertAction(BaseModel):
    actor: str | None = Field(
        None,
        min_length=1,
        description="Who acts, when the token is shared (e.g. a duty desk): recorded as 'actor via token-holder'.",
    )
    comment: str | None = Field(None, description="Free text kept in the alert's trail.")


class AssignBody(AlertAction):
    assignee: str = Field(min_length=1, description="Person id (alerts.oncall.people) or a name.")


class CommentBody(AlertAction):
    comment: str = Field(min_length=1, description="The comment.")


class SilenceBody(BaseModel):
    device_id: str | None = Field(None, description="Silence this device...")
    rule_id: str | None = Field(None, description="...and/or this rule...")
    site: str | None = Field(None, description="...and/or this site.")
    duration: str = Field("2h", description="How long: 30m, 2h, 1d.")
    comment: str = Field(min_length=1, description="Why (kept in the trail of every silenced alert).")

    @model_validator(mode="after")
    def _something(self) -> SilenceBody:
        if self.device_id is None and self.rule_id is None and self.site is None:
            raise ValueError("a silence needs at least one of device_id, rule_id or site")
        parse_duration(self.duration)
        return self


def rows(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
    cur = con.execute(sql, params or [])
    cols = [d[0] for d in cur.description or []]
    return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


def alerts_router(service: Service) -> APIRouter:
    router = APIRouter(tags=["alerts"])
    lifecycle = service.alerts

    def reader() -> duckdb.DuckDBPyConnection:
        try:
            return service.writer.reader()
        except RuntimeError as exc:
            raise HTTPException(503, "the database is not open (GridSentry is starting or stopping)") from exc

    @router.get("/api/alerts", dependencies=[require("viewer")])
    def list_alerts(
        state: Literal["open", "pending", "firing", "acknowledged", "resolved", "closed", "all"] = "open",
        device_id: str | None = None,
        site: str | None = None,
        event_class: Literal["I", "II", "III"] | None = None,
        limit: int = Query(200, ge=1, le=10_000),
    ) -> list[dict[str, Any]]:
        """Alerts, newest first, with their deadlines. `open` means pending, firing or acknowledged."""
        states = {"open": ["pending", "firing", "acknowledged"], "all": list(STATES)}.get(state, [state])
        con = reader()
        try:
            out = rows(
                con,
                f"SELECT {ALERT_COLUMNS} FROM alerts WHERE list_contains(?, state) AND (? IS NULL OR device_id = ?) "
                "AND (? IS NULL OR site = ?) AND (? IS NULL OR event_class = ?) ORDER BY alert_id DESC LIMIT ?",
                [states, device_id, device_id, site, site, event_class, event_class, limit],
            )
        finally:
            con.close()
        now = datetime.now(UTC)
        for a in out:
            a["overdue"] = [m.removeprefix("breach:") for m in a["sla_marks"] or [] if m.startswith("breach:")]
            due = a["ack_due"] if a["state"] == "firing" else a["restore_due"]
            a["next_deadline"] = due
            a["seconds_left"] = round((due - now).total_seconds()) if due is not None else None
        return out

    @router.get("/api/alerts/{alert_id}", dependencies=[require("viewer")])
    def show_alert(alert_id: int) -> dict[str, Any]:
        """One alert with its trail and its notifications."""
        con = reader()
        try:
            found = rows(con, f"SELECT {ALERT_COLUMNS} FROM alerts WHERE alert_id = ?", [alert_id])
            if not found:
                raise HTTPException(404, f"alert #{alert_id} does not exist")
            alert = found[0]
            alert["events"] = rows(
                con,
                "SELECT ts, action, actor, detail FROM alert_events WHERE alert_id = ? ORDER BY ts, rowid",
                [alert_id],
            )
            alert["notifications"] = rows(
                con,
                "SELECT notification_id, kind, channel, recipient, contact, status, attempts, created_at, sent_at, "
                "next_try_at, last_error, idempotency_key FROM notifications WHERE alert_id = ? ORDER BY notification_id",
                [alert_id],
            )
            return alert
        finally:
            con.close()

    def actor_of(request: Request, body: AlertAction | None) -> str:
        holder = principal_of(request).name
        return f"{body.actor} via {holder}" if body is not None and body.actor else holder

    async def act(alert_id: int, run: Any) -> dict[str, Any]:
        try:
            await run
        except LookupError as exc:
            raise HTTPException(404, str(exc)) from exc
        except AlertStateError as exc:
            raise HTTPException(409, str(exc)) from exc
        return await asyncio.to_thread(show_alert, alert_id)

    @router.post("/api/alerts/{alert_id}/ack", dependencies=[require("operator")])
    async def acknowledge(request: Request, alert_id: int, body: AlertAction | None = None) -> dict[str, Any]:
        """Acknowledge a firing alert (stops the response clock and the escalation)."""
        comment = body.comment if body else None
        return await act(alert_id, lifecycle.acknowledge(alert_id, actor_of(request, body), comment))

    @router.post("/api/alerts/{alert_id}/close", dependencies=[require("operator")])
    async def close(request: Request, alert_id: int, body: AlertAction | None = None) -> dict[str, Any]:
        """Close an alert after the fault is cleared on site."""
        comment = body.comment if body else None
        return await act(alert_id, lifecycle.close(alert_id, actor_of(request, body), comment))

    @router.post("/api/alerts/{alert_id}/assign", dependencies=[require("operator")])
    async def assign(request: Request, alert_id: int, body: AssignBody) -> dict[str, Any]:
        """Give the alert to a person (they are notified when they are in the rota's people)."""
        return await act(alert_id, lifecycle.assign(alert_id, actor_of(request, body), body.assignee, body.comment))

    @router.post("/api/alerts/{alert_id}/comment", dependencies=[require("operator")])
    async def comment(request: Request, alert_id: int, body: CommentBody) -> dict[str, Any]:
        """Add a comment to the alert's trail."""
        return await act(alert_id, lifecycle.comment(alert_id, actor_of(request, body), body.comment))

    @router.post("/api/alerts/{alert_id}/arrive", dependencies=[require("operator")])
    async def arrive(request: Request, alert_id: int, body: AlertAction | None = None) -> dict[str, Any]:
        """Record the engineer on site (stops the on-site clock)."""
        comment_ = body.comment if body else None
        return await act(alert_id, lifecycle.arrive(alert_id, actor_of(request, body), comment_))

    @router.get("/api/silences", dependencies=[require("viewer")])
    def list_silences(active: bool = True) -> list[dict[str, Any]]:
        """Silences, active ones by default."""
        con = reader()
        try:
            return rows(
                con,
                "SELECT * FROM silences WHERE NOT ? OR (expired_by IS NULL AND ends_at > now()) ORDER BY silence_id DESC",
                [active],
            )
        finally:
            con.close()

    @router.post("/api/silences", dependencies=[require("operator")])
    async def create_silence(request: Request, body: SilenceBody) -> dict[str, Any]:
        """Stop paging for matching alerts for a while (open ones included). Maintenance is planned in the config."""
        until = datetime.now(UTC) + timedelta(seconds=parse_duration(body.duration))
        try:
            sid = await lifecycle.silence(
                principal_of(request).name,
                until=until,
                comment=body.comment,
                device_id=body.device_id,
                rule_id=body.rule_id,
                site=body.site,
            )
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from exc
        return {"silence_id": sid, "ends_at": until}

    @router.delete("/api/silences/{silence_id}", dependencies=[require("operator")])
    async def expire_silence(request: Request, silence_id: int) -> dict[str, Any]:
        """End a silence now; its alerts page again at the next SLA tick if still open."""
        try:
            await lifecycle.expire_silence(silence_id, principal_of(request).name)
        except LookupError as exc:
            raise HTTPException(404, str(exc)) from exc
        except AlertStateError as exc:
            raise HTTPException(409, str(exc)) from exc
        return {"silence_id": silence_id, "ended": True}

    @router.get("/api/oncall", dependencies=[require("viewer")])
    def oncall(at: datetime | None = None) -> list[dict[str, Any]]:
        """Who is paged now (or at `at`) at each escalation level."""
        when = at or datetime.now(UTC)
        if when.tzinfo is None:
            raise HTTPException(400, "give `at` with a UTC offset, e.g. 2026-11-23T09:00:00+08:00")
        return [
            {
                "level": p.level + 1,
                "level_name": p.level_name,
                "rota": p.shift.rota,
                "person": p.person.id,
                "name": p.person.name,
                "phone": p.person.phone,
                "since": p.shift.since,
                "until": p.shift.until,
                "override": p.shift.override,
                "pages_after_s": lifecycle.cfg.escalation[p.level].after,
            }
            for p in lifecycle.oncall.paged(when)
        ]

    @router.get("/api/notifications", dependencies=[require("viewer")])
    def notifications(
        status: Literal["pending", "sent", "failed", "all"] = "pending", limit: int = Query(200, ge=1, le=10_000)
    ) -> list[dict[str, Any]]:
        """The outbox: what is waiting, sent or given up on, with attempts and the last error."""
        con = reader()
        try:
            return rows(
                con,
                "SELECT notification_id, alert_id, kind, channel, recipient, contact, status, attempts, created_at, "
                "next_try_at, sent_at, last_error, idempotency_key FROM notifications "
                "WHERE ? = 'all' OR status = ? ORDER BY notification_id DESC LIMIT ?",
                [status, status, limit],
            )
        finally:
            con.close()

    @router.get("/api/sla/report", dependencies=[require("viewer")])
    def sla_report(month: str = Query(description="YYYY-MM, in the standby time zone")) -> list[dict[str, Any]]:
        """Response timeliness rate, resolution rate, MTTA and MTTR per event class for one month."""
        con = reader()
        try:
            return [k.as_dict() for k in monthly_kpis(con, month, lifecycle.zone)]
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from exc
        finally:
            con.close()

    return router
