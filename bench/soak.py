"""Soak: the reference fleet (~2,600 devices, ~60,000 readings/s) against one GridSentry for `--minutes`.

What it does:
1. builds the reference fleet, every device pre-registered with its real kind so the built-in rule packs bind:
   2,000 chargers (`--ac-share` 70 % AC 7 kW with 5 metrics, the rest DC with 14), 500 PV inverters with
   8 strings (12 metrics), 50 box transformers (7), 50 meters (6). A device sends all its metrics in one
   metrics-map message (`{"ts": ..., "metrics": {...}}`, ts = publish time). Values stay in normal ranges;
2. one round (every device once) is 22,050 readings with the default mix, so the interval between two messages
   of a device is set from `--readings-per-s` (default 60,000: every ~0.37 s, ~7,100 msg/s), or given with
   `--interval-s`;
3. the load comes from paced paho publishers (QoS 1) in forked processes (`_pacer.py`), so this process holds
   GridSentry alone (plus a sampler): the real `Service` with rules, the HTTP API and the DuckDB writer;
4. every `--sample-s` (10) seconds it prints: readings/s published and committed, GridSentry RSS (VmRSS),
   commit p99 over the interval, messages pending in the collector (decoded, not yet acked) and queued in the
   broker (published, not yet received), the time of one `generate_latest` over the service registry, CPU;
5. after `--minutes`, it waits for the backlog to drain and checks the goals, PASS/FAIL each:
   no loss (stored == published, exactly, and no (device, metric, ts) twice), RSS flat after warm-up
   (last sample within 10 % of the sample at 20 % of the run), commit p99 <= 2 s, peak RSS <= 1 GiB, and
   that the service kept up (committed >= 95 % of published over the run).

Exit code: 0 when every goal passes, 1 on any FAIL, 2 on a harness failure.

    .venv/bin/python bench/soak.py --minutes 3
    .venv/bin/python bench/soak.py --json soak.json          # 30 minutes
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import generate_latest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

from _common import (  # noqa: E402  (bench/ is on sys.path when a bench runs as a script)
    Broker,
    HarnessError,
    add_collector_args,
    apply_collector_args,
    current_rss_mb,
    histogram_buckets,
    histogram_quantile,
    machine,
    machine_busy_s,
    peak_rss_mb,
    percentile,
    pid_cpu_s,
    print_table,
    reset_peak_rss,
    run_main,
    versions,
    wait_until,
)
from _pacer import Pacer, PacerReport, iso_ts, split_specs  # noqa: E402

from gridsentry.config import Config, DeviceConfig  # noqa: E402
from gridsentry.service import Service  # noqa: E402
from storage.writer import CommitResult  # noqa: E402

COMMIT_HISTOGRAM = "gridsentry_storage_commit_seconds"
GOAL_COMMIT_P99_S = 2.0
GOAL_RSS_MB = 1024.0
GOAL_RSS_DRIFT = 0.10
GOAL_KEEP_UP = 0.95
VARIANTS = 8  # value sets per device

#: kind -> (metric, low, high) in normal operation (below every built-in rule threshold)
METRICS: dict[str, list[tuple[str, float, float]]] = {
    "charger_ac": [
        ("power_kw", 0.0, 7.4),
        ("energy_kwh", 1_000.0, 90_000.0),
        ("voltage_v", 225.0, 240.0),
        ("current_a", 0.0, 32.0),
        ("connector_temp_c", 20.0, 50.0),
    ],
    "charger_dc": [
        ("gun1_power_kw", 0.0, 120.0),
        ("gun2_power_kw", 0.0, 120.0),
        ("gun1_voltage_v", 350.0, 800.0),
        ("gun2_voltage_v", 350.0, 800.0),
        ("gun1_current_a", 0.0, 250.0),
        ("gun2_current_a", 0.0, 250.0),
        ("gun1_temp_c", 30.0, 60.0),
        ("gun2_temp_c", 30.0, 60.0),
        ("gun1_soc_pct", 10.0, 95.0),
        ("gun2_soc_pct", 10.0, 95.0),
        ("module_temp_c", 35.0, 65.0),
        ("cabinet_temp_c", 20.0, 40.0),
        ("input_power_kw", 0.0, 250.0),
        ("energy_kwh", 10_000.0, 900_000.0),
    ],
    "pv_inverter": [
        ("ac_power_kw", 0.0, 100.0),
        ("dc_power_kw", 0.0, 105.0),
        ("dc_voltage_v", 550.0, 900.0),
        *((f"string{i}_current_a", 0.0, 12.0) for i in range(1, 9)),
        ("heatsink_temp_c", 25.0, 65.0),
    ],
    "box_transformer": [
        ("load_kva", 100.0, 800.0),
        ("load_factor", 0.1, 0.8),
        ("top_oil_temp_c", 35.0, 70.0),
        ("hot_spot_temp_c", 45.0, 90.0),
        ("lv_voltage_v", 225.0, 240.0),
        ("lv_current_a", 100.0, 1_100.0),
        ("ambient_temp_c", -5.0, 35.0),
    ],
    "meter": [
        ("energy_kwh", 1_000.0, 9_000_000.0),
        ("voltage_v", 225.0, 240.0),
        ("current_a", 0.0, 100.0),
        ("active_power_kw", 0.0, 500.0),
        ("frequency_hz", 49.9, 50.1),
        ("power_factor", 0.9, 1.0),
    ],
}
RATED_KW = {"charger_ac": 7.4, "charger_dc": 120.0, "pv_inverter": 100.0, "box_transformer": 1000.0, "meter": None}
PREFIX = {"charger_ac": "AC", "charger_dc": "DC", "pv_inverter": "PV", "box_transformer": "TX", "meter": "MT"}


class Fleet:
    def __init__(self, counts: dict[str, int], sites: int, seed: int) -> None:
        self.devices: list[tuple[str, str, str]] = []  # (id, site, kind)
        for kind, n in counts.items():
            self.devices += [(f"{PREFIX[kind]}{i:05d}", f"site{i % sites:03d}", kind) for i in range(n)]
        random.Random(seed).shuffle(self.devices)  # kinds interleave in the publish schedule
        self.topics = [f"gridsentry/{site}/{dev}/telemetry" for dev, site, _ in self.devices]
        self.plans = [METRICS[kind] for _, _, kind in self.devices]
        self.readings_per_round = sum(len(p) for p in self.plans)
        self.counts = counts
        # VARIANTS pre-serialised metric maps per device, used in turn, so the load generator stays cheap.
        rng = random.Random(seed + 1)
        self.bodies = [
            [orjson.dumps({n: round(rng.uniform(lo, hi), 2) for n, lo, hi in plan}) for _ in range(VARIANTS)]
            for plan in self.plans
        ]

    def payload(self, i: int, k: int, now: float) -> tuple[bytes, int]:
        return b'{"ts":"%s","metrics":%s}' % (iso_ts(now), self.bodies[i][k % VARIANTS]), len(self.plans[i])


@dataclass
class Sample:
    t: float  # seconds since the load started
    published_rps: float
    committed_rps: float
    rss_mb: float
    commit_p99_s: float | None
    commits: int
    pending: int
    broker_queue: int
    scrape_s: float
    scrape_bytes: int
    cores: float
    foreign_cores: float


# --- run ---------------------------------------------------------------------------------------------------
async def soak(fleet: Fleet, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    broker = Broker(tmp / "broker", args.broker_inflight)
    broker.start()
    duration = args.minutes * 60
    pacer = Pacer(
        split_specs(broker.port, "soak", fleet.topics, args.interval_s, duration, fleet.payload, args.publishers)
    )  # forked before the service starts any thread
    try:
        cfg = Config(data_dir=tmp / "gridsentry", log_level="WARNING")
        cfg.mqtt.port = broker.port
        cfg.mqtt.client_id = "bench-collector"
        cfg.history.sql.lock_configuration = False  # the final check lifts the memory limit (below)
        apply_collector_args(cfg, args)
        cfg.http.port = 0
        cfg.devices = [
            DeviceConfig(
                id=dev,
                site=site,
                kind=kind,  # type: ignore[arg-type]
                rated_kw=RATED_KW[kind],
                expected_interval_s=max(1.0, round(args.interval_s * 3, 1)),
            )
            for dev, site, kind in fleet.devices
        ]
        svc = Service(cfg)
        commit_secs: list[float] = []
        chained = svc.writer.on_commit

        def on_commit(result: CommitResult) -> None:
            commit_secs.append(result.seconds)
            if chained is not None:
                chained(result)

        svc.writer.on_commit = on_commit
        t_start0 = time.perf_counter()
        await svc.start()
        assert svc.collector is not None
        await asyncio.wait_for(svc.collector.subscribed.wait(), 10)
        start_s = time.perf_counter() - t_start0
        print(
            f"service up in {start_s:.2f} s: {len(cfg.devices):,} devices, {len(svc.loaded_rules.rules)} rules, "
            f"MQTT {svc.collector_stats.protocol}; load starts",
            flush=True,
        )
        h0 = histogram_buckets(svc.registry, COMMIT_HISTOGRAM)
        reset_peak_rss()
        rss_start = current_rss_mb()
        stats = svc.collector_stats
        samples: list[Sample] = []
        head = (
            "t s",
            "pub r/s",
            "committed r/s",
            "RSS MB",
            "commit p99 s",
            "commits",
            "pending msgs",
            "broker queue",
            "scrape s",
            "cores",
            "foreign",
        )
        widths = [7, 9, 13, 7, 12, 7, 12, 12, 8, 5, 7]

        def line(cells: tuple[Any, ...]) -> None:
            print("  ".join(str(c).rjust(w) for c, w in zip(cells, widths, strict=True)), flush=True)

        line(head)
        pacer.go()
        t0 = time.perf_counter()
        committed0 = svc.readings_committed["mqtt"]
        prev = (t0, 0, 0, 0, _own_cpu(), machine_busy_s(), 0.0)
        reports_task = asyncio.create_task(asyncio.to_thread(pacer.results, duration + 300))
        next_t = t0 + args.sample_s
        while True:  # one sample every `sample_s` until the publishers are done (no partial last sample)
            finished, _ = await asyncio.wait({reports_task}, timeout=max(0.0, next_t - time.perf_counter()))
            if finished:
                break
            next_t += args.sample_s
            now = time.perf_counter()
            pub_r = pacer.readings
            com_r = svc.readings_committed["mqtt"] - committed0
            n_commits = len(commit_secs)
            ts0 = time.perf_counter()
            body = generate_latest(svc.registry)
            scrape_s = time.perf_counter() - ts0
            own, busy = _own_cpu(), machine_busy_s()
            pcpu = sum(pid_cpu_s(p.pid) for p in pacer.procs if p.pid) + broker.cpu_s()
            p_t, p_pub, p_com, p_nc, p_own, p_busy, p_pcpu = prev
            dt = now - p_t
            interval = sorted(commit_secs[p_nc:n_commits])
            s = Sample(
                t=round(now - t0, 1),
                published_rps=(pub_r - p_pub) / dt,
                committed_rps=(com_r - p_com) / dt,
                rss_mb=current_rss_mb(),
                commit_p99_s=percentile(interval, 99),
                commits=len(interval),
                pending=stats.pending,
                broker_queue=max(0, pacer.published - stats.messages_received),
                scrape_s=scrape_s,
                scrape_bytes=len(body),
                cores=(own - p_own) / dt,
                foreign_cores=max(0.0, ((busy - p_busy) - (own - p_own) - (pcpu - p_pcpu)) / dt),
            )
            samples.append(s)
            prev = (now, pub_r, com_r, n_commits, own, busy, pcpu)
            line(
                (
                    f"{s.t:.0f}",
                    f"{s.published_rps:,.0f}",
                    f"{s.committed_rps:,.0f}",
                    f"{s.rss_mb:.0f}",
                    "-" if s.commit_p99_s is None else f"{s.commit_p99_s:.3f}",
                    s.commits,
                    f"{s.pending:,}",
                    f"{s.broker_queue:,}",
                    f"{s.scrape_s:.3f}",
                    f"{s.cores:.2f}",
                    f"{s.foreign_cores:.2f}",
                )
            )
        reps: list[PacerReport] = await reports_task
        t_pub_end = time.perf_counter()
        for r in reps:
            if r.error:
                raise HarnessError(f"publisher failed: {r.error}")
        rss_end = samples[-1].rss_mb if samples else current_rss_mb()
        published = sum(r.readings for r in reps)
        published_msgs = sum(r.messages for r in reps)
        committed_at_end = svc.readings_committed["mqtt"] - committed0
        run_s = t_pub_end - t0
        print(
            f"load stopped after {run_s:.0f} s: {published:,} readings in {published_msgs:,} messages published; "
            f"{committed_at_end:,} committed; draining the backlog ...",
            flush=True,
        )
        drained = await wait_until(
            lambda: svc.readings_committed["mqtt"] - committed0 >= published, args.drain_timeout, 0.05
        )
        drain_s = time.perf_counter() - t_pub_end
        peak = peak_rss_mb()
        h1 = histogram_buckets(svc.registry, COMMIT_HISTOGRAM)
        committed = svc.readings_committed["mqtt"] - committed0
        await wait_until(lambda: svc.engine.readings_evaluated >= svc.readings_committed["mqtt"], 30)
        t_q = time.perf_counter()
        con = svc.writer.reader()
        try:
            # Exact distinct counts over 100M+ rows need more than the service's 512 MB buffer pool
            # (a 30-minute run failed here with "Out of Memory"); the load is over, so lift it for the check.
            con.execute("SET memory_limit = '4GB'")
            row = con.execute("SELECT count(*), count(DISTINCT (device_id, ts)) FROM readings").fetchone()
            stored, distinct_msgs = (int(row[0]), int(row[1])) if row else (0, 0)
            row = con.execute(
                "SELECT count(*) FROM (SELECT 1 FROM readings GROUP BY device_id, metric, ts HAVING count(*) > 1)"
            ).fetchone()
            duplicated = int(row[0]) if row else -1
        finally:
            con.close()
        verify_s = time.perf_counter() - t_q
        result = {
            "protocol": stats.protocol,
            "start_seconds": round(start_s, 3),
            "run_seconds": round(run_s, 1),
            "published_readings": published,
            "published_messages": published_msgs,
            "committed_readings": committed,
            "committed_at_load_end": committed_at_end,
            "stored_readings": stored,
            "distinct_messages_stored": distinct_msgs,
            "duplicated_keys": duplicated,
            "drained": drained,
            "drain_seconds": round(drain_s, 2),
            "verify_seconds": round(verify_s, 2),
            "rss_start_mb": round(rss_start, 1),
            "rss_end_mb": round(rss_end, 1),
            "peak_rss_mb": round(peak, 1),
            "commits": len(commit_secs),
            "commit_p50_s": percentile(sorted(commit_secs), 50),
            "commit_p99_s": percentile(sorted(commit_secs), 99),
            "commit_max_s": max(commit_secs, default=None),
            "commit_hist_p99_s": histogram_quantile(0.99, h1, h0),
            "rules_evaluated": svc.engine.readings_evaluated,
            "rule_errors": svc.rule_errors,
            "alerts_raised": svc.alerts.raised,
            "rejected": dict(stats.rejected),
            "publisher_max_late_s": max(r.max_late_s for r in reps),
            "publisher_late_events": sum(r.late_events for r in reps),
            "publisher_cpu_s": round(sum(r.cpu_s for r in reps), 1),
            "samples": [s.__dict__ for s in samples],
        }
        await svc.stop()
        return result
    finally:
        pacer.kill()
        broker.stop()


def _own_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# --- verdict -----------------------------------------------------------------------------------------------
def goals(res: dict[str, Any], args: argparse.Namespace) -> list[tuple[str, bool, str]]:
    samples = res["samples"]
    out = []
    lossless = (
        res["drained"]
        and res["stored_readings"] == res["published_readings"] == res["committed_readings"]
        and res["duplicated_keys"] == 0
        and res["distinct_messages_stored"] == res["published_messages"]
    )
    out.append(
        (
            "0 lost",
            lossless,
            f"published {res['published_readings']:,} readings ({res['published_messages']:,} messages), stored "
            f"{res['stored_readings']:,} ({res['distinct_messages_stored']:,} distinct messages, "
            f"{res['duplicated_keys']} duplicated (device, metric, ts))",
        )
    )
    warm_idx = next((i for i, s in enumerate(samples) if s["t"] >= 0.2 * res["run_seconds"]), None)
    if warm_idx is not None and warm_idx < len(samples) - 1:
        warm = samples[warm_idx]["rss_mb"]
        end = samples[-1]["rss_mb"]
        after = [s["rss_mb"] for s in samples[warm_idx:]]
        drift = (end - warm) / warm
        out.append(
            (
                "RSS flat after warm-up",
                abs(drift) <= GOAL_RSS_DRIFT,
                f"{warm:.0f} MB at {samples[warm_idx]['t']:.0f} s -> {end:.0f} MB at the end ({drift:+.1%}; "
                f"min/max after warm-up {min(after):.0f}/{max(after):.0f} MB; limit ±{GOAL_RSS_DRIFT:.0%})",
            )
        )
    else:
        out.append(("RSS flat after warm-up", False, "too few samples: run longer or sample more often"))
    p99 = res["commit_p99_s"]
    out.append(
        (
            f"commit p99 <= {GOAL_COMMIT_P99_S:g} s",
            p99 is not None and p99 <= GOAL_COMMIT_P99_S,
            f"p99 {p99 if p99 is None else round(p99, 3)} s over {res['commits']:,} commits "
            f"(histogram estimate {res['commit_hist_p99_s']}; max {res['commit_max_s']:.3f} s)",
        )
    )
    out.append(
        (
            "RSS <= 1 GiB",
            res["peak_rss_mb"] <= GOAL_RSS_MB,
            f"peak {res['peak_rss_mb']:.0f} MB (VmHWM; {res['rss_start_mb']:.0f} MB before the load)",
        )
    )
    kept = res["committed_at_load_end"] / res["published_readings"] if res["published_readings"] else 0.0
    out.append(
        (
            f"keeps up (committed >= {GOAL_KEEP_UP:.0%} of published during the run)",
            kept >= GOAL_KEEP_UP,
            f"{kept:.3f}; committed {res['committed_at_load_end'] / res['run_seconds']:,.0f} readings/s, "
            f"the backlog took {res['drain_seconds']:.1f} s to drain",
        )
    )
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--minutes", type=float, default=30.0, help="length of the load (default 30)")
    p.add_argument("--chargers", type=int, default=2000, help="chargers (default 2,000)")
    p.add_argument("--ac-share", type=float, default=0.7, help="share of AC chargers among them (default 0.7)")
    p.add_argument("--inverters", type=int, default=500, help="PV inverters (default 500)")
    p.add_argument("--transformers", type=int, default=50, help="box transformers (default 50)")
    p.add_argument("--meters", type=int, default=50, help="meters (default 50)")
    p.add_argument("--sites", type=int, default=50, help="sites the devices are spread over (default 50)")
    rate = p.add_mutually_exclusive_group()
    rate.add_argument(
        "--readings-per-s", type=float, default=60_000, help="offered readings/s; sets the interval (default 60,000)"
    )
    rate.add_argument("--interval-s", type=float, help="seconds between two messages of a device (overrides the rate)")
    p.add_argument("--publishers", type=int, default=2, help="paho publisher processes (default 2)")
    p.add_argument("--sample-s", type=float, default=10.0, help="seconds between samples (default 10)")
    p.add_argument("--drain-timeout", type=float, default=300.0, help="wait at most S s for the backlog after the load")
    add_collector_args(p, protocol_default="default", scrape_default=0.0)
    p.add_argument("--seed", type=int, default=1, help="random seed of the fleet and its values")
    p.add_argument("--json", type=Path, help="write the samples and the verdict to this JSON file")
    p.add_argument("--keep", action="store_true", help="keep the temp directory (database, broker log)")
    a = p.parse_args(argv)
    if a.minutes <= 0 or a.publishers < 1 or a.sample_s <= 0:
        p.error("--minutes, --publishers and --sample-s must be positive")
    return a


async def amain(args: argparse.Namespace) -> int:
    n_ac = round(args.chargers * args.ac_share)
    counts = {
        "charger_ac": n_ac,
        "charger_dc": args.chargers - n_ac,
        "pv_inverter": args.inverters,
        "box_transformer": args.transformers,
        "meter": args.meters,
    }
    fleet = Fleet(counts, args.sites, args.seed)
    if args.interval_s is None:
        args.interval_s = fleet.readings_per_round / args.readings_per_s
    offered_rps = fleet.readings_per_round / args.interval_s
    offered_mps = len(fleet.devices) / args.interval_s
    m, v = machine(), versions()
    print(
        f"GridSentry soak: {len(fleet.devices):,} devices ("
        + ", ".join(f"{n:,} {k} x {len(METRICS[k])} metrics" for k, n in counts.items())
        + f"), {fleet.readings_per_round:,} readings per round; every device every {args.interval_s:.3f} s = "
        f"{offered_rps:,.0f} readings/s in {offered_mps:,.0f} msg/s, for {args.minutes:g} min, "
        f"{args.publishers} paho publisher process(es), QoS 1"
    )
    print(
        f"machine: {m['nproc']} CPUs ({m['cpu_model']}); python {v['python']}, duckdb {v.get('duckdb')}, "
        f"aiomqtt {v.get('aiomqtt')}, paho-mqtt {v.get('paho-mqtt')}, polars {v.get('polars')}, "
        f"prometheus-client {v.get('prometheus-client')}, mosquitto {v.get('mosquitto')}",
        flush=True,
    )
    tmp = Path(tempfile.mkdtemp(prefix="gridsentry-bench-soak-"))
    tmp.chmod(0o777)  # mosquitto drops to its own user when started as root
    try:
        res = await soak(fleet, args, tmp)
        verdict = goals(res, args)
        samples = res["samples"]
        print()
        later = [s for s in samples if s["t"] >= 0.2 * res["run_seconds"]] or samples
        print_table(
            ("", "offered", "published", "committed", "committed / offered", "committed / published"),
            [
                (
                    "readings/s (whole run)",
                    f"{offered_rps:,.0f}",
                    f"{res['published_readings'] / res['run_seconds']:,.0f}",
                    f"{res['committed_at_load_end'] / res['run_seconds']:,.0f}",
                    f"{res['committed_at_load_end'] / res['run_seconds'] / offered_rps:.3f}",
                    f"{res['committed_at_load_end'] / max(res['published_readings'], 1):.3f}",
                )
            ],
        )
        print()
        scrapes = sorted(s["scrape_s"] for s in samples)
        print(
            f"MQTT {res['protocol']}; start() {res['start_seconds']} s; {res['commits']:,} commits: p50 "
            f"{res['commit_p50_s']} s, p99 {res['commit_p99_s']} s, max {res['commit_max_s']} s; "
            f"/metrics generate_latest p50 {percentile(scrapes, 50)} s, max {scrapes[-1] if scrapes else None} s "
            f"({samples[-1]['scrape_bytes'] if samples else 0:,} B)"
        )
        print(
            f"after warm-up: mean {sum(s['committed_rps'] for s in later) / max(len(later), 1):,.0f} committed "
            f"readings/s, {sum(s['cores'] for s in later) / max(len(later), 1):.2f} cores, foreign "
            f"{sum(s['foreign_cores'] for s in later) / max(len(later), 1):.2f} cores; max pending "
            f"{max((s['pending'] for s in samples), default=0):,} msgs, max broker queue "
            f"{max((s['broker_queue'] for s in samples), default=0):,} msgs"
        )
        print(
            f"rules evaluated {res['rules_evaluated']:,} readings, {res['rule_errors']} rule errors, "
            f"{res['alerts_raised']} alerts; rejected {res['rejected'] or 0}; publishers: CPU {res['publisher_cpu_s']} s, "
            f"at most {res['publisher_max_late_s']:.3f} s behind schedule ({res['publisher_late_events']:,} messages "
            f"> 50 ms late); verification queries {res['verify_seconds']} s"
        )
        print()
        for name, ok, detail in verdict:
            print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}")
        all_ok = all(ok for _, ok, _ in verdict)
        print(f"soak: {'PASS' if all_ok else 'FAIL'}")
        if args.json:
            info = {
                "bench": "soak",
                "when": datetime.now(UTC).isoformat(timespec="seconds"),
                "command": " ".join([Path(sys.executable).name, *sys.argv]),
                "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                "machine": m,
                "versions": v,
                "fleet": {k: {"devices": n, "metrics": len(METRICS[k])} for k, n in counts.items()},
                "offered_readings_per_s": offered_rps,
                "offered_messages_per_s": offered_mps,
                "result": res,
                "goals": [{"goal": n, "pass": ok, "detail": d} for n, ok, d in verdict],
            }
            args.json.write_text(json.dumps(info, indent=2) + "\n")
            print(f"samples and verdict written to {args.json}")
        return 0 if all_ok else 1
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    return run_main(amain, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
