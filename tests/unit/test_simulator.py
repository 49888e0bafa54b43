"""Unit tests for the fleet simulator: physics plausibility, the MQTT payload contract, faults."""

from __future__ import annotations

import itertools
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from simulator import (
    METRIC_UNITS,
    FaultSpec,
    FleetSimulator,
    OutMessage,
    demo_fleet,
    demo_site,
    metric_names,
    parse_fault,
)
from simulator.physics import TransformerThermal, clear_sky_irradiance, solar_elevation_deg

# 12:00 local time in Shenzhen (UTC+8) on the June solstice.
NOON = datetime(2026, 6, 21, 4, 0, tzinfo=UTC)
MIDNIGHT = datetime(2026, 6, 21, 16, 0, tzinfo=UTC)
TOPIC = re.compile(r"^gridsentry/demo/(?P<device>[A-Z0-9]+)/(?P<channel>telemetry|events)$")
TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00$")


def run(sim: FleetSimulator, seconds: float) -> list[OutMessage]:
    return sim.step(sim.start + timedelta(seconds=seconds))


def telemetry(messages: list[OutMessage], device: str) -> list[dict[str, Any]]:
    return [
        json.loads(m.payload)
        for m in messages
        if m.kind == "telemetry" and m.topic == f"gridsentry/demo/{device}/telemetry"
    ]


def series(messages: list[OutMessage], device: str, metric: str) -> list[float]:
    return [t["metrics"][metric] for t in telemetry(messages, device)]


def make(
    seed: int = 1, start: datetime = NOON, interval_s: float = 1.0, faults=(), physics_step_s=None
) -> FleetSimulator:
    return FleetSimulator(
        demo_site(),
        demo_fleet(interval_s=interval_s),
        seed=seed,
        start=start,
        faults=faults,
        physics_step_s=physics_step_s,
    )


# --- fleet and determinism -------------------------------------------------------------------


def test_demo_fleet_shape():
    fleet = demo_fleet()
    by_id = {d.id: d for d in fleet}
    assert sorted(by_id) == ["AC01", "AC02", "AC03", "AC04", "DC01", "DC02", "INV01", "INV02", "TX01"]
    assert {by_id[f"AC0{i}"].kind for i in range(1, 5)} == {"charger_ac"}
    assert by_id["DC01"].rated_kw == 120 and by_id["DC01"].kind == "charger_dc"
    assert by_id["INV01"].strings == 4 and by_id["INV01"].rated_kw == 50
    assert by_id["TX01"].rated_kw == 630 and by_id["TX01"].parent is None
    assert all(d.parent == "TX01" for d in fleet if d.id != "TX01")
    site = demo_site()
    assert (site.id, site.latitude, site.longitude, site.timezone) == ("demo", 22.54, 114.06, "Asia/Shanghai")


def test_metric_units_cover_every_metric():
    for device in demo_fleet():
        for metric in metric_names(device):
            assert metric in METRIC_UNITS, metric
    for i in range(1, 9):
        assert METRIC_UNITS[f"string{i}_current_a"] == "A"
    assert METRIC_UNITS["energy_kwh"] == "kWh"
    assert METRIC_UNITS["load_factor"] == "1"
    assert METRIC_UNITS["irradiance_wm2"] == "W/m²"
    assert METRIC_UNITS["gun1_temp_c"] == "°C"
    assert METRIC_UNITS["load_kva"] == "kVA"
    assert METRIC_UNITS["gun2_soc_pct"] == "%"
    assert set(METRIC_UNITS.values()) <= {"kW", "kWh", "V", "A", "°C", "%", "W/m²", "kVA", "kΩ", "1"}


def test_same_seed_same_history_different_seed_differs():
    a = run(make(seed=7), 120)
    b = run(make(seed=7), 120)
    c = run(make(seed=8), 120)
    assert a == b
    assert [m.payload for m in a] != [m.payload for m in c]


def test_history_does_not_depend_on_step_cadence():
    one_jump = run(make(seed=3), 90)
    sim = make(seed=3)
    small_steps: list[OutMessage] = []
    for tenth in range(1, 901):
        small_steps += run(sim, tenth / 10)
    assert one_jump == small_steps


def test_step_requires_aware_datetimes():
    with pytest.raises(ValueError, match="timezone-aware"):
        make().step(datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="timezone-aware"):
        FleetSimulator(demo_site(), demo_fleet(), start=datetime(2026, 1, 1))


# --- physics ---------------------------------------------------------------------------------


