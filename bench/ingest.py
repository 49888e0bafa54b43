"""Ingest benchmark: MQTT -> GridSentry (decode, DuckDB commit, ack, rules, /metrics) against mosquitto_sub.

What it does, in one run:
1. starts a private mosquitto on a free loopback port (no persistence, 1000 in flight, unlimited queues);
2. pre-generates N JSON messages (a `metrics` map of R readings each) for D devices, one file per device,
   one message per line, so the C client `mosquitto_pub -l` can publish them (one topic per device);
3. for each mode (drain, live) measures two consumers of the same stream:
   - the baseline: the C client `mosquitto_sub` at QoS 1, printing only a timestamp per message;
   - GridSentry: the real `Service` in this process (collector at QoS 1 with ack after commit, the single
     DuckDB writer, rule evaluation on committed batches, the HTTP API with /metrics scraped every second).
   "drain" fills the broker's queue for the consumer's disconnected persistent session first, then times
   the consumer alone (from its start to the last message / last commit). "live" runs the publishers and
   the consumer together (from the first publish to the last message / last commit);
4. prints a table (readings/s, messages/s, ratios to mosquitto_sub and to the 250k readings/s reference
   of shared/performance.md, CPU, peak RSS, co-tenant CPU) and checks that every reading was stored once.

Exit code: 0 when every mode stored exactly N x R readings, 1 on loss or duplicates, 2 on a harness failure.

    .venv/bin/python bench/ingest.py                      # defaults: 20,000 msgs x 50 readings, 200 devices
    .venv/bin/python bench/ingest.py --mode drain --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import logging
import math
import random
import shutil
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

from _common import (  # noqa: E402  (bench/ is on sys.path when a bench runs as a script)
    MOSQUITTO_PUB_LIMIT,
    Broker,
    HarnessError,
    Meter,
    PubJob,
    add_collector_args,
    apply_collector_args,
    current_rss_mb,
    fmt_rate,
    iso_us,
    machine,
    peak_rss_mb,
    print_table,
    publish_all,
    reset_peak_rss,
    run_main,
    tool,
    versions,
    wait_until,
)

from gridsentry.config import Config, DeviceConfig  # noqa: E402
from gridsentry.service import Service  # noqa: E402
from storage.writer import CommitResult  # noqa: E402

log = logging.getLogger("bench.ingest")

TOPIC_FILTER = "gridsentry/+/+/telemetry"
SITE = "bench"
REFERENCE_READINGS_PER_S = 250_000  # shared/performance.md, "excellent" reference for batched input

#: Catalogue metrics of a DC charger; the first three are watched by the built-in charger_dc rules.
REAL_METRICS: list[tuple[str, float, float]] = [
    ("gun1_temp_c", 35.0, 60.0),
    ("gun2_temp_c", 35.0, 60.0),
    ("module_temp_c", 40.0, 65.0),
    ("cabinet_temp_c", 25.0, 40.0),
    ("gun1_power_kw", 0.0, 120.0),
    ("gun2_power_kw", 0.0, 120.0),
    ("gun1_voltage_v", 350.0, 800.0),
    ("gun2_voltage_v", 350.0, 800.0),
    ("gun1_current_a", 0.0, 250.0),
    ("gun2_current_a", 0.0, 250.0),
    ("gun1_soc_pct", 10.0, 95.0),
    ("gun2_soc_pct", 10.0, 95.0),
    ("input_power_kw", 0.0, 250.0),
]
HOT_TEMP_C = 85.0  # above the 80 °C warning, below the 90 °C critical threshold of dc_gun_overtemp_*


# --- workload --------------------------------------------------------------------------------------------
@dataclass
class Workload:
    messages: int
    readings_per_message: int
    devices: list[str]
    hot_devices: list[str]
    jobs: list[PubJob]
    payload_bytes: int
    kind: str = "charger_dc"  # the kind the devices are pre-registered as

    @property
    def readings(self) -> int:
        return self.messages * self.readings_per_message


def metric_plan(r: int) -> list[tuple[str, float, float]]:
    plan = REAL_METRICS[:r]
    plan += [(f"aux_{i:02d}", 0.0, 100.0) for i in range(r - len(plan))]
    return plan


def generate(out: Path, n: int, r: int, d: int, hot: int, interval_s: float, seed: int) -> Workload:
    """Message i goes to device i % d; each device's messages are 'interval_s' apart in reading time."""
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    devices = [f"DC{i:04d}" for i in range(d)]
    hot_devices = devices[: min(hot, d)]
    plan = metric_plan(r)
    per_device = [n // d + (1 if i < n % d else 0) for i in range(d)]
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=max(per_device) * interval_s + 60)
    jobs: list[PubJob] = []
    total_bytes = 0
    for di, dev in enumerate(devices):
        count = per_device[di]
        if count == 0:
            continue
        topic = f"gridsentry/{SITE}/{dev}/telemetry"
        is_hot = dev in hot_devices
        start = 0
        while start < count:  # split so no mosquitto_pub invocation goes past its 65,535-message limit
            chunk = min(MOSQUITTO_PUB_LIMIT, count - start)
            path = out / f"{dev}.{start // MOSQUITTO_PUB_LIMIT}.jsonl"
            with path.open("wb") as f:
                for k in range(start, start + chunk):
                    ts = base + timedelta(seconds=k * interval_s, microseconds=di * 1000 + 1)
                    metrics = {name: round(rng.uniform(lo, hi), 2) for name, lo, hi in plan}
                    if is_hot and "gun1_temp_c" in metrics:
                        metrics["gun1_temp_c"] = round(HOT_TEMP_C + rng.uniform(0, 2), 2)
                    line = orjson.dumps({"ts": iso_us(ts), "seq": k, "metrics": metrics})
                    assert b"\n" not in line
                    f.write(line + b"\n")
                    total_bytes += len(line)
            jobs.append(PubJob(topic, path, chunk))
            start += chunk
    # Interleave devices: job order d0 d1 d2 ... so parallel publishers mix device streams.
    return Workload(n, r, devices, hot_devices, jobs, total_bytes // max(n, 1))


# --- baseline: mosquitto_sub -----------------------------------------------------------------------------
@dataclass
class Result:
    consumer: str
    mode: str
    messages_expected: int
    readings_expected: int
    seconds: float = 0.0
    steady_seconds: float | None = None
    messages_received: int = 0
    readings_stored: int | None = None
    cpu_own_s: float = 0.0
    cpu_children_s: float = 0.0
    cpu_broker_s: float = 0.0
    foreign_cores: float | None = None
    peak_rss_mb: float | None = None
    publish_seconds: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def msgs_per_s(self) -> float:
        return self.messages_received / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self, readings_per_message: int) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "extra"}
        d.update(self.extra)
        d["messages_per_s"] = round(self.msgs_per_s, 1)
        d["readings_per_s"] = round(self.msgs_per_s * readings_per_message, 1)
        if self.steady_seconds:
            d["steady_messages_per_s"] = round(self.messages_received / self.steady_seconds, 1)
        return d


