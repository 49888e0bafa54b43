"""The simulated Modbus devices: shipped maps and a SunSpec inverter, with plausible values.

Values are slow waves around typical operating points (a 630 kVA box transformer at half load,
a 120 kW charger with one car, a 50 kW inverter at noon); good enough to see rows, units and
events arrive, not a physics model (the MQTT fleet in simulator.core is that).
"""

from __future__ import annotations

from collections.abc import Callable

from collector.modbus.maps import Point, RegisterMap, load_map_file, resolve_map
from collector.modbus.sunspec import MARKER, ModelInfo, SunSpecDevice
from simulator.modbus_server import SimulatedModbusDevice, SimulatedModbusServer, encode_point, wave

Profile = dict[str, Callable[[float], float | int | str]]

_PROFILES: Profile = {
    "top_oil_temp_c": wave(62.0, 4.0, 120),
    "winding_l1_temp_c": wave(74.0, 5.0, 120),
    "winding_l2_temp_c": wave(73.0, 5.0, 120, 0.3),
    "winding_l3_temp_c": wave(75.0, 5.0, 120, 0.6),
    "hot_spot_temp_c": wave(81.0, 6.0, 120),
    "ambient_temp_c": wave(31.0, 2.0, 600),
    "enclosure_humidity_pct": wave(55.0, 10.0, 900),
    "fan_runtime_h": lambda t: 1520 + int(t / 3600),
    "fan_state": lambda t: 1,
    "controller_alarms": lambda t: 0,
    "fan_on_setpoint_c": lambda t: 55.0,
    "alarm_setpoint_c": lambda t: 85.0,
    "trip_setpoint_c": lambda t: 95.0,
    "door_open": lambda t: 0,
    "fan_running": lambda t: 1,
    "lv_voltage_v": wave(228.0, 3.0, 90),
    "lv_voltage_l2_v": wave(229.0, 3.0, 90, 1),
    "lv_voltage_l3_v": wave(227.0, 3.0, 90, 2),
    "lv_current_a": wave(420.0, 60.0, 300),
    "lv_current_l2_a": wave(410.0, 60.0, 300, 1),
    "lv_current_l3_a": wave(430.0, 60.0, 300, 2),
    "lv_neutral_current_a": wave(18.0, 4.0, 300),
    "active_power_kw": wave(280.0, 40.0, 300),
    "reactive_power_kvar": wave(55.0, 10.0, 300),
    "load_kva": wave(290.0, 40.0, 300),
    "power_factor": wave(0.97, 0.01, 300),
    "frequency_hz": wave(50.0, 0.03, 30),
    "voltage_thd_pct": wave(2.8, 0.4, 200),
    "energy_import_kwh": lambda t: 1_284_331.25 + t * 0.08,
    "energy_export_kwh": lambda t: 2_113.5,
    "breaker_state": lambda t: 1,
    "gun1_voltage_v": wave(640.0, 20.0, 600),
    "gun1_current_a": wave(150.0, 30.0, 600),
    "gun1_power_kw": wave(96.0, 18.0, 600),
    "gun1_temp_c": wave(58.0, 6.0, 600),
    "gun1_soc_pct": lambda t: min(100, 35 + int(t / 30)),
    "gun1_state": lambda t: 2,
    "gun2_voltage_v": lambda t: 0.0,
    "gun2_current_a": lambda t: 0.0,
    "gun2_power_kw": lambda t: 0.0,
    "gun2_temp_c": wave(34.0, 1.0, 600),
    "gun2_soc_pct": lambda t: 0,
    "gun2_state": lambda t: 0,
    "input_power_kw": wave(101.0, 18.0, 600),
    "module_temp_c": wave(61.0, 4.0, 600),
    "cabinet_temp_c": wave(38.0, 2.0, 600),
    "insulation_dc_plus_kohm": lambda t: 2200,
    "insulation_dc_minus_kohm": lambda t: 2150,
    "energy_kwh": lambda t: 84_211.0 + t * 0.027,
    "charger_faults": lambda t: 0,
    "serial_number": lambda t: "DCP120D-0042",
    "firmware_version": lambda t: "V2.14",
    "voltage_l1_v": wave(229.5, 2.0, 90),
    "voltage_l2_v": wave(230.1, 2.0, 90, 1),
    "voltage_l3_v": wave(228.7, 2.0, 90, 2),
    "current_l1_a": wave(61.0, 8.0, 200),
    "current_l2_a": wave(59.0, 8.0, 200, 1),
    "current_l3_a": wave(63.0, 8.0, 200, 2),
    "meter_alarms": lambda t: 0,
}


def profile_value(metric: str, t: float) -> float | int | str:
    f = _PROFILES.get(metric)
    return f(t) if f is not None else 0


def map_device(map_name: str, unit: int = 1) -> SimulatedModbusDevice:
    """A device serving a shipped (or any) register map with the profile values."""
    return SimulatedModbusDevice(load_map_file(resolve_map(map_name)), profile_value, unit)


