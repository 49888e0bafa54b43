"""Prometheus metrics of storage health and the history jobs (yielded by gridsentry/exporter.py)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from gridsentry.service import Service


def history_metrics(s: Service) -> Iterator[Metric]:
    w = s.writer
    yield GaugeMetricFamily(
        "gridsentry_storage_writable",
        "1 while the last write transaction committed; 0 while the disk or database file is failing (disk full)",
        value=0 if w.consecutive_failures else 1,
    )
    yield GaugeMetricFamily(
        "gridsentry_storage_failing_writes",
        "Write transactions failed on storage since the last successful commit",
        value=w.consecutive_failures,
    )
    c = CounterMetricFamily(
        "gridsentry_storage_wal_quarantined", "Damaged write-ahead logs set aside at start-up", labels=[]
    )
    c.add_metric([], len(w.wal_quarantines))
    yield c
    c = CounterMetricFamily(
        "gridsentry_storage_reopens",
        "Times the database was reopened after DuckDB invalidated it (a fatal error, e.g. a checkpoint on a full disk)",
        labels=[],
    )
    c.add_metric([], w.reopens)
    yield c
    # Yielded on both tiers (zero on the live one), so the catalogue and dashboards do not depend on the tier.
    sql = s.sql.status()
    c = CounterMetricFamily(
        "gridsentry_sql_snapshot_refreshes", "Copies of the database made for engineers' SQL (snapshot tier)", labels=[]
    )
    c.add_metric([], sql.get("refreshes", 0))
    yield c
    yield GaugeMetricFamily(
        "gridsentry_sql_snapshot_refresh_seconds",
        "How long the last copy for engineers' SQL took (snapshot tier)",
        value=sql.get("last_refresh_seconds", 0.0),
    )
    c = CounterMetricFamily(
        "gridsentry_sql_worker_restarts",
        "Query processes replaced because they died or ignored their timeout and were killed (snapshot tier)",
        labels=[],
    )
    c.add_metric([], sql.get("worker_restarts", 0))
    yield c
    try:
        usage = shutil.disk_usage(s.cfg.data_dir)
        yield GaugeMetricFamily(
            "gridsentry_data_dir_free_bytes", "Free space on the data directory's file system", value=usage.free
        )
    except OSError:
        pass
    st = s.history.stats
    c = CounterMetricFamily("gridsentry_history_job_failures", "History jobs that failed, by job", labels=["job"])
    for job in ("rollup", "maintenance", "backup"):
        c.add_metric([job], st.errors.get(job, 0))
    yield c
    c = CounterMetricFamily("gridsentry_history_archived_readings", "Readings moved to the Parquet archive", labels=[])
    c.add_metric([], st.readings_archived)
    yield c
    c = CounterMetricFamily("gridsentry_history_backups", "Backups taken by this process", labels=[])
    c.add_metric([], st.backups)
    yield c
    if st.last_backup_at is not None:
        yield GaugeMetricFamily(
            "gridsentry_history_last_backup_timestamp_seconds", "When the last backup finished", value=st.last_backup_at
        )
