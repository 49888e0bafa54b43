"""Open alerts as Prometheus families: counts by class, SLA breaches, and each deadline for countdowns."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

import polars as pl
from prometheus_client.core import GaugeMetricFamily, Metric

EVENT_CLASSES = ("I", "II", "III")
#: Deadlines whose breach GridSentry can tell from its own records. On-site arrival is not recorded yet,
#: so `onsite` only appears as a deadline to count down to, never as a breach.
BREACH_DEADLINES = ("ack", "restore")
DEADLINES = ("ack", "onsite", "restore")

OPEN_ALERTS_SQL = (
    "SELECT alert_id, event_class, state, device_id, coalesce(site, '') AS site, title, "
    "ack_due, onsite_due, restore_due, acknowledged_at FROM alerts "
    "WHERE state IN ('firing', 'acknowledged') ORDER BY alert_id"
)

OPEN_ALERTS_SCHEMA = pl.Schema(
    {
        "alert_id": pl.Int64(),
        "event_class": pl.String(),
        "state": pl.String(),
        "device_id": pl.String(),
        "site": pl.String(),
        "title": pl.String(),
        "ack_due": pl.Datetime("us", "UTC"),
        "onsite_due": pl.Datetime("us", "UTC"),
        "restore_due": pl.Datetime("us", "UTC"),
        "acknowledged_at": pl.Datetime("us", "UTC"),
    }
)


def _ts(v: datetime | None) -> float | None:
    return None if v is None else v.timestamp()


def alert_families(open_alerts: pl.DataFrame, now: float) -> Iterator[Metric]:
    by_class = GaugeMetricFamily(
        "gridsentry_alerts_open", "Open alerts (firing or acknowledged) by event class", labels=["event_class"]
    )
    unacked = GaugeMetricFamily(
        "gridsentry_alerts_unacknowledged",
        "Firing alerts nobody has acknowledged yet, by event class",
        labels=["event_class"],
    )
    breached = GaugeMetricFamily(
        "gridsentry_alerts_sla_breached",
        "Open alerts that missed a service-level deadline: ack (respond within 5 min) or restore (12 h class I, "
        "6 h II, 4 h III)",
        labels=["event_class", "deadline"],
    )
    due = GaugeMetricFamily(
        "gridsentry_alert_deadline_timestamp_seconds",
        "Service-level deadline of an open alert still to be met (Unix time); deadline - time() counts down",
        labels=["alert_id", "event_class", "site", "device", "deadline"],
    )
    classes = list(EVENT_CLASSES) + sorted({str(c) for c in open_alerts["event_class"].to_list()} - set(EVENT_CLASSES))
    counts = dict.fromkeys(classes, 0)
    not_acked = dict.fromkeys(classes, 0)
    breaches = {(c, d): 0 for c in classes for d in BREACH_DEADLINES}
    for row in open_alerts.iter_rows(named=True):  # open alerts: a handful, not the fleet
        cls = str(row["event_class"])
        counts[cls] += 1
        acked_at = _ts(row["acknowledged_at"])
        ack_due = _ts(row["ack_due"])
        if row["state"] == "firing":
            not_acked[cls] += 1
        if ack_due is not None and (
            (acked_at is None and now > ack_due) or (acked_at is not None and acked_at > ack_due)
        ):
            breaches[(cls, "ack")] += 1
        restore_due = _ts(row["restore_due"])
        if restore_due is not None and now > restore_due:
            breaches[(cls, "restore")] += 1
        labels = [str(row["alert_id"]), cls, row["site"] or "", row["device_id"]]
        if acked_at is None and ack_due is not None:
            due.add_metric([*labels, "ack"], ack_due)
        for name in ("onsite", "restore"):
            when = _ts(row[f"{name}_due"])
            if when is not None:
                due.add_metric([*labels, name], when)
    for cls in classes:
        by_class.add_metric([cls], counts[cls])
        unacked.add_metric([cls], not_acked[cls])
        for d in BREACH_DEADLINES:
            breached.add_metric([cls, d], breaches[(cls, d)])
    yield from (by_class, unacked, breached, due)


#: The O&M standard's KPIs (seeds/000 §8.2-8.4) over a rolling window, per event class. An alert counts for the
#: response rate once its outcome is known (acknowledged, or its 5 minutes are over); "solved" means resolved
#: (condition cleared) or closed.
KPI_WINDOW_DAYS = 30
KPI_SQL = f"""
SELECT event_class,
       count(*) AS raised,
       count(*) FILTER (WHERE acknowledged_at IS NOT NULL OR ack_due < now()) AS response_decided,
       count(*) FILTER (WHERE acknowledged_at IS NOT NULL AND acknowledged_at <= ack_due) AS responded_in_time,
       count(*) FILTER (WHERE resolved_at IS NOT NULL OR closed_at IS NOT NULL) AS solved,
       avg(epoch(acknowledged_at) - epoch(created_at)) FILTER (WHERE acknowledged_at IS NOT NULL) AS mtta_s,
       avg(epoch(coalesce(resolved_at, closed_at)) - epoch(created_at))
           FILTER (WHERE resolved_at IS NOT NULL OR closed_at IS NOT NULL) AS mttr_s
FROM alerts
WHERE created_at >= now() - INTERVAL {KPI_WINDOW_DAYS} DAY
GROUP BY event_class ORDER BY event_class
"""


def kpi_families(rows: list[tuple[object, ...]]) -> Iterator[Metric]:
    """rows: KPI_SQL's result. Ratios and means appear only for classes where they are defined."""
    window = f"alerts raised in the last {KPI_WINDOW_DAYS} days"
    raised = GaugeMetricFamily(
        "gridsentry_alerts_kpi_raised", f"Number of {window}, by event class", labels=["event_class"]
    )
    timely = GaugeMetricFamily(
        "gridsentry_alerts_kpi_response_timeliness_ratio",
        f"Service response timeliness rate (responded within 5 min / responses due) of {window}",
        labels=["event_class"],
    )
    solved = GaugeMetricFamily(
        "gridsentry_alerts_kpi_resolution_ratio",
        f"Event resolution rate (resolved or closed / raised) of {window}; the standard recommends 85-100 %",
        labels=["event_class"],
    )
    mtta = GaugeMetricFamily(
        "gridsentry_alerts_kpi_mean_time_to_acknowledge_seconds",
        f"Mean time from raised to acknowledged (MTTA) of the acknowledged {window}",
        labels=["event_class"],
    )
    mttr = GaugeMetricFamily(
        "gridsentry_alerts_kpi_mean_time_to_resolve_seconds",
        f"Mean time from raised to resolved or closed (MTTR) of the solved {window}",
        labels=["event_class"],
    )
    seen = set()
    for cls, n, decided, in_time, n_solved, mtta_s, mttr_s in rows:
        label = [str(cls)]
        seen.add(str(cls))
        raised.add_metric(label, float(n))  # type: ignore[arg-type]
        if decided:
            timely.add_metric(label, float(in_time) / float(decided))  # type: ignore[arg-type]
        if n:
            solved.add_metric(label, float(n_solved) / float(n))  # type: ignore[arg-type]
        if mtta_s is not None:
            mtta.add_metric(label, float(mtta_s))  # type: ignore[arg-type]
        if mttr_s is not None:
            mttr.add_metric(label, float(mttr_s))  # type: ignore[arg-type]
    for cls in EVENT_CLASSES:
        if cls not in seen:
            raised.add_metric([cls], 0.0)
    yield from (raised, timely, solved, mtta, mttr)
