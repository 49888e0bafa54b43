"""Push open alerts to a Prometheus Alertmanager (API v2), re-sent while they fire.

Alertmanager keeps alerts in memory and forgets one whose `endsAt` passes without a re-send, as Prometheus
itself re-sends. So the pusher works from the alert table, not from transitions: every `resend_every` it
posts all open alerts (with `endsAt` a few intervals ahead) and the ones resolved or closed since the last
push (with their real end). An Alertmanager restarted mid-incident has every firing alert back within one
interval; nothing is queued per transition, so nothing can pile up while it is down. A `GridSentryHeartbeat`
alert always fires: route it to a dead-man receiver to learn when GridSentry stops talking.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from alerts.settings import AlertmanagerConfig
from storage.writer import StorageWriter

log = logging.getLogger("gridsentry.notify")

Clock = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(UTC)


class AlertmanagerPusher:
    def __init__(
        self, writer: StorageWriter, cfg: AlertmanagerConfig, public_url: str | None = None, *, clock: Clock = _utcnow
    ) -> None:
        self.writer = writer
        self.cfg = cfg
        self.name = f"alertmanager:{cfg.name}"
        self.url = cfg.url.rstrip("/") + "/api/v2/alerts"
        self.public_url = public_url.rstrip("/") if public_url else None
        self.clock = clock
        self.client = httpx.AsyncClient(timeout=cfg.timeout)
        self._wake = asyncio.Event()
        self._since: datetime | None = None
        self.pushes = 0
        self.failures: Counter[str] = Counter()
        self.last_error: str | None = None

    def wake(self) -> None:
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self._wake.clear()
            await self.push()
            waiter = asyncio.ensure_future(self._wake.wait())
            stopper = asyncio.ensure_future(stop.wait())
            await asyncio.wait({waiter, stopper}, timeout=self.cfg.resend_every, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            stopper.cancel()
        await self.client.aclose()

    async def push(self) -> bool:
        now = self.clock()
        since = self._since or now - timedelta(hours=1)
        alerts = await asyncio.to_thread(self._read, since)
        body = [self._heartbeat(now), *(self._to_am(a, now) for a in alerts)]
        try:
            r = await self.client.post(self.url, json=body)
        except httpx.HTTPError as exc:
            self.failures["unreachable"] += 1
            self.last_error = f"Alertmanager at {self.cfg.url} is unreachable ({type(exc).__name__})"
            log.warning("%s; retrying in %.0f s", self.last_error, self.cfg.resend_every)
            return False
        if r.status_code != 200:
            self.failures[f"http_{r.status_code}"] += 1
            self.last_error = f"Alertmanager answered HTTP {r.status_code}: {r.text[:200]}"
            log.warning("%s", self.last_error)
            return False
        self.pushes += 1
        self.last_error = None
        self._since = now
        return True

    def _read(self, since: datetime) -> list[dict[str, Any]]:
        con = self.writer.reader()
        try:
            cur = con.execute(
                "SELECT alert_id, fingerprint, rule_id, device_id, site, event_class, state, title, message, value, "
                "unit, threshold, created_at, ack_due, onsite_due, restore_due, acknowledged_by, assignee, runbook, "
                "coalesce(resolved_at, closed_at) AS ended_at FROM alerts WHERE suppressed IS NULL AND "
                "(state IN ('firing', 'acknowledged') OR (state IN ('resolved', 'closed') "
                "AND coalesce(resolved_at, closed_at) >= ?))",
                [since],
            )
            cols = [d[0] for d in cur.description or []]
            return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
        finally:
            con.close()

    def _to_am(self, a: dict[str, Any], now: datetime) -> dict[str, Any]:
        ends = (
            a["ended_at"]
            if a["state"] in ("resolved", "closed")
            else now + 4 * timedelta(seconds=self.cfg.resend_every)
        )
        value = f"{a['value']:.1f} {a['unit'] or ''}".strip() if a["value"] is not None else ""
        labels = {
            "alertname": a["rule_id"],
            "device_id": a["device_id"],
            "site": a["site"] or "",
            "event_class": a["event_class"],
            "severity": {"I": "critical", "II": "major", "III": "minor"}.get(a["event_class"], "warning"),
            "gridsentry_alert_id": str(a["alert_id"]),
        }
        annotations = {
            "summary": f"[Class {a['event_class']}] {a['device_id']} @ {a['site'] or '-'}: {a['title']}",
            "description": a["message"],
            "value": value,
            "state": a["state"],
            "ack_due": _iso(a["ack_due"]),
            "restore_due": _iso(a["restore_due"]),
            "acknowledged_by": a["acknowledged_by"] or "",
            "runbook_url": a["runbook"] or "",
        }
        out: dict[str, Any] = {
            "labels": labels,
            "annotations": annotations,
            "startsAt": _iso(a["created_at"]),
            "endsAt": _iso(ends),
        }
        if self.public_url:
            out["generatorURL"] = f"{self.public_url}/alerts/{a['alert_id']}"
        return out

    def _heartbeat(self, now: datetime) -> dict[str, Any]:
        return {
            "labels": {"alertname": "GridSentryHeartbeat", "severity": "none"},
            "annotations": {"summary": "GridSentry is alive and can reach Alertmanager (route to a dead-man receiver)"},
            "startsAt": _iso(now),
            "endsAt": _iso(now + 4 * timedelta(seconds=self.cfg.resend_every)),
        }


def _iso(ts: datetime | None) -> str:
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z") if ts is not None else ""
