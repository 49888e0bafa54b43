"""Prometheus exposition: a custom collector that reads the service's state at scrape time.

Families are built fresh on every scrape from counters the stages already keep, instead of one
Gauge object per series (cheaper, and nothing to keep in sync). Names follow Prometheus
conventions: base units, `_total` for counters, `_seconds` for durations.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from alerts.metrics import AlertStageCollector
from collector.modbus.metrics import modbus_metrics
from gridsentry import __version__
from gridsentry.history_metrics import history_metrics
from gridsentry.screens.alerts import alert_families, kpi_families

if TYPE_CHECKING:
    from gridsentry.service import Service

log = logging.getLogger(__name__)

COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class ServiceCollector(Collector):
    """GridSentry's own health, one small function per stage; a new stage adds its function to `collect`."""

    def __init__(self, service: Service) -> None:
        self.s = service

    def collect(self) -> Iterator[Metric]:
        for stage in (
            self._build,
            self._mqtt,
            self._modbus,
            self._ingest,
            self._storage,
            self._rules,
            self._alerts,
            self._screens,
        ):
            try:
                yield from stage()
            except Exception as exc:  # a scrape must never fail because one source did
                log.warning("/metrics: the %s families are left out of this scrape: %s", stage.__name__[1:], exc)

    def _build(self) -> Iterator[Metric]:
        info = InfoMetricFamily("gridsentry_build", "GridSentry version")
        info.add_metric([], {"version": __version__})
        yield info
        yield GaugeMetricFamily(
            "gridsentry_start_time_seconds",
            "When this GridSentry started (Unix time)",
            value=self.s.started_at.timestamp(),
        )

    def _modbus(self) -> Iterator[Metric]:
        yield from modbus_metrics(self.s.modbus)

    def _ingest(self) -> Iterator[Metric]:
        s = self.s
        st = s.collector_stats
        c = CounterMetricFamily("gridsentry_ingest_readings", "Readings committed to storage", labels=["source"])
        for source, n in sorted(s.readings_committed.items()):
            c.add_metric([source], n)
        if not s.readings_committed:
            c.add_metric(["mqtt"], 0)
        yield c
        c = CounterMetricFamily("gridsentry_ingest_events", "Status and fault events committed to storage", labels=[])
        c.add_metric([], s.events_committed)
        yield c
        c = CounterMetricFamily(
            "gridsentry_ingest_rejected", "Messages rejected into dead_letters, by reason", labels=["reason"]
        )
        rejected: Counter[str] = Counter(st.rejected)
        for col in s.collectors:
            if col.stats is not st:
                rejected.update(col.stats.rejected)
        for reason, n in sorted(rejected.items()):
            c.add_metric([reason], n)
        yield c
        c = CounterMetricFamily(
            "gridsentry_ingest_unknown_devices", "Devices first seen in data, not in the ledger", labels=[]
        )
        c.add_metric([], s.unknown_devices_seen)
        yield c
        c = CounterMetricFamily(
            "gridsentry_ingest_duplicates", "Redelivered messages dropped by the de-duplication window", labels=[]
        )
        c.add_metric([], s.duplicates_dropped)
        yield c

    def _storage(self) -> Iterator[Metric]:
        w = self.s.writer
        yield GaugeMetricFamily(
            "gridsentry_storage_write_queue_depth", "Write jobs waiting for the single writer", value=w.queue_depth
        )
        c = CounterMetricFamily("gridsentry_storage_commits", "Committed write transactions", labels=[])
        c.add_metric([], w.commits)
        yield c
        c = CounterMetricFamily("gridsentry_storage_commit_failures", "Write transactions rolled back", labels=[])
        c.add_metric([], w.commit_failures)
        yield c
        yield from history_metrics(self.s)

    def _rules(self) -> Iterator[Metric]:
        s = self.s
        e = s.engine
        yield GaugeMetricFamily("gridsentry_rules_loaded", "Enabled rules loaded from packs", value=len(e.rules))
        yield GaugeMetricFamily(
            "gridsentry_rules_bindings", "Rule x device x metric bindings evaluated", value=e.binding_count
        )
        yield GaugeMetricFamily(
            "gridsentry_rules_pack_problems",
            "Rules skipped because their pack entry is invalid",
            value=len(s.loaded_rules.problems),
        )
        yield GaugeMetricFamily(
            "gridsentry_rules_disabled_after_error",
            "Rules disabled because they failed during evaluation (each also raised a GridSentry alert)",
            value=len(e.failed_rules),
        )
        yield GaugeMetricFamily(
            "gridsentry_rules_firing", "Rule x device x metric conditions currently firing", value=e.firing().height
        )
        yield GaugeMetricFamily(
            "gridsentry_rules_last_evaluation_seconds",
            "Duration of the last rule evaluation",
            value=e.last_eval_seconds,
        )
        c = CounterMetricFamily(
            "gridsentry_rules_readings_evaluated", "Committed readings evaluated by rules", labels=[]
        )
        c.add_metric([], e.readings_evaluated)
        yield c
        c = CounterMetricFamily("gridsentry_rules_errors", "Rule evaluations that failed or were skipped", labels=[])
        c.add_metric([], s.rule_errors)
        yield c

    def _alerts(self) -> Iterator[Metric]:
        s = self.s
        c = CounterMetricFamily("gridsentry_alerts_raised", "Alerts raised since start", labels=[])
        c.add_metric([], s.alerts.raised)
        yield c
        yield from alert_families(s.screens.open_alerts_detail(), time.time())
        yield from kpi_families(s.screens.alert_kpis())

    def _screens(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "gridsentry_scrape_fleet_series",
            "Fleet series (readings and device states) served on the last scrape",
            value=self.s.screens.series_served,
        )
        c = CounterMetricFamily(
            "gridsentry_scrape_fleet_render_failures",
            "Scrapes served without the fleet families (see the log)",
            labels=[],
        )
        c.add_metric([], self.s.screens.render_failures)
        yield c
        yield GaugeMetricFamily(
            "gridsentry_scrape_fleet_render_seconds",
            "Time to render the fleet families on the last scrape",
            value=self.s.screens.last_render_seconds,
        )
        yield GaugeMetricFamily(
            "gridsentry_latest_series",
            "Device x metric pairs held in the latest-values state",
            value=self.s.screens.series_held,
        )

    def _mqtt(self) -> Iterator[Metric]:
        """Per-broker collector health, labelled `broker` (host:port)."""
        labels = ["broker"]
        received = CounterMetricFamily("gridsentry_mqtt_messages_received", "MQTT messages received", labels=labels)
        acked = CounterMetricFamily(
            "gridsentry_mqtt_messages_acked", "MQTT messages acknowledged to the broker after commit", labels=labels
        )
        connected = GaugeMetricFamily(
            "gridsentry_mqtt_connected", "1 while connected to the MQTT broker", labels=labels
        )
        failures = CounterMetricFamily(
            "gridsentry_mqtt_connection_failures", "Lost or refused MQTT connections", labels=labels
        )
        stalls = CounterMetricFamily(
            "gridsentry_mqtt_stalls",
            "Live connections that stopped delivering, or left sequence gaps, and were reconnected",
            labels=labels,
        )
        pending = GaugeMetricFamily(
            "gridsentry_ingest_pending_messages",
            "Messages received but not yet committed (unacknowledged)",
            labels=labels,
        )
        gaps = CounterMetricFamily(
            "gridsentry_ingest_sequence_gaps", "Per-device sequence gaps reported", labels=labels
        )
        missing = CounterMetricFamily(
            "gridsentry_ingest_missing_messages", "Messages missing from per-device sequences", labels=labels
        )
        for col in self.s.collectors:
            b = [f"{col.cfg.host}:{col.cfg.port}"]
            st = col.stats
            received.add_metric(b, st.messages_received)
            acked.add_metric(b, st.messages_acked)
            connected.add_metric(b, 1 if st.connected else 0)
            failures.add_metric(b, st.connection_failures)
            stalls.add_metric(b, st.stalls)
            pending.add_metric(b, st.pending)
            gaps.add_metric(b, col.sequences.gaps_reported)
            missing.add_metric(b, col.sequences.messages_missing)
        yield from (received, acked, connected, failures, stalls, pending, gaps, missing)


