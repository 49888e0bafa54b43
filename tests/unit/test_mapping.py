import pytest

from collector.mapping import FieldMapper, FieldRule, unit_conversion
from gridsentry.config import ConfigError, field_rules, parse_config
from storage.batch import readings_from_columns

CONFIG = """\
devices:
  - {id: INV01, site: s1, kind: pv_inverter}
  - {id: INV02, site: s2, kind: pv_inverter}
  - {id: TX01, site: s1, kind: box_transformer}
mappings:
  - kinds: [pv_inverter]
    fields:
      W: {metric: ac_power_kw, unit: W}
      TmpSnk: {metric: heatsink_temp_c, scale: 0.1}
  - devices: [TX01]
    fields:
      OilF: {metric: top_oil_temp_c, unit: "°F"}
"""


def test_unit_conversions():
    assert unit_conversion("W", "kW") == (0.001, 0.0)
    scale, offset = unit_conversion("°F", "°C")
    assert round(212 * scale + offset, 9) == 100
    assert unit_conversion("kW", "kW") == (1.0, 0.0)
    with pytest.raises(ValueError, match="no conversion from 'W' to '°C'"):
        unit_conversion("W", "°C")


def test_config_expands_mappings_per_device():
    rules = {(r.device_id, r.field): r for r in field_rules(parse_config(CONFIG))}
    assert set(rules) == {("INV01", "W"), ("INV02", "W"), ("INV01", "TmpSnk"), ("INV02", "TmpSnk"), ("TX01", "OilF")}
    assert rules[("INV01", "W")].metric == "ac_power_kw" and rules[("INV01", "W")].scale == 0.001
    assert rules[("INV02", "TmpSnk")].scale == 0.1


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ("W: {metric: ac_power_kw, unit: furlong}", "no conversion from 'furlong' to 'kW'"),
        ("W: {metric: no_such_metric}", "not in the catalogue"),
    ],
)
def test_bad_mappings_are_config_errors(fields, message):
    text = f"devices:\n  - {{id: INV01, site: s1, kind: pv_inverter}}\nmappings:\n  - fields:\n      {fields}\n"
    with pytest.raises(ConfigError, match=message):
        parse_config(text)
    with pytest.raises(ConfigError, match="GHOST"):
        parse_config("mappings:\n  - devices: [GHOST]\n    fields: {W: {metric: ac_power_kw}}\n")


def test_mapper_renames_converts_and_leaves_the_rest():
    mapper = FieldMapper(
        [FieldRule("INV01", "W", "ac_power_kw", 0.001), FieldRule("TX01", "OilF", "top_oil_temp_c", 5 / 9, -160 / 9)]
    )
    readings = readings_from_columns(
        [1, 2, 3, 4],
        ["INV01", "INV01", "INV02", "TX01"],
        ["W", "dc_voltage_v", "W", "OilF"],
        [5230.0, 610.0, 7.0, 212.0],
    )
    out = mapper.apply(readings)
    assert out.schema == readings.schema
    assert out["metric"].to_pylist() == ["ac_power_kw", "dc_voltage_v", "W", "top_oil_temp_c"]
    assert [round(v, 6) for v in out["value"].to_pylist()] == [5.23, 610.0, 7.0, 100.0]
    assert out["ts"].to_pylist() == readings["ts"].to_pylist()
