"""Modbus register maps, decoding and request planning (no network)."""

from __future__ import annotations

import math
import struct
import textwrap
from pathlib import Path

import pytest

from collector.modbus.decode import PointDecodeError, raw_decoder, scaled
from collector.modbus.links import Link
from collector.modbus.maps import MapError, Point, RegisterMap, builtin_maps, load_map_file, parse_map, resolve_map
from collector.modbus.planner import plan, split
from collector.modbus.settings import ModbusDeviceConfig
from collector.modbus.sunspec import ModelInfo, SunSpecDevice
from gridsentry.config import ConfigError, parse_config

# --- decoding: every type and order against an independent encoder ----------------------------------------
_FMT = {
    "int16": ">h",
    "uint16": ">H",
    "int32": ">i",
    "uint32": ">I",
    "int64": ">q",
    "uint64": ">Q",
    "float32": ">f",
    "float64": ">d",
}
_VALUES = {
    "int16": [-32768, -1234, 0, 1, 32767],
    "uint16": [0, 1, 0xBEEF, 65535],
    "int32": [-(2**31), -123456789, 0, 305419896, 2**31 - 1],
    "uint32": [0, 0xDEADBEEF, 2**32 - 1],
    "int64": [-(2**63), -1, 0x0123456789ABCDEF, 2**63 - 1],
    "uint64": [0, 0xFEDCBA9876543210, 2**64 - 1],
    "float32": [0.0, -1.5, 3.140000104904175, 1.0e20],
    "float64": [0.0, -2.5e-300, 6.02214076e23, 1234.5678],
}


def _wire(value: float, fmt: str, order: str) -> list[int]:
    """How a device sends the value: the byte string reordered as the order's letters say."""
    big = struct.pack(fmt, value)  # A B C D ... (most significant first)
    if order == "DCBA":
        data = big[::-1]
    elif order == "BADC":
        data = b"".join(big[i : i + 2][::-1] for i in range(0, len(big), 2))
    elif order == "CDAB":
        data = b"".join(big[i : i + 2] for i in reversed(range(0, len(big), 2)))
    else:
        data = big
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]


CASES = [
    (typ, order, value)
    for typ, values in _VALUES.items()
    for order in ("ABCD", "CDAB", "BADC", "DCBA")
    for value in values
    if not (typ.endswith("16") and order in ("CDAB",))  # one register: word order does not apply
]


@pytest.mark.parametrize(("typ", "order", "value"), CASES)
def test_every_type_and_order_decodes(typ: str, order: str, value: float) -> None:
    point = Point(metric="x", fc=3, address=0, type=typ, byte_order=order)  # type: ignore[arg-type]
    regs = _wire(value, _FMT[typ], order)
    assert len(regs) == point.register_count
    got = raw_decoder(point)(regs)
    assert got == value or (isinstance(value, float) and math.isclose(float(got), value, rel_tol=1e-7))


def test_known_wire_examples() -> None:
    # 123456789 = 0x075BCD15: the four orders as devices really send them.
    sent = {"ABCD": [0x075B, 0xCD15], "CDAB": [0xCD15, 0x075B], "BADC": [0x5B07, 0x15CD], "DCBA": [0x15CD, 0x5B07]}
    for order, regs in sent.items():
        p = Point(metric="x", fc=3, address=0, type="uint32", byte_order=order)  # type: ignore[arg-type]
        assert raw_decoder(p)(regs) == 123456789, order


def test_strings_bitfields_and_scaling() -> None:
    s = Point(metric="sn", fc=3, address=0, type="string", length=4)
    assert raw_decoder(s)([0x4142, 0x4344, 0x4500, 0]) == "ABCDE"
    swapped = Point(metric="fw", fc=3, address=0, type="string", length=2, byte_order="BADC")
    assert raw_decoder(swapped)([0x3256, 0x0031]) == "V21"
    bf = Point(metric="al", fc=3, address=0, type="bitfield", length=2, bits={0: "A", 17: "B"})
    assert raw_decoder(bf)([0x0002, 0x0001]) == (1 << 17) | 1
    t = Point(metric="t_c", fc=4, address=0, type="uint16", offset=-50)
    assert scaled(t, 85) == 35
    v = Point(metric="v", fc=4, address=0, type="uint16", scale=0.1)
    assert scaled(v, 6512, sf=None) == pytest.approx(651.2)
    assert scaled(v, 6512, sf=-1) == pytest.approx(65.12)
    with pytest.raises(PointDecodeError):
        scaled(Point(metric="f", fc=4, address=0, type="float32"), float("nan"))


