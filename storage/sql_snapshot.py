"""The snapshot tier of engineers' SQL: queries run in separate worker processes on a read-only copy.

The live tier (storage/sql.py `QueryRunner`) runs queries on reader connections of the service's own
database: they share its buffer pool, its DuckDB worker threads and its process. Under four heavy
queries that raised the writer's commit p99 2-4x on two cores (ADR 0050). Here each query runs in a
worker process of its own (`python -m storage.sql_snapshot`, never a fork of the multi-threaded
service) that
- opens a copy of the database, `read_only=True`, with its own memory limit and `threads` (1 by
  default), external access off except the archive directory, no extension loading and a locked
  configuration;
- lowers its whole process's CPU priority (`os.nice`, and the SCHED_IDLE policy by default), so the
  kernel gives the writer and the rest of the service the cores first;
- applies the same static check, read-only transaction, interrupt timer and row cap as the live tier
  (`run_read_query`), and is killed by the service if it does not answer by the timeout plus a grace.

The copy (`<data_dir>/sql-snapshot/engineers.duckdb`) is made with the backup machinery's
`COPY FROM DATABASE` in one read transaction on a reader connection, written beside the current one
and renamed over it, so a worker still reading the old copy keeps its file. It is refreshed on demand:
a query finds it older than `snapshot_max_age_s` and waits for one refresh (single flight), so an idle
service copies nothing, and every answer says how old its data is (`QueryResult.data_as_of`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import multiprocessing.connection
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa

from storage.sql import (
    QueryRejectedError,
    QueryResult,
    QueryRunner,
    QueryTimeoutError,
    check_read_only,
    run_read_query,
)

if TYPE_CHECKING:  # the worker process imports this module: keep it light (no pydantic)
    from storage.settings import HistoryConfig

log = logging.getLogger(__name__)

SNAPSHOT_FILE = "engineers.duckdb"
# How long past its own timeout a worker may take to answer before it is killed: the interrupt normally
# stops a query within a second; a worker that does not answer is stuck outside DuckDB's control.
KILL_GRACE_S = 5.0


class SnapshotError(RuntimeError):
    """The read-only copy could not be made (disk full, I/O error): engineers' SQL is unavailable."""


@dataclass(frozen=True)
class WorkerSettings:
    archive_root: str
    memory_limit: str
    threads: int
    nice: int
    idle_priority: bool = True


@dataclass
class SnapshotStats:
    refreshes: int = 0
    refresh_failures: int = 0
    last_refresh_seconds: float = 0.0
    snapshot_bytes: int = 0
    data_as_of: str | None = None
    worker_restarts: int = 0
    killed_queries: int = 0


def _quoted(path: Path) -> str:
    text = str(path)
    if "'" in text:
        raise SnapshotError(f"the path {text!r} contains a quote; choose a data directory without one")
    return text


