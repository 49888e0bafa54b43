"""HTTP routes for Modbus link health (`/api/modbus/...`), included by the service's API."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, HTTPException

from gridsentry.auth import require

if TYPE_CHECKING:  # imported by the API at start-up; pymodbus loads only when a device is polled
    from collector.modbus.collector import ModbusCollector
    from collector.modbus.poller import DevicePoller


def _health(p: DevicePoller) -> dict[str, Any]:
    h = p.health
    jitter = sorted(h.jitter_s)
    return {
        "device_id": h.device_id,
        "endpoint": h.endpoint,
        "link": h.link,
        "map": h.map_name,
        "interval_s": h.interval_s,
        "state": "offline" if h.online is False else "online" if h.online else "not polled yet",
        "last_success": datetime.fromtimestamp(h.last_success, UTC).isoformat() if h.last_success else None,
        "consecutive_failures": h.consecutive_failures,
        "backoff_s": h.backoff_s,
        "polls": h.polls,
        "polls_failed": h.polls_failed,
        "requests": h.requests,
        "errors": dict(h.errors),
        "point_errors": [{"metric": m, "kind": k, "count": n} for (m, k), n in sorted(h.point_errors.items())],
        "merged_reads_refused": h.merged_reads_refused,
        "poll_jitter_p99_s": jitter[int(0.99 * (len(jitter) - 1))] if jitter else None,
        "reads": [r.describe() for r in p.requests],
        "sunspec": None
        if p.sunspec is None
        else {
            "base": p.sunspec.base,
            "models": [
                {"id": m.id, "name": m.name, "address": m.address, "length": m.length} for m in p.sunspec.models
            ],
            **p.sunspec.common,
        },
    }


def modbus_router(collector: Callable[[], ModbusCollector | None]) -> APIRouter:
    router = APIRouter(prefix="/api/modbus", tags=["modbus"], dependencies=[require("viewer")])

    @router.get("/devices")
    def devices() -> list[dict[str, Any]]:
        """Link health of every polled Modbus device: state, last success, backoff, errors by kind and point."""
        c = collector()
        return [] if c is None else [_health(p) for p in c.pollers.values()]

    @router.get("/devices/{device_id}")
    def device(device_id: str) -> dict[str, Any]:
        """One device's link health, planned reads and (for SunSpec) discovered models."""
        c = collector()
        if c is None or device_id not in c.pollers:
            raise HTTPException(404, f"device {device_id!r} is not polled over Modbus (no modbus: block in its config)")
        return _health(c.pollers[device_id])

    return router
