"""The fleet simulator: advances every device on one time grid and emits MQTT-ready messages.

Physics advances on a fixed grid (at most 1 s) counted from `start`, whatever times `step` is
called with, so a seed gives the same fleet history whether the caller steps once an hour or
a thousand times a second. Telemetry is due every `interval_s` of simulated time per device;
a `step` that jumps ahead returns the whole backlog, timestamped when each message was due.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import orjson

from simulator.devices import (
    AcChargerModel,
    DcChargerModel,
    DeviceEvent,
    DeviceModel,
    Environment,
    PvInverterModel,
    TransformerModel,
)
from simulator.faults import FaultRecord, FaultSpec, validate_fault
from simulator.fleet import DeviceSpec, SiteSpec, metric_names
from simulator.physics import (
    AmbientModel,
    CloudModel,
    base_load_factor,
    charging_activity,
    clear_sky_irradiance,
    local_hour,
    site_timezone,
    solar_elevation_deg,
    solar_hour,
)

__all__ = ["FleetSimulator", "OutMessage", "event_topic", "telemetry_topic"]

_EPS = 1e-9


@dataclass(frozen=True)
class OutMessage:
    """One MQTT message ready to publish."""

    topic: str
    payload: bytes
    readings: int  # metrics carried (0 for events and malformed frames)
    kind: str  # "telemetry" | "event" | "malformed"


def telemetry_topic(site: str, device_id: str) -> str:
    return f"gridsentry/{site}/{device_id}/telemetry"


def event_topic(site: str, device_id: str) -> str:
    return f"gridsentry/{site}/{device_id}/events"


class _Noise(NamedTuple):
    sigma: float  # absolute; a negative sigma is relative to the value (plus a small floor)
    decimals: int
    lo: float
    hi: float
    exact_zero: bool  # an idle 0 is a true 0, not a noisy one


def _noise_for(device: DeviceSpec, metric: str) -> _Noise:
    if metric == "energy_kwh":
        # Meter registers are exact and must never step backwards.
        return _Noise(0.0, 2, 0.0, math.inf, False)
    if metric.endswith("_temp_c"):
        return _Noise(0.15, 1, -40.0, 200.0, False)
    if metric.endswith("_soc_pct"):
        return _Noise(0.0, 0, 0.0, 100.0, True)
    if metric == "load_factor":
        return _Noise(0.0, 4, 0.0, math.inf, False)
    if metric == "load_kva":
        return _Noise(0.3, 1, 0.0, math.inf, False)
    if metric.endswith("_kw"):
        # Relative: power meters are specified in percent of reading.
        return _Noise(-0.003, 2, 0.0, math.inf, True)
    if metric.endswith("voltage_v"):
        if device.kind == "charger_ac":
            return _Noise(0.3, 1, 230.0 * 0.97, 230.0 * 1.03, True)
        return _Noise(0.4, 1, 0.0, 1500.0, device.kind != "box_transformer")
    if metric.endswith("current_a"):
        hi = 32.0 if device.kind == "charger_ac" else math.inf
        return _Noise(0.05, 2, 0.0, hi, device.kind != "box_transformer")
    if metric == "insulation_kohm":
        return _Noise(-0.01, 0, 0.0, math.inf, False)
    if metric == "irradiance_wm2":
        return _Noise(2.0, 1, 0.0, 1500.0, True)
    return _Noise(0.0, 3, -math.inf, math.inf, False)


class _FaultState:
    """Runtime state of one declared fault."""

    def __init__(self, spec: FaultSpec) -> None:
        self.spec = spec
        self.state = "pending"  # pending -> active -> ended
        duration = spec.params.get("duration_s")
        if duration is None and spec.kind == "device_offline":
            duration = 120.0
        self.end_s: float | None = None if duration is None else spec.start_after_s + float(duration)
        self.record_index = -1
        self.frozen: float | None = None  # stuck_sensor
        self.messages = 0  # malformed_payload: telemetry messages since the fault began


class FleetSimulator:
    """A simulated fleet with physics, sensor noise and injected faults with ground truth."""

    def __init__(
        self,
        site: SiteSpec,
        devices: list[DeviceSpec],
        *,
        seed: int = 1,
        start: datetime | None = None,
        faults: Sequence[FaultSpec] = (),
        physics_step_s: float | None = None,
    ) -> None:
        """`physics_step_s` (default: 1 s, or the shortest device interval if shorter) trades
        event resolution for speed when simulating weeks for backtests; at most 60 s."""
        if not devices:
            raise ValueError("a fleet needs at least one device")
        by_id: dict[str, DeviceSpec] = {}
        for device in devices:
            if device.id in by_id:
                raise ValueError(f"device id {device.id!r} appears twice in the fleet")
            if device.site != site.id:
                raise ValueError(f"device {device.id!r} belongs to site {device.site!r}, not {site.id!r}")
            by_id[device.id] = device
        for fault in faults:
            validate_fault(fault, by_id)
        if start is None:
            start = datetime.now(UTC)
        if start.tzinfo is None or start.utcoffset() is None:
            raise ValueError("start must be timezone-aware (UTC)")

        self.site = site
        self.devices = list(devices)
        self.seed = seed
        self.start = start.astimezone(UTC)
        self.ground_truth: list[FaultRecord] = []
        # (when, device, "start" | "stop", detail) of every charging session event, published or not.
        self.session_log: list[tuple[datetime, str, str, dict[str, object]]] = []
        # Fine enough to resolve the fastest device and status changes to the second.
        self._dt = physics_step_s if physics_step_s is not None else min(1.0, *(d.interval_s for d in devices))
        if not 0 < self._dt <= 60.0:
            raise ValueError(f"physics_step_s must be within (0, 60] s, got {physics_step_s}")
        self._tick = 0
        self._booted = False
        self._tz = site_timezone(site.timezone, site.longitude)
        weather_rng = random.Random(f"{seed}:{site.id}:weather")
        self._clouds = CloudModel(weather_rng)
        self._ambient = AmbientModel(weather_rng)

        env = self._environment(self.start)
        self._models: dict[str, DeviceModel] = {}
        for device in devices:
            rng = random.Random(f"{seed}:{device.id}:physics")
            if device.kind == "charger_ac":
                self._models[device.id] = AcChargerModel(device, rng, env)
            elif device.kind == "charger_dc":
                self._models[device.id] = DcChargerModel(device, rng, env)
            elif device.kind == "pv_inverter":
                self._models[device.id] = PvInverterModel(device, rng, env)
        # Transformers sum their children's power, so they are built and advanced after them.
        for device in devices:
            if device.kind == "box_transformer":
                children = [self._models[d.id] for d in devices if d.parent == device.id and d.id in self._models]
                rng = random.Random(f"{seed}:{device.id}:physics")
                self._models[device.id] = TransformerModel(device, rng, env, children)
        self._order = [m for m in self._models.values() if not isinstance(m, TransformerModel)] + [
            m for m in self._models.values() if isinstance(m, TransformerModel)
        ]

        self._noise_rng = {d.id: random.Random(f"{seed}:{d.id}:noise") for d in devices}
        self._noise = {d.id: {m: _noise_for(d, m) for m in metric_names(d)} for d in devices}
        self._seq = dict.fromkeys(by_id, 0)
        self._published_status: dict[tuple[str, str], str] = {}
        self._topics = {d.id: (telemetry_topic(d.site, d.id), event_topic(d.site, d.id)) for d in devices}
        self._specs = by_id
        self._faults = [_FaultState(f) for f in sorted(faults, key=lambda f: f.start_after_s)]
        self._faults_by_device: dict[str, list[_FaultState]] = {}
        for state in self._faults:
            self._faults_by_device.setdefault(state.spec.device_id, []).append(state)
        # (due offset in s, fleet position); per-device message numbers keep due times drift-free.
        self._next_n = [0] * len(devices)
        self._heap: list[tuple[float, int]] = [(0.0, i) for i in range(len(devices))]
        heapq.heapify(self._heap)

    # --- time -----------------------------------------------------------------------------------

    @property
    def now(self) -> datetime:
        """Simulated time the physics has reached."""
        return self.start + timedelta(seconds=self._tick * self._dt)

    def next_due(self) -> datetime:
        """When the next telemetry message falls due."""
        return self.start + timedelta(seconds=self._heap[0][0])

    def step(self, now: datetime) -> list[OutMessage]:
        """Advance physics to `now` (tz-aware) and return every message due up to it, in time order."""
        if now.tzinfo is None or now.utcoffset() is None:
            raise ValueError("step() needs a timezone-aware datetime")
        target = (now - self.start).total_seconds()
        out: list[OutMessage] = []
        if target < -_EPS:
            return out
        if not self._booted:
            self._boot(out)
        while self._heap[0][0] <= target + _EPS:
            due, index = heapq.heappop(self._heap)
            self._advance_to(math.floor(due / self._dt + _EPS), out)
            self._emit_telemetry(self.devices[index], due, out)
            self._next_n[index] += 1
            heapq.heappush(self._heap, (self._next_n[index] * self.devices[index].interval_s, index))
        self._advance_to(math.floor(target / self._dt + _EPS), out)
        return out

    def _environment(self, when: datetime) -> Environment:
        elevation = solar_elevation_deg(self.site.latitude, self.site.longitude, when)
        irradiance = clear_sky_irradiance(elevation) * self._clouds.transmission
        hour = local_hour(when, self._tz)
        return Environment(
            when=when,
            ambient_c=self._ambient.value(solar_hour(when, self.site.longitude)),
            irradiance_wm2=irradiance,
            activity=charging_activity(hour),
            base_load=base_load_factor(hour),
        )

    def _boot(self, out: list[OutMessage]) -> None:
        self._booted = True
        self._update_faults(0.0, self.start, out)
        # Chargers announce every connector after boot, as OCPP StatusNotification does.
        for device_id, model in self._models.items():
            for label, status in model.connector_statuses().items():
                self._emit_event(device_id, DeviceEvent("status", status, label), self.start, out)
            for event in model.boot_events():
                self._emit_event(device_id, event, self.start, out)

    def _advance_to(self, tick: int, out: list[OutMessage]) -> None:
        while self._tick < tick:
            self._tick += 1
            elapsed = self._tick * self._dt
            when = self.start + timedelta(seconds=elapsed)
            self._update_faults(elapsed, when, out)
            self._clouds.step(self._dt)
            self._ambient.step(self._dt)
            env = self._environment(when)
            for model in self._order:
                for event in model.advance(env, self._dt):
                    self._emit_event(model.spec.id, event, when, out)

    # --- faults ---------------------------------------------------------------------------------

    def _update_faults(self, elapsed: float, when: datetime, out: list[OutMessage]) -> None:
        for fault in self._faults:
            if fault.state == "pending" and elapsed + _EPS >= fault.spec.start_after_s:
                self._activate(fault, when)
            if fault.state == "active" and fault.end_s is not None and elapsed + _EPS >= fault.end_s:
                self._deactivate(fault, when, out)

    def _activate(self, fault: _FaultState, when: datetime) -> None:
        spec = fault.spec
        params = spec.params
        model = self._models[spec.device_id]
        fault.state = "active"
        detail: str
        if spec.kind == "dc_connector_overheat":
            assert isinstance(model, DcChargerModel)
            gun = int(params.get("gun", 1))
            rise = float(params.get("rise_k_per_min", 75.0))
            cap = float(params.get("cap_c", 130.0))
            model.start_overheat(gun, rise, cap)
            detail = f"gun {gun}: loose DC+ contact heating at {rise:g} K/min and growing (cap {cap:g} °C)"
        elif spec.kind == "dc_fan_failure":
            assert isinstance(model, DcChargerModel)
            model.fan_failed = True
            detail = "power-module cooling fan stopped"
        elif spec.kind == "pv_string_fault":
            assert isinstance(model, PvInverterModel)
            string = int(params.get("string", 1))
            factor = float(params.get("factor", 0.0))
            model.set_string_health(string, factor)
            detail = f"string {string} at {factor:.0%} of normal output"
        elif spec.kind == "transformer_overload":
            assert isinstance(model, TransformerModel)
            extra = float(params.get("extra_kva", 0.6 * model.spec.rated_kw))
            model.extra_kva = extra
            detail = f"extra load of {extra:g} kVA"
        elif spec.kind == "insulation_decline":
            assert isinstance(model, DcChargerModel)
            halving = float(params.get("halving_h", 1.0))
            floor = float(params.get("floor_kohm", 40.0))
            model.start_insulation_decline(halving * 3600.0, floor)
            detail = f"insulation resistance halving every {halving:g} h down to {floor:g} kΩ"
        elif spec.kind == "inverter_overtemp":
            assert isinstance(model, PvInverterModel)
            factor = float(params.get("factor", 2.5))
            model.cooling_factor = factor
            detail = f"heat-sink cooling lost: rise over ambient x{factor:g}"
        elif spec.kind == "transformer_cooling_loss":
            assert isinstance(model, TransformerModel)
            factor = float(params.get("factor", 1.35))
            model.thermal.cooling_factor = factor
            detail = f"cooling lost: top-oil rise x{factor:g} at the same load"
        elif spec.kind == "device_offline":
            detail = f"publishes nothing for {(fault.end_s or 0.0) - spec.start_after_s:g} s"
        elif spec.kind == "stuck_sensor":
            detail = f"{params['metric']} frozen at its last value"
        else:
            detail = f"1 in every {int(params.get('every_n', 5))} telemetry messages is invalid JSON"
        fault.record_index = len(self.ground_truth)
        self.ground_truth.append(FaultRecord(spec.kind, spec.device_id, when, detail))

    def _deactivate(self, fault: _FaultState, when: datetime, out: list[OutMessage]) -> None:
        spec = fault.spec
        model = self._models[spec.device_id]
        fault.state = "ended"
        if spec.kind == "dc_connector_overheat" and isinstance(model, DcChargerModel):
            model.stop_overheat(int(spec.params.get("gun", 1)))
        elif spec.kind == "dc_fan_failure" and isinstance(model, DcChargerModel):
            model.fan_failed = False
        elif spec.kind == "pv_string_fault" and isinstance(model, PvInverterModel):
            model.set_string_health(int(spec.params.get("string", 1)), 1.0)
        elif spec.kind == "transformer_overload" and isinstance(model, TransformerModel):
            model.extra_kva = 0.0
        elif spec.kind == "insulation_decline" and isinstance(model, DcChargerModel):
            model.stop_insulation_decline()
        elif spec.kind == "inverter_overtemp" and isinstance(model, PvInverterModel):
            model.cooling_factor = 1.0
        elif spec.kind == "transformer_cooling_loss" and isinstance(model, TransformerModel):
            model.thermal.cooling_factor = 1.0
        record = self.ground_truth[fault.record_index]
        self.ground_truth[fault.record_index] = replace(record, ended_at=when)
        if spec.kind == "device_offline" and not self._offline(spec.device_id):
            # Back online: report connector states that changed while nobody could hear them.
            for label, status in model.connector_statuses().items():
                if self._published_status.get((spec.device_id, label)) != status:
                    self._emit_event(spec.device_id, DeviceEvent("status", status, label), when, out)

    def _active(self, device_id: str, kind: str) -> list[_FaultState]:
        return [f for f in self._faults_by_device.get(device_id, ()) if f.state == "active" and f.spec.kind == kind]

    def _offline(self, device_id: str) -> bool:
        return bool(self._active(device_id, "device_offline"))

    # --- messages -------------------------------------------------------------------------------

    def _emit_event(self, device_id: str, event: DeviceEvent, when: datetime, out: list[OutMessage]) -> None:
        if event.kind == "session" and event.detail is not None:
            # Ground truth whether or not anyone hears it: an offline pile still charges cars.
            self.session_log.append((when, device_id, event.code, dict(event.detail)))
        if self._offline(device_id):
            return
        if event.kind == "status":
            self._published_status[(device_id, event.text)] = event.code
        body: dict[str, object] = {
            "ts": when.isoformat(timespec="microseconds"),
            "kind": event.kind,
            "code": event.code,
            "text": event.text,
        }
        if event.detail is not None:
            body["detail"] = event.detail
        out.append(OutMessage(self._topics[device_id][1], orjson.dumps(body), 0, "event"))

    def _emit_telemetry(self, device: DeviceSpec, due: float, out: list[OutMessage]) -> None:
        # Noise is drawn even for messages that are then dropped, so a data-path fault never
        # changes the values the rest of the run publishes.
        metrics = self._measure(device)
        for fault in self._active(device.id, "stuck_sensor"):
            metric = str(fault.spec.params["metric"])
            if fault.frozen is None:
                fault.frozen = metrics[metric]
            metrics[metric] = fault.frozen
        if self._offline(device.id):
            return
        self._seq[device.id] += 1
        when = self.start + timedelta(seconds=due)
        body: dict[str, Any] = {
            "ts": when.isoformat(timespec="microseconds"),
            "seq": self._seq[device.id],
            "metrics": metrics,
        }
        payload = orjson.dumps(body)
        topic = self._topics[device.id][0]
        for fault in self._active(device.id, "malformed_payload"):
            fault.messages += 1
            if fault.messages % int(fault.spec.params.get("every_n", 5)) == 0:
                # A frame cut in half: it starts like JSON and can never parse.
                out.append(OutMessage(topic, payload[: len(payload) // 2], 0, "malformed"))
                return
        out.append(OutMessage(topic, payload, len(metrics), "telemetry"))

    def _measure(self, device: DeviceSpec) -> dict[str, float]:
        rng = self._noise_rng[device.id]
        noise = self._noise[device.id]
        measured: dict[str, float] = {}
        for metric, value in self._models[device.id].readings().items():
            spec = noise[metric]
            if spec.exact_zero and value == 0.0:
                measured[metric] = 0.0
                continue
            sigma = spec.sigma if spec.sigma >= 0 else 0.002 - spec.sigma * abs(value)
            noisy = value + rng.gauss(0.0, sigma) if sigma > 0 else value
            measured[metric] = round(min(spec.hi, max(spec.lo, noisy)), spec.decimals)
        return measured
