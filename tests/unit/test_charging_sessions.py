"""Charging sessions: the simulator's session events, decoded by the collector, become `charging_sessions` rows
whose figures match the simulator's own ground truth (its session log), computed here without the projector."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import duckdb
import orjson
import pytest

from collector.payloads import BatchBuilder, DecodeError, TopicInfo, decode_message
from simulator.core import FleetSimulator
from simulator.fleet import demo_fleet, demo_site
from storage.schema import migrate
from storage.writer import append_batch


def _run_through_collector(con: duckdb.DuckDBPyConnection, sim: FleetSimulator, end: datetime) -> None:
    t = sim.start
    while t < end:
        t = min(end, t + timedelta(hours=6))
        builder = BatchBuilder()
        for msg in sim.step(t):
            if msg.kind != "event":
                continue
            _, site, device, channel = msg.topic.split("/")
            decode_message(builder, msg.topic, msg.payload, TopicInfo(device, site, "charger", channel), 0)
        con.execute("BEGIN TRANSACTION")
        append_batch(con, builder.build(source="test"))
        con.execute("COMMIT")


def test_sessions_match_simulator_ground_truth() -> None:
    start = datetime(2026, 10, 1, tzinfo=UTC)
    end = start + timedelta(days=3)
    site = demo_site()
    sim = FleetSimulator(site, demo_fleet(site.id, interval_s=300.0), seed=11, start=start, physics_step_s=30.0)
    con = duckdb.connect()
    migrate(con)
    _run_through_collector(con, sim, end)

    expected: dict[str, tuple[str, int, datetime | None, datetime | None, float | None, str | None]] = {}
    for when, device, code, detail in sim.session_log:
        sid = str(detail["session_id"])
        if code == "start":
            expected[sid] = (device, int(str(detail["connector"])), when, None, None, None)
        else:
            begun = expected.get(sid, (device, 0, None, None, None, None))[2]
            kwh = float(str(detail["energy_kwh"]))
            expected[sid] = (device, int(str(detail["connector"])), begun, when, kwh, str(detail["reason"]))
    rows = {
        r[0]: r[1:]
        for r in con.execute(
            "SELECT session_id, device_id, connector, started_at, stopped_at, energy_kwh, stop_reason "
            "FROM charging_sessions"
        ).fetchall()
    }
    assert len(expected) > 20
    assert set(rows) == set(expected)
    for sid, (device, connector, started, stopped, kwh, reason) in expected.items():
        got = rows[sid]
        assert got[0] == device and got[1] == connector and got[2] == started, sid
        assert got[3] == stopped and got[5] == reason, sid
        assert (got[4] is None) == (kwh is None)
        if kwh is not None:
            assert got[4] == pytest.approx(kwh, abs=1e-9)
    closed = [e for e in expected.values() if e[4] is not None]
    assert all(e[4] is not None and e[4] > 0 for e in closed)


def test_stop_without_start_and_replay_are_handled() -> None:
    con = duckdb.connect()
    migrate(con)
    stop = {"ts": "2026-10-01T10:00:00+00:00", "kind": "session", "code": "stop", "text": "gun 1",
            "detail": {"session_id": "DC09-1-x", "connector": 1, "energy_kwh": 20.5, "duration_s": 1800,
                       "reason": "Remote"}}  # fmt: skip
    bad = {"ts": "2026-10-01T10:00:00+00:00", "kind": "session", "code": "start", "detail": {"connector": 1}}
    for _ in range(2):  # a broker redelivery must not double anything
        builder = BatchBuilder()
        info = TopicInfo("DC09", "s1", "charger_dc", "events")
        decode_message(builder, "gridsentry/s1/DC09/events", orjson.dumps(stop), info, 0)
        decode_message(builder, "gridsentry/s1/DC09/events", orjson.dumps(bad), info, 0)
        con.execute("BEGIN TRANSACTION")
        append_batch(con, builder.build(source="test"))
        con.execute("COMMIT")
    rows = con.execute(
        "SELECT session_id, started_at, stopped_at, energy_kwh, stop_reason FROM charging_sessions"
    ).fetchall()
    assert len(rows) == 1
    sid, started, stopped, kwh, reason = rows[0]
    assert sid == "DC09-1-x" and kwh == 20.5 and reason == "Remote"
    assert stopped - started == timedelta(seconds=1800)
    assert con.execute("SELECT count(*) FROM events WHERE kind = 'session'").fetchone() == (4,)


def test_event_detail_must_be_an_object() -> None:
    builder = BatchBuilder()
    body = {"kind": "session", "code": "stop", "detail": [1, 2]}
    with pytest.raises(DecodeError, match="detail"):
        decode_message(builder, "t", orjson.dumps(body), TopicInfo("DC09", "s1", "charger_dc", "events"), 0)
