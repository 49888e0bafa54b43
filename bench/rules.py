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

    .venv/bin/python bench/rules.py                # 10,000 devices, default packs
    .venv/bin/python bench/rules.py --devices 2000 --ticks 5 --service-s 30
"""

from __future__ import annotations

import argparse
import os
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


_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


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


class Readings:
    """One reading per device and metric, as a Polars frame; values jitter 1 % around typical levels."""

    def __init__(self, devices: list[DeviceSpec], seed: int = 1) -> None:
        rows = [(d.id, m, level(m)) for d in devices for m in metric_names(d)]
        self.base = pl.DataFrame(
            rows, schema={"device_id": pl.String, "metric": pl.String, "base": pl.Float64}, orient="row"
        )
        rng = random.Random(seed)
        self.noise = pl.Series([rng.gauss(0.0, 0.01) for _ in range(min(self.base.height, 200_000))])
        self.calls = 0

    def at(self, ts: datetime, devices: pl.Series | None = None) -> pa.Table:
        base = self.base if devices is None else self.base.filter(pl.col("device_id").is_in(devices.implode()))
        self.calls += 1
        jitter = self.noise.sample(base.height, with_replacement=True, seed=self.calls)
        # Energy registers count up (a jittering register would be a counter regression every tick).
        counting = pl.col("base") + (ts - _EPOCH).total_seconds() * 0.01
        return base.select(
            ts=pl.lit(ts, pl.Datetime("us", "UTC")),
            device_id="device_id",
            metric="metric",
            value=pl.when(pl.col("metric").str.ends_with("_kwh"))
            .then(counting)
            .otherwise(pl.col("base") * (1.0 + jitter)),
            quality=pl.lit(0, pl.UInt8),
        ).to_arrow()


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
    ap.add_argument("--ticks", type=int, default=5, help="full-sweep ticks to measure")
    ap.add_argument("--history-min", type=int, default=60, help="minutes of bucketed history primed first")
    ap.add_argument("--goal-ms", type=float, default=100.0)
    ap.add_argument("--tick-ms", type=int, default=500, help="service tick (rules.tick_ms)")
    ap.add_argument("--cadence", type=float, default=30.0, help="seconds between two reports of one device")
    ap.add_argument("--service-s", type=float, default=60.0, help="seconds of service ticks to measure")
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
    source = Readings(devices)
    now = datetime(2026, 7, 1, 4, 0, tzinfo=UTC)
    t = time.perf_counter()
    history = now - timedelta(minutes=args.history_min)
    step = timedelta(seconds=engine.bucket_us / 1e6)
    while history < now:
        engine.prime(source.at(history))
        history += step
    engine.evaluate(source.at(now), now=now)  # the first windowed pass builds the window sums from scratch
    prime_s = time.perf_counter() - t

    threshold_bindings = engine._bindings.filter(pl.col("kind") == "threshold").select(
        "device_id", "metric", "above", "below"
    )
    con = duckdb.connect()
    con.execute("SET threads = 2")
    con.register("bindings_arrow", threshold_bindings.to_arrow())
    con.execute("CREATE TABLE bindings AS SELECT * FROM bindings_arrow")

    # (a) Service ticks: every device reports every `cadence` s; a tick carries what committed in
    # the last `tick_ms`. Windowed kinds run when a bucket boundary passes (once per bucket).
    ids = pl.Series([d.id for d in devices])
    per_tick = max(1, round(len(devices) * args.tick_ms / 1000 / args.cadence))
    service: list[float] = []
    service_sql: list[float] = []
    pass_ticks: list[float] = []
    tick = timedelta(milliseconds=args.tick_ms)
    n_ticks = int(args.service_s * 1000 / args.tick_ms)
    tick_readings = 0
    for i in range(n_ticks):
        now += tick
        chunk = ids.slice((i * per_tick) % len(devices), per_tick)
        batch = source.at(now, chunk)
        before = engine.shard_passes
        t = time.perf_counter()
        engine.evaluate(batch, now=now)
        e_s = time.perf_counter() - t
        t = time.perf_counter()
        sql_baseline(con, batch)
        service_sql.append(time.perf_counter() - t)
        tick_readings = batch.num_rows
        (pass_ticks if engine.shard_passes != before else service).append(e_s)

    # (b) Full sweep: every device reports in one tick, and a windowed pass runs on each.
    sweep: list[float] = []
    sweep_sql: list[float] = []
    readings = 0
    for i in range(args.ticks + 1):
        now += step
        batch = source.at(now)
        t = time.perf_counter()
        engine.evaluate(batch, now=now)
        e_s = time.perf_counter() - t
        t = time.perf_counter()
        sql_rows = sql_baseline(con, batch)
        s_s = time.perf_counter() - t
        if i >= 1:  # the first sweep pays for every series touched at once after the service ticks
            sweep.append(e_s)
            sweep_sql.append(s_s)
            readings = batch.num_rows

    def p90(xs: list[float]) -> float:
        return sorted(xs)[min(len(xs) - 1, int(len(xs) * 0.9))] if xs else float("nan")

    def ms(x: float) -> str:
        return f"{x * 1000:7.1f} ms"

    kinds_count = engine._bindings.group_by("kind").len().sort("kind")
    load = os.getloadavg()
    print(
        f"rule engine bench: {args.devices:,} devices at {args.sites} sites, {len(engine.rules)} rules "
        f"(default packs), {engine.binding_count:,} rule x device x metric bindings"
    )
    print("bindings by kind: " + ", ".join(f"{k} {n:,}" for k, n in kinds_count.iter_rows()))
    print(
        f"setup: bind {bind_s:.2f} s, prime {args.history_min} min of history {prime_s:.1f} s "
        f"({engine._buckets.height:,} buckets in the window store); load average {load[0]:.1f} on {os.cpu_count()} CPUs"
    )
    print(
        f"(a) service ticks: {args.tick_ms} ms ticks, every device every {args.cadence:g} s -> {tick_readings:,} "
        f"readings per tick; {len(service)} plain ticks, {len(pass_ticks)} ticks carrying one of the "
        f"{engine.shards} device shards or the deviation pass"
    )
    print(f"  plain tick (thresholds, offline, state): median {ms(statistics.median(service))}  p90 {ms(p90(service))}")
    if pass_ticks:
        print(
            f"  tick carrying a windowed shard:           median {ms(statistics.median(pass_ticks))}  "
            f"p90 {ms(p90(pass_ticks))}  max {ms(max(pass_ticks))}"
        )
    print(f"  DuckDB SQL thresholds on the same ticks:  median {ms(statistics.median(service_sql))}")
    e_med, s_med = statistics.median(sweep), statistics.median(sweep_sql)
    print(
        f"(b) full sweep: all {args.devices:,} devices report in one tick ({readings:,} readings), {args.ticks} ticks"
    )
    print(
        f"  GridSentry engine, every kind + state:   median {ms(e_med)}  p90 {ms(p90(sweep))}  {readings / e_med:12,.0f} readings/s"
    )
    print(
        f"  DuckDB SQL, thresholds only (baseline):   median {ms(s_med)}  p90 {ms(p90(sweep_sql))}  {readings / s_med:12,.0f} readings/s  ({sql_rows:,} bindings)"
    )
    print(
        f"  ratio engine / baseline: {e_med / s_med:.2f}x the time for all eight kinds, windows and alert state "
        "against thresholds alone"
    )
    worst_service = max([*service, *pass_ticks])
    verdict = "PASS" if worst_service * 1000 < args.goal_ms else "FAIL"
    print(f"goal: every service tick < {args.goal_ms:g} ms (worst {worst_service * 1000:.1f} ms) -> {verdict}")


if __name__ == "__main__":
    main()
