"""Configuration of history: rollups, the Parquet archive, retention, engineers' SQL and backups.

One `history:` section of gridsentry.yaml. Every field has a description (`gridsentry config example`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from storage.lake import LakeConfig


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RetentionConfig(_Model):
    hot_days: int = Field(
        7,
        ge=2,
        le=3650,
        description="Days of readings kept in the DuckDB table; older whole days move to the Parquet archive.",
    )
    archive_days: int | None = Field(
        None, ge=1, description="Days of archived readings kept (Parquet day files); empty keeps them for ever."
    )
    rollup_1m_days: int = Field(90, ge=1, description="Days of 1-minute rollups kept.")
    rollup_1h_days: int | None = Field(
        None, ge=1, description="Days of 1-hour rollups kept; empty keeps them for ever."
    )
    events_days: int | None = Field(730, ge=1, description="Days of device events (status, fault codes) kept.")
    dead_letters_days: int = Field(30, ge=1, description="Days of rejected payloads kept in dead_letters.")
    audit_days: int | None = Field(None, ge=1, description="Days of audit_log kept; empty keeps it for ever.")


class SqlConfig(_Model):
    tier: Literal["live", "snapshot"] = Field(
        "live",
        description=(
            "Where engineers' queries run. snapshot: in separate low-priority worker processes on a read-only copy "
            "of the database, at most snapshot_max_age_s old (ingest keeps its commit latency under heavy queries). "
            "live: on the service's own database, up to the last commit, sharing its CPU and memory."
        ),
    )
    snapshot_max_age_s: float = Field(
        60.0,
        gt=0,
        le=86400,
        description=(
            "Snapshot tier: a query finding the copy older than this (seconds) waits for a fresh one. Each refresh "
            "copies the whole hot database (5-7 s per 2 million readings measured on a loaded 2-core machine); "
            "answers state the copy's time."
        ),
    )
    worker_memory_limit: str = Field(
        "512MB",
        pattern=r"^\d+(\.\d+)?\s*(KB|MB|GB|KiB|MiB|GiB)$",
        description="Snapshot tier: DuckDB memory limit of each query process (e.g. 512MB, 2GB); beyond it a query fails.",
    )
    worker_idle_priority: bool = Field(
        True,
        description=(
            "Snapshot tier: run query processes under Linux SCHED_IDLE, on CPU time nothing else wants; under "
            "a saturated CPU engineers' queries then wait (up to timeout_s) rather than ingest."
        ),
    )
    worker_threads: int = Field(
        1,
        ge=1,
        le=64,
        description="Snapshot tier: DuckDB threads of each query process (1 leaves the cores to ingest).",
    )
    timeout_s: float = Field(
        30.0, gt=0, le=3600, description="Longest an engineer's query may run before it is stopped."
    )
    max_rows: int = Field(100_000, ge=1, le=10_000_000, description="Most rows one query returns.")
    concurrent: int = Field(2, ge=1, le=16, description="Engineers' queries run at once; more wait their turn.")
    nice: int = Field(
        19,
        ge=0,
        le=19,
        description="Scheduling niceness of the threads running engineers' queries, so ingest keeps the CPU first.",
    )

    lock_configuration: bool = Field(
        True,
        description="Lock DuckDB's configuration after start-up, so no statement can change a limit or a setting.",
    )


class BackupConfig(_Model):
    directory: Path = Field(Path("backups"), description="Where backups go; relative paths are under data_dir.")
    full_every_h: float | None = Field(
        None, gt=0, description="Take a full backup this often (hours); empty disables scheduled backups."
    )
    incremental_every_h: float | None = Field(
        None, gt=0, description="Between full backups, an incremental one this often (hours)."
    )
    keep_full: int = Field(
        4, ge=1, description="Full backups kept, each with its incrementals; older ones are removed."
    )


class HistoryConfig(_Model):
    archive_dir: Path = Field(
        Path("archive"), description="Parquet archive of old readings; relative paths are under data_dir."
    )
    rollup_interval_s: float = Field(
        10.0, gt=0, le=3600, description="How often committed readings are folded into rollup_1m and rollup_1h."
    )
    maintenance_interval_s: float = Field(
        3600.0, gt=0, description="How often archiving and retention run (first one interval after start-up)."
    )
    retention: RetentionConfig = Field(default_factory=RetentionConfig, description="How long each table keeps data.")
    sql: SqlConfig = Field(default_factory=SqlConfig, description="Limits on engineers' SQL.")
    backup: BackupConfig = Field(default_factory=BackupConfig, description="Backup location and schedule.")
    lake: LakeConfig = Field(
        default_factory=LakeConfig,
        description="Ship readings and alerts to a shared DuckLake (PostgreSQL catalog) for fleet-wide SQL.",
    )

    def archive_path(self, data_dir: Path) -> Path:
        return (self.archive_dir if self.archive_dir.is_absolute() else data_dir / self.archive_dir).resolve()

    def snapshot_path(self, data_dir: Path) -> Path:
        """Where the snapshot tier keeps its read-only copy of the database (beside the database)."""
        return (data_dir / "sql-snapshot").resolve()

    def backup_path(self, data_dir: Path) -> Path:
        d = self.backup.directory
        return (d if d.is_absolute() else data_dir / d).resolve()
