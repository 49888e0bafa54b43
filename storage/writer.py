"""The single writer: the only read-write DuckDB connection, on its own thread.

Every write goes through one queue and one thread, so there is exactly one writer and ingest,
alerts and ledger updates never contend for locks. Readings are appended as whole Arrow batches
(`INSERT ... SELECT` from a registered table), never row by row. Async callers await a future
that resolves after COMMIT, which is what lets a collector acknowledge its sources.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import queue
import re
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import duckdb

from storage.batch import IngestBatch
from storage.dedupe import DedupeWindow
from storage.rollup import record_batch as record_rollup_partials
from storage.schema import migrate
from storage.sessions import project_sessions

log = logging.getLogger(__name__)

T = TypeVar("T")

WriteJob = Callable[[duckdb.DuckDBPyConnection], T]
_URGENT_LANE, _NORMAL_LANE, _CLOSE_LANE = 0, 1, 2


@dataclass(frozen=True, slots=True)
class CommitResult:
    readings: int
    events: int
    dead_letters: int
    seconds: float
    duplicates: int = 0  # redelivered messages dropped by the de-duplication window


class WriterClosedError(RuntimeError):
    pass


_CORRUPT_ENTRY = re.compile(r"entry at byte position (\d+)")


@dataclass(frozen=True, slots=True)
class WalQuarantine:
    """A write-ahead log DuckDB could not replay, moved aside so the service starts instead of crash-looping."""

    kept_as: Path
    salvaged_bytes: int  # the intact prefix replayed into the database (0: none of it)
    error: str


def open_database(
    path: Path, *, memory_limit: str = "512MB", threads: int = 2, quarantined: list[WalQuarantine] | None = None
) -> duckdb.DuckDBPyConnection:
    """Open (creating if needed) the database file and bring its schema up to date.

    A WAL that fails to replay (a checksum mismatch after a torn write or a disk error) would otherwise
    stop every start: it is copied aside as `<db>.wal.corrupt-<UTC time>`, the intact entries before the
    damaged one are replayed, the rest is left out, and the event is logged loudly and recorded in
    `quarantined` (shared/reliability.md §2.1). Messages not committed survive at the broker; the
    alternative, a crash loop, loses everything that arrives while it lasts.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    config: dict[str, str | bool | int | float | list[str]] = {
        "memory_limit": memory_limit,
        "threads": threads,
        # Extensions are never fetched from the network at run time.
        "autoinstall_known_extensions": False,
        "autoload_known_extensions": False,
    }
    try:
        con = duckdb.connect(str(path), config=config)
    except duckdb.Error as exc:
        wal = path.with_name(path.name + ".wal")
        if "WAL" not in str(exc) or not wal.exists():
            raise
        q = quarantine_wal(wal, exc)
        if quarantined is not None:
            quarantined.append(q)
        con = duckdb.connect(str(path), config=config)
    migrate(con)
    return con


def _thread_ids() -> set[int]:
    try:
        return {int(p.name) for p in Path("/proc/self/task").iterdir()}
    except OSError:  # not Linux: priorities stay as they are
        return set()


def lower_priority(thread_ids: set[int], nice: int) -> None:
    """Renice threads (Linux schedules each thread on its own); failures only cost isolation, never correctness."""
    for tid in thread_ids:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, tid, nice)


def is_storage_failure(exc: BaseException) -> bool:
    """The disk or the database file failed (not a bug in one job): full disk, I/O error, failed commit."""
    text = str(exc)
    return isinstance(exc, OSError | duckdb.IOException | duckdb.FatalException) or any(
        marker in text for marker in ("Failed to commit", "No space left", "File too large", "Could not write")
    )


def is_invalidated(exc: BaseException) -> bool:
    """DuckDB hit a fatal error (a checkpoint that could not write, an allocation failure inside a commit) and
    refuses every further statement on this database instance until it is opened again."""
    text = str(exc)
    return (
        isinstance(exc, duckdb.FatalException)
        or "database has been invalidated" in text
        # The writer's own connection closed under it: the same cure (open again), never a reason to stop writing.
        or (isinstance(exc, duckdb.ConnectionException) and "closed" in text)
    )


def quarantine_wal(wal: Path, exc: BaseException) -> WalQuarantine:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    kept = wal.with_name(f"{wal.name}.corrupt-{stamp}")
    shutil.copyfile(wal, kept)
    match = _CORRUPT_ENTRY.search(str(exc))
    keep = int(match.group(1)) if match else 0
    if keep > 0:
        with open(wal, "r+b") as f:
            f.truncate(keep)
    else:
        wal.unlink()
    log.critical(
        "DATABASE WAL DAMAGED: %s could not be replayed (%s). A copy is kept as %s; %s. Check the disk, keep the copy "
        "for analysis, and run `gridsentry db check`.",
        wal,
        exc,
        kept,
        f"the first {keep:,} bytes (every entry before the damage) were replayed"
        if keep
        else "none of it was replayed",
    )
    return WalQuarantine(kept, keep, str(exc))


