"""History routes: engineers' SQL, the integrity check, backups and the state of the history jobs.

Every route declares its role. `POST /api/sql` is audit-logged by the app's middleware with the
engineer's name, the query text and its duration.
"""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import duckdb
from fastapi import FastAPI, HTTPException, Request, Response
from pydantic import BaseModel, Field

from gridsentry.auth import require
from storage import backup
from storage.sql import (
    QueryRejectedError,
    QueryTimeoutError,
    result_as_csv,
    result_as_parquet,
)
from storage.sql_snapshot import SnapshotError

if TYPE_CHECKING:
    from gridsentry.service import Service


class SqlRequest(BaseModel):
    query: str = Field(description="One read statement: SELECT, WITH, EXPLAIN, DESCRIBE or SUMMARIZE.")
    max_rows: int | None = Field(None, ge=1, le=10_000_000, description="Row cap (default: history.sql.max_rows).")
    timeout_s: float | None = Field(None, gt=0, le=3600, description="Timeout (default: history.sql.timeout_s).")
    format: Literal["json", "csv", "parquet"] = Field("json", description="Result format.")


class SqlResponse(BaseModel):
    columns: list[str]
    types: list[str]
    rows: list[list[Any]]
    truncated: bool
    seconds: float
    data_as_of: str | None = Field(
        None, description="Snapshot tier: the instant the data is from (ISO 8601, UTC); null for live data."
    )


class BackupRequest(BaseModel):
    kind: Literal["full", "incremental"] = Field("full", description="Full, or only what changed since the last.")


def jsonable(v: Any) -> Any:
    if isinstance(v, datetime):
        return v.isoformat()
    if isinstance(v, bytes | bytearray):
        return v.hex()
    if isinstance(v, int | float | str | bool) or v is None:
        return v
    if isinstance(v, list | tuple):
        return [jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    return str(v)


def add_history_routes(app: FastAPI, service: Service) -> None:
    """Add the history routes to `app` (directly, so each stays a guarded APIRoute the auth test can walk)."""
    limits = service.cfg.history.sql

    @app.post("/api/sql", tags=["history"], response_model=SqlResponse, dependencies=[require("engineer")])
    async def sql(request: Request, body: SqlRequest) -> Any:
        """Run one read-only statement over the whole history (hot table, archive, rollups, alerts).

        Results come as JSON (default), CSV or Parquet (`format`). Writes, DDL, file access, ATTACH,
        INSTALL/LOAD, SET and PRAGMA are refused; a query past its timeout is stopped.
        """
        request.state.audit_detail = body.query
        try:
            res = await service.sql.run(
                body.query,
                timeout_s=min(body.timeout_s or limits.timeout_s, limits.timeout_s),
                max_rows=min(body.max_rows or limits.max_rows, limits.max_rows),
            )
        except QueryRejectedError as exc:
            raise HTTPException(400, str(exc)) from exc
        except QueryTimeoutError as exc:
            raise HTTPException(408, str(exc)) from exc
        except SnapshotError as exc:
            raise HTTPException(503, str(exc)) from exc
        except duckdb.Error as exc:
            raise HTTPException(400, f"the query failed: {exc}") from exc
        except RuntimeError as exc:
            raise HTTPException(503, "the database is not open (GridSentry is starting or stopping)") from exc
        headers = {"x-gridsentry-truncated": str(res.truncated).lower(), "x-gridsentry-seconds": f"{res.seconds:.3f}"}
        as_of = res.data_as_of.isoformat() if res.data_as_of is not None else None
        if as_of is not None:
            headers["x-gridsentry-data-as-of"] = as_of
        if body.format == "csv":
            return Response(result_as_csv(res), media_type="text/csv", headers=headers)
        if body.format == "parquet":
            return Response(result_as_parquet(res), media_type="application/vnd.apache.parquet", headers=headers)
        return SqlResponse(
            columns=res.columns,
            types=res.types,
            rows=[[jsonable(v) for v in r] for r in res.rows],
            truncated=res.truncated,
            seconds=res.seconds,
            data_as_of=as_of,
        )

    @app.get("/api/history/status", tags=["history"], dependencies=[require("viewer")])
    def status() -> dict[str, Any]:
        """Rollup, archive, retention and backup jobs: what they did and how often they failed."""
        con = service.writer.reader()
        try:
            pending = con.execute("SELECT count(*) FROM rollup_pending").fetchone()
            files = con.execute(
                "SELECT count(*), coalesce(sum(rows), 0), coalesce(sum(bytes), 0), min(day), max(day) FROM archive_files"
            ).fetchone()
            last_backup = con.execute(
                "SELECT backup_id, kind, started_at, readings FROM backup_log ORDER BY started_at DESC LIMIT 1"
            ).fetchone()
        finally:
            con.close()
        stats = dataclasses.asdict(service.history.stats)
        return {
            "rollup_pending_rows": int(pending[0]) if pending else 0,
            "archive": {
                "files": int(files[0]),
                "readings": int(files[1]),
                "bytes": int(files[2]),
                "first_day": jsonable(files[3]),
                "last_day": jsonable(files[4]),
            }
            if files
            else None,
            "last_backup": dict(
                zip(("backup_id", "kind", "started_at", "readings"), jsonable(list(last_backup)), strict=True)
            )
            if last_backup
            else None,
            "jobs": stats,
            "sql": service.sql.status(),
        }

    @app.get("/api/history/check", tags=["history"], dependencies=[require("engineer")])
    async def check() -> dict[str, Any]:
        """Read every stored value once, count rows per table and verify the archive against its manifest."""
        con = service.writer.reader()
        try:
            report = await asyncio.to_thread(backup.check, con, service.history.archive_root)
        finally:
            con.close()
        out = dataclasses.asdict(report)
        out["ok"] = report.ok
        return out

    @app.get("/api/history/backups", tags=["history"], dependencies=[require("engineer")])
    def backups() -> list[dict[str, Any]]:
        """Complete backups, oldest first (without their file lists)."""
        out = []
        for b in backup.list_backups(service.history.backup_root):
            d = dataclasses.asdict(b)
            d.pop("files")
            d["readings"] = b.readings
            out.append(d)
        return out

    @app.post("/api/history/backup", tags=["history"], dependencies=[require("admin")])
    async def take_backup(request: Request, body: BackupRequest | None = None) -> dict[str, Any]:
        """Take a backup now (full by default) into history.backup.directory."""
        kind = body.kind if body is not None else "full"
        request.state.audit_detail = f"{kind} backup"
        try:
            info = await service.history.backup(kind)
        except (backup.BackupError, duckdb.Error, OSError) as exc:
            raise HTTPException(500, f"the backup failed: {exc}") from exc
        d = dataclasses.asdict(info)
        d.pop("files")
        d["readings"] = info.readings
        d["finished_at"] = datetime.now(UTC).isoformat()
        return d
