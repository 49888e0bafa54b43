"""Demo history: days of the simulated demo hub written straight into a database, for the SQL cookbook.

`gridsentry db seed-demo` (and the cookbook test) fill an empty data directory with the demo fleet's
readings and events over the last few days at one reading a minute, computed by the simulator (the
same physics as `gridsentry demo`, faster than real time), plus a handful of past incidents in
`alerts` with their SLA deadlines, so every cookbook query has something true to say.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb
import orjson
import pyarrow as pa

from simulator.core import FleetSimulator
from simulator.faults import FaultSpec
from simulator.fleet import demo_fleet, demo_site
from storage import rollup
from storage.batch import READING_SCHEMA, IngestBatch, events_from_columns
from storage.ledger import sync_ledger
from storage.writer import append_batch

# (class, rule, device, metric, value, threshold, unit, title, minutes to ack, hours to restore)
PAST_INCIDENTS: tuple[tuple[str, str, str, str, float, float, str, str, float | None, float | None], ...] = (
    ("I", "dc.gun_temp_high", "DC02", "gun1_temp_c", 92.5, 90.0, "°C", "DC02 gun 1 connector over 90 °C", 3, 2.5),
    ("II", "tx.top_oil_high", "TX01", "top_oil_temp_c", 86.0, 85.0, "°C", "TX01 top oil over 85 °C", 12, 7.5),
    ("III", "pv.string_low", "INV01", "string3_current_a", 2.1, 4.0, "A", "INV01 string 3 below peers", 4, 3.0),
    ("III", "ac.offline", "AC03", "power_kw", 0.0, 0.0, "kW", "AC03 silent for 5 min", 2, 5.5),
    ("I", "dc.gun_temp_high", "DC01", "gun2_temp_c", 91.0, 90.0, "°C", "DC01 gun 2 connector over 90 °C", 7, None),
)
DEADLINE_HOURS = {"I": 12.0, "II": 6.0, "III": 4.0}


def ledger_rows(fleet: list[Any]) -> list[dict[str, Any]]:
    return [
        {
            "device_id": d.id,
            "site": d.site,
            "kind": d.kind,
            "vendor": d.vendor,
            "model": d.model,
            "rated_kw": d.rated_kw,
            "parent_id": d.parent,
            "expected_interval_s": d.interval_s,
            "commissioned": None,
            "location": None,
            "tags": list(d.tags),
        }
        for d in fleet
    ]


def seed_demo_history(
    con: duckdb.DuckDBPyConnection,
    *,
    days: float = 3.0,
    interval_s: float = 60.0,
    end: datetime | None = None,
    metrics: list[dict[str, Any]] | None = None,
) -> int:
    """Write `days` of demo-hub history ending at `end` (default: now) through `con`. Returns readings written."""
    end = (end or datetime.now(UTC)).replace(microsecond=0)
    start = end - timedelta(days=days)
    site = demo_site()
    fleet = demo_fleet(site.id, interval_s=interval_s)
    faults = [
        FaultSpec(kind="dc_connector_overheat", device_id="DC02", start_after_s=days * 86400 * 0.7,
                  params={"gun": 1, "rise_k_per_min": 0.05, "cap_c": 95.0}),
        FaultSpec(kind="pv_string_fault", device_id="INV01", start_after_s=days * 86400 * 0.4,
                  params={"string": 3, "factor": 0.6}),
    ]  # fmt: skip
    sim = FleetSimulator(site, fleet, seed=7, start=start, faults=faults, physics_step_s=min(60.0, interval_s))
    con.execute("BEGIN TRANSACTION")
    sync_ledger(
        con,
        devices=ledger_rows(fleet),
        sites=[{"id": site.id, "name": site.name, "latitude": site.latitude, "longitude": site.longitude,
                "timezone": site.timezone}],
        metrics=metrics or [],
    )  # fmt: skip
    con.execute("COMMIT")
    written = 0
    t = start
    chunk = timedelta(hours=6)
    while t < end:
        t = min(end, t + chunk)
        ts: list[datetime] = []
        devs: list[str] = []
        names: list[str] = []
        values: list[float] = []
        ev: dict[str, list[Any]] = {"ts": [], "device_id": [], "kind": [], "code": [], "text": []}
        for msg in sim.step(t):
            if msg.kind == "malformed":
                continue
            device_id = msg.topic.split("/")[2]
            body = orjson.loads(msg.payload)
            when = datetime.fromisoformat(body["ts"])
            if msg.kind == "telemetry":
                for name, value in body["metrics"].items():
                    ts.append(when)
                    devs.append(device_id)
                    names.append(name)
                    values.append(float(value))
            else:
                for key, val in (
                    ("ts", int(when.timestamp() * 1_000_000)),
                    ("device_id", device_id),
                    ("kind", body["kind"]),
                    ("code", str(body["code"])),
                    ("text", _event_text(body)),
                ):
                    ev[key].append(val)  # fmt: skip
        readings = pa.table(
            {
                "ts": pa.array(ts, pa.timestamp("us", tz="UTC")),
                "device_id": pa.array(devs, pa.string()),
                "metric": pa.array(names, pa.string()),
                "value": pa.array(values, pa.float64()),
                "quality": pa.array([0] * len(ts), pa.uint8()),
            },
            schema=READING_SCHEMA,
        )
        events = events_from_columns(ev["ts"], ev["device_id"], ev["kind"], ev["code"], ev["text"])
        con.execute("BEGIN TRANSACTION")
        append_batch(con, IngestBatch(readings=readings, events=events, source="demo-history"))
        rollup.record_batch(con, readings)
        con.execute("COMMIT")
        written += readings.num_rows
    con.execute("BEGIN TRANSACTION")
    rollup.fold_pending(con)
    _past_incidents(con, start, end)
    con.execute("COMMIT")
    return written


def _event_text(body: dict[str, Any]) -> str | None:
    """As the collector stores it: structured events (charging sessions) keep their figures as JSON."""
    detail = body.get("detail")
    if isinstance(detail, dict):
        text = body.get("text")
        return orjson.dumps({"text": text, **detail} if text is not None else detail).decode()
    text = body.get("text")
    return None if text is None else str(text)


def _past_incidents(con: duckdb.DuckDBPyConnection, start: datetime, end: datetime) -> None:
    span = end - start
    for i, (cls, rule, dev, metric, value, threshold, unit, title, ack_min, restore_h) in enumerate(PAST_INCIDENTS):
        created = start + span * (0.15 + 0.17 * i)
        acked = created + timedelta(minutes=ack_min) if ack_min is not None else None
        restored = created + timedelta(hours=restore_h) if restore_h is not None else None
        state = "firing" if restored is None else "closed"
        if acked is not None and restored is None:
            state = "acknowledged"
        con.execute(
            """
            INSERT INTO alerts (fingerprint, rule_id, device_id, site, event_class, state, title, message, metric,
                                value, threshold, unit, fired_at, created_at, updated_at, acknowledged_at,
                                acknowledged_by, resolved_at, closed_at, ack_due, onsite_due, restore_due)
            VALUES (?, ?, ?, 'demo', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            """,
            [
                f"{rule}:{dev}:{i}",
                rule,
                dev,
                cls,
                state,
                title,
                f"{title} ({value} {unit}, limit {threshold} {unit})",
                metric,
                value,
                threshold,
                unit,
                created - timedelta(seconds=30),
                created,
                restored or acked or created,
                acked,
                "zhang.min" if acked else None,
                restored,
                restored,
                created + timedelta(minutes=5),
                created + timedelta(hours=2),
                created + timedelta(hours=DEADLINE_HOURS[cls]),
            ],
        )
