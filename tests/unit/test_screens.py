"""The screens' state and exposition: latest values, Prometheus naming, column-wise rendering, SLA families."""

from __future__ import annotations

import shutil
import subprocess
import time
from datetime import UTC, datetime, timedelta

import polars as pl
import pyarrow as pa
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gridsentry.config import Config, metric_catalogue
from gridsentry.screens.alerts import OPEN_ALERTS_SCHEMA, alert_families
from gridsentry.screens.exposition import DEVICE_SCHEMA, FleetState, families, render_fleet
from gridsentry.screens.latest import LatestValues
from gridsentry.screens.naming import UNCATALOGUED_FAMILY, reading_families

NOW = 1_800_000_000.0


def readings(rows: list[tuple[float, str, str, float]]) -> pa.Table:
    return pa.table(
        {
            "ts": pa.array([int(r[0] * 1e6) for r in rows], pa.timestamp("us", tz="UTC")),
            "device_id": [r[1] for r in rows],
            "metric": [r[2] for r in rows],
            "value": pa.array([r[3] for r in rows], pa.float64()),
            "quality": pa.array([0] * len(rows), pa.uint8()),
        }
    )


def catalogue_families():
    cat = metric_catalogue(Config())
    return reading_families((m.name, m.unit, m.description) for m in cat.values())


def fleet_state(latest: pl.DataFrame, devices: list[tuple], open_alerts: list[tuple] = (), now: float = NOW):
    return FleetState(
        latest=latest,
        devices=pl.DataFrame(devices, schema=DEVICE_SCHEMA, orient="row"),
        open_alerts=pl.DataFrame(
            list(open_alerts), schema={"device_id": pl.String, "event_class": pl.String, "n": pl.Int64}, orient="row"
        ),
        families=catalogue_families(),
        now=now,
        reading_max_age_s=900,
        offline_after_intervals=3,
    )


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def test_latest_values_keep_the_newest_reading_whatever_the_commit_order():
    lv = LatestValues()
    lv.update(readings([(NOW, "DC01", "gun1_temp_c", 40.0), (NOW, "DC01", "gun2_temp_c", 41.0)]))
    lv.update(readings([(NOW - 60, "DC01", "gun1_temp_c", 99.0)]))  # late, older: must not win
    lv.update(readings([(NOW + 1, "DC01", "gun2_temp_c", 42.0), (NOW + 1, "DC01", "gun2_temp_c", 43.0)]))
    snap = lv.snapshot().sort("metric")
    assert snap.select("metric", "value").rows() == [("gun1_temp_c", 40.0), ("gun2_temp_c", 43.0)]
    assert len(lv) == 2 and lv.version == 3
    lv.update(readings([]))
    assert lv.version == 3


def test_latest_values_fold_by_themselves_when_batches_pile_up():
    lv = LatestValues(fold_after_rows=10)
    for i in range(30):
        lv.update(readings([(NOW + i, f"D{i % 3}", "power_kw", float(i))]))
    deadline = time.monotonic() + 10
    while lv._folding and time.monotonic() < deadline:  # the fold runs off the caller's thread
        time.sleep(0.01)
    assert lv._pending_rows < 30
    assert sorted(lv.snapshot().select("device_id", "value").rows()) == [("D0", 27.0), ("D1", 28.0), ("D2", 29.0)]


def test_catalogue_metrics_map_to_base_units_with_numbered_parts_as_labels():
    fams = catalogue_families()
    gun = fams["gun2_power_kw"]
    assert (gun.family, gun.index_label, gun.index_value, gun.scale) == (
        "gridsentry_reading_gun_power_watts",
        "gun",
        "2",
        1000.0,
    )
    assert fams["energy_kwh"].family == "gridsentry_reading_energy_joules" and fams["energy_kwh"].scale == 3.6e6
    assert fams["top_oil_temp_c"].family == "gridsentry_reading_top_oil_temp_celsius"
    assert fams["gun1_soc_pct"].scale == 0.01 and fams["gun1_soc_pct"].family.endswith("_ratio")
    assert fams["string7_current_a"].labels == ("site", "kind", "device", "string")
    # Two entries landing on one family and label set fall back to their own full names.
    clash = reading_families([("power_kw", "kW", "AC power"), ("power_w", "W", "AC power in watts")])
    assert clash["power_kw"].family == "gridsentry_reading_power_watts"
    assert clash["power_w"].family == "gridsentry_reading_power_w_watts"