@dataclass(frozen=True)
class Instruments:
    """The service's registry and the histograms its stages observe into."""

    registry: CollectorRegistry
    commit_seconds: Histogram
    rule_evaluation_seconds: Histogram


def build_registry(service: Service) -> Instruments:
    """A private registry per service (tests run several services in one process)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServiceCollector(service))
    registry.register(AlertStageCollector(service.alert_stage))
    commit_seconds = Histogram(
        "gridsentry_storage_commit_seconds",
        "Time to commit one write transaction",
        buckets=COMMIT_BUCKETS,
        registry=registry,
    )
    rule_evaluation_seconds = Histogram(
        "gridsentry_rules_evaluation_seconds",
        "Time to evaluate every rule over one tick's committed readings",
        buckets=COMMIT_BUCKETS,
        registry=registry,
    )
    return Instruments(registry, commit_seconds, rule_evaluation_seconds)


def render_metrics(service: Service) -> bytes:
    """The whole /metrics body: health families from the registry, then the fleet (rendered column-wise)."""
    health = generate_latest(service.registry)
    try:
        fleet = service.screens.render_fleet()
    except Exception:  # the health families still reach Prometheus, and the failure is counted there
        service.screens.render_failures += 1
        log.exception("/metrics: the fleet families are left out of this scrape")
        fleet = ""
    return health + fleet.encode()