def test_solar_elevation_shenzhen():
    # Shenzhen sits just south of the Tropic of Cancer: the June noon sun is almost overhead.
    assert solar_elevation_deg(22.54, 114.06, datetime(2026, 6, 21, 4, 24, tzinfo=UTC)) > 85
    assert solar_elevation_deg(22.54, 114.06, datetime(2026, 12, 21, 4, 24, tzinfo=UTC)) == pytest.approx(44, abs=1.5)
    assert solar_elevation_deg(22.54, 114.06, MIDNIGHT) < -40
    assert clear_sky_irradiance(-5) == 0
    assert clear_sky_irradiance(90) == pytest.approx(1000)


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize(
    "day", [datetime(2026, 6, 21, tzinfo=UTC), datetime(2026, 12, 21, tzinfo=UTC)], ids=["june", "december"]
)
def test_pv_zero_at_midnight_and_producing_at_noon(seed, day):
    noon = day.replace(hour=4)
    midnight = day.replace(hour=16)
    for start, producing in ((noon, True), (midnight, False)):
        messages = run(make(seed=seed, start=start, interval_s=5), 60)
        for inverter in ("INV01", "INV02"):
            for sample in telemetry(messages, inverter):
                m = sample["metrics"]
                if producing:
                    assert m["ac_power_kw"] > 5 and m["irradiance_wm2"] > 100
                    assert m["dc_power_kw"] > m["ac_power_kw"]
                    assert m["ac_power_kw"] <= 50
                    strings = sum(m[f"string{i}_current_a"] for i in range(1, 5))
                    assert strings * m["dc_voltage_v"] / 1000 == pytest.approx(m["dc_power_kw"], rel=0.05)
                else:
                    assert m["ac_power_kw"] == 0 and m["dc_power_kw"] == 0 and m["irradiance_wm2"] == 0
                    assert all(m[f"string{i}_current_a"] == 0 for i in range(1, 5))


def test_chargers_stay_within_ratings_and_registers_only_rise():
    messages = run(make(seed=5, interval_s=10, physics_step_s=5), 4 * 3600)
    charging_seen = False
    for device in demo_fleet():
        samples = telemetry(messages, device.id)
        assert len(samples) == 4 * 360 + 1
        if "energy_kwh" in metric_names(device):
            energy = [s["metrics"]["energy_kwh"] for s in samples]
            assert all(b >= a for a, b in itertools.pairwise(energy)), device.id
            assert energy[-1] > energy[0], device.id
        if device.kind == "charger_ac":
            for s in samples:
                m = s["metrics"]
                assert 0 <= m["power_kw"] <= 7.4
                assert 0 <= m["current_a"] <= 32
                assert 230 * 0.97 <= m["voltage_v"] <= 230 * 1.03
                charging_seen |= m["power_kw"] > 6
        if device.kind == "charger_dc":
            for s in samples:
                m = s["metrics"]
                # 60 kW per gun plus meter noise
                assert m["gun1_power_kw"] <= 61 and m["gun2_power_kw"] <= 61
                assert m["input_power_kw"] >= m["gun1_power_kw"] + m["gun2_power_kw"]
                assert m["gun1_temp_c"] < 75 and m["gun2_temp_c"] < 75
                assert 0 <= m["gun1_soc_pct"] <= 100
    assert charging_seen


def test_dc_taper_above_80_percent_soc():
    from simulator.physics import dc_taper_factor

    assert dc_taper_factor(50) == 1.0
    assert dc_taper_factor(80) == 1.0
    assert 0.1 <= dc_taper_factor(95) < dc_taper_factor(90) < 1.0


def test_transformer_top_oil_lags_and_hot_spot_follows_fast():
    thermal = TransformerThermal(load_factor=0.3, ambient_c=25.0)
    oil0, hot0 = thermal.top_oil_c, thermal.hot_spot_c
    for _ in range(20):
        thermal.step(1.0, 25.0, 60.0)  # 20 minutes at rated load
    oil_final = 25.0 + 10.0 + 60.0  # ambient + enclosure + rated top-oil rise
    gradient0 = hot0 - oil0
    gradient_final = 1.2 * 23.0
    gradient = thermal.hot_spot_c - thermal.top_oil_c
    # After 20 min the oil (τ 180 min) has covered ~10 % of its way, the winding (2τw = 8 min) ~90 %.
    assert (thermal.top_oil_c - oil0) / (oil_final - oil0) == pytest.approx(1 - 2.718281828 ** (-20 / 180), abs=0.01)
    assert (gradient - gradient0) / (gradient_final - gradient0) > 0.9
    for _ in range(24 * 60):
        thermal.step(1.0, 25.0, 60.0)
    assert thermal.top_oil_c == pytest.approx(oil_final, abs=0.1)
    assert thermal.hot_spot_c == pytest.approx(oil_final + gradient_final, abs=0.1)


