"""The default rules added from domain.md §5 (G3, G4, E10, T3, T4), as shipped in the packs: each
fires on its fault and clears when it is gone."""

import math
from datetime import timedelta

import orjson
import pytest

from rules.engine import DeviceInfo, RuleEngine, SiteInfo
from rules.loader import builtin_pack_files, load_packs
from simulator.fleet import METRIC_UNITS
from storage.batch import Quality, events_from_columns, readings_from_columns
from tests.unit.test_rule_kinds import T0, us

TX = DeviceInfo("TX01", "s1", "box_transformer", rated_kw=630, interval_s=60)
DC = DeviceInfo("DC01", "s1", "charger_dc", rated_kw=120, interval_s=10, model="DC120")


@pytest.fixture(scope="module")
def packs():
    loaded = load_packs(builtin_pack_files(), set(METRIC_UNITS))
    assert loaded.problems == []
    return loaded


def engine(packs, devices, only: set[str]) -> RuleEngine:
    e = RuleEngine([r for r in packs.rules if r.id in only], METRIC_UNITS)
    e.set_devices(devices)
    e.set_sites([SiteInfo("s1", 22.54, 114.06)])
    return e


def batch(points, quality=None):
    return readings_from_columns(
        [us(T0 + timedelta(seconds=s)) for s, _, _, _ in points],
        [d for _, d, _, _ in points],
        [m for _, _, m, _ in points],
        [v for _, _, _, v in points],
        quality,
    )


def run(e: RuleEngine, points, step_s: float, until_s: float):
    out, t, points = [], 0.0, sorted(points)
    while t <= until_s:
        out += e.evaluate(batch([p for p in points if t - step_s < p[0] <= t]), now=T0 + timedelta(seconds=t))
        t += step_s
    return out


def test_g3_sentinels_and_impossible_values_fire_after_three_and_never_feed_other_rules(packs):
    e = engine(packs, [TX], {"tx_invalid_temperature"})
    ok = [(s, "TX01", "top_oil_temp_c", 60.0) for s in range(0, 300, 60)]
    assert e.evaluate(batch(ok), now=T0 + timedelta(seconds=300)) == []
    # Two sentinels, one good reading: the count starts again.
    two = [(300, "TX01", "top_oil_temp_c", -32768.0), (360, "TX01", "top_oil_temp_c", -32768.0)]
    assert e.evaluate(batch([*two, (420, "TX01", "top_oil_temp_c", 61.0)]), now=T0 + timedelta(seconds=420)) == []
    # A register read as unsigned (65535), one flagged out of range by the collector, a NaN: three in a row.
    bad = [
        (480, "TX01", "top_oil_temp_c", 65535.0),
        (540, "TX01", "top_oil_temp_c", 250.0),
        (600, "TX01", "top_oil_temp_c", math.nan),
    ]
    q = [int(Quality.GOOD), int(Quality.OUT_OF_RANGE), int(Quality.GOOD)]
    [fire] = e.evaluate(batch(bad, q), now=T0 + timedelta(seconds=600))
    assert fire.rule_id == "tx_invalid_temperature" and fire.action == "fire" and fire.event_class == "III"
    assert "TX01" in fire.message and "three times running" in fire.message
    [clear] = e.evaluate(batch([(660, "TX01", "top_oil_temp_c", 62.0)]), now=T0 + timedelta(seconds=660))
    assert clear.action == "clear" and clear.rule_id == "tx_invalid_temperature"


def test_g3_screened_values_stay_out_of_threshold_rules(packs):
    e = engine(packs, [TX], {"tx_invalid_temperature", "tx_top_oil_limit"})
    hot = [(s, "TX01", "top_oil_temp_c", 65535.0) for s in range(0, 600, 60)]
    findings = run(e, hot, 60, 600)
    assert {f.rule_id for f in findings} == {"tx_invalid_temperature"}


def test_g4_counter_regression_fires_and_a_uint32_wrap_does_not(packs):
    e = engine(packs, [DC], {"dc_energy_counter_regression"})
    rising = [(s, "DC01", "energy_kwh", 1000 + s / 60) for s in range(0, 600, 10)]
    assert run(e, rising, 60, 600) == []
    # Across batches: the next batch's first reading is below the last one of the previous batch.
    [fire] = e.evaluate(batch([(610, "DC01", "energy_kwh", 12.5)]), now=T0 + timedelta(seconds=610))
    assert fire.action == "fire" and fire.event_class == "II"
    assert "fell from 1009.8" in fire.message and "to 12.500 kWh" in fire.message
    [clear] = e.evaluate(batch([(620, "DC01", "energy_kwh", 12.6)]), now=T0 + timedelta(seconds=620))
    assert clear.action == "clear"
    # A uint32 Wh register rolling over (4294967.296 kWh) is not a regression.
    wrap = [(630, "DC01", "energy_kwh", 4294967.0), (640, "DC01", "energy_kwh", 0.2)]
    findings = e.evaluate(batch(wrap[:1]), now=T0 + timedelta(seconds=630))
    findings += e.evaluate(batch(wrap[1:]), now=T0 + timedelta(seconds=640))
    assert [f.action for f in findings] == []


