"""`gridsentry_modbus_*` link-health metric families, built at scrape time from the pollers' counters."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

if TYPE_CHECKING:  # the exporter imports this module; pymodbus loads only when a device is polled
    from collector.modbus.collector import ModbusCollector

#: Request latency buckets (seconds): loopback answers in about a millisecond, RS-485 in hundreds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def modbus_metrics(collector: ModbusCollector | None) -> Iterator[Metric]:
    labels = ["device_id", "link"]
    polls = CounterMetricFamily("gridsentry_modbus_polls", "Modbus polls started, per device", labels=labels)
    failed = CounterMetricFamily(
        "gridsentry_modbus_polls_failed", "Modbus polls the device did not answer (timeout, refused)", labels=labels
    )
    requests = CounterMetricFamily("gridsentry_modbus_requests", "Modbus read requests sent", labels=labels)
    errors = CounterMetricFamily(
        "gridsentry_modbus_errors",
        "Modbus request errors by kind: timeout, connection, exception_NN (device exception code), decode",
        labels=[*labels, "kind"],
    )
    point_errors = CounterMetricFamily(
        "gridsentry_modbus_point_errors",
        "Points that could not be read or decoded, by metric and kind (their readings are flagged suspect)",
        labels=["device_id", "metric", "kind"],
    )
    latency = HistogramMetricFamily(
        "gridsentry_modbus_request_duration_seconds", "Time from a Modbus request to its answer", labels=labels
    )
    up = GaugeMetricFamily(
        "gridsentry_modbus_device_up", "1 while the device answers its polls, 0 once reported offline", labels=labels
    )
    last = GaugeMetricFamily(
        "gridsentry_modbus_last_success_timestamp_seconds", "Unix time of the last answered poll", labels=labels
    )
    backoff = GaugeMetricFamily(
        "gridsentry_modbus_backoff_seconds",
        "Extra delay beyond the poll interval while the device keeps failing (0 when healthy)",
        labels=labels,
    )
    failures = GaugeMetricFamily(
        "gridsentry_modbus_consecutive_failures", "Failed polls in a row (0 when healthy)", labels=labels
    )
    refused = CounterMetricFamily(
        "gridsentry_modbus_merged_reads_refused",
        "Merged reads the device refused, now read point by point",
        labels=labels,
    )
    readings = CounterMetricFamily("gridsentry_modbus_readings", "Readings decoded from Modbus polls", labels=labels)
    interval = GaugeMetricFamily("gridsentry_modbus_poll_interval_seconds", "Configured poll interval", labels=labels)
    jitter = GaugeMetricFamily(
        "gridsentry_modbus_poll_jitter_p99_seconds",
        "99th percentile of how late polls started against their schedule (recent polls)",
        labels=labels,
    )
    map_errors = CounterMetricFamily(
        "gridsentry_modbus_map_errors", "Register maps refused at start or reload (the running one is kept)", labels=[]
    )
    map_reloads = CounterMetricFamily(
        "gridsentry_modbus_map_reloads", "Register maps reloaded after a change", labels=[]
    )
    pollers = collector.pollers.values() if collector is not None else ()
    for p in pollers:
        h = p.health
        lv = [h.device_id, h.link]
        polls.add_metric(lv, h.polls)
        failed.add_metric(lv, h.polls_failed)
        requests.add_metric(lv, h.requests)
        for kind, n in sorted(h.errors.items()):
            errors.add_metric([*lv, kind], n)
        for (metric, kind), n in sorted(h.point_errors.items()):
            point_errors.add_metric([h.device_id, metric, kind], n)
        cumulative = 0
        buckets = []
        for bound, n in zip(LATENCY_BUCKETS, h.latency_buckets, strict=True):
            cumulative += n
            buckets.append((repr(bound), cumulative))
        buckets.append(("+Inf", h.latency_count))
        latency.add_metric(lv, buckets, h.latency_sum)
        up.add_metric(lv, 0 if h.online is False else 1 if h.online else 0)
        if h.last_success:
            last.add_metric(lv, h.last_success)
        backoff.add_metric(lv, h.backoff_s)
        failures.add_metric(lv, h.consecutive_failures)
        refused.add_metric(lv, h.merged_reads_refused)
        readings.add_metric(lv, h.readings)
        interval.add_metric(lv, h.interval_s)
        if h.jitter_s:
            late = sorted(h.jitter_s)
            jitter.add_metric(lv, late[int(0.99 * (len(late) - 1))])
    map_errors.add_metric([], collector.stats.map_errors if collector else 0)
    map_reloads.add_metric([], collector.stats.map_reloads if collector else 0)
    yield from (polls, failed, requests, errors, point_errors, latency, up, last, backoff, failures, refused)
    yield from (readings, interval, jitter, map_errors, map_reloads)