def make_snapshot(con: duckdb.DuckDBPyConnection, snapshot_dir: Path) -> tuple[Path, datetime, int]:
    """Copy the database `con` reads into `snapshot_dir/engineers.duckdb` (atomically replaced).

    Returns the path, the instant the copy is consistent with (start of its read transaction) and its size.
    """
    snapshot_dir.mkdir(parents=True, exist_ok=True)
    target = snapshot_dir / SNAPSHOT_FILE
    work = snapshot_dir / f"{SNAPSHOT_FILE}.new"
    for leftover in (work, work.with_name(work.name + ".wal")):
        leftover.unlink(missing_ok=True)
    main = con.execute("SELECT current_database()").fetchone()
    alias = f"gs_snapshot_{os.getpid()}_{time.monotonic_ns()}"
    con.execute(f"ATTACH '{_quoted(work)}' AS {alias}")
    try:
        con.execute("BEGIN TRANSACTION")
        as_of = datetime.now(UTC)
        con.execute(f'COPY FROM DATABASE "{main[0] if main else "main"}" TO {alias}')
        con.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(duckdb.Error):
            con.execute("ROLLBACK")
        con.execute(f"DETACH {alias}")
        work.unlink(missing_ok=True)
        raise
    con.execute(f"DETACH {alias}")
    fd = os.open(work, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    work.replace(target)
    return target, as_of, target.stat().st_size


# --- the worker process ------------------------------------------------------------------------------------
def _open_snapshot(path: str, settings: WorkerSettings) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(
        path,
        read_only=True,
        config={
            "memory_limit": settings.memory_limit,
            "threads": settings.threads,
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
            # No spilling: a query beyond the memory limit fails with "Out of Memory" instead of filling the disk.
            "temp_directory": "",
        },
    )
    archive = _quoted(Path(settings.archive_root)).rstrip("/") + "/"
    con.execute(f"SET allowed_directories = ['{archive}']")
    con.execute("SET enable_external_access = false")
    con.execute("SET allow_community_extensions = false")
    con.execute("SET enable_progress_bar = false")  # it would draw on the service's terminal
    con.execute("SET lock_configuration = true")
    return con


def _worker_main(conn: multiprocessing.connection.Connection, settings: WorkerSettings) -> None:
    """Serve queries from `conn` until it closes: (snapshot path, sql, timeout, max rows) -> outcome."""
    with contextlib.suppress(OSError):
        os.nice(settings.nice)  # the whole process, every DuckDB thread included
    if settings.idle_priority and hasattr(os, "sched_setscheduler"):
        # SCHED_IDLE (Linux): run only on CPU time nothing else wants, so the writer never waits for a query.
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return
        path, sql, timeout_s, max_rows = request
        try:
            con = _open_snapshot(path, settings)
        except duckdb.Error as exc:
            conn.send(("error", type(exc).__name__, f"the query snapshot could not be opened: {exc}"))
            continue
        try:
            result = run_read_query(con, sql, timeout_s=timeout_s, max_rows=max_rows)
            # The rows are rebuilt from the Arrow table by the service: send the data once.
            conn.send(("ok", "", replace(result, rows=[])))
        except QueryRejectedError as exc:
            conn.send(("rejected", "", str(exc)))
        except QueryTimeoutError as exc:
            conn.send(("timeout", "", str(exc)))
        except duckdb.Error as exc:
            conn.send(("error", type(exc).__name__, str(exc)))
        finally:
            con.close()


class _Worker:
    """One query process: `python -m storage.sql_snapshot`, talking pickled requests over a socket pair.

    A plain subprocess rather than `multiprocessing`: spawn would re-import the service's main module in
    the child, and fork is unsafe in a multi-threaded process.
    """

    def __init__(self, settings: WorkerSettings) -> None:
        parent, child = socket.socketpair()
        root = str(Path(__file__).resolve().parents[1])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "storage.sql_snapshot", str(child.fileno()), json.dumps(asdict(settings))],
                pass_fds=(child.fileno(),),
                stdin=subprocess.DEVNULL,
                env=env,
            )
        finally:
            child.close()
        self.conn = multiprocessing.connection.Connection(parent.detach())

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)
        with contextlib.suppress(OSError):
            self.conn.close()


