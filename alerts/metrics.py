"""Prometheus families of the alert stage: open and breached alerts, escalations, delivery health."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from alerts.notify.outbox import outbox_counts
from alerts.runtime import AlertStage

log = logging.getLogger(__name__)


class AlertStageCollector(Collector):
    def __init__(self, stage: AlertStage) -> None:
        self.stage = stage

    def collect(self) -> Iterator[Metric]:
        st = self.stage
        lc = st.lifecycle
        breaches = CounterMetricFamily(
            "gridsentry_alerts_sla_breaches",
            "Alerts that passed an SLA deadline unmet, by event class and clock (acknowledge, on site, restore)",
            labels=["event_class", "clock"],
        )
        overdue = GaugeMetricFamily(
            "gridsentry_alerts_open_overdue", "Open alerts past at least one SLA deadline", labels=["event_class"]
        )
        pending = GaugeMetricFamily(
            "gridsentry_notifications_pending", "Notifications waiting in the outbox", labels=["channel"]
        )
        failed_rows = GaugeMetricFamily(
            "gridsentry_notifications_failed", "Notifications given up on (in the outbox table)", labels=["channel"]
        )
        oldest = GaugeMetricFamily(
            "gridsentry_notifications_oldest_pending_seconds", "Age of the oldest undelivered notification"
        )
        try:
            con = st.writer.reader()
            try:
                now = datetime.now(UTC)
                for cls, clock, n in con.execute(
                    "SELECT event_class, replace(m, 'breach:', ''), count(*) FROM "
                    "(SELECT event_class, unnest(sla_marks) AS m FROM alerts WHERE suppressed IS NULL) "
                    "WHERE m LIKE 'breach:%' GROUP BY ALL"
                ).fetchall():
                    breaches.add_metric([cls, clock], n)
                for cls, n in con.execute(
                    "SELECT event_class, count(*) FROM alerts WHERE state IN ('firing', 'acknowledged') "
                    "AND suppressed IS NULL AND (list_contains(sla_marks, 'breach:ack') OR "
                    "list_contains(sla_marks, 'breach:onsite') OR list_contains(sla_marks, 'breach:restore')) "
                    "GROUP BY 1"
                ).fetchall():
                    overdue.add_metric([cls], n)
                counts = outbox_counts(con, now)
            finally:
                con.close()
            for channel, n in sorted(counts["pending"].items()):
                pending.add_metric([channel], n)
            for channel, n in sorted(counts["failed"].items()):
                failed_rows.add_metric([channel], n)
            oldest.add_metric([], counts["oldest_pending_s"])
        except Exception as exc:  # a scrape must never fail because the database is busy or closed
            log.warning("could not read alert figures for /metrics: %s", exc)
        yield from (breaches, overdue, pending, failed_rows, oldest)

        for name, doc, value in (
            ("gridsentry_alerts_escalations", "Escalations to a further level", lc.escalations),
            ("gridsentry_alerts_prewarnings", "Pre-warnings before an SLA deadline", lc.prewarnings),
            ("gridsentry_alerts_suppressed", "Alerts raised inside maintenance windows or silences", lc.suppressed),
            ("gridsentry_alerts_resolved", "Alerts resolved since start", lc.resolved),
            ("gridsentry_alerts_sla_watch_errors", "SLA watch runs that failed", st.tick_errors),
            (
                "gridsentry_notifications_fallbacks",
                "Messages also sent to a person's next contact",
                st.worker.fallbacks,
            ),
        ):
            c = CounterMetricFamily(name, doc, labels=[])
            c.add_metric([], value)
            yield c
        w = st.worker
        for name, doc, counter in (
            ("gridsentry_notifications_sent", "Notifications delivered, by channel", w.sent),
            ("gridsentry_notifications_attempt_failures", "Failed delivery attempts, by channel", w.attempt_failures),
            ("gridsentry_notifications_given_up", "Notifications given up on, by channel", w.given_up),
        ):
            c = CounterMetricFamily(name, doc, labels=["channel"])
            for channel in sorted(set(counter) | {"apprise", *lc.webhooks}):
                c.add_metric([channel], counter[channel])
            yield c
        pushes = CounterMetricFamily(
            "gridsentry_alertmanager_pushes", "Successful pushes to Alertmanager", labels=["alertmanager"]
        )
        push_failures = CounterMetricFamily(
            "gridsentry_alertmanager_push_failures", "Failed pushes to Alertmanager", labels=["alertmanager"]
        )
        for p in st.pushers:
            pushes.add_metric([p.cfg.name], p.pushes)
            push_failures.add_metric([p.cfg.name], sum(p.failures.values()))
        yield from (pushes, push_failures)
