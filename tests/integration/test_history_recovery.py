"""History recovery: the writer reopens a database DuckDB invalidated, and the snapshot tier of engineers' SQL
serves a read-only copy from worker processes that are replaced when they die."""

from __future__ import annotations

import logging
import os
import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from storage.sql import QueryRejectedError
from storage.sql_snapshot import SnapshotQueryRunner
from storage.writer import StorageWriter
from tests.integration.test_sql_safety import readings_batch
from tests.integration.test_storage_faults import fill, small_disk  # noqa: F401  (the fixture)

pytestmark = pytest.mark.integration


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
        # The copy is opened read-only in the worker: even a statement the static check let through could not write.
        with pytest.raises(QueryRejectedError):
            runner.submit("DELETE FROM readings", timeout_s=10, max_rows=10).result()
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
    assert count_rows(tmp_path / "gridsentry.duckdb") == 200


def count_rows(db: Path) -> int:
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        row = con.execute("SELECT count(*) FROM readings").fetchone()
        return int(row[0]) if row else 0
    finally:
        con.close()
