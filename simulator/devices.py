"""Device models: the state of each simulated device and how it evolves with time.

A model holds true physical values. Sensor noise, rounding and the faults that only touch the
data path (stuck sensors, garbled frames, silence) are applied later by the simulator core, so
a fault in the data never changes the physics and ground truth stays clean.
"""

from __future__ import annotations

import abc
import math
import random
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

from simulator.fleet import DeviceSpec
from simulator.physics import (
    FirstOrderLag,
    TransformerThermal,
    dc_taper_factor,
    inverter_efficiency,
    ou_step,
)

__all__ = [
    "AcChargerModel",
    "DcChargerModel",
    "DeviceEvent",
    "DeviceModel",
    "Environment",
    "PvInverterModel",
    "TransformerModel",
]


@dataclass(frozen=True)
class Environment:
    """What the site imposes on every device at one instant."""

    when: datetime
    ambient_c: float
    irradiance_wm2: float  # after cloud attenuation
    activity: float  # relative charging demand, 0.15..1
    base_load: float  # site base load relative to its daytime peak


class DeviceEvent(NamedTuple):
    kind: str  # "status" | "fault" | "session"
    code: str
    text: str
    # Session events carry their figures (connector, session id, kWh, duration, stop reason) here.
    detail: dict[str, object] | None = None


class ChargingSession:
    """One car's visit to one connector, from the start of energy transfer to unplugging."""

    def __init__(self, device_id: str, connector: int, started_at: datetime) -> None:
        self.session_id = f"{device_id}-{connector}-{started_at:%Y%m%dT%H%M%S}"
        self.connector = connector
        self.started_at = started_at
        self.energy_kwh = 0.0

    def start_event(self, label: str) -> DeviceEvent:
        return DeviceEvent("session", "start", label, {"session_id": self.session_id, "connector": self.connector})

    def stop_event(self, label: str, when: datetime, reason: str) -> DeviceEvent:
        detail: dict[str, object] = {
            "session_id": self.session_id,
            "connector": self.connector,
            "energy_kwh": round(self.energy_kwh, 3),
            "duration_s": round((when - self.started_at).total_seconds(), 1),
            "reason": reason,
        }
        return DeviceEvent("session", "stop", label, detail)


class DeviceModel(abc.ABC):
    """Common surface of every device model."""

    def __init__(self, spec: DeviceSpec, rng: random.Random) -> None:
        self.spec = spec
        self.rng = rng

    @abc.abstractmethod
    def advance(self, env: Environment, dt: float) -> list[DeviceEvent]:
        """Move the device's physics forward by `dt` seconds; return the events that happened."""

    @abc.abstractmethod
    def readings(self) -> dict[str, float]:
        """True (noise-free, unrounded) values of every metric the device publishes."""

    def connector_statuses(self) -> dict[str, str]:
        """Current OCPP-style status per connector label; empty for devices without connectors."""
        return {}

    def boot_events(self) -> list[DeviceEvent]:
        """Events announced when the simulation starts (sessions already under way)."""
        return []

    @property
    def grid_power_kw(self) -> float:
        """Active power drawn from the feeding transformer (negative when the device exports)."""
        return 0.0


# --- AC charger -----------------------------------------------------------------------------

_AC_NOMINAL_V = 230.0
_AC_PILOT_A = 32.0
# Cars draw about 95 % of what the pilot allows (domain.md §1.1), not the full setpoint.
_AC_CAR_DRAW = 0.95
_AC_ARRIVALS_PER_H = 0.3
# Chosen so a socket at 32 A sits about 15 K above ambient.
_AC_SOCKET_K_PER_A2 = 15.0 / 32.0**2


