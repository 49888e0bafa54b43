"""Findings become alerts, and alerts keep the service contract's clocks.

One alert per fingerprint (rule, device, metric). States:
    pending -> firing -> acknowledged -> resolved -> closed
A fire while the alert is open updates it (fire count, latest value). A fire shortly after a resolve
(`flap_window`) re-opens the same alert; after `flap_threshold` re-opens it is flapping and pages no one
until it settles. Every transition is an `alert_events` row and its notifications are `notifications`
(outbox) rows, all written by one writer job: the state, its audit trail and what must be sent commit
together or not at all.

`tick()` runs the SLA watch: pending alerts fire after the hold, pre-warnings and deadline alarms go out,
unacknowledged alerts climb the escalation chain, maintenance windows and silences end.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, TypeVar
from zoneinfo import ZoneInfo

import duckdb
import orjson

from alerts.maintenance import (
    MaintenanceRequest,
    cancel_window,
    fetch_window,
    insert_window,
    live_windows,
    validate_cancel,
    validate_new,
)
from alerts.notify.message import build_payload
from alerts.oncall import OnCall, Person
from alerts.settings import AlertsConfig
from alerts.sla import (
    CLOCKS,
    Deadlines,
    MaintenancePlan,
    MaintenanceWindow,
    SlaCalculator,
    SlaPolicy,
    calculator_from_config,
)
from rules.model import Finding
from storage.writer import StorageWriter

log = logging.getLogger("gridsentry.alerts")

OPEN_STATES = ("pending", "firing", "acknowledged")
SYSTEM_ACTOR = "gridsentry"
Clock = Callable[[], datetime]
T = TypeVar("T")

ALERT_COLUMNS = (
    "alert_id, fingerprint, rule_id, device_id, site, event_class, state, title, message, metric, value, "
    "threshold, unit, runbook, fired_at, created_at, updated_at, fire_count, acknowledged_at, acknowledged_by, "
    "assignee, resolved_at, closed_at, ack_due, onsite_due, restore_due, policy, ack_warn_at, onsite_warn_at, "
    "restore_warn_at, escalate_at, escalation_level, sla_marks, onsite_at, onsite_by, flap_count, flapping, "
    "suppressed, forecast"
)


class AlertStateError(ValueError):
    """The requested transition is not allowed from the alert's current state."""


@dataclass(frozen=True)
class AlertChange:
    alert_id: int
    action: str  # fired, pending, refired, reopened, resolved, suppressed
    finding: Finding


def _utcnow() -> datetime:
    return datetime.now(UTC)


def fetch_alert(con: duckdb.DuckDBPyConnection, alert_id: int) -> dict[str, Any] | None:
    cur = con.execute(f"SELECT {ALERT_COLUMNS} FROM alerts WHERE alert_id = ?", [alert_id])
    row = cur.fetchone()
    if row is None:
        return None
    return dict(zip([d[0] for d in cur.description or []], row, strict=True))


