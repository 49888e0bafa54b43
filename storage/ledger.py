"""The device ledger, site list and metric catalogue, loaded from config at start-up.

Config is the source of truth for what it lists; devices that first appear in data (not in
config) are added with source 'auto' so their readings are never orphaned.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import duckdb
import pyarrow as pa

DEVICE_COLUMNS = (
    "device_id",
    "site",
    "kind",
    "vendor",
    "model",
    "rated_kw",
    "parent_id",
    "expected_interval_s",
    "commissioned",
    "location",
    "tags",
)


def sync_ledger(
    con: duckdb.DuckDBPyConnection,
    *,
    devices: Iterable[Mapping[str, Any]],
    sites: Iterable[Mapping[str, Any]],
    metrics: Iterable[Mapping[str, Any]],
) -> None:
    """Upsert config's devices, sites and metrics (runs inside the writer's transaction)."""
    dev_rows = [tuple(d.get(c) for c in DEVICE_COLUMNS) for d in devices]
    if dev_rows:
        con.executemany(  # a ledger is hundreds of rows, loaded once: executemany is fine here
            f"INSERT INTO devices ({', '.join(DEVICE_COLUMNS)}, source, updated_at) "
            f"VALUES ({', '.join('?' for _ in DEVICE_COLUMNS)}, 'config', now()) "
            "ON CONFLICT (device_id) DO UPDATE SET "
            + ", ".join(f"{c} = excluded.{c}" for c in DEVICE_COLUMNS[1:])
            + ", source = 'config', updated_at = now()",
            dev_rows,
        )
    site_rows = [(s["id"], s.get("name"), s.get("latitude"), s.get("longitude"), s.get("timezone")) for s in sites]
    if site_rows:
        con.executemany(
            "INSERT INTO sites VALUES (?, ?, ?, ?, ?) ON CONFLICT (site_id) DO UPDATE SET "
            "name = excluded.name, latitude = excluded.latitude, longitude = excluded.longitude, "
            "timezone = excluded.timezone",
            site_rows,
        )
    metric_rows = [(m["name"], m["unit"], m.get("description"), m.get("min"), m.get("max")) for m in metrics]
    if metric_rows:
        con.executemany(
            "INSERT INTO metrics VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
            "unit = excluded.unit, description = excluded.description, "
            "min_value = excluded.min_value, max_value = excluded.max_value",
            metric_rows,
        )


def register_unknown_devices(con: duckdb.DuckDBPyConnection, devices: pa.Table) -> int:
    """Add devices seen in data but missing from the ledger. `devices` has device_id, site, first_seen."""
    con.register("_new_devices", devices)
    try:
        before = _count(con)
        con.execute(
            "INSERT INTO devices (device_id, site, kind, source, first_seen) "
            "SELECT device_id, coalesce(site, 'unknown'), 'unknown', 'auto', first_seen FROM _new_devices "
            "ON CONFLICT (device_id) DO NOTHING"
        )
        return _count(con) - before
    finally:
        con.unregister("_new_devices")


def _count(con: duckdb.DuckDBPyConnection) -> int:
    row = con.execute("SELECT count(*) FROM devices").fetchone()
    return int(row[0]) if row else 0