class StorageWriter:
    """Owns the database connection. Start it, submit jobs, close it."""

    def __init__(
        self,
        path: Path,
        *,
        memory_limit: str = "512MB",
        threads: int = 2,
        dedupe_window: int = 200_000,
        allowed_directories: Sequence[Path] | None = None,
        lock_configuration: bool = False,
        worker_nice: int | None = None,
    ) -> None:
        """`allowed_directories`, when given, turns external access off for the whole database except those
        directories (the archive, backups); `lock_configuration` then forbids any later SET. `worker_nice` lowers
        the CPU priority of DuckDB's own worker threads (Linux), so engineers' queries running on them yield to
        the writer thread, which keeps its priority and can do all of a commit's work itself."""
        self.path = path
        self._worker_nice = worker_nice
        self._allowed_directories = allowed_directories
        self._lock_configuration = lock_configuration
        self._memory_limit = memory_limit
        self._threads = threads
        # (lane, sequence, job): urgent jobs (alert transitions) go before queued ingest batches, FIFO within a lane;
        # the close marker's lane sorts after everything already submitted.
        self._jobs: queue.PriorityQueue[tuple[int, int, tuple[WriteJob[Any], Future[Any]] | None]] = (
            queue.PriorityQueue()
        )
        self._sequence = itertools.count()
        self._thread: threading.Thread | None = None
        self._con: duckdb.DuckDBPyConnection | None = None
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._closed = False
        # Observability for /metrics: commit latency and counts, read without locking (GIL-atomic).
        self.commits = 0
        self.commit_failures = 0
        self.consecutive_failures = 0  # write transactions failed since the last commit (disk full, I/O errors)
        self.last_error: str | None = None
        self.wal_quarantines: list[WalQuarantine] = []
        self.reopens = 0  # times the database was reopened after DuckDB invalidated it
        self.replayed_jobs = 0  # write jobs run again on the reopened database
        self._invalidated = False
        # The sequence number of the last committed write transaction (writer_commits), and what the
        # transaction in progress tried to commit: compared after a reopen to tell whether it landed.
        self._commit_seq = 0
        self._attempted_seq = 0
        self._job_finished = False
        self._job_result: Any = None
        self.last_commit_seconds = 0.0
        self.readings_committed = 0
        self.on_commit: Callable[[CommitResult], None] | None = None
        # Called when a write runs out of memory; returns True if it freed some (stopped engineers' queries).
        self.on_memory_pressure: Callable[[], bool] | None = None
        self.dedupe = DedupeWindow(dedupe_window)
        self._after_commit: list[Callable[[], None]] = []

    # --- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="gridsentry-writer", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._start_error is not None:
            raise self._start_error

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._jobs.put((_CLOSE_LANE, next(self._sequence), None))
        if self._thread is not None:
            self._thread.join()

    @property
    def queue_depth(self) -> int:
        return self._jobs.qsize()

    def reader(self) -> duckdb.DuckDBPyConnection:
        """A separate connection to the same database, for reads from other threads.

        DuckDB serves concurrent readers of one database instance with MVCC, so readers see only
        committed data and never block the writer.
        """
        if self._con is None:
            raise WriterClosedError("the storage writer is not running")
        return self._con.cursor()

    # --- submitting work -----------------------------------------------------------------
    def submit(self, job: WriteJob[T], *, urgent: bool = False) -> Future[T]:
        """Run `job(con)` inside one transaction on the writer thread. An `urgent` job (a few small statements
        someone is waiting for: an alert transition and its outbox rows) runs before the ingest batches already
        queued, so a backlog of readings does not hold up a page."""
        if self._closed:
            raise WriterClosedError("the storage writer is closed; nothing more can be written")
        fut: Future[T] = Future()
        self._jobs.put((_URGENT_LANE if urgent else _NORMAL_LANE, next(self._sequence), (job, fut)))
        return fut

    async def run(self, job: WriteJob[T], *, urgent: bool = False) -> T:
        return await asyncio.wrap_future(self.submit(job, urgent=urgent))

    async def append(self, batch: IngestBatch, before: WriteJob[Any] | None = None) -> CommitResult:
        """Store one ingest batch in one transaction (after `before(con)`, if given); returns after COMMIT."""
        return await self.run(lambda con: self._append(con, batch, before))

    def append_sync(self, batch: IngestBatch) -> CommitResult:
        return self.submit(lambda con: self._append(con, batch, None)).result()

    def _append(self, con: duckdb.DuckDBPyConnection, batch: IngestBatch, before: WriteJob[Any] | None) -> CommitResult:
        if before is not None:
            before(con)
        fresh_batch, keys = self.dedupe.filter(batch)
        result = append_batch(con, fresh_batch)
        record_rollup_partials(con, fresh_batch.readings)
        ts = self.dedupe.record(con, keys)
        self._after_commit.append(lambda: self.dedupe.committed(ts, keys))
        dropped = batch.reading_count - fresh_batch.reading_count
        return CommitResult(result.readings, result.events, result.dead_letters, 0.0, dropped)

    # --- the thread ------------------------------------------------------------------------
    def _in_transaction(self, con: duckdb.DuckDBPyConnection, job: WriteJob[Any]) -> Any:
        self._job_finished = False
        con.execute("BEGIN TRANSACTION")
        try:
            result = job(con)
            self._job_result, self._job_finished = result, True
            self._attempted_seq = self._commit_seq + 1
            # One round trip for marker and COMMIT (measured: +0.5 ms a commit, against +1 ms as two statements).
            con.execute(f"UPDATE writer_commits SET seq = {int(self._attempted_seq)}; COMMIT")
            self._commit_seq = self._attempted_seq
        except BaseException as exc:
            with contextlib.suppress(duckdb.Error):
                con.execute("ROLLBACK")  # fails harmlessly when the COMMIT did end the transaction
            if self._job_finished and self._commit_landed(con):
                # The error came after the COMMIT was durable (an automatic checkpoint that ran out of memory):
                # the job is done, and running it again would store its readings twice.
                log.warning("a write failed after its COMMIT had landed (%s); it is kept and not run again", exc)
                self._commit_seq = self._attempted_seq
                return result
            self._after_commit.clear()
            raise
        return result

    def _commit_landed(self, con: duckdb.DuckDBPyConnection) -> bool:
        """Whether the marker of the transaction just attempted is in the database (read outside it)."""
        try:
            row = con.execute("SELECT max(seq) FROM writer_commits").fetchone()
        except duckdb.Error:
            return False  # an invalidated database: the reopen path reads the marker after the WAL replay
        return bool(row and row[0] is not None and int(row[0]) >= self._attempted_seq)

    def _retry_after_pressure(self, con: duckdb.DuckDBPyConnection, job: WriteJob[Any]) -> Any:
        # Interrupted queries free their memory as they unwind: a few short waits, then the failure stands.
        for delay in (0.0, 0.2, 0.5, 1.0):
            time.sleep(delay)
            try:
                return self._in_transaction(con, job)
            except duckdb.OutOfMemoryException:
                if delay == 1.0:
                    raise
        raise AssertionError("unreachable")

    def _run(self) -> None:
        try:
            con = self._open()
        except BaseException as exc:
            self._start_error = exc
            self._started.set()
            return
        self._started.set()
        while True:
            _lane, _seq, item = self._jobs.get()
            if item is None:
                break
            job, fut = item
            if not fut.set_running_or_notify_cancel():
                continue
            t0 = time.perf_counter()
            try:
                if self._invalidated:
                    con = self._reopen(None)
                try:
                    result = self._in_transaction(con, job)
                except duckdb.OutOfMemoryException:
                    # Engineers' queries share DuckDB's memory pool with ingest. Ingest wins: stop them, retry once.
                    if self.on_memory_pressure is None or not self.on_memory_pressure():
                        raise
                    log.warning("a database write ran out of memory; engineers' queries were stopped and it is retried")
                    result = self._retry_after_pressure(con, job)
                except duckdb.Error as exc:
                    if not is_invalidated(exc):
                        raise
                    # Nothing of this job was acknowledged: reopen (the WAL replays every commit before it) and run
                    # it again. Its de-duplication keys make a second copy impossible if its commit did land.
                    con = self._reopen(exc)
                    if self._job_finished and self._commit_seq >= self._attempted_seq:
                        # The fatal error came after the commit was durable (its checkpoint failed): done.
                        result = self._job_result
                        log.warning("the write that hit the fatal error had committed; it is not run again")
                    else:
                        self.replayed_jobs += 1
                        result = self._in_transaction(con, job)
            except BaseException as exc:
                if is_invalidated(exc):
                    self._invalidated = True  # the replay failed the same way: reopen before the next job
                self._after_commit.clear()
                self.commit_failures += 1
                if is_storage_failure(exc):
                    self.consecutive_failures += 1
                    self.last_error = str(exc)
                # A failed COMMIT has already ended the transaction; ROLLBACK then fails harmlessly.
                with contextlib.suppress(duckdb.Error):
                    con.execute("ROLLBACK")
                log.error("database write failed and was rolled back: %s", exc)
                fut.set_exception(exc)
                continue
            for hook in self._after_commit:
                hook()
            self._after_commit.clear()
            dt = time.perf_counter() - t0
            self.commits += 1
            self.consecutive_failures = 0
            self.last_commit_seconds = dt
            if isinstance(result, CommitResult):
                result = CommitResult(result.readings, result.events, result.dead_letters, dt, result.duplicates)
                self.readings_committed += result.readings
                if self.on_commit is not None:
                    self.on_commit(result)
            fut.set_result(result)
        try:
            con.execute("CHECKPOINT")
        except duckdb.Error as exc:
            log.warning("checkpoint at shutdown failed (the WAL will be replayed at next start): %s", exc)
        con.close()
        self._con = None

    def _open(self) -> duckdb.DuckDBPyConnection:
        before = _thread_ids()
        con = open_database(
            self.path, memory_limit=self._memory_limit, threads=self._threads, quarantined=self.wal_quarantines
        )
        try:
            if self._worker_nice is not None:
                lower_priority(_thread_ids() - before - {threading.get_native_id()}, self._worker_nice)
            try:
                self.dedupe.load(con)
            except duckdb.Error as exc:
                log.error("could not reload the de-duplication window (redeliveries may be stored twice): %s", exc)
            row = con.execute("SELECT max(seq) FROM writer_commits").fetchone()
            self._commit_seq = int(row[0]) if row and row[0] is not None else 0
            if self._allowed_directories is not None:
                restrict_access(con, self._allowed_directories, lock_configuration=self._lock_configuration)
        except BaseException:
            con.close()
            raise
        self._con = con
        return con

    def _reopen(self, cause: BaseException | None) -> duckdb.DuckDBPyConnection:
        """Open the database again after DuckDB invalidated it; raises (and stays invalidated) if it cannot."""
        if cause is not None:
            log.critical(
                "DATABASE INVALIDATED by a fatal DuckDB error (%s); reopening %s and replaying the write that failed. "
                "Check free space and the disk; `gridsentry db check` verifies the data afterwards.",
                cause,
                self.path,
            )
        self._invalidated = True
        old, self._con = self._con, None
        if old is not None:
            with contextlib.suppress(duckdb.Error):
                old.close()
        con = self._open()  # the WAL replays every commit made before the failure
        self._invalidated = False
        self.reopens += 1
        log.warning("database %s reopened after invalidation (%d so far)", self.path, self.reopens)
        return con


