"""HTTP routes for planned maintenance windows: list (viewer), announce and cancel (operator).

Announcing goes through the alert lifecycle (the single writer), which enforces the contract's notice and
replans suppression at once; the audit middleware records the request, the row records who announced it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, Field

from alerts.maintenance import MaintenanceConflict, MaintenanceRefused, MaintenanceRequest, fetch_window
from alerts.maintenance import fetch_windows as fetch_all
from gridsentry.auth import principal_of, require

if TYPE_CHECKING:
    from gridsentry.service import Service


class AnnounceBody(MaintenanceRequest):
    actor: str | None = Field(
        None, min_length=1, description="Who announces it, when the token is shared: recorded as 'actor via holder'."
    )


class CancelBody(BaseModel):
    reason: str = Field(min_length=1, description="Why the window is cancelled (kept with the window).")
    actor: str | None = Field(None, min_length=1, description="Who cancels it, when the token is shared.")


def maintenance_router(service: Service) -> APIRouter:
    router = APIRouter(tags=["maintenance"])

    def actor_of(request: Request, named: str | None) -> str:
        holder = principal_of(request).name
        return f"{named} via {holder}" if named else holder

    @router.get("/api/maintenance", dependencies=[require("viewer")])
    def list_windows(status: Literal["current", "all"] = "current") -> list[dict[str, Any]]:
        """Planned maintenance windows: upcoming and active (`current`), or every one including cancelled."""
        try:
            con = service.writer.reader()
        except RuntimeError as exc:
            raise HTTPException(503, "the database is not open (GridSentry is starting or stopping)") from exc
        try:
            return fetch_all(con, service.alerts.clock(), status)
        finally:
            con.close()

    @router.post("/api/maintenance", status_code=201, dependencies=[require("operator")])
    async def announce(request: Request, body: AnnounceBody) -> dict[str, Any]:
        """Announce a planned window: alerts of its devices and sites page nobody while it lasts.
        Refused (400) when announced less than the contract's notice ahead (alerts.maintenance_notice)."""
        req = MaintenanceRequest.model_validate(body.model_dump(exclude={"actor"}))
        try:
            return await service.alerts.add_maintenance(actor_of(request, body.actor), req)
        except MaintenanceConflict as exc:
            raise HTTPException(409, str(exc)) from exc
        except MaintenanceRefused as exc:
            raise HTTPException(400, str(exc)) from exc

    @router.get("/api/maintenance/{window_id}", dependencies=[require("viewer")])
    def show(window_id: str) -> dict[str, Any]:
        """One window with its status (upcoming, active, ended, cancelled)."""
        con = service.writer.reader()
        try:
            row = fetch_window(con, window_id, service.alerts.clock())
        finally:
            con.close()
        if row is None:
            raise HTTPException(404, f"maintenance window {window_id!r} does not exist")
        return row

    @router.post("/api/maintenance/{window_id}/cancel", dependencies=[require("operator")])
    async def cancel(request: Request, window_id: str, body: CancelBody) -> dict[str, Any]:
        """Cancel a planned window, or end one in progress: its alerts page again at the next SLA tick."""
        try:
            return await service.alerts.cancel_maintenance(window_id, actor_of(request, body.actor), body.reason)
        except LookupError as exc:
            raise HTTPException(404, str(exc)) from exc
        except MaintenanceConflict as exc:
            raise HTTPException(409, str(exc)) from exc

    return router
