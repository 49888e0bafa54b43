"""S3 and S4: engineers' SQL cannot write or escape, and heavy queries do not starve ingest.

The service runs for real (API on loopback, single writer); ingest is driven through the service's own
`store` (the collector's sink), so every committed reading is counted exactly.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pyarrow as pa
import pytest
from pydantic import SecretStr

from gridsentry.auth import AuthConfig, TokenConfig, new_token
from gridsentry.config import Config, DeviceConfig
from gridsentry.service import Service
from storage.batch import READING_SCHEMA, IngestBatch

pytestmark = pytest.mark.integration

ENGINEER = new_token()

# Every one of these must be refused before it runs, fail inside the sandbox, or be stopped at the timeout.
HOSTILE = [
    "DELETE FROM readings",
    "DROP TABLE readings",
    "INSERT INTO readings VALUES (now(), 'X', 'm', 1, 0)",
    "UPDATE alerts SET state = 'closed'",
    "TRUNCATE readings",
    "CREATE TABLE stolen AS SELECT * FROM readings",
    "CREATE TEMP TABLE scratch (a INT)",
    "CREATE OR REPLACE VIEW v_readings AS SELECT 1",
    "ALTER TABLE readings ADD COLUMN x INT",
    "COPY readings TO '/tmp/gridsentry-stolen.csv'",
    "COPY (SELECT 1) TO '{archive}/readings/evil.parquet'",
    "EXPORT DATABASE '/tmp/gridsentry-export'",
    "ATTACH '/tmp/gridsentry-evil.duckdb' AS evil",
    "DETACH gridsentry",
    "INSTALL httpfs",
    "LOAD '/tmp/evil.duckdb_extension'",
    "SET memory_limit = '64GB'",
    "SET enable_external_access = true",
    "RESET lock_configuration",
    "PRAGMA enable_profiling",
    "PRAGMA database_size",
    "CALL checkpoint()",
    "CHECKPOINT",
    "VACUUM readings",
    "SELECT * FROM checkpoint()",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_text('/etc/shadow')",
    "SELECT * FROM glob('/root/*')",
    "SELECT * FROM 'https://example.com/data.csv'",
    "SELECT 1; DELETE FROM readings",
    "SELECT 1; SELECT 2",
    "SELECT * FROM query('DELETE FROM readings')",
    "SELECT * FROM query_table('readings')",
    "SELECT nextval('alert_id_seq')",
    "EXPLAIN ANALYZE DELETE FROM readings",
    "EXPLAIN ANALYZE COPY (SELECT 1) TO '{archive}/explain.parquet'",
    "BEGIN TRANSACTION",
    "PREPARE wipe AS DELETE FROM readings",
    "CREATE SECRET s (TYPE s3, KEY_ID 'x', SECRET 'y')",
    "SELECT count(*) FROM readings a, readings b, readings c",
    "WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t) SELECT count(*) FROM t",
    "SELECT string_agg(x::VARCHAR, ',') FROM range(2000000000) t(x)",
]


def readings_batch(start: datetime, n_devices: int, step: int) -> IngestBatch:
    ts = [start + timedelta(microseconds=step)] * (n_devices * 10)
    devices = [f"CP{d:04d}" for d in range(n_devices) for _ in range(10)]
    metrics = [f"m{i}" for _ in range(n_devices) for i in range(10)]
    values = [float((step * 7 + i) % 1000) / 10 for i in range(n_devices * 10)]
    table = pa.table(
        {
            "ts": pa.array(ts, pa.timestamp("us", tz="UTC")),
            "device_id": devices,
            "metric": metrics,
            "value": values,
            "quality": pa.array([0] * len(ts), pa.uint8()),
        },
        schema=READING_SCHEMA,
    )
    return IngestBatch(readings=table, source="test")


async def start_service(tmp_path: Path, **history: object) -> Service:
    devices = [DeviceConfig(id=f"CP{d:04d}", site="s1", kind="charger_ac") for d in range(400)]
    cfg = Config(data_dir=tmp_path / "data", devices=devices)
    cfg.http.port = 0
    cfg.mqtt.enabled = False
    cfg.rules.builtin_packs = False
    cfg.auth = AuthConfig(
        tokens=[TokenConfig(name="li.wei", role="engineer", token=SecretStr(ENGINEER))], local_token=False
    )
    for key, value in history.items():
        if key == "threads":
            cfg.storage.threads = int(value)  # type: ignore[call-overload]
        else:
            setattr(cfg.history.sql, key, value)
    service = Service(cfg)
    await service.start()
    return service


class Ingest:
    """Stores `rate` readings per second in batches of `devices` x 10 metrics, and records commit latency."""

    def __init__(self, service: Service, rate: int = 5000, devices: int = 100) -> None:
        self.service = service
        self.devices = devices
        self.interval = devices * 10 / rate
        self.sent = 0
        self.latencies: list[tuple[float, float]] = []  # (monotonic time, commit seconds)
        self.step = 0

    async def run(self, stop: asyncio.Event) -> None:
        start = datetime.now(UTC) - timedelta(hours=1)
        next_at = time.monotonic()
        while not stop.is_set():
            self.step += 1
            batch = readings_batch(start, self.devices, self.step)
            result = await self.service.store(batch)
            self.sent += batch.reading_count
            self.latencies.append((time.monotonic(), result.seconds))
            next_at += self.interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))


def stored(service: Service) -> int:
    con = service.writer.reader()
    try:
        row = con.execute("SELECT count(*) FROM readings").fetchone()
        return int(row[0]) if row else 0
    finally:
        con.close()


@pytest.mark.parametrize("tier", ["live", "snapshot"])
async def test_s3_hostile_sql_is_refused_or_stopped_while_ingest_loses_nothing(tmp_path: Path, tier: str):
    service = await start_service(tmp_path, timeout_s=3.0, tier=tier)
    archive = service.history.archive_root
    ingest = Ingest(service)
    stop = asyncio.Event()
    task = asyncio.create_task(ingest.run(stop))
    outcomes: dict[str, tuple[int, float]] = {}
    try:
        await asyncio.sleep(0.5)
        async with httpx.AsyncClient(base_url=service.http_url, timeout=30) as http:
            for text in HOSTILE:
                query = text.format(archive=archive)
                t0 = time.monotonic()
                r = await http.post("/api/sql", json={"query": query}, headers={"authorization": f"Bearer {ENGINEER}"})
                outcomes[query] = (r.status_code, time.monotonic() - t0)
            # The sandbox still answers honest questions, including over the archive view.
            ok = await http.post(
                "/api/sql",
                json={"query": "SELECT count(*) AS n FROM v_readings"},
                headers={"authorization": f"Bearer {ENGINEER}"},
            )
        await asyncio.sleep(0.3)
    finally:
        stop.set()
        await task
    assert len(HOSTILE) >= 30
    ran = {q: s for q, (s, _) in outcomes.items() if s == 200}
    assert ran == {}, f"hostile statements that ran: {ran}"
    slow = {q: round(t, 1) for q, (_, t) in outcomes.items() if t > 3.0 * 3 + 5}
    assert slow == {}, f"not stopped within the timeout: {slow}"
    stopped = [q for q, (s, _) in outcomes.items() if s == 408]
    assert len(stopped) >= 2, "the runaway joins are stopped by the timeout"
    assert ok.status_code == 200 and ok.json()["rows"][0][0] > 0
    assert stored(service) == ingest.sent > 0, "0 readings lost while the attacks ran"
    con = service.writer.reader()
    try:
        audited = con.execute(
            "SELECT count(*) FROM audit_log WHERE target = '/api/sql' AND actor = 'li.wei' AND duration_s IS NOT NULL"
        ).fetchone()
        tables = con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'readings'").fetchone()
    finally:
        con.close()
    await service.stop()
    assert audited is not None and audited[0] >= len(HOSTILE) + 1, "every query is audit-logged with user and duration"
    assert tables == (1,)
    assert not list(archive.rglob("*.parquet")), "nothing was written into the archive"
    assert not Path("/tmp/gridsentry-stolen.csv").exists()


async def test_s4_heavy_queries_do_not_slow_commits(tmp_path: Path):
    # The default tier and cap: 2 of the 4 run at once. The snapshot tier is measured against it by
    # bench/sql_tiers.py (same run, docs/benchmarks.md); S3 covers its sandbox.
    service = await start_service(tmp_path, timeout_s=60.0, tier="live")
    # History to chew on: 2 M readings (the hot table, as after a few days of a small fleet).
    await service.writer.run(
        lambda con: con.execute(
            "INSERT INTO readings SELECT now() - to_seconds(i // 400), 'CP' || lpad((i % 400)::VARCHAR, 4, '0'), "
            "'m' || (i % 10), (i % 997) / 10.0, 0 FROM range(2000000) t(i)"
        )
    )
    ingest = Ingest(service, devices=25)  # 20 commits a second: enough for a p99
    stop = asyncio.Event()
    task = asyncio.create_task(ingest.run(stop))
    heavy = (
        "SELECT device_id, metric, time_bucket(INTERVAL 1 HOUR, ts) h, avg(value), quantile_cont(value, 0.99), "
        "count(DISTINCT value) FROM readings_all GROUP BY ALL ORDER BY 4 DESC"
    )
    queries_done = 0

    async def engineer(deadline: float) -> None:
        nonlocal queries_done
        async with httpx.AsyncClient(base_url=service.http_url, timeout=120) as http:
            while time.monotonic() < deadline:
                r = await http.post(
                    "/api/sql",
                    json={"query": heavy, "max_rows": 10},
                    headers={"authorization": f"Bearer {ENGINEER}"},
                )
                assert r.status_code == 200, r.text
                queries_done += 1

    try:
        # Steady state first (on the snapshot tier this starts the query processes and makes the copy).
        async with httpx.AsyncClient(base_url=service.http_url, timeout=120) as http:
            warm = await http.post(
                "/api/sql",
                json={"query": "SELECT count(*) FROM readings"},
                headers={"authorization": f"Bearer {ENGINEER}"},
            )
            assert warm.status_code == 200, warm.text
        t_base = time.monotonic()
        await asyncio.sleep(6)  # baseline: ingest alone
        t_load = time.monotonic()
        await asyncio.gather(*(engineer(t_load + 6) for _ in range(4)))
        t_end = time.monotonic()
    finally:
        stop.set()
        await task
    base = [s for t, s in ingest.latencies if t_base + 1 <= t < t_load]
    loaded = [s for t, s in ingest.latencies if t_load <= t <= t_end]
    q_base = statistics.quantiles(base, n=100)
    q_loaded = statistics.quantiles(loaded, n=100)
    lost = ingest.sent - (stored(service) - 2_000_000)
    await service.stop()
    print(
        f"S4: {queries_done} heavy queries, {len(base)} / {len(loaded)} commits alone / with queries; commit latency "
        f"p50 {q_base[49] * 1000:.1f} / {q_loaded[49] * 1000:.1f} ms, p95 {q_base[94] * 1000:.1f} / "
        f"{q_loaded[94] * 1000:.1f} ms, p99 {q_base[98] * 1000:.1f} / {q_loaded[98] * 1000:.1f} ms"
    )
    rate = len(loaded) * 250 / (t_end - t_load)
    base_rate = len(base) * 250 / (t_load - t_base - 1)
    print(f"S4: ingest kept {rate:,.0f} readings/s while the queries ran ({base_rate:,.0f} alone)")
    assert queries_done >= 4
    assert lost == 0
    # Relative to what ingest reached alone in the same run: other test runs share the two cores.
    assert rate >= 0.8 * min(base_rate, 5000), "ingest kept pace with the stream"
    # The typical commit is unaffected. The figure is the p99 (+20 %): printed above and measured for both
    # tiers by bench/sql_tiers.py (docs/benchmarks.md); on a shared 2-core machine it is too noisy to assert.
    assert q_loaded[49] <= q_base[49] * 1.5 + 0.005, (q_base[49], q_loaded[49])