def _sub_cmd(port: int, client_id: str) -> list[str]:
    return [
        tool("mosquitto_sub"),
        *("-h", "127.0.0.1", "-p", str(port), "-t", TOPIC_FILTER, "-q", "1"),
        *("-V", "mqttv5", "-c", "-x", "3600", "-i", client_id),
    ]


async def baseline(mode: str, wl: Workload, args: argparse.Namespace, tmp: Path) -> Result:
    broker = Broker(tmp / f"broker-sub-{mode}", args.broker_inflight)
    broker.start()
    try:
        res = Result("mosquitto_sub", mode, wl.messages, wl.readings)
        cmd = _sub_cmd(broker.port, "bench-sub")
        # Create the persistent session (subscribe, exit): from here the broker queues for it.
        setup = await asyncio.create_subprocess_exec(*cmd, "-E", stdout=asyncio.subprocess.DEVNULL)
        if await setup.wait() != 0:
            raise HarnessError("mosquitto_sub could not create its session")
        if mode == "drain":
            res.publish_seconds = await publish_all(broker.port, wl.jobs, args.pub_parallel, f"sub-{mode}")
        out = tmp / f"sub-{mode}.txt"
        meter = Meter(broker).start()
        t0 = time.perf_counter()
        with out.open("wb") as f:
            proc = await asyncio.create_subprocess_exec(
                *cmd,
                *("-C", str(wl.messages), "-W", str(max(1, math.ceil(args.timeout))), "-F", "%U"),
                stdout=f,
                stderr=asyncio.subprocess.PIPE,
            )
            pub_task = None
            if mode == "live":
                pub_task = asyncio.create_task(publish_all(broker.port, wl.jobs, args.pub_parallel, f"sub-{mode}"))
            _, err = await proc.communicate()
            res.seconds = time.perf_counter() - t0
            if pub_task is not None:
                res.publish_seconds = await pub_task
        meter.stop()
        stamps = [float(x) for x in out.read_text().split()]
        res.messages_received = len(stamps)
        if len(stamps) > 1 and stamps[-1] > stamps[0]:
            res.steady_seconds = (stamps[-1] - stamps[0]) * len(stamps) / (len(stamps) - 1)
        res.readings_stored = len(stamps) * wl.readings_per_message
        res.cpu_own_s, res.cpu_children_s, res.cpu_broker_s = meter.own, meter.children, meter.broker_s
        res.foreign_cores = meter.foreign_cores
        if proc.returncode != 0 or res.messages_received != wl.messages:
            res.extra["error"] = f"mosquitto_sub exit {proc.returncode}: {err.decode().strip()}"
        return res
    finally:
        broker.stop()