# --- planning ----------------------------------------------------------------------------------------------
def _map(points: list[dict[str, object]], **kw: object) -> RegisterMap:
    return RegisterMap.model_validate({"name": "t", "points": points, **kw})


def test_adjacent_points_merge_and_gaps_split() -> None:
    m = _map(
        [
            {"metric": "a", "fc": 3, "address": 0, "type": "uint16"},
            {"metric": "b", "fc": 3, "address": 1, "type": "float32"},
            {"metric": "c", "fc": 3, "address": 5, "type": "uint16"},  # gap of 2: merged (max_gap 2)
            {"metric": "d", "fc": 3, "address": 20, "type": "uint16"},  # gap of 14: new read
            {"metric": "e", "fc": 4, "address": 1, "type": "int16"},  # other table: new read
            {"metric": "f", "fc": 1, "address": 3, "type": "bit"},
            {"metric": "g", "fc": 1, "address": 30, "type": "bit"},  # 26 bits away: within 2 x 16
        ],
        max_gap=2,
    )
    reads = [(r.fc, r.address, r.count, [m.points[s.index].metric for s in r.slots]) for r in plan(m)]
    assert reads == [
        (1, 3, 28, ["f", "g"]),
        (3, 0, 6, ["a", "b", "c"]),
        (3, 20, 1, ["d"]),
        (4, 1, 1, ["e"]),
    ]


def test_protocol_and_map_caps() -> None:
    many = [{"metric": f"p{i}", "fc": 4, "address": i * 2, "type": "uint32"} for i in range(200)]
    reads = plan(_map(many))
    assert max(r.count for r in reads) <= 125
    assert sum(len(r.slots) for r in reads) == 200
    assert len(reads) == 4  # 400 registers in reads of at most 124 (62 whole uint32 each)
    capped = plan(_map(many[:20], max_registers_per_read=10))
    assert [r.count for r in capped] == [10, 10, 10, 10]
    bits = [{"metric": f"b{i}", "fc": 2, "address": i, "type": "bit"} for i in range(2500)]
    assert [r.count for r in plan(_map(bits))] == [2000, 500]


def test_split_reads_one_point_each() -> None:
    m = _map(
        [
            {"metric": "a", "fc": 3, "address": 10, "type": "uint16"},
            {"metric": "b", "fc": 3, "address": 11, "type": "int32"},
        ],
        base=1,
    )
    (merged,) = plan(m)
    assert (merged.address, merged.count) == (9, 3)  # base 1: register 10 is address 9
    assert [(r.address, r.count) for r in split(m, merged)] == [(9, 1), (10, 2)]


# --- map validation: file and line ---------------------------------------------------------------------------
def _write(tmp_path: Path, body: str) -> Path:
    f = tmp_path / "vendor_x.yaml"
    f.write_text(textwrap.dedent(body), encoding="utf-8")
    return f


def test_unknown_type_names_file_and_line(tmp_path: Path) -> None:
    f = _write(
        tmp_path,
        """\
        name: vendor_x
        points:
          - {metric: a_v, fc: 3, address: 0, type: uint16}
          - {metric: b_v, fc: 3, address: 1, type: uint24}
        """,
    )
    with pytest.raises(MapError) as err:
        load_map_file(f)
    text = str(err.value)
    assert f"{f}:4" in text and "points[1].type" in text and "uint24" in text


def test_overlapping_points_are_refused(tmp_path: Path) -> None:
    f = _write(
        tmp_path,
        """\
        name: vendor_x
        points:
          - {metric: power_w, fc: 3, address: 10, type: int32}
          - {metric: volts_v, fc: 3, address: 11, type: uint16}
        """,
    )
    with pytest.raises(MapError) as err:
        load_map_file(f)
    (issue,) = err.value.issues
    assert issue.file == f and issue.line == 4
    assert "overlaps points[0] (power_w)" in issue.message


def test_address_out_of_range_is_refused(tmp_path: Path) -> None:
    f = _write(
        tmp_path,
        """\
        name: vendor_x
        points:
          - {metric: ok_v, fc: 3, address: 0, type: uint16}
          - {metric: far_v, fc: 3, address: 65534, type: float64}
        """,
    )
    with pytest.raises(MapError) as err:
        load_map_file(f)
    assert "past the last Modbus address 65535" in str(err.value) and f"{f}:4" in str(err.value)


def test_writes_and_bad_combinations_are_refused() -> None:
    with pytest.raises(MapError, match="fc"):
        parse_map("name: x\npoints:\n  - {metric: a, fc: 6, address: 0, type: uint16}\n")
    with pytest.raises(MapError, match="bits are read with fc 1"):
        parse_map("name: x\npoints:\n  - {metric: a, fc: 3, address: 0, type: bit}\n")
    with pytest.raises(MapError, match="needs `bits`"):
        parse_map("name: x\npoints:\n  - {metric: a, fc: 3, address: 0, type: bitfield}\n")


