"""Operators' interfaces on a running service: API routes, the `gridsentry alerts|oncall|sla` CLI, KPIs, metrics."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from alerts.settings import AlertsConfig
from gridsentry.config import Config, DeviceConfig
from gridsentry.service import Service
from rules.model import Finding
from tests.conftest import api_headers

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 10, 2, 0, tzinfo=UTC)  # 10:00 in Shanghai


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def finding(device: str, cls: str, action: str = "fire") -> Finding:
    return Finding(
        action=action,  # type: ignore[arg-type]
        rule_id="dc_gun_overtemp_critical",
        title="DC gun critically hot",
        device_id=device,
        site="wuhan-01",
        metric="gun1_temp_c",
        value=93.0 if action == "fire" else 70.0,
        threshold=90.0,
        unit="°C",
        event_class=cls,  # type: ignore[arg-type]
        message=f"{device} gun1_temp_c at 93.0 °C",
        runbook="",
        ts=T0,
    )


def cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gridsentry.cli", *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )


async def test_alert_routes_cli_and_monthly_kpis(tmp_path: Path) -> None:
    cfg = Config(
        data_dir=tmp_path / "data",
        devices=[DeviceConfig(id=f"DC0{i}", site="wuhan-01", kind="charger_dc") for i in (1, 2, 3)],
    )
    cfg.http.port = 0
    cfg.mqtt.enabled = False
    cfg.alerts = AlertsConfig.model_validate(
        {
            "oncall": {
                "people": [
                    {"id": "li.wei", "name": "Li Wei", "phone": "+86 138 0000 0001"},
                    {"id": "boss", "name": "Wu Gang"},
                ],
                "rotas": [{"name": "engineers", "people": ["li.wei"]}, {"name": "managers", "people": ["boss"]}],
            },
            "escalation": [
                {"name": "on-call engineer", "rota": "engineers", "after": 0},
                {"name": "manager", "rota": "managers", "after": "30m"},
            ],
        }
    )
    service = Service(cfg)
    clock = Clock()
    service.alerts.clock = clock
    await service.start()
    headers = api_headers(cfg.data_dir)
    try:
        lc = service.alerts
        await lc.apply([finding("DC01", "I"), finding("DC02", "I"), finding("DC03", "III")])
        async with httpx.AsyncClient(base_url=service.http_url or "", headers=headers) as http:
            listed = (await http.get("/api/alerts")).json()
            assert [a["device_id"] for a in listed] == ["DC03", "DC02", "DC01"]
            assert listed[0]["ack_due"] and listed[0]["next_deadline"] == listed[0]["ack_due"]

            clock.now = T0 + timedelta(minutes=3)
            r = await http.post("/api/alerts/1/ack", json={"actor": "li.wei", "comment": "on my way"})
            assert r.status_code == 200 and r.json()["acknowledged_by"] == "li.wei via local-cli"
            r = await http.post("/api/alerts/2/assign", json={"assignee": "li.wei"})
            assert r.json()["assignee"] == "li.wei"
            assert (await http.post("/api/alerts/2/comment", json={"comment": "spare gun ordered"})).status_code == 200
            assert (await http.post("/api/alerts/2/comment", json={})).status_code == 422
            assert (await http.post("/api/alerts/99/ack")).status_code == 404
            assert (await http.post("/api/alerts/1/ack")).status_code == 409

            clock.now = T0 + timedelta(minutes=10)
            await lc.tick()  # the acknowledge deadline of #2 and #3 passed
            assert (await http.post("/api/alerts/2/ack")).status_code == 200
            shown = (await http.get("/api/alerts/2")).json()
            assert [e["action"] for e in shown["events"]] == [
                "fired",
                "assigned",
                "commented",
                "breach:ack",
                "escalated",
                "acknowledged",
            ]
            assert {n["kind"] for n in shown["notifications"]} == set()  # nobody has contacts, no webhooks

            clock.now = T0 + timedelta(hours=2)
            assert (await http.post("/api/alerts/1/arrive")).status_code == 200
            await lc.apply([finding("DC01", "I", "clear")])
            clock.now = T0 + timedelta(hours=13)
            assert (await http.post("/api/alerts/2/close", json={"comment": "connector replaced"})).status_code == 200

            s = await http.post("/api/silences", json={"device_id": "DC09", "duration": "1h", "comment": "storm"})
            assert s.status_code == 200
            assert (await http.post("/api/silences", json={"comment": "everything"})).status_code == 422
            assert [x["silence_id"] for x in (await http.get("/api/silences", params={"active": False})).json()] == [1]

            oncall = (await http.get("/api/oncall")).json()
            assert [(p["level"], p["person"], p["pages_after_s"]) for p in oncall] == [
                (1, "li.wei", 0),
                (2, "boss", 1800),
            ]

            report = {
                k["event_class"]: k for k in (await http.get("/api/sla/report", params={"month": "2026-11"})).json()
            }
            assert (await http.get("/api/sla/report", params={"month": "2026-13"})).status_code == 400
            metrics = (await http.get("/metrics")).text

        i, iii, everything = report["I"], report["III"], report["all"]
        assert (i["events"], i["responded_in_time"], i["resolved"], i["resolved_in_time"]) == (2, 1, 2, 1)
        assert i["response_timeliness_rate"] == 0.5 and i["resolution_rate"] == 1.0
        assert i["mtta_s"] == pytest.approx((3 + 10) / 2 * 60) and i["mttr_s"] == pytest.approx((2 + 13) / 2 * 3600)
        assert (iii["events"], iii["responded"], iii["resolution_rate"], iii["sla_breaches"]) == (1, 0, 0.0, 1)
        assert everything["events"] == 3
        assert 'gridsentry_alerts_sla_breaches_total{clock="ack",event_class="I"} 1.0' in metrics
        assert 'gridsentry_alerts_open_overdue{event_class="III"} 1.0' in metrics
        promtool = shutil.which("promtool")
        assert promtool, "promtool is missing: `make test` installs it (apt-get install prometheus)"
        lint = await asyncio.to_thread(
            subprocess.run, [promtool, "check", "metrics"], input=metrics, capture_output=True, text=True
        )
        assert lint.returncode == 0 and not (lint.stdout + lint.stderr).strip(), lint.stdout + lint.stderr

        # The CLI talks to the running service.
        out = await asyncio.to_thread(cli, cfg.data_dir, "alerts", "list", "--state", "all", "--format", "json")
        assert out.returncode == 0, out.stderr
        assert {a["alert_id"]: a["state"] for a in json.loads(out.stdout)} == {1: "resolved", 2: "closed", 3: "firing"}
        out = await asyncio.to_thread(cli, cfg.data_dir, "alerts", "ack", "3", "-m", "seen", "--actor", "zhang.min")
        assert out.returncode == 0 and "acknowledged by zhang.min via local-cli" in out.stdout, out.stderr
        out = await asyncio.to_thread(cli, cfg.data_dir, "alerts", "ack", "3")
        assert out.returncode == 2 and "alert #3 is acknowledged; cannot acknowledge it" in out.stderr
        out = await asyncio.to_thread(cli, cfg.data_dir, "alerts", "show", "3")
        assert out.returncode == 0 and "breach:ack" in out.stdout and "zhang.min via local-cli" in out.stdout
        out = await asyncio.to_thread(cli, cfg.data_dir, "oncall", "now")
        assert out.returncode == 0 and "Li Wei (li.wei)" in out.stdout and "+86 138 0000 0001" in out.stdout
        out = await asyncio.to_thread(cli, cfg.data_dir, "sla", "report", "--month", "2026-11")
        assert out.returncode == 0 and "50.0 %" in out.stdout and "6.5 min" in out.stdout, out.stdout
    finally:
        await service.stop()

    # Stopped: reads open the database read-only; changes are refused with a clear message.
    out = cli(cfg.data_dir, "sla", "report", "--month", "2026-11", "--format", "json")
    assert out.returncode == 0 and json.loads(out.stdout)[0]["response_timeliness_rate"] == 0.5
    out = cli(cfg.data_dir, "alerts", "close", "3")
    assert out.returncode == 2 and "GridSentry is not running" in out.stderr
