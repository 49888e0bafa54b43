"""Scale-out: several GridSentry instances (one per region) ship their history into one DuckLake.

DuckLake is DuckDB's lakehouse format: a catalog in PostgreSQL plus Parquet data files under a shared
data path (object storage or a shared file system in production). Each instance keeps its own DuckDB
file as the source of truth and ships to the lake, so a lake outage never stops ingest; engineers then
query the whole fleet with the same SQL (`lake.readings`, `lake.alerts`, with a `region` column).

Shipping is exactly-once: readings with `ts` in [watermark, now - lateness) are inserted together with
the new watermark in one lake transaction, per region. Readings arriving later than `lateness_s` after
their own timestamp are not shipped (they stay in the region's own database); alerts are re-shipped
whenever they change.

The extensions come from the pip packages `duckdb-extension-ducklake` and `duckdb-extension-postgres`
matching the DuckDB version and are loaded from their files: nothing is downloaded at run time.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)


class LakeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="Ship this instance's history to the DuckLake below.")
    catalog: str = Field(
        "postgres:dbname=gridsentry_lake host=127.0.0.1 port=5432 user=gridsentry",
        description="DuckLake catalog, e.g. 'postgres:dbname=gridsentry_lake host=db.example port=5432 user=gs' "
        "(a password goes in the PGPASSWORD environment variable, never here).",
    )
    data_path: str = Field(
        "/srv/gridsentry-lake/",
        description="Where the lake's Parquet files go: a shared directory or object-store URL.",
    )
    region: str = Field(
        "default", min_length=1, description="This instance's region name; every shipped row carries it."
    )
    ship_interval_s: float = Field(60.0, gt=0, description="How often new readings and changed alerts are shipped.")
    lateness_s: float = Field(
        300.0, ge=0, description="Readings are shipped once they are this old, so late arrivals are included."
    )


class LakeError(RuntimeError):
    pass


LAKE_TABLES = """
CREATE TABLE IF NOT EXISTS lake.readings (
    region VARCHAR, ts TIMESTAMPTZ, device_id VARCHAR, metric VARCHAR, value DOUBLE, quality UTINYINT
);
CREATE TABLE IF NOT EXISTS lake.alerts (
    region VARCHAR, alert_id BIGINT, event_class VARCHAR, state VARCHAR, device_id VARCHAR, site VARCHAR,
    rule_id VARCHAR, title VARCHAR, created_at TIMESTAMPTZ, acknowledged_at TIMESTAMPTZ,
    resolved_at TIMESTAMPTZ, closed_at TIMESTAMPTZ, ack_due TIMESTAMPTZ, restore_due TIMESTAMPTZ,
    updated_at TIMESTAMPTZ
);
CREATE TABLE IF NOT EXISTS lake.devices (
    region VARCHAR, device_id VARCHAR, site VARCHAR, kind VARCHAR, model VARCHAR, rated_kw DOUBLE
);
CREATE TABLE IF NOT EXISTS lake.ship_state (
    region VARCHAR, readings_until TIMESTAMPTZ, alerts_until TIMESTAMPTZ, shipped_at TIMESTAMPTZ
);
"""


def extension_files() -> list[Path]:
    """The DuckLake and PostgreSQL extension binaries from their pip packages, in load order."""
    version = duckdb.__version__
    files = []
    for package, name in (("duckdb_extension_postgres", "postgres"), ("duckdb_extension_ducklake", "ducklake")):
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise LakeError(
                f"the pip package {package.replace('_', '-')}=={version} is not installed "
                f"(pip install 'gridsentry[lake]')"
            )
        path = (
            Path(next(iter(spec.submodule_search_locations)))
            / "extensions"
            / f"v{version}"
            / f"{name}.duckdb_extension"
        )
        if not path.exists():
            raise LakeError(f"{path} is missing: install {package.replace('_', '-')}=={version}, matching DuckDB")
        if name == "postgres":
            # Its entry point is postgres_scanner_duckdb_cpp_init: DuckDB derives it from the file name.
            alias = (
                Path(tempfile.gettempdir())
                / f"gridsentry-ext-{os.getuid()}-{version}"
                / "postgres_scanner.duckdb_extension"
            )
            alias.parent.mkdir(parents=True, exist_ok=True)
            if not alias.exists():
                tmp = alias.with_name(f".{alias.name}.{os.getpid()}")
                tmp.symlink_to(path)
                tmp.replace(alias)
            path = alias
        files.append(path)
    return files


def open_lake(cfg: LakeConfig, *, create: bool = False) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connected to the lake as `lake` (separate from the locked-down main database)."""
    con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    con.execute("SET enable_progress_bar = false")
    for f in extension_files():
        con.execute(f"LOAD '{f}'")
    for text in (cfg.catalog, cfg.data_path):
        if "'" in text:
            raise LakeError(f"{text!r} contains a quote; the lake catalog and data path must not")
    try:
        con.execute(f"ATTACH 'ducklake:{cfg.catalog}' AS lake (DATA_PATH '{cfg.data_path}')")
    except duckdb.Error as exc:
        con.close()
        raise LakeError(f"cannot attach the DuckLake catalog {cfg.catalog!r}: {exc}") from exc
    if create:
        con.execute(LAKE_TABLES)
    return con


