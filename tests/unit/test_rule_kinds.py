"""Each rule kind of the engine, on hand-made series; plus overrides, load-time refusals and isolation."""

from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from rules.engine import DeviceInfo, RuleEngine, SiteInfo
from rules.loader import load_packs
from rules.model import Override, Rule
from storage.batch import readings_from_columns

T0 = datetime(2026, 7, 1, 4, 0, tzinfo=UTC)  # 12:00 in Shenzhen
UNITS = {"top_oil_temp_c": "°C", "gun1_temp_c": "°C", "string1_current_a": "A", "string2_current_a": "A"}


def us(t: datetime) -> int:
    return int(t.timestamp() * 1_000_000)


def rows(points: list[tuple[float, str, str, float]]):
    """(seconds after T0, device, metric, value) -> a committed readings batch."""
    return readings_from_columns(
        [us(T0 + timedelta(seconds=s)) for s, _, _, _ in points],
        [d for _, d, _, _ in points],
        [m for _, _, m, _ in points],
        [v for _, _, _, v in points],
    )


def make(rules: list[dict], devices: list[DeviceInfo], **kw) -> RuleEngine:
    base = {"title": "t", "class": "II"}
    e = RuleEngine([Rule.model_validate(base | r) for r in rules], UNITS, **kw)
    e.set_devices(devices)
    e.set_sites([SiteInfo("s1", 22.54, 114.06)])
    return e


def feed(e: RuleEngine, series, step_s: float = 60.0, until_s: float | None = None):
    """Feed (seconds, device, metric, value) one step at a time, like the service's ticks."""
    out = []
    series = sorted(series)
    end = until_s if until_s is not None else series[-1][0]
    t = 0.0
    while t <= end:
        batch = [p for p in series if t - step_s < p[0] <= t]
        out += e.evaluate(rows(batch), now=T0 + timedelta(seconds=t))
        t += step_s
    return out


TX = [DeviceInfo("TX01", "s1", "box_transformer", rated_kw=630, interval_s=60)]


def test_trend_forecasts_the_crossing_and_says_when():
    e = make(
        [
            {
                "id": "oil_forecast",
                "kind": "trend",
                "metric": "top_oil_temp_c",
                "limit": 95,
                "window": "1h",
                "horizon": "1h",
                "floor": 70,
                "message": "{device_id} oil {value:.1f} {unit}: {forecast}",
            }
        ],
        TX,
    )
    # 0.25 K/min from 70 °C: at 80 °C (t=40 min) the limit is 60 min away.
    series = [(s, "TX01", "top_oil_temp_c", 70 + 0.25 * s / 60) for s in range(0, 7200, 60)]
    findings = feed(e, series)
    fire = next(f for f in findings if f.action == "fire")
    assert fire.rule_id == "oil_forecast" and fire.rule_kind == "trend"
    fired_after_min = (fire.ts - T0).total_seconds() / 60
    assert 35 <= fired_after_min <= 45
    assert fire.seconds_to_limit is not None and 50 * 60 <= fire.seconds_to_limit <= 60 * 60
    assert "reaches 95 °C in about" in fire.message and fire.forecast in fire.message