class AcChargerModel(DeviceModel):
    """A single-gun 7 kW AC pile: a contactor and a meter; the car's charger sets the current."""

    label = "connector 1"

    def __init__(self, spec: DeviceSpec, rng: random.Random, env: Environment) -> None:
        super().__init__(spec, rng)
        self.status = "Available"
        self._timer_s = 0.0
        self._demand_kwh = 0.0
        self._delivered_kwh = 0.0
        self._car_max_a = 0.0
        self.current_a = 0.0
        self.energy_kwh = rng.uniform(500.0, 15000.0)
        self._supply_dev = rng.gauss(0.0, 0.01)
        self.session: ChargingSession | None = None
        if rng.random() < 0.45 * env.activity:
            self._plug_in_car()
            self.status = "Charging"
            self._delivered_kwh = rng.uniform(0.0, 0.6) * self._demand_kwh
            self.current_a = self._charging_current()
            self.session = ChargingSession(spec.id, 1, env.when)
        self._socket = FirstOrderLag(self._socket_target(env.ambient_c), 300.0)

    def _plug_in_car(self) -> None:
        self._demand_kwh = self.rng.uniform(4.0, 30.0)
        self._delivered_kwh = 0.0
        # Some plug-in hybrids only take 16 A.
        pilot = _AC_PILOT_A if self.rng.random() < 0.85 else 16.0
        self._car_max_a = pilot * _AC_CAR_DRAW

    def _charging_current(self) -> float:
        remaining = self._demand_kwh - self._delivered_kwh
        # The car's BMS tapers the last few hundred watt-hours.
        return self._car_max_a * (0.5 if remaining < 0.3 else 1.0)

    def _socket_target(self, ambient_c: float) -> float:
        return ambient_c + 1.5 + _AC_SOCKET_K_PER_A2 * self.current_a**2

    @property
    def voltage_v(self) -> float:
        # Supply impedance drops the voltage a little under load; the grid stays within ±3 %.
        v = _AC_NOMINAL_V * (1.0 + self._supply_dev) - 0.05 * self.current_a
        return min(_AC_NOMINAL_V * 1.027, max(_AC_NOMINAL_V * 0.973, v))

    @property
    def power_kw(self) -> float:
        return self.voltage_v * self.current_a * 0.99 / 1000.0

    @property
    def grid_power_kw(self) -> float:
        return self.power_kw

    def advance(self, env: Environment, dt: float) -> list[DeviceEvent]:
        events: list[DeviceEvent] = []
        previous = self.status
        self._supply_dev = ou_step(self._supply_dev, 0.0, 0.01, 900.0, dt, self.rng)
        if self.status == "Available":
            rate = _AC_ARRIVALS_PER_H / 3600.0 * env.activity
            if self.rng.random() < 1.0 - math.exp(-rate * dt):
                self.status = "Preparing"
                self._timer_s = self.rng.uniform(10.0, 45.0)
        elif self.status == "Preparing":
            self._timer_s -= dt
            if self._timer_s <= 0:
                self._plug_in_car()
                self.status = "Charging"
                self.session = ChargingSession(self.spec.id, 1, env.when)
        elif self.status == "Charging":
            if self._delivered_kwh >= self._demand_kwh:
                self.status = "Finishing"
                self._timer_s = self.rng.uniform(20.0, 240.0)
        elif self.status == "Finishing":
            self._timer_s -= dt
            if self._timer_s <= 0:
                self.status = "Available"
        self.current_a = self._charging_current() if self.status == "Charging" else 0.0
        energy = self.power_kw * dt / 3600.0
        self.energy_kwh += energy
        self._delivered_kwh += energy
        if self.session is not None:
            self.session.energy_kwh += energy
        self._socket.step(self._socket_target(env.ambient_c), dt)
        if self.status != previous:
            if self.status == "Charging" and self.session is not None:
                events.append(self.session.start_event(self.label))
            events.append(DeviceEvent("status", self.status, self.label))
            if self.status == "Available" and self.session is not None:
                events.append(self.session.stop_event(self.label, env.when, "EVDisconnected"))
                self.session = None
        return events

    def boot_events(self) -> list[DeviceEvent]:
        return [self.session.start_event(self.label)] if self.session is not None else []

    def readings(self) -> dict[str, float]:
        return {
            "power_kw": self.power_kw,
            "energy_kwh": self.energy_kwh,
            "voltage_v": self.voltage_v,
            "current_a": self.current_a,
            "connector_temp_c": self._socket.value,
        }

    def connector_statuses(self) -> dict[str, str]:
        return {self.label: self.status}