# --- GridSentry ------------------------------------------------------------------------------------------
def make_config(data_dir: Path, port: int, wl: Workload, args: argparse.Namespace) -> Config:
    cfg = Config(data_dir=data_dir, log_level="WARNING")
    cfg.mqtt.port = port
    cfg.mqtt.client_id = "bench-collector"
    apply_collector_args(cfg, args)
    cfg.http.port = 0
    rated = {"charger_dc": 120, "charger_ac": 7.4}.get(wl.kind)
    cfg.devices = [DeviceConfig(id=d, site=SITE, kind=wl.kind, rated_kw=rated) for d in wl.devices]
    return cfg


class Scraper(threading.Thread):
    """GETs /metrics every `interval` seconds, as Prometheus would (a deployment is scraped while it ingests)."""

    def __init__(self, url: str, interval: float) -> None:
        super().__init__(name="bench-scraper", daemon=True)
        self.url = url
        self.interval = interval
        self.stop_event = threading.Event()
        self.scrapes = 0
        self.failures = 0
        self.max_seconds = 0.0

    def run(self) -> None:
        while not self.stop_event.wait(self.interval):
            t0 = time.perf_counter()
            try:
                with urllib.request.urlopen(self.url, timeout=10) as r:
                    r.read()
                self.scrapes += 1
            except OSError:
                self.failures += 1
            self.max_seconds = max(self.max_seconds, time.perf_counter() - t0)