def test_fleet_exposition_matches_prometheus_client_and_escapes_labels():
    lv = LatestValues()
    odd = 'odd"dev\\ice\nid'
    lv.update(
        readings(
            [
                (NOW - 5, "DC01", "gun1_power_kw", 60.5),
                (NOW - 5, "DC01", "gun2_power_kw", 0.0),
                (NOW - 5, "TX01", "top_oil_temp_c", 71.25),
                (NOW - 5, "TX01", "vendor_specific_x", 1e-7),
                (NOW - 5, odd, "power_kw", 7.0),
                (NOW - 3600, "INV01", "ac_power_kw", 50.0),  # older than reading_max_age_s: left out
            ]
        )
    )
    state = fleet_state(
        lv.snapshot(),
        [
            ("DC01", "hub-1", "charger_dc", 10.0, 120.0),
            ("TX01", "hub-1", "box_transformer", 10.0, 630.0),
            ("INV01", "hub-1", "pv_inverter", 10.0, None),
            ("AC09", "hub-2", "charger_ac", 10.0, 7.0),  # in the ledger, never reported
        ],
        open_alerts=[("DC01", "I", 1)],
    )
    text = render_fleet(state)
    fast = samples(text)
    registry = CollectorRegistry()
    registry.register(type("C", (), {"collect": lambda self: families(state)})())
    slow = samples(generate_latest(registry).decode())
    for key, value in slow.items():
        assert fast[key] == pytest.approx(value), key
    dc = (("device", "DC01"), ("gun", "1"), ("kind", "charger_dc"), ("site", "hub-1"))
    assert fast[("gridsentry_reading_gun_power_watts", dc)] == 60500.0
    assert (
        fast[
            (
                "gridsentry_reading_value",
                (("device", "TX01"), ("kind", "box_transformer"), ("metric", "vendor_specific_x"), ("site", "hub-1")),
            )
        ]
        == 1e-7
    )
    assert fast[("gridsentry_reading_power_watts", (("device", odd), ("kind", "unknown"), ("site", "")))] == 7000.0
    assert not any(name == "gridsentry_reading_ac_power_watts" for name, _ in fast)
    states = {
        dict(k[1])["device"]: dict(k[1])["state"]
        for k, v in fast.items()
        if k[0] == "gridsentry_device_state" and v == 1
    }
    assert states == {"DC01": "alarm", "TX01": "online", "INV01": "offline", "AC09": "never_seen", odd: "online"}
    assert (
        fast[
            (
                "gridsentry_device_rated_power_watts",
                (("device", "TX01"), ("kind", "box_transformer"), ("site", "hub-1")),
            )
        ]
        == 630_000.0
    )
    assert (
        fast[
            (
                "gridsentry_device_last_seen_age_seconds",
                (("device", "INV01"), ("kind", "pv_inverter"), ("site", "hub-1")),
            )
        ]
        == 3600.0
    )
    assert UNCATALOGUED_FAMILY in text
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: `make test` installs it (apt-get install prometheus)"
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert check.returncode == 0 and not (check.stdout + check.stderr).strip(), check.stdout + check.stderr


