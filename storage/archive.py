"""The Parquet archive: whole UTC days of readings older than the hot window, one file per day and run.

Layout: `<archive>/readings/date=YYYY-MM-DD/part-<unix-us>.parquet`, rows sorted by device, metric and
time, ZSTD with Parquet v2 encodings (delta-encoded timestamps, dictionary-encoded ids), which is what
makes a reading cost about a byte (docs/benchmarks.md).

Moving a day is crash-safe without a second copy of the truth:
1. a reader connection (MVCC snapshot, off the writer thread, so ingest keeps committing) writes the
   day to a temporary file, which is fsynced and renamed into place;
2. one writer transaction checks the day still holds exactly the rows written (a late reading for that
   day makes it retry at the next run), records the file in `archive_files`, deletes the rows from
   `readings` and points the `readings_archive` view at the manifest's files.
A crash between 1 and 2 leaves a file no manifest row names: it is never read (the view lists files
from the manifest, not a glob) and is removed at the next start. `readings_all` and `v_readings`
union the hot table and the archive, so no query needs to know where a reading lives.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb

log = logging.getLogger(__name__)

READINGS_DIR = "readings"
PARQUET_OPTIONS = "FORMAT parquet, COMPRESSION zstd, COMPRESSION_LEVEL 9, PARQUET_VERSION V2, ROW_GROUP_SIZE 1000000"
_EMPTY_ARCHIVE = "SELECT ts, device_id, metric, value, quality FROM readings WHERE false"


class ArchiveError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class ArchivedDay:
    day: date
    path: str
    rows: int
    bytes: int
    seconds: float


def _sql_literal_path(path: Path) -> str:
    text = str(path)
    if "'" in text:
        raise ArchiveError(f"the archive path {text!r} contains a quote; choose a directory without one")
    return text


def day_bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return start, start + timedelta(days=1)


def view_sql(con: duckdb.DuckDBPyConnection, archive_root: Path) -> str:
    """The `readings_archive` view over the files the manifest names (absolute paths under `archive_root`)."""
    rows = con.execute("SELECT path FROM archive_files ORDER BY day, path").fetchall()
    if not rows:
        return f"CREATE OR REPLACE VIEW readings_archive AS {_EMPTY_ARCHIVE}"
    files = ", ".join(f"'{_sql_literal_path(archive_root / r[0])}'" for r in rows)
    return (
        "CREATE OR REPLACE VIEW readings_archive AS "
        "SELECT ts::TIMESTAMPTZ AS ts, device_id::VARCHAR AS device_id, metric::VARCHAR AS metric, "
        "value::DOUBLE AS value, quality::UTINYINT AS quality "
        f"FROM read_parquet([{files}])"
    )


def refresh_view(con: duckdb.DuckDBPyConnection, archive_root: Path) -> None:
    """Point `readings_archive` at the manifest (inside a writer transaction): at start-up, because the
    data directory may have moved (a restore), and after every change of the manifest."""
    con.execute(view_sql(con, archive_root))


def remove_orphans(con: duckdb.DuckDBPyConnection, archive_root: Path) -> list[Path]:
    """Delete archive files no manifest row names (left by a crash between writing and committing)."""
    root = archive_root / READINGS_DIR
    if not root.exists():
        return []
    known = {r[0] for r in con.execute("SELECT path FROM archive_files").fetchall()}
    removed = []
    for f in sorted(root.glob("date=*/*")):
        rel = f.relative_to(archive_root).as_posix()
        if rel in known:
            continue
        log.warning("archive file %s is not in the manifest (left by an interrupted archive run); removing it", f)
        f.unlink()
        removed.append(f)
    return removed


def days_due(con: duckdb.DuckDBPyConnection, hot_days: int, now: datetime | None = None) -> list[date]:
    """UTC days wholly older than the hot window that still have readings in the hot table."""
    now = now or datetime.now(UTC)
    cutoff = (now - timedelta(days=hot_days)).date()
    row = con.execute("SELECT min(ts) FROM readings").fetchone()
    if row is None or row[0] is None:
        return []
    first = row[0].astimezone(UTC).date()
    days = []
    d = first
    while d < cutoff:
        start, end = day_bounds(d)
        hit = con.execute("SELECT 1 FROM readings WHERE ts >= ? AND ts < ? LIMIT 1", [start, end]).fetchone()
        if hit:
            days.append(d)
        d += timedelta(days=1)
    return days


def export_day(reader: duckdb.DuckDBPyConnection, archive_root: Path, day: date) -> tuple[str, int, int, float]:
    """Write one day of hot readings to its Parquet file. Returns (relative path, rows, bytes, seconds)."""
    t0 = time.perf_counter()
    start, end = day_bounds(day)
    folder = archive_root / READINGS_DIR / f"date={day.isoformat()}"
    folder.mkdir(parents=True, exist_ok=True)
    name = f"part-{time.time_ns() // 1000}.parquet"
    final = folder / name
    partial = folder / f".{name}.tmp"
    # Timestamps are formatted by us from a date, never from user input.
    reader.execute(
        f"COPY (SELECT ts, device_id, metric, value, quality FROM readings "
        f"WHERE ts >= '{start.isoformat()}'::TIMESTAMPTZ AND ts < '{end.isoformat()}'::TIMESTAMPTZ "
        f"ORDER BY device_id, metric, ts) TO '{_sql_literal_path(partial)}' ({PARQUET_OPTIONS})"
    )
    fd = os.open(partial, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    row = reader.execute(f"SELECT count(*) FROM read_parquet('{_sql_literal_path(partial)}')").fetchone()
    rows = int(row[0]) if row else 0
    partial.replace(final)
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return final.relative_to(archive_root).as_posix(), rows, final.stat().st_size, time.perf_counter() - t0


def commit_day(con: duckdb.DuckDBPyConnection, archive_root: Path, day: date, rel_path: str, rows: int) -> bool:
    """Inside a writer transaction: record the file and drop the day from the hot table, if the hot table
    still holds exactly the rows exported. Returns False (nothing changed) when a late reading arrived."""
    start, end = day_bounds(day)
    row = con.execute(
        "SELECT count(*), min(ts), max(ts) FROM readings WHERE ts >= ? AND ts < ?", [start, end]
    ).fetchone()
    if row is None or int(row[0]) != rows:
        return False
    size = (archive_root / rel_path).stat().st_size
    con.execute(
        "INSERT INTO archive_files (day, path, rows, bytes, min_ts, max_ts) VALUES (?, ?, ?, ?, ?, ?)",
        [day, rel_path, rows, size, row[1], row[2]],
    )
    con.execute("DELETE FROM readings WHERE ts >= ? AND ts < ?", [start, end])
    refresh_view(con, archive_root)
    return True


def drop_days_before(con: duckdb.DuckDBPyConnection, archive_root: Path, before: date) -> list[str]:
    """Inside a writer transaction: forget archive files of days before `before`. Returns their relative paths,
    to unlink after the commit (a crash in between leaves orphans, removed at the next start)."""
    rows = con.execute("SELECT path FROM archive_files WHERE day < ?", [before]).fetchall()
    if not rows:
        return []
    con.execute("DELETE FROM archive_files WHERE day < ?", [before])
    refresh_view(con, archive_root)
    return [r[0] for r in rows]


def unlink_files(archive_root: Path, rel_paths: list[str]) -> None:
    for rel in rel_paths:
        path = archive_root / rel
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        with contextlib.suppress(OSError):
            path.parent.rmdir()  # only when empty


@dataclass(frozen=True, slots=True)
class ArchiveProblem:
    path: str
    problem: str


def verify(con: duckdb.DuckDBPyConnection, archive_root: Path) -> list[ArchiveProblem]:
    """Every manifest file exists and holds the rows the manifest says; no file lies outside the manifest."""
    problems = []
    for rel, rows, size in con.execute("SELECT path, rows, bytes FROM archive_files ORDER BY day, path").fetchall():
        path = archive_root / rel
        if not path.exists():
            problems.append(ArchiveProblem(rel, f"missing: the manifest lists {rows} readings in it"))
            continue
        if path.stat().st_size != size:
            problems.append(ArchiveProblem(rel, f"size {path.stat().st_size} bytes, the manifest says {size}"))
        try:
            got = con.execute(
                f"SELECT sum(num_rows) FROM parquet_file_metadata('{_sql_literal_path(path)}')"
            ).fetchone()
        except duckdb.Error as exc:
            problems.append(ArchiveProblem(rel, f"unreadable: {exc}"))
            continue
        if got is None or int(got[0] or 0) != rows:
            problems.append(ArchiveProblem(rel, f"holds {got[0] if got else 0} readings, the manifest says {rows}"))
    root = archive_root / READINGS_DIR
    if root.exists():
        known = {r[0] for r in con.execute("SELECT path FROM archive_files").fetchall()}
        for f in sorted(root.glob("date=*/*")):
            rel = f.relative_to(archive_root).as_posix()
            if rel not in known:
                problems.append(ArchiveProblem(rel, "not in the manifest (removed at the next start)"))
    return problems
