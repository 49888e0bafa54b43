"""How long the maintenance report takes on a fleet-sized month of hourly rollups.

    .venv/bin/python bench/maintenance.py [--chargers 200] [--inverters 40] [--transformers 20] [--days 30]

Builds `rollup_1h` for the fleet (DC chargers with two gun temperatures, PV inverters with eight string
currents, transformers with top oil), one fault event a device a week and a few hundred alerts, then times
(median of 3) build_maintenance + Markdown against one aggregate scan of the period's rollups, measured in the
same run: the ratio says how much work the report adds over reading its input once.
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import UTC, datetime, timedelta

import duckdb

from reports.maintenance import build_maintenance, render_markdown
from storage.schema import migrate


def build(
    con: duckdb.DuckDBPyConnection, chargers: int, inverters: int, transformers: int, days: int, end: datetime
) -> None:
    migrate(con)
    con.execute(
        """
        INSERT INTO devices (device_id, site, kind, model, rated_kw, commissioned)
        SELECT 'DC' || i, 'site' || (i % 5), 'charger_dc', 'QH-DC120', 120, DATE '2018-01-01' + INTERVAL (i * 7) DAY
        FROM range(?) t(i)
        UNION ALL SELECT 'INV' || i, 'site' || (i % 5), 'pv_inverter', 'NS-50K', 50, NULL FROM range(?) t(i)
        UNION ALL SELECT 'TX' || i, 'site' || (i % 5), 'box_transformer', 'ZGS11', 630, NULL FROM range(?) t(i)
        """,
        [chargers, inverters, transformers],
    )
    start = end - timedelta(days=days)
    con.execute(
        """
        INSERT INTO rollup_1h (device_id, metric, bucket, count, sum, avg)
        WITH hours AS (SELECT unnest(generate_series(?::TIMESTAMPTZ, ?::TIMESTAMPTZ - INTERVAL 1 HOUR, INTERVAL 1 HOUR)) AS bucket),
        pts AS (
            SELECT device_id, m AS metric FROM devices, unnest(['gun1_temp_c', 'gun2_temp_c']) t(m) WHERE kind = 'charger_dc'
            UNION ALL SELECT device_id, 'string' || s || '_current_a' FROM devices, range(1, 9) t(s) WHERE kind = 'pv_inverter'
            UNION ALL SELECT device_id, 'ac_power_kw' FROM devices WHERE kind = 'pv_inverter'
            UNION ALL SELECT device_id, 'top_oil_temp_c' FROM devices WHERE kind = 'box_transformer'
        )
        SELECT device_id, metric, bucket, 60, 60 * v, v FROM (
            SELECT device_id, metric, bucket,
                   CASE WHEN metric LIKE 'string%' THEN 8.0 * (CASE WHEN device_id = 'INV1' AND metric = 'string3_current_a' THEN 0.6 ELSE 1 END)
                        WHEN metric = 'ac_power_kw' THEN 30.0
                        ELSE 45.0 + (hash(device_id) % 7) END AS v
            FROM pts, hours
        )
        """,
        [start, end],
    )
    con.execute(
        """
        INSERT INTO events SELECT ? - INTERVAL (d * 7 + 1) DAY, device_id, 'fault', 'GunOverTemp', NULL
        FROM devices, range(?) t(d) WHERE kind = 'charger_dc'
        """,
        [end, max(1, days // 7)],
    )
    con.execute(
        """
        INSERT INTO alerts (fingerprint, rule_id, device_id, site, event_class, state, title, message, fired_at,
                            created_at, updated_at, forecast)
        SELECT 'fp' || device_id, 'tx_top_oil_forecast', device_id, site, 'II', 'firing', 'Top oil heading for max',
               'm', ? - INTERVAL 1 HOUR, ? - INTERVAL 1 HOUR, ? - INTERVAL 1 HOUR, 'reaches 95 °C in about 5 h'
        FROM devices WHERE kind = 'box_transformer'
        """,
        [end, end, end],
    )


def median_of_3(fn: object) -> float:
    times = []
    for _ in range(3):
        t = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chargers", type=int, default=200)
    ap.add_argument("--inverters", type=int, default=40)
    ap.add_argument("--transformers", type=int, default=20)
    ap.add_argument("--days", type=int, default=30)
    args = ap.parse_args()
    end = datetime(2026, 11, 1, tzinfo=UTC)
    con = duckdb.connect()
    t = time.perf_counter()
    build(con, args.chargers, args.inverters, args.transformers, args.days, end)
    rows = con.execute("SELECT count(*) FROM rollup_1h").fetchone()
    print(f"fleet: {args.chargers} DC chargers, {args.inverters} inverters, {args.transformers} transformers, "
          f"{args.days} days: {rows[0] if rows else 0:,} hourly rollup rows (built in {time.perf_counter() - t:.1f} s)")  # fmt: skip
    start = end - timedelta(days=args.days)

    def baseline() -> None:
        con.execute(
            "SELECT device_id, metric, sum(sum) / sum(count), count(DISTINCT bucket) FROM rollup_1h "
            "WHERE bucket >= ? AND bucket < ? GROUP BY ALL",
            [start, end],
        ).fetchall()

    def report() -> None:
        render_markdown(build_maintenance(con, now=end, days=args.days))

    def one_site() -> None:
        render_markdown(build_maintenance(con, now=end, days=args.days, site="site0"))

    base = median_of_3(baseline)
    full = median_of_3(report)
    site = median_of_3(one_site)
    top = build_maintenance(con, now=end, days=args.days, limit=3).priorities
    print("| step (median of 3) | seconds | vs one scan |")
    print("|---|---|---|")
    print(f"| one aggregate scan of the period's rollups (baseline) | {base:.3f} | 1.0x |")
    print(f"| build_maintenance + Markdown, whole fleet | {full:.3f} | {full / base:.1f}x |")
    print(f"| build_maintenance + Markdown, --site site0 | {site:.3f} | {site / base:.1f}x |")
    print("top 3:", "; ".join(f"{p.device_id} {p.score:.0f} ({p.reasons[0]})" for p in top))


if __name__ == "__main__":
    main()
