"""Point-in-time restore: the history as it stood at a given instant, from a full backup and its incrementals.

Every backup (full or incremental) holds a copy of the database consistent at the instant it was taken,
plus the archive day files of its chain. To get the state at `at`, restore the newest backup (taken at
or after `at`, so it holds everything committed by then) and remove what it holds from after `at`:
- readings with a time after `at`, in the hot table and the archive (day files after `at`'s day are
  dropped; the file of `at`'s own day is rewritten without its later readings, through a temporary
  file and a rename);
- device events, charging sessions started, dead letters and audit rows after `at`;
- alerts raised after `at` with their events and notifications; alerts raised before it get back the
  state they had at `at` (acknowledgement, resolution and closing after `at` are undone);
- the rollups from `at`'s hour on, recomputed from the readings that remain.
Readings are placed by their own timestamp: a reading that arrived late (a device buffering while
offline) but was measured before `at` is kept, which is what a monthly report for that period needs.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import duckdb

from storage import archive, backup, rollup

log = logging.getLogger(__name__)


@dataclass
class PointInTimeReport:
    at: str
    backup_id: str
    backup_taken_at: str
    database: str
    readings: int  # hot and archived, as of `at`
    removed: dict[str, int]
    latest_reading: str | None
    moved_aside: str | None


def choose_backup(backup_root: Path, at: datetime) -> backup.BackupInfo:
    """The newest complete backup, if it was taken at or after `at`; a clear error otherwise.

    The newest, not the first after `at`: readings are placed by their own timestamps, and a device that was
    offline delivers readings measured before `at` long after it; the newest backup knows the most of them.
    """
    backups = backup.list_backups(backup_root)
    if not backups:
        raise backup.BackupError(f"there are no backups in {backup_root}; pass --data-dir/--config of the right one")
    newest = backups[-1]
    if datetime.fromisoformat(newest.created_at) < at:
        raise backup.BackupError(
            f"the newest backup ({newest.backup_id}) was taken at {newest.created_at}, before {at.isoformat()}: no "
            "backup records what happened after it. Restore it without --at to get the state as of that backup"
        )
    return newest


def restore_at(
    backup_root: Path,
    at: datetime,
    database: Path,
    archive_root: Path,
    *,
    force: bool = False,
    backup_dir: Path | None = None,
) -> PointInTimeReport:
    """Restore the history as of `at` from the newest backup under `backup_root` (or `backup_dir`, which must
    have been taken at or after `at`), with its chain, into `database` and `archive_root`."""
    if at.tzinfo is None:
        raise backup.BackupError(
            f"give the time with its zone, e.g. {at.isoformat()}+08:00 (Beijing) or {at.isoformat()}Z (UTC)"
        )
    if backup_dir is not None:
        info = backup.load_manifest(backup_dir)
        if datetime.fromisoformat(info.created_at) < at:
            raise backup.BackupError(
                f"backup {info.backup_id} was taken at {info.created_at}, before {at.isoformat()}: it cannot hold what "
                "happened up to then; choose a later backup (or none: the newest is used)"
            )
    else:
        info = choose_backup(backup_root, at)
        backup_dir = backup_root / info.backup_id
    report = backup.restore(backup_dir, database, archive_root, force=force)
    con = duckdb.connect(str(database))
    try:
        removed = trim_after(con, archive_root, at)
        row = con.execute("SELECT count(*), max(ts) FROM readings_all").fetchone()
        con.execute("CHECKPOINT")
    finally:
        con.close()
    latest = row[1] if row else None
    if latest is not None and latest > at:
        raise backup.BackupError(f"the restore still holds a reading at {latest}, after {at}: report this as a bug")
    log.info(
        "restored the history as of %s from backup %s (%s)", at.isoformat(), info.backup_id, removed or "nothing later"
    )
    return PointInTimeReport(
        at=at.isoformat(),
        backup_id=info.backup_id,
        backup_taken_at=info.created_at,
        database=str(database),
        readings=int(row[0]) if row else 0,
        removed=removed,
        latest_reading=latest.isoformat() if latest is not None else None,
        moved_aside=report.moved_aside,
    )


def _deleted(con: duckdb.DuckDBPyConnection, sql: str, params: list[object]) -> int:
    return len(con.execute(sql + " RETURNING 1", params).fetchall())


def trim_after(con: duckdb.DuckDBPyConnection, archive_root: Path, at: datetime) -> dict[str, int]:
    """Remove from an opened (restored, not running) database and its archive everything after `at`."""
    removed: dict[str, int] = {}
    con.execute("BEGIN TRANSACTION")
    try:
        removed["readings"] = _deleted(con, "DELETE FROM readings WHERE ts > ?", [at])
        removed["archived readings"], stale_files = _trim_archive(con, archive_root, at)
        for table, column in (
            ("events", "ts"),
            ("charging_sessions", "started_at"),
            ("dead_letters", "ts"),
            ("audit_log", "ts"),
            ("alert_events", "ts"),
        ):
            removed[table] = _deleted(con, f"DELETE FROM {table} WHERE {column} > ?", [at])
        con.execute(
            "UPDATE charging_sessions SET stopped_at = NULL, energy_kwh = NULL, stop_reason = NULL "
            "WHERE stopped_at > ?",
            [at],
        )
        removed["alerts"] = _deleted(con, "DELETE FROM alerts WHERE created_at > ?", [at])
        removed["notifications"] = _deleted(
            con,
            "DELETE FROM notifications WHERE alert_id IS NOT NULL AND alert_id NOT IN (SELECT alert_id FROM alerts)",
            [],
        )
        # Alerts raised before `at` go back to the state they had then.
        con.execute(
            """
            UPDATE alerts SET
                acknowledged_at = CASE WHEN acknowledged_at > $at THEN NULL ELSE acknowledged_at END,
                acknowledged_by = CASE WHEN acknowledged_at > $at THEN NULL ELSE acknowledged_by END,
                resolved_at = CASE WHEN resolved_at > $at THEN NULL ELSE resolved_at END,
                closed_at = CASE WHEN closed_at > $at THEN NULL ELSE closed_at END,
                state = CASE
                    WHEN closed_at IS NOT NULL AND closed_at <= $at THEN 'closed'
                    WHEN resolved_at IS NOT NULL AND resolved_at <= $at THEN 'resolved'
                    WHEN acknowledged_at IS NOT NULL AND acknowledged_at <= $at THEN 'acknowledged'
                    ELSE 'firing' END,
                updated_at = least(updated_at, $at)
            WHERE updated_at > $at
            """,
            {"at": at},
        )
        # rebuild() folds the pending partials first: those of hours before `at`'s are kept, later ones recomputed.
        rollup.rebuild(con, since=at)
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    archive.unlink_files(archive_root, stale_files)
    return {k: v for k, v in removed.items() if v}


def _trim_archive(con: duckdb.DuckDBPyConnection, archive_root: Path, at: datetime) -> tuple[int, list[str]]:
    """Inside the transaction: drop the archive files wholly after `at` and rewrite those that straddle it.
    Returns the readings removed and the files to unlink after the commit."""
    removed = 0
    stale: list[str] = []
    for day, rel, rows, min_ts, _max_ts in con.execute(
        "SELECT day, path, rows, min_ts, max_ts FROM archive_files WHERE max_ts > ? ORDER BY path", [at]
    ).fetchall():
        if min_ts > at:
            con.execute("DELETE FROM archive_files WHERE path = ?", [rel])
            removed += int(rows)
            stale.append(rel)
            continue
        src = archive_root / rel
        folder = src.parent
        name = f"part-{os.getpid()}-{int(at.timestamp() * 1e6)}.parquet"
        tmp = folder / f".{name}.tmp"
        path_sql = archive._sql_literal_path(src)
        con.execute(
            f"COPY (SELECT * FROM read_parquet('{path_sql}') WHERE ts <= ? ORDER BY device_id, metric, ts) "
            f"TO '{archive._sql_literal_path(tmp)}' ({archive.PARQUET_OPTIONS})",
            [at],
        )
        kept = con.execute(f"SELECT count(*), max(ts) FROM read_parquet('{archive._sql_literal_path(tmp)}')").fetchone()
        final = folder / name
        tmp.replace(final)
        new_rel = final.relative_to(archive_root).as_posix()
        kept_rows = int(kept[0]) if kept else 0
        con.execute("DELETE FROM archive_files WHERE path = ?", [rel])
        con.execute(
            "INSERT INTO archive_files (day, path, rows, bytes, min_ts, max_ts) VALUES (?, ?, ?, ?, ?, ?)",
            [day, new_rel, kept_rows, final.stat().st_size, min_ts, kept[1] if kept else min_ts],
        )
        removed += int(rows) - kept_rows
        stale.append(rel)
    archive.refresh_view(con, archive_root)
    return removed, stale