# --- SunSpec inverter ---------------------------------------------------------------------------------
SUNSPEC_BASE = 40000
#: The simulated inverter's scale factors (SunSpec lets them change; these stay put).
_SF = {"A_SF": -1, "V_SF": -1, "W_SF": 1, "Hz_SF": -2, "VA_SF": 1, "VAr_SF": 0, "PF_SF": -1, "WH_SF": 1}
_SF |= {"DCA_SF": -1, "DCV_SF": -1, "DCW_SF": 1, "Tmp_SF": -1, "WRtg_SF": 0, "VARtg_SF": 0, "ARtg_SF": -1}
_SF |= {"DCWH_SF": 0}
_INVERTER: Profile = {
    "ac_current_a": wave(72.0, 5.0, 300),
    "ac_current_l1_a": wave(72.0, 5.0, 300),
    "ac_current_l2_a": wave(71.5, 5.0, 300),
    "ac_current_l3_a": wave(72.5, 5.0, 300),
    "ac_voltage_l1_l2_v": wave(399.0, 2.0, 90),
    "ac_voltage_l2_l3_v": wave(400.0, 2.0, 90),
    "ac_voltage_l3_l1_v": wave(401.0, 2.0, 90),
    "ac_voltage_l1_v": wave(230.5, 1.5, 90),
    "ac_voltage_l2_v": wave(230.0, 1.5, 90),
    "ac_voltage_l3_v": wave(229.5, 1.5, 90),
    "ac_power_kw": wave(48.0, 3.0, 300),
    "frequency_hz": wave(50.0, 0.02, 30),
    "apparent_power_kva": wave(48.5, 3.0, 300),
    "reactive_power_kvar": wave(1.2, 0.3, 300),
    "power_factor_pct": wave(99.0, 0.5, 300),
    "energy_kwh": lambda t: 312_450.0 + t * 0.013,
    "dc_current_a": wave(75.0, 5.0, 300),
    "dc_voltage_v": wave(655.0, 5.0, 300),
    "dc_power_kw": wave(49.2, 3.0, 300),
    "cabinet_temp_c": wave(41.0, 2.0, 600),
    "heatsink_temp_c": wave(52.0, 3.0, 600),
    "operating_state": lambda t: 4,
    "vendor_state_code": lambda t: 0,
    "inverter_events": lambda t: 0,
    "rated_power_kw": lambda t: 50.0,
    "rated_apparent_power_kva": lambda t: 55.0,
    "rated_current_a": lambda t: 80.0,
    "der_type": lambda t: 4,
    "mppt_events": lambda t: 0,
}
for _k in (1, 2):
    _INVERTER |= {
        f"mppt{_k}_current_a": wave(37.5, 3.0, 300, _k),
        f"mppt{_k}_voltage_v": wave(655.0, 5.0, 300, _k),
        f"mppt{_k}_power_kw": wave(24.6, 2.0, 300, _k),
        f"mppt{_k}_energy_kwh": (lambda k: lambda t: 150_000.0 + 1000 * k + t * 0.0065)(_k),
        f"mppt{_k}_temp_c": wave(45.0, 2.0, 600, _k),
        f"mppt{_k}_state": lambda t: 4,
        f"mppt{_k}_events": lambda t: 0,
    }


def sunspec_models(base: int = SUNSPEC_BASE) -> list[ModelInfo]:
    models, addr = [], base + 2
    for model_id, length in ((1, 66), (103, 50), (120, 26), (160, 8 + 20 * 2)):
        models.append(ModelInfo(model_id, addr, length))
        addr += 2 + length
    return models


def sunspec_inverter(unit: int = 1, base: int = SUNSPEC_BASE, serial: str = "SIM-INV-0001") -> SimulatedModbusDevice:
    """A three-phase inverter (models 1, 103, 120, 160 with two MPPT inputs) at `base`."""
    models = sunspec_models(base)
    register_map: RegisterMap = SunSpecDevice(base, models).register_map()
    sf_of = {p.metric: p.description.rsplit(" ", 1)[-1] for p in register_map.points}
    scale_of = {p.metric: p.scale_factor for p in register_map.points}

    def value(metric: str, t: float) -> float | int | str:
        if metric.startswith("sf_"):
            return _SF.get(sf_of[metric], 0)
        v = _INVERTER.get(metric)
        physical = v(t) if v is not None else 0
        sf_point = scale_of.get(metric)
        if sf_point is not None and isinstance(physical, float | int):
            return physical / 10.0 ** _SF.get(sf_of[sf_point], 0)
        return physical

    device = SimulatedModbusDevice(register_map, value, unit)
    device.not_implemented = {"transformer_temp_c", "other_temp_c", "vendor_state_code"}  # no such sensors
    raw = device.raw_overrides
    raw[(3, base)], raw[(3, base + 1)] = MARKER
    for m in models:
        raw[(3, m.address)], raw[(3, m.address + 1)] = m.id, m.length
    end = models[-1].address + 2 + models[-1].length
    raw[(3, end)], raw[(3, end + 1)] = 0xFFFF, 0
    common = models[0].address + 2
    for offset, n, text in ((0, 16, "GridSentry Sim"), (16, 16, "SIM-50K-3P"), (40, 8, "1.4.2"), (48, 16, serial)):
        words = encode_point(Point(metric="s", fc=3, address=0, type="string", length=n), text)
        for i, w in enumerate(words):
            raw[(3, common + offset + i)] = w
    raw[(3, common + 64)] = unit  # DA
    # Registers inside models that the map does not decode (pads, vendor events) read as 0.
    for m in models[1:]:
        for a in range(m.address + 2, m.address + 2 + m.length):
            raw.setdefault((3, a), 0)
    return device


#: The demo's Modbus devices: (device id, kind, map) - a box transformer's temperature controller and
#: LV meter, and a SunSpec inverter found by discovery.
DEMO_DEVICES = (
    ("TX01-TC", "box_transformer", "box_transformer_tc"),
    ("TX01-MTR", "meter", "box_transformer_meter"),
    ("INV-MB01", "pv_inverter", "sunspec"),
)


async def start_demo_servers() -> list[tuple[str, str, str, SimulatedModbusServer]]:
    """One loopback server per demo device: (device id, kind, map, running server)."""
    out = []
    for device_id, kind, map_name in DEMO_DEVICES:
        device = sunspec_inverter() if map_name == "sunspec" else map_device(map_name)
        server = SimulatedModbusServer([device])
        await server.start()
        out.append((device_id, kind, map_name, server))
    return out
