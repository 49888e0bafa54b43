"""Ingest-to-commit latency under a paced load: from the publish of a reading to the COMMIT that stores it.

What it does, in one run:
1. a paced publisher (paho-mqtt, QoS 1, in a forked process: `_pacer.py`) offers `--rate` messages/s of
   `--readings-per-message` readings each (default 1,000 x 50 = 50,000 readings/s) spread over `--devices`
   DC chargers, for `--seconds` (30). Every message carries its publish time as `ts` (ISO-8601, microseconds);
2. **bare aiomqtt** (the baseline, `--baseline-seconds`, default 10): an aiomqtt client with the collector's QoS 1
   persistent session and MQTT version receives the same paced stream from a fresh broker, counting only; per
   message it takes receive time minus `ts`: the floor that broker, publisher and Python client set;
3. **GridSentry**: the real `Service` (devices pre-registered, rules and HTTP up) on a fresh broker. Its
   sink (`Service.store`, awaited by the collector for every flush) is wrapped: when the awaited commit returns,
   every reading of the batch gets latency = now - its `ts`;
4. prints p50/p90/p99/max of both, the ratios GridSentry / bare aiomqtt, the achieved rate against the
   offered one, and the commit-time p50/p99 from the `gridsentry_storage_commit_seconds` histogram.

There is no latency goal: the figures are reported. Exit code 0 when every published reading was
committed, 1 otherwise, 2 on a harness failure.

    .venv/bin/python bench/latency.py                         # 50,000 readings/s for 30 s
    .venv/bin/python bench/latency.py --rate 2000 --readings-per-message 25 --seconds 60 --json lat.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

from _common import (  # noqa: E402  (bench/ is on sys.path when a bench runs as a script)
    Broker,
    HarnessError,
    Meter,
    add_collector_args,
    apply_collector_args,
    histogram_buckets,
    histogram_quantile,
    machine,
    print_table,
    run_main,
    versions,
    wait_until,
)
from _pacer import Pacer, PacerReport, iso_ts, split_specs  # noqa: E402
from ingest import metric_plan  # noqa: E402
from ingest_single import TOPIC_FILTER, bare_client  # noqa: E402

from gridsentry.config import Config, DeviceConfig  # noqa: E402
from gridsentry.service import Service  # noqa: E402
from storage.batch import IngestBatch  # noqa: E402
from storage.writer import CommitResult  # noqa: E402

SITE = "bench"
COMMIT_HISTOGRAM = "gridsentry_storage_commit_seconds"
QUANTILES = (0.5, 0.9, 0.99)


class Workload:
    """Per device a fixed set of metric values (drawn once); only `ts` changes from message to message."""

    def __init__(self, devices: int, readings_per_message: int, seed: int) -> None:
        rng = random.Random(seed)
        self.devices = [f"DC{i:04d}" for i in range(devices)]
        self.topics = [f"gridsentry/{SITE}/{d}/telemetry" for d in self.devices]
        self.r = readings_per_message
        plan = metric_plan(readings_per_message)
        self.bodies = [orjson.dumps({n: round(rng.uniform(lo, hi), 2) for n, lo, hi in plan}) for _ in self.devices]

    def payload(self, i: int, _k: int, now: float) -> tuple[bytes, int]:
        return b'{"ts":"%s","metrics":%s}' % (iso_ts(now), self.bodies[i]), self.r


def stats_us(lat: pa.ChunkedArray) -> dict[str, float | None]:
    """Quantiles (exact, linear interpolation) and max of latencies in microseconds, returned in ms."""
    if len(lat) == 0:
        return {"p50": None, "p90": None, "p99": None, "max": None, "mean": None}
    q = pc.quantile(lat, q=list(QUANTILES)).to_pylist()
    return {
        "p50": q[0] / 1000,
        "p90": q[1] / 1000,
        "p99": q[2] / 1000,
        "max": pc.max(lat).as_py() / 1000,
        "mean": pc.mean(lat).as_py() / 1000,
    }


def resolved_protocol(args: argparse.Namespace) -> str:
    p = args.protocol if args.protocol != "default" else Config().mqtt.protocol
    return "5" if p == "auto" else p  # mosquitto 2 accepts MQTT 5, so 'auto' settles on 5


def offered(args: argparse.Namespace) -> float:
    return args.rate * args.readings_per_message


def make_pacer(port: int, tag: str, wl: Workload, args: argparse.Namespace, seconds: float) -> Pacer:
    interval = len(wl.devices) / args.rate  # every device publishes every `interval` s
    return Pacer(split_specs(port, tag, wl.topics, interval, seconds, wl.payload, args.publishers))


async def pacer_reports(pacer: Pacer, seconds: float) -> list[PacerReport]:
    reps = await asyncio.to_thread(pacer.results, seconds + 180)
    for r in reps:
        if r.error:
            raise HarnessError(f"publisher failed: {r.error}")
    return reps


# --- baseline ----------------------------------------------------------------------------------------------
async def bare_aiomqtt(wl: Workload, args: argparse.Namespace, tmp: Path, protocol: str) -> dict[str, Any]:
    broker = Broker(tmp / "broker-bare", args.broker_inflight)
    broker.start()
    pacer = make_pacer(broker.port, "bare", wl, args, args.baseline_seconds)  # forked before anything else runs
    try:
        lat: list[int] = []
        async with bare_client(broker.port, protocol) as c:
            await c.subscribe(TOPIC_FILTER, qos=1)
            meter = Meter(broker).start()
            pacer.go()
            reports = asyncio.create_task(pacer_reports(pacer, args.baseline_seconds))

            async def receive() -> None:
                async for msg in c.messages:
                    now_us = time.time_ns() // 1000
                    ts = datetime.fromisoformat(orjson.loads(msg.payload)["ts"])  # type: ignore[arg-type]
                    lat.append(now_us - int(ts.timestamp() * 1_000_000))

            recv = asyncio.create_task(receive())
            reps = await reports
            expected = sum(r.messages for r in reps)
            await wait_until(lambda: len(lat) >= expected or recv.done(), 30)
            recv.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await recv
            meter.stop()
        pub_s = max(r.seconds for r in reps)
        return {
            "consumer": "bare aiomqtt",
            "protocol": protocol,
            "published_messages": expected,
            "received_messages": len(lat),
            "offered_readings_per_s": offered(args),
            "published_readings_per_s": sum(r.readings for r in reps) / pub_s if pub_s else 0.0,
            "received_readings_per_s": len(lat) * wl.r / pub_s if pub_s else 0.0,
            "latency_ms": stats_us(pa.chunked_array([pa.array(lat, pa.int64())])),
            "publisher_max_late_s": max(r.max_late_s for r in reps),
            "publisher_cpu_s": sum(r.cpu_s for r in reps),
            "cpu_s": meter.own,
            "foreign_cores": meter.foreign_cores,
            "complete": len(lat) == expected,
        }
    finally:
        pacer.kill()
        broker.stop()


# --- GridSentry --------------------------------------------------------------------------------------------
async def gridsentry(wl: Workload, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    broker = Broker(tmp / "broker-gs", args.broker_inflight)
    broker.start()
    pacer = make_pacer(broker.port, "gs", wl, args, args.seconds)  # forked before the service starts threads
    try:
        cfg = Config(data_dir=tmp / "gridsentry", log_level="WARNING")
        cfg.mqtt.port = broker.port
        cfg.mqtt.client_id = "bench-collector"
        apply_collector_args(cfg, args)
        cfg.http.port = 0
        cfg.devices = [
            DeviceConfig(id=d, site=SITE, kind="charger_dc", rated_kw=120, expected_interval_s=10) for d in wl.devices
        ]
        svc = Service(cfg)
        chunks: list[pa.Array] = []
        commit_secs: list[float] = []
        store = svc.store

        async def timed_store(batch: IngestBatch) -> CommitResult:
            result = await store(batch)
            now_us = time.time_ns() // 1000
            ts = pc.cast(batch.readings.column("ts"), pa.int64())
            chunks.append(pc.subtract(pa.scalar(now_us, pa.int64()), ts))
            return result

        svc.store = timed_store  # type: ignore[method-assign]  # start() hands self.store to the collector
        chained = svc.writer.on_commit

        def on_commit(result: CommitResult) -> None:
            commit_secs.append(result.seconds)
            if chained is not None:
                chained(result)

        svc.writer.on_commit = on_commit
        await svc.start()
        assert svc.collector is not None
        svc.collector._sink = timed_store  # the same callable; explicit in case start() changes how it binds
        await asyncio.wait_for(svc.collector.subscribed.wait(), 10)
        h0 = histogram_buckets(svc.registry, COMMIT_HISTOGRAM)
        n_commits0 = len(commit_secs)
        meter = Meter(broker).start()
        committed0 = svc.readings_committed["mqtt"]
        pacer.go()
        t_go = time.perf_counter()
        reps = await pacer_reports(pacer, args.seconds)
        t_pub_end = time.perf_counter()
        committed_at_pub_end = svc.readings_committed["mqtt"] - committed0
        published = sum(r.readings for r in reps)
        done = await wait_until(lambda: svc.readings_committed["mqtt"] - committed0 >= published, args.timeout, 0.002)
        t_done = time.perf_counter()
        meter.stop()
        h1 = histogram_buckets(svc.registry, COMMIT_HISTOGRAM)
        committed = svc.readings_committed["mqtt"] - committed0
        con = svc.writer.reader()
        try:
            row = con.execute("SELECT count(*) FROM readings").fetchone()
            stored = int(row[0]) if row else 0
        finally:
            con.close()
        protocol = svc.collector_stats.protocol
        await svc.stop()
        pub_s = max(r.seconds for r in reps)
        secs = sorted(commit_secs[n_commits0:])
        lat = pa.chunked_array(chunks, pa.int64())
        return {
            "consumer": "gridsentry",
            "protocol": protocol,
            "published_messages": sum(r.messages for r in reps),
            "published_readings": published,
            "committed_readings": committed,
            "stored_readings": stored,
            "offered_readings_per_s": offered(args),
            "published_readings_per_s": published / pub_s if pub_s else 0.0,
            "committed_readings_per_s": committed_at_pub_end / (t_pub_end - t_go),
            "drain_after_publish_s": t_done - t_pub_end,
            "latency_ms": stats_us(lat),
            "latency_readings": len(lat),
            "commit_hist_p50_s": histogram_quantile(0.5, h1, h0),
            "commit_hist_p99_s": histogram_quantile(0.99, h1, h0),
            "commits": len(secs),
            "commit_exact_p50_s": secs[len(secs) // 2] if secs else None,
            "commit_exact_p99_s": secs[min(len(secs) - 1, round(0.99 * (len(secs) - 1)))] if secs else None,
            "commit_max_s": secs[-1] if secs else None,
            "publisher_max_late_s": max(r.max_late_s for r in reps),
            "publisher_late_events": sum(r.late_events for r in reps),
            "publisher_cpu_s": sum(r.cpu_s for r in reps),
            "cpu_s": meter.own,
            "cores": meter.own / meter.wall if meter.wall else None,
            "foreign_cores": meter.foreign_cores,
            "complete": done and committed == published and stored == published,
        }
    finally:
        pacer.kill()
        broker.stop()


# --- report ------------------------------------------------------------------------------------------------
def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:,.1f}"


def report(wl: Workload, args: argparse.Namespace, bare: dict[str, Any] | None, gs: dict[str, Any]) -> None:
    m, v = machine(), versions()
    print()
    print(
        f"GridSentry ingest-to-commit latency bench: offered {args.rate:,} msg/s x {args.readings_per_message} "
        f"readings = {offered(args):,.0f} readings/s over {len(wl.devices)} devices for {args.seconds:g} s "
        f"(bare aiomqtt baseline {args.baseline_seconds:g} s), QoS 1, {args.publishers} paho publisher process(es)"
    )
    print(
        f"machine: {m['nproc']} CPUs ({m['cpu_model']}); python {v['python']}, duckdb {v.get('duckdb')}, "
        f"aiomqtt {v.get('aiomqtt')}, paho-mqtt {v.get('paho-mqtt')}, mosquitto {v.get('mosquitto')}"
    )
    print()
    rows = []
    for res in (bare, gs):
        if res is None:
            continue
        lat = res["latency_ms"]
        recv_rate = res.get("committed_readings_per_s", res.get("received_readings_per_s", 0.0))
        rows.append(
            (
                res["consumer"],
                res["protocol"],
                _ms(lat["p50"]),
                _ms(lat["p90"]),
                _ms(lat["p99"]),
                _ms(lat["max"]),
                f"{res['published_readings_per_s']:,.0f}",
                f"{recv_rate:,.0f}",
                f"{recv_rate / res['offered_readings_per_s']:.3f}",
                "-" if res["foreign_cores"] is None else f"{res['foreign_cores']:.2f}",
            )
        )
    print_table(
        (
            "consumer",
            "MQTT",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "max ms",
            "published r/s",
            "received/committed r/s",
            "vs offered",
            "foreign cores",
        ),
        rows,
    )
    print()
    g = gs["latency_ms"]
    if bare is not None and bare["latency_ms"]["p50"]:
        b = bare["latency_ms"]
        print(
            "GridSentry / bare aiomqtt latency: "
            + ", ".join(f"{k} {g[k] / b[k]:.1f}x (+{g[k] - b[k]:,.1f} ms)" for k in ("p50", "p90", "p99", "max"))
        )
    print(
        f"GridSentry: {gs['latency_readings']:,} readings timed; committed {gs['committed_readings']:,} of "
        f"{gs['published_readings']:,} published ({gs['stored_readings']:,} rows stored); the last commit came "
        f"{gs['drain_after_publish_s']:.2f} s after the last publish; CPU {gs['cpu_s']:.1f} s ({gs['cores']:.2f} cores)"
    )
    print(
        f"commit time from the {COMMIT_HISTOGRAM} histogram: p50 {_ms((gs['commit_hist_p50_s'] or 0) * 1000)} ms, "
        f"p99 {_ms((gs['commit_hist_p99_s'] or 0) * 1000)} ms (exact over {gs['commits']} commits: p50 "
        f"{_ms((gs['commit_exact_p50_s'] or 0) * 1000)} ms, p99 {_ms((gs['commit_exact_p99_s'] or 0) * 1000)} ms, "
        f"max {_ms((gs['commit_max_s'] or 0) * 1000)} ms)"
    )
    print(
        f"publisher: at most {gs['publisher_max_late_s'] * 1000:.1f} ms behind its schedule, "
        f"{gs['publisher_late_events']} messages > 50 ms late; CPU {gs['publisher_cpu_s']:.1f} s"
    )
    noisy = [r["consumer"] for r in (bare, gs) if r and (r["foreign_cores"] or 0) > 0.2]
    if noisy:
        print(f"NOISY: other tenants used > 0.2 cores during {', '.join(noisy)}; treat the figures with care")
    print()
    print("goal: none set for latency (reported only)")
    print(
        f"{'PASS' if gs['complete'] else 'FAIL'}  every published reading committed and stored "
        f"({gs['stored_readings']:,} / {gs['published_readings']:,})"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rate", type=int, default=1000, help="messages/s offered (default 1,000)")
    p.add_argument("--readings-per-message", type=int, default=50, help="readings per message (default 50)")
    p.add_argument("--devices", type=int, default=200, help="devices, pre-registered as charger_dc (default 200)")
    p.add_argument("--seconds", type=float, default=30.0, help="GridSentry measurement length (default 30)")
    p.add_argument(
        "--baseline-seconds", type=float, default=10.0, help="bare aiomqtt baseline length (default 10; 0: skip)"
    )
    p.add_argument("--publishers", type=int, default=1, help="paho publisher processes (default 1)")
    add_collector_args(p, protocol_default="default", scrape_default=0.0)
    p.add_argument("--seed", type=int, default=1, help="random seed of the generated values")
    p.add_argument("--json", type=Path, help="write every figure to this JSON file")
    a = p.parse_args(argv)
    if a.rate < 1 or a.readings_per_message < 1 or a.devices < 1 or a.seconds <= 0 or a.publishers < 1:
        p.error("--rate, --readings-per-message, --devices, --publishers and --seconds must be positive")
    return a


async def amain(args: argparse.Namespace) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="gridsentry-bench-latency-"))
    tmp.chmod(0o777)  # mosquitto drops to its own user when started as root
    try:
        wl = Workload(args.devices, args.readings_per_message, args.seed)
        bare = None
        if args.baseline_seconds > 0:
            protocol = resolved_protocol(args)
            print(f"bare aiomqtt (MQTT {protocol}) for {args.baseline_seconds:g} s ...", flush=True)
            bare = await bare_aiomqtt(wl, args, tmp, protocol)
            print(f"  p50 {_ms(bare['latency_ms']['p50'])} ms, p99 {_ms(bare['latency_ms']['p99'])} ms", flush=True)
        print(f"GridSentry for {args.seconds:g} s ...", flush=True)
        gs = await gridsentry(wl, args, tmp)
        if bare is not None and bare["protocol"] != gs["protocol"]:
            print(f"note: the collector used MQTT {gs['protocol']}, the baseline MQTT {bare['protocol']}")
        report(wl, args, bare, gs)
        if args.json:
            info = {
                "bench": "latency",
                "when": datetime.now(UTC).isoformat(timespec="seconds"),
                "command": " ".join([Path(sys.executable).name, *sys.argv]),
                "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                "machine": machine(),
                "versions": versions(),
                "baseline": bare,
                "gridsentry": gs,
            }
            args.json.write_text(json.dumps(info, indent=2) + "\n")
            print(f"figures written to {args.json}")
        return 0 if gs["complete"] else 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    return run_main(amain, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
