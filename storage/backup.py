"""Backups (full and incremental), restore and the integrity check of a database and its archive.

A backup is a directory `<backups>/<UTC time>-<kind>/` holding
- `database.duckdb`: a transactionally consistent copy of the live database (`COPY FROM DATABASE` in
  one read transaction on a reader connection: ingest keeps committing meanwhile), so every table,
  view and sequence position comes back as it was at one instant;
- `archive/...`: the Parquet day files - all of them (full) or only those no earlier backup of its
  chain holds (incremental). Archive files never change once written, so an incremental backup costs
  the new days plus the hot database, which `history.retention.hot_days` keeps small;
- `manifest.json`: kind, parent, row counts per table, and every archive file with its size, SHA-256
  and the backup that holds it.
The directory is written under a `.partial` name, fsynced and renamed, so a half backup is never
mistaken for a whole one. Restore copies the database and the chain's files back, verifies every
checksum and then every row count against the manifest.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import duckdb

from storage import archive
from storage.schema import LATEST_VERSION, migrate

log = logging.getLogger(__name__)

BackupKind = Literal["full", "incremental"]


class BackupKindEnum(StrEnum):
    full = "full"
    incremental = "incremental"


MANIFEST = "manifest.json"
DATABASE = "database.duckdb"
COUNTED_TABLES = (
    "readings",
    "events",
    "alerts",
    "alert_events",
    "notifications",
    "devices",
    "sites",
    "metrics",
    "dead_letters",
    "charging_sessions",
    "rollup_1m",
    "rollup_1h",
    "archive_files",
    "audit_log",
)


class BackupError(RuntimeError):
    pass


@dataclass
class BackupInfo:
    backup_id: str
    kind: BackupKind
    parent_id: str | None
    path: str
    created_at: str
    seconds: float
    bytes: int
    counts: dict[str, int]
    archived_readings: int
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # rel path -> bytes, sha256, backup_id
    schema_version: int = LATEST_VERSION

    @property
    def readings(self) -> int:
        return self.counts.get("readings", 0) + self.archived_readings


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_tree(root: Path) -> None:
    for p in sorted(root.rglob("*"), reverse=True):
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _quoted(path: Path) -> str:
    text = str(path)
    if "'" in text:
        raise BackupError(f"the path {text!r} contains a quote; choose a directory without one")
    return text


def list_backups(backup_root: Path) -> list[BackupInfo]:
    """Complete backups under `backup_root`, oldest first."""
    out: list[BackupInfo] = []
    if not backup_root.exists():
        return out
    for d in sorted(backup_root.iterdir()):
        m = d / MANIFEST
        if d.is_dir() and not d.name.endswith(".partial") and m.exists():
            out.append(load_manifest(d))
    return out


def load_manifest(backup_dir: Path) -> BackupInfo:
    path = backup_dir / MANIFEST
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return BackupInfo(**raw)
    except FileNotFoundError:
        raise BackupError(f"{backup_dir} is not a GridSentry backup: it has no {MANIFEST}") from None
    except (ValueError, TypeError) as exc:
        raise BackupError(f"{path} is damaged: {exc}") from exc


def latest_full_age_h(backup_root: Path) -> float | None:
    fulls = [b for b in list_backups(backup_root) if b.kind == "full"]
    if not fulls:
        return None
    created = datetime.fromisoformat(fulls[-1].created_at)
    return (datetime.now(UTC) - created).total_seconds() / 3600


def create_backup(
    con: duckdb.DuckDBPyConnection, backup_root: Path, archive_root: Path, kind: BackupKind
) -> BackupInfo:
    """Write a backup from `con` (a reader connection of the live database, or the stopped file)."""
    t0 = time.perf_counter()
    now = datetime.now(UTC)
    backup_id = f"{now.strftime('%Y%m%dT%H%M%S%fZ')}-{kind}"
    backup_root.mkdir(parents=True, exist_ok=True)
    earlier = list_backups(backup_root)
    parent = earlier[-1] if earlier else None
    if kind == "incremental" and parent is None:
        log.info("no earlier backup in %s: taking a full backup instead of an incremental one", backup_root)
        kind = "full"
        backup_id = backup_id.replace("-incremental", "-full")
    work = backup_root / f"{backup_id}.partial"
    work.mkdir()
    try:
        main = con.execute("SELECT current_database()").fetchone()
        alias = f"gs_backup_{os.getpid()}_{time.monotonic_ns()}"
        con.execute(f"ATTACH '{_quoted(work / DATABASE)}' AS {alias}")
        try:
            con.execute("BEGIN TRANSACTION")
            con.execute(f'COPY FROM DATABASE "{main[0] if main else "main"}" TO {alias}')
            con.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(duckdb.Error):
                con.execute("ROLLBACK")
            raise
        finally:
            con.execute(f"DETACH {alias}")
        copy = duckdb.connect(str(work / DATABASE), read_only=True)
        try:
            counts = {t: int(copy.execute(f"SELECT count(*) FROM {t}").fetchone()[0]) for t in COUNTED_TABLES}  # type: ignore[index]
            manifest_files = copy.execute("SELECT path, rows, bytes FROM archive_files ORDER BY path").fetchall()
        finally:
            copy.close()
        held: dict[str, dict[str, Any]] = dict(parent.files) if kind == "incremental" and parent else {}
        files: dict[str, dict[str, Any]] = {}
        archived = 0
        for rel, rows, size in manifest_files:
            archived += int(rows)
            prior = held.get(rel)
            if prior is not None and prior["bytes"] == size:
                files[rel] = prior
                continue
            src = archive_root / rel
            dst = work / "archive" / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            files[rel] = {"bytes": size, "sha256": sha256_of(dst), "backup_id": backup_id, "rows": int(rows)}
        size_total = sum(p.stat().st_size for p in work.rglob("*") if p.is_file())
        info = BackupInfo(
            backup_id=backup_id,
            kind=kind,
            parent_id=parent.backup_id if kind == "incremental" and parent else None,
            path=str(backup_root / backup_id),
            created_at=now.isoformat(),
            seconds=round(time.perf_counter() - t0, 3),
            bytes=size_total,
            counts=counts,
            archived_readings=archived,
            files=files,
        )
        (work / MANIFEST).write_text(json.dumps(asdict(info), indent=2), encoding="utf-8")
        _fsync_tree(work)
        work.replace(backup_root / backup_id)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    log.info(
        "%s backup %s: %d readings (%d archived), %.1f MB in %.1f s",
        kind,
        backup_id,
        info.readings,
        archived,
        info.bytes / 1e6,
        info.seconds,
    )
    return info


def record(con: duckdb.DuckDBPyConnection, info: BackupInfo) -> None:
    con.execute(
        "INSERT INTO backup_log (backup_id, kind, parent_id, path, started_at, seconds, bytes, readings) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [
            info.backup_id,
            info.kind,
            info.parent_id,
            info.path,
            info.created_at,
            info.seconds,
            info.bytes,
            info.readings,
        ],
    )


async def take_backup(writer: Any, backup_root: Path, archive_root: Path, kind: BackupKind) -> BackupInfo:
    """Back up the running service's database (`writer` is its StorageWriter)."""
    con = writer.reader()
    try:
        info = await asyncio.to_thread(create_backup, con, backup_root, archive_root, kind)
    finally:
        con.close()
    await writer.run(lambda c: record(c, info))
    return info


