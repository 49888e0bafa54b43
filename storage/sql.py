"""Engineers' SQL: one read statement, read-only transaction, timeout, row cap.

SQL is code (DuckDB's own security model). This first tier runs on a reader connection of the
live database: the statement type is checked before anything runs, the transaction is READ ONLY
(so INSERT/DELETE/DROP/CREATE fail even if a check were bypassed), a timer interrupts runaway
queries, and results are capped. A later tier moves queries to a snapshot in a separate process
(shared/reliability.md §2.2).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import duckdb

READ_STATEMENTS = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}


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

    def as_records(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, r, strict=True)) for r in self.rows]


def check_read_only(con: duckdb.DuckDBPyConnection, sql: str) -> None:
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


def run_read_query(
    con: duckdb.DuckDBPyConnection, sql: str, *, timeout_s: float = 30.0, max_rows: int = 10_000
) -> QueryResult:
    """Run one read statement on `con` (a connection no one else uses concurrently)."""
    check_read_only(con, sql)
    timer = threading.Timer(timeout_s, con.interrupt)
    t0 = time.perf_counter()
    con.execute("BEGIN TRANSACTION READ ONLY")
    timer.start()
    try:
        rel = con.execute(sql)
        rows = rel.fetchmany(max_rows + 1)
        columns = [d[0] for d in rel.description or []]
        types = [str(d[1]) for d in rel.description or []]
    except duckdb.InterruptException as exc:
        raise QueryTimeoutError(
            f"the query ran longer than {timeout_s:g} s and was stopped; narrow the time range or aggregate more"
        ) from exc
    finally:
        timer.cancel()
        con.execute("ROLLBACK")
    return QueryResult(columns, types, rows[:max_rows], len(rows) > max_rows, time.perf_counter() - t0)