async def gridsentry(
    mode: str, wl: Workload, args: argparse.Namespace, tmp: Path, profiler: cProfile.Profile | None
) -> Result:
    broker = Broker(tmp / f"broker-gs-{mode}", args.broker_inflight)
    broker.start()
    data_dir = tmp / f"gridsentry-{mode}"
    res = Result("gridsentry", mode, wl.messages, wl.readings)
    target = wl.readings
    try:
        if mode == "drain":
            # Connect the collector once so the broker holds its persistent session, then stop it.
            first = Service(make_config(data_dir, broker.port, wl, args))
            await first.start()
            assert first.collector is not None
            await asyncio.wait_for(first.collector.subscribed.wait(), 10)
            await first.stop()
            res.publish_seconds = await publish_all(broker.port, wl.jobs, args.pub_parallel, f"gs-{mode}")
        svc = Service(make_config(data_dir, broker.port, wl, args))
        commits: list[tuple[float, int]] = []  # (seconds, readings) of every write transaction
        chained = svc.writer.on_commit

        def on_commit(result: CommitResult) -> None:
            commits.append((result.seconds, result.readings))
            if chained is not None:
                chained(result)

        svc.writer.on_commit = on_commit
        reset_peak_rss()
        rss_start = current_rss_mb()
        meter = Meter(broker).start()
        if profiler is not None:
            profiler.enable()
        t0 = time.perf_counter()
        await svc.start()
        t_started = time.perf_counter()
        assert svc.collector is not None
        await asyncio.wait_for(svc.collector.subscribed.wait(), 10)
        t_subscribed = time.perf_counter()
        pub_task = None
        if mode == "live":
            meter.start()
            t0 = time.perf_counter()
            pub_task = asyncio.create_task(publish_all(broker.port, wl.jobs, args.pub_parallel, f"gs-{mode}"))
        scraper = None
        if args.scrape_interval > 0 and svc.http_url:
            scraper = Scraper(svc.http_url + "/metrics", args.scrape_interval)
            scraper.start()
        t_first: float | None = None
        max_pending = 0

        def committed() -> bool:
            nonlocal t_first, max_pending
            max_pending = max(max_pending, svc.collector_stats.pending)
            if t_first is None and svc.collector_stats.messages_received:
                t_first = time.perf_counter()
            return svc.readings_committed["mqtt"] >= target

        done = await wait_until(committed, args.timeout)
        t_commit = time.perf_counter()
        res.seconds = t_commit - t0
        if t_first is not None:
            res.steady_seconds = t_commit - t_first
        # Rules evaluate committed batches on their own tick: wait for them to catch up (reported apart).
        await wait_until(lambda: svc.engine.readings_evaluated >= svc.readings_committed["mqtt"], 30)
        t_rules = time.perf_counter()
        if profiler is not None:
            profiler.disable()
        meter.stop()
        if scraper is not None:
            scraper.stop_event.set()
            scraper.join(15)
        if pub_task is not None:
            res.publish_seconds = await pub_task
        res.peak_rss_mb = round(peak_rss_mb(), 1)
        con = svc.writer.reader()
        try:
            row = con.execute("SELECT count(*), count(DISTINCT (device_id, ts)) FROM readings").fetchone()
            assert row is not None
            rows, distinct_msgs = int(row[0]), int(row[1])
        finally:
            con.close()
        stats = svc.collector_stats
        res.messages_received = stats.messages_acked  # acked = committed
        res.readings_stored = rows
        res.cpu_own_s, res.cpu_children_s, res.cpu_broker_s = meter.own, meter.children, meter.broker_s
        res.foreign_cores = meter.foreign_cores
        secs = sorted(c[0] for c in commits)
        res.extra.update(
            rss_at_start_mb=round(rss_start, 1),
            commit_seconds_mean=round(sum(secs) / len(secs), 4) if secs else None,
            commit_seconds_p95=round(secs[int(0.95 * (len(secs) - 1))], 4) if secs else None,
            commit_seconds_max=round(secs[-1], 4) if secs else None,
            commit_seconds_total=round(sum(secs), 3),
            start_seconds=round(t_started - t0, 3) if mode == "drain" else None,
            subscribe_seconds=round(t_subscribed - t0, 3) if mode == "drain" else None,
            first_message_seconds=round(t_first - t0, 3) if t_first is not None else None,
            protocol=stats.protocol,
            client=svc.cfg.mqtt.client,
            readings_committed=svc.readings_committed["mqtt"],
            messages_received_total=stats.messages_received,
            messages_acked=stats.messages_acked,
            distinct_messages_stored=distinct_msgs,
            flushes=stats.flushes,
            max_pending_messages=max_pending,
            mean_flush_messages=round(stats.messages_acked / stats.flushes, 1) if stats.flushes else None,
            commits=svc.writer.commits,
            rejected=dict(stats.rejected),
            readings_evaluated=svc.engine.readings_evaluated,
            rule_evaluations=svc.engine.evaluations,
            rules_lag_seconds=round(t_rules - t_commit, 3),
            rule_errors=svc.rule_errors,
            alerts_raised=svc.alerts.raised,
            hot_devices=len(wl.hot_devices),
            scrapes=scraper.scrapes if scraper else 0,
            scrape_failures=scraper.failures if scraper else 0,
            scrape_max_seconds=round(scraper.max_seconds, 4) if scraper else None,
        )
        if not done:
            res.extra["error"] = (
                f"timed out after {args.timeout:g} s with {svc.readings_committed['mqtt']:,} of {target:,} readings"
            )
        await svc.stop()
        return res
    finally:
        broker.stop()


