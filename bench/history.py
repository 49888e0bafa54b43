"""History: bytes per reading (hot table, Parquet archive) and hourly-average query time, against Prometheus.

Same run, same samples: a fleet of `--devices` connector-temperature series (°C to 0.1, a daily cycle plus a
random walk, one reading every `--interval-s`) over `--days` days is
1. ingested into GridSentry's `readings` table the way the writer does it (time-ordered batches, devices
   interleaved, rollup partials in the same transaction), checkpointed, and measured on disk;
2. moved to the Parquet archive day by day (storage/archive.py) and measured;
3. backfilled into Prometheus' TSDB with `promtool tsdb create-blocks-from openmetrics` and measured;
4. queried for the hourly average of every device over the whole span: GridSentry from `rollup_1h`, and
   from the raw readings (hot table and archive), against the PromQL range query `avg_over_time(m[1h])`
   at a 1 h step on a Prometheus serving those blocks.
Goals (issue 9): hot table <= 8.5 bytes/reading, archive <= Prometheus bytes/sample, hourly averages
>= 5x faster than PromQL.

    .venv/bin/python bench/history.py                       # 100 devices x 30 days x 1/min = 4.32 M readings
    .venv/bin/python bench/history.py --devices 20 --days 7 # quicker
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import free_port, goal_line, machine, print_table, versions
from storage import archive, rollup
from storage.writer import open_database

METRIC = "gs_connector_temp_celsius"


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def generate(con: duckdb.DuckDBPyConnection, devices: int, days: int, interval_s: int, end: datetime) -> int:
    steps = days * 86400 // interval_s
    start = end - timedelta(seconds=steps * interval_s)
    con.execute(
        f"""
        CREATE TABLE gen AS
        WITH base AS (
            SELECT s, d,
                   '{start.isoformat()}'::TIMESTAMPTZ + to_seconds(s * {interval_s}) AS ts,
                   (hash(d, s) % 1000) / 1000.0 - 0.5 AS step
            FROM range({steps}) a(s), range({devices}) b(d)
        )
        SELECT ts, 'CP' || lpad(d::VARCHAR, 4, '0') AS device_id, 'connector_temp_c' AS metric,
               round(38 + 6 * sin(2 * pi() * epoch(ts) / 86400 + d) + 0.05 * d
                     + 0.2 * sum(step) OVER (PARTITION BY d ORDER BY s), 1) AS value,
               0::UTINYINT AS quality
        FROM base
        """
    )
    return int(con.execute("SELECT count(*) FROM gen").fetchone()[0])  # type: ignore[index]


def ingest_hot(con: duckdb.DuckDBPyConnection, rows_per_batch: int) -> float:
    """Insert time-ordered batches the way the writer commits flushes; returns seconds."""
    source = con.cursor()
    reader = source.execute(
        "SELECT ts, device_id, metric, value, quality FROM gen ORDER BY ts, device_id"
    ).to_arrow_reader(rows_per_batch)
    t0 = time.perf_counter()
    for batch in reader:
        con.execute("BEGIN TRANSACTION")
        con.register("_b", batch)
        con.execute("INSERT INTO readings SELECT * FROM _b")
        con.unregister("_b")
        rollup.record_batch(con, pa.Table.from_batches([batch]))
        con.execute("COMMIT")
    con.execute("BEGIN TRANSACTION")
    rollup.fold_pending(con)
    con.execute("COMMIT")
    source.close()
    return time.perf_counter() - t0


def hot_table_bytes(con: duckdb.DuckDBPyConnection, workdir: Path) -> int:
    """Bytes the readings take in a DuckDB file of their own (file size minus an empty table's file)."""
    sizes = []
    for name, fill in (("empty", False), ("full", True)):
        path = workdir / f"hot-{name}.duckdb"
        c = duckdb.connect(str(path))
        c.execute(
            "CREATE TABLE readings (ts TIMESTAMPTZ NOT NULL, device_id VARCHAR NOT NULL, metric VARCHAR NOT NULL, "
            "value DOUBLE, quality UTINYINT NOT NULL DEFAULT 0)"
        )
        if fill:
            c.register("_src", con.execute("SELECT * FROM readings").to_arrow_table())
            c.execute("INSERT INTO readings SELECT * FROM _src")
        c.execute("CHECKPOINT")
        c.close()
        sizes.append(path.stat().st_size)
    return sizes[1] - sizes[0]


def write_openmetrics(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    body = path.with_suffix(".body")
    con.execute(
        f"""COPY (SELECT '{METRIC}{{device="' || device_id || '"}} ' || value || ' ' || epoch(ts)::BIGINT
                  FROM gen ORDER BY device_id, ts)
            TO '{body}' (FORMAT csv, HEADER false, QUOTE '', ESCAPE '', DELIMITER '\t')"""
    )
    with open(path, "wb") as out:
        out.write(f"# HELP {METRIC} Connector temperature.\n# TYPE {METRIC} gauge\n".encode())
        with open(body, "rb") as src:
            shutil.copyfileobj(src, out, 1 << 20)
        out.write(b"# EOF\n")
    body.unlink()


def prometheus_ready(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("Prometheus did not become ready")


def timed(fn: object, runs: int) -> tuple[float, object]:
    times = []
    result = None
    for _ in range(runs):
        t0 = time.perf_counter()
        result = fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, default=100)
    p.add_argument("--days", type=int, default=30)
    p.add_argument("--interval-s", type=int, default=60)
    p.add_argument("--batch-minutes", type=int, default=10, help="Readings per commit: this many minutes of the fleet.")
    p.add_argument("--runs", type=int, default=5, help="Query repetitions (median reported).")
    p.add_argument("--json", type=Path, help="Also write the figures here.")
    args = p.parse_args()
    prom_bin = shutil.which("prometheus")
    promtool = shutil.which("promtool")
    if not prom_bin or not promtool:
        print("needs Debian's prometheus and promtool (apt-get install prometheus)", file=sys.stderr)
        return 2
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=1)
    work = Path(tempfile.mkdtemp(prefix="gs-bench-history-"))
    prom = None
    try:
        db = work / "gridsentry.duckdb"
        con = open_database(db, memory_limit="2GB")
        n = generate(con, args.devices, args.days, args.interval_s, end)
        print(f"{n:,} readings: {args.devices} devices x {args.days} days, one every {args.interval_s} s")
        ingest_s = ingest_hot(con, max(1, args.devices * args.batch_minutes * 60 // args.interval_s))
        hot_bytes = hot_table_bytes(con, work)

        # Archive every day (the hot window is 0 here: everything is history).
        root = work / "archive"
        t0 = time.perf_counter()
        for day in archive.days_due(con, 0, end + timedelta(days=1)):
            rel, rows, _size, _s = archive.export_day(con, root, day)
            con.execute("BEGIN TRANSACTION")
            assert archive.commit_day(con, root, day, rel, rows)
            con.execute("COMMIT")
        archive_s = time.perf_counter() - t0
        archive_bytes = dir_bytes(root / "readings")
        assert int(con.execute("SELECT count(*) FROM readings_all").fetchone()[0]) == n  # type: ignore[index]

        om = work / "samples.om"
        write_openmetrics(con, om)
        tsdb = work / "tsdb"
        t0 = time.perf_counter()
        # Blocks as long as the span, as Prometheus' own compaction would leave them (the 2 h default makes
        # hundreds of small blocks: more index bytes and a slower query, an unfair baseline).
        span_h = args.days * 24 + 24
        subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics", f"--max-block-duration={span_h}h",
                        str(om), str(tsdb)], check=True, stdout=subprocess.DEVNULL)  # fmt: skip
        backfill_s = time.perf_counter() - t0
        om.unlink()
        prom_bytes = sum(dir_bytes(b) for b in tsdb.iterdir() if b.is_dir() and (b / "meta.json").exists())

        port = free_port()
        (work / "prometheus.yml").write_text("global: {}\nscrape_configs: []\n")
        prom = subprocess.Popen(
            [prom_bin, f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={tsdb}",
             "--storage.tsdb.retention.time=10y", f"--web.listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        prometheus_ready(url)
        lo = end - timedelta(days=args.days) + timedelta(hours=1)
        promql = urllib.parse.urlencode(
            {"query": f"avg_over_time({METRIC}[1h])", "start": lo.timestamp(), "end": end.timestamp(), "step": "3600"}
        )

        def prom_query() -> int:
            with urllib.request.urlopen(f"{url}/api/v1/query_range?{promql}", timeout=300) as r:
                body = json.load(r)
            return sum(len(s["values"]) for s in body["data"]["result"])

        def rollup_query() -> int:
            return len(
                con.execute(
                    "SELECT device_id, bucket, avg FROM rollup_1h WHERE metric = 'connector_temp_c' "
                    "AND bucket BETWEEN ? AND ? ORDER BY device_id, bucket",
                    [lo - timedelta(hours=1), end],
                ).to_arrow_table()
            )

        def raw_query() -> int:
            return len(
                con.execute(
                    "SELECT device_id, time_bucket(INTERVAL 1 HOUR, ts) AS h, avg(value) FROM readings_all "
                    "WHERE metric = 'connector_temp_c' AND ts >= ? AND ts < ? GROUP BY ALL ORDER BY 1, 2",
                    [lo - timedelta(hours=1), end],
                ).to_arrow_table()
            )

        prom_query()  # warm the page cache and Prometheus' block readers, as for the others
        prom_s, prom_points = timed(prom_query, args.runs)
        rollup_query()
        rollup_s, rollup_points = timed(rollup_query, args.runs)
        raw_query()
        raw_s, raw_points = timed(raw_query, args.runs)
        con.close()

        figures = {
            "readings": n,
            "ingest_s": round(ingest_s, 2),
            "hot_bytes_per_reading": round(hot_bytes / n, 3),
            "archive_bytes_per_reading": round(archive_bytes / n, 3),
            "prometheus_bytes_per_sample": round(prom_bytes / n, 3),
            "archive_s": round(archive_s, 2),
            "promtool_backfill_s": round(backfill_s, 2),
            "promql_hourly_avg_s": round(prom_s, 4),
            "rollup_hourly_avg_s": round(rollup_s, 4),
            "raw_hourly_avg_s": round(raw_s, 4),
            "points": {"promql": prom_points, "rollup": rollup_points, "raw": raw_points},
            "machine": machine(),
            "versions": versions(),
        }
        print_table(
            ["store", "bytes/reading", "vs Prometheus"],
            [
                ["DuckDB hot table", f"{hot_bytes / n:.2f}", f"{hot_bytes / prom_bytes:.2f}x"],
                ["Parquet archive", f"{archive_bytes / n:.2f}", f"{archive_bytes / prom_bytes:.2f}x"],
                ["Prometheus TSDB (baseline)", f"{prom_bytes / n:.2f}", "1.00x"],
            ],
        )
        print_table(
            ["hourly averages, whole span", "seconds (median)", "points", "speed-up vs PromQL"],
            [
                ["GridSentry rollup_1h", f"{rollup_s:.4f}", rollup_points, f"{prom_s / rollup_s:.1f}x"],
                ["GridSentry raw readings", f"{raw_s:.4f}", raw_points, f"{prom_s / raw_s:.1f}x"],
                ["PromQL avg_over_time[1h] (baseline)", f"{prom_s:.4f}", prom_points, "1.0x"],
            ],
        )
        print(goal_line("hot table <= 8.5 bytes/reading", hot_bytes / n <= 8.5, f"{hot_bytes / n:.2f}"))
        print(
            goal_line(
                "archive <= Prometheus bytes/sample",
                archive_bytes <= prom_bytes,
                f"{archive_bytes / n:.2f} vs {prom_bytes / n:.2f}",
            )
        )
        print(
            goal_line("hourly averages >= 5x faster than PromQL", prom_s / rollup_s >= 5, f"{prom_s / rollup_s:.1f}x")
        )
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2, default=str))
        return 0
    finally:
        if prom is not None:
            prom.terminate()
            prom.wait(10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
