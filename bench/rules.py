"""Rule-engine tick time at fleet scale, against plain DuckDB SQL on the same threshold rules.

One tick = every device reports once (one reading per metric it publishes) and every rule of the
default packs is evaluated: thresholds on the new readings, windowed kinds (trend, rate, stuck,
deviation, expression) over one hour of bucketed history, offline and data-gap on last-seen
times, then the state machine. The windowed kinds run on every tick measured (the worst case;
in service they run once per bucket).

Baseline, measured in the same run: the threshold rules of the same packs as one DuckDB SQL join
of the tick's readings with the rule bindings (no state, no windows), i.e. what a plain
"thresholds in SQL" evaluation costs. Figures: tick time (median, p90), readings/s and
bindings/s for both, and their ratio.

    .venv/bin/python bench/rules.py                # 10,000 devices, default packs, 20 ticks
    .venv/bin/python bench/rules.py --devices 2000 --ticks 10
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rules.engine import DeviceInfo, RuleEngine, SiteInfo
from rules.loader import builtin_pack_files, load_packs
from simulator.fleet import METRIC_UNITS, DeviceSpec, metric_names

KINDS = ("charger_ac", "charger_dc", "pv_inverter", "box_transformer")
# Typical healthy levels per metric suffix, so nothing fires and the state machine does its normal work.
LEVELS = {"_temp_c": 40.0, "_kw": 20.0, "_kwh": 5000.0, "_v": 230.0, "_a": 10.0, "_pct": 50.0, "_kohm": 3000.0}


def level(metric: str) -> float:
    if metric == "load_factor":
        return 0.5
    if metric == "irradiance_wm2":
        return 600.0
    for suffix, v in LEVELS.items():
        if metric.endswith(suffix):
            return v
    return 1.0


def fleet(n: int, sites: int) -> list[DeviceSpec]:
    out = []
    for i in range(n):
        kind = KINDS[i % len(KINDS)]
        site = f"S{i % sites:03d}"
        out.append(
            DeviceSpec(
                id=f"D{i:05d}",
                site=site,
                kind=kind,
                vendor="bench",
                model="M",
                rated_kw=630.0 if kind == "box_transformer" else 50.0,
                parent=None,
                interval_s=30.0,
                strings=4 if kind == "pv_inverter" else 0,
            )
        )
    return out


def readings_at(devices: list[DeviceSpec], ts: datetime, rng: random.Random) -> pa.Table:
    ids: list[str] = []
    names: list[str] = []
    base: list[float] = []
    for d in devices:
        for m in metric_names(d):
            ids.append(d.id)
            names.append(m)
            base.append(level(m))
    values = [b * (1.0 + rng.gauss(0.0, 0.01)) for b in base]
    n = len(ids)
    return pa.table(
        {
            "ts": pa.array([ts] * n, pa.timestamp("us", tz="UTC")),
            "device_id": pa.array(ids, pa.string()),
            "metric": pa.array(names, pa.string()),
            "value": pa.array(values, pa.float64()),
            "quality": pa.array([0] * n, pa.uint8()),
        }
    )


def sql_baseline(con: duckdb.DuckDBPyConnection, batch: pa.Table) -> int:
    con.register("tick", batch)
    row = con.execute(
        """
        SELECT count(*) FILTER (WHERE (b.above IS NOT NULL AND r.value > b.above)
                                   OR (b.below IS NOT NULL AND r.value < b.below)),
               count(*)
        FROM tick r JOIN bindings b USING (device_id, metric)
        WHERE r.quality = 0
        """
    ).fetchone()
    con.unregister("tick")
    assert row is not None
    return int(row[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=10_000)
    ap.add_argument("--sites", type=int, default=250)
    ap.add_argument("--ticks", type=int, default=20)
    ap.add_argument("--history-min", type=int, default=60, help="minutes of bucketed history primed first")
    ap.add_argument("--goal-ms", type=float, default=100.0)
    args = ap.parse_args()

    loaded = load_packs(builtin_pack_files())
    assert not loaded.problems, loaded.problems
    devices = fleet(args.devices, args.sites)
    engine = RuleEngine(loaded.rules + loaded.disabled, METRIC_UNITS, overrides=loaded.overrides)
    t = time.perf_counter()
    engine.set_devices(
        DeviceInfo(d.id, d.site, d.kind, (), d.rated_kw, d.interval_s, d.parent, d.model) for d in devices
    )
    engine.set_sites(SiteInfo(f"S{i:03d}", 22.5, 114.0) for i in range(args.sites))
    bind_s = time.perf_counter() - t
    rng = random.Random(1)
    now = datetime(2026, 7, 1, 4, 0, tzinfo=UTC)
    t = time.perf_counter()
    history = now - timedelta(minutes=args.history_min)
    step = timedelta(seconds=engine.bucket_us / 1e6)
    while history < now:
        engine.prime(readings_at(devices, history, rng))
        history += step
    prime_s = time.perf_counter() - t

    threshold_bindings = engine._bindings.filter(pl.col("kind") == "threshold").select(
        "device_id", "metric", "above", "below"
    )
    con = duckdb.connect()
    con.execute("SET threads = 2")
    con.register("bindings_arrow", threshold_bindings.to_arrow())
    con.execute("CREATE TABLE bindings AS SELECT * FROM bindings_arrow")

    engine_times: list[float] = []
    sql_times: list[float] = []
    readings = 0
    fired = 0
    for i in range(args.ticks + 2):
        now += step
        batch = readings_at(devices, now, rng)
        t = time.perf_counter()
        findings = engine.evaluate(batch, now=now)
        e_s = time.perf_counter() - t
        t = time.perf_counter()
        sql_rows = sql_baseline(con, batch)
        s_s = time.perf_counter() - t
        if i >= 2:  # the first ticks warm Polars' and DuckDB's caches
            engine_times.append(e_s)
            sql_times.append(s_s)
            readings = batch.num_rows
            fired += len(findings)

    def p90(xs: list[float]) -> float:
        return sorted(xs)[max(0, int(len(xs) * 0.9) - 1)]

    e_med, s_med = statistics.median(engine_times), statistics.median(sql_times)
    kinds_count = engine._bindings.group_by("kind").len().sort("kind")
    print(
        f"rule engine bench: {args.devices:,} devices at {args.sites} sites, {len(engine.rules)} rules "
        f"(default packs), {engine.binding_count:,} rule x device x metric bindings"
    )
    print("bindings by kind: " + ", ".join(f"{k} {n:,}" for k, n in kinds_count.iter_rows()))
    print(
        f"setup: bind {bind_s:.2f} s, prime {args.history_min} min of history {prime_s:.1f} s "
        f"({engine._buckets.height:,} buckets in the window store)"
    )
    print(f"tick: {readings:,} readings (every device reports), {args.ticks} ticks measured, findings {fired}")
    print(
        f"  GridSentry engine (all kinds + state): median {e_med * 1000:7.1f} ms  p90 {p90(engine_times) * 1000:7.1f} ms"
        f"  {readings / e_med:12,.0f} readings/s"
    )
    print(
        f"  DuckDB SQL, thresholds only (baseline): median {s_med * 1000:7.1f} ms  p90 {p90(sql_times) * 1000:7.1f} ms"
        f"  {readings / s_med:12,.0f} readings/s  ({sql_rows:,} threshold bindings joined)"
    )
    print(
        f"  ratio engine/baseline tick time: {e_med / s_med:.2f}x  (the engine also runs trend, rate, stuck, "
        "deviation, expression, offline and the state machine)"
    )
    verdict = "PASS" if e_med * 1000 < args.goal_ms else "FAIL"
    print(f"goal: one tick < {args.goal_ms:g} ms -> {verdict}")


if __name__ == "__main__":
    main()
