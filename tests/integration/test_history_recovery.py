"""History recovery: the writer reopens a database DuckDB invalidated, and the snapshot tier of engineers' SQL
serves a read-only copy from worker processes that are replaced when they die."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pytest
from typer.testing import CliRunner

from gridsentry.cli import app
from storage import backup, pitr
from storage.sql import QueryRejectedError
from storage.sql_snapshot import SnapshotQueryRunner, WorkerSettings, _open_snapshot
from storage.writer import StorageWriter
from tests.integration.test_history import NOW, batch, q, readings, setup  # noqa: F401  (the fixture)
from tests.integration.test_sql_safety import readings_batch
from tests.integration.test_storage_faults import fill, small_disk  # noqa: F401  (the fixture)

pytestmark = pytest.mark.integration
runner = CliRunner()


def count(writer: StorageWriter) -> int:
    con = writer.reader()
    try:
        row = con.execute("SELECT count(*) FROM readings").fetchone()
        return int(row[0]) if row else 0
    finally:
        con.close()


def test_writer_reopens_an_invalidated_database_and_replays_the_batch(
    small_disk: Path,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
):
    """A checkpoint that cannot write (full disk) is a fatal DuckDB error: the database instance is invalidated and
    refuses every statement. The writer reopens it and runs the failed batch again; nothing acknowledged is lost,
    nothing is stored twice, and once space is back ingest carries on without a restart."""
    writer = StorageWriter(small_disk / "gridsentry.duckdb")
    writer.start()
    start = datetime.now(UTC) - timedelta(hours=1)
    acked = 0
    try:
        for step in range(100):
            acked += writer.append_sync(readings_batch(start, 50, step)).readings
        # Every commit checkpoints, and the disk keeps room for the WAL but not for a checkpoint's blocks.
        writer.submit(lambda con: con.execute("SET wal_autocheckpoint = '1KB'")).result()
        ballast = fill(small_disk, 128 * 1024)
        failed = []
        with caplog.at_level(logging.CRITICAL, logger="storage.writer"):
            for step in range(100, 130):
                try:
                    acked += writer.append_sync(readings_batch(start, 50, step)).readings
                except Exception:
                    failed.append(step)
        assert writer.reopens >= 1, "the fatal error was met and the database reopened"
        assert "DATABASE INVALIDATED" in caplog.text
        assert failed, "with the disk still full the writes fail (and are not acknowledged)"
        ballast.unlink()
        for step in failed:  # what a broker redelivers: the batches never acknowledged
            acked += writer.append_sync(readings_batch(start, 50, step)).readings
        acked += writer.append_sync(readings_batch(start, 50, 1000)).readings
        assert writer.consecutive_failures == 0
        assert count(writer) == acked == 131 * 500, "every acknowledged reading stored once"
    finally:
        writer.close()


def test_writer_reopens_when_its_connection_is_closed_under_it(tmp_path: Path):
    writer = StorageWriter(tmp_path / "gridsentry.duckdb")
    writer.start()
    start = datetime.now(UTC)
    try:
        writer.append_sync(readings_batch(start, 10, 1))
        # A connection closed under the writer must not wedge it: the next write reopens the database and runs.
        assert writer._con is not None
        writer._con.close()
        writer.append_sync(readings_batch(start, 10, 2))
        assert writer.reopens == 1 and writer.replayed_jobs == 1
        assert count(writer) == 200
    finally:
        writer.close()


def test_snapshot_tier_reads_a_fresh_enough_copy_and_replaces_dead_workers(tmp_path: Path):
    writer = StorageWriter(tmp_path / "gridsentry.duckdb")
    writer.start()
    runner = SnapshotQueryRunner(
        writer.reader, tmp_path / "sql-snapshot", tmp_path / "archive", concurrent=1, max_age_s=1.0
    )
    start = datetime.now(UTC) - timedelta(hours=1)
    try:
        writer.append_sync(readings_batch(start, 10, 1))
        first = runner.submit("SELECT count(*) FROM readings", timeout_s=10, max_rows=10).result()
        assert first.rows == [(100,)]
        assert first.data_as_of is not None and first.data_as_of <= datetime.now(UTC)
        writer.append_sync(readings_batch(start, 10, 2))
        stale = runner.submit("SELECT count(*) FROM readings", timeout_s=10, max_rows=10).result()
        assert stale.rows == [(100,)], "within snapshot_max_age_s the same copy answers"
        time.sleep(1.2)
        fresh = runner.submit("SELECT count(*) FROM readings", timeout_s=10, max_rows=10).result()
        assert fresh.rows == [(200,)] and fresh.data_as_of is not None and fresh.data_as_of > first.data_as_of
        with pytest.raises(QueryRejectedError):
            runner.submit("DELETE FROM readings", timeout_s=10, max_rows=10).result()
        # Below the static check, the worker's connection itself cannot write, read files or change settings.
        raw = _open_snapshot(str(fresh_path(runner)), WorkerSettings(str(tmp_path / "archive"), "256MB", 1, 0))
        try:
            for statement, error in (
                ("DELETE FROM readings", "read-only"),
                ("SELECT * FROM read_csv('/etc/passwd')", "disabled"),
                ("SET memory_limit = '64GB'", "lock"),
            ):
                with pytest.raises(duckdb.Error, match=error):
                    raw.execute(statement)
        finally:
            raw.close()
        # A worker that dies (OOM killer, a crash) is replaced; the query after it runs.
        (worker,) = runner._workers
        os.kill(worker.process.pid, signal.SIGKILL)
        worker.process.wait(10)
        again = runner.submit("SELECT count(*) FROM readings", timeout_s=10, max_rows=10).result()
        assert again.rows == [(200,)]
        assert runner.stats.worker_restarts == 1
        assert runner.status()["workers"] == 1
    finally:
        runner.close()
        writer.close()
    assert not list((tmp_path / "sql-snapshot").iterdir()), "the copy is removed when the tier stops"
    assert count_rows(tmp_path / "gridsentry.duckdb") == 200


def fresh_path(runner: SnapshotQueryRunner) -> Path:
    return runner.snapshot_dir / "engineers.duckdb"


def count_rows(db: Path) -> int:
    con = duckdb.connect(str(db), read_only=True)
    try:
        row = con.execute("SELECT count(*) FROM readings").fetchone()
        return int(row[0]) if row else 0
    finally:
        con.close()


# --- point-in-time restore ------------------------------------------------------------------------------------
def test_restore_at_a_time_from_full_plus_incremental_keeps_readings_up_to_it(setup, tmp_path: Path):  # noqa: F811
    """Readings stream in (time-stamped as they commit), a full then an incremental backup are taken; restoring
    `--at` a moment between two batches brings back exactly the readings up to it, and the alert state of then."""
    w, jobs, _ = setup
    # The first readings fall in the hour before `at`'s: their rollups must survive the restore (they were
    # once lost with the pending partials whenever the test ran in the first half of an hour).
    t0 = datetime.now(UTC).replace(minute=50, second=0, microsecond=0) - timedelta(hours=2)
    w.append_sync(batch(readings(t0, 5, seed=1)))  # t0 .. t0+5 min
    w.submit(
        lambda con: con.execute(
            "INSERT INTO alerts (fingerprint, rule_id, device_id, event_class, state, title, message, fired_at, "
            "created_at, updated_at) VALUES ('f1', 'dc.temp', 'DC01', 'I', 'firing', 'Gun 1 hot', '95 °C', "
            "?, ?, ?)",
            [t0 + timedelta(minutes=5)] * 3,
        )
    ).result()
    full = asyncio.run(jobs.backup("full"))
    w.append_sync(batch(readings(t0 + timedelta(minutes=10), 5, seed=2)))  # t0+10 .. t0+15 min
    at = t0 + timedelta(minutes=16)
    w.append_sync(batch(readings(t0 + timedelta(minutes=20), 5, seed=3)))  # after `at`: must not come back
    w.submit(
        lambda con: con.execute(
            "UPDATE alerts SET state = 'acknowledged', acknowledged_at = ?, acknowledged_by = 'wang.fang', "
            "updated_at = ?",
            [t0 + timedelta(minutes=21)] * 2,
        )
    ).result()
    incr = asyncio.run(jobs.backup("incremental"))
    assert incr.parent_id == full.backup_id

    target = tmp_path / "pitr"
    report = pitr.restore_at(Path(incr.path).parent, at, target / "gs.duckdb", target / "archive")
    assert report.backup_id == incr.backup_id, "the newest backup holds everything up to `at`"
    expected = q(w, "SELECT count(*) FROM readings_all WHERE ts <= ?", [at])[0][0]
    assert report.readings == expected == 2 * 3 * 10
    assert report.removed["readings"] == 3 * 10
    con = duckdb.connect(str(target / "gs.duckdb"), read_only=True)
    try:
        assert con.execute("SELECT max(ts) <= ? FROM readings_all", [at]).fetchone() == (True,)
        assert con.execute("SELECT state, acknowledged_at FROM alerts").fetchall() == [("firing", None)]
        rollup_n = con.execute("SELECT sum(count) FROM rollup_1m").fetchone()
        good = con.execute("SELECT count(*) FROM readings_all WHERE quality = 0").fetchone()
    finally:
        con.close()
    assert rollup_n == good, "rollups recomputed from the readings that remain"
    # The same through the command line, into another data directory.
    cli_dir = tmp_path / "cli"
    ok = runner.invoke(app, ["db", "restore", incr.path, "--at", at.isoformat(), "--data-dir", str(cli_dir)])
    assert ok.exit_code == 0, ok.output
    assert f"as of {at.isoformat()}" in ok.output and f"{expected:,} readings" in ok.output
    bad = runner.invoke(app, ["db", "restore", "--at", "2026-11-20 14:30", "--data-dir", str(tmp_path / "cli2")])
    assert bad.exit_code == 2 and "time zone" in bad.output
    with pytest.raises(backup.BackupError, match="before"):
        pitr.restore_at(Path(incr.path).parent, datetime.now(UTC) + timedelta(hours=1), tmp_path / "x.duckdb", tmp_path)
    with pytest.raises(backup.BackupError, match="zone"):
        pitr.restore_at(Path(incr.path).parent, at.replace(tzinfo=None), tmp_path / "y.duckdb", tmp_path)


def test_trim_after_rewrites_the_archive_day_that_straddles_the_time(setup, tmp_path: Path):  # noqa: F811
    w, jobs, _ = setup
    for day in range(6):
        w.append_sync(batch(readings(NOW - timedelta(days=9 - day), 30, seed=day)))
    asyncio.run(jobs.maintain(NOW))
    full = asyncio.run(jobs.backup("full"))
    at = NOW - timedelta(days=7) + timedelta(minutes=12)  # inside an archived day
    target = tmp_path / "pitr"
    report = pitr.restore_at(Path(full.path).parent, at, target / "gs.duckdb", target / "archive")
    assert report.readings == q(w, "SELECT count(*) FROM readings_all WHERE ts <= ?", [at])[0][0] > 0
    assert report.removed["archived readings"] > 0
    con = duckdb.connect(str(target / "gs.duckdb"), read_only=True)
    try:
        files = con.execute("SELECT path, rows FROM archive_files").fetchall()
        assert con.execute("SELECT max(ts) <= ? FROM readings_all", [at]).fetchone() == (True,)
    finally:
        con.close()
    on_disk = sorted(p.relative_to(target / "archive").as_posix() for p in (target / "archive").rglob("*.parquet"))
    assert on_disk == sorted(f for f, _ in files), "no file left behind that the manifest does not name"
    assert backup.check(duckdb.connect(str(target / "gs.duckdb"), read_only=True), target / "archive").ok