# --- report ----------------------------------------------------------------------------------------------
def summarize(mode: str, gs: Result, sub: Result, r: int) -> dict[str, Any]:
    gs_rps = gs.msgs_per_s * r
    sub_rps = sub.msgs_per_s * r
    loss_ok = (
        gs.readings_stored == gs.readings_expected
        and gs.extra.get("readings_committed") == gs.readings_expected
        and gs.extra.get("distinct_messages_stored") == gs.messages_expected
        and "error" not in gs.extra
    )
    return {
        "mode": mode,
        "gridsentry_readings_per_s": round(gs_rps, 1),
        "gridsentry_messages_per_s": round(gs.msgs_per_s, 1),
        "gridsentry_steady_readings_per_s": round(gs.messages_received / gs.steady_seconds * r, 1)
        if gs.steady_seconds
        else None,
        "mosquitto_sub_messages_per_s": round(sub.msgs_per_s, 1),
        "mosquitto_sub_readings_per_s": round(sub_rps, 1),
        "ratio_to_mosquitto_sub": round(gs_rps / sub_rps, 4) if sub_rps else None,
        "reference_readings_per_s": REFERENCE_READINGS_PER_S,
        "ratio_to_reference": round(gs_rps / REFERENCE_READINGS_PER_S, 4),
        "gridsentry_cpu_s": round(gs.cpu_own_s, 2),
        "gridsentry_cores": round(gs.cpu_own_s / gs.seconds, 2) if gs.seconds else None,
        "gridsentry_cpu_us_per_reading": round(gs.cpu_own_s / gs.readings_expected * 1e6, 3),
        "gridsentry_peak_rss_mb": gs.peak_rss_mb,
        "foreign_cores_gridsentry": None if gs.foreign_cores is None else round(gs.foreign_cores, 2),
        "foreign_cores_mosquitto_sub": None if sub.foreign_cores is None else round(sub.foreign_cores, 2),
        "no_loss": loss_ok,
        "baseline_ok": "error" not in sub.extra,
    }