def test_trend_ignores_flat_noise_and_cold_devices():
    e = make(
        [
            {
                "id": "f",
                "kind": "trend",
                "metric": "top_oil_temp_c",
                "limit": 95,
                "window": "1h",
                "horizon": "1h",
                "floor": 70,
            }
        ],
        TX,
    )
    noisy = [(s, "TX01", "top_oil_temp_c", 80 + (0.3 if (s // 60) % 2 else -0.3)) for s in range(0, 7200, 60)]
    assert [f for f in feed(e, noisy) if f.action == "fire"] == []
    e2 = make(
        [
            {
                "id": "f",
                "kind": "trend",
                "metric": "top_oil_temp_c",
                "limit": 95,
                "window": "1h",
                "horizon": "1h",
                "floor": 70,
            }
        ],
        TX,
    )
    cold_but_rising = [(s, "TX01", "top_oil_temp_c", 30 + 1.0 * s / 60) for s in range(0, 1800, 60)]
    assert [f for f in feed(e2, cold_but_rising) if f.action == "fire"] == []  # below the floor


def test_falling_trend():
    e = make(
        [
            {
                "id": "iso",
                "kind": "trend",
                "direction": "falling",
                "metric": "top_oil_temp_c",
                "limit": 375,
                "window": "30m",
                "horizon": "1h",
            }
        ],
        TX,
    )
    series = [(s, "TX01", "top_oil_temp_c", 1000 - 10 * s / 60) for s in range(0, 3600, 60)]
    [fire] = [f for f in feed(e, series) if f.action == "fire"]
    assert fire.seconds_to_limit is not None and fire.seconds_to_limit <= 3600


def test_rate_of_change():
    e = make(
        [{"id": "r", "kind": "rate", "metric": "gun1_temp_c", "rise_per_min": 2, "window": "3m"}],
        [DeviceInfo("DC01", "s1", "charger_dc", interval_s=10)],
    )
    steady = [(s, "DC01", "gun1_temp_c", 40.0 + 0.5 * s / 60) for s in range(0, 600, 10)]
    fast = [(s, "DC01", "gun1_temp_c", 45.0 + 3.0 * (s - 600) / 60) for s in range(600, 1200, 10)]
    findings = feed(e, steady + fast, step_s=30)
    [fire] = [f for f in findings if f.action == "fire"]
    assert fire.ts >= T0 + timedelta(seconds=600)


def test_stuck_value_needs_a_full_flat_window():
    dc = [DeviceInfo("DC01", "s1", "charger_dc", interval_s=10)]
    e = make([{"id": "st", "kind": "stuck", "metric": "gun1_temp_c", "window": "30m"}], dc)
    moving = [(s, "DC01", "gun1_temp_c", 30 + (s % 70) / 10) for s in range(0, 1800, 10)]
    frozen = [(s, "DC01", "gun1_temp_c", 33.3) for s in range(1800, 5400, 10)]
    findings = feed(e, moving + frozen)
    [fire] = [f for f in findings if f.action == "fire"]
    assert T0 + timedelta(minutes=55) <= fire.ts <= T0 + timedelta(minutes=65)


def test_offline_from_own_cadence_and_parent_explains_children():
    devices = [
        DeviceInfo("TX01", "s1", "box_transformer", interval_s=10),
        DeviceInfo("AC01", "s1", "charger_ac", interval_s=10, parent="TX01"),
        DeviceInfo("AC02", "s1", "charger_ac", interval_s=60, parent="TX01"),
    ]
    e = make([{"id": "off", "kind": "offline", "missed_intervals": 3, "min_silence": "30s"}], devices)
    series = [(s, d, "voltage_v", 230.0) for s in range(0, 120, 10) for d in ("TX01", "AC01", "AC02")]
    assert feed(e, series, step_s=10) == []
    # Everything goes silent at 110 s: TX01 and AC01 after 30 s, AC02 (60 s cadence) after 180 s.
    later = feed(e, [], step_s=10, until_s=60)  # noqa: F841  (warm-up; nothing new)
    f1 = e.evaluate(rows([]), now=T0 + timedelta(seconds=150))
    assert {(f.device_id, f.caused_by) for f in f1} == {("TX01", None), ("AC01", "TX01")}
    assert all(f.metric == "telemetry" and f.event_class == "II" for f in f1)
    assert "parent TX01" in next(f for f in f1 if f.device_id == "AC01").message
    f2 = e.evaluate(rows([]), now=T0 + timedelta(seconds=300))
    assert [(f.device_id, f.caused_by) for f in f2] == [("AC02", "TX01")]
    back = e.evaluate(rows([(305, "AC01", "voltage_v", 230.0)]), now=T0 + timedelta(seconds=305))
    assert [(f.device_id, f.action) for f in back] == [("AC01", "clear")]


def test_data_gap_in_history():
    e = make(
        [{"id": "gap", "kind": "data_gap", "missed_intervals": 3, "min_silence": "0s"}],
        [DeviceInfo("AC01", "s1", "charger_ac", interval_s=10)],
    )
    e.evaluate(rows([(s, "AC01", "voltage_v", 230.0) for s in range(0, 60, 10)]))
    [f] = e.evaluate(rows([(s, "AC01", "voltage_v", 230.0) for s in range(200, 260, 10)]))
    assert f.action == "fire" and f.value == pytest.approx(150.0)


def test_first_data_and_late_data_open_no_gap():
    e = make(
        [{"id": "gap", "kind": "data_gap", "missed_intervals": 3, "min_silence": "0s"}],
        [DeviceInfo("AC01", "s1", "charger_ac", interval_s=10), DeviceInfo("AC02", "s1", "charger_ac", interval_s=10)],
    )
    # A device's first readings are a year old (a data logger replaying its buffer): no hole against "now".
    now = T0 + timedelta(days=365)
    assert e.evaluate(rows([(s, "AC01", "voltage_v", 230.0) for s in range(0, 60, 10)]), now=now) == []
    # AC02 reports live, then a late batch from before arrives out of order: still no hole.
    live = [(365 * 86400 + s, "AC02", "voltage_v", 230.0) for s in range(0, 60, 10)]
    assert e.evaluate(rows(live), now=now + timedelta(seconds=60)) == []
    late = [(365 * 86400 - 3600 + s, "AC02", "voltage_v", 230.0) for s in range(0, 60, 10)]
    assert e.evaluate(rows(late), now=now + timedelta(seconds=70)) == []


def test_peer_deviation_daylight_only():
    inverters = [DeviceInfo(f"INV{i}", "s1", "pv_inverter", rated_kw=50, interval_s=60) for i in (1, 2)]
    rule = {
        "id": "string_low",
        "kind": "deviation",
        "metric": ["string1_current_a", "string2_current_a"],
        "ratio_below": 0.85,
        "min_peers": 3,
        "min_peer_median": 1.0,
        "window": "10m",
        "for": "10m",
        "daylight_only": True,
        "message": "{device_id} {metric} {ratio_pct:.0f} % below the median {peer_median:.1f} {unit}",
    }
    e = make([rule], inverters)
    series = []
    for s in range(0, 3600, 60):
        series += [
            (s, "INV1", "string1_current_a", 10.0 + (s % 120) / 600),
            (s, "INV1", "string2_current_a", 8.2),  # 18 % under its neighbours
            (s, "INV2", "string1_current_a", 10.1),
            (s, "INV2", "string2_current_a", 9.9),
        ]
    [fire] = [f for f in feed(e, series) if f.action == "fire"]
    assert (fire.device_id, fire.metric) == ("INV1", "string2_current_a")
    assert "18 % below the median 10.0 A" in fire.message
    # The same at night (22:00 local): nothing is judged.
    night = make([rule], inverters)
    night_t0 = T0 + timedelta(hours=10)
    out = []
    for s in range(0, 3600, 60):
        batch = [p for p in series if s - 60 < p[0] <= s]
        shifted = rows(batch)
        shifted = shifted.set_column(0, "ts", pl.from_arrow(shifted["ts"]).dt.offset_by("10h").to_arrow())
        out += night.evaluate(shifted, now=night_t0 + timedelta(seconds=s))
    assert out == []


def test_expression_rule_over_several_metrics():
    e = make(
        [
            {
                "id": "eff",
                "kind": "expression",
                "name": "efficiency",
                "expression": "ac_power_kw / dc_power_kw",
                "when": "dc_power_kw > 10",
                "below": 0.93,
                "window": "5m",
                "for": "5m",
            }
        ],
        [
            DeviceInfo("INV1", "s1", "pv_inverter", interval_s=60),
            DeviceInfo("INV2", "s1", "pv_inverter", interval_s=60),
        ],
    )
    series = []
    for s in range(0, 1800, 60):
        series += [
            (s, "INV1", "dc_power_kw", 40.0),
            (s, "INV1", "ac_power_kw", 35.0),
            (s, "INV2", "dc_power_kw", 40.0),
            (s, "INV2", "ac_power_kw", 38.6),
        ]
    [fire] = [f for f in feed(e, series) if f.action == "fire"]
    assert (fire.device_id, fire.metric) == ("INV1", "efficiency")
    assert fire.value == pytest.approx(35 / 40)


def test_override_per_device_changes_the_threshold_only_there():
    devices = [DeviceInfo("DC01", "s1", "charger_dc"), DeviceInfo("DC02", "s1", "charger_dc", tags=("hot-climate",))]
    e = make(
        [{"id": "hot", "metric": "gun1_temp_c", "above": 80}],
        devices,
        overrides=[Override(rules=["hot"], applies_to={"tags": ["hot-climate"]}, set={"above": 85})],
    )
    findings = e.evaluate(rows([(0, "DC01", "gun1_temp_c", 82.0), (0, "DC02", "gun1_temp_c", 82.0)]))
    assert [f.device_id for f in findings] == ["DC01"]
    [f] = e.evaluate(rows([(1, "DC02", "gun1_temp_c", 86.0)]))
    assert f.device_id == "DC02" and f.threshold == 85


def test_band_and_repeat_count():
    e = make(
        [{"id": "band", "metric": "voltage_v", "above": 253, "below": 198, "repeat": 3}],
        [DeviceInfo("AC01", "s1", "charger_ac")],
    )
    assert e.evaluate(rows([(0, "AC01", "voltage_v", 190.0), (1, "AC01", "voltage_v", 260.0)])) == []
    [f] = e.evaluate(rows([(2, "AC01", "voltage_v", 195.0)]))  # third consecutive reading outside the band
    assert f.action == "fire"


def test_a_rule_that_throws_is_disabled_and_reported_the_others_keep_running():
    devices = [DeviceInfo("INV1", "s1", "pv_inverter", interval_s=60)]
    e = make(
        [
            {"id": "eff", "kind": "expression", "name": "eff", "expression": "ac_power_kw / dc_power_kw", "below": 0.9},
            {"id": "hot", "metric": "ac_power_kw", "above": 30},
        ],
        devices,
    )
    [variant] = list(e._compiled)
    e._compiled[variant] = (pl.col("ac_power_kw") + pl.lit("text"), None)  # breaks only at evaluation
    findings = e.evaluate(rows([(0, "INV1", "ac_power_kw", 35.0), (0, "INV1", "dc_power_kw", 40.0)]))
    by_rule = {f.rule_id: f for f in findings}
    assert by_rule["hot"].action == "fire"
    failed = by_rule["gridsentry.rule_failed"]
    assert failed.device_id == "gridsentry" and failed.metric == "eff" and "disabled" in failed.message
    assert "eff" in e.failed_rules and "eff" not in e.rules
    assert e.evaluate(rows([(90, "INV1", "ac_power_kw", 10.0)])) != []  # 'hot' clears; no new failure


def test_state_survives_a_restart():
    spec = [{"id": "hot", "metric": "gun1_temp_c", "above": 80, "for": "60s"}]
    dc = [DeviceInfo("DC01", "s1", "charger_dc")]
    e = make(spec, dc)
    e.evaluate(rows([(0, "DC01", "gun1_temp_c", 85.0)]))
    saved = e.export_state()
    restarted = make(spec, dc)
    restarted.import_state(saved)
    [f] = restarted.evaluate(rows([(60, "DC01", "gun1_temp_c", 86.0)]))  # pending since 0 s survived
    assert f.action == "fire"
    again = make(spec, dc)
    again.import_state(restarted.export_state())
    assert again.evaluate(rows([(70, "DC01", "gun1_temp_c", 87.0)])) == []  # already firing: no re-page


def test_load_refuses_unknown_metric_bad_expression_and_impossible_parameters(tmp_path: Path):
    pack = tmp_path / "p.yaml"
    pack.write_text(
        """\
pack: p
rules:
  - id: typo
    title: Typo
    metric: gun1_temp
    above: 80
    class: II
  - id: bad_expr
    title: Bad
    kind: expression
    name: x
    expression: "ac_power_kw / (dc_power_kw"
    below: 1
    class: III
  - id: bad_trend
    title: Bad trend
    kind: trend
    metric: top_oil_temp_c
    limit: 95
    window: 1h
    class: II
  - id: bad_band
    title: Band
    metric: voltage_v
    above: 190
    below: 250
    class: III
  - id: fine
    title: Fine
    metric: top_oil_temp_c
    above: 95
    class: I
overrides:
  - rules: fine
    applies_to: {sites: [s1]}
    set: {above: hot}
  - rules: nope
    set: {above: 1}
"""
    )
    loaded = load_packs(
        [pack], known_metrics={"gun1_temp_c", "top_oil_temp_c", "voltage_v", "ac_power_kw", "dc_power_kw"}
    )
    assert [r.id for r in loaded.rules] == ["fine"]
    text = [str(p) for p in loaded.problems]
    assert any(":5:" in t and "unknown metric(s) gun1_temp" in t for t in text), text
    assert any("rules[1]" in t and "not valid" in t for t in text), text
    assert any("rules[2]" in t and "horizon" in t for t in text), text
    assert any("rules[3]" in t and "below < above" in t for t in text), text
    assert any("overrides[0].set.above" in t and "rule fine" in t for t in text), text
    assert any("overrides[1].rules" in t and "'nope'" in t for t in text), text
    assert loaded.overrides == []


def test_short_ticks_spread_windowed_rules_over_the_bucket():
    devices = [DeviceInfo(f"TX{i:02d}", "s1", "box_transformer", interval_s=10) for i in range(12)]
    rule = {"id": "f", "kind": "trend", "metric": "top_oil_temp_c", "limit": 95, "window": "30m", "horizon": "1h"}
    e = make([rule], devices, shards=4)
    series = [(s, d.device_id, "top_oil_temp_c", 80 + 0.25 * s / 60) for s in range(0, 2400, 10) for d in devices]
    e.evaluate(rows([p for p in series if p[0] == 0]), now=T0)  # first evaluation: every shard at once
    fired: set[str] = set()
    most = 0
    for t in range(10, 2400, 10):  # 10 s ticks: shorter than the 30 s bucket
        before = e.shard_passes
        fired |= {
            f.device_id for f in e.evaluate(rows([p for p in series if p[0] == t]), now=T0 + timedelta(seconds=t))
        }
        most = max(most, e.shard_passes - before)
    assert most <= 2  # 4 shards over 3 ticks per bucket: at most 2 a tick, never the whole fleet
    assert fired == {d.device_id for d in devices}  # yet every device's forecast was judged
