"""A fixed, seeded month of the demo hub for the monthly report test: the simulator's physics at high speed
(one reading per device every 15 min, physics in 60 s steps), written through the real ingest path
(`storage.writer.append_batch`, which also projects charging sessions), with known faults, a charger that
goes silent, garbled telemetry, an overloaded transformer, a second small site, and alert histories whose
handling times are given here. Everything the simulator published is kept as the test's ground truth.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import duckdb
import orjson
import pyarrow as pa

from gridsentry.demo_history import _event_text, ledger_rows
from simulator.core import FleetSimulator
from simulator.faults import FaultSpec
from simulator.fleet import demo_fleet, demo_site
from storage.batch import READING_SCHEMA, IngestBatch, events_from_columns
from storage.ledger import sync_ledger
from storage.schema import migrate
from storage.writer import append_batch

ZONE = ZoneInfo("Asia/Shanghai")
MONTH = "2026-02"
MONTH_START = datetime(2026, 2, 1, tzinfo=ZONE)
MONTH_END = datetime(2026, 3, 1, tzinfo=ZONE)
# The run starts before the month (so the energy counters have a reading before it) and ends after it.
RUN_START = MONTH_START - timedelta(hours=6)
RUN_END = MONTH_END + timedelta(hours=1)
INTERVAL_S = 900.0
DAY = 86400.0
_OFFSET = (MONTH_START - RUN_START).total_seconds()

FAULTS = [
    FaultSpec("device_offline", "AC02", _OFFSET + 9.5 * DAY, {"duration_s": 7 * 3600.0}),
    FaultSpec("dc_connector_overheat", "DC02", _OFFSET + 4 * DAY, {"gun": 1, "rise_k_per_min": 3.0, "cap_c": 115.0,
                                                                   "duration_s": 2 * DAY}),
    FaultSpec("transformer_overload", "TX01", _OFFSET + 12 * DAY + 10 * 3600, {"extra_kva": 520.0,
                                                                              "duration_s": 5 * 3600.0}),
    FaultSpec("pv_string_fault", "INV01", _OFFSET + 3 * DAY, {"string": 2, "factor": 0.0, "duration_s": 8 * DAY}),
    FaultSpec("malformed_payload", "INV02", _OFFSET + 20 * DAY, {"every_n": 4, "duration_s": DAY}),
    FaultSpec("device_offline", "INV02", _OFFSET + 27.5 * DAY, {"duration_s": 2 * DAY}),
]  # fmt: skip


@dataclass(frozen=True)
class ScenarioAlert:
    """One alert as the lifecycle would leave it: fired at `fired`, first acknowledged `ack_min` minutes later,
    resolved (or closed by an operator) `restore_h` hours later; None: never."""

    event_class: str
    site: str
    device_id: str
    fired: datetime
    ack_min: float | None
    restore_h: float | None
    suppressed: str | None = None
    closed_by_operator: bool = False


# Deadlines as the contract's standby policy sets them: acknowledge in 5 min, restore in 12/6/4 h by class.
ACK_DUE = timedelta(minutes=5)
RESTORE_DUE_H = {"I": 12.0, "II": 6.0, "III": 4.0}

ALERTS = [
    ScenarioAlert("I", "demo", "DC02", MONTH_START + timedelta(days=4, hours=14), 3, 2.5),
    ScenarioAlert("I", "demo", "DC02", MONTH_START + timedelta(days=5, hours=9), 8, 13.0),
    ScenarioAlert("II", "demo", "TX01", MONTH_START + timedelta(days=12, hours=10, minutes=30), 4, 5.0),
    ScenarioAlert("II", "demo", "TX01", MONTH_START + timedelta(days=18), 12, 7.5, closed_by_operator=True),
    ScenarioAlert("III", "demo", "INV01", MONTH_START + timedelta(days=3, hours=11), 2, 3.0),
    ScenarioAlert("III", "demo", "AC02", MONTH_START + timedelta(days=9, hours=13), 6, None),
    ScenarioAlert("III", "demo", "INV02", MONTH_START + timedelta(days=27, hours=13), None, None),
    ScenarioAlert("II", "demo", "AC03", MONTH_START + timedelta(days=15), 1, 0.5, suppressed="maintenance"),
    # Outside the month: before it, and after it.
    ScenarioAlert("I", "demo", "DC01", MONTH_START - timedelta(hours=3), 2, 1.0),
    ScenarioAlert("I", "demo", "DC01", MONTH_END + timedelta(minutes=10), 2, None),
    # The second site's charger.
    ScenarioAlert("I", "north", "NC01", MONTH_START + timedelta(days=7), 20, 3.0),
    ScenarioAlert("III", "north", "NC01", MONTH_START + timedelta(days=21), 3, 6.0),
]

# The second site: one AC pile known to the ledger, its sessions and readings inserted as the collector would.
NORTH_SESSIONS = [
    ("NC01-1-a", MONTH_START + timedelta(days=2, hours=8), timedelta(hours=2), 12.5),
    ("NC01-1-b", MONTH_START + timedelta(days=14, hours=19), timedelta(hours=3), 20.25),
]


@dataclass
class Published:
    """What the simulator published, by kind, with its own timestamps: the ground truth the test reads."""

    telemetry: list[tuple[datetime, str, dict[str, float]]] = field(default_factory=list)
    events: list[tuple[datetime, str, dict[str, Any]]] = field(default_factory=list)
    malformed: int = 0


def build(con: duckdb.DuckDBPyConnection) -> tuple[FleetSimulator, Published]:
    migrate(con)
    site = demo_site()
    fleet = demo_fleet(site.id, interval_s=INTERVAL_S)
    sim = FleetSimulator(site, fleet, seed=2026, start=RUN_START, faults=FAULTS, physics_step_s=60.0)
    north = [{**ledger_rows(fleet)[0], "device_id": "NC01", "site": "north", "parent_id": None}]
    con.execute("BEGIN TRANSACTION")
    sync_ledger(
        con,
        devices=ledger_rows(fleet) + north,
        sites=[{"id": site.id, "name": site.name, "latitude": site.latitude, "longitude": site.longitude,
                "timezone": site.timezone},
               {"id": "north", "name": "North depot", "latitude": 23.1, "longitude": 113.3,
                "timezone": "Asia/Shanghai"}],
        metrics=[],
    )  # fmt: skip
    con.execute("COMMIT")
    published = Published()
    t = RUN_START
    while t < RUN_END:
        t = min(RUN_END, t + timedelta(days=2))
        _ingest(con, sim.step(t), published)
    _north(con)
    _alerts(con)
    return sim, published


def _ingest(con: duckdb.DuckDBPyConnection, messages: list[Any], published: Published) -> None:
    ts: list[datetime] = []
    devs: list[str] = []
    names: list[str] = []
    values: list[float] = []
    ev: dict[str, list[Any]] = {"ts": [], "device_id": [], "kind": [], "code": [], "text": []}
    for msg in messages:
        if msg.kind == "malformed":
            published.malformed += 1  # the collector dead-letters these: no reading is stored
            continue
        device_id = msg.topic.split("/")[2]
        body = orjson.loads(msg.payload)
        when = datetime.fromisoformat(body["ts"])
        if msg.kind == "telemetry":
            published.telemetry.append((when, device_id, dict(body["metrics"])))
            for name, value in body["metrics"].items():
                ts.append(when)
                devs.append(device_id)
                names.append(name)
                values.append(float(value))
        else:
            published.events.append((when, device_id, body))
            ev["ts"].append(int(when.timestamp() * 1_000_000))
            ev["device_id"].append(device_id)
            ev["kind"].append(body["kind"])
            ev["code"].append(str(body["code"]))
            ev["text"].append(_event_text(body))
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
    append_batch(con, IngestBatch(readings=readings, events=events, source="report-scenario"))
    con.execute("COMMIT")


def _north(con: duckdb.DuckDBPyConnection) -> None:
    for sid, started, duration, kwh in NORTH_SESSIONS:
        con.execute(
            "INSERT INTO charging_sessions VALUES (?, 'NC01', 1, ?, ?, ?, 'EVDisconnected')",
            [sid, started, started + duration, kwh],
        )
    # Readings every 15 min through the month, except its last day.
    con.execute(
        """
        INSERT INTO readings
        SELECT ts, 'NC01', 'power_kw', 0.0, 0 FROM range(CAST(? AS TIMESTAMPTZ), CAST(? AS TIMESTAMPTZ),
                                                         INTERVAL 15 MINUTE) t(ts)
        """,
        [MONTH_START, MONTH_END - timedelta(days=1)],
    )


def _alerts(con: duckdb.DuckDBPyConnection) -> None:
    """Alert rows and their audit trail as `alerts.lifecycle` writes them (fired, acknowledged, resolved or
    closed), with the breach marks its SLA watcher would have set."""
    for n, a in enumerate(ALERTS, start=1):
        ack = a.fired + timedelta(minutes=a.ack_min) if a.ack_min is not None else None
        restored = a.fired + timedelta(hours=a.restore_h) if a.restore_h is not None else None
        ack_due = a.fired + ACK_DUE
        restore_due = a.fired + timedelta(hours=RESTORE_DUE_H[a.event_class])
        marks = []
        if ack is None or ack > ack_due:
            marks.append("breach:ack")
        if restored is None or restored > restore_due:
            marks.append("breach:restore")
        state = "firing" if ack is None else "acknowledged"
        if restored is not None:
            state = "closed" if a.closed_by_operator else "resolved"
        con.execute(
            """
            INSERT INTO alerts (alert_id, fingerprint, rule_id, device_id, site, event_class, state, title, message,
                                fired_at, created_at, updated_at, acknowledged_at, acknowledged_by, resolved_at,
                                closed_at, ack_due, restore_due, sla_marks, suppressed)
            VALUES (?, ?, 'scenario.rule', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            """,
            [
                1000 + n, f"scenario:{a.device_id}:{n}", a.device_id, a.site, a.event_class, state,
                f"{a.device_id} scenario alert {n}", f"{a.device_id} scenario alert {n} (class {a.event_class})",
                a.fired, a.fired, restored or ack or a.fired, ack, "zhang.min" if ack else None,
                None if a.closed_by_operator else restored, restored if a.closed_by_operator else None,
                ack_due, restore_due, marks, a.suppressed,
            ],
        )  # fmt: skip
        trail: list[tuple[datetime, str, str]] = [(a.fired, "fired", "gridsentry")]
        if ack is not None:
            trail.append((ack, "acknowledged", "zhang.min"))
            trail.append((ack + timedelta(minutes=1), "commented", "zhang.min"))
        if restored is not None:
            trail.append((restored, "closed" if a.closed_by_operator else "resolved",
                          "li.wei" if a.closed_by_operator else "gridsentry"))  # fmt: skip
        for when, action, actor in trail:
            con.execute("INSERT INTO alert_events VALUES (?, ?, ?, ?, NULL)", [1000 + n, when, action, actor])
