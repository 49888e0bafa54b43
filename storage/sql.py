"""Engineers' SQL: one read statement, read-only transaction, timeout, row cap, no file access.

SQL is code (DuckDB's own security model), so several independent layers each stop what the others
might miss (docs/sql.md "Safety", ADR 0050):
1. a static check before anything runs: exactly one statement, of type SELECT or EXPLAIN, whose first
   keyword is a read keyword (SELECT, WITH, FROM, VALUES, TABLE, DESCRIBE, SUMMARIZE, SHOW; EXPLAIN
   and EXPLAIN ANALYZE only of those), and no call of a function with side effects or one that runs SQL
   from a string (`checkpoint()`, `query()`...), which a static check could not see into;
2. `BEGIN TRANSACTION READ ONLY`: INSERT/UPDATE/DELETE/DDL/nextval() fail even if (1) were bypassed;
3. database-wide `enable_external_access = false` with only the archive and backup directories
   allowed, and a locked configuration (set by the writer at start-up, storage/writer.py);
4. `interrupt()` from a timer at the timeout, a row cap, and DuckDB's memory limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

READ_STATEMENTS = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}
READ_KEYWORDS = {"select", "with", "from", "values", "table", "describe", "summarize", "show", "("}
# Functions that change state (a checkpoint rewrites the file and stalls the writer) or run SQL given as a
# string, which would escape the static check above.
FORBIDDEN_FUNCTIONS = {
    "checkpoint",
    "force_checkpoint",
    "query",
    "query_table",
    "sql_auto_complete",
    "json_execute_serialized_sql",
    "enable_logging",
    "disable_logging",
    "truncate_duckdb_logs",
}


class QueryRejectedError(ValueError):
    """The text is not a single read statement."""


class QueryTimeoutError(RuntimeError):
    pass


@dataclass(frozen=True)
class QueryResult:
    columns: list[str]
    types: list[str]
    rows: list[tuple[Any, ...]]
    truncated: bool
    seconds: float
    arrow: pa.Table | None = field(default=None, compare=False)
    data_as_of: datetime | None = None  # the snapshot's instant (snapshot tier); None: live data

    def as_records(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, r, strict=True)) for r in self.rows]


def _words(sql: str) -> list[tuple[str, duckdb.token_type]]:
    tokens = duckdb.tokenize(sql)
    out = []
    for i, (pos, kind) in enumerate(tokens):
        end = tokens[i + 1][0] if i + 1 < len(tokens) else len(sql)
        text = sql[pos:end].strip()
        if kind == duckdb.token_type.comment:
            continue
        # An operator token may hold several characters ("()"): keep only its first for the checks.
        out.append((text.lower() if kind != duckdb.token_type.string_const else text, kind))
    return out


def check_read_only(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Raise QueryRejectedError, with what to change, unless `sql` is one read statement."""
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryRejectedError(f"the query does not parse: {exc}") from exc
    if len(statements) != 1:
        raise QueryRejectedError(f"send exactly one statement (got {len(statements)}); remove extra ';'")
    kind = statements[0].type
    if kind not in READ_STATEMENTS:
        raise QueryRejectedError(
            f"only read statements are allowed (SELECT, WITH, EXPLAIN, DESCRIBE, SUMMARIZE); this is {kind.name}"
        )
    words = _words(sql)
    if not words:
        raise QueryRejectedError("the query is empty")
    first = words[0][0]
    position = 0
    if first == "explain":
        position = 1
        if position < len(words) and words[position][0] == "analyze":
            position += 1
    lead = words[position][0][:1] if position < len(words) and words[position][0].startswith("(") else None
    keyword = lead or (words[position][0] if position < len(words) else "")
    if keyword not in READ_KEYWORDS:
        what = "EXPLAIN of " if position else ""
        raise QueryRejectedError(
            f"only read statements are allowed (SELECT, WITH, EXPLAIN, DESCRIBE, SUMMARIZE); this is {what}"
            f"{keyword.upper() or 'nothing'}"
        )
    for i, (text, tkind) in enumerate(words[:-1]):
        if tkind in (duckdb.token_type.identifier, duckdb.token_type.keyword) and words[i + 1][0].startswith("("):
            name = text.strip('"').rsplit(".", 1)[-1]
            if name in FORBIDDEN_FUNCTIONS:
                raise QueryRejectedError(
                    f"{name}() is not allowed in engineers' SQL: it changes the database or runs SQL from a string; "
                    "write the query itself instead"
                )