def test_sla_families_count_breaches_and_expose_pending_deadlines():
    raised = datetime.fromtimestamp(NOW, UTC) - timedelta(minutes=10)

    def alert(i, cls, state, acked_after_min=None, restore_h=12):
        return {
            "alert_id": i,
            "event_class": cls,
            "state": state,
            "device_id": f"D{i}",
            "site": "hub-1",
            "title": "t",
            "ack_due": raised + timedelta(minutes=5),
            "onsite_due": raised + timedelta(hours=2),
            "restore_due": raised + timedelta(hours=restore_h),
            "acknowledged_at": None if acked_after_min is None else raised + timedelta(minutes=acked_after_min),
        }

    frame = pl.DataFrame(
        [
            alert(1, "I", "firing"),  # not acknowledged 10 min in: ack breach
            alert(2, "I", "acknowledged", acked_after_min=2),  # acknowledged in time
            alert(3, "II", "acknowledged", acked_after_min=7),  # acknowledged late: still a breach
            alert(4, "III", "firing", restore_h=0.1),  # 6 min restore budget: overdue
        ],
        schema=OPEN_ALERTS_SCHEMA,
    )
    got = {}
    for fam in alert_families(frame, NOW):
        for s in fam.samples:
            got[(s.name, tuple(sorted(s.labels.items())))] = s.value
    assert got[("gridsentry_alerts_open", (("event_class", "I"),))] == 2
    assert got[("gridsentry_alerts_unacknowledged", (("event_class", "I"),))] == 1
    assert got[("gridsentry_alerts_sla_breached", (("deadline", "ack"), ("event_class", "I")))] == 1
    assert got[("gridsentry_alerts_sla_breached", (("deadline", "ack"), ("event_class", "II")))] == 1
    assert got[("gridsentry_alerts_sla_breached", (("deadline", "ack"), ("event_class", "III")))] == 1
    assert got[("gridsentry_alerts_sla_breached", (("deadline", "restore"), ("event_class", "III")))] == 1
    assert got[("gridsentry_alerts_sla_breached", (("deadline", "restore"), ("event_class", "I")))] == 0
    deadlines = {
        (dict(k[1])["alert_id"], dict(k[1])["deadline"])
        for k in got
        if k[0] == "gridsentry_alert_deadline_timestamp_seconds"
    }
    # An acknowledged alert has no acknowledgement deadline left to count down to.
    assert ("2", "ack") not in deadlines and ("1", "ack") in deadlines and ("2", "restore") in deadlines


def test_a_failing_fleet_render_leaves_the_health_families_and_is_counted(caplog: pytest.LogCaptureFixture):
    from types import SimpleNamespace

    from prometheus_client.core import GaugeMetricFamily

    from gridsentry.exporter import render_metrics

    def broken() -> str:
        raise RuntimeError("polars blew up")

    class Health:
        def collect(self):
            yield GaugeMetricFamily("gridsentry_up_for_test", "h", value=1)

    registry = CollectorRegistry()
    registry.register(Health())
    service = SimpleNamespace(registry=registry, screens=SimpleNamespace(render_fleet=broken, render_failures=0))
    body = render_metrics(service).decode()  # type: ignore[arg-type]
    assert "gridsentry_up_for_test 1.0" in body
    assert service.screens.render_failures == 1
    assert "fleet families are left out" in caplog.text


def test_latest_values_agree_with_a_plain_dict_over_random_commit_orders():
    import random

    rng = random.Random(8)
    for _ in range(20):
        lv = LatestValues(fold_after_rows=10**9)
        expected: dict[tuple[str, str], tuple[float, int]] = {}
        seq = 0
        for _batch in range(rng.randint(1, 8)):
            rows = []
            for _ in range(rng.randint(1, 40)):
                key = (f"D{rng.randint(0, 4)}", f"m{rng.randint(0, 3)}")
                ts = NOW + rng.randint(0, 20)
                seq += 1
                rows.append((ts, key[0], key[1], float(seq)))
                held = expected.get(key)
                if held is None or ts >= held[0]:  # newest wins; a tie goes to the later commit
                    expected[key] = (ts, seq)
            lv.update(readings(rows))
            if rng.random() < 0.5:
                lv.snapshot()
        got = {(d, m): v for d, m, v in lv.snapshot().select("device_id", "metric", "value").rows()}
        assert got == {k: float(v[1]) for k, v in expected.items()}


