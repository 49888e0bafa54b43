from pathlib import Path

import pytest

from rules.engine import DeviceInfo, RuleEngine
from rules.loader import builtin_pack_files, load_packs
from rules.model import Rule, format_duration, parse_duration
from storage.batch import Quality, readings_from_columns

T0 = 1_800_000_000_000_000


def batch(points, device="DC01", metric="gun1_temp_c", quality=None):
    return readings_from_columns(
        [T0 + int(s * 1_000_000) for s, _ in points],
        [device] * len(points),
        [metric] * len(points),
        [v for _, v in points],
        quality,
    )


def engine(**overrides):
    spec = {
        "id": "gun_hot",
        "title": "Gun hot",
        "applies_to": {"kinds": ["charger_dc"]},
        "metric": ["gun1_temp_c", "gun2_temp_c"],
        "above": 90,
        "for": "30s",
        "hysteresis": 3,
        "class": "I",
    } | overrides
    e = RuleEngine([Rule.model_validate(spec)], {"gun1_temp_c": "°C", "gun2_temp_c": "°C"})
    e.set_devices([DeviceInfo("DC01", "demo", "charger_dc"), DeviceInfo("AC01", "demo", "charger_ac")])
    return e


def test_fires_only_after_for_duration_across_batches():
    e = engine()
    assert e.evaluate(batch([(0, 85), (10, 91), (20, 92)])) == []
    assert e.evaluate(batch([(30, 93)])) == []  # 20 s into the breach
    [f] = e.evaluate(batch([(40, 95)]))  # 30 s since the first breaching reading at 10 s
    assert f.action == "fire" and f.device_id == "DC01" and f.metric == "gun1_temp_c"
    assert f.event_class == "I" and f.value == 95 and f.threshold == 90 and f.unit == "°C"
    assert "95.0 °C" in f.message
    assert e.evaluate(batch([(50, 96)])) == []  # already firing: no duplicate finding


def test_a_dip_restarts_the_for_clock():
    e = engine()
    assert e.evaluate(batch([(0, 91), (20, 89), (25, 91), (50, 92)])) == []  # only 25 s since 25
    [f] = e.evaluate(batch([(55, 92)]))
    assert f.action == "fire"


def test_hysteresis_clear():
    e = engine(**{"for": 0})
    assert [f.action for f in e.evaluate(batch([(0, 91)]))] == ["fire"]
    assert e.evaluate(batch([(1, 88)])) == []  # below 90 but not below 87
    [f] = e.evaluate(batch([(2, 86.5)]))
    assert f.action == "clear"
    assert [f.action for f in e.evaluate(batch([(3, 91)]))] == ["fire"]


def test_below_rule_and_selector():
    e = engine(**{"above": None, "below": 10, "for": 0, "applies_to": {"kinds": ["charger_ac"]}})
    assert e.evaluate(batch([(0, 5)])) == []  # DC01 is not an AC charger
    [f] = e.evaluate(batch([(0, 5)], device="AC01"))
    assert f.device_id == "AC01"


def test_bad_quality_readings_never_trigger():
    e = engine(**{"for": 0})
    assert e.evaluate(batch([(0, 150)], quality=[Quality.OUT_OF_RANGE])) == []


def test_metrics_evaluated_separately_and_many_devices_vectorised():
    e = engine(**{"for": 0})
    devices = [DeviceInfo(f"DC{i:03d}", "s", "charger_dc") for i in range(500)]
    e.set_devices(devices)
    n = len(devices)
    readings = readings_from_columns(
        [T0] * (2 * n),
        [d.device_id for d in devices] * 2,
        ["gun1_temp_c"] * n + ["gun2_temp_c"] * n,
        [95.0 if i % 10 == 0 else 50.0 for i in range(2 * n)],
    )
    findings = e.evaluate(readings)
    assert len(findings) == 2 * n // 10
    assert {f.metric for f in findings} == {"gun1_temp_c", "gun2_temp_c"}


def test_rule_validation():
    with pytest.raises(ValueError, match="needs 'above', 'below' or both"):
        Rule.model_validate({"id": "x", "title": "x", "metric": "a", "class": "I"})
    with pytest.raises(ValueError, match="duration"):
        Rule.model_validate({"id": "x", "title": "x", "metric": "a", "above": 1, "for": "soon", "class": "I"})
    assert parse_duration("5m") == 300 and parse_duration("2h") == 7200 and parse_duration(12) == 12
    assert format_duration(30) == "30 s" and format_duration(7800) == "2 h 10 min"


def test_builtin_packs_load_cleanly():
    loaded = load_packs(builtin_pack_files())
    assert loaded.problems == []
    ids = {r.id for r in loaded.rules}
    assert {"dc_gun_overtemp_warning", "dc_gun_overtemp_critical", "tx_top_oil_alarm"} <= ids


def test_broken_pack_reports_file_line_and_keeps_good_rules(tmp_path: Path):
    pack = tmp_path / "broken.yaml"
    pack.write_text(
        """\
pack: test
rules:
  - id: good_rule
    title: Good
    metric: a
    above: 1
    class: II
  - id: bad_rule
    title: Bad
    metric: a
    above: 1
    class: IV
"""
    )
    loaded = load_packs([pack, tmp_path / "missing.yaml"])
    assert [r.id for r in loaded.rules] == ["good_rule"]
    [bad, missing] = loaded.problems
    assert bad.line == 12 and bad.path == "rules[1].class"
    assert "cannot read" in missing.message
    (tmp_path / "notyaml.yaml").write_text("rules: [\n")
    assert load_packs([tmp_path / "notyaml.yaml"]).problems[0].path == "(yaml)"