# --- DC charger -----------------------------------------------------------------------------

_DC_GUN_MAX_KW = 60.0
_DC_ARRIVALS_PER_H = 1.2
# Joule heating of a healthy gun: 250 A gives about 30 K over ambient, so ~55 °C on a warm day.
_DC_PIN_K_PER_A2 = 30.0 / 250.0**2
_DC_PIN_TAU_S = 240.0
_DC_AUX_KW = 0.25
_HIGH_TEMP_ON_C = 100.0
_HIGH_TEMP_OFF_C = 90.0


class _Gun:
    """One gun of a DC pile, with the vehicle plugged into it (if any)."""

    def __init__(self, index: int, ambient_c: float, rng: random.Random) -> None:
        self.index = index
        self.label = f"gun {index}"
        self.status = "Available"
        self.timer_s = 0.0
        self.soc_pct = 0.0
        self.capacity_kwh = 0.0
        self.target_soc_pct = 0.0
        self.pack_v_nom = 0.0
        self.max_a = 0.0
        self.charging_s = 0.0
        self.power_kw = 0.0
        self.voltage_v = 0.0
        self.current_a = 0.0
        self.pin_offset_c = rng.uniform(-1.0, 1.0)
        self.pin_pos = FirstOrderLag(ambient_c + 2.0 + self.pin_offset_c, _DC_PIN_TAU_S)
        self.pin_neg = FirstOrderLag(ambient_c + 2.0 + self.pin_offset_c, _DC_PIN_TAU_S)
        # Loose-contact fault on the DC+ pin.
        self.fault_active = False
        self.fault_rate_k_s = 0.0
        self.fault_elapsed_s = 0.0
        self.fault_cal_a = 0.0
        self.fault_cap_c = 130.0
        self.high_temp = False
        self.session: ChargingSession | None = None

    @property
    def temp_c(self) -> float:
        return max(self.pin_pos.value, self.pin_neg.value)