def test_kpis_of_the_standard_per_event_class():
    import duckdb

    from gridsentry.screens.alerts import KPI_SQL, kpi_families

    con = duckdb.connect()
    con.execute(
        "CREATE TABLE alerts (event_class VARCHAR, created_at TIMESTAMPTZ, ack_due TIMESTAMPTZ, "
        "acknowledged_at TIMESTAMPTZ, resolved_at TIMESTAMPTZ, closed_at TIMESTAMPTZ)"
    )
    rows = [
        # class I: acked after 2 min (in time), resolved after 1 h
        ("I", "-60 minutes", "-55 minutes", "-58 minutes", "0 minutes", None),
        # class I: acked after 10 min (late), still open
        ("I", "-30 minutes", "-25 minutes", "-20 minutes", None, None),
        # class I: raised a minute ago, nobody acked yet, still inside its 5 minutes: not counted for the response rate
        ("I", "-1 minutes", "4 minutes", None, None, None),
        # class II: never acked, 5 minutes over, closed after 2 h
        ("II", "-120 minutes", "-115 minutes", None, None, "0 minutes"),
        # older than the 30-day window: ignored
        ("III", "-40 days", "-40 days", None, None, None),
    ]
    for cls, *times in rows:
        values = ", ".join("NULL" if t is None else f"now() + INTERVAL '{t}'" for t in times)
        con.execute(f"INSERT INTO alerts VALUES ('{cls}', {values})")
    got = {}
    for fam in kpi_families([tuple(r) for r in con.execute(KPI_SQL).fetchall()]):
        for s in fam.samples:
            got[(s.name, s.labels["event_class"])] = s.value
    assert got[("gridsentry_alerts_kpi_raised", "I")] == 3 and got[("gridsentry_alerts_kpi_raised", "III")] == 0
    assert got[("gridsentry_alerts_kpi_response_timeliness_ratio", "I")] == pytest.approx(1 / 2)
    assert got[("gridsentry_alerts_kpi_response_timeliness_ratio", "II")] == 0.0
    assert got[("gridsentry_alerts_kpi_resolution_ratio", "I")] == pytest.approx(1 / 3)
    assert got[("gridsentry_alerts_kpi_resolution_ratio", "II")] == 1.0
    assert got[("gridsentry_alerts_kpi_mean_time_to_acknowledge_seconds", "I")] == pytest.approx((120 + 600) / 2, abs=1)
    assert got[("gridsentry_alerts_kpi_mean_time_to_resolve_seconds", "II")] == pytest.approx(7200, abs=1)
    assert ("gridsentry_alerts_kpi_mean_time_to_acknowledge_seconds", "II") not in got  # undefined, not 0


def test_latest_values_keep_each_key_at_its_row():
    lv = LatestValues()
    lv.update(readings([(NOW, "A", "m1", 1.0), (NOW, "B", "m1", 2.0)]))
    first = lv.snapshot().select("device_id", "metric").rows()
    lv.update(readings([(NOW + 1, "C", "m1", 3.0), (NOW + 1, "A", "m1", 4.0), (NOW - 9, "B", "m1", 0.0)]))
    snap = lv.snapshot()
    assert snap.select("device_id", "metric").rows()[:2] == first  # held keys stay put, new ones are appended
    assert snap.select("device_id", "metric").rows()[2] == ("C", "m1")
    assert dict(snap.select("device_id", "value").rows()) == {"A": 4.0, "B": 2.0, "C": 3.0}


def test_series_layout_is_reused_until_a_series_appears():
    from dataclasses import replace

    lv = LatestValues()
    lv.update(readings([(NOW - 5, "DC01", "gun1_power_kw", 10.0), (NOW - 5, "DC01", "vendor_x", 1.0)]))
    state = fleet_state(lv.snapshot(), [("DC01", "hub-1", "charger_dc", 10.0, 120.0)])  # one devices frame
    cache: dict = {}
    first = render_fleet(state, cache)
    layout = cache["layout"]
    lv.update(readings([(NOW - 4, "DC01", "gun1_power_kw", 20.0)]))
    second = render_fleet(replace(state, latest=lv.snapshot()), cache)
    assert cache["layout"] is layout  # same series: only the values were formatted again
    assert 'gun="1"} 10000.0' in first and 'gun="1"} 20000.0' in second
    lv.update(readings([(NOW - 3, "DC01", "gun2_power_kw", 5.0)]))
    third = render_fleet(replace(state, latest=lv.snapshot()), cache)
    assert cache["layout"] is not layout and 'gun="2"} 5000.0' in third
    # The cached path and a fresh render agree line for line.
    assert third == render_fleet(replace(state, latest=lv.snapshot()))
