"""The default packs scored against the simulator's ground truth (the bench runs a full week).

One run injects every fault kind the simulator has into the demo hub (each on its own device);
another runs the healthy hub for a day. Every fault must be detected by one of its rules, the
trend rule must fire before the hard threshold it forecasts, and the healthy day must be silent.
"""

from datetime import UTC, datetime

import pytest

from rules.loader import builtin_pack_files, load_packs
from simulator import demo_fleet, demo_site
from simulator.faults import FAULT_KINDS, FaultSpec
from simulator.scoring import DETECTED_BY, LEAD_PAIRS, run_scenario, score

START = datetime(2026, 7, 1, 0, 0, tzinfo=UTC)  # 08:00 in Shenzhen: the sun is up for PV faults

FAULTS = [
    FaultSpec("dc_connector_overheat", "DC01", 1800, {"rise_k_per_min": 0.4}),
    FaultSpec("dc_fan_failure", "DC02", 1800),
    FaultSpec("insulation_decline", "DC02", 1800, {"halving_h": 0.5}),
    FaultSpec("pv_string_fault", "INV01", 1800, {"string": 2, "factor": 0.7}),
    FaultSpec("inverter_overtemp", "INV02", 1800, {"factor": 2.5}),
    FaultSpec("transformer_cooling_loss", "TX01", 1800, {"factor": 4.0}),
    FaultSpec("stuck_sensor", "AC01", 1800, {"metric": "connector_temp_c"}),
    FaultSpec("device_offline", "AC02", 3600, {"duration_s": 600}),
]


@pytest.fixture(scope="module")
def packs():
    loaded = load_packs(builtin_pack_files())
    assert loaded.problems == []
    return loaded


def test_every_injected_fault_is_detected_and_trends_lead(packs):
    result = run_scenario(
        demo_site(), demo_fleet(interval_s=15), packs, start=START, hours=6, faults=FAULTS, physics_step_s=5
    )
    scores = score(result)
    assert {s.record.kind for s in scores} == {f.kind for f in FAULTS}
    missed = [(s.record.kind, s.record.device_id, s.fired) for s in scores if s.detected_by is None]
    assert missed == []
    for s in scores:
        assert s.detected_by in DETECTED_BY[s.record.kind]
        if s.record.kind in LEAD_PAIRS:
            # The forecast comes first, and says when the limit will be reached.
            assert s.lead_s is not None and s.lead_s > 0, (s.record.kind, s.trend_at, s.threshold_at)
    forecasts = [f for f in result.findings if f.rule_kind == "trend" and f.action == "fire"]
    assert forecasts and all(f.forecast and f.forecast in f.message for f in forecasts)
    assert all("reaches" in (f.forecast or "") or "has reached" in (f.forecast or "") for f in forecasts)
    # Findings name devices and units operators know.
    oil = next(f for f in forecasts if f.device_id == "TX01")
    assert "°C" in oil.message and "TX01" in oil.message


def test_every_simulated_fault_kind_has_detecting_rules(packs):
    ids = {r.id for r in packs.rules}
    for kind in FAULT_KINDS:
        if kind == "malformed_payload":
            continue  # a collector fault: counted in dead letters, never reaches the rules
        assert kind in DETECTED_BY, kind
        assert set(DETECTED_BY[kind]) & ids, kind


def test_healthy_day_raises_no_alarm(packs):
    result = run_scenario(
        demo_site(), demo_fleet(interval_s=30), packs, start=START, hours=24, feed_s=300, physics_step_s=10
    )
    fired = [(f.ts.isoformat(), f.rule_id, f.device_id, f.message) for f in result.findings if f.action == "fire"]
    assert fired == []
    assert result.readings > 50_000


def test_transformer_overload_is_detected(packs):
    # Its own run: on TX01 of the main run it would mix with the cooling-loss fault.
    transformer = [d for d in demo_fleet(interval_s=30) if d.kind == "box_transformer"]
    fault = FaultSpec("transformer_overload", "TX01", 1800, {"extra_kva": 600})
    result = run_scenario(demo_site(), transformer, packs, start=START, hours=2.75, faults=[fault], physics_step_s=10)
    [s] = score(result)
    assert s.detected_by in DETECTED_BY["transformer_overload"]
    assert s.delay_s is not None and s.delay_s <= 2 * 3600 + 300  # T5: K > 1.0 for 2 h