class DcChargerModel(DeviceModel):
    """A 120 kW dual-gun DC pile; each gun delivers up to 60 kW with a CC/CV taper by SoC."""

    def __init__(self, spec: DeviceSpec, rng: random.Random, env: Environment) -> None:
        super().__init__(spec, rng)
        self.guns = (_Gun(1, env.ambient_c, rng), _Gun(2, env.ambient_c, rng))
        self.energy_kwh = rng.uniform(5000.0, 150000.0)
        self.fan_failed = False
        # Insulation monitor (IMD) reading DC+/DC- to PE: healthy piles sit in the MΩ range and
        # wander with humidity; a decline halves it every `insulation_halving_s`.
        self._insulation_base_kohm = rng.uniform(2500.0, 4000.0)
        self._insulation_wander = 0.0
        self.insulation_halving_s: float | None = None
        self.insulation_floor_kohm = 40.0
        self._insulation_decline_s = 0.0
        for gun in self.guns:
            if rng.random() < 0.4 * env.activity:
                self._new_vehicle(gun, forced=False)
                gun.status = "Charging"
                gun.charging_s = 60.0
                gun.session = ChargingSession(spec.id, gun.index, env.when)
                self._electrical(gun, 0.0)
                settled = env.ambient_c + 2.0 + gun.pin_offset_c + _DC_PIN_K_PER_A2 * gun.current_a**2
                gun.pin_pos.value = settled
                gun.pin_neg.value = settled
        load = self.output_kw / spec.rated_kw
        self._cabinet = FirstOrderLag(env.ambient_c + 2.0 + 6.0 * load, 1200.0)
        self._module = FirstOrderLag(self._cabinet.value + 3.0 + 28.0 * load, 300.0)

    @property
    def output_kw(self) -> float:
        return self.guns[0].power_kw + self.guns[1].power_kw

    @property
    def input_kw(self) -> float:
        out = self.output_kw
        if out <= 0:
            return _DC_AUX_KW
        load = out / self.spec.rated_kw
        efficiency = max(0.8, 0.955 - 0.004 / load)
        return out / efficiency + _DC_AUX_KW

    @property
    def grid_power_kw(self) -> float:
        return self.input_kw

    def start_overheat(self, gun: int, rise_k_per_min: float, cap_c: float) -> None:
        g = self.guns[gun - 1]
        g.fault_active = True
        g.fault_rate_k_s = rise_k_per_min / 60.0
        g.fault_elapsed_s = 0.0
        g.fault_cal_a = 0.0
        g.fault_cap_c = cap_c

    def stop_overheat(self, gun: int) -> None:
        g = self.guns[gun - 1]
        g.fault_active = False
        g.target_soc_pct = min(g.target_soc_pct, 99.5)

    def _new_vehicle(self, gun: _Gun, *, forced: bool) -> None:
        rng = self.rng
        # Most cars in the fleet are 400 V class; a few 800 V cars draw less current for the same power.
        if forced or rng.random() < 0.85:
            gun.pack_v_nom = rng.uniform(340.0, 400.0)
            gun.max_a = rng.uniform(180.0, 250.0)
        else:
            gun.pack_v_nom = rng.uniform(680.0, 760.0)
            gun.max_a = rng.uniform(150.0, 200.0)
        gun.capacity_kwh = rng.uniform(45.0, 90.0)
        if forced:
            # A fresh car keeps the current in the constant-current phase for the whole fault.
            gun.soc_pct = rng.uniform(20.0, 35.0)
            gun.target_soc_pct = 100.0
        else:
            gun.soc_pct = rng.uniform(10.0, 60.0)
            gun.target_soc_pct = rng.uniform(80.0, 95.0)
        gun.charging_s = 0.0

    def _electrical(self, gun: _Gun, dt: float) -> None:
        if gun.status != "Charging":
            gun.power_kw = gun.voltage_v = gun.current_a = 0.0
            return
        gun.charging_s += dt
        voltage = gun.pack_v_nom * (0.92 + 0.16 * gun.soc_pct / 100.0)
        limit_kw = min(_DC_GUN_MAX_KW, voltage * gun.max_a / 1000.0)
        # Soft start: the module stack ramps the current up over about 15 s.
        ramp = min(1.0, gun.charging_s / 15.0)
        power = limit_kw * dc_taper_factor(gun.soc_pct) * ramp
        gun.soc_pct = min(100.0, gun.soc_pct + power * dt / 3600.0 / gun.capacity_kwh * 100.0 * 0.96)
        gun.power_kw = power
        gun.voltage_v = voltage
        gun.current_a = power * 1000.0 / voltage

    def _status_machine(self, gun: _Gun, env: Environment, dt: float) -> None:
        if gun.fault_active:
            # A loose contact only heats while current flows, so the fault brings its own car.
            if gun.status in ("Available", "Finishing"):
                self._new_vehicle(gun, forced=True)
                gun.status = "Preparing"
                gun.timer_s = 2.0
                return
            if gun.status == "Preparing":
                gun.timer_s = min(gun.timer_s, 2.0)
        if gun.status == "Available":
            rate = _DC_ARRIVALS_PER_H / 3600.0 * env.activity
            if self.rng.random() < 1.0 - math.exp(-rate * dt):
                self._new_vehicle(gun, forced=False)
                gun.status = "Preparing"
                # Handshake, insulation test and pre-charge.
                gun.timer_s = self.rng.uniform(30.0, 90.0)
        elif gun.status == "Preparing":
            gun.timer_s -= dt
            if gun.timer_s <= 0:
                gun.status = "Charging"
                gun.charging_s = 0.0
                gun.session = ChargingSession(self.spec.id, gun.index, env.when)
        elif gun.status == "Charging":
            if gun.soc_pct >= gun.target_soc_pct and not gun.fault_active:
                gun.status = "Finishing"
                gun.timer_s = self.rng.uniform(15.0, 60.0)
        elif gun.status == "Finishing":
            gun.timer_s -= dt
            if gun.timer_s <= 0:
                gun.status = "Available"

    def _thermal(self, gun: _Gun, env: Environment, dt: float) -> None:
        base = env.ambient_c + 2.0 + gun.pin_offset_c
        joule = _DC_PIN_K_PER_A2 * gun.current_a**2
        extra_k_s = 0.0
        if gun.fault_active:
            gun.fault_elapsed_s += dt
            if gun.fault_cal_a == 0.0 and gun.current_a > 20.0:
                gun.fault_cal_a = gun.current_a
            if gun.fault_cal_a > 0.0:
                # I²R heating in a contact whose resistance keeps growing as it oxidises.
                growth = 1.0 + gun.fault_elapsed_s / 120.0
                extra_k_s = gun.fault_rate_k_s * growth * (gun.current_a / gun.fault_cal_a) ** 2
        # A constant heating rate r on a first-order lag is the same as raising its target by r·τ.
        gun.pin_pos.step(base + joule + extra_k_s * gun.pin_pos.tau_s, dt)
        gun.pin_pos.value = min(gun.pin_pos.value, max(gun.fault_cap_c, base + joule))
        gun.pin_neg.step(base + 0.92 * joule, dt)

    def advance(self, env: Environment, dt: float) -> list[DeviceEvent]:
        events: list[DeviceEvent] = []
        for gun in self.guns:
            previous = gun.status
            self._status_machine(gun, env, dt)
            if gun.status != previous:
                if gun.status == "Charging" and gun.session is not None:
                    events.append(gun.session.start_event(gun.label))
                events.append(DeviceEvent("status", gun.status, gun.label))
                if gun.status in ("Available", "Preparing") and gun.session is not None:
                    # A fault-forced car replaces one still finishing: that visit ends here too.
                    events.append(gun.session.stop_event(gun.label, env.when, "EVDisconnected"))
                    gun.session = None
            self._electrical(gun, dt)
            if gun.session is not None:
                gun.session.energy_kwh += gun.power_kw * dt / 3600.0
            self._thermal(gun, env, dt)
            if not gun.high_temp and gun.temp_c > _HIGH_TEMP_ON_C:
                gun.high_temp = True
                events.append(DeviceEvent("fault", "HighTemperature", gun.label))
            elif gun.high_temp and gun.temp_c < _HIGH_TEMP_OFF_C:
                gun.high_temp = False
                events.append(DeviceEvent("fault", "NoError", gun.label))
        self.energy_kwh += self.output_kw * dt / 3600.0
        self._insulation_wander = ou_step(self._insulation_wander, 0.0, 0.05, 3600.0, dt, self.rng)
        if self.insulation_halving_s is not None:
            self._insulation_decline_s += dt
        load = self.output_kw / self.spec.rated_kw
        fan = 1.5 if self.fan_failed else 1.0
        self._cabinet.step(env.ambient_c + 2.0 + 6.0 * load * fan, dt)
        # Without a fan the modules lose most of their forced-air cooling.
        module_rise = 28.0 * load * (2.5 if self.fan_failed else 1.0) + (6.0 if self.fan_failed else 0.0)
        self._module.step(self._cabinet.value + 3.0 + module_rise, dt)
        return events

    def boot_events(self) -> list[DeviceEvent]:
        return [g.session.start_event(g.label) for g in self.guns if g.session is not None]

    def readings(self) -> dict[str, float]:
        g1, g2 = self.guns
        return {
            "gun1_power_kw": g1.power_kw,
            "gun2_power_kw": g2.power_kw,
            "gun1_voltage_v": g1.voltage_v,
            "gun2_voltage_v": g2.voltage_v,
            "gun1_current_a": g1.current_a,
            "gun2_current_a": g2.current_a,
            "gun1_temp_c": g1.temp_c,
            "gun2_temp_c": g2.temp_c,
            # The BMS reports SoC from the handshake until the car is unplugged.
            "gun1_soc_pct": g1.soc_pct if g1.status != "Available" else 0.0,
            "gun2_soc_pct": g2.soc_pct if g2.status != "Available" else 0.0,
            "module_temp_c": self._module.value,
            "cabinet_temp_c": self._cabinet.value,
            "input_power_kw": self.input_kw,
            "energy_kwh": self.energy_kwh,
            "insulation_kohm": self.insulation_kohm,
        }

    @property
    def insulation_kohm(self) -> float:
        healthy = self._insulation_base_kohm * math.exp(self._insulation_wander)
        if self.insulation_halving_s is None:
            return healthy
        declined: float = healthy * 0.5 ** (self._insulation_decline_s / self.insulation_halving_s)
        return max(self.insulation_floor_kohm, declined)

    def start_insulation_decline(self, halving_s: float, floor_kohm: float) -> None:
        self.insulation_halving_s = halving_s
        self.insulation_floor_kohm = floor_kohm
        self._insulation_decline_s = 0.0

    def stop_insulation_decline(self) -> None:
        self.insulation_halving_s = None

    def connector_statuses(self) -> dict[str, str]:
        return {gun.label: gun.status for gun in self.guns}


