"""SunSpec discovery: find the 'SunS' marker, walk the model chain, turn known models into a map.

The procedure follows pysunspec2, the SunSpec reference client (shared/domain.md §2): try bases
40000, 0 and 50000; the marker is followed by the Common model (1); every model is `ID, L, body`
and the next starts at `addr + 2 + L`; 0xFFFF ends the chain. Never hard-code absolute addresses
(the Common model is 66 long today, 65 on older devices). Decoded models: 1, 101-103, 111-113,
120-122 and 160, with scale factors (value = raw x 10^SF) and not-implemented sentinels.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from collector.modbus.decode import decode_string
from collector.modbus.links import ModbusReadError
from collector.modbus.maps import RegisterMap

SUNSPEC_BASES = (40000, 0, 50000)
MARKER = [0x5375, 0x6E53]  # "SunS"
END_MODEL = 0xFFFF
MAX_MODELS = 64

MODEL_NAMES = {
    1: "Common",
    101: "Inverter (single phase)",
    102: "Inverter (split phase)",
    103: "Inverter (three phase)",
    111: "Inverter (single phase, float)",
    112: "Inverter (split phase, float)",
    113: "Inverter (three phase, float)",
    120: "Nameplate",
    121: "Basic settings",
    122: "Measurements and status",
    123: "Immediate controls",
    160: "Multiple MPPT",
}

ST_STATES = {
    1: "OFF",
    2: "SLEEPING",
    3: "STARTING",
    4: "MPPT",
    5: "THROTTLED",
    6: "SHUTTING_DOWN",
    7: "FAULT",
    8: "STANDBY",
}
EVT1_BITS = {
    0: "GROUND_FAULT",
    1: "DC_OVER_VOLT",
    2: "AC_DISCONNECT",
    3: "DC_DISCONNECT",
    4: "GRID_DISCONNECT",
    5: "CABINET_OPEN",
    6: "MANUAL_SHUTDOWN",
    7: "OVER_TEMP",
    8: "OVER_FREQUENCY",
    9: "UNDER_FREQUENCY",
    10: "AC_OVER_VOLT",
    11: "AC_UNDER_VOLT",
    12: "BLOWN_STRING_FUSE",
    13: "UNDER_TEMP",
    14: "MEMORY_LOSS",
    15: "HW_TEST_FAILURE",
}
MPPT_EVT_BITS = {
    0: "GROUND_FAULT",
    1: "INPUT_OVER_VOLTAGE",
    3: "DC_DISCONNECT",
    5: "CABINET_OPEN",
    6: "MANUAL_SHUTDOWN",
    7: "OVER_TEMP",
    12: "BLOWN_FUSE",
    13: "UNDER_TEMP",
    14: "MEMORY_LOSS",
    15: "ARC_DETECTION",
}

#: Not-implemented values by SunSpec type, as the unsigned raw registers (shared/domain.md §2.3).
SENTINEL = {
    "int16": 0x8000,
    "uint16": 0xFFFF,
    "enum16": 0xFFFF,
    "bitfield16": 0xFFFF,
    "sunssf": 0x8000,
    "acc32": 0,
    "acc64": 0,
    "uint32": 0xFFFFFFFF,
    "bitfield32": 0xFFFFFFFF,
    "float32": 0x7FC00000,
}
MAP_TYPE = {
    "int16": "int16",
    "uint16": "uint16",
    "enum16": "uint16",
    "bitfield16": "bitfield",
    "sunssf": "int16",
    "acc32": "uint32",
    "acc64": "uint64",
    "uint32": "uint32",
    "bitfield32": "bitfield",
    "float32": "float32",
}

# (offset, SunSpec name, SunSpec type, scale-factor name or None, metric or None, extra scale, unit)
_Spec = tuple[int, str, str, str | None, str | None, float, str | None]

_INVERTER_INT: list[_Spec] = [
    (2, "A", "uint16", "A_SF", "ac_current_a", 1, "A"),
    (3, "AphA", "uint16", "A_SF", "ac_current_l1_a", 1, "A"),
    (4, "AphB", "uint16", "A_SF", "ac_current_l2_a", 1, "A"),
    (5, "AphC", "uint16", "A_SF", "ac_current_l3_a", 1, "A"),
    (6, "A_SF", "sunssf", None, None, 1, None),
    (7, "PPVphAB", "uint16", "V_SF", "ac_voltage_l1_l2_v", 1, "V"),
    (8, "PPVphBC", "uint16", "V_SF", "ac_voltage_l2_l3_v", 1, "V"),
    (9, "PPVphCA", "uint16", "V_SF", "ac_voltage_l3_l1_v", 1, "V"),
    (10, "PhVphA", "uint16", "V_SF", "ac_voltage_l1_v", 1, "V"),
    (11, "PhVphB", "uint16", "V_SF", "ac_voltage_l2_v", 1, "V"),
    (12, "PhVphC", "uint16", "V_SF", "ac_voltage_l3_v", 1, "V"),
    (13, "V_SF", "sunssf", None, None, 1, None),
    (14, "W", "int16", "W_SF", "ac_power_kw", 0.001, "kW"),
    (15, "W_SF", "sunssf", None, None, 1, None),
    (16, "Hz", "uint16", "Hz_SF", "frequency_hz", 1, "Hz"),
    (17, "Hz_SF", "sunssf", None, None, 1, None),
    (18, "VA", "int16", "VA_SF", "apparent_power_kva", 0.001, "kVA"),
    (19, "VA_SF", "sunssf", None, None, 1, None),
    (20, "VAr", "int16", "VAr_SF", "reactive_power_kvar", 0.001, "kvar"),
    (21, "VAr_SF", "sunssf", None, None, 1, None),
    (22, "PF", "int16", "PF_SF", "power_factor_pct", 1, "%"),
    (23, "PF_SF", "sunssf", None, None, 1, None),
    (24, "WH", "acc32", "WH_SF", "energy_kwh", 0.001, "kWh"),
    (26, "WH_SF", "sunssf", None, None, 1, None),
    (27, "DCA", "uint16", "DCA_SF", "dc_current_a", 1, "A"),
    (28, "DCA_SF", "sunssf", None, None, 1, None),
    (29, "DCV", "uint16", "DCV_SF", "dc_voltage_v", 1, "V"),
    (30, "DCV_SF", "sunssf", None, None, 1, None),
    (31, "DCW", "int16", "DCW_SF", "dc_power_kw", 0.001, "kW"),
    (32, "DCW_SF", "sunssf", None, None, 1, None),
    (33, "TmpCab", "int16", "Tmp_SF", "cabinet_temp_c", 1, "°C"),
    (34, "TmpSnk", "int16", "Tmp_SF", "heatsink_temp_c", 1, "°C"),
    (35, "TmpTrns", "int16", "Tmp_SF", "transformer_temp_c", 1, "°C"),
    (36, "TmpOt", "int16", "Tmp_SF", "other_temp_c", 1, "°C"),
    (37, "Tmp_SF", "sunssf", None, None, 1, None),
    (38, "St", "enum16", None, "operating_state", 1, None),
    (39, "StVnd", "uint16", None, "vendor_state_code", 1, None),
    (40, "Evt1", "bitfield32", None, "inverter_events", 1, None),
]
_FLOAT_OFFSETS = {
    "A": 2,
    "AphA": 4,
    "AphB": 6,
    "AphC": 8,
    "PPVphAB": 10,
    "PPVphBC": 12,
    "PPVphCA": 14,
    "PhVphA": 16,
    "PhVphB": 18,
    "PhVphC": 20,
    "W": 22,
    "Hz": 24,
    "VA": 26,
    "VAr": 28,
    "PF": 30,
    "WH": 32,
    "DCA": 34,
    "DCV": 36,
    "DCW": 38,
    "TmpCab": 40,
    "TmpSnk": 42,
    "TmpTrns": 44,
    "TmpOt": 46,
    "St": 48,
    "StVnd": 49,
    "Evt1": 50,
}
_INVERTER_FLOAT: list[_Spec] = [
    (
        _FLOAT_OFFSETS[name],
        name,
        typ if typ in ("enum16", "bitfield32") or name == "StVnd" else "float32",
        None,
        metric,
        scale,
        unit,
    )
    for (_o, name, typ, _sf, metric, scale, unit) in _INVERTER_INT
    if metric is not None
]
_NAMEPLATE: list[_Spec] = [
    (2, "DERTyp", "enum16", None, "der_type", 1, None),
    (3, "WRtg", "uint16", "WRtg_SF", "rated_power_kw", 0.001, "kW"),
    (4, "WRtg_SF", "sunssf", None, None, 1, None),
    (5, "VARtg", "uint16", "VARtg_SF", "rated_apparent_power_kva", 0.001, "kVA"),
    (6, "VARtg_SF", "sunssf", None, None, 1, None),
    (12, "ARtg", "uint16", "ARtg_SF", "rated_current_a", 1, "A"),
    (13, "ARtg_SF", "sunssf", None, None, 1, None),
]
_SETTINGS: list[_Spec] = [
    (2, "WMax", "uint16", "WMax_SF", "max_power_setting_kw", 0.001, "kW"),
    (3, "VRef", "uint16", "VRef_SF", "reference_voltage_v", 1, "V"),
    (7, "VAMax", "uint16", "VAMax_SF", "max_apparent_power_setting_kva", 0.001, "kVA"),
    (20, "ECPNomHz", "uint16", "ECPNomHz_SF", "nominal_frequency_hz", 1, "Hz"),
    (22, "WMax_SF", "sunssf", None, None, 1, None),
    (23, "VRef_SF", "sunssf", None, None, 1, None),
    (26, "VAMax_SF", "sunssf", None, None, 1, None),
    (31, "ECPNomHz_SF", "sunssf", None, None, 1, None),
]
_STATUS: list[_Spec] = [
    (2, "PVConn", "bitfield16", None, "pv_connection", 1, None),
    (4, "ECPConn", "bitfield16", None, "grid_connection", 1, None),
    (5, "ActWh", "acc64", None, "active_energy_total_kwh", 0.001, "kWh"),
    (44, "Ris", "uint16", "Ris_SF", "insulation_resistance_kohm", 0.001, "kΩ"),
    (45, "Ris_SF", "sunssf", None, None, 1, None),
]
_BITS = {
    "Evt1": EVT1_BITS,
    "PVConn": {0: "PV_CONNECTED", 1: "PV_AVAILABLE", 2: "PV_OPERATING", 3: "PV_TEST"},
    "ECPConn": {0: "GRID_CONNECTED"},
    "DCEvt": MPPT_EVT_BITS,
    "Evt": MPPT_EVT_BITS,
}
_ENUMS = {
    "St": ST_STATES,
    "DCSt": {**ST_STATES, 9: "TEST"},
    "DERTyp": {4: "PV", 82: "PV_STOR"},
}


def _mppt_specs(n: int) -> list[_Spec]:
    specs: list[_Spec] = [
        (2, "DCA_SF", "sunssf", None, None, 1, None),
        (3, "DCV_SF", "sunssf", None, None, 1, None),
        (4, "DCW_SF", "sunssf", None, None, 1, None),
        (5, "DCWH_SF", "sunssf", None, None, 1, None),
        (6, "Evt", "bitfield32", None, "mppt_events", 1, None),
    ]
    for i in range(n):
        b = 10 + 20 * i
        k = i + 1
        specs += [
            (b + 9, "DCA", "uint16", "DCA_SF", f"mppt{k}_current_a", 1, "A"),
            (b + 10, "DCV", "uint16", "DCV_SF", f"mppt{k}_voltage_v", 1, "V"),
            (b + 11, "DCW", "uint16", "DCW_SF", f"mppt{k}_power_kw", 0.001, "kW"),
            (b + 12, "DCWH", "acc32", "DCWH_SF", f"mppt{k}_energy_kwh", 0.001, "kWh"),
            (b + 16, "Tmp", "int16", None, f"mppt{k}_temp_c", 1, "°C"),
            (b + 17, "DCSt", "enum16", None, f"mppt{k}_state", 1, None),
            (b + 18, "DCEvt", "bitfield32", None, f"mppt{k}_events", 1, None),
        ]
    return specs


def model_specs(model_id: int, length: int) -> list[_Spec] | None:
    if model_id in (101, 102, 103):
        return _INVERTER_INT
    if model_id in (111, 112, 113):
        return _INVERTER_FLOAT
    if model_id == 120:
        return _NAMEPLATE
    if model_id == 121:
        return _SETTINGS
    if model_id == 122:
        return _STATUS
    if model_id == 160:
        return _mppt_specs(max(0, (length - 8) // 20))
    return None


@dataclass(frozen=True)
class ModelInfo:
    id: int
    address: int
    length: int

    @property
    def name(self) -> str:
        return MODEL_NAMES.get(self.id, "not decoded")

    @property
    def decoded(self) -> bool:
        return self.id == 1 or model_specs(self.id, self.length) is not None


@dataclass
class SunSpecDevice:
    base: int
    models: list[ModelInfo]
    common: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        c = self.common
        who = " ".join(v for v in (c.get("manufacturer"), c.get("model")) if v) or "unknown device"
        sn = f", serial {c['serial']}" if c.get("serial") else ""
        return f"SunSpec at {self.base}: {who}{sn}; models {', '.join(str(m.id) for m in self.models)}"

    def register_map(self) -> RegisterMap:
        """The discovered models as a register map (addresses absolute, base 0)."""
        points: list[dict[str, Any]] = []
        used: set[str] = set()
        for m in self.models:
            specs = model_specs(m.id, m.length)
            if specs is None:
                continue
            # A second instance of a model (two meters, two MPPT blocks) gets its id in the name.
            suffix = "" if not any(p["_model"] == m.id for p in points) else f"_{m.address}"
            sf_metric = {name: f"sf_{m.id}_{name.lower()}{suffix}" for (_o, name, t, *_r) in specs if t == "sunssf"}
            for offset, name, typ, sf, metric, scale, unit in specs:
                if (
                    offset + (4 if typ == "acc64" else 2 if typ in ("acc32", "uint32", "bitfield32", "float32") else 1)
                    > m.length + 2
                ):
                    continue  # a shorter (older) model revision: the point is not there
                if typ == "sunssf":
                    metric_name = sf_metric[name]
                elif metric is None:
                    continue
                else:
                    metric_name = metric + suffix
                if metric_name in used:
                    continue
                used.add(metric_name)
                point: dict[str, Any] = {
                    "_model": m.id,
                    "metric": metric_name,
                    "fc": 3,
                    "address": m.address + offset,
                    "type": MAP_TYPE[typ],
                    "scale": scale,
                    "unit": unit,
                    "description": f"SunSpec model {m.id} {name}",
                }
                if typ in SENTINEL:
                    point["sentinel"] = SENTINEL[typ]
                if typ.startswith("bitfield"):
                    point["length"] = 2 if typ == "bitfield32" else 1
                    point["bits"] = _BITS.get(name, {})
                    if not point["bits"]:
                        continue
                if typ == "enum16" and name in _ENUMS:
                    point["enum"] = _ENUMS[name]
                if sf is not None:
                    point["scale_factor"] = sf_metric[sf]
                points.append(point)
        for p in points:
            del p["_model"]
        return RegisterMap.model_validate(
            {
                "name": "sunspec",
                "description": self.describe(),
                "max_gap": 16,  # every register inside the model chain is defined, so gaps are safe to span
                "points": points,
            }
        )


class SunSpecNotFoundError(Exception):
    pass


Reader = Callable[[int, int], Awaitable[list[int]]]  # (address, count) -> holding registers


async def discover(read: Reader) -> SunSpecDevice:
    """Find the marker and walk the chain. Raises SunSpecNotFoundError or ModbusReadError (timeouts)."""
    tried = []
    for base in SUNSPEC_BASES:
        try:
            regs = await read(base, 2)
        except ModbusReadError as exc:
            if exc.kind != "exception":
                raise
            tried.append(f"{base}: {exc.detail}")
            continue
        if regs == MARKER:
            break
        tried.append(f"{base}: no 'SunS' marker")
    else:
        raise SunSpecNotFoundError("not a SunSpec device (" + "; ".join(tried) + ")")
    models: list[ModelInfo] = []
    addr = base + 2
    while len(models) < MAX_MODELS and addr <= 65534:
        (model_id,) = await read(addr, 1)  # the end model may have no length register
        if model_id == END_MODEL:
            break
        (length,) = await read(addr + 1, 1)
        models.append(ModelInfo(model_id, addr, length))
        addr += 2 + length
    if not models or models[0].id != 1:
        raise SunSpecNotFoundError(f"SunSpec marker at {base} but the first model is not Common (1)")
    device = SunSpecDevice(base, models)
    common = models[0]
    body = []
    for start in range(0, min(common.length, 66), 60):
        body += await read(common.address + 2 + start, min(60, common.length - start))
    fields = {"manufacturer": (0, 16), "model": (16, 16), "options": (32, 8), "version": (40, 8), "serial": (48, 16)}
    for key, (off, n) in fields.items():
        if off + n <= len(body):
            device.common[key] = decode_string(body[off : off + n], "ABCD")
    return device