class SnapshotQueryRunner:
    """Runs engineers' queries in `concurrent` worker processes on a read-only snapshot of the database."""

    def __init__(
        self,
        connect: Callable[[], duckdb.DuckDBPyConnection],
        snapshot_dir: Path,
        archive_root: Path,
        *,
        concurrent: int = 2,
        nice: int = 19,
        memory_limit: str = "512MB",
        threads: int = 1,
        max_age_s: float = 60.0,
        idle_priority: bool = True,
    ) -> None:
        self._connect = connect
        self.snapshot_dir = snapshot_dir
        self.max_age_s = max_age_s
        self._nice = nice
        self._settings = WorkerSettings(str(archive_root), memory_limit, threads, nice, idle_priority)
        self._idle: queue.Queue[_Worker | None] = queue.Queue()
        self._workers: list[_Worker] = []
        self._size = concurrent
        self._started = False
        self._closed = False
        self._lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._parser = duckdb.connect(":memory:", config={"enable_external_access": False})
        self._parse_lock = threading.Lock()
        self._snapshot_at_monotonic: float | None = None
        self._snapshot: Path | None = None
        self._data_as_of: datetime | None = None
        self.stats = SnapshotStats()
        self._pool = ThreadPoolExecutor(max_workers=concurrent, thread_name_prefix="gridsentry-sql-snapshot")

    # --- the snapshot ------------------------------------------------------------------------------------
    def refresh(self) -> datetime:
        """Make a new snapshot now (on the calling thread, at lowered priority); returns its instant."""
        with self._refresh_lock:
            return self._refresh_locked()

    def _refresh_locked(self) -> datetime:
        with contextlib.suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self._nice)
        t0 = time.perf_counter()
        con = self._connect()
        try:
            path, as_of, size = make_snapshot(con, self.snapshot_dir)
        except (duckdb.Error, OSError) as exc:
            self.stats.refresh_failures += 1
            log.error("the snapshot for engineers' SQL could not be refreshed: %s", exc)
            raise SnapshotError(
                f"the read-only copy for engineers' SQL could not be made ({exc}); check free space in "
                f"{self.snapshot_dir}, or set history.sql.tier: live"
            ) from exc
        finally:
            con.close()
        self._snapshot, self._data_as_of = path, as_of
        self._snapshot_at_monotonic = time.monotonic()
        seconds = time.perf_counter() - t0
        self.stats.refreshes += 1
        self.stats.last_refresh_seconds = round(seconds, 3)
        self.stats.snapshot_bytes = size
        self.stats.data_as_of = as_of.isoformat()
        log.info("snapshot for engineers' SQL refreshed: %.1f MB in %.2f s", size / 1e6, seconds)
        return as_of

    def _current_snapshot(self) -> tuple[Path, datetime]:
        with self._refresh_lock:
            fresh = (
                self._snapshot_at_monotonic is not None
                and time.monotonic() - self._snapshot_at_monotonic <= self.max_age_s
            )
            if not fresh:
                self._refresh_locked()
            assert self._snapshot is not None and self._data_as_of is not None
            return self._snapshot, self._data_as_of

    # --- workers -----------------------------------------------------------------------------------------
    def _ensure_workers(self) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("engineers' SQL is stopped (GridSentry is stopping)")
            if self._started:
                return
            for _ in range(self._size):
                w = _Worker(self._settings)
                self._workers.append(w)
                self._idle.put(w)
            self._started = True

    def _replace(self, dead: _Worker) -> _Worker:
        dead.kill()
        if self._closed:
            raise RuntimeError("engineers' SQL is stopped (GridSentry is stopping)")
        fresh = _Worker(self._settings)
        with self._lock:
            self._workers = [fresh if w is dead else w for w in self._workers]
        self.stats.worker_restarts += 1
        return fresh

    def _run(self, sql: str, timeout_s: float, max_rows: int) -> QueryResult:
        # The static check first, here: a refused statement costs neither a refresh of the copy nor a worker.
        # The worker checks again (its own layer), so this is a shortcut, not the guard.
        with self._parse_lock:
            check_read_only(self._parser, sql)
        self._ensure_workers()
        worker = self._idle.get()
        if worker is None:
            self._idle.put(None)
            raise RuntimeError("engineers' SQL is stopped (GridSentry is stopping)")
        try:
            if not worker.alive():
                worker = self._replace(worker)
            path, as_of = self._current_snapshot()
            try:
                worker.conn.send((str(path), sql, timeout_s, max_rows))
                answered = worker.conn.poll(timeout_s + KILL_GRACE_S)
                reply = worker.conn.recv() if answered else None
            except (EOFError, OSError) as exc:
                worker = self._replace(worker)
                raise duckdb.Error(f"the query process ended unexpectedly ({exc}); run the query again") from exc
            if reply is None:
                self.stats.killed_queries += 1
                worker = self._replace(worker)
                raise QueryTimeoutError(
                    f"the query did not stop at its {timeout_s:g} s timeout and its process was ended; narrow the "
                    "time range or read the rollups (v_rollup_1h, v_rollup_1m)"
                )
        finally:
            self._idle.put(worker)
        status, kind, payload = reply
        if status == "ok":
            result: QueryResult = payload
            table = result.arrow if result.arrow is not None else pa.table({})
            rows = list(zip(*(c.to_pylist() for c in table.columns), strict=True)) if table.num_columns else []
            return replace(result, rows=rows, data_as_of=as_of)
        if status == "rejected":
            raise QueryRejectedError(payload)
        if status == "timeout":
            raise QueryTimeoutError(payload)
        error_class = getattr(duckdb, kind, duckdb.Error)
        if not (isinstance(error_class, type) and issubclass(error_class, duckdb.Error)):
            error_class = duckdb.Error
        raise error_class(payload)

    # --- the QueryRunner interface ------------------------------------------------------------------------
    def submit(self, sql: str, *, timeout_s: float, max_rows: int) -> Future[QueryResult]:
        return self._pool.submit(self._run, sql, timeout_s, max_rows)

    async def run(self, sql: str, *, timeout_s: float, max_rows: int) -> QueryResult:
        return await asyncio.wrap_future(self.submit(sql, timeout_s=timeout_s, max_rows=max_rows))

    def stop_all(self, wait_s: float = 5.0) -> bool:
        """Queries here hold none of the writer's memory: nothing to stop when it runs short."""
        return False

    def status(self) -> dict[str, Any]:
        age = None if self._snapshot_at_monotonic is None else time.monotonic() - self._snapshot_at_monotonic
        return {
            "tier": "snapshot",
            "snapshot_age_s": None if age is None else round(age, 1),
            "snapshot_max_age_s": self.max_age_s,
            "workers": sum(1 for w in self._workers if w.alive()),
        } | self.stats.__dict__

    def close(self) -> None:
        with self._lock:
            self._closed = True
            workers = list(self._workers)
            self._workers.clear()
        self._idle.put(None)
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._parse_lock:
            self._parser.close()
        for w in workers:
            with contextlib.suppress(OSError, ValueError):
                w.conn.close()  # the worker's recv() sees EOF and it exits
        for w in workers:
            try:
                w.process.wait(2)
            except subprocess.TimeoutExpired:
                w.kill()
        # The copy is as large as the hot database: do not leave it behind (the next start makes a new one).
        for leftover in (SNAPSHOT_FILE, f"{SNAPSHOT_FILE}.new"):
            with contextlib.suppress(OSError):
                (self.snapshot_dir / leftover).unlink()


def query_runner(
    connect: Callable[[], duckdb.DuckDBPyConnection], cfg: HistoryConfig, data_dir: Path
) -> QueryRunner | SnapshotQueryRunner:
    """The runner `history.sql.tier` asks for, over the database `connect` opens reader connections to."""
    sql = cfg.sql
    if sql.tier == "live":
        return QueryRunner(connect, concurrent=sql.concurrent, nice=sql.nice)
    return SnapshotQueryRunner(
        connect,
        cfg.snapshot_path(data_dir),
        cfg.archive_path(data_dir),
        concurrent=sql.concurrent,
        nice=sql.nice,
        memory_limit=sql.worker_memory_limit,
        threads=sql.worker_threads,
        max_age_s=sql.snapshot_max_age_s,
        idle_priority=sql.worker_idle_priority,
    )


if __name__ == "__main__":
    _worker_main(multiprocessing.connection.Connection(int(sys.argv[1])), WorkerSettings(**json.loads(sys.argv[2])))