def prune(backup_root: Path, keep_full: int) -> list[str]:
    """Remove the oldest full backups (and the incrementals that depend on them) beyond `keep_full`."""
    backups = list_backups(backup_root)
    fulls = [b for b in backups if b.kind == "full"]
    if len(fulls) <= keep_full:
        return []
    oldest_kept = fulls[-keep_full]
    removed = []
    for b in backups:
        if b.created_at >= oldest_kept.created_at:
            break
        shutil.rmtree(backup_root / b.backup_id)
        removed.append(b.backup_id)
        log.info("removed backup %s (keeping the newest %d full backups)", b.backup_id, keep_full)
    return removed


# --- restore ---------------------------------------------------------------------------------------------
@dataclass
class RestoreReport:
    backup_id: str
    database: str
    files_restored: int
    counts: dict[str, int]
    archived_readings: int
    moved_aside: str | None


def restore(backup_dir: Path, database: Path, archive_root: Path, *, force: bool = False) -> RestoreReport:
    """Restore `backup_dir` (full, or incremental with its chain beside it) into `database` and `archive_root`.

    The service must be stopped. An existing database is refused unless `force`, which moves it (and
    its WAL) aside as `<name>.pre-restore-<time>` rather than deleting anything.
    """
    info = load_manifest(backup_dir)
    root = backup_dir.parent
    for rel, meta in info.files.items():
        src = root / meta["backup_id"] / "archive" / rel
        if not src.exists():
            raise BackupError(
                f"{rel} is held by backup {meta['backup_id']}, which is not beside {backup_dir} "
                f"(expected {src}); copy the whole backup chain into one directory"
            )
    moved = None
    if database.exists():
        if not force:
            raise BackupError(
                f"{database} already exists; stop GridSentry and pass --force to move it aside before restoring"
            )
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        aside = database.with_name(f"{database.name}.pre-restore-{stamp}")
        database.replace(aside)
        wal = database.with_name(database.name + ".wal")
        if wal.exists():
            wal.replace(aside.with_name(aside.name + ".wal"))
        moved = str(aside)
    database.parent.mkdir(parents=True, exist_ok=True)
    partial = database.with_name(f".{database.name}.restoring")
    shutil.copyfile(backup_dir / DATABASE, partial)
    restored = 0
    for rel, meta in info.files.items():
        src = root / meta["backup_id"] / "archive" / rel
        dst = archive_root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.exists() and dst.stat().st_size == meta["bytes"] and sha256_of(dst) == meta["sha256"]:
            continue
        tmp = dst.with_name(f".{dst.name}.restoring")
        shutil.copyfile(src, tmp)
        if sha256_of(tmp) != meta["sha256"]:
            tmp.unlink()
            raise BackupError(f"{src} does not match its checksum in {backup_dir / MANIFEST}: the backup is damaged")
        tmp.replace(dst)
        restored += 1
    partial.replace(database)
    con = duckdb.connect(str(database))
    try:
        migrate(con)
        con.execute("BEGIN TRANSACTION")
        archive.remove_orphans(con, archive_root)
        archive.refresh_view(con, archive_root)
        con.execute("COMMIT")
        counts = {t: int(con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]) for t in COUNTED_TABLES}  # type: ignore[index]
        archived = con.execute("SELECT count(*) FROM readings_archive").fetchone()
    finally:
        con.close()
    archived_n = int(archived[0]) if archived else 0
    wrong = {t: (counts.get(t), n) for t, n in info.counts.items() if counts.get(t) != n}
    if archived_n != info.archived_readings:
        wrong["readings_archive"] = (archived_n, info.archived_readings)
    if wrong:
        detail = ", ".join(f"{t}: {got} restored, {want} in the backup" for t, (got, want) in wrong.items())
        raise BackupError(f"the restore does not match backup {info.backup_id}: {detail}")
    log.info("restored backup %s into %s (%d archive files copied)", info.backup_id, database, restored)
    return RestoreReport(info.backup_id, str(database), restored, counts, archived_n, moved)