def print_report(wl: Workload, rows: list[dict[str, Any]], runs: list[Result], info: dict[str, Any]) -> None:
    r = wl.readings_per_message
    print()
    print(
        f"GridSentry ingest bench: {wl.messages:,} messages x {r} readings = {wl.readings:,} readings, "
        f"{len(wl.devices)} devices ({len(wl.hot_devices)} hot), ~{wl.payload_bytes:,} B/message, QoS 1"
    )
    m, v = info["machine"], info["versions"]
    print(
        f"machine: {m['nproc']} CPUs ({m['cpu_model']}); python {v['python']}, duckdb {v.get('duckdb')}, "
        f"aiomqtt {v.get('aiomqtt')}, paho-mqtt {v.get('paho-mqtt')}, polars {v.get('polars')}, "
        f"mosquitto {v.get('mosquitto')}; broker max_inflight_messages {info['args']['broker_inflight']}"
    )
    print()
    head = (
        "mode",
        "GS readings/s",
        "GS msg/s",
        "GS steady r/s",
        "sub msg/s",
        "sub readings/s",
        "GS/sub",
        "GS/250k",
        "GS CPU s (cores)",
        "GS peak RSS",
        "foreign cores GS/sub",
        "no loss",
    )
    table = [head]
    for row in rows:
        table.append(
            (
                row["mode"],
                fmt_rate(row["gridsentry_readings_per_s"]),
                fmt_rate(row["gridsentry_messages_per_s"]),
                fmt_rate(row["gridsentry_steady_readings_per_s"]),
                fmt_rate(row["mosquitto_sub_messages_per_s"]),
                fmt_rate(row["mosquitto_sub_readings_per_s"]),
                "-" if row["ratio_to_mosquitto_sub"] is None else f"{row['ratio_to_mosquitto_sub']:.3f}",
                f"{row['ratio_to_reference']:.2f}",
                f"{row['gridsentry_cpu_s']:.1f} ({row['gridsentry_cores']})",
                f"{row['gridsentry_peak_rss_mb']} MB",
                f"{row['foreign_cores_gridsentry']}/{row['foreign_cores_mosquitto_sub']}",
                "PASS" if row["no_loss"] else "FAIL",
            )
        )
    print_table(head, table[1:])
    print()
    for res in runs:
        steady = f"{res.messages_received / res.steady_seconds * r:,.0f}" if res.steady_seconds else "-"
        line = (
            f"{res.consumer:13s} {res.mode:5s}: {res.messages_received:,} msgs in {res.seconds:.2f} s "
            f"(steady, first message to last: {steady} readings/s); CPU own {res.cpu_own_s:.2f} s, "
            f"children {res.cpu_children_s:.2f} s, broker {res.cpu_broker_s:.2f} s"
        )
        if res.publish_seconds is not None:
            line += (
                f"; publish took {res.publish_seconds:.2f} s ({res.messages_expected / res.publish_seconds:,.0f} msg/s)"
            )
        print(line)
        if res.consumer == "gridsentry":
            e = res.extra
            print(
                f"{'':13s}        stored {res.readings_stored:,} rows ({e['distinct_messages_stored']:,} distinct "
                f"messages); {e['flushes']} flushes (mean {e['mean_flush_messages']} msgs, max {e['max_pending_messages']} "
                f"unacked seen); {e['commits']} commits "
                f"(mean {e['commit_seconds_mean']} s, p95 {e['commit_seconds_p95']} s, max {e['commit_seconds_max']} s, "
                f"total {e['commit_seconds_total']} s); RSS {e['rss_at_start_mb']} MB at start, peak {res.peak_rss_mb} MB"
            )
            print(
                f"{'':13s}        rules evaluated {e['readings_evaluated']:,} readings in {e['rule_evaluations']} evaluations "
                f"(caught up {e['rules_lag_seconds']} s after the last commit), {e['rule_errors']} rule errors, "
                f"{e['alerts_raised']} alerts raised ({e['hot_devices']} hot devices), "
                f"{e['scrapes']} /metrics scrapes (max {e['scrape_max_seconds']} s); MQTT {e['protocol']}"
            )
            if e["start_seconds"] is not None:
                print(
                    f"{'':13s}        start() returned after {e['start_seconds']} s, subscribed after "
                    f"{e['subscribe_seconds']} s, first message after {e['first_message_seconds']} s"
                )
        if "error" in res.extra:
            print(f"{'':13s}        ERROR: {res.extra['error']}")
    print()
    ok = all(row["no_loss"] for row in rows)
    print(
        f"no loss (stored readings == published, each message once): {'PASS' if ok else 'FAIL'}; "
        f"reference {REFERENCE_READINGS_PER_S:,} readings/s = shared/performance.md end-to-end target"
    )


