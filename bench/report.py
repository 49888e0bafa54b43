"""Monthly report: how long `build_monthly` takes on a month of a mid-sized fleet, against one plain scan.

A fleet of `--chargers` AC piles, `--inverters` PV inverters and `--transformers` box transformers reports
every `--interval-s` for a 30-day month (the metrics the report reads plus a few it does not), with one
silent hour per device, generated in DuckDB. Timed, median of `--repeat` runs on the same file:
1. the baseline: one aggregate scan of the month's readings (count and mean per device and metric), the least
   any spreadsheet export of the month costs;
2. `build_monthly` (all sections, Markdown rendering included), and `render_html` + `write_xlsx`.
The ratio says how many such scans a full report costs.

    .venv/bin/python bench/report.py                        # 60 devices x 30 days x 1/min = 17 M readings
    .venv/bin/python bench/report.py --chargers 10 --inverters 4 --transformers 2   # quicker
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reports.monthly import build_monthly, render_html, render_markdown, write_xlsx
from storage.schema import migrate

METRICS = {
    "charger_ac": ("power_kw", "energy_kwh", "voltage_v", "current_a", "connector_temp_c"),
    "pv_inverter": ("ac_power_kw", "dc_power_kw", "energy_kwh", "irradiance_wm2", "heatsink_temp_c"),
    "box_transformer": ("load_kva", "load_factor", "top_oil_temp_c", "hot_spot_temp_c", "lv_voltage_v"),
}


def build_db(path: Path, counts: dict[str, int], interval_s: int) -> int:
    con = duckdb.connect(str(path))
    migrate(con)
    rated = {"charger_ac": 7.0, "pv_inverter": 50.0, "box_transformer": 630.0}
    for kind, n in counts.items():
        for i in range(n):
            con.execute(
                "INSERT INTO devices (device_id, site, kind, rated_kw, expected_interval_s) VALUES (?, ?, ?, ?, ?)",
                [f"{kind[:2].upper()}{i:03d}", f"site{i % 3}", kind, rated[kind], interval_s],
            )
    for kind, metrics in METRICS.items():
        names = ", ".join(f"'{m}'" for m in metrics)
        # One silent hour per device (a different hour each), so the gap logic has work to do.
        con.execute(
            f"""
            INSERT INTO readings
            SELECT t.ts, d.device_id, m.metric,
                   CASE m.metric
                       WHEN 'energy_kwh' THEN epoch(t.ts) / 3600.0 * 3
                       WHEN 'irradiance_wm2' THEN greatest(0, 900 * sin(pi() * (hour(t.ts) - 22) / 12))
                       WHEN 'load_factor' THEN 0.4 + 0.7 * sin(pi() * hour(t.ts) / 24)
                       ELSE 20 + random() * 10 END,
                   0
            FROM devices d,
                 range(TIMESTAMPTZ '2026-01-31 16:00:00+00', TIMESTAMPTZ '2026-03-01 16:00:00+00',
                       INTERVAL {interval_s} SECOND) t(ts),
                 (SELECT unnest([{names}]) AS metric) m
            WHERE d.kind = '{kind}'
              AND NOT (day(t.ts) = 10 AND hour(t.ts) = hash(d.device_id) % 24)
            ORDER BY t.ts
            """
        )
    rows = con.execute("SELECT count(*) FROM readings").fetchone()
    con.execute("CHECKPOINT")
    con.close()
    return int(rows[0]) if rows else 0


def timed(fn: object, repeat: int) -> float:
    assert callable(fn)
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chargers", type=int, default=40)
    ap.add_argument("--inverters", type=int, default=12)
    ap.add_argument("--transformers", type=int, default=8)
    ap.add_argument("--interval-s", type=int, default=60)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    zone = ZoneInfo("Asia/Shanghai")
    with tempfile.TemporaryDirectory(prefix="bench-report-") as tmp:
        db = Path(tmp) / "gridsentry.duckdb"
        t0 = time.perf_counter()
        counts = {"charger_ac": args.chargers, "pv_inverter": args.inverters, "box_transformer": args.transformers}
        readings = build_db(db, counts, args.interval_s)
        print(
            f"fleet: {sum(counts.values())} devices, {readings:,} readings, built in {time.perf_counter() - t0:.1f} s"
        )
        con = duckdb.connect(str(db), read_only=True)

        def baseline() -> None:
            con.execute(
                "SELECT device_id, metric, count(*), avg(value) FROM readings_all "
                "WHERE ts >= TIMESTAMPTZ '2026-02-01 00:00:00+08' AND ts < TIMESTAMPTZ '2026-03-01 00:00:00+08' GROUP BY ALL"
            ).fetchall()

        def report() -> None:
            render_markdown(build_monthly(con, "2026-02", zone))

        report_once = build_monthly(con, "2026-02", zone)

        def formats() -> None:
            render_html(report_once)
            write_xlsx(report_once, Path(tmp) / "report.xlsx")

        base_s = timed(baseline, args.repeat)
        report_s = timed(report, args.repeat)
        formats_s = timed(formats, args.repeat)
        site_s = timed(lambda: build_monthly(con, "2026-02", zone, site="site0"), args.repeat)
        con.close()
    print(f"| step (median of {args.repeat}) | seconds | vs one scan |")
    print("|---|---|---|")
    print(f"| one aggregate scan of the month (baseline) | {base_s:.3f} | 1.0x |")
    print(f"| build_monthly + Markdown, all sites | {report_s:.3f} | {report_s / base_s:.1f}x |")
    print(f"| build_monthly, --site site0 (a third of the fleet) | {site_s:.3f} | {site_s / base_s:.1f}x |")
    print(f"| render_html + write_xlsx | {formats_s:.3f} | {formats_s / base_s:.2f}x |")


if __name__ == "__main__":
    main()