# --- check -------------------------------------------------------------------------------------------------
@dataclass
class CheckReport:
    schema_version: int
    counts: dict[str, int]
    hot_readings: int
    archived_readings: int
    pending_rollup_rows: int
    first_reading: str | None
    last_reading: str | None
    days_without_readings: list[str]
    problems: list[str]
    seconds: float

    @property
    def ok(self) -> bool:
        return not self.problems


def check(con: duckdb.DuckDBPyConnection, archive_root: Path, *, archive_view: str = "readings_archive") -> CheckReport:
    """Read every stored value once (DuckDB verifies block checksums as it reads), count the rows of each
    table, verify the archive against its manifest and list UTC days with no readings at all."""
    t0 = time.perf_counter()
    problems: list[str] = []
    version = con.execute("SELECT max(version) FROM schema_migrations").fetchone()
    counts: dict[str, int] = {}
    for t in COUNTED_TABLES:
        try:
            # hash() over every column forces each block to be read and checksum-verified.
            row = con.execute(f"SELECT count(*), sum(hash(COLUMNS(*))) FROM {t}").fetchone()
            counts[t] = int(row[0]) if row else 0
        except duckdb.Error as exc:
            problems.append(f"table {t} cannot be read in full: {exc}")
    for p in archive.verify(con, archive_root):
        problems.append(f"archive file {p.path}: {p.problem}")
    archived = 0
    if not any(p.startswith("archive") for p in problems):
        try:
            row = con.execute(f"SELECT count(*), sum(hash(COLUMNS(*))) FROM {archive_view}").fetchone()
            archived = int(row[0]) if row else 0
        except duckdb.Error as exc:
            problems.append(f"the archive cannot be read in full: {exc}")
    manifest_rows = con.execute("SELECT coalesce(sum(rows), 0) FROM archive_files").fetchone()
    if manifest_rows and archived and int(manifest_rows[0]) != archived:
        problems.append(f"the archive holds {archived} readings, its manifest says {int(manifest_rows[0])}")
    pending = con.execute("SELECT count(*) FROM rollup_pending").fetchone()
    span = con.execute(
        "SELECT min(ts), max(ts) FROM (SELECT min(ts) ts FROM readings UNION ALL SELECT max(ts) FROM readings "
        "UNION ALL SELECT min(min_ts) FROM archive_files UNION ALL SELECT max(max_ts) FROM archive_files)"
    ).fetchone()
    gaps = (
        [
            str(r[0])
            for r in con.execute(
                """
            WITH days AS (
                SELECT DISTINCT timezone('UTC', ts)::DATE AS day FROM readings
                UNION SELECT day FROM archive_files
            ), span AS (SELECT min(day) lo, max(day) hi FROM days)
            SELECT d::DATE FROM span, range(span.lo, span.hi + 1, INTERVAL 1 DAY) t(d)
            WHERE d::DATE NOT IN (SELECT day FROM days) ORDER BY 1
            """
            ).fetchall()
        ]
        if span and span[0] is not None
        else []
    )
    return CheckReport(
        schema_version=int(version[0]) if version and version[0] is not None else 0,
        counts=counts,
        hot_readings=counts.get("readings", 0),
        archived_readings=archived,
        pending_rollup_rows=int(pending[0]) if pending else 0,
        first_reading=span[0].isoformat() if span and span[0] else None,
        last_reading=span[1].isoformat() if span and span[1] else None,
        days_without_readings=gaps,
        problems=problems,
        seconds=round(time.perf_counter() - t0, 3),
    )