def meter(seconds: range, power_kw: float, frozen: bool, device: str = "DC01"):
    pts = []
    for s in seconds:
        pts.append((s, device, "gun1_power_kw", power_kw))
        pts.append((s, device, "gun2_power_kw", 0.0))
        pts.append((s, device, "energy_kwh", 5000.0 if frozen else 5000.0 + power_kw * s / 3600))
    return pts


def test_e10_meter_stuck_while_charging_but_not_while_idle(packs):
    devices = [DC, DeviceInfo("DC02", "s1", "charger_dc", rated_kw=120, interval_s=10, model="DC120")]
    e = engine(packs, devices, {"dc_meter_stuck"})
    charging_frozen = meter(range(0, 1800, 10), 60.0, frozen=True)
    idle_frozen = meter(range(0, 1800, 10), 0.0, frozen=True, device="DC02")
    findings = run(e, charging_frozen + idle_frozen, 30, 1800)
    [fire] = [f for f in findings if f.action == "fire"]
    assert fire.device_id == "DC01" and fire.rule_id == "dc_meter_stuck"
    assert timedelta(minutes=10) <= fire.ts - T0 <= timedelta(minutes=12)
    assert "not being billed" in fire.message
    # The meter counts again: cleared.
    moving = meter(range(1800, 2700, 10), 60.0, frozen=False)
    later = run_from(e, moving, 1800, 2700)
    assert [f.action for f in later if f.device_id == "DC01"] == ["clear"]


def run_from(e: RuleEngine, points, start_s: float, until_s: float, step_s: float = 30):
    out, t = [], start_s + step_s
    while t <= until_s:
        out += e.evaluate(batch([p for p in points if t - step_s < p[0] <= t]), now=T0 + timedelta(seconds=t))
        t += step_s
    return out


def test_e10_charging_pile_with_a_counting_meter_is_quiet(packs):
    e = engine(packs, [DC], {"dc_meter_stuck"})
    assert run(e, meter(range(0, 1800, 10), 60.0, frozen=False), 30, 1800) == []


def transformer(hours: float, hot_spot: float, start_h: float = 0.0):
    return [
        (s, "TX01", "hot_spot_temp_c", hot_spot) for s in range(int(start_h * 3600), int((start_h + hours) * 3600), 600)
    ]


def test_t4_ageing_fires_after_three_days_of_fast_ageing_and_clears(packs):
    e = engine(packs, [TX], {"tx_ageing_fast"})
    # Hot spot 110 °C: V = 2^(12/6) = 4, the insulation ages 4 days per day.
    findings = run(e, transformer(80, 110.0), 1800, 80 * 3600)
    [fire] = findings
    assert fire.action == "fire" and fire.event_class == "III"
    assert timedelta(days=3) - timedelta(hours=1) <= fire.ts - T0 <= timedelta(days=3, hours=1)
    assert "4.0 x the normal rate" in fire.message
    # A cool day brings the day's mean back under 1.
    cool = transformer(30, 80.0, start_h=80)
    later = run_from(e, cool, 80 * 3600, 110 * 3600, step_s=1800)
    assert [f.action for f in later] == ["clear"]


def test_t4_ordinary_hot_spot_is_quiet(packs):
    e = engine(packs, [TX], {"tx_ageing_fast"})
    assert run(e, transformer(80, 95.0), 1800, 80 * 3600) == []


def tx_readings(hours: float, excess_k: float, load: float = 0.7, ambient: float = 30.0, start_h: float = 0.0):
    expected = ambient + 10 + 60 * ((1 + 6.5 * load**2) / 7.5) ** 0.8
    pts = []
    for s in range(int(start_h * 3600), int((start_h + hours) * 3600), 120):
        pts += [
            (s, "TX01", "load_factor", load),
            (s, "TX01", "ambient_temp_c", ambient),
            (s, "TX01", "top_oil_temp_c", expected + excess_k),
        ]
    return pts


def test_t3_top_oil_above_its_model_fires_and_clears(packs):
    e = engine(packs, [TX], {"tx_top_oil_above_model"})
    assert run(e, tx_readings(2, 2.0), 300, 2 * 3600) == []  # within the model's error: quiet
    hot = tx_readings(4, 16.0, start_h=2)
    findings = run_from(e, hot, 2 * 3600, 6 * 3600, step_s=300)
    [fire] = findings
    assert fire.rule_id == "tx_top_oil_above_model" and fire.action == "fire" and fire.event_class == "II"
    assert "above what its load and the ambient explain" in fire.message
    back = tx_readings(4, 0.0, start_h=6)
    later = run_from(e, back, 6 * 3600, 10 * 3600, step_s=300)
    assert [f.action for f in later] == ["clear"]


