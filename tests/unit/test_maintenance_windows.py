"""Maintenance windows announced at run time: the contract's notice, suppression, cancelling, restarts."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from alerts.lifecycle import AlertLifecycle
from alerts.maintenance import MaintenanceConflict, MaintenanceRefused, MaintenanceRequest
from storage.writer import StorageWriter
from tests.unit.test_alert_lifecycle import T0, FakeClock, config, finding, outbox, q


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[StorageWriter]:
    w = StorageWriter(tmp_path / "db.duckdb")
    w.start()
    try:
        yield w
    finally:
        w.close()


def window(**kw: object) -> MaintenanceRequest:
    base: dict[str, object] = {
        "id": "CHG-2026-118",
        "start": T0 + timedelta(days=3, hours=1),
        "end": T0 + timedelta(days=3, hours=4),
        "devices": ["DC02"],
        "reason": "transformer oil sampling",
    }
    base.update(kw)
    return MaintenanceRequest.model_validate(base)


async def test_window_announced_too_late_is_refused_with_the_shortfall(writer: StorageWriter) -> None:
    lc = AlertLifecycle(writer, config(), clock=FakeClock())
    with pytest.raises(MaintenanceRefused, match=r"announced only 2\.0 days ahead; the contract needs 3\.0 days"):
        await lc.add_maintenance("wang.fang", window(start=T0 + timedelta(days=2), end=T0 + timedelta(days=2, hours=2)))
    with pytest.raises(MaintenanceRefused, match="lies in the future"):
        await lc.add_maintenance("wang.fang", window(announced_at=T0 + timedelta(hours=1)))
    # Notified by letter four days before the work: accepted although entered today.
    row = await lc.add_maintenance(
        "wang.fang",
        window(start=T0 + timedelta(days=1), end=T0 + timedelta(days=1, hours=2), announced_at=T0 - timedelta(days=3)),
    )
    assert (row["source"], row["created_by"], row["status"]) == ("api", "wang.fang", "upcoming")
    with pytest.raises(MaintenanceConflict, match="exists already"):
        await lc.add_maintenance("li.wei", window())
    assert q(writer, "SELECT count(*) FROM maintenance_windows")[0][0] == 1


def test_request_needs_devices_and_an_end_after_its_start() -> None:
    with pytest.raises(ValidationError, match="name at least one device or site"):
        window(devices=[])
    with pytest.raises(ValidationError, match=r"ends .* before it starts"):
        window(end=T0)
    with pytest.raises(ValidationError, match="timezone"):
        window(start="2026-12-01T09:00:00")


async def test_window_suppresses_new_and_open_alerts_then_they_page_when_it_ends(writer: StorageWriter) -> None:
    clock = FakeClock()
    lc = AlertLifecycle(writer, config(), clock=clock)
    await lc.apply([finding(device="DC02", cls="III")])  # open before the window: paged
    w = await lc.add_maintenance("wang.fang", window(devices=["DC02"], sites=["xian-02"]))
    assert w["window_id"] == "CHG-2026-118"
    await lc.acknowledge(1, "li.wei")
    paged_before = len(outbox(writer))

    clock.now = T0 + timedelta(days=3, hours=1, minutes=1)  # inside the window
    await lc.tick()
    assert q(writer, "SELECT suppressed FROM alerts WHERE alert_id = 1")[0][0] == "maintenance:CHG-2026-118"
    other = finding(device="PV07", cls="II")
    changes = await lc.apply([finding(device="DC09", cls="I"), other])
    assert [c.action for c in changes] == ["fired", "fired"]  # neither listed
    site_finding = replace(finding(device="TX01", cls="I"), site="xian-02")
    assert [c.action for c in await lc.apply([site_finding])] == ["suppressed"]  # a listed site
    queued = len(outbox(writer))
    clock.advance(hours=2)  # deadlines of the suppressed ones would have passed: nothing is paged for them
    await lc.tick()
    suppressed_ids = {r[0] for r in q(writer, "SELECT alert_id FROM alerts WHERE suppressed IS NOT NULL")}
    assert suppressed_ids == {1, 4}
    assert not [r for r in q(writer, "SELECT alert_id FROM notifications") if r[0] in suppressed_ids][paged_before:]
    assert len(outbox(writer)) > queued  # the others pre-warned and breached meanwhile

    clock.now = T0 + timedelta(days=3, hours=4, seconds=1)  # the window is over
    await lc.tick()
    assert q(writer, "SELECT count(*) FROM alerts WHERE suppressed IS NOT NULL")[0][0] == 0
    fresh = q(writer, "SELECT kind FROM notifications WHERE alert_id = 4 ORDER BY notification_id")
    assert fresh and fresh[0][0] == "fired"
    trail = [r[0] for r in q(writer, "SELECT action FROM alert_events WHERE alert_id = 1 ORDER BY ts, rowid")]
    assert trail[-2:] == ["suppressed", "unsuppressed"]


async def test_cancelling_ends_suppression_and_is_kept_with_who_and_why(tmp_path: Path) -> None:
    clock = FakeClock()
    w = StorageWriter(tmp_path / "db.duckdb")
    w.start()
    try:
        lc = AlertLifecycle(w, config(), clock=clock)
        await lc.add_maintenance("wang.fang", window())
        clock.now = T0 + timedelta(days=3, hours=2)
        assert [c.action for c in await lc.apply([finding()])] == ["suppressed"]
        row = await lc.cancel_maintenance("CHG-2026-118", "li.wei via duty-desk", "crew stuck in snow")
        assert row["status"] == "cancelled" and row["cancelled_by"] == "li.wei via duty-desk"
        await lc.tick()
        assert q(w, "SELECT suppressed FROM alerts")[0][0] is None
        assert outbox(w)[-1] == ("fired", "apprise", "li.wei")
        with pytest.raises(MaintenanceConflict, match="already cancelled"):
            await lc.cancel_maintenance("CHG-2026-118", "li.wei", "again")
        with pytest.raises(LookupError, match="does not exist"):
            await lc.cancel_maintenance("CHG-9", "li.wei", "typo")
        await lc.add_maintenance(
            "wang.fang", window(id="CHG-2026-119", start=T0 + timedelta(days=7), end=T0 + timedelta(days=8))
        )
    finally:
        w.close()

    # After a restart the announced window is planned again; config windows cannot be cancelled from the API.
    cfg_window = {
        "id": "CHG-CFG",
        "start": (T0 + timedelta(days=10)).isoformat(),
        "end": (T0 + timedelta(days=10, hours=1)).isoformat(),
        "announced_at": T0.isoformat(),
        "devices": ["TX01"],
    }
    w = StorageWriter(tmp_path / "db.duckdb")
    w.start()
    try:
        lc = AlertLifecycle(w, config(maintenance=[cfg_window]), clock=clock)
        await w.run(lc.sync_maintenance)
        assert sorted(x.id for x in lc.maintenance.windows) == ["CHG-2026-119", "CHG-CFG"]
        with pytest.raises(MaintenanceConflict, match="comes from the config file"):
            await lc.cancel_maintenance("CHG-CFG", "li.wei", "no")
        clock.now = T0 + timedelta(days=7, hours=1)
        await lc.tick()  # the alert still open from before the restart enters the announced window
        assert q(w, "SELECT suppressed FROM alerts")[0][0] == "maintenance:CHG-2026-119"
    finally:
        w.close()