# --- main ------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--mode", choices=["drain", "live", "both"], default="both", help="which measurement(s) to run")
    p.add_argument("--messages", type=int, default=20_000, help="MQTT messages per measurement (default 20,000)")
    p.add_argument("--readings-per-message", type=int, default=50, help="readings in each message (default 50)")
    p.add_argument("--devices", type=int, default=200, help="devices, pre-registered as charger_dc (default 200)")
    p.add_argument(
        "--hot-devices", type=int, default=2, help="devices whose gun1_temp_c runs at ~85 °C, so rules fire (default 2)"
    )
    p.add_argument("--interval-s", type=float, default=1.0, help="reading-time gap between a device's messages")
    p.add_argument(
        "--pub-parallel",
        type=int,
        default=64,
        help="mosquitto_pub processes at a time (default 64; each idles ~0.2 s around its connect and exit)",
    )
    add_collector_args(p, protocol_default="default", scrape_default=1.0)
    p.add_argument("--seed", type=int, default=1, help="random seed of the generated values")
    p.add_argument("--json", type=Path, help="write every figure to this JSON file")
    p.add_argument(
        "--profile",
        type=Path,
        help="cProfile the event-loop thread of the GridSentry measurements into this .pstats file\n"
        "(slows it down: the rates of a profiled run are not comparable)",
    )
    p.add_argument("--keep", action="store_true", help="keep the temp directory (messages, databases)")
    a = p.parse_args(argv)
    if a.messages < 1 or a.readings_per_message < 1 or a.devices < 1:
        p.error("--messages, --readings-per-message and --devices must be >= 1")
    return a


async def amain(args: argparse.Namespace) -> int:
    modes = ["drain", "live"] if args.mode == "both" else [args.mode]
    tmp = Path(tempfile.mkdtemp(prefix="gridsentry-bench-"))
    tmp.chmod(0o777)  # mosquitto drops to its own user when started as root
    profiler = cProfile.Profile() if args.profile else None
    try:
        t0 = time.perf_counter()
        wl = generate(
            tmp / "messages",
            args.messages,
            args.readings_per_message,
            args.devices,
            args.hot_devices,
            args.interval_s,
            args.seed,
        )
        print(
            f"generated {wl.messages:,} messages ({wl.readings:,} readings, {len(wl.jobs)} publisher files) "
            f"in {time.perf_counter() - t0:.1f} s under {tmp}",
            flush=True,
        )
        runs: list[Result] = []
        rows: list[dict[str, Any]] = []
        for mode in modes:
            print(f"[{mode}] mosquitto_sub baseline ...", flush=True)
            sub = await baseline(mode, wl, args, tmp)
            print(f"[{mode}]   {sub.msgs_per_s:,.0f} msg/s", flush=True)
            print(f"[{mode}] GridSentry ...", flush=True)
            gs = await gridsentry(mode, wl, args, tmp, profiler)
            print(f"[{mode}]   {gs.msgs_per_s * wl.readings_per_message:,.0f} readings/s", flush=True)
            runs += [sub, gs]
            rows.append(summarize(mode, gs, sub, wl.readings_per_message))
        info: dict[str, Any] = {
            "bench": "ingest",
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "machine": machine(),
            "versions": versions(),
            "workload": {
                "messages": wl.messages,
                "readings_per_message": wl.readings_per_message,
                "readings": wl.readings,
                "devices": len(wl.devices),
                "hot_devices": len(wl.hot_devices),
                "payload_bytes_mean": wl.payload_bytes,
                "publisher_files": len(wl.jobs),
            },
        }
        print_report(wl, rows, runs, info)
        if profiler is not None:
            profiler.dump_stats(str(args.profile))
            print(f"profile written to {args.profile} (python -m pstats {args.profile})")
        if args.json:
            info["summary"] = rows
            info["runs"] = [r.as_dict(wl.readings_per_message) for r in runs]
            args.json.write_text(json.dumps(info, indent=2) + "\n")
            print(f"figures written to {args.json}")
        if not all(row["no_loss"] for row in rows):
            return 1
        if not all(row["baseline_ok"] for row in rows):
            print("the mosquitto_sub baseline did not receive every message: its rates are not valid")
            return 2
        return 0
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    return run_main(amain, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
