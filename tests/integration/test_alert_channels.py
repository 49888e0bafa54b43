"""Alert channels against real receivers on loopback: an aiosmtpd SMTP server gets the apprise e-mail, a webhook
receiver checks the HMAC signature, a Debian Alertmanager gets the pushed alerts (and gets them back after a
restart: A2), and an alert nobody acknowledges climbs the escalation chain on schedule."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from email import message_from_bytes
from email.header import decode_header, make_header
from pathlib import Path
from typing import Any

import pytest

from alerts.runtime import AlertStage
from alerts.settings import AlertsConfig
from rules.model import Finding
from storage.writer import StorageWriter
from tests.conftest import SENTINELS, free_port
from tests.integration.alert_sinks import Alertmanager, SmtpServer, WebhookSink

pytestmark = pytest.mark.integration

SECRET = SENTINELS["webhook token"].encode()  # a sentinel: the session-end scan fails if it leaks
LEVEL_NAMES = ("on-call engineer", "second line", "manager")


def finding(action: str = "fire", device: str = "DC02", cls: str = "I", value: float = 93.4) -> Finding:
    return Finding(
        action=action,  # type: ignore[arg-type]
        rule_id="dc_gun_overtemp_critical",
        title="DC gun critically hot",
        device_id=device,
        site="wuhan-01",
        metric="gun1_temp_c",
        value=value,
        threshold=90.0,
        unit="°C",
        event_class=cls,  # type: ignore[arg-type]
        message=f"{device} gun1_temp_c at {value:.1f} °C, above 90 °C for 30 s: take the gun out of service",
        runbook="Rule E2",
        ts=datetime.now(UTC),
    )


def people_config(contacts: dict[str, list[str]], **extra: Any) -> AlertsConfig:
    ids = list(contacts)
    return AlertsConfig.model_validate(
        {
            "oncall": {
                "people": [{"id": p, "name": p.title(), "contacts": c} for p, c in contacts.items()],
                "rotas": [{"name": f"r{i}", "people": [p]} for i, p in enumerate(ids)],
            },
            "escalation": [
                {"name": name, "rota": f"r{i}", "after": after}
                for i, (name, after, _) in enumerate(
                    zip(LEVEL_NAMES, extra.pop("after", (0, 60, 120)), ids, strict=False)
                )
            ],
            "tick": 0.2,
            "delivery": {"backoff_initial": 0.2, "backoff_max": 1, "poll_interval": 0.2, "fallback_after": 2},
            "public_url": "https://noc.example.com",
            **extra,
        }
    )


@asynccontextmanager
async def running_stage(tmp_path: Path, cfg: AlertsConfig) -> AsyncIterator[AlertStage]:
    writer = StorageWriter(tmp_path / "db.duckdb")
    writer.start()
    stage = AlertStage(writer, cfg)
    stop = asyncio.Event()
    tasks = stage.tasks(stop)
    try:
        yield stage
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        writer.close()


async def until(predicate: Any, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


async def test_email_via_apprise_and_signed_webhook(tmp_path: Path) -> None:
    smtp = SmtpServer()
    smtp.start()
    sink = WebhookSink(secret=SECRET)
    sink.start()
    dead_port = free_port()  # nothing listens: li.wei's first contact keeps failing, e-mail is the fallback
    cfg = people_config(
        {"li.wei": [f"json://bot:SENTINEL-SECRET@127.0.0.1:{dead_port}/push", smtp.contact("li.wei@example.com")]},
        webhooks=[{"name": "noc", "url": f"{sink.url}/hook", "secret": SECRET.decode()}],
        heartbeat_every=0.5,
    )
    try:
        async with running_stage(tmp_path, cfg) as stage:
            await stage.lifecycle.apply([finding()])
            await until(lambda: len(smtp.mailbox.messages) >= 1, what="the e-mail")
            await until(lambda: any(r.body["kind"] == "fired" for r in sink.accepted("/hook")), what="the webhook")
            await until(
                lambda: sum(r.body["kind"] == "heartbeat" for r in sink.accepted("/hook")) >= 2,
                what="dead-man heartbeats through the outbox",
            )
            await until(lambda: stage.worker.fallbacks == 1, what="the fallback to e-mail")
            con = stage.writer.reader()
            rows = con.execute(
                "SELECT contact, status, attempts, last_error, idempotency_key FROM notifications "
                "WHERE recipient = 'li.wei' ORDER BY contact"
            ).fetchall()
            con.close()
            # The push contact failed twice, then the e-mail contact got the same message (same key) and took it.
            assert [(r[0], r[1]) for r in rows] == [(0, "pending"), (1, "sent")]
            assert rows[0][2] >= 2 and "json:// delivery failed" in rows[0][3] and rows[0][4] == rows[1][4]
            assert "SENTINEL-SECRET" not in rows[0][3]  # the contact's credentials never reach the outbox
    finally:
        smtp.stop()
        sink.stop()

    mail = message_from_bytes(smtp.mailbox.messages[0].original_content)
    subject = str(make_header(decode_header(mail["subject"])))
    part = next(p for p in mail.walk() if p.get_content_type().startswith("text/"))
    text = part.get_payload(decode=True).decode(part.get_content_charset() or "utf-8")
    assert smtp.mailbox.messages[0].rcpt_tos == ["li.wei@example.com"]
    assert "[Class I] FIRING: DC02 @ wuhan-01 - DC gun critically hot" in subject
    for expected in ("93.4 °C", "limit 90.0 °C", "Deadlines (Asia/Shanghai): ack", "https://noc.example.com/alerts/1"):
        assert expected in text, (expected, text)

    hook = next(r for r in sink.accepted("/hook") if r.body["kind"] == "fired")
    assert hook.signature_ok is True
    assert hook.headers["idempotency-key"] == hook.body["idempotency_key"]
    assert hook.body["kind"] == "fired" and hook.body["device_id"] == "DC02" and hook.body["event_class"] == "I"
    assert hook.body["unit"] == "°C" and hook.body["ack_url"] == "https://noc.example.com/alerts/1"
    assert hook.body["idempotency_key"].startswith("gs-1-")


async def test_unacknowledged_alert_reaches_second_line_then_manager_on_schedule(tmp_path: Path) -> None:
    sink = WebhookSink()
    sink.start()
    cfg = people_config(
        {p: [f"json://127.0.0.1:{sink.port}/{p}"] for p in ("li.wei", "zhang.min", "boss")},
        after=(0, 1.0, 2.0),
    )
    try:
        async with running_stage(tmp_path, cfg) as stage:
            t0 = time.monotonic()
            await stage.lifecycle.apply([finding()])
            await until(lambda: sink.accepted("/li.wei"), what="the on-call engineer's page")
            await until(lambda: sink.accepted("/zhang.min"), what="the second line's page")
            t_second = time.monotonic() - t0
            await until(lambda: sink.accepted("/boss"), what="the manager's page")
            t_manager = time.monotonic() - t0
    finally:
        sink.stop()
    assert 0.9 <= t_second < 8, t_second  # due after 1 s; tolerant of a busy machine
    assert 1.9 <= t_manager < 10 and t_manager > t_second, t_manager
    assert "ESCALATED" in sink.accepted("/boss")[0].body["title"]
    assert "manager (level 3)" in sink.accepted("/boss")[0].body["message"]


async def test_alertmanager_gets_pushed_alerts_and_has_them_back_after_a_restart(tmp_path: Path) -> None:
    sink = WebhookSink()
    sink.start()
    am = Alertmanager(tmp_path / "am", receiver_url=sink.url)
    am.start()
    cfg = AlertsConfig.model_validate({"alertmanagers": [{"url": am.url, "resend_every": 1}], "tick": 0.2})

    def ours() -> list[dict[str, Any]]:
        return [a for a in am.alerts() if a["labels"]["alertname"] == "dc_gun_overtemp_critical"]

    try:
        async with running_stage(tmp_path, cfg) as stage:
            await stage.lifecycle.apply([finding(device="DC02"), finding(device="DC03")])
            await until(lambda: len(ours()) == 2, what="both alerts in Alertmanager")
            a = next(x for x in ours() if x["labels"]["device_id"] == "DC02")
            assert a["labels"]["event_class"] == "I" and a["labels"]["severity"] == "critical"
            assert a["annotations"]["value"] == "93.4 °C" and a["status"]["state"] == "active"
            assert any(x["labels"]["alertname"] == "GridSentryHeartbeat" for x in am.alerts())
            await until(lambda: len(sink.accepted("/am")) >= 2, what="Alertmanager's notifications")
            await asyncio.sleep(2.5)  # a group interval: nothing more is due
            before = len(sink.accepted("/am"))

            am.stop()  # mid-incident
            await asyncio.sleep(1.5)
            assert stage.pushers[0].failures, "the pusher noticed Alertmanager was gone"
            am.start()
            t0 = time.monotonic()
            await until(lambda: len(ours()) == 2, timeout=10, what="the alerts back after the restart")
            back_after = time.monotonic() - t0
            assert back_after <= 1 + 2.0, back_after  # one re-push interval (1 s), plus scheduling slack

            await stage.lifecycle.apply([finding("clear", device="DC03", value=80.0)])
            await until(
                lambda: (
                    any(x["labels"]["device_id"] == "DC03" for x in ours()) is False
                    or all(x["status"]["state"] != "active" for x in ours() if x["labels"]["device_id"] == "DC03")
                ),
                timeout=10,
                what="DC03 resolved in Alertmanager",
            )
            await until(
                lambda: any(r.body.get("status") == "resolved" for r in sink.accepted("/am")),
                timeout=10,
                what="the resolved notification",
            )
    finally:
        am.stop()
        sink.stop()
    firing = [r for r in sink.accepted("/am") if r.body["status"] == "firing"]
    # Exactly one firing notification per alert group: the restart re-sent alerts, not pages (notification log kept).
    assert sorted(r.body["groupLabels"]["device_id"] for r in firing) == ["DC02", "DC03"], [
        (r.body["status"], r.body["groupLabels"]) for r in sink.accepted("/am")
    ]
    assert before == 2
