"""Report routes on a running service: monthly (md, html, json) and maintenance, viewer role enough."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pyarrow as pa
import pytest
from pydantic import SecretStr

from gridsentry.auth import AuthConfig, TokenConfig, new_token
from gridsentry.config import Config, DeviceConfig
from gridsentry.service import Service
from storage.batch import IngestBatch, events_from_columns

pytestmark = pytest.mark.integration

VIEWER = new_token()


def fault_batch(now: float) -> IngestBatch:
    ts = [int((now - 3600 * i) * 1e6) for i in (1, 2, 3)]
    return IngestBatch(
        readings=pa.table(
            {
                "ts": pa.array([int(now * 1e6)] * 2, pa.timestamp("us", tz="UTC")),
                "device_id": ["DC01", "DC02"],
                "metric": ["gun1_power_kw", "gun1_power_kw"],
                "value": pa.array([60.0, 55.0], pa.float64()),
                "quality": pa.array([0, 0], pa.uint8()),
            }
        ),
        events=events_from_columns(
            ts, ["DC01", "DC01", "DC02"], ["fault"] * 3, ["GunOverTemp", "GunOverTemp", "NoError"], [None, None, None]
        ),
        source="test",
    )


async def test_report_routes(tmp_path: Path) -> None:
    cfg = Config(
        data_dir=tmp_path / "data",
        devices=[
            DeviceConfig(id="DC01", site="hub-1", kind="charger_dc", model="QH-DC120", commissioned="2018-05-01"),
            DeviceConfig(id="DC02", site="hub-1", kind="charger_dc", model="QH-DC120"),
        ],
    )
    cfg.http.port = 0
    cfg.mqtt.enabled = False
    cfg.auth = AuthConfig(tokens=[TokenConfig(name="wall-desk", role="viewer", token=SecretStr(VIEWER))])
    service = Service(cfg)
    await service.start()
    try:
        await service.store(fault_batch(time.time()))
        viewer = {"authorization": f"Bearer {VIEWER}"}
        async with httpx.AsyncClient(base_url=service.http_url, headers=viewer, timeout=30) as http:
            r = await http.get("/api/reports/maintenance")
            assert r.status_code == 200, r.text
            doc = r.json()
            first = doc["priorities"][0]
            assert first["device_id"] == "DC01"
            assert first["factors"]["faults"] == 6.0 and first["factors"]["age"] == 10.0
            assert any("2 fault(s) in the last 30 days (GunOverTemp)" in why for why in first["reasons"])
            assert [p["device_id"] for p in doc["priorities"]] == ["DC01"]  # NoError is no fault
            r = await http.get("/api/reports/maintenance", params={"format": "csv", "top": 1})
            assert r.headers["content-type"].startswith("text/csv") and r.text.startswith("rank,device_id")
            r = await http.get("/api/reports/maintenance", params={"site": "nowhere"})
            assert r.status_code == 422 and "site 'nowhere' has no devices" in r.text

            zone_month = datetime.now(ZoneInfo(cfg.alerts.sla.standby.timezone)).strftime("%Y-%m")
            r = await http.get("/api/reports/monthly", params={"month": zone_month, "format": "json"})
            assert r.status_code == 200, r.text
            chargers = {c["device_id"]: c for c in r.json()["chargers"]}
            assert set(chargers) == {"DC01", "DC02"}
            r = await http.get("/api/reports/monthly", params={"month": zone_month, "format": "html"})
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
            assert "<table" in r.text and "DC01" in r.text
            r = await http.get("/api/reports/monthly", params={"month": zone_month})
            assert r.text.startswith(f"# Monthly operations report {zone_month}")
            r = await http.get("/api/reports/monthly", params={"month": "2026-13"})
            assert r.status_code == 422 and "2026-13" in r.text
            r = await http.get("/api/reports/monthly", headers={"authorization": "Bearer nope"})
            assert r.status_code == 401
    finally:
        await service.stop()
