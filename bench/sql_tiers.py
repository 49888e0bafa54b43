"""S4 both ways, same run: commit latency of a 5,000 readings/s stream while four engineers loop heavy queries,
with the queries on the live tier (reader connections in the service) and on the snapshot tier (worker
processes on a read-only copy), rounds alternating so both see the same machine.

For each tier and round: a fresh service with `--rows` readings of history, one warm-up query (the snapshot
tier spawns its workers and makes its first copy there), `--phase-s` seconds of ingest alone (baseline),
then `--phase-s` seconds with four engineers each looping a heavy aggregate through `POST /api/sql`. The
snapshot tier then refreshes its copy once while ingest continues, to show what a refresh costs the writer.

    .venv/bin/python bench/sql_tiers.py                    # 2 rounds x 2 tiers, 2 M readings, 10 s phases
    .venv/bin/python bench/sql_tiers.py --rounds 1 --phase-s 6
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pyarrow as pa
from pydantic import SecretStr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import machine, print_table, versions
from gridsentry.auth import AuthConfig, TokenConfig, new_token
from gridsentry.config import Config, DeviceConfig
from gridsentry.service import Service
from storage.batch import READING_SCHEMA, IngestBatch
from storage.sql_snapshot import SnapshotQueryRunner

TOKEN = new_token()
HEAVY = (
    "SELECT device_id, metric, time_bucket(INTERVAL 1 HOUR, ts) h, avg(value), quantile_cont(value, 0.99), "
    "count(DISTINCT value) FROM readings_all GROUP BY ALL ORDER BY 4 DESC"
)


def batch(start: datetime, devices: int, step: int) -> IngestBatch:
    n = devices * 10
    table = pa.table(
        {
            "ts": pa.array([start + timedelta(microseconds=step)] * n, pa.timestamp("us", tz="UTC")),
            "device_id": [f"CP{d:04d}" for d in range(devices) for _ in range(10)],
            "metric": [f"m{i}" for _ in range(devices) for i in range(10)],
            "value": [float((step * 7 + i) % 1000) / 10 for i in range(n)],
            "quality": pa.array([0] * n, pa.uint8()),
        },
        schema=READING_SCHEMA,
    )
    return IngestBatch(readings=table, source="bench")


class Stream:
    def __init__(self, service: Service, rate: int, devices: int) -> None:
        self.service, self.devices, self.interval = service, devices, devices * 10 / rate
        self.sent = 0
        self.latencies: list[tuple[float, float]] = []

    async def run(self, stop: asyncio.Event) -> None:
        start = datetime.now(UTC) - timedelta(hours=1)
        next_at, step = time.monotonic(), 0
        while not stop.is_set():
            step += 1
            b = batch(start, self.devices, step)
            result = await self.service.store(b)
            self.sent += b.reading_count
            self.latencies.append((time.monotonic(), result.seconds))
            next_at += self.interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    def between(self, t0: float, t1: float) -> list[float]:
        return [s for t, s in self.latencies if t0 <= t <= t1]


async def one_round(tier: str, workdir: Path, args: argparse.Namespace) -> dict[str, object]:
    cfg = Config(
        data_dir=workdir, devices=[DeviceConfig(id=f"CP{d:04d}", site="s1", kind="charger_ac") for d in range(400)]
    )
    cfg.http.port = 0
    cfg.mqtt.enabled = False
    cfg.rules.builtin_packs = False
    cfg.auth = AuthConfig(
        tokens=[TokenConfig(name="bench", role="engineer", token=SecretStr(TOKEN))], local_token=False
    )
    cfg.history.sql.tier = tier  # type: ignore[assignment]
    cfg.history.sql.timeout_s = 120
    service = Service(cfg)
    await service.start()
    rows = args.rows
    await service.writer.run(
        lambda con: con.execute(
            f"INSERT INTO readings SELECT now() - to_seconds(i // 400), 'CP' || lpad((i % 400)::VARCHAR, 4, '0'), "
            f"'m' || (i % 10), (i % 997) / 10.0, 0 FROM range({rows}) t(i)"
        )
    )
    headers = {"authorization": f"Bearer {TOKEN}"}
    queries = 0
    async with httpx.AsyncClient(base_url=service.http_url or "", timeout=300, headers=headers) as http:
        r = await http.post("/api/sql", json={"query": "SELECT count(*) FROM readings"})
        r.raise_for_status()
        stream = Stream(service, args.rate, devices=25)
        stop = asyncio.Event()
        task = asyncio.create_task(stream.run(stop))
        cpu_base0 = process_cpu_s()
        await asyncio.sleep(args.phase_s)
        t_load = time.monotonic()
        cpu_load0 = process_cpu_s()
        workers_cpu0 = workers_cpu_s(service)

        async def engineer(deadline: float) -> None:
            nonlocal queries
            while time.monotonic() < deadline:
                resp = await http.post("/api/sql", json={"query": HEAVY, "max_rows": 10})
                resp.raise_for_status()
                queries += 1

        await asyncio.gather(*(engineer(t_load + args.phase_s) for _ in range(4)))
        t_end = time.monotonic()
        cpu_load1 = process_cpu_s()
        workers_cpu = workers_cpu_s(service) - workers_cpu0
        refresh_s = None
        t_refresh0 = t_refresh1 = 0.0
        if isinstance(service.sql, SnapshotQueryRunner):
            await asyncio.sleep(1)
            t_refresh0 = time.monotonic()
            await asyncio.to_thread(service.sql.refresh)
            t_refresh1 = time.monotonic()
            refresh_s = t_refresh1 - t_refresh0
            await asyncio.sleep(0.5)
        stop.set()
        await task
    con = service.writer.reader()
    try:
        got = con.execute("SELECT count(*) FROM readings").fetchone()
    finally:
        con.close()
    await service.stop()
    stored = (int(got[0]) if got else 0) - rows
    return {
        "base": stream.between(t_load - args.phase_s + 1, t_load),
        "loaded": stream.between(t_load, t_end),
        "refresh": stream.between(t_refresh0, t_refresh1 + 0.1) if refresh_s is not None else [],
        "refresh_s": refresh_s,
        "queries": queries,
        "lost": stream.sent - stored,
        "rate": len(stream.between(t_load, t_end)) * 250 / (t_end - t_load),
        # CPU of the service process per wall second: alone, and while the queries ran (the live tier runs them
        # inside it; the snapshot tier in its worker processes, whose CPU is counted apart).
        "cpu_alone": (cpu_load0 - cpu_base0) / args.phase_s,
        "cpu_loaded": (cpu_load1 - cpu_load0) / (t_end - t_load),
        "workers_cpu": workers_cpu / (t_end - t_load),
    }


def process_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def workers_cpu_s(service: Service) -> float:
    """CPU seconds used so far by the snapshot tier's query processes (0 on the live tier)."""
    if not isinstance(service.sql, SnapshotQueryRunner):
        return 0.0
    total = 0.0
    for w in service.sql._workers:
        try:
            fields = Path(f"/proc/{w.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def q(values: list[float], p: int) -> float:
    if len(values) < 2:
        return float("nan")
    return statistics.quantiles(values, n=100)[p - 1] * 1000


async def amain(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING)
    print(f"machine: {machine()}; versions: {versions()}; load average at start {os.getloadavg()}")
    pooled: dict[str, dict[str, list[float]]] = {
        t: {"base": [], "loaded": [], "refresh": []} for t in ("live", "snapshot")
    }
    extra: dict[str, dict[str, float]] = {t: {"queries": 0, "lost": 0, "min_rate": 1e9} for t in ("live", "snapshot")}
    refreshes: list[float] = []
    rows = []
    cpu_rows: list[list[object]] = []
    for r in range(args.rounds):
        order = ("live", "snapshot") if r % 2 == 0 else ("snapshot", "live")
        for tier in order:
            work = Path(tempfile.mkdtemp(prefix=f"gs-bench-sql-{tier}-"))
            try:
                res = await one_round(tier, work, args)
            finally:
                shutil.rmtree(work, ignore_errors=True)
            for k in ("base", "loaded", "refresh"):
                pooled[tier][k] += res[k]  # type: ignore[arg-type]
            extra[tier]["queries"] += res["queries"]  # type: ignore[operator]
            extra[tier]["lost"] += res["lost"]  # type: ignore[operator]
            extra[tier]["min_rate"] = min(extra[tier]["min_rate"], res["rate"])  # type: ignore[type-var]
            if res["refresh_s"] is not None:
                refreshes.append(res["refresh_s"])  # type: ignore[arg-type]
            b, lo = res["base"], res["loaded"]
            cpu_rows.append(
                [r + 1, tier, f"{res['cpu_alone']:.2f}", f"{res['cpu_loaded']:.2f}", f"{res['workers_cpu']:.2f}"]
            )
            rows.append(
                [
                    r + 1,
                    tier,
                    f"{q(b, 50):.1f} / {q(lo, 50):.1f}",
                    f"{q(b, 95):.1f} / {q(lo, 95):.1f}",  # type: ignore[arg-type]
                    f"{q(b, 99):.1f} / {q(lo, 99):.1f}",
                    f"{q(lo, 99) / q(b, 99):.2f}x",
                    res["queries"],
                    res["lost"],
                ]  # type: ignore[arg-type]
            )
            print(f"round {r + 1} {tier}: done (load average {os.getloadavg()[0]:.1f})", flush=True)
    print("\ncommit latency, ms, ingest alone / with 4 engineers' heavy queries")
    print_table(["round", "tier", "p50", "p95", "p99", "p99 ratio", "queries", "lost"], rows)
    print("\nCPU cores used: by the service process alone / with the queries, and by query processes")
    print_table(["round", "tier", "service alone", "service loaded", "query processes"], cpu_rows)
    print("\npooled over rounds")
    summary = []
    for tier in ("live", "snapshot"):
        b, lo = pooled[tier]["base"], pooled[tier]["loaded"]
        summary.append(
            [
                tier,
                f"{q(b, 50):.1f} / {q(lo, 50):.1f}",
                f"{q(b, 99):.1f} / {q(lo, 99):.1f}",
                f"{(q(lo, 99) / q(b, 99) - 1) * 100:+.0f} %",
                int(extra[tier]["queries"]),
                int(extra[tier]["lost"]),
                f"{extra[tier]['min_rate']:,.0f}",
            ]
        )
    print_table(["tier", "p50", "p99", "p99 rise", "queries", "lost", "slowest ingest rate/s"], summary)
    live99 = q(pooled["live"]["loaded"], 99)
    snap99 = q(pooled["snapshot"]["loaded"], 99)
    print(f"\nsnapshot tier loaded p99 against live tier loaded p99 (baseline): {snap99 / live99:.2f}x")
    if refreshes:
        ref = pooled["snapshot"]["refresh"]
        print(
            f"snapshot refresh of {args.rows:,} readings: {statistics.median(refreshes):.2f} s (median); commits during "
            f"refreshes: {len(ref)}, p50 {q(ref, 50):.1f} ms, max {max(ref, default=0) * 1000:.1f} ms"
        )
    goal = (q(pooled["snapshot"]["loaded"], 99) / q(pooled["snapshot"]["base"], 99) - 1) * 100
    print(f"goal (issue 9 S4): p99 rise <= +20 %: snapshot tier {goal:+.0f} % -> {'met' if goal <= 20 else 'NOT met'}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--rows", type=int, default=2_000_000, help="Readings of history the queries chew on.")
    p.add_argument("--rate", type=int, default=5000, help="Readings per second of the stream.")
    p.add_argument("--phase-s", type=float, default=10.0)
    return asyncio.run(amain(p.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
