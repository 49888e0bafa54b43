"""History: incremental rollups, the Parquet archive, retention, backup and restore (issue 9)."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from storage import backup
from storage.batch import READING_SCHEMA, IngestBatch
from storage.history import HistoryJobs
from storage.settings import HistoryConfig, RetentionConfig
from storage.writer import StorageWriter

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def readings(start: datetime, minutes: int, devices: int = 3, step_s: int = 30, seed: int = 0) -> pa.Table:
    rng = random.Random(seed)
    n_t = minutes * 60 // step_s
    ts, dev, values = [], [], []
    for d in range(devices):
        v = 40.0
        for i in range(n_t):
            v += rng.gauss(0, 0.3)
            ts.append(start + timedelta(seconds=i * step_s))
            dev.append(f"DC{d:02d}")
            values.append(round(v, 2))
    n = len(ts)
    quality = [1 if i % 17 == 0 else 0 for i in range(n)]  # suspect: kept, but not rolled up
    return pa.table(
        {
            "ts": pa.array(ts, pa.timestamp("us", tz="UTC")),
            "device_id": dev,
            "metric": ["gun1_temp_c"] * n,
            "value": values,
            "quality": pa.array(quality, pa.uint8()),
        },
        schema=READING_SCHEMA,
    )


def batch(table: pa.Table) -> IngestBatch:
    return IngestBatch(readings=table, source="test")


@pytest.fixture
def setup(tmp_path: Path):
    cfg = HistoryConfig(retention=RetentionConfig(hot_days=3, archive_days=None))
    data = tmp_path / "data"
    w = StorageWriter(
        data / "gs.duckdb",
        allowed_directories=[cfg.archive_path(data), cfg.backup_path(data)],
        lock_configuration=True,
    )
    w.start()
    jobs = HistoryJobs(w, cfg, data)
    asyncio.run(jobs.startup())
    yield w, jobs, data
    w.close()


def q(w: StorageWriter, sql: str, params: list | None = None) -> list[tuple]:
    con = w.reader()
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def test_rollups_fold_out_of_order_and_late_batches_exactly(setup):
    w, jobs, _ = setup
    data = readings(NOW - timedelta(hours=3), 180)
    parts = [data.slice(i, 500) for i in range(0, data.num_rows, 500)]
    parts.reverse()  # newest first: everything arrives out of order
    for p in parts[:-2]:
        w.append_sync(batch(p))
    asyncio.run(jobs.fold())
    for p in parts[-2:]:  # late batches into buckets that already have rollups
        w.append_sync(batch(p))
    asyncio.run(jobs.fold())
    assert q(w, "SELECT count(*) FROM rollup_pending") == [(0,)]
    for table, width in (("rollup_1m", "1 MINUTE"), ("rollup_1h", "1 HOUR")):
        diff = q(
            w,
            f"""
            WITH truth AS (
                SELECT device_id, metric, time_bucket(INTERVAL {width}, ts) bucket, count(value) count,
                       min(value) min, max(value) max, round(avg(value), 9) avg, arg_max(value, ts) AS last
                FROM readings WHERE quality IN (0, 4) GROUP BY ALL
            )
            (SELECT * FROM truth EXCEPT SELECT device_id, metric, bucket, count, min, max, round(avg, 9), last
             FROM {table})
            UNION ALL
            (SELECT device_id, metric, bucket, count, min, max, round(avg, 9), last FROM {table} EXCEPT
             SELECT * FROM truth)
            """,
        )
        assert diff == [], f"{table} differs from a full recomputation: {diff[:3]}"
    assert q(w, "SELECT count(*) FROM rollup_1h")[0][0] == 3 * 3


def test_archive_moves_old_days_and_one_view_spans_both(setup):
    w, jobs, data = setup
    total = 0
    for day in range(6):
        t = readings(NOW - timedelta(days=6 - day), 60, seed=day)
        total += t.num_rows
        w.append_sync(batch(t))
    before = q(w, "SELECT count(*), sum(value), min(ts), max(ts) FROM readings")[0]
    done = asyncio.run(jobs.archive_due(NOW))
    assert [d.day.isoformat() for d in done] == ["2026-11-14", "2026-11-15", "2026-11-16"]
    hot = q(w, "SELECT count(*) FROM readings")[0][0]
    archived = q(w, "SELECT count(*) FROM readings_archive")[0][0]
    assert hot + archived == total and archived == sum(d.rows for d in done) > 0
    after = q(w, "SELECT count(*), sum(value), min(ts), max(ts) FROM readings_all")[0]
    assert after[0] == before[0] and after[1] == pytest.approx(before[1]) and after[2:] == before[2:]
    assert q(w, "SELECT count(*) FROM v_readings WHERE ts < '2026-11-17'")[0][0] == archived
    # Sorted by device, metric and time inside each file, which is what makes it compact.
    f = data / "archive" / done[0].path
    con = duckdb.connect()
    rows = con.execute(f"SELECT device_id, metric, ts FROM '{f}'").fetchall()
    assert rows == sorted(rows)
    # A reading for an archived day arriving late lands in a second file for that day.
    w.append_sync(batch(readings(NOW - timedelta(days=6), 1, devices=1, seed=9)))
    again = asyncio.run(jobs.archive_due(NOW))
    assert [d.day.isoformat() for d in again] == ["2026-11-14"]
    assert q(w, "SELECT count(*) FROM archive_files WHERE day = '2026-11-14'")[0][0] == 2
    # An orphan (a crash between writing a file and committing it) is never read and is removed at start.
    orphan = data / "archive" / "readings" / "date=2026-11-15" / "part-1.parquet"
    orphan.write_bytes(f.read_bytes())
    assert q(w, "SELECT count(*) FROM readings_all")[0][0] == total + 2
    asyncio.run(jobs.startup())
    assert not orphan.exists()


def test_retention_expires_per_table(setup):
    w, jobs, _ = setup
    w.append_sync(batch(readings(NOW - timedelta(days=120), 10)))
    w.append_sync(batch(readings(NOW - timedelta(hours=1), 10)))
    asyncio.run(jobs.fold())
    jobs.cfg.retention.archive_days = 100
    asyncio.run(jobs.maintain(NOW))
    assert q(w, "SELECT count(*) FROM rollup_1m WHERE bucket < ?", [NOW - timedelta(days=90)]) == [(0,)]
    assert q(w, "SELECT count(*) FROM rollup_1m")[0][0] == 3 * 10
    assert q(w, "SELECT count(*) FROM archive_files") == [(0,)], "the 120-day-old day was archived, then expired"
    assert q(w, "SELECT count(*) FROM readings_all WHERE ts < ?", [NOW - timedelta(days=100)]) == [(0,)]
    assert q(w, "SELECT count(*) FROM rollup_1h WHERE bucket < ?", [NOW - timedelta(days=100)])[0][0] > 0


def test_full_and_incremental_backup_restore_every_reading_and_alert(setup, tmp_path):
    w, jobs, _ = setup
    for day in range(6):
        w.append_sync(batch(readings(NOW - timedelta(days=9 - day), 30, seed=day)))
    w.submit(
        lambda con: con.execute(
            "INSERT INTO alerts (fingerprint, rule_id, device_id, event_class, state, title, message, fired_at, "
            "created_at, updated_at) VALUES ('f1', 'dc.temp', 'DC01', 'I', 'firing', 'Gun 1 hot', '95 °C', "
            "now(), now(), now())"
        )
    ).result()
    asyncio.run(jobs.maintain(NOW))
    full = asyncio.run(jobs.backup("full"))
    assert full.kind == "full" and full.files
    for day in range(6, 9):
        w.append_sync(batch(readings(NOW - timedelta(days=9 - day), 30, seed=day)))
    asyncio.run(jobs.maintain(NOW + timedelta(days=3)))
    incr = asyncio.run(jobs.backup("incremental"))
    assert incr.kind == "incremental" and incr.parent_id == full.backup_id
    own = [rel for rel, m in incr.files.items() if m["backup_id"] == incr.backup_id]
    assert own and len(own) < len(incr.files), "an incremental backup copies only the new archive files"
    assert q(w, "SELECT count(*) FROM backup_log") == [(2,)]

    target = tmp_path / "restored"
    report = backup.restore(Path(incr.path), target / "gs.duckdb", target / "archive")
    assert report.archived_readings == incr.archived_readings
    con = w.reader()
    try:
        live_readings = con.execute("SELECT * FROM readings_all").to_arrow_table()
        live_alerts = con.execute("SELECT * FROM alerts").to_arrow_table()
    finally:
        con.close()
    check = duckdb.connect()
    check.execute(f"ATTACH '{target / 'gs.duckdb'}' AS r (READ_ONLY)")
    check.register("live_readings", live_readings)
    check.register("live_alerts", live_alerts)
    restored = (
        f"(SELECT * FROM r.readings UNION ALL SELECT ts, device_id, metric, value, quality "
        f"FROM read_parquet('{target / 'archive'}/readings/*/*.parquet'))"
    )
    missing = check.execute(f"SELECT count(*) FROM (SELECT * FROM live_readings EXCEPT ALL {restored})").fetchone()
    extra = check.execute(f"SELECT count(*) FROM ({restored} EXCEPT ALL SELECT * FROM live_readings)").fetchone()
    alerts = check.execute("SELECT * FROM live_alerts EXCEPT ALL SELECT * FROM r.alerts").fetchall()
    assert extra == (0,), target
    check.close()
    assert missing == (0,)
    assert alerts == []
    # The restored database opens and serves the same view spanning hot and archive.
    rcon = duckdb.connect(str(target / "gs.duckdb"), read_only=True)
    assert rcon.execute("SELECT count(*) FROM readings_all").fetchone()[0] == incr.readings
    rcon.close()
    # A damaged backup file is detected, not restored.
    victim = next(Path(full.path).glob("archive/readings/*/*.parquet"))
    victim.write_bytes(victim.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(backup.BackupError, match="checksum"):
        backup.restore(Path(full.path), tmp_path / "again" / "gs.duckdb", tmp_path / "again" / "archive")


def test_check_reads_everything_and_flags_a_missing_archive_file(setup):
    w, jobs, data = setup
    for day in range(5):
        if day == 2:
            continue  # a day with no data at all is reported
        w.append_sync(batch(readings(NOW - timedelta(days=6 - day), 30, seed=day)))
    asyncio.run(jobs.maintain(NOW))
    con = w.reader()
    try:
        report = backup.check(con, jobs.archive_root)
        assert report.ok, report.problems
        assert report.days_without_readings == ["2026-11-16"]
        assert report.hot_readings + report.archived_readings == 4 * 3 * 60
        next((data / "archive").rglob("*.parquet")).unlink()
        report = backup.check(con, jobs.archive_root)
    finally:
        con.close()
    assert not report.ok and "missing" in report.problems[0]


async def test_db_commands_go_through_the_running_service(tmp_path):
    """`gridsentry db backup/check` ask the running service (its file is locked); restore refuses to run."""
    import subprocess
    import sys

    from gridsentry.config import Config
    from gridsentry.service import Service

    cfg = Config(data_dir=tmp_path / "data")
    cfg.http.port = 0
    cfg.mqtt.enabled = False
    cfg.rules.builtin_packs = False
    service = Service(cfg)
    await service.start()
    try:
        await service.writer.append(batch(readings(datetime.now(UTC) - timedelta(hours=2), 30)))
        run = [sys.executable, "-m", "gridsentry.cli", "db"]
        args = ["--data-dir", str(cfg.data_dir)]
        b = await asyncio.to_thread(subprocess.run, [*run, "backup", *args], capture_output=True, text=True)
        assert b.returncode == 0, b.stderr
        assert "full backup" in b.stdout and "180 readings" in b.stdout
        c = await asyncio.to_thread(subprocess.run, [*run, "check", "--json", *args], capture_output=True, text=True)
        assert c.returncode == 0, c.stderr
        assert '"ok": true' in c.stdout
        backup_dir = next(service.history.backup_root.iterdir())
        r = await asyncio.to_thread(
            subprocess.run, [*run, "restore", str(backup_dir), *args], capture_output=True, text=True
        )
        assert r.returncode == 2 and "stop it before restoring" in r.stderr
    finally:
        await service.stop()
    # Stopped: the same commands work on the file.
    c = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "gridsentry.cli", "db", "check", "--data-dir", str(cfg.data_dir)],
        capture_output=True,
        text=True,
    )
    assert c.returncode == 0, c.stderr
    assert "ok" in c.stdout


async def test_scheduled_backups_and_folds_run_from_config(setup):
    w, jobs, _ = setup
    jobs.cfg.rollup_interval_s = 0.2
    jobs.cfg.backup.full_every_h = 2 / 3600  # every 2 s
    jobs.cfg.backup.incremental_every_h = 0.5 / 3600
    jobs.cfg.backup.keep_full = 1
    w.append_sync(batch(readings(NOW - timedelta(hours=1), 10)))
    stop = asyncio.Event()
    task = asyncio.create_task(jobs.run(stop))
    await asyncio.sleep(3.5)
    stop.set()
    await task
    kinds = [b.kind for b in backup.list_backups(jobs.backup_root)]
    assert kinds[0] == "full" and "incremental" in kinds, kinds
    assert kinds.count("full") == 1, "keep_full=1 removed the older full backup and its incrementals"
    assert jobs.stats.backups >= 3 and not jobs.stats.errors
    assert q(w, "SELECT count(*) FROM rollup_pending") == [(0,)], "the last fold runs at stop"
    assert q(w, "SELECT count(*) FROM rollup_1m")[0][0] == 3 * 10
