"""The alert lifecycle on a real DuckDB with an injectable clock: transitions, outbox rows, SLA watch, escalation."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from alerts.lifecycle import AlertLifecycle, AlertStateError
from alerts.settings import AlertsConfig
from rules.model import Finding
from storage.writer import StorageWriter

T0 = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)  # Monday 10:00 in Shanghai


class FakeClock:
    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kw: float) -> None:
        self.now += timedelta(**kw)


def config(**extra: Any) -> AlertsConfig:
    base: dict[str, Any] = {
        "oncall": {
            "people": [
                {"id": "li.wei", "name": "Li Wei", "contacts": ["json://127.0.0.1:9/li"]},
                {"id": "zhang.min", "name": "Zhang Min", "contacts": ["json://127.0.0.1:9/zhang"]},
                {"id": "boss", "name": "Manager Wu", "contacts": ["json://127.0.0.1:9/boss"]},
            ],
            "rotas": [
                {"name": "engineers", "people": ["li.wei"]},
                {"name": "second", "people": ["zhang.min"]},
                {"name": "managers", "people": ["boss"]},
            ],
        },
        "escalation": [
            {"name": "on-call engineer", "rota": "engineers", "after": 0},
            {"name": "second line", "rota": "second", "after": "10m"},
            {"name": "manager", "rota": "managers", "after": "30m"},
        ],
        "webhooks": [{"name": "noc", "url": "http://127.0.0.1:9/hook"}],
    }
    base.update(extra)
    return AlertsConfig.model_validate(base)


def finding(action: str = "fire", cls: str = "II", device: str = "DC02", value: float = 82.5, **kw: Any) -> Finding:
    return Finding(
        action=action,  # type: ignore[arg-type]
        rule_id="dc.gun_temp_high",
        title="DC gun connector hot",
        device_id=device,
        site="wuhan-01",
        metric="gun1_temp_c",
        value=value,
        threshold=80.0,
        unit="°C",
        event_class=cls,  # type: ignore[arg-type]
        message=f"{device} gun1_temp_c is {value:.1f} °C (limit 80 °C)",
        runbook="",
        ts=kw.get("ts", T0),
    )


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[StorageWriter]:
    w = StorageWriter(tmp_path / "db.duckdb")
    w.start()
    try:
        yield w
    finally:
        w.close()


def q(writer: StorageWriter, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    con = writer.reader()
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def outbox(writer: StorageWriter) -> list[tuple[str, str, str | None]]:
    return [
        (r[0], r[1], r[2])
        for r in q(writer, "SELECT kind, channel, recipient FROM notifications ORDER BY notification_id")
    ]


async def test_fire_sets_deadlines_and_queues_pages_in_the_same_transaction(writer: StorageWriter) -> None:
    clock = FakeClock()
    lc = AlertLifecycle(writer, config(), clock=clock)
    changes = await lc.apply([finding()])
    assert [c.action for c in changes] == ["fired"]
    row = q(writer, "SELECT state, ack_due, onsite_due, restore_due, escalation_level, policy FROM alerts")[0]
    assert row[0] == "firing" and row[5] == "standard-table-1"
    assert (row[1] - T0, row[2] - T0, row[3] - T0) == (
        timedelta(minutes=5),
        timedelta(hours=2),
        timedelta(hours=6),
    )
    assert outbox(writer) == [("fired", "webhook:noc", None), ("fired", "apprise", "li.wei")]
    keys = {r[0] for r in q(writer, "SELECT idempotency_key FROM notifications")}
    assert len(keys) == 1  # one message, one key, whatever the channel

    # Re-fire while open updates the same alert and pages no one.
    clock.advance(seconds=30)
    assert [c.action for c in await lc.apply([finding(value=84.0)])] == ["refired"]
    assert q(writer, "SELECT count(*), max(fire_count), max(value) FROM alerts")[0] == (1, 2, 84.0)
    assert len(outbox(writer)) == 2


async def test_nobody_acknowledges_so_it_reaches_second_line_then_manager_on_schedule(writer: StorageWriter) -> None:
    clock = FakeClock()
    lc = AlertLifecycle(writer, config(), clock=clock)
    await lc.apply([finding(cls="I")])
    clock.advance(minutes=3)
    await lc.tick()
    assert outbox(writer)[-1] == ("fired", "apprise", "li.wei")  # 3 min < 80 % of 5 min: nothing yet
    clock.advance(minutes=1, seconds=1)  # 4 min 1 s: pre-warning of the acknowledge deadline
    await lc.tick()
    assert outbox(writer)[-2:] == [("prewarn:ack", "webhook:noc", None), ("prewarn:ack", "apprise", "li.wei")]
    clock.advance(minutes=1)  # 5 min 1 s: breach of the acknowledge deadline escalates one level
    await lc.tick()
    sent = outbox(writer)
    assert ("breach:ack", "apprise", "zhang.min") in sent and ("breach:ack", "apprise", "li.wei") in sent
    assert q(writer, "SELECT escalation_level FROM alerts")[0][0] == 1
    clock.advance(minutes=10)  # 15 min: level 2 was due at 10 min and is already paged
    await lc.tick()
    assert not [s for s in outbox(writer) if s[0] == "escalated"]
    clock.advance(minutes=15, seconds=1)  # 30 min: the manager
    await lc.tick()
    assert ("escalated", "apprise", "boss") in outbox(writer)
    assert q(writer, "SELECT escalation_level FROM alerts")[0][0] == 2
    trail = [r[0] for r in q(writer, "SELECT action FROM alert_events ORDER BY ts, rowid")]
    assert trail == ["fired", "prewarn:ack", "breach:ack", "escalated", "escalated"]
    # Ticking again changes nothing: each step happens once.
    n = len(outbox(writer))
    await lc.tick()
    assert len(outbox(writer)) == n


async def test_escalation_by_delay_without_breach(writer: StorageWriter) -> None:
    clock = FakeClock()
    cfg = config(
        escalation=[
            {"name": "on-call engineer", "rota": "engineers", "after": 0},
            {"name": "second line", "rota": "second", "after": "2m"},
            {"name": "manager", "rota": "managers", "after": "4m"},
        ]
    )
    lc = AlertLifecycle(writer, cfg, clock=clock)
    await lc.apply([finding()])
    for minute, who in ((2, "zhang.min"), (4, "boss")):
        clock.now = T0 + timedelta(minutes=minute, seconds=1)
        await lc.tick()
        assert outbox(writer)[-1] == ("escalated", "apprise", who)
    # Acknowledged alerts climb no further, and the ack is announced to everyone paged so far.
    await lc.acknowledge(1, "boss")
    assert {r for r in outbox(writer) if r[0] == "acknowledged"} == {
        ("acknowledged", "webhook:noc", None),
        ("acknowledged", "apprise", "li.wei"),
        ("acknowledged", "apprise", "zhang.min"),
        ("acknowledged", "apprise", "boss"),
    }


async def test_operator_actions_and_their_trail(writer: StorageWriter) -> None:
    clock = FakeClock()
    lc = AlertLifecycle(writer, config(), clock=clock)
    await lc.apply([finding()])
    await lc.assign(1, "duty-desk", "zhang.min", "nearest engineer")
    await lc.comment(1, "zhang.min", "on my way, 40 min")
    clock.advance(minutes=2)
    await lc.acknowledge(1, "zhang.min")
    with pytest.raises(AlertStateError, match="alert #1 is acknowledged; cannot acknowledge it"):
        await lc.acknowledge(1, "zhang.min")
    clock.advance(minutes=50)
    await lc.arrive(1, "zhang.min")
    await lc.apply([finding("clear", value=70.0)])
    await lc.close(1, "zhang.min", "replaced the gun 1 connector")
    with pytest.raises(LookupError, match="alert #9 does not exist"):
        await lc.close(9, "x")
    rows = q(writer, "SELECT action, actor, detail FROM alert_events ORDER BY ts, rowid")
    assert [r[0] for r in rows] == ["fired", "assigned", "commented", "acknowledged", "onsite", "resolved", "closed"]
    assert rows[1][2] == "assigned to zhang.min: nearest engineer"
    a = q(writer, "SELECT state, assignee, acknowledged_by, onsite_by, acknowledged_at - created_at FROM alerts")[0]
    assert a == ("closed", "zhang.min", "zhang.min", "zhang.min", timedelta(minutes=2))
    assert ("assigned", "apprise", "zhang.min") in outbox(writer)


async def test_flapping_is_damped(writer: StorageWriter) -> None:
    clock = FakeClock()
    lc = AlertLifecycle(writer, config(flap_threshold=2), clock=clock)
    await lc.apply([finding()])
    for _ in range(3):
        clock.advance(seconds=20)
        await lc.apply([finding("clear")])
        clock.advance(seconds=20)
        await lc.apply([finding()])
    assert q(writer, "SELECT count(*), max(flap_count), bool_or(flapping) FROM alerts")[0] == (1, 3, True)
    kinds = [k for k, ch, _ in outbox(writer) if ch == "webhook:noc"]
    # One page, one resolve, one re-open, then one 'flapping' notice; after that silence.
    assert kinds == ["fired", "resolved", "reopened", "resolved", "flapping"]
    # Long after a resolve, a new fire is a new alert.
    await lc.apply([finding("clear")])
    clock.advance(hours=1)
    await lc.apply([finding()])
    assert q(writer, "SELECT count(*) FROM alerts")[0][0] == 2


async def test_hold_keeps_an_alert_pending_before_it_pages(writer: StorageWriter) -> None:
    clock = FakeClock()
    lc = AlertLifecycle(writer, config(hold="1m"), clock=clock)
    assert [c.action for c in await lc.apply([finding()])] == ["pending"]
    assert outbox(writer) == []
    clock.advance(seconds=61)
    await lc.tick()
    row = q(writer, "SELECT state, ack_due FROM alerts")[0]
    assert row == ("firing", clock.now + timedelta(minutes=5))  # deadlines start when it fires
    assert outbox(writer)[-1] == ("fired", "apprise", "li.wei")
    # A pending alert that clears never pages.
    await lc.apply([finding(device="DC03")])
    await lc.apply([finding("clear", device="DC03")])
    assert {r[2] for r in outbox(writer)} == {None, "li.wei"}
    assert q(writer, "SELECT state FROM alerts WHERE device_id = 'DC03'")[0][0] == "resolved"


async def test_maintenance_window_suppresses_then_pages_when_it_ends(writer: StorageWriter) -> None:
    clock = FakeClock()
    window = {
        "id": "CHG-7",
        "start": (T0 - timedelta(hours=1)).isoformat(),
        "end": (T0 + timedelta(hours=1)).isoformat(),
        "announced_at": (T0 - timedelta(days=4)).isoformat(),
        "devices": ["DC02"],
        "reason": "connector replacement",
    }
    lc = AlertLifecycle(writer, config(maintenance=[window]), clock=clock)
    assert [c.action for c in await lc.apply([finding(), finding(device="DC05")])] == ["suppressed", "fired"]
    assert q(writer, "SELECT device_id, suppressed FROM alerts ORDER BY alert_id") == [
        ("DC02", "maintenance:CHG-7"),
        ("DC05", None),
    ]
    assert {r[2] for r in outbox(writer)} == {None, "li.wei"} and len(outbox(writer)) == 2  # DC05 only
    clock.advance(minutes=4, seconds=30)
    await lc.tick()
    assert [r[0] for r in outbox(writer)][2:] == ["prewarn:ack"] * 2  # DC05's, nothing for DC02
    clock.now = T0 + timedelta(hours=1, seconds=1)
    await lc.tick()
    row = q(writer, "SELECT suppressed, ack_due FROM alerts WHERE device_id = 'DC02'")[0]
    assert row == (None, clock.now + timedelta(minutes=5))
    dc02 = q(writer, "SELECT kind, recipient FROM notifications WHERE alert_id = 1 ORDER BY notification_id")
    assert dc02 == [("fired", None), ("fired", "li.wei")]


async def test_silence_stops_pages_until_it_ends(writer: StorageWriter) -> None:
    clock = FakeClock()
    lc = AlertLifecycle(writer, config(), clock=clock)
    await lc.apply([finding()])
    sid = await lc.silence("wang.fang", until=T0 + timedelta(hours=2), comment="known, crew on site", device_id="DC02")
    await lc.apply([finding(device="DC02", cls="I")])  # same fingerprint: refire, stays silenced
    clock.advance(minutes=6)
    await lc.tick()
    assert [r[0] for r in outbox(writer)] == ["fired", "fired"]  # no pre-warning, no breach while silenced
    with pytest.raises(ValueError, match="at least one of device, rule or site"):
        await lc.silence("x", until=T0 + timedelta(hours=1), comment="all")
    await lc.expire_silence(sid, "wang.fang")
    await lc.tick()
    assert q(writer, "SELECT suppressed FROM alerts")[0][0] is None
    assert outbox(writer)[-1] == ("fired", "apprise", "li.wei")


async def test_state_survives_a_restart(tmp_path: Path) -> None:
    clock = FakeClock()
    w = StorageWriter(tmp_path / "db.duckdb")
    w.start()
    await AlertLifecycle(w, config(), clock=clock).apply([finding()])
    w.close()
    w2 = StorageWriter(tmp_path / "db.duckdb")
    w2.start()
    try:
        lc = AlertLifecycle(w2, config(), clock=clock)
        assert [c.action for c in await lc.apply([finding()])] == ["refired"]
        assert lc.open_fingerprints() == ["dc.gun_temp_high|DC02|gun1_temp_c"]
        await lc.acknowledge(1, "li.wei")
        assert q(w2, "SELECT state FROM alerts")[0][0] == "acknowledged"
        assert q(w2, "SELECT count(*) FROM notifications WHERE status = 'pending'")[0][0] == 4  # fired + ack, 2 each
    finally:
        w2.close()