def test_transformer_in_fleet_overload_step():
    fault = FaultSpec("transformer_overload", "TX01", 600, {"extra_kva": 500})
    messages = run(make(seed=2, start=MIDNIGHT, interval_s=10, faults=[fault]), 600 + 1200)
    samples = telemetry(messages, "TX01")
    before = samples[59]["metrics"]  # t = 590 s, the last sample before the overload
    after = samples[-1]["metrics"]
    assert after["load_kva"] - before["load_kva"] > 400
    assert after["load_factor"] == pytest.approx(after["load_kva"] / 630, abs=0.002)
    oil_rise = after["top_oil_temp_c"] - before["top_oil_temp_c"]
    gradient_rise = (after["hot_spot_temp_c"] - after["top_oil_temp_c"]) - (
        before["hot_spot_temp_c"] - before["top_oil_temp_c"]
    )
    assert 1 < oil_rise < 8  # slow: hours to settle
    assert gradient_rise > 2 * oil_rise  # fast: minutes
    assert after["lv_current_a"] > before["lv_current_a"]


# --- contract --------------------------------------------------------------------------------


def test_payloads_follow_the_mqtt_contract():
    sim = make(seed=1)
    messages = run(sim, 30)
    devices = {d.id: d for d in demo_fleet()}
    last_seq: dict[str, int] = {}
    for message in messages:
        match = TOPIC.match(message.topic)
        assert match, message.topic
        body = json.loads(message.payload)
        assert b'": ' not in message.payload and b'", "' not in message.payload  # compact
        assert TS.match(body["ts"]), body["ts"]
        ts = datetime.fromisoformat(body["ts"])
        assert ts.utcoffset() == timedelta(0)
        if match["channel"] == "telemetry":
            assert message.kind == "telemetry"
            assert set(body) == {"ts", "seq", "metrics"}
            device = match["device"]
            assert list(body["metrics"]) == list(metric_names(devices[device]))
            assert message.readings == len(body["metrics"])
            assert all(isinstance(v, float | int) for v in body["metrics"].values())
            assert body["seq"] == last_seq.get(device, 0) + 1
            last_seq[device] = body["seq"]
            assert ts == sim.start + timedelta(seconds=body["seq"] - 1)
        else:
            assert message.kind == "event" and message.readings == 0
            assert body["kind"] in {"status", "fault", "session"}
            if body["kind"] == "session":
                assert set(body) == {"ts", "kind", "code", "text", "detail"}
                assert body["code"] in {"start", "stop"} and body["detail"]["session_id"].startswith(match["device"])
            else:
                assert set(body) == {"ts", "kind", "code", "text"}
            assert re.match(r"^(gun [12]|connector 1)$", body["text"])
    assert all(seq == 31 for seq in last_seq.values())
    assert len(last_seq) == 9
    # Every connector announces its status at boot.
    boot = [json.loads(m.payload) for m in messages if m.kind == "event"]
    boot = [e for e in boot if e["kind"] == "status"]  # sessions under way at boot also announce a start
    assert sum(1 for e in boot if datetime.fromisoformat(e["ts"]) == sim.start) == 4 + 2 * 2
    assert sim.next_due() == sim.start + timedelta(seconds=31)


def test_status_events_follow_sessions():
    messages = run(make(seed=4, interval_s=30, physics_step_s=5), 6 * 3600)
    codes = [json.loads(m.payload)["code"] for m in messages if m.kind == "event"]
    assert {"Available", "Preparing", "Charging", "Finishing"} <= set(codes)


# --- faults ----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_dc_connector_overheat_crosses_95_within_90_s(seed):
    start_after = 30.0
    fault = FaultSpec("dc_connector_overheat", "DC02", start_after, {"gun": 1})
    sim = make(seed=seed, faults=[fault])
    messages = run(sim, start_after + 150)
    samples = telemetry(messages, "DC02")
    onset = sim.start + timedelta(seconds=start_after)
    hot = [
        datetime.fromisoformat(s["ts"]) - onset
        for s in samples
        if s["metrics"]["gun1_temp_c"] > 95 and datetime.fromisoformat(s["ts"]) >= onset
    ]
    assert hot and hot[0] <= timedelta(seconds=90)
    # Current flows (a session was forced if none was running) and the temperature keeps rising to the cap.
    assert samples[-1]["metrics"]["gun1_current_a"] > 50
    assert max(s["metrics"]["gun1_temp_c"] for s in samples) <= 131
    for s in samples:
        assert s["metrics"]["gun2_temp_c"] < 75
    for s in telemetry(messages, "DC01"):
        assert s["metrics"]["gun1_temp_c"] < 75 and s["metrics"]["gun2_temp_c"] < 75
    events = [json.loads(m.payload) for m in messages if m.topic == "gridsentry/demo/DC02/events"]
    assert {"kind": "fault", "code": "HighTemperature", "text": "gun 1"}.items() <= next(
        e for e in events if e["kind"] == "fault"
    ).items()
    (record,) = sim.ground_truth
    assert (record.kind, record.device_id, record.started_at) == ("dc_connector_overheat", "DC02", onset)
    assert record.ended_at is None