# --- PV inverter ----------------------------------------------------------------------------

_PV_GAMMA_PER_K = -0.004  # PVWatts power temperature coefficient
_PV_VMP_STC_V = 620.0
_PV_VMP_BETA_PER_K = -0.0035
_PV_NOCT_RISE_K_PER_WM2 = 0.03


class PvInverterModel(DeviceModel):
    """A string inverter: PVWatts-style DC power, load-dependent efficiency, clipping at rating."""

    def __init__(self, spec: DeviceSpec, rng: random.Random, env: Environment) -> None:
        super().__init__(spec, rng)
        # Soiling and module mismatch differ a little between inverters of the same site.
        self._derate = rng.uniform(0.95, 1.0)
        raw = [rng.uniform(0.98, 1.02) for _ in range(spec.strings)]
        mean = sum(raw) / len(raw)
        self._mismatch = [r / mean for r in raw]
        self.string_health = [1.0] * spec.strings
        self.energy_kwh = rng.uniform(20000.0, 200000.0)
        self._cell = FirstOrderLag(env.ambient_c + _PV_NOCT_RISE_K_PER_WM2 * env.irradiance_wm2, 300.0)
        self.irradiance_wm2 = env.irradiance_wm2
        self.ambient_c = env.ambient_c
        self.dc_kw = 0.0
        self.ac_kw = 0.0
        self.dc_voltage_v = 0.0
        self.string_currents = [0.0] * spec.strings
        self.cooling_factor = 1.0  # > 1: clogged filter or a dead fan (fault inverter_overtemp)
        self._compute()
        self._heatsink = FirstOrderLag(self._heatsink_target(), 600.0)

    def _heatsink_target(self) -> float:
        rise = 22.0 * self.ac_kw / self.spec.rated_kw
        return self.ambient_c + 4.0 + rise * self.cooling_factor + 6.0 * (self.cooling_factor - 1.0)

    def _compute(self) -> None:
        rated = self.spec.rated_kw
        g = self.irradiance_wm2
        cell = self._cell.value
        nominal = g / 1000.0 * rated * self._derate * (1.0 + _PV_GAMMA_PER_K * (cell - 25.0))
        n = self.spec.strings
        shares = [nominal / n * self._mismatch[i] * self.string_health[i] for i in range(n)]
        dc = sum(shares)
        # Below a fraction of a percent of rating the inverter stays off the grid.
        if g <= 1.0 or dc < 0.002 * rated:
            self.dc_kw = self.ac_kw = self.dc_voltage_v = 0.0
            self.string_currents = [0.0] * n
            return
        efficiency = inverter_efficiency(dc / rated)
        if dc * efficiency > rated:
            # Clipping: the inverter walks off the maximum power point to hold its rating.
            scale = rated / (dc * efficiency)
            shares = [s * scale for s in shares]
            dc = sum(shares)
            efficiency = inverter_efficiency(dc / rated)
        voltage = _PV_VMP_STC_V * (1.0 + _PV_VMP_BETA_PER_K * (cell - 25.0)) * (1.0 + 0.03 * math.log(g / 1000.0))
        self.dc_kw = dc
        self.ac_kw = dc * efficiency
        self.dc_voltage_v = voltage
        self.string_currents = [s * 1000.0 / voltage for s in shares]

    def set_string_health(self, string: int, factor: float) -> None:
        """Scale one string's output (1-based): 0 is an open string, 1 a healthy one."""
        self.string_health[string - 1] = factor
        self._compute()

    @property
    def grid_power_kw(self) -> float:
        return -self.ac_kw

    def advance(self, env: Environment, dt: float) -> list[DeviceEvent]:
        self.irradiance_wm2 = env.irradiance_wm2
        self.ambient_c = env.ambient_c
        self._cell.step(env.ambient_c + _PV_NOCT_RISE_K_PER_WM2 * env.irradiance_wm2, dt)
        self._compute()
        self.energy_kwh += self.ac_kw * dt / 3600.0
        self._heatsink.step(self._heatsink_target(), dt)
        return []

    def readings(self) -> dict[str, float]:
        out = {
            "ac_power_kw": self.ac_kw,
            "dc_power_kw": self.dc_kw,
            "energy_kwh": self.energy_kwh,
            "dc_voltage_v": self.dc_voltage_v,
        }
        for i, current in enumerate(self.string_currents, start=1):
            out[f"string{i}_current_a"] = current
        out["heatsink_temp_c"] = self._heatsink.value
        out["irradiance_wm2"] = self.irradiance_wm2
        out["ambient_temp_c"] = self.ambient_c
        return out


