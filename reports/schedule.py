"""Scheduled reports, pushed through the alert channels (webhooks, people's apprise contacts) via the outbox.

- the monthly operations report, once the month has ended in the report time zone (with the link to the
  API route and the Markdown as an attachment);
- the emergency-dispatch reports of the bid (shared/seeds/003, 信息实时汇报通道): while a class I incident
  is open, its progress every hour (应急调度工作进展, 每小时) and the status of the devices at its site every
  two hours (设备运行状态, 每两小时).

Each send is recorded in `report_runs` (report, period) in the same transaction that queues its
notifications, so a restart, a crash or a second tick never sends a report twice, and a report whose time
passed while GridSentry was down goes out at the next start (only the latest period: no flood of stale
hourly reports). Delivery itself (retries, backoff, idempotency key `report:<report>:<period>`) is the
outbox worker's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import duckdb
import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator

from alerts.settings import Seconds
from reports.monthly import build_monthly, render_markdown

log = logging.getLogger("gridsentry.reports")

Clock = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(UTC)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MonthlySchedule(_Model):
    enabled: bool = Field(False, description="Send the monthly operations report when a month ends.")
    delay: Seconds = Field(
        3600.0, ge=0, description="Wait this long after midnight of the 1st, so late readings are in, e.g. 1h."
    )
    per_site: list[str] = Field(
        default_factory=list,
        description="Site ids: one report per site listed, at the end of the month in the site's time zone; "
        "empty: one report for the whole fleet.",
    )


class DispatchSchedule(_Model):
    enabled: bool = Field(False, description="Send emergency-dispatch reports while a class I incident is open.")
    progress_every: Seconds = Field(
        3600.0, gt=0, description="Incident progress (应急调度工作进展) every this long after it opened; bid: 1h."
    )
    status_every: Seconds = Field(
        7200.0, gt=0, description="Device status of the incident's site (设备运行状态) every this long; bid: 2h."
    )


class ReportsConfig(_Model):
    """Scheduled reports, sent through the alert channels."""

    monthly: MonthlySchedule = Field(default_factory=MonthlySchedule, description="Monthly operations report.")
    dispatch: DispatchSchedule = Field(
        default_factory=DispatchSchedule, description="Emergency-dispatch progress and device status reports."
    )
    webhooks: list[str] = Field(
        default_factory=list, description="Names of `alerts.webhooks` that receive the reports (JSON with the text)."
    )
    people: list[str] = Field(
        default_factory=list,
        description="Ids of `alerts.oncall.people` who receive them at their first contact (e-mail, IM) via apprise.",
    )
    timezone: str | None = Field(
        None, description="Time zone of the month's end; default: the standby time zone (alerts.sla.standby)."
    )
    check_every: Seconds = Field(60.0, gt=0, description="How often the schedule is looked at, e.g. 1m.")

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                ZoneInfo(v)
            except (ZoneInfoNotFoundError, ValueError) as exc:
                raise ValueError(f"unknown time zone {v!r}; use an IANA name such as Asia/Shanghai") from exc
        return v


@dataclass(frozen=True)
class QueuedReport:
    report: str  # monthly, dispatch-progress, dispatch-status
    period: str  # 2026-11[/site], <alert id>/<n>, <site>/<slot start>
    title: str
    text: str
    link: str | None = None
    attachment: dict[str, str] | None = None


class ReportScheduler:
    """Looks at the schedule every `check_every` and queues what is due. `clock` is injectable for tests."""

    def __init__(
        self,
        writer: Any,  # storage.writer.StorageWriter: reader() for reads, run(job) for the recording transaction
        cfg: ReportsConfig,
        *,
        zone: ZoneInfo,
        targets: list[tuple[str, str | None]],  # (channel, recipient) as in the notifications table
        public_url: str | None = None,
        site_zones: dict[str, str] | None = None,
        wake: Callable[[], None] | None = None,
        clock: Clock = _utcnow,
    ) -> None:
        self.writer = writer
        self.cfg = cfg
        self.zone = ZoneInfo(cfg.timezone) if cfg.timezone else zone
        self.targets = targets
        self.public_url = public_url.rstrip("/") if public_url else None
        self.site_zones = {site: ZoneInfo(tz) for site, tz in (site_zones or {}).items()}
        self.wake = wake or (lambda: None)
        self.clock = clock
        self.queued = 0
        self.failures = 0

    @property
    def active(self) -> bool:
        return bool(self.targets) and (self.cfg.monthly.enabled or self.cfg.dispatch.enabled)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.tick()
            except Exception:
                self.failures += 1
                log.exception("scheduled reports: the check failed; trying again at the next one")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.cfg.check_every)

    async def tick(self) -> int:
        """Queue every report due now and not yet sent. Returns how many were queued."""
        if not self.targets:
            return 0
        now = self.clock().astimezone(UTC)
        due = await asyncio.to_thread(self._due, now)
        queued = 0
        for report in due:
            if await self.writer.run(lambda con, r=report: self._record(con, r, now)):
                queued += 1
                log.info(
                    "scheduled report queued: %s %s (%d recipients)", report.report, report.period, len(self.targets)
                )
        if queued:
            self.queued += queued
            self.wake()
        return queued

    # --- what is due ------------------------------------------------------------------------------------------
    def _due(self, now: datetime) -> list[QueuedReport]:
        con = self.writer.reader()
        try:
            sent = {(str(r[0]), str(r[1])) for r in con.execute("SELECT report, period FROM report_runs").fetchall()}
            out: list[QueuedReport] = []
            if self.cfg.monthly.enabled:
                out += [r for r in self._monthly(con, now, sent) if (r.report, r.period) not in sent]
            if self.cfg.dispatch.enabled:
                out += [r for r in self._dispatch(con, now, sent) if (r.report, r.period) not in sent]
            return out
        finally:
            con.close()

    def _monthly(self, con: duckdb.DuckDBPyConnection, now: datetime, sent: set[tuple[str, str]]) -> list[QueuedReport]:
        out = []
        sites: list[str | None] = [*self.cfg.monthly.per_site] or [None]
        for site in sites:
            # A site's month ends at its own midnight (sites[].timezone); the fleet report's in the report zone.
            zone = self.site_zones.get(site, self.zone) if site else self.zone
            local = now.astimezone(zone)
            this_month_start = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
            if now < this_month_start.astimezone(UTC) + timedelta(seconds=self.cfg.monthly.delay):
                continue  # the month just ended is still settling; the one before was due last month
            last = this_month_start - timedelta(days=1)
            month = f"{last.year:04d}-{last.month:02d}"
            period = f"{month}/{site}" if site else month
            if ("monthly", period) in sent:
                continue
            report = build_monthly(con, month, zone, site)
            text = render_markdown(report)
            where = f" site {site}" if site else ""
            query = f"month={month}" + (f"&site={site}" if site else "")
            link = f"{self.public_url}/api/reports/monthly?{query}&format=html" if self.public_url else None
            name = f"gridsentry-monthly-{month}{'-' + site if site else ''}.md"
            out.append(
                QueuedReport(
                    "monthly",
                    period,
                    f"GridSentry monthly operations report {month}{where} 月度运维报告",
                    text + (f"\nPrintable version: {link}\n" if link else ""),
                    link,
                    {"filename": name, "content_type": "text/markdown; charset=utf-8", "content": text},
                )
            )
        return out

    def _dispatch(
        self, con: duckdb.DuckDBPyConnection, now: datetime, sent: set[tuple[str, str]]
    ) -> list[QueuedReport]:
        incidents = con.execute(
            "SELECT alert_id, device_id, site, title, message, state, created_at, acknowledged_at, acknowledged_by, "
            "assignee, onsite_at, onsite_by, restore_due FROM alerts "
            "WHERE event_class = 'I' AND state IN ('firing', 'acknowledged') AND suppressed IS NULL "
            "AND created_at <= ? ORDER BY created_at",
            [now],
        ).fetchall()
        out: list[QueuedReport] = []
        sites: dict[str, datetime] = {}
        every = self.cfg.dispatch.progress_every
        for (
            alert_id,
            device,
            site,
            title,
            message,
            state,
            created,
            acked,
            acked_by,
            assignee,
            onsite,
            onsite_by,
            due,
        ) in incidents:
            n = int((now - created).total_seconds() // every)
            site_key = str(site or "")
            sites[site_key] = min(sites.get(site_key, created), created)
            if n < 1:
                continue
            period = f"{alert_id}/{n}"
            if ("dispatch-progress", period) in sent:
                continue
            history = con.execute(
                "SELECT ts, action, actor, detail FROM alert_events WHERE alert_id = ? ORDER BY ts DESC LIMIT 5",
                [alert_id],
            ).fetchall()
            lines = [
                f"Class I incident #{alert_id} — {title}",
                f"Device {device}, site {site or '-'}; {message}",
                f"Open for {_hm(now - created)} (since {self._local(created)}); state {state}",
                f"Acknowledged: {self._local(acked)} by {acked_by}" if acked else "Not yet acknowledged",
                f"Engineer on site: {self._local(onsite)} ({onsite_by})"
                if onsite
                else "No engineer recorded on site yet",
            ]
            if assignee:
                lines.append(f"Assigned to {assignee}")
            if due is not None:
                left = due - now
                lines.append(
                    f"Restore due {self._local(due)}: "
                    + (f"{_hm(left)} left" if left.total_seconds() >= 0 else f"OVERDUE by {_hm(-left)}")
                )
            if history:
                lines.append("Latest actions:")
                lines += [
                    f"- {self._local(ts)} {action} by {actor}" + (f": {d}" if d else "")
                    for ts, action, actor, d in history
                ]
            out.append(
                QueuedReport(
                    "dispatch-progress",
                    period,
                    f"[Class I] Dispatch progress {n} h — {device} @ {site or '-'} 应急调度工作进展",
                    "\n".join(lines) + "\n",
                    f"{self.public_url}/api/alerts/{alert_id}" if self.public_url else None,
                )
            )
        status_every = self.cfg.dispatch.status_every
        for site_key, first_open in sites.items():
            n = int((now - first_open).total_seconds() // status_every)
            period = f"{site_key or '-'}/{first_open.astimezone(UTC):%Y%m%dT%H%M}/{n}"
            if ("dispatch-status", period) in sent:
                continue
            out.append(self._status(con, site_key, now, period))
        return out

    def _status(self, con: duckdb.DuckDBPyConnection, site: str, now: datetime, period: str) -> QueuedReport:
        rows = con.execute(
            """
            SELECT d.device_id, d.kind, d.expected_interval_s, max(r.ts) AS last_seen,
                   (SELECT count(*) FROM alerts a WHERE a.device_id = d.device_id
                        AND a.state IN ('firing', 'acknowledged')) AS open_alerts,
                   (SELECT min(event_class) FROM alerts a WHERE a.device_id = d.device_id
                        AND a.state IN ('firing', 'acknowledged')) AS worst
            FROM devices d LEFT JOIN readings r ON r.device_id = d.device_id AND r.ts > ? - INTERVAL 1 DAY AND r.ts <= ?
            WHERE d.site = ? OR ? = '' GROUP BY d.device_id, d.kind, d.expected_interval_s ORDER BY d.device_id
            """,
            [now, now, site, site],
        ).fetchall()
        counts = {"online": 0, "alarm": 0, "late": 0, "offline": 0}
        lines = []
        for device, kind, interval, last_seen, open_alerts, worst in rows:
            if last_seen is None:
                state = "offline"
            else:
                silent = (now - last_seen).total_seconds()
                state = "online" if silent <= 3 * interval else "late" if silent <= 30 * interval else "offline"
            if open_alerts and state == "online":
                state = "alarm"
            counts[state] += 1
            seen = f"last reading {self._local(last_seen)}" if last_seen else "no reading in 24 h"
            alarm = f", {open_alerts} open alert(s), worst class {worst}" if open_alerts else ""
            lines.append(f"- {device} ({kind}): {state}; {seen}{alarm}")
        head = (
            f"Device status, site {site or 'all'}, at {self._local(now)}: {counts['online']} online, "
            f"{counts['alarm']} in alarm, {counts['late']} late, {counts['offline']} offline"
        )
        return QueuedReport(
            "dispatch-status",
            period,
            f"[Class I] Device status — site {site or 'all'} 设备运行状态",
            "\n".join([head, *lines]) + "\n",
        )

    # --- recording and queueing (one transaction) ------------------------------------------------------------
    def _record(self, con: duckdb.DuckDBPyConnection, report: QueuedReport, now: datetime) -> bool:
        done = con.execute(
            "SELECT count(*) FROM report_runs WHERE report = ? AND period = ?", [report.report, report.period]
        ).fetchone()
        if done and done[0]:
            return False
        key = f"report:{report.report}:{report.period}"
        payload = {
            "kind": "report",
            "report": report.report,
            "period": report.period,
            "title": report.title,
            "text": report.text,
            "link": report.link,
            "attachment": report.attachment,
            "generated_at": now.isoformat(),
        }
        body = orjson.dumps(payload).decode()
        for channel, recipient in self.targets:
            con.execute(
                "INSERT INTO notifications (notification_id, alert_id, channel, recipient, payload, created_at, "
                "next_try_at, kind, idempotency_key) VALUES (nextval('notification_id_seq'), NULL, ?, ?, ?, ?, ?, ?, ?)",
                [channel, recipient, body, now, now, f"report:{report.report}", key],
            )
        con.execute(
            "INSERT INTO report_runs (report, period, queued_at, title, recipients) VALUES (?, ?, ?, ?, ?)",
            [report.report, report.period, now, report.title, len(self.targets)],
        )
        return True

    def _local(self, ts: datetime | None) -> str:
        return "-" if ts is None else f"{ts.astimezone(self.zone):%Y-%m-%d %H:%M}"


def _hm(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    return f"{minutes // 60} h {minutes % 60:02d} min"


def report_targets(cfg: ReportsConfig, webhook_names: list[str], people: list[str]) -> list[tuple[str, str | None]]:
    """(channel, recipient) pairs for the outbox; a name that is not configured is a clear error."""
    problems = []
    for i, name in enumerate(cfg.webhooks):
        if name not in webhook_names:
            problems.append(
                f"reports.webhooks[{i}]: no webhook named {name!r} in alerts.webhooks (have: {', '.join(webhook_names) or 'none'})"
            )
    for i, pid in enumerate(cfg.people):
        if pid not in people:
            problems.append(f"reports.people[{i}]: no person {pid!r} in alerts.oncall.people")
    if problems:
        raise ValueError("; ".join(problems))
    return [(f"webhook:{name}", None) for name in cfg.webhooks] + [("apprise", pid) for pid in cfg.people]