def run_read_query(
    con: duckdb.DuckDBPyConnection, sql: str, *, timeout_s: float = 30.0, max_rows: int = 10_000
) -> QueryResult:
    """Run one read statement on `con` (a connection no one else uses concurrently)."""
    check_read_only(con, sql)
    timer = threading.Timer(timeout_s, con.interrupt)
    timer.daemon = True
    t0 = time.perf_counter()
    con.execute("BEGIN TRANSACTION READ ONLY")
    timer.start()
    try:
        res = con.execute(sql)
        reader = res.to_arrow_reader(batch_size=min(max_rows + 1, 100_000))
        batches: list[pa.RecordBatch] = []
        got = 0
        for b in reader:
            batches.append(b)
            got += b.num_rows
            if got > max_rows:
                break
        table = pa.Table.from_batches(batches, schema=reader.schema)
        types = [str(d[1]) for d in res.description or []]
    except duckdb.InterruptException as exc:
        raise QueryTimeoutError(
            f"the query ran longer than {timeout_s:g} s and was stopped; narrow the time range, aggregate more, "
            "or read the rollups (v_rollup_1h, v_rollup_1m)"
        ) from exc
    finally:
        timer.cancel()
        con.execute("ROLLBACK")
    truncated = table.num_rows > max_rows
    table = table.slice(0, max_rows)
    rows = list(zip(*(c.to_pylist() for c in table.columns), strict=True)) if table.num_columns else []
    return QueryResult(table.column_names, types, rows, truncated, time.perf_counter() - t0, table)


class QueryRunner:
    """Runs engineers' queries on their own threads, a few at a time, at a lower CPU priority than ingest.

    On Linux a thread is its own scheduling entity, so `setpriority` on the thread id lowers only the query
    threads: under load the writer thread gets the cores first and commit latency holds (test S4).
    """

    def __init__(self, connect: Callable[[], duckdb.DuckDBPyConnection], *, concurrent: int = 2, nice: int = 10):
        self._connect = connect
        self._nice = nice
        self._pool = ThreadPoolExecutor(
            max_workers=concurrent, thread_name_prefix="gridsentry-sql", initializer=self._lower_priority
        )
        self._live: set[duckdb.DuckDBPyConnection] = set()
        self._preempted: set[duckdb.DuckDBPyConnection] = set()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self.preemptions = 0

    def stop_all(self, wait_s: float = 5.0) -> bool:
        """Interrupt every running query (ingest needs the memory) and wait until they have let go of it.
        True if any was running."""
        with self._lock:
            live = list(self._live)
            self._preempted.update(live)
        for con in live:
            with contextlib.suppress(duckdb.Error):
                con.interrupt()
        self.preemptions += len(live)
        deadline = time.monotonic() + wait_s
        with self._idle:
            while self._live and time.monotonic() < deadline:
                self._idle.wait(0.05)
        return bool(live)

    def _lower_priority(self) -> None:
        with contextlib.suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self._nice)

    def _run(self, sql: str, timeout_s: float, max_rows: int) -> QueryResult:
        con = self._connect()
        with self._lock:
            self._live.add(con)
        try:
            return run_read_query(con, sql, timeout_s=timeout_s, max_rows=max_rows)
        except (QueryTimeoutError, duckdb.Error) as exc:
            if con in self._preempted:
                raise QueryRejectedError(
                    "the query was stopped because the database ran short of memory and ingest comes first: "
                    "narrow it (fewer days or devices, the rollup_1m/rollup_1h views) and run it again"
                ) from exc
            raise
        finally:
            con.close()
            with self._lock:
                self._live.discard(con)
                self._preempted.discard(con)
                self._idle.notify_all()

    def submit(self, sql: str, *, timeout_s: float, max_rows: int) -> Future[QueryResult]:
        return self._pool.submit(self._run, sql, timeout_s, max_rows)

    async def run(self, sql: str, *, timeout_s: float, max_rows: int) -> QueryResult:
        return await asyncio.wrap_future(self.submit(sql, timeout_s=timeout_s, max_rows=max_rows))

    def status(self) -> dict[str, Any]:
        return {"tier": "live", "preemptions": self.preemptions}

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def result_as_csv(result: QueryResult) -> bytes:
    sink = io.BytesIO()
    table = result.arrow if result.arrow is not None else _table_of(result)
    pacsv.write_csv(table, sink)
    return sink.getvalue()


def result_as_parquet(result: QueryResult) -> bytes:
    sink = io.BytesIO()
    table = result.arrow if result.arrow is not None else _table_of(result)
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def _table_of(result: QueryResult) -> pa.Table:
    columns = list(zip(*result.rows, strict=True)) if result.rows else [() for _ in result.columns]
    return pa.table({name: list(col) for name, col in zip(result.columns, columns, strict=True)})