# --- Box transformer ------------------------------------------------------------------------

_TX_LV_NOMINAL_V = 400.0
# Net charger and PV power reaches the transformer at about this power factor.
_TX_DEVICE_PF = 0.98


class TransformerModel(DeviceModel):
    """An ONAN box transformer feeding the site's base load plus its child devices."""

    def __init__(self, spec: DeviceSpec, rng: random.Random, env: Environment, children: list[DeviceModel]) -> None:
        super().__init__(spec, rng)
        self.children = children
        self.extra_kva = 0.0
        self._base_dev = rng.gauss(0.0, 0.05)
        self._volt_dev = rng.gauss(0.0, 0.004)
        self.ambient_c = env.ambient_c
        self.load_kva = self._load(env)
        self.thermal = TransformerThermal(self.load_kva / spec.rated_kw, env.ambient_c)

    def _load(self, env: Environment) -> float:
        rated = self.spec.rated_kw
        base = rated * 0.3 * env.base_load * (1.0 + self._base_dev)
        net = sum(child.grid_power_kw for child in self.children)
        # PV can cover the whole site at noon; a transformer never idles below its magnetising draw.
        return max(0.02 * rated, base + net / _TX_DEVICE_PF + self.extra_kva)

    @property
    def lv_voltage_v(self) -> float:
        # Off-load tap at +2.5 %, with the regulation drop growing with load.
        k = self.load_kva / self.spec.rated_kw
        return _TX_LV_NOMINAL_V * (1.025 - 0.045 * k + self._volt_dev)

    def advance(self, env: Environment, dt: float) -> list[DeviceEvent]:
        self._base_dev = ou_step(self._base_dev, 0.0, 0.05, 600.0, dt, self.rng)
        self._volt_dev = ou_step(self._volt_dev, 0.0, 0.004, 300.0, dt, self.rng)
        self.ambient_c = env.ambient_c
        self.load_kva = self._load(env)
        self.thermal.step(self.load_kva / self.spec.rated_kw, env.ambient_c, dt)
        return []

    def readings(self) -> dict[str, float]:
        voltage = self.lv_voltage_v
        return {
            "load_kva": self.load_kva,
            "load_factor": self.load_kva / self.spec.rated_kw,
            "top_oil_temp_c": self.thermal.top_oil_c,
            "hot_spot_temp_c": self.thermal.hot_spot_c,
            "ambient_temp_c": self.ambient_c,
            "lv_voltage_v": voltage,
            "lv_current_a": self.load_kva * 1000.0 / (math.sqrt(3.0) * voltage),
        }