class AlertLifecycle:
    def __init__(
        self,
        writer: StorageWriter,
        cfg: AlertsConfig | None = None,
        *,
        clock: Clock = _utcnow,
        policy: SlaPolicy | None = None,
    ) -> None:
        self._writer = writer
        self.cfg = cfg or AlertsConfig()
        self.clock = clock
        self.calculator: SlaCalculator = calculator_from_config(self.cfg)
        if policy is not None:
            self.calculator.policy = policy
        self.oncall = OnCall(self.cfg)
        self.maintenance = MaintenancePlan([MaintenanceWindow.from_config(w) for w in self.cfg.maintenance])
        self.webhooks = [f"webhook:{w.name}" for w in self.cfg.webhooks]
        self.zone = ZoneInfo(self.cfg.sla.standby.timezone)
        self.on_outbox: Callable[[], None] | None = None  # wakes the delivery worker after a commit
        self.raised = 0
        self.resolved = 0
        self.escalations = 0
        self.breaches = 0
        self.prewarnings = 0
        self.suppressed = 0
        self._warned_no_contacts: set[str] = set()

    @property
    def policy(self) -> SlaPolicy:
        return self.calculator.policy

    # --- findings --------------------------------------------------------------------------------
    async def apply(self, findings: Sequence[Finding]) -> list[AlertChange]:
        if not findings:
            return []
        now = self.clock()
        # Urgent: the alert and its pages go ahead of ingest batches waiting for the writer.
        changes, queued = await self._writer.run(lambda con: self._apply(con, findings, now), urgent=True)
        self._after(queued or len(changes))
        for c in changes:
            f = c.finding
            if c.action == "fired":
                self.raised += 1
                log.warning(
                    "ALERT #%d class %s FIRING %s: %s [rule %s]",
                    c.alert_id,
                    f.event_class,
                    f.device_id,
                    f.message,
                    f.rule_id,
                )
            elif c.action == "resolved":
                self.resolved += 1
                log.info("ALERT #%d RESOLVED %s: %s [rule %s]", c.alert_id, f.device_id, f.message, f.rule_id)
            elif c.action == "suppressed":
                self.suppressed += 1
        return changes

    def _after(self, queued: int) -> None:
        if queued and self.on_outbox is not None:
            self.on_outbox()

    def _apply(
        self, con: duckdb.DuckDBPyConnection, findings: Sequence[Finding], now: datetime
    ) -> tuple[list[AlertChange], int]:
        out: list[AlertChange] = []
        queued = 0
        for f in findings:  # findings are state changes: a handful per tick, not per reading
            row = con.execute(
                "SELECT alert_id, state, resolved_at, flap_count, flapping, acknowledged_at FROM alerts "
                "WHERE fingerprint = ? AND state <> 'closed' ORDER BY alert_id DESC LIMIT 1",
                [f.fingerprint],
            ).fetchone()
            if f.action == "fire":
                if row is not None and row[1] in OPEN_STATES:
                    alert_id = int(row[0])
                    con.execute(
                        "UPDATE alerts SET value = ?, message = ?, updated_at = ?, last_value_at = ?, "
                        "fire_count = fire_count + 1, forecast = coalesce(?, forecast) WHERE alert_id = ?",
                        [f.value, f.message, now, f.ts, _forecast(f), alert_id],
                    )
                    _event(con, alert_id, now, "refired", SYSTEM_ACTOR, f.message)
                    out.append(AlertChange(alert_id, "refired", f))
                    continue
                if row is not None and row[2] is not None and now - row[2] <= timedelta(seconds=self.cfg.flap_window):
                    queued += self._reopen(con, f, row, now)
                    out.append(AlertChange(int(row[0]), "reopened", f))
                    continue
                alert_id, action, n = self._raise(con, f, now)
                queued += n
                out.append(AlertChange(alert_id, action, f))
            elif row is not None and row[1] in OPEN_STATES:
                alert_id = int(row[0])
                con.execute(
                    "UPDATE alerts SET state = 'resolved', resolved_at = ?, updated_at = ?, value = ?, "
                    "last_value_at = ? WHERE alert_id = ?",
                    [now, now, f.value, f.ts, alert_id],
                )
                _event(con, alert_id, now, "resolved", SYSTEM_ACTOR, f.message)
                alert = fetch_alert(con, alert_id)
                assert alert is not None
                if alert["suppressed"] is None and not alert["flapping"] and row[1] != "pending":
                    queued += self._notify(con, alert, "resolved", now, self._paged_so_far(alert, now), f.message)
                out.append(AlertChange(alert_id, "resolved", f))
        return out, queued

    def _raise(self, con: duckdb.DuckDBPyConnection, f: Finding, now: datetime) -> tuple[int, str, int]:
        suppressed = self._suppression(con, f.device_id, f.site, f.rule_id, now)
        caused_by = getattr(f, "caused_by", None)
        if suppressed is None and caused_by:
            suppressed = f"caused by {caused_by}"
        state = "pending" if self.cfg.hold > 0 and suppressed is None else "firing"
        # A firing alert gets its whole schedule in the INSERT itself: the hot path is a handful of statements.
        d = (
            self.deadlines(f.event_class, now, f.device_id, f.site)
            if state == "firing" and suppressed is None
            else None
        )
        alert: dict[str, Any] = {
            "fingerprint": f.fingerprint,
            "rule_id": f.rule_id,
            "device_id": f.device_id,
            "site": f.site,
            "event_class": f.event_class,
            "state": state,
            "title": f.title,
            "message": f.message,
            "metric": f.metric,
            "value": f.value,
            "threshold": f.threshold,
            "unit": f.unit,
            "runbook": f.runbook,
            "fired_at": f.ts,
            "created_at": now,
            "updated_at": now,
            "last_value_at": f.ts,
            "policy": self.policy.name,
            "suppressed": suppressed,
            "forecast": _forecast(f),
            "ack_due": d.ack_due if d else None,
            "onsite_due": d.onsite_due if d else None,
            "restore_due": d.restore_due if d else None,
            "ack_warn_at": d.warn_at["ack"] if d else None,
            "onsite_warn_at": d.warn_at["onsite"] if d else None,
            "restore_warn_at": d.warn_at["restore"] if d else None,
            "escalate_at": list(d.escalate_at) if d else None,
            "escalation_level": self._level_due(d, now) if d else 0,
            "sla_marks": [] if d else None,
        }
        cols = ", ".join(alert)
        new = con.execute(
            f"INSERT INTO alerts ({cols}) VALUES ({', '.join('?' * len(alert))}) RETURNING alert_id",
            list(alert.values()),
        ).fetchone()
        assert new is not None
        alert_id = alert["alert_id"] = int(new[0])
        if suppressed is not None:
            _event(con, alert_id, now, "suppressed", SYSTEM_ACTOR, f"{f.message} (not paged: {suppressed})")
            return alert_id, "suppressed", 0
        if state == "pending":
            _event(con, alert_id, now, "pending", SYSTEM_ACTOR, f.message)
            return alert_id, "pending", 0
        _event(con, alert_id, now, "fired", SYSTEM_ACTOR, f.message)
        return alert_id, "fired", self._notify(con, alert, "fired", now, self._paged_so_far(alert, now), None)

    def _start_clocks(
        self, con: duckdb.DuckDBPyConnection, alert_id: int, device_id: str, site: str | None, cls: str, now: datetime
    ) -> int:
        """Compute the alert's deadlines from now and page the first escalation level(s)."""
        d = self.deadlines(cls, now, device_id, site)
        con.execute(
            "UPDATE alerts SET state = 'firing', created_at = ?, updated_at = ?, ack_due = ?, onsite_due = ?, "
            "restore_due = ?, ack_warn_at = ?, onsite_warn_at = ?, restore_warn_at = ?, escalate_at = ?, "
            "escalation_level = ?, sla_marks = [] WHERE alert_id = ?",
            [
                now,
                now,
                d.ack_due,
                d.onsite_due,
                d.restore_due,
                d.warn_at["ack"],
                d.warn_at["onsite"],
                d.warn_at["restore"],
                list(d.escalate_at),
                self._level_due(d, now),
                alert_id,
            ],
        )
        alert = fetch_alert(con, alert_id)
        assert alert is not None
        return self._notify(con, alert, "fired", now, self._paged_so_far(alert, now), None)

    def deadlines(self, event_class: str, at: datetime, device_id: str, site: str | None) -> Deadlines:
        return self.calculator.deadlines(event_class, at, self.maintenance.pauses(device_id, site))

    @staticmethod
    def _level_due(d: Deadlines, now: datetime) -> int:
        return max(0, sum(1 for t in d.escalate_at if t <= now) - 1)

    def _reopen(self, con: duckdb.DuckDBPyConnection, f: Finding, row: tuple[Any, ...], now: datetime) -> int:
        alert_id = int(row[0])
        flaps = int(row[3]) + 1
        flapping = flaps >= self.cfg.flap_threshold
        state = "acknowledged" if row[5] is not None else "firing"
        con.execute(
            "UPDATE alerts SET state = ?, resolved_at = NULL, updated_at = ?, value = ?, message = ?, "
            "last_value_at = ?, fire_count = fire_count + 1, flap_count = ?, flapping = ? WHERE alert_id = ?",
            [state, now, f.value, f.message, f.ts, flaps, flapping, alert_id],
        )
        _event(con, alert_id, now, "reopened", SYSTEM_ACTOR, f"{f.message} (re-opened {flaps} time(s))")
        alert = fetch_alert(con, alert_id)
        assert alert is not None
        if alert["suppressed"] is not None:
            return 0
        if flapping and not row[4]:
            _event(con, alert_id, now, "flapping", SYSTEM_ACTOR, f"re-opened {flaps} times: paging paused")
            return self._notify(con, alert, "flapping", now, self._paged_so_far(alert, now), None)
        if flapping:
            return 0
        return self._notify(con, alert, "reopened", now, self._paged_so_far(alert, now), f.message)

    def _suppression(
        self, con: duckdb.DuckDBPyConnection, device_id: str, site: str | None, rule_id: str, now: datetime
    ) -> str | None:
        w = self.maintenance.active(device_id, site, now)
        if w is not None:
            return f"maintenance:{w.id}"
        row = con.execute(
            "SELECT silence_id FROM silences WHERE expired_by IS NULL AND starts_at <= ? AND ends_at > ? "
            "AND (device_id IS NULL OR device_id = ?) AND (rule_id IS NULL OR rule_id = ?) "
            "AND (site IS NULL OR site = ?) ORDER BY silence_id LIMIT 1",
            [now, now, device_id, rule_id, site],
        ).fetchone()
        return f"silence:{row[0]}" if row is not None else None

    # --- notifications (outbox rows, in the caller's transaction) ----------------------------------
    def _paged_so_far(self, alert: dict[str, Any], now: datetime) -> list[tuple[int, Person]]:
        out: list[tuple[int, Person]] = []
        for level in range(int(alert["escalation_level"]) + 1):
            p = self.oncall.person_at_level(level, now)
            if p is not None and all(p.id != q.id for _, q in out):
                out.append((level, p))
        return out

    def _notify(
        self,
        con: duckdb.DuckDBPyConnection,
        alert: dict[str, Any],
        kind: str,
        now: datetime,
        people: Sequence[tuple[int, Person]],
        detail: str | None,
    ) -> int:
        level = int(alert["escalation_level"])
        level_name = self.oncall.levels[level][0] if level < len(self.oncall.levels) else None
        ack_url = f"{self.cfg.public_url.rstrip('/')}/alerts/{alert['alert_id']}" if self.cfg.public_url else None
        payload = build_payload(alert, kind, level=level, level_name=level_name, ack_url=ack_url, detail=detail)
        key = f"gs-{alert['alert_id']}-{uuid.uuid4().hex[:16]}"
        rows: list[tuple[str, str | None]] = [(w, None) for w in self.webhooks]
        for _, person in people:
            if person.contacts:
                rows.append(("apprise", person.id))
            elif person.id not in self._warned_no_contacts:  # once per person: the outbox shows every page
                self._warned_no_contacts.add(person.id)
                log.warning("%s is paged for alert #%d but has no contacts configured", person.id, alert["alert_id"])
        return enqueue(con, alert["alert_id"], kind, payload, key, rows, now)

    # --- operator actions ------------------------------------------------------------------------
    async def acknowledge(self, alert_id: int, actor: str, comment: str | None = None) -> None:
        await self._act(alert_id, "acknowledged", actor, comment)

    async def close(self, alert_id: int, actor: str, comment: str | None = None) -> None:
        await self._act(alert_id, "closed", actor, comment)

    async def assign(self, alert_id: int, actor: str, assignee: str, comment: str | None = None) -> None:
        await self._act(alert_id, "assigned", actor, comment, assignee=assignee)

    async def comment(self, alert_id: int, actor: str, comment: str) -> None:
        await self._act(alert_id, "commented", actor, comment)

    async def arrive(self, alert_id: int, actor: str, comment: str | None = None) -> None:
        """The engineer is on site: stops the on-site clock."""
        await self._act(alert_id, "onsite", actor, comment)

    async def _act(
        self, alert_id: int, action: str, actor: str, comment: str | None, assignee: str | None = None
    ) -> None:
        now = self.clock()
        queued = await self._writer.run(
            lambda con: self._transition(con, alert_id, action, actor, comment, assignee, now), urgent=True
        )
        self._after(queued)

    _ALLOWED: ClassVar[dict[str, set[str]]] = {
        "acknowledged": {"firing"},
        "closed": {"pending", "firing", "acknowledged", "resolved"},
        "assigned": {"pending", "firing", "acknowledged", "resolved"},
        "commented": {"pending", "firing", "acknowledged", "resolved", "closed"},
        "onsite": {"firing", "acknowledged", "resolved"},
    }

    def _transition(
        self,
        con: duckdb.DuckDBPyConnection,
        alert_id: int,
        action: str,
        actor: str,
        comment: str | None,
        assignee: str | None,
        now: datetime,
    ) -> int:
        alert = fetch_alert(con, alert_id)
        if alert is None:
            raise LookupError(f"alert #{alert_id} does not exist")
        state = str(alert["state"])
        if state not in self._ALLOWED[action]:
            raise AlertStateError(f"alert #{alert_id} is {state}; cannot {_VERBS[action]} it")
        if action == "onsite" and alert["onsite_at"] is not None:
            raise AlertStateError(f"alert #{alert_id}: {alert['onsite_by']} is already recorded on site")
        detail = comment
        if action == "acknowledged":
            con.execute(
                "UPDATE alerts SET state = 'acknowledged', acknowledged_at = ?, acknowledged_by = ?, updated_at = ?, "
                "assignee = coalesce(assignee, ?) WHERE alert_id = ?",
                [now, actor, now, actor.split(" via ")[0], alert_id],
            )
        elif action == "closed":
            con.execute(
                "UPDATE alerts SET state = 'closed', closed_at = ?, updated_at = ? WHERE alert_id = ?",
                [now, now, alert_id],
            )
        elif action == "assigned":
            con.execute("UPDATE alerts SET assignee = ?, updated_at = ? WHERE alert_id = ?", [assignee, now, alert_id])
            detail = f"assigned to {assignee}" + (f": {comment}" if comment else "")
        elif action == "onsite":
            con.execute(
                "UPDATE alerts SET onsite_at = ?, onsite_by = ?, updated_at = ? WHERE alert_id = ?",
                [now, actor, now, alert_id],
            )
        else:
            con.execute("UPDATE alerts SET updated_at = ? WHERE alert_id = ?", [now, alert_id])
        _event(con, alert_id, now, action, actor, detail)
        fresh = fetch_alert(con, alert_id)
        assert fresh is not None
        if fresh["suppressed"] is not None or state == "pending":
            return 0
        people: list[tuple[int, Person]] = []
        if action in {"acknowledged", "closed"}:
            people = self._paged_so_far(fresh, now)
        elif action == "assigned" and assignee in self.oncall.people:
            people = [(int(fresh["escalation_level"]), self.oncall.people[assignee])]
        by = f"by {actor}" + (f": {comment}" if comment and action != "assigned" else "")
        return self._notify(con, fresh, action, now, people, detail if action == "assigned" else by)

    async def silence(
        self,
        actor: str,
        *,
        until: datetime,
        comment: str,
        device_id: str | None = None,
        rule_id: str | None = None,
        site: str | None = None,
    ) -> int:
        """Stop paging for matching alerts until `until`; open matching alerts are suppressed now."""
        if device_id is None and rule_id is None and site is None:
            raise ValueError("a silence needs at least one of device, rule or site (silencing everything is refused)")
        now = self.clock()
        if until <= now:
            raise ValueError(f"the silence would end at {until.isoformat()}, which is not in the future")

        def job(con: duckdb.DuckDBPyConnection) -> int:
            row = con.execute(
                "INSERT INTO silences (created_at, created_by, starts_at, ends_at, device_id, rule_id, site, comment) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING silence_id",
                [now, actor, now, until, device_id, rule_id, site, comment],
            ).fetchone()
            assert row is not None
            sid = int(row[0])
            hit = con.execute(
                "SELECT alert_id FROM alerts WHERE state IN ('pending', 'firing', 'acknowledged') "
                "AND suppressed IS NULL AND (? IS NULL OR device_id = ?) AND (? IS NULL OR rule_id = ?) "
                "AND (? IS NULL OR site = ?)",
                [device_id, device_id, rule_id, rule_id, site, site],
            ).fetchall()
            for (aid,) in hit:
                con.execute(
                    "UPDATE alerts SET suppressed = ?, updated_at = ? WHERE alert_id = ?", [f"silence:{sid}", now, aid]
                )
                _event(con, int(aid), now, "silenced", actor, f"silence #{sid} until {until.isoformat()}: {comment}")
            return sid

        return await self._writer.run(job)

    # --- the SLA watch -----------------------------------------------------------------------------
    async def tick(self) -> int:
        """Check every open alert's clocks once; returns the notifications queued."""
        now = self.clock()
        queued = await self._writer.run(lambda con: self._tick(con, now), urgent=True)
        self._after(queued)
        return queued

    def _tick(self, con: duckdb.DuckDBPyConnection, now: datetime) -> int:
        queued = 0
        cur = con.execute(
            f"SELECT {ALERT_COLUMNS} FROM alerts WHERE state IN ('pending', 'firing', 'acknowledged') "
            "OR (state = 'resolved' AND ? IS NOT NULL)",
            [self.cfg.auto_close_after],
        )
        cols = [d[0] for d in cur.description or []]
        for alert in [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]:
            queued += self._watch(con, alert, now)
        return queued

    def _watch(self, con: duckdb.DuckDBPyConnection, a: dict[str, Any], now: datetime) -> int:
        aid = int(a["alert_id"])
        if a["state"] == "resolved":
            if self.cfg.auto_close_after is not None and now - a["resolved_at"] >= timedelta(
                seconds=self.cfg.auto_close_after
            ):
                con.execute(
                    "UPDATE alerts SET state = 'closed', closed_at = ?, updated_at = ? WHERE alert_id = ?",
                    [now, now, aid],
                )
                _event(con, aid, now, "closed", SYSTEM_ACTOR, "closed automatically after staying resolved")
            return 0
        if a["suppressed"] is None:
            w = self.maintenance.active(a["device_id"], a["site"], now)
            if w is not None:  # a window began while the alert was open: the planned work takes the device over
                con.execute(
                    "UPDATE alerts SET suppressed = ?, updated_at = ? WHERE alert_id = ?",
                    [f"maintenance:{w.id}", now, aid],
                )
                _event(con, aid, now, "suppressed", SYSTEM_ACTOR, f"maintenance window {w.id} began: {w.reason}")
                self.suppressed += 1
                return 0
        if a["suppressed"] is not None:
            if self._suppression_over(con, str(a["suppressed"]), now):
                con.execute("UPDATE alerts SET suppressed = NULL WHERE alert_id = ?", [aid])
                _event(con, aid, now, "unsuppressed", SYSTEM_ACTOR, f"{a['suppressed']} ended; the alert pages now")
                if a["state"] == "pending":
                    return 0
                return self._start_clocks(con, aid, a["device_id"], a["site"], a["event_class"], now)
            return 0
        if a["state"] == "pending":
            if now - a["created_at"] >= timedelta(seconds=self.cfg.hold):
                _event(con, aid, now, "fired", SYSTEM_ACTOR, f"still {a['message']} after the hold")
                return self._start_clocks(con, aid, a["device_id"], a["site"], a["event_class"], now)
            return 0
        if a["flapping"]:
            return 0
        queued = 0
        marks: list[str] = list(a["sla_marks"] or [])
        level = int(a["escalation_level"])
        running = {
            "ack": a["state"] == "firing",
            "onsite": a["onsite_at"] is None,
            "restore": True,
        }
        for clock in CLOCKS:
            if not running[clock]:
                continue
            due, warn = a[f"{clock}_due"], a[f"{clock}_warn_at"]
            if due is None:
                continue
            if now >= due and f"breach:{clock}" not in marks:
                marks.append(f"breach:{clock}")
                self.breaches += 1
                new_level = min(level + 1, max(len(self.oncall.levels) - 1, 0))
                con.execute(
                    "UPDATE alerts SET sla_marks = ?, escalation_level = ?, updated_at = ? WHERE alert_id = ?",
                    [marks, new_level, now, aid],
                )
                _event(con, aid, now, f"breach:{clock}", SYSTEM_ACTOR, f"{clock} deadline {due.isoformat()} passed")
                if new_level != level:
                    _event(con, aid, now, "escalated", SYSTEM_ACTOR, f"to level {new_level + 1} on the {clock} breach")
                    self.escalations += 1
                level = new_level
                a = {**a, "escalation_level": level, "sla_marks": marks}
                log.error("ALERT #%d SLA BREACH: %s deadline passed (%s)", aid, clock, a["device_id"])
                queued += self._notify(con, a, f"breach:{clock}", now, self._paged_so_far(a, now), None)
            elif warn is not None and now >= warn and now < due and f"warn:{clock}" not in marks:
                marks.append(f"warn:{clock}")
                self.prewarnings += 1
                con.execute("UPDATE alerts SET sla_marks = ?, updated_at = ? WHERE alert_id = ?", [marks, now, aid])
                _event(con, aid, now, f"prewarn:{clock}", SYSTEM_ACTOR, f"{clock} due {due.isoformat()}")
                a = {**a, "sla_marks": marks}
                people = self._current_and_assignee(a, now)
                queued += self._notify(con, a, f"prewarn:{clock}", now, people, None)
        if a["state"] == "firing":
            steps = a["escalate_at"] or []
            reached = max(0, sum(1 for t in steps if t <= now) - 1)
            if reached > level:
                con.execute(
                    "UPDATE alerts SET escalation_level = ?, updated_at = ? WHERE alert_id = ?", [reached, now, aid]
                )
                for lvl in range(level + 1, reached + 1):
                    self.escalations += 1
                    name = self.oncall.levels[lvl][0] if lvl < len(self.oncall.levels) else str(lvl)
                    _event(con, aid, now, "escalated", SYSTEM_ACTOR, f"unacknowledged: paging level {lvl + 1} ({name})")
                    a = {**a, "escalation_level": lvl}
                    p = self.oncall.person_at_level(lvl, now)
                    log.warning("ALERT #%d ESCALATED to %s (%s)", aid, name, p.id if p else "nobody")
                    queued += self._notify(con, a, "escalated", now, [(lvl, p)] if p else [], None)
        return queued

    def _current_and_assignee(self, a: dict[str, Any], now: datetime) -> list[tuple[int, Person]]:
        level = int(a["escalation_level"])
        out: list[tuple[int, Person]] = []
        p = self.oncall.person_at_level(level, now)
        if p is not None:
            out.append((level, p))
        assignee = self.oncall.people.get(str(a.get("assignee") or ""))
        if assignee is not None and all(assignee.id != q.id for _, q in out):
            out.append((level, assignee))
        return out

    def _suppression_over(self, con: duckdb.DuckDBPyConnection, reason: str, now: datetime) -> bool:
        kind, _, ref = reason.partition(":")
        if kind == "maintenance":
            w = next((w for w in self.maintenance.windows if w.id == ref), None)
            return w is None or now >= w.end
        if kind == "silence":
            row = con.execute("SELECT ends_at, expired_by FROM silences WHERE silence_id = ?", [int(ref)]).fetchone()
            return row is None or row[1] is not None or now >= row[0]
        return False  # caused by a parent alert: stays quiet with its cause

    async def expire_silence(self, silence_id: int, actor: str) -> None:
        def job(con: duckdb.DuckDBPyConnection) -> None:
            row = con.execute("SELECT expired_by FROM silences WHERE silence_id = ?", [silence_id]).fetchone()
            if row is None:
                raise LookupError(f"silence #{silence_id} does not exist")
            if row[0] is not None:
                raise AlertStateError(f"silence #{silence_id} was already ended by {row[0]}")
            con.execute(
                "UPDATE silences SET expired_by = ?, ends_at = ? WHERE silence_id = ?",
                [actor, self.clock(), silence_id],
            )

        await self._writer.run(job)

    async def heartbeat(self) -> int:
        """Queue a dead-man heartbeat through every webhook: proves writer -> outbox -> worker -> receiver."""
        now = self.clock()
        if not self.webhooks:
            return 0
        payload = {"kind": "heartbeat", "at": now.isoformat()}
        key = f"gs-heartbeat-{int(now.timestamp())}"
        queued = await self._writer.run(
            lambda con: enqueue(con, None, "heartbeat", payload, key, [(w, None) for w in self.webhooks], now)
        )
        self._after(queued)
        return queued

    def _read(self, query: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        con = self._writer.reader()
        try:
            return query(con)
        finally:
            con.close()

    def open_fingerprints(self) -> list[str]:
        """Fingerprints of open alerts: what a restarted rule engine should treat as already firing."""
        con = self._writer.reader()
        try:
            rows = con.execute(
                "SELECT DISTINCT fingerprint FROM alerts WHERE state IN ('pending', 'firing', 'acknowledged')"
            ).fetchall()
        finally:
            con.close()
        return [str(r[0]) for r in rows]

    def sync_maintenance(self, con: duckdb.DuckDBPyConnection) -> None:
        """Mirror the config's maintenance windows into their table, then plan with every live window in it
        (the config's and those operators announced through the API)."""
        now = self.clock()
        con.execute("DELETE FROM maintenance_windows WHERE source = 'config'")
        for w in self.cfg.maintenance:
            clash = con.execute("SELECT created_by FROM maintenance_windows WHERE window_id = ?", [w.id]).fetchone()
            if clash is not None:
                log.warning(
                    "maintenance window %s in the config replaces the one %s announced with the same id", w.id, clash[0]
                )
                con.execute("DELETE FROM maintenance_windows WHERE window_id = ?", [w.id])
            con.execute(
                "INSERT INTO maintenance_windows (window_id, starts_at, ends_at, announced_at, devices, sites, reason, "
                "source, created_at, created_by) VALUES (?, ?, ?, ?, ?, ?, ?, 'config', ?, 'config file')",
                [w.id, w.start, w.end, w.announced_at, w.devices, w.sites, w.reason, now],
            )
        self.maintenance = MaintenancePlan(live_windows(con, now))

    async def add_maintenance(self, actor: str, req: MaintenanceRequest) -> dict[str, Any]:
        """Store an announced window (refused when it breaks the contract's notice); returns its row."""
        now = self.clock()
        notice = timedelta(seconds=self.cfg.maintenance_notice)
        # Refusals are checked on a reader first: an operator's mistake is no failed database write.
        await asyncio.to_thread(self._read, lambda con: validate_new(con, req, now=now, notice=notice))

        def job(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
            window_id = insert_window(con, req, actor=actor, now=now, notice=notice)
            self.maintenance = MaintenancePlan(live_windows(con, now))
            row = fetch_window(con, window_id, now)
            assert row is not None
            return row

        row = await self._writer.run(job)
        log.warning(
            "maintenance window %s announced by %s: %s to %s, devices %s, sites %s (%s)",
            row["window_id"], actor, row["starts_at"], row["ends_at"], row["devices"], row["sites"], row["reason"],
        )  # fmt: skip
        return row

    async def cancel_maintenance(self, window_id: str, actor: str, reason: str) -> dict[str, Any]:
        """Cancel a planned window (or end one in progress): its alerts page again at the next tick."""
        now = self.clock()
        await asyncio.to_thread(self._read, lambda con: validate_cancel(con, window_id, now))

        def job(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
            cancel_window(con, window_id, actor=actor, reason=reason, now=now)
            self.maintenance = MaintenancePlan(live_windows(con, now))
            row = fetch_window(con, window_id, now)
            assert row is not None
            return row

        row = await self._writer.run(job)
        log.warning("maintenance window %s cancelled by %s: %s", window_id, actor, reason)
        return row


def enqueue(
    con: duckdb.DuckDBPyConnection,
    alert_id: int | None,
    kind: str,
    payload: dict[str, Any],
    key: str,
    targets: Sequence[tuple[str, str | None]],
    now: datetime,
) -> int:
    """Outbox rows for one message, one per target (channel, recipient); they share the idempotency key."""
    if not targets:
        return 0
    body = orjson.dumps(payload).decode()
    values = ", ".join(["(nextval('notification_id_seq'), ?, ?, ?, ?, ?, ?, ?, ?)"] * len(targets))
    params: list[Any] = []
    for channel, recipient in targets:
        params += [alert_id, channel, recipient, body, now, now, kind, key]
    con.execute(
        "INSERT INTO notifications (notification_id, alert_id, channel, recipient, payload, created_at, "
        f"next_try_at, kind, idempotency_key) VALUES {values}",
        params,
    )
    return len(targets)


_VERBS = {
    "acknowledged": "acknowledge",
    "closed": "close",
    "assigned": "assign",
    "commented": "comment on",
    "onsite": "record an engineer on site for",
}


def _forecast(f: Finding) -> str | None:
    text = getattr(f, "forecast", None)
    if text:
        return str(text)
    seconds = getattr(f, "seconds_to_limit", None)
    if isinstance(seconds, int | float) and seconds > 0:
        return f"reaches {f.threshold:g} {f.unit} in about {seconds / 3600:.1f} h"
    return None


def _event(
    con: duckdb.DuckDBPyConnection, alert_id: int, ts: datetime, action: str, actor: str, detail: str | None
) -> None:
    con.execute("INSERT INTO alert_events VALUES (?, ?, ?, ?, ?)", [alert_id, ts, action, actor, detail])
