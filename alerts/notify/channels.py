"""Delivery channels. Each `send` returns a DeliveryResult: delivered, or why not and whether a retry can help.

- apprise: one person's contact URL (e-mail, DingTalk, WeCom, Feishu, Telegram, ntfy... anything apprise knows);
- webhook: the JSON payload, POSTed with an `Idempotency-Key` and an HMAC-SHA256 signature over
  `<timestamp>.<body>` in `X-GridSentry-Signature: sha256=<hex>` (`X-GridSentry-Timestamp` carries the time),
  so the receiver can check origin and freshness and drop repeats.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import apprise
import httpx
import orjson

from alerts.notify.message import phone_text
from alerts.settings import WebhookConfig

log = logging.getLogger("gridsentry.notify")

SIGNATURE_HEADER = "X-GridSentry-Signature"
TIMESTAMP_HEADER = "X-GridSentry-Timestamp"


@dataclass(frozen=True)
class DeliveryResult:
    ok: bool
    retryable: bool = True
    error: str | None = None


class Channel(Protocol):
    name: str

    async def send(self, payload: dict[str, Any], key: str, contact: str | None) -> DeliveryResult: ...


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def verify(secret: bytes, timestamp: str, body: bytes, signature: str) -> bool:
    """For receivers (and the tests): constant-time check of a webhook signature."""
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


class WebhookChannel:
    def __init__(self, cfg: WebhookConfig) -> None:
        self.name = f"webhook:{cfg.name}"
        self.url = cfg.url.get_secret_value()
        self.secret = cfg.secret.get_secret_value().encode() if cfg.secret is not None else None
        self.client = httpx.AsyncClient(timeout=cfg.timeout)

    async def send(self, payload: dict[str, Any], key: str, contact: str | None) -> DeliveryResult:
        body = orjson.dumps({**payload, "idempotency_key": key})
        ts = str(int(time.time()))
        headers = {"content-type": "application/json", "idempotency-key": key, TIMESTAMP_HEADER: ts}
        if self.secret is not None:
            headers[SIGNATURE_HEADER] = sign(self.secret, ts, body)
        try:
            r = await self.client.post(self.url, content=body, headers=headers)
        except httpx.TimeoutException:
            return DeliveryResult(False, True, "the webhook receiver did not answer in time")
        except httpx.HTTPError as exc:
            return DeliveryResult(False, True, f"the webhook receiver is unreachable ({type(exc).__name__})")
        if 200 <= r.status_code < 300:
            return DeliveryResult(True)
        # 4xx other than timeout/rate limit means the request itself is wrong: retrying cannot help.
        retryable = r.status_code >= 500 or r.status_code in (408, 425, 429)
        return DeliveryResult(False, retryable, f"the webhook receiver answered HTTP {r.status_code}")

    async def close(self) -> None:
        await self.client.aclose()


class AppriseChannel:
    """Sends to one person's contact URL; the URL comes from the outbox row's recipient and contact index."""

    name = "apprise"

    def __init__(self, zone: ZoneInfo) -> None:
        self.zone = zone

    async def send(self, payload: dict[str, Any], key: str, contact: str | None) -> DeliveryResult:
        if not contact:
            return DeliveryResult(False, False, "the person has no contact URL at this position")
        notifier = apprise.Apprise()
        if not notifier.add(contact):
            scheme = contact.split("://", 1)[0]
            return DeliveryResult(False, False, f"apprise does not understand the {scheme}:// contact URL")
        title, body = phone_text(payload, self.zone)
        notify_type = (
            apprise.NotifyType.SUCCESS
            if payload.get("kind") in ("resolved", "closed", "acknowledged")
            else apprise.NotifyType.FAILURE
        )
        with apprise.LogCapture(level=logging.WARNING, fmt="%(message)s") as captured:  # type: ignore[no-untyped-call]
            ok = await asyncio.to_thread(
                notifier.notify, body=body, title=title, notify_type=notify_type, attach=_attachment(payload)
            )
            output = captured.getvalue().strip() if hasattr(captured, "getvalue") else ""
        if ok:
            return DeliveryResult(True)
        last = output.splitlines()[-1] if output else "the service refused or did not answer"
        return DeliveryResult(False, True, f"{contact.split('://', 1)[0]}:// delivery failed: {last[:300]}")


def _attachment(payload: dict[str, Any]) -> apprise.AppriseAttachment | None:
    """A scheduled report's file (reports/schedule.py), attached in memory: nothing is written to disk."""
    spec = payload.get("attachment")
    if not isinstance(spec, dict):
        return None
    from apprise.attachment.memory import AttachMemory

    mimetype = str(spec.get("content_type", "text/plain")).split(";", 1)[0]
    attach = apprise.AppriseAttachment()
    file = AttachMemory(content=str(spec["content"]), name=str(spec["filename"]), mimetype=mimetype)  # type: ignore[no-untyped-call]
    attach.add(file)
    return attach