def test_malformed_payload_every_n():
    fault = FaultSpec("malformed_payload", "AC02", 10, {"every_n": 4})
    sim = make(faults=[fault])
    messages = [m for m in run(sim, 60) if m.topic == "gridsentry/demo/AC02/telemetry"]
    assert len(messages) == 61
    for index, message in enumerate(messages):
        since_fault = index - 10 + 1  # message 11 (t = 10 s) is the first under the fault
        if since_fault > 0 and since_fault % 4 == 0:
            assert message.kind == "malformed" and message.readings == 0
            with pytest.raises(ValueError):
                json.loads(message.payload)
            assert message.payload.startswith(b'{"ts":')
        else:
            assert message.kind == "telemetry"
            assert json.loads(message.payload)["seq"] == index + 1
    assert sum(m.kind == "malformed" for m in messages) == 12


def test_device_offline_is_silent_during_its_window():
    fault = FaultSpec("device_offline", "INV02", 20, {"duration_s": 30})
    sim = make(faults=[fault])
    messages = run(sim, 80)
    stamps = [datetime.fromisoformat(s["ts"]) for s in telemetry(messages, "INV02")]
    window_start = sim.start + timedelta(seconds=20)
    window_end = sim.start + timedelta(seconds=50)
    assert not [t for t in stamps if window_start <= t < window_end]
    assert len(stamps) == 81 - 30
    assert max(stamps) == sim.start + timedelta(seconds=80)
    # The device did not generate messages while silent, so its sequence has no gap.
    seqs = [s["seq"] for s in telemetry(messages, "INV02")]
    assert seqs == list(range(1, len(seqs) + 1))
    (record,) = sim.ground_truth
    assert (record.started_at, record.ended_at) == (window_start, window_end)
    assert len(telemetry(messages, "INV01")) == 81


def test_stuck_sensor_freezes_one_metric():
    fault = FaultSpec("stuck_sensor", "TX01", 10, {"metric": "top_oil_temp_c"})
    messages = run(make(faults=[fault]), 60)
    oil = series(messages, "TX01", "top_oil_temp_c")
    assert len(set(oil[10:])) == 1
    assert len(set(series(messages, "TX01", "hot_spot_temp_c")[10:])) > 1


def test_pv_string_fault_drops_one_string():
    fault = FaultSpec("pv_string_fault", "INV01", 0, {"string": 3, "factor": 0.0})
    messages = run(make(faults=[fault]), 20)
    for sample in telemetry(messages, "INV01"):
        m = sample["metrics"]
        assert m["string3_current_a"] == 0
        assert m["string1_current_a"] > 5


def test_dc_fan_failure_heats_modules():
    healthy = series(run(make(seed=9, interval_s=30, physics_step_s=5), 3600), "DC01", "module_temp_c")
    fault = FaultSpec("dc_fan_failure", "DC01", 0, {})
    failed = series(run(make(seed=9, interval_s=30, faults=[fault], physics_step_s=5), 3600), "DC01", "module_temp_c")
    assert failed[-1] > healthy[-1] + 3


def test_fault_validation_names_the_problem():
    with pytest.raises(ValueError, match="unknown fault kind"):
        make(faults=[FaultSpec("gremlins", "DC01", 0, {})])
    with pytest.raises(ValueError, match="no device 'DC09'"):
        make(faults=[FaultSpec("device_offline", "DC09", 0, {})])
    with pytest.raises(ValueError, match="needs a charger_dc"):
        make(faults=[FaultSpec("dc_connector_overheat", "AC01", 0, {})])
    with pytest.raises(ValueError, match="metric must be one of"):
        make(faults=[FaultSpec("stuck_sensor", "AC01", 0, {"metric": "top_oil_temp_c"})])
    with pytest.raises(ValueError, match="gun must be 1 or 2"):
        make(faults=[FaultSpec("dc_connector_overheat", "DC01", 0, {"gun": 3})])


def test_parse_fault_command_line_form():
    assert parse_fault("dc_connector_overheat:DC02") == FaultSpec("dc_connector_overheat", "DC02", 10.0, {})
    spec = parse_fault("stuck_sensor:TX01:60:metric=top_oil_temp_c")
    assert (spec.start_after_s, spec.params) == (60.0, {"metric": "top_oil_temp_c"})
    spec = parse_fault("dc_connector_overheat:DC01:5:gun=2,rise_k_per_min=40.5")
    assert spec.params == {"gun": 2, "rise_k_per_min": 40.5}
    with pytest.raises(ValueError, match="expected KIND:DEVICE"):
        parse_fault("dc_connector_overheat")