def init_lake(cfg: LakeConfig) -> None:
    """Create the catalog's tables. Run once, from one instance, before the others start (concurrent first
    ATTACH and CREATE TABLE conflict in DuckLake)."""
    open_lake(cfg, create=True).close()


@dataclass(frozen=True, slots=True)
class ShipResult:
    readings: int
    alerts: int
    until: datetime


class LakeShipper:
    """Ships one instance's new readings, changed alerts and ledger to the lake."""

    def __init__(self, reader: Callable[[], duckdb.DuckDBPyConnection], cfg: LakeConfig) -> None:
        self._reader = reader
        self.cfg = cfg
        self._lake: duckdb.DuckDBPyConnection | None = None
        self.shipped_readings = 0
        self.failures = 0

    def _lake_con(self) -> duckdb.DuckDBPyConnection:
        if self._lake is None:
            self._lake = open_lake(self.cfg)
        return self._lake

    def close(self) -> None:
        if self._lake is not None:
            self._lake.close()
            self._lake = None

    def ship_once(self, now: datetime | None = None) -> ShipResult:
        now = now or datetime.now(UTC)
        lake = self._lake_con()
        region = self.cfg.region
        row = lake.execute(
            "SELECT max(readings_until), max(alerts_until) FROM lake.ship_state WHERE region = ?", [region]
        ).fetchone()
        since = row[0] if row and row[0] is not None else datetime(1970, 1, 1, tzinfo=UTC)
        alerts_since = row[1] if row and row[1] is not None else datetime(1970, 1, 1, tzinfo=UTC)
        until = now - timedelta(seconds=self.cfg.lateness_s)
        con = self._reader()
        try:
            readings = con.execute(
                "SELECT ts, device_id, metric, value, quality FROM readings_all WHERE ts >= ? AND ts < ? "
                "ORDER BY device_id, metric, ts",
                [since, until],
            ).to_arrow_table()
            alerts = con.execute(
                "SELECT alert_id, event_class, state, device_id, site, rule_id, title, created_at, acknowledged_at, "
                "resolved_at, closed_at, ack_due, restore_due, updated_at FROM alerts WHERE updated_at >= ?",
                [alerts_since],
            ).to_arrow_table()
            devices = con.execute("SELECT device_id, site, kind, model, rated_kw FROM devices").to_arrow_table()
            alerts_until = con.execute("SELECT max(updated_at) FROM alerts").fetchone()
        finally:
            con.close()
        new_alerts_until = alerts_until[0] if alerts_until and alerts_until[0] is not None else alerts_since
        lake.execute("BEGIN TRANSACTION")
        try:
            lake.register("_ship_readings", readings)
            lake.register("_ship_alerts", alerts)
            lake.register("_ship_devices", devices)
            lake.execute("INSERT INTO lake.readings SELECT ?, * FROM _ship_readings", [region])
            lake.execute(
                "DELETE FROM lake.alerts WHERE region = ? AND alert_id IN (SELECT alert_id FROM _ship_alerts)",
                [region],
            )
            lake.execute("INSERT INTO lake.alerts SELECT ?, * FROM _ship_alerts", [region])
            lake.execute("DELETE FROM lake.devices WHERE region = ?", [region])
            lake.execute("INSERT INTO lake.devices SELECT ?, * FROM _ship_devices", [region])
            lake.execute(
                "INSERT INTO lake.ship_state VALUES (?, ?, ?, now())",
                [region, until, new_alerts_until + timedelta(microseconds=1)],
            )
            lake.execute("COMMIT")
        except BaseException:
            lake.execute("ROLLBACK")
            raise
        finally:
            for name in ("_ship_readings", "_ship_alerts", "_ship_devices"):
                lake.unregister(name)
        self.shipped_readings += readings.num_rows
        return ShipResult(readings.num_rows, alerts.num_rows, until)

    def run_forever(self, stop: Callable[[], bool]) -> None:
        """Blocking loop for a worker thread: ship every interval until `stop()`; failures retry next time."""
        while not stop():
            try:
                r = self.ship_once()
                if r.readings or r.alerts:
                    log.info("lake: shipped %d readings and %d alert changes (region %s)", r.readings, r.alerts,
                             self.cfg.region)  # fmt: skip
            except (duckdb.Error, LakeError) as exc:
                self.failures += 1
                self.close()  # reconnect next time
                log.error("lake: shipping failed (retrying in %.0f s; local history is unaffected): %s",
                          self.cfg.ship_interval_s, exc)  # fmt: skip
            deadline = time.monotonic() + self.cfg.ship_interval_s
            while not stop() and time.monotonic() < deadline:
                time.sleep(0.2)
