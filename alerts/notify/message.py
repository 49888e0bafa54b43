"""What a notification says: a JSON payload (webhook, stored in the outbox) and the text an engineer reads on a phone.

The phone text leads with what matters at 3 a.m.: class, device and site, the value with its unit, what is
forecast, the deadline that is running, and the link that acknowledges.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

KIND_TITLES = {
    "fired": "FIRING",
    "reopened": "FIRING AGAIN",
    "flapping": "FLAPPING (paging paused)",
    "escalated": "ESCALATED",
    "prewarn:ack": "PRE-WARNING: acknowledge deadline near",
    "prewarn:onsite": "PRE-WARNING: on-site deadline near",
    "prewarn:restore": "PRE-WARNING: restore deadline near",
    "breach:ack": "SLA BREACH: not acknowledged in time",
    "breach:onsite": "SLA BREACH: nobody on site in time",
    "breach:restore": "SLA BREACH: not restored in time",
    "acknowledged": "ACKNOWLEDGED",
    "assigned": "ASSIGNED",
    "commented": "COMMENT",
    "onsite": "ENGINEER ON SITE",
    "resolved": "RESOLVED",
    "closed": "CLOSED",
    "heartbeat": "HEARTBEAT",
}


def _fmt_value(value: Any, unit: str | None) -> str:
    if value is None:
        return "-"
    v = f"{value:.1f}" if isinstance(value, float) else str(value)
    return f"{v} {unit}".strip() if unit else v


def _local(ts: datetime | None, zone: ZoneInfo) -> str:
    return ts.astimezone(zone).strftime("%m-%d %H:%M") if ts is not None else "-"


def _iso(ts: datetime | None) -> str | None:
    return ts.isoformat() if ts is not None else None


def build_payload(
    alert: dict[str, Any], kind: str, *, level: int, level_name: str | None, ack_url: str | None, detail: str | None
) -> dict[str, Any]:
    """The stored, signed and delivered body of one notification (everything as JSON types)."""
    return {
        "kind": kind,
        "alert_id": alert["alert_id"],
        "fingerprint": alert["fingerprint"],
        "state": alert["state"],
        "event_class": alert["event_class"],
        "device_id": alert["device_id"],
        "site": alert["site"],
        "rule_id": alert["rule_id"],
        "title": alert["title"],
        "message": alert["message"],
        "metric": alert["metric"],
        "value": alert["value"],
        "unit": alert["unit"],
        "threshold": alert["threshold"],
        "forecast": alert.get("forecast"),
        "runbook": alert.get("runbook"),
        "policy": alert.get("policy"),
        "fired_at": _iso(alert["created_at"]),
        "ack_due": _iso(alert["ack_due"]),
        "onsite_due": _iso(alert["onsite_due"]),
        "restore_due": _iso(alert["restore_due"]),
        "acknowledged_by": alert.get("acknowledged_by"),
        "assignee": alert.get("assignee"),
        "escalation_level": level,
        "escalation_name": level_name,
        "ack_url": ack_url,
        "detail": detail,
    }


def phone_text(payload: dict[str, Any], zone: ZoneInfo) -> tuple[str, str]:
    """(title, body) for e-mail, IM and push channels."""
    if payload["kind"] == "heartbeat":
        return "GridSentry heartbeat", f"GridSentry notification path OK at {payload['at']}"
    if payload["kind"] == "report":  # scheduled reports (reports/schedule.py) carry their own text
        return str(payload["title"]), str(payload["text"])
    head = KIND_TITLES.get(payload["kind"], payload["kind"].upper())
    site = payload["site"] or "-"
    title = f"[Class {payload['event_class']}] {head}: {payload['device_id']} @ {site} - {payload['title']}"

    def due(key: str) -> datetime | None:
        v = payload.get(key)
        return datetime.fromisoformat(v) if v else None

    lines = [
        payload["message"],
        f"Device {payload['device_id']}, site {site}",
        f"Value {_fmt_value(payload['value'], payload['unit'])} (limit {_fmt_value(payload['threshold'], payload['unit'])})",
    ]
    if payload.get("forecast"):
        lines.append(f"Forecast: {payload['forecast']}")
    lines.append(
        f"Deadlines ({zone.key}): ack {_local(due('ack_due'), zone)}, on site {_local(due('onsite_due'), zone)}, "
        f"restore {_local(due('restore_due'), zone)}"
    )
    if payload.get("escalation_name"):
        lines.append(f"Paged as: {payload['escalation_name']} (level {payload['escalation_level'] + 1})")
    if payload.get("assignee"):
        lines.append(f"Assigned to {payload['assignee']}")
    if payload.get("detail"):
        lines.append(str(payload["detail"]))
    if payload.get("ack_url"):
        lines.append(f"Acknowledge: {payload['ack_url']}")
    if payload.get("runbook"):
        lines.append(f"Runbook: {payload['runbook']}")
    lines.append(f"Alert #{payload['alert_id']}")
    return title, "\n".join(lines)