async def test_link_refuses_anything_but_reads() -> None:
    link = Link(ModbusDeviceConfig(host="127.0.0.1", port=1502))
    for fc in (5, 6, 15, 16, 23, 43):
        with pytest.raises(ValueError, match="never writes"):
            await link.read(fc, 0, 1, 1, 0.1)
    assert link.requests == 0


def test_config_check_names_the_broken_map(tmp_path: Path) -> None:
    _write(tmp_path, "name: vendor_x\npoints:\n  - {metric: a, fc: 3, address: 0, type: float16}\n")
    cfg = f"""
modbus:
  map_dirs: [{tmp_path}]
sites: [{{id: s1}}]
devices:
  - id: M1
    site: s1
    kind: meter
    modbus: {{host: 127.0.0.1, map: vendor_x}}
"""
    with pytest.raises(ConfigError) as err:
        parse_config(cfg)
    assert f"{tmp_path / 'vendor_x.yaml'}:3" in str(err.value) and "float16" in str(err.value)
    ok = parse_config(cfg.replace("vendor_x", "meter_3ph"))
    assert ok.devices[0].modbus is not None and ok.devices[0].modbus.map == "meter_3ph"
    with pytest.raises(ConfigError, match="no register map named 'nope'"):
        parse_config(cfg.replace("vendor_x", "nope"))
    # A unit that differs from the metric catalogue's is refused with the point's line.
    _write(tmp_path, "name: vendor_x\npoints:\n  - {metric: ac_power_kw, fc: 3, address: 0, type: int32, unit: W}\n")
    with pytest.raises(ConfigError) as err:
        parse_config(cfg)
    assert f"{tmp_path / 'vendor_x.yaml'}:3" in str(err.value) and "differs from the catalogue's 'kW'" in str(err.value)


def test_shipped_maps_are_valid() -> None:
    names = builtin_maps()
    assert {"box_transformer_tc", "box_transformer_meter", "dc_charger_vendor", "meter_3ph"} <= set(names)
    for name in names:
        assert load_map_file(resolve_map(name)).points
    # ...and their units agree with the metric catalogue (config check refuses a map that disagrees).
    devices = "\n".join(
        f"  - {{id: D{i}, site: s1, kind: meter, modbus: {{host: 127.0.0.1, map: {n}}}}}" for i, n in enumerate(names)
    )
    cfg = parse_config(f"sites: [{{id: s1}}]\ndevices:\n{devices}\n")
    assert len(cfg.devices) == len(names)


def test_sunspec_models_become_a_map() -> None:
    models = [ModelInfo(1, 40002, 66), ModelInfo(103, 40070, 50), ModelInfo(160, 40122, 48), ModelInfo(64, 40172, 4)]
    m = SunSpecDevice(40000, models).register_map()
    by_metric = {p.metric: p for p in m.points}
    w = by_metric["ac_power_kw"]
    assert (w.address, w.type, w.sentinel, w.scale) == (40070 + 14, "int16", 0x8000, 0.001)
    assert by_metric[w.scale_factor or ""].address == 40070 + 15
    assert by_metric["energy_kwh"].type == "uint32" and by_metric["energy_kwh"].sentinel == 0
    assert by_metric["mppt2_voltage_v"].address == 40122 + 10 + 20 + 10
    assert by_metric["operating_state"].enum is not None and by_metric["inverter_events"].bits is not None


def test_sunspec_float_settings_and_status_models() -> None:
    models = [ModelInfo(1, 2, 66), ModelInfo(113, 70, 60), ModelInfo(121, 132, 30), ModelInfo(122, 164, 44)]
    by_metric = {p.metric: p for p in SunSpecDevice(0, models).register_map().points}
    w = by_metric["ac_power_kw"]
    assert (w.address, w.type, w.scale_factor, w.sentinel) == (70 + 22, "float32", None, 0x7FC00000)
    assert by_metric["operating_state"].address == 70 + 48 and by_metric["inverter_events"].address == 70 + 50
    assert by_metric["max_power_setting_kw"].scale_factor == "sf_121_wmax_sf"
    assert by_metric["sf_121_wmax_sf"].address == 132 + 22
    ris = by_metric["insulation_resistance_kohm"]
    assert ris.address == 164 + 44 and by_metric[ris.scale_factor or ""].address == 164 + 45
    assert by_metric["active_energy_total_kwh"].type == "uint64"
    assert by_metric["grid_connection"].bits == {0: "GRID_CONNECTED"}