def events(points):
    """(seconds after T0, device, kind, code, text) -> a committed events batch."""
    return events_from_columns(
        [us(T0 + timedelta(seconds=s)) for s, *_ in points],
        [p[1] for p in points],
        [p[2] for p in points],
        [p[3] for p in points],
        [p[4] for p in points],
    )


def test_e1_connector_faults_per_gun_fire_and_clear(packs):
    e = engine(packs, [DC], {"dc_connector_fault_critical", "dc_connector_faulted"})
    e.evaluate(batch([(0, "DC01", "gun1_temp_c", 40.0)]), now=T0)
    first = e.evaluate(
        batch([]),
        now=T0 + timedelta(seconds=10),
        events=events([(5, "DC01", "status", "Charging", "gun 1"), (6, "DC01", "fault", "HighTemperature", "gun 1")]),
    )
    [fire] = first
    assert (fire.rule_id, fire.action, fire.event_class, fire.metric) == (
        "dc_connector_fault_critical",
        "fire",
        "I",
        "gun 1",
    )
    assert "DC01 gun 1: HighTemperature" in fire.message
    # Gun 2 faults too; gun 2 coming back does not clear gun 1.
    second = e.evaluate(
        batch([]),
        now=T0 + timedelta(seconds=20),
        events=events([(12, "DC01", "status", "Faulted", "gun 2"), (15, "DC01", "status", "Available", "gun 1")]),
    )
    assert [(f.rule_id, f.action, f.metric, f.event_class) for f in second] == [
        ("dc_connector_faulted", "fire", "gun 2", "II")
    ]
    third = e.evaluate(
        batch([]),
        now=T0 + timedelta(seconds=30),
        events=events([(22, "DC01", "status", "Available", "gun 2"), (25, "DC01", "fault", "NoError", "gun 1")]),
    )
    assert sorted((f.rule_id, f.action, f.metric) for f in third) == [
        ("dc_connector_fault_critical", "clear", "gun 1"),
        ("dc_connector_faulted", "clear", "gun 2"),
    ]


def test_p2_inverter_safety_events_by_class(packs):
    inv = DeviceInfo("INV01", "s1", "pv_inverter", rated_kw=100, interval_s=60)
    e = engine(packs, [inv], {"pv_safety_event_critical", "pv_safety_event", "pv_grid_event"})
    e.evaluate(batch([(0, "INV01", "ac_power_kw", 40.0)]), now=T0)
    found = e.evaluate(
        batch([]),
        now=T0 + timedelta(seconds=10),
        events=events(
            [
                (1, "INV01", "fault", "ARC_DETECTION", "DC input 1"),
                (2, "INV01", "fault", "BLOWN_STRING_FUSE", "string 3"),
                (3, "INV01", "fault", "AC_OVER_VOLT", ""),
            ]
        ),
    )
    assert sorted((f.rule_id, f.event_class) for f in found) == [
        ("pv_grid_event", "III"),
        ("pv_safety_event", "II"),
        ("pv_safety_event_critical", "I"),
    ]


def session_stops(device: str, start_s: int, reasons: list[str]):
    return [
        (start_s + 60 * i, device, "session", "stop", orjson.dumps({"text": "gun 1", "reason": r}).decode())
        for i, r in enumerate(reasons)
    ]


def test_e12_share_of_abnormal_session_endings(packs):
    e = engine(packs, [DC], {"dc_abnormal_session_endings", "dc_abnormal_session_endings_high"})
    e.evaluate(batch([(0, "DC01", "gun1_temp_c", 40.0)]), now=T0)
    # 19 sessions, 5 abnormal: not judged before 20 are known.
    first = ["EVDisconnected"] * 14 + ["PowerLoss", "Other", "EmergencyStop", "Other", "PowerLoss"]
    assert e.evaluate(batch([]), now=T0 + timedelta(hours=1), events=events(session_stops("DC01", 60, first))) == []
    # The 20th ends normally: 5 of 20 = 25 % > 20 % -> III.
    [fire] = e.evaluate(
        batch([]), now=T0 + timedelta(hours=2), events=events(session_stops("DC01", 3700, ["EVDisconnected"]))
    )
    assert (fire.rule_id, fire.action, fire.event_class) == ("dc_abnormal_session_endings", "fire", "III")
    assert "25% of its last 20 charging sessions" in fire.message
    # Ten normal endings push the abnormal ones out of the last 20: 0 %, cleared.
    later = e.evaluate(
        batch([]), now=T0 + timedelta(hours=3), events=events(session_stops("DC01", 7300, ["EVDisconnected"] * 20))
    )
    assert [(f.rule_id, f.action) for f in later] == [("dc_abnormal_session_endings", "clear")]
