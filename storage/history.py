"""History upkeep while the service runs: fold rollups, archive old days, apply retention, take backups.

Every change goes through the single writer (short transactions); the heavy reads (writing a day of
Parquet, copying the database for a backup) run on reader connections in worker threads, so ingest
keeps committing while they work. Failures are logged, counted and retried at the next run; they never
stop the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb

from storage import archive, backup, rollup
from storage.lake import LakeShipper
from storage.settings import HistoryConfig
from storage.writer import StorageWriter

log = logging.getLogger(__name__)


@dataclass
class HistoryStats:
    folds: int = 0
    fold_seconds: float = 0.0
    pending_folded: int = 0
    days_archived: int = 0
    readings_archived: int = 0
    archive_retries: int = 0
    rows_expired: dict[str, int] = field(default_factory=dict)
    backups: int = 0
    last_backup_at: float | None = None
    errors: dict[str, int] = field(default_factory=dict)

    def failed(self, job: str) -> None:
        self.errors[job] = self.errors.get(job, 0) + 1


RETENTION_TABLES = (
    ("rollup_1m", "bucket", "rollup_1m_days"),
    ("rollup_1h", "bucket", "rollup_1h_days"),
    ("events", "ts", "events_days"),
    ("dead_letters", "ts", "dead_letters_days"),
    ("audit_log", "ts", "audit_days"),
)


class HistoryJobs:
    def __init__(self, writer: StorageWriter, cfg: HistoryConfig, data_dir: Path) -> None:
        self.writer = writer
        self.cfg = cfg
        self.archive_root = cfg.archive_path(data_dir)
        self.backup_root = cfg.backup_path(data_dir)
        self.data_dir = data_dir
        self.stats = HistoryStats()
        self.lake: LakeShipper | None = None

    # --- start-up ------------------------------------------------------------------------------
    async def startup(self) -> None:
        self.archive_root.mkdir(parents=True, exist_ok=True)

        def prepare(con: duckdb.DuckDBPyConnection) -> None:
            archive.remove_orphans(con, self.archive_root)
            archive.refresh_view(con, self.archive_root)

        await self.writer.run(prepare)

    # --- jobs ----------------------------------------------------------------------------------
    async def fold(self) -> rollup.FoldResult:
        t0 = time.perf_counter()
        result = await self.writer.run(rollup.fold_pending)
        self.stats.folds += 1
        self.stats.fold_seconds = time.perf_counter() - t0
        self.stats.pending_folded += result.pending_rows
        return result

    async def archive_due(self, now: datetime | None = None) -> list[archive.ArchivedDay]:
        con = self.writer.reader()
        try:
            days = await asyncio.to_thread(archive.days_due, con, self.cfg.retention.hot_days, now)
        finally:
            con.close()
        done = []
        for day in days:
            con = self.writer.reader()
            try:
                rel, rows, size, seconds = await asyncio.to_thread(archive.export_day, con, self.archive_root, day)
            finally:
                con.close()
            committed = await self.writer.run(functools.partial(self._commit_day, day=day, rel=rel, rows=rows))
            if not committed:
                self.stats.archive_retries += 1
                archive.unlink_files(self.archive_root, [rel])
                log.warning("readings for %s arrived while it was being archived; archiving it again next run", day)
                continue
            self.stats.days_archived += 1
            self.stats.readings_archived += rows
            log.info("archived %s: %d readings, %.1f MB in %.1f s", day, rows, size / 1e6, seconds)
            done.append(archive.ArchivedDay(day, rel, rows, size, seconds))
        return done

    def _commit_day(self, con: duckdb.DuckDBPyConnection, *, day: date, rel: str, rows: int) -> bool:
        return archive.commit_day(con, self.archive_root, day, rel, rows)

    async def expire(self, now: datetime | None = None) -> dict[str, int]:
        now = now or datetime.now(UTC)
        ret = self.cfg.retention
        removed: dict[str, int] = {}

        def run(con: duckdb.DuckDBPyConnection) -> list[str]:
            for table, column, setting in RETENTION_TABLES:
                days = getattr(ret, setting)
                if days is None:
                    continue
                row = con.execute(
                    f"DELETE FROM {table} WHERE {column} < ?::TIMESTAMPTZ RETURNING 1", [now - timedelta(days=days)]
                ).fetchall()
                if row:
                    removed[table] = len(row)
            if ret.archive_days is None:
                return []
            return archive.drop_days_before(con, self.archive_root, (now - timedelta(days=ret.archive_days)).date())

        files = await self.writer.run(run)
        archive.unlink_files(self.archive_root, files)
        if files:
            removed["archive_files"] = len(files)
        for table, n in removed.items():
            self.stats.rows_expired[table] = self.stats.rows_expired.get(table, 0) + n
            log.info("retention: removed %d old rows from %s", n, table)
        return removed

    async def maintain(self, now: datetime | None = None) -> None:
        await self.fold()
        await self.archive_due(now)
        await self.expire(now)

    async def backup(self, kind: backup.BackupKind) -> backup.BackupInfo:
        info = await backup.take_backup(self.writer, self.backup_root, self.archive_root, kind)
        self.stats.backups += 1
        self.stats.last_backup_at = time.time()
        await asyncio.to_thread(backup.prune, self.backup_root, self.cfg.backup.keep_full)
        return info

    # --- the loop ------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        if self.cfg.lake.enabled:
            shipper = LakeShipper(self.writer.reader, self.cfg.lake)
            self.lake = shipper
            lake_task = asyncio.create_task(asyncio.to_thread(shipper.run_forever, stop.is_set), name="lake")
        else:
            lake_task = None
        try:
            await self._run(stop)
        finally:
            if lake_task is not None:
                await lake_task
                shipper.close()

    async def _run(self, stop: asyncio.Event) -> None:
        next_fold = time.monotonic() + self.cfg.rollup_interval_s
        # The first archive and retention run comes one interval after start-up, not during it: a restart
        # (after a crash, an upgrade) should be quick and must not move data the moment it comes back.
        next_maint = time.monotonic() + self.cfg.maintenance_interval_s
        next_full, next_incr = self._backup_schedule()
        while not stop.is_set():
            now = time.monotonic()
            if now >= next_fold:
                await self._guard("rollup", self.fold)
                next_fold = time.monotonic() + self.cfg.rollup_interval_s
            if now >= next_maint:
                await self._guard("maintenance", self.maintain)
                next_maint = time.monotonic() + self.cfg.maintenance_interval_s
            if next_full is not None and now >= next_full:
                await self._guard("backup", lambda: self.backup("full"))
                next_full, next_incr = self._backup_schedule(after_full=True)
            elif next_incr is not None and now >= next_incr:
                await self._guard("backup", lambda: self.backup("incremental"))
                next_incr = time.monotonic() + 3600 * (self.cfg.backup.incremental_every_h or 0)
            wait = min(t for t in (next_fold, next_maint, next_full, next_incr) if t is not None) - time.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.05, wait))
        # Fold what the last batches left, so rollups are complete after a clean stop.
        await self._guard("rollup", self.fold)

    def _backup_schedule(self, after_full: bool = False) -> tuple[float | None, float | None]:
        b = self.cfg.backup
        if b.full_every_h is None:
            return None, None
        now = time.monotonic()
        last = backup.latest_full_age_h(self.backup_root)
        if after_full or last is None:
            full_in = b.full_every_h * 3600 if after_full else 0.0
        else:
            full_in = max(0.0, (b.full_every_h - last) * 3600)
        incr = now + b.incremental_every_h * 3600 if b.incremental_every_h else None
        return now + full_in, incr

    async def _guard(self, job: str, fn: Callable[[], Awaitable[object]]) -> None:
        try:
            await fn()
        except Exception:
            self.stats.failed(job)
            log.exception("history job %r failed; it runs again at its next interval", job)
