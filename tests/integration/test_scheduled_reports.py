"""Scheduled reports through the real alert channels (a loopback webhook receiver and aiosmtpd), driven by an
injected clock: the monthly report after month end in Asia/Shanghai, the bid's emergency-dispatch reports
(progress hourly, device status every two hours) while a class I incident is open, nothing twice after a restart.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.header import decode_header, make_header
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from alerts.settings import AlertsConfig
from gridsentry.cli import app
from gridsentry.config import Config, ConfigError, DeviceConfig
from gridsentry.service import Service
from reports.schedule import ReportsConfig
from tests.integration.alert_sinks import SmtpServer, WebhookSink

pytestmark = pytest.mark.integration


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


async def until(cond: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


def make_config(data_dir: Path, sink: WebhookSink, smtp: SmtpServer) -> Config:
    cfg = Config(
        data_dir=data_dir,
        devices=[
            DeviceConfig(id="DC01", site="hub-1", kind="charger_dc", model="QH-DC120"),
            DeviceConfig(id="AC01", site="hub-1", kind="charger_ac", model="LX-AC7"),
        ],
    )
    cfg.http.port = 0
    cfg.mqtt.enabled = False
    cfg.auth.local_token = False
    cfg.alerts = AlertsConfig.model_validate(
        {
            "oncall": {
                "people": [{"id": "li.wei", "name": "Li Wei", "contacts": [smtp.contact("li.wei@example.com")]}],
                "rotas": [{"name": "engineers", "people": ["li.wei"]}],
            },
            "escalation": [{"name": "on-call engineer", "rota": "engineers", "after": 0}],
            "webhooks": [{"name": "ops", "url": sink.url + "/hook"}],
            "delivery": {"backoff_initial": 0.2, "backoff_max": 1, "poll_interval": 0.2},
            "public_url": "https://noc.example.com",
        }
    )
    cfg.reports = ReportsConfig.model_validate(
        {
            "monthly": {"enabled": True, "delay": "1h"},
            "dispatch": {"enabled": True, "progress_every": "1h", "status_every": "2h"},
            "webhooks": ["ops"],
            "people": ["li.wei"],
            "check_every": "1h",  # the test ticks by hand; the service's own loop ticks once at start
        }
    )
    return cfg


def reports(sink: WebhookSink) -> list[dict[str, Any]]:
    return [r.body for r in sink.accepted("/hook") if r.body.get("kind") == "report"]


async def open_incident(service: Service, created: datetime) -> None:
    def job(con: Any) -> None:
        con.execute(
            "INSERT INTO alerts (fingerprint, rule_id, device_id, site, event_class, state, title, message, fired_at, "
            "created_at, updated_at, restore_due) VALUES ('fp-dc01', 'dc_gun_overtemp_critical', 'DC01', 'hub-1', "
            "'I', 'firing', 'DC gun critically hot', 'DC01 gun1_temp_c at 93.4 °C, above 90 °C', ?, ?, ?, ?)",
            [created, created, created, created + timedelta(hours=12)],
        )

    await service.writer.run(job)


async def test_monthly_and_dispatch_reports_once_each_across_a_restart(tmp_path: Path) -> None:
    sink = WebhookSink()
    sink.start()
    smtp = SmtpServer()
    smtp.start()
    # 2025-11-30 23:00 in Shanghai: October's report is due (and was never sent), November's is not yet.
    clock = Clock(datetime(2025, 11, 30, 15, 0, tzinfo=UTC))
    cfg = make_config(tmp_path / "data", sink, smtp)
    service = Service(cfg)
    service.reports.clock = clock
    try:
        await service.start()
        await until(lambda: len(reports(sink)) == 1, "October's report (catch-up at start)")
        assert reports(sink)[0]["period"] == "2025-10"

        clock.now = datetime(2025, 11, 30, 16, 30, tzinfo=UTC)  # 00:30 on 1 December in Shanghai: inside the delay
        assert await service.reports.tick() == 0
        clock.now = datetime(2025, 11, 30, 17, 1, tzinfo=UTC)  # 01:01: November is due
        assert await service.reports.tick() == 1
        assert await service.reports.tick() == 0  # a second look the same minute sends nothing
        await until(lambda: len(reports(sink)) == 2, "November's report on the webhook")
        november = reports(sink)[1]
        assert november["report"] == "monthly" and november["period"] == "2025-11"
        assert november["link"] == "https://noc.example.com/api/reports/monthly?month=2025-11&format=html"
        assert november["attachment"]["filename"] == "gridsentry-monthly-2025-11.md"
        assert november["attachment"]["content"].startswith("# Monthly operations report 2025-11")
        assert "| DC01 |" in november["attachment"]["content"]
        await until(lambda: len(smtp.mailbox.messages) >= 2, "the two monthly reports by e-mail")
        mail = message_from_bytes(smtp.mailbox.messages[-1].original_content)
        assert "GridSentry monthly operations report 2025-11" in str(make_header(decode_header(mail["subject"])))
        files = {p.get_filename(): p.get_payload(decode=True).decode() for p in mail.walk() if p.get_filename()}
        assert files["gridsentry-monthly-2025-11.md"].startswith("# Monthly operations report 2025-11")

        # A class I incident opens at 02:00: device status at once, then progress every hour, status every two.
        t0 = datetime(2025, 11, 30, 18, 0, tzinfo=UTC)
        await open_incident(service, t0)
        expected = [(t0, 1), (t0 + timedelta(minutes=30), 0), (t0 + timedelta(hours=1), 1),
                    (t0 + timedelta(minutes=90), 0), (t0 + timedelta(hours=2), 2)]  # fmt: skip
        for when, n in expected:
            clock.now = when
            assert await service.reports.tick() == n, when
        await until(lambda: len(reports(sink)) == 6, "the dispatch reports on the webhook")
        dispatch = [(r["report"], r["period"]) for r in reports(sink)[2:]]
        assert sorted(dispatch) == sorted(
            [
                ("dispatch-status", "hub-1/20251130T1800/0"),
                ("dispatch-progress", "1/1"),
                ("dispatch-progress", "1/2"),
                ("dispatch-status", "hub-1/20251130T1800/1"),
            ]
        )
        progress = next(r for r in reports(sink) if r["period"] == "1/2")
        assert "Class I incident #1 — DC gun critically hot" in progress["text"]
        assert "Open for 2 h 00 min" in progress["text"] and "Not yet acknowledged" in progress["text"]
        assert "Restore due 2025-12-01 14:00: 10 h 00 min left" in progress["text"]
        status = next(r for r in reports(sink) if r["period"] == "hub-1/20251130T1800/1")
        assert "- DC01 (charger_dc): offline; no reading in 24 h, 1 open alert(s), worst class I" in status["text"]
        assert "- AC01 (charger_ac): offline" in status["text"]
    finally:
        await service.stop()

    # Restart ten minutes later: the service's first tick finds everything recorded and sends nothing again.
    sent_before = len(reports(sink))
    clock.now = t0 + timedelta(hours=2, minutes=10)
    service = Service(make_config(tmp_path / "data", sink, smtp))
    service.reports.clock = clock
    try:
        await service.start()
        assert await service.reports.tick() == 0
        await asyncio.sleep(1.0)
        assert len(reports(sink)) == sent_before
        con = service.writer.reader()
        try:
            runs = con.execute("SELECT report, count(*) FROM report_runs GROUP BY ALL ORDER BY ALL").fetchall()
        finally:
            con.close()
        assert runs == [("dispatch-progress", 2), ("dispatch-status", 2), ("monthly", 2)]
        # Once the incident is closed, no more dispatch reports.
        await service.writer.run(lambda con: con.execute("UPDATE alerts SET state = 'closed', closed_at = ?", [t0]))
        clock.now = t0 + timedelta(hours=5)
        assert await service.reports.tick() == 0
    finally:
        await service.stop()
        smtp.stop()
        sink.stop()

    result = CliRunner().invoke(app, ["report", "runs", "--data-dir", str(tmp_path / "data")], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    monthly_row = next(line for line in result.output.splitlines() if "2025-11 " in line and "monthly" in line)
    assert re.search(r"│\s+2\s+│\s+2\s+│\s+0\s+│\s+0\s+│", monthly_row), monthly_row  # 2 recipients, both sent


def test_report_recipients_must_be_configured(tmp_path: Path) -> None:
    cfg = Config(data_dir=tmp_path / "data")
    cfg.reports = ReportsConfig.model_validate({"monthly": {"enabled": True}, "webhooks": ["nope"], "people": ["x"]})
    with pytest.raises(ConfigError) as err:
        Service(cfg)
    text = str(err.value)
    assert "reports.webhooks[0]: no webhook named 'nope' in alerts.webhooks" in text
    assert "reports.people[0]: no person 'x' in alerts.oncall.people" in text


def test_config_check_names_the_missing_report_recipient(tmp_path: Path) -> None:
    from gridsentry.config import load_config

    path = tmp_path / "gridsentry.yaml"
    path.write_text(
        "alerts:\n  webhooks:\n    - {name: ops, url: 'http://127.0.0.1:9/hook'}\n"
        "reports:\n  monthly: {enabled: true}\n  webhooks: [ops, duty-desk]\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert "reports.webhooks[1]: no webhook named 'duty-desk' in alerts.webhooks (have: ops)" in text, text