def restrict_access(
    con: duckdb.DuckDBPyConnection, allowed_directories: Sequence[Path], *, lock_configuration: bool
) -> None:
    """Defence in depth for engineers' SQL, database-wide: no file, network or extension access except the
    given directories, and optionally no configuration change at all from here on."""
    dirs = []
    for d in allowed_directories:
        d.mkdir(parents=True, exist_ok=True)
        text = str(d.resolve()).rstrip("/") + "/"
        if "'" in text:
            raise ValueError(f"the directory {text!r} contains a quote; choose one without")
        dirs.append(f"'{text}'")
    con.execute(f"SET allowed_directories = [{', '.join(dirs)}]")
    con.execute("SET enable_external_access = false")
    con.execute("SET allow_community_extensions = false")
    if lock_configuration:
        # COPY FROM DATABASE (backups) sets this one internally; SET itself never reaches engineers' SQL.
        con.execute("SET allowed_configs = ['current_transaction_invalidation_policy']")
        con.execute("SET lock_configuration = true")


def append_batch(con: duckdb.DuckDBPyConnection, batch: IngestBatch) -> CommitResult:
    if batch.reading_count:
        con.register("_ingest_readings", batch.readings)
        con.execute(
            "INSERT INTO readings (ts, device_id, metric, value, quality) "
            "SELECT ts, device_id, metric, value, quality FROM _ingest_readings"
        )
        con.unregister("_ingest_readings")
    if batch.event_count:
        con.register("_ingest_events", batch.events)
        con.execute("INSERT INTO events SELECT ts, device_id, kind, code, text FROM _ingest_events")
        con.unregister("_ingest_events")
        unusable = project_sessions(con, batch.events)
        if unusable:
            log.warning("%d charging-session event(s) lacked a session id or connector; kept in events only", unusable)
    if batch.dead_letter_count:
        con.register("_ingest_dead", batch.dead_letters)
        con.execute("INSERT INTO dead_letters SELECT ts, source, topic, reason, detail, payload FROM _ingest_dead")
        con.unregister("_ingest_dead")
    return CommitResult(batch.reading_count, batch.event_count, batch.dead_letter_count, 0.0)
