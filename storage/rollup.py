"""Rollups: `rollup_1m` and `rollup_1h` (count, min, max, avg, sum, last) maintained incrementally.

Each committed batch leaves its own partial aggregates in `rollup_pending`, inside the batch's
transaction, so a crash can never commit readings without their partials (or the reverse). The
rollup job folds the pending partials into both rollup tables, again in one transaction: partials
combine exactly (min of mins, sum of sums, the last value by time), so readings arriving out of
order, late, or into a day already archived still land in the right bucket and no reading is
rescanned. Buckets are UTC minutes and hours (`time_bucket`), independent of the session time zone.

Only values of good (0) or substituted (4) quality are rolled up: suspect, out-of-range and stale
values stay in `readings` for forensics but would poison averages and trends.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import duckdb
import pyarrow as pa

log = logging.getLogger(__name__)

ROLLED_UP_QUALITIES = (0, 4)

_PARTIALS = """
    SELECT device_id, metric, time_bucket(INTERVAL 1 MINUTE, ts) AS bucket,
           count(value) AS count, min(value) AS min, max(value) AS max, sum(value) AS sum,
           arg_max(value, ts) AS last, max(ts) AS last_ts
    FROM {source}
    WHERE value IS NOT NULL AND isfinite(value) AND quality IN (0, 4){extra}
    GROUP BY ALL
"""

_COMBINE = """
    SELECT device_id, metric, bucket, sum(count)::BIGINT AS count, min(min) AS min, max(max) AS max,
           sum(sum) AS sum, arg_max(last, last_ts) AS last, max(last_ts) AS last_ts
    FROM ({inner}) GROUP BY ALL
"""

_PARTIAL_COLUMNS = "device_id, metric, bucket, count, min, max, sum, last, last_ts"


def record_batch(con: duckdb.DuckDBPyConnection, readings: pa.Table) -> None:
    """Write the batch's partial aggregates to `rollup_pending` (call inside the batch's transaction)."""
    if readings.num_rows == 0:
        return
    con.register("_rollup_batch", readings)
    try:
        con.execute(f"INSERT INTO rollup_pending BY NAME {_PARTIALS.format(source='_rollup_batch', extra='')}")
    finally:
        con.unregister("_rollup_batch")


@dataclass(frozen=True, slots=True)
class FoldResult:
    pending_rows: int
    minute_rows: int
    hour_rows: int


def fold_pending(con: duckdb.DuckDBPyConnection) -> FoldResult:
    """Fold every pending partial into rollup_1m and rollup_1h (call inside one writer transaction)."""
    row = con.execute("SELECT count(*), min(bucket), max(bucket) FROM rollup_pending").fetchone()
    if row is None or not row[0]:
        return FoldResult(0, 0, 0)
    pending, lo, hi = int(row[0]), row[1], row[2]
    minute_rows = _fold_into(con, "rollup_1m", "bucket", lo, hi)
    hour_rows = _fold_into(con, "rollup_1h", "time_bucket(INTERVAL 1 HOUR, bucket)", lo, hi)
    con.execute("DELETE FROM rollup_pending")
    return FoldResult(pending, minute_rows, hour_rows)


def _fold_into(con: duckdb.DuckDBPyConnection, table: str, bucket_expr: str, lo: object, hi: object) -> int:
    # The range on `bucket` lets DuckDB skip row groups by their min/max instead of scanning the rollup.
    span = "bucket BETWEEN time_bucket(INTERVAL 1 HOUR, ?::TIMESTAMPTZ) AND ?::TIMESTAMPTZ"
    fresh = (
        f"SELECT device_id, metric, {bucket_expr} AS bucket, count, min, max, sum, last, last_ts FROM rollup_pending"
    )
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _rollup_fold AS
        WITH fresh AS ({_COMBINE.format(inner=fresh)}),
        old AS (
            SELECT {_PARTIAL_COLUMNS} FROM {table} r
            WHERE {span} AND EXISTS (
                SELECT 1 FROM fresh f WHERE f.device_id = r.device_id AND f.metric = r.metric AND f.bucket = r.bucket
            )
        )
        {_COMBINE.format(inner=f"SELECT {_PARTIAL_COLUMNS} FROM fresh UNION ALL SELECT {_PARTIAL_COLUMNS} FROM old")}
        """,
        [lo, hi],
    )
    con.execute(
        f"""
        DELETE FROM {table} r USING _rollup_fold f
        WHERE r.{span} AND r.device_id = f.device_id AND r.metric = f.metric AND r.bucket = f.bucket
        """,
        [lo, hi],
    )
    con.execute(
        f"INSERT INTO {table} (device_id, metric, bucket, count, min, max, avg, sum, last, last_ts) "
        "SELECT device_id, metric, bucket, count, min, max, sum / count, sum, last, last_ts FROM _rollup_fold "
        "ORDER BY bucket, device_id, metric"
    )
    n = con.execute("SELECT count(*) FROM _rollup_fold").fetchone()
    con.execute("DROP TABLE _rollup_fold")
    return int(n[0]) if n else 0


def rebuild(con: duckdb.DuckDBPyConnection, since: object = None, until: object = None) -> FoldResult:
    """Recompute the rollups of whole UTC hours from every stored reading (hot and archived), e.g. after
    readings were restored without rollups. `since`/`until` widen to whole hours. One writer transaction."""
    where = ["true"]
    params: list[object] = []
    if since is not None:
        where.append("{col} >= time_bucket(INTERVAL 1 HOUR, ?::TIMESTAMPTZ)")
        params.append(since)
    if until is not None:
        where.append("{col} < time_bucket(INTERVAL 1 HOUR, ?::TIMESTAMPTZ + INTERVAL 59 MINUTE 59 SECOND)")
        params.append(until)
    cond = " AND ".join(where)
    fold_pending(con)  # partials outside the range must not be lost
    con.execute(f"DELETE FROM rollup_1m WHERE {cond.format(col='bucket')}", params)
    con.execute(f"DELETE FROM rollup_1h WHERE {cond.format(col='bucket')}", params)
    con.execute(
        f"INSERT INTO rollup_pending BY NAME "
        f"{_PARTIALS.format(source='readings_all', extra=' AND ' + cond.format(col='ts'))}",
        params,
    )
    return fold_pending(con)
