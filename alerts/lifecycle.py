"""Findings become alerts: one open alert per fingerprint (rule, device, metric).

firing -> acknowledged -> resolved -> closed. A fire while an alert is open updates it (fire
count, latest value) instead of opening another. Every transition is an `alert_events` row, written
in the same transaction as the alert, so the audit trail and the state never disagree.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import duckdb

from alerts.sla import STANDARD_TABLE_1, SlaPolicy
from rules.model import Finding
from storage.writer import StorageWriter

log = logging.getLogger("gridsentry.alerts")

OPEN_STATES = ("firing", "acknowledged")
SYSTEM_ACTOR = "gridsentry"


class AlertStateError(ValueError):
    """The requested transition is not allowed from the alert's current state."""


@dataclass(frozen=True)
class AlertChange:
    alert_id: int
    action: str  # fired, refired, resolved
    finding: Finding


class AlertLifecycle:
    def __init__(self, writer: StorageWriter, policy: SlaPolicy = STANDARD_TABLE_1) -> None:
        self._writer = writer
        self.policy = policy
        self.raised = 0
        self.resolved = 0

    async def apply(self, findings: Sequence[Finding]) -> list[AlertChange]:
        if not findings:
            return []
        now = datetime.now(UTC)
        changes = await self._writer.run(lambda con: self._apply(con, findings, now))
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
        return changes

    def _apply(self, con: duckdb.DuckDBPyConnection, findings: Sequence[Finding], now: datetime) -> list[AlertChange]:
        out: list[AlertChange] = []
        for f in findings:  # findings are state changes: a handful per tick, not per reading
            row = con.execute(
                "SELECT alert_id FROM alerts WHERE fingerprint = ? AND state IN ('firing', 'acknowledged') "
                "ORDER BY alert_id DESC LIMIT 1",
                [f.fingerprint],
            ).fetchone()
            if f.action == "fire":
                if row is not None:
                    alert_id = int(row[0])
                    con.execute(
                        "UPDATE alerts SET value = ?, message = ?, updated_at = ?, last_value_at = ?, "
                        "fire_count = fire_count + 1 WHERE alert_id = ?",
                        [f.value, f.message, now, f.ts, alert_id],
                    )
                    _event(con, alert_id, now, "refired", SYSTEM_ACTOR, f.message)
                    out.append(AlertChange(alert_id, "refired", f))
                    continue
                d = self.policy.deadlines(f.event_class, now)
                new = con.execute(
                    "INSERT INTO alerts (fingerprint, rule_id, device_id, site, event_class, state, title, message, "
                    "metric, value, threshold, unit, runbook, fired_at, created_at, updated_at, last_value_at, "
                    "ack_due, onsite_due, restore_due) "
                    "VALUES (?, ?, ?, ?, ?, 'firing', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING alert_id",
                    [
                        f.fingerprint,
                        f.rule_id,
                        f.device_id,
                        f.site,
                        f.event_class,
                        f.title,
                        f.message,
                        f.metric,
                        f.value,
                        f.threshold,
                        f.unit,
                        f.runbook,
                        f.ts,
                        now,
                        now,
                        f.ts,
                        d.ack_due,
                        d.onsite_due,
                        d.restore_due,
                    ],
                ).fetchone()
                assert new is not None
                alert_id = int(new[0])
                _event(con, alert_id, now, "fired", SYSTEM_ACTOR, f.message)
                out.append(AlertChange(alert_id, "fired", f))
            elif row is not None:
                alert_id = int(row[0])
                con.execute(
                    "UPDATE alerts SET state = 'resolved', resolved_at = ?, updated_at = ?, value = ?, "
                    "last_value_at = ? WHERE alert_id = ?",
                    [now, now, f.value, f.ts, alert_id],
                )
                _event(con, alert_id, now, "resolved", SYSTEM_ACTOR, f.message)
                out.append(AlertChange(alert_id, "resolved", f))
        return out

    async def acknowledge(self, alert_id: int, actor: str, comment: str | None = None) -> None:
        await self._writer.run(lambda con: self._transition(con, alert_id, "acknowledged", actor, comment))

    async def close(self, alert_id: int, actor: str, comment: str | None = None) -> None:
        await self._writer.run(lambda con: self._transition(con, alert_id, "closed", actor, comment))

    def _transition(
        self, con: duckdb.DuckDBPyConnection, alert_id: int, to: str, actor: str, comment: str | None
    ) -> None:
        row = con.execute("SELECT state FROM alerts WHERE alert_id = ?", [alert_id]).fetchone()
        if row is None:
            raise LookupError(f"alert #{alert_id} does not exist")
        state = str(row[0])
        allowed = {"acknowledged": {"firing"}, "closed": {"firing", "acknowledged", "resolved"}}[to]
        if state not in allowed:
            raise AlertStateError(f"alert #{alert_id} is {state}; it cannot become {to}")
        now = datetime.now(UTC)
        if to == "acknowledged":
            con.execute(
                "UPDATE alerts SET state = 'acknowledged', acknowledged_at = ?, acknowledged_by = ?, updated_at = ? "
                "WHERE alert_id = ?",
                [now, actor, now, alert_id],
            )
        else:
            con.execute(
                "UPDATE alerts SET state = 'closed', closed_at = ?, updated_at = ? WHERE alert_id = ?",
                [now, now, alert_id],
            )
        _event(con, alert_id, now, to, actor, comment)


def _event(
    con: duckdb.DuckDBPyConnection, alert_id: int, ts: datetime, action: str, actor: str, detail: str | None
) -> None:
    con.execute("INSERT INTO alert_events VALUES (?, ?, ?, ?, ?)", [alert_id, ts, action, actor, detail])
