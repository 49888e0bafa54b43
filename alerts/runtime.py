"""The alert stage as the service runs it: lifecycle, SLA watch, outbox worker, Alertmanager pushers, heartbeat.

`Service` creates one `AlertStage`, hands findings to `stage.lifecycle.apply` and starts `stage.tasks(stop)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from alerts.lifecycle import AlertLifecycle
from alerts.notify.alertmanager import AlertmanagerPusher
from alerts.notify.channels import AppriseChannel, Channel, WebhookChannel
from alerts.notify.outbox import OutboxWorker
from alerts.settings import AlertsConfig
from storage.writer import StorageWriter

log = logging.getLogger("gridsentry.alerts")


def _utcnow() -> datetime:
    return datetime.now(UTC)


class AlertStage:
    def __init__(self, writer: StorageWriter, cfg: AlertsConfig, *, clock: Callable[[], datetime] = _utcnow) -> None:
        self.cfg = cfg
        self.writer = writer
        self.lifecycle = AlertLifecycle(writer, cfg, clock=clock)
        channels: dict[str, Channel] = {"apprise": AppriseChannel(ZoneInfo(cfg.sla.standby.timezone))}
        for w in cfg.webhooks:
            ch = WebhookChannel(w)
            channels[ch.name] = ch
        self.worker = OutboxWorker(writer, channels, self.lifecycle.oncall.people, cfg.delivery, clock=clock)
        self.pushers = [AlertmanagerPusher(writer, am, cfg.public_url, clock=clock) for am in cfg.alertmanagers]
        self.lifecycle.on_outbox = self.wake
        self.tick_errors = 0

    def wake(self) -> None:
        self.worker.wake()
        for p in self.pushers:
            p.wake()

    def tasks(self, stop: asyncio.Event) -> list[asyncio.Task[Any]]:
        out = [
            asyncio.create_task(self.worker.run(stop), name="notify-outbox"),
            asyncio.create_task(self._watch(stop), name="sla-watch"),
        ]
        out += [asyncio.create_task(p.run(stop), name=p.name) for p in self.pushers]
        if self.cfg.heartbeat_every:
            out.append(asyncio.create_task(self._heartbeat(stop, self.cfg.heartbeat_every), name="heartbeat"))
        return out

    async def _watch(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.lifecycle.tick()
            except Exception:
                self.tick_errors += 1
                log.exception("the SLA watch failed; trying again at the next tick")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.cfg.tick)

    async def _heartbeat(self, stop: asyncio.Event, every: float) -> None:
        while not stop.is_set():
            try:
                await self.lifecycle.heartbeat()
            except Exception:
                log.exception("could not queue the dead-man heartbeat")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)
