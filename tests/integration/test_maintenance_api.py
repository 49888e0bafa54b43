"""Planned maintenance on a running service: API roles and refusals, the CLI, the audit trail, suppression."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import httpx
import pytest

from gridsentry.auth import Principal
from gridsentry.config import Config, DeviceConfig
from gridsentry.service import Service
from tests.integration.test_alert_api import cli, finding

pytestmark = pytest.mark.integration


async def test_operators_announce_list_and_cancel_windows_through_api_and_cli(tmp_path: Path) -> None:
    cfg = Config(
        data_dir=tmp_path / "data",
        devices=[DeviceConfig(id=d, site="wuhan-01", kind="charger_dc") for d in ("DC01", "DC02")],
    )
    cfg.http.port = 0
    cfg.mqtt.enabled = False
    service = Service(cfg)
    await service.start()
    service.tokens.add_token("gst_test-operator", Principal("wang.fang", "operator"))
    service.tokens.add_token("gst_test-viewer", Principal("wall", "viewer"))
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(days=4)
    body = {
        "id": "CHG-2026-118",
        "start": start.isoformat(),
        "end": (start + timedelta(hours=3)).isoformat(),
        "devices": ["DC02"],
        "reason": "connector replacement",
    }
    try:
        async with httpx.AsyncClient(base_url=service.http_url or "") as http:
            viewer = {"authorization": "Bearer gst_test-viewer"}
            operator = {"authorization": "Bearer gst_test-operator"}
            assert (await http.post("/api/maintenance", json=body, headers=viewer)).status_code == 403
            late = {**body, "start": (start - timedelta(days=2)).isoformat()}
            r = await http.post("/api/maintenance", json=late, headers=operator)
            assert r.status_code == 400 and "announced only 2.0 days ahead; the contract needs 3.0 days" in r.text
            r = await http.post("/api/maintenance", json={**body, "devices": []}, headers=operator)
            assert r.status_code == 422 and "name at least one device or site" in r.text
            r = await http.post("/api/maintenance", json={**body, "actor": "li.wei"}, headers=operator)
            assert r.status_code == 201, r.text
            assert (r.json()["status"], r.json()["created_by"]) == ("upcoming", "li.wei via wang.fang")
            assert (await http.post("/api/maintenance", json=body, headers=operator)).status_code == 409
            listed = (await http.get("/api/maintenance", headers=viewer)).json()
            assert [w["window_id"] for w in listed] == ["CHG-2026-118"]
            assert (await http.get("/api/maintenance/CHG-9", headers=viewer)).status_code == 404

            # The window is in force at once: an alert for DC02 inside it pages nobody.
            service.alerts.clock = lambda: start + timedelta(hours=1)
            changes = await service.alerts.apply([finding("DC02", "I"), finding("DC01", "I")])
            assert [c.action for c in changes] == ["suppressed", "fired"]
            service.alerts.clock = lambda: datetime.now(UTC)

        # The CLI speaks to the same service: local wall time in the standby zone, --duration, the refusals.
        soon = (datetime.now(UTC) + timedelta(days=1)).astimezone().strftime("%Y-%m-%d %H:%M")
        out = await asyncio.to_thread(
            cli, cfg.data_dir, "maintenance", "add", "--start", soon, "--duration", "2h", "--device", "DC01", "-m", "x"
        )
        assert out.returncode == 2 and "the contract needs 3.0 days" in out.stderr, out.stderr
        later = (start + timedelta(days=2)).astimezone(service.alerts.zone).strftime("%Y-%m-%d %H:%M")
        out = await asyncio.to_thread(
            cli, cfg.data_dir, "maintenance", "add", "--start", later, "--duration", "90m",
            "--site", "wuhan-01", "-m", "switchgear inspection", "--actor", "zhang.min",
        )  # fmt: skip
        assert out.returncode == 0 and "announced by zhang.min via local-cli" in out.stdout, out.stderr
        new_id = out.stdout.split()[2].rstrip(":")
        assert new_id.startswith("MW-")
        out = await asyncio.to_thread(cli, cfg.data_dir, "maintenance", "list", "--format", "json")
        windows = {w["window_id"]: w for w in json.loads(out.stdout)}
        assert set(windows) == {"CHG-2026-118", new_id}
        assert windows[new_id]["sites"] == ["wuhan-01"]
        got = datetime.fromisoformat(windows[new_id]["ends_at"]) - datetime.fromisoformat(windows[new_id]["starts_at"])
        assert got == timedelta(minutes=90)
        out = await asyncio.to_thread(cli, cfg.data_dir, "maintenance", "cancel", new_id, "-m", "postponed")
        assert out.returncode == 0 and "cancelled by local-cli" in out.stdout, out.stderr
        out = await asyncio.to_thread(cli, cfg.data_dir, "maintenance", "cancel", new_id, "-m", "again")
        assert out.returncode == 2 and "already cancelled" in out.stderr
        out = await asyncio.to_thread(cli, cfg.data_dir, "maintenance", "list")
        assert "CHG-2026-118" in out.stdout and new_id not in out.stdout
    finally:
        await service.stop()

    # Stopped: the list reads the database; the trail says who did what.
    out = cli(cfg.data_dir, "maintenance", "list", "--all", "--format", "json")
    assert out.returncode == 0, out.stderr
    rows = {w["window_id"]: w for w in json.loads(out.stdout)}
    assert (rows[new_id]["status"], rows[new_id]["cancelled_by"], rows[new_id]["cancel_reason"]) == (
        "cancelled",
        "local-cli",
        "postponed",
    )
    con = duckdb.connect(str(cfg.database_path), read_only=True)
    try:
        audit = con.execute(
            "SELECT actor, role, action, target, status FROM audit_log WHERE target LIKE '/api/maintenance%' "
            "ORDER BY audit_id"
        ).fetchall()
    finally:
        con.close()
    assert ("POST", "/api/maintenance", 403) in [a[2:] for a in audit]  # refused before the token is named
    assert ("wang.fang", "operator", "POST", "/api/maintenance", 201) in audit
    assert ("local-cli", "admin", "POST", f"/api/maintenance/{new_id}/cancel", 200) in audit
