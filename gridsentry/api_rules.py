"""HTTP routes of the rules stage: what runs, what failed, what fires; reload packs."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import polars as pl
from fastapi import APIRouter

from gridsentry.auth import require
from rules.engine import from_us

if TYPE_CHECKING:
    from gridsentry.service import Service


def rules_router(service: Service) -> APIRouter:
    router = APIRouter(prefix="/api/rules", tags=["rules"])

    @router.get("", dependencies=[require("viewer")])
    def status() -> dict[str, Any]:
        """Rules loaded, pack problems (skipped rules), rules disabled after an evaluation error,
        problems of the last refused reload, and the conditions firing now."""
        runtime = service.rules_runtime
        out = runtime.status()
        firing = runtime.engine.firing().sort("fired_at", nulls_last=True)
        out["firing"] = [
            {
                "rule_id": r["rule_id"],
                "device_id": r["device_id"],
                "metric": r["metric"],
                "fired_at": from_us(r["fired_at"]).isoformat() if r["fired_at"] is not None else None,
            }
            for r in firing.head(1000).iter_rows(named=True)
        ]
        out["pending"] = runtime.engine._state.filter(~pl.col("firing")).height
        return out

    @router.post("/reload", dependencies=[require("admin")])
    async def reload() -> dict[str, Any]:
        """Load the rule packs again. With any problem nothing changes: the last valid packs keep
        running and the problems are returned (file, line, what to fix)."""
        problems = await asyncio.to_thread(service.rules_runtime.reload)
        return {"reloaded": not problems, "problems": problems, "rules": len(service.engine.rules)}

    return router
