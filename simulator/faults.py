"""Injectable faults and the ground truth they leave behind.

A fault is declared up front (`FaultSpec`) and switches on at a simulated offset from the start.
When it does, the simulator appends a `FaultRecord`; tests and benchmarks score rules against
those records (detection, false alarms, lead time).

Kinds and their parameters (all optional unless noted):

- ``dc_connector_overheat`` (charger_dc): ``gun`` 1|2 (default 1), ``rise_k_per_min`` (initial
  heating rate of the loose contact at the gun's current, default 75), ``cap_c`` (default 130).
- ``dc_fan_failure`` (charger_dc): the module fan stops; module temperature climbs with load.
- ``pv_string_fault`` (pv_inverter): ``string`` (1-based, default 1), ``factor`` of normal output
  (default 0.0: an open string or blown fuse; 0.7 looks like shading or a failed bypass diode).
- ``transformer_overload`` (box_transformer): ``extra_kva`` added to the load (default 0.6 × rating).
- ``insulation_decline`` (charger_dc): insulation resistance to PE halves every ``halving_h``
  hours (default 1.0) down to ``floor_kohm`` (default 40), as moisture or a damaged cable does.
- ``inverter_overtemp`` (pv_inverter): clogged filter or dead fan; the heat-sink rise over
  ambient is multiplied by ``factor`` (default 2.5).
- ``transformer_cooling_loss`` (box_transformer): blocked radiators or low oil; the top-oil rise
  is multiplied by ``factor`` (default 1.35) at the same load, so the oil climbs over hours.
- ``device_offline`` (any): the device publishes nothing; ``duration_s`` defaults to 120.
- ``stuck_sensor`` (any): ``metric`` (required) repeats the value it had when the fault began.
- ``malformed_payload`` (any): ``every_n`` (default 5): every n-th telemetry message from the
  start of the fault is replaced by a truncated, invalid JSON frame.

Every kind accepts ``duration_s``; without it the fault lasts until the simulation ends.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from simulator.fleet import DeviceSpec, metric_names

__all__ = [
    "FAULT_KINDS",
    "FaultRecord",
    "FaultSpec",
    "parse_fault",
    "validate_fault",
]

# kind -> device kinds it applies to (None: any device)
FAULT_KINDS: dict[str, tuple[str, ...] | None] = {
    "dc_connector_overheat": ("charger_dc",),
    "dc_fan_failure": ("charger_dc",),
    "pv_string_fault": ("pv_inverter",),
    "transformer_overload": ("box_transformer",),
    "insulation_decline": ("charger_dc",),
    "inverter_overtemp": ("pv_inverter",),
    "transformer_cooling_loss": ("box_transformer",),
    "device_offline": None,
    "stuck_sensor": None,
    "malformed_payload": None,
}


@dataclass(frozen=True)
class FaultSpec:
    """A fault to inject: `kind` on `device_id`, `start_after_s` simulated seconds after start."""

    kind: str
    device_id: str
    start_after_s: float
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FaultRecord:
    """Ground truth: a fault that actually happened, when, and to what."""

    kind: str
    device_id: str
    started_at: datetime
    detail: str
    ended_at: datetime | None = None


def _number(spec: FaultSpec, key: str, default: float) -> float:
    value = spec.params.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"fault {spec.kind} on {spec.device_id}: {key} must be a number, got {value!r}")
    return float(value)


def validate_fault(spec: FaultSpec, devices: Mapping[str, DeviceSpec]) -> None:
    """Refuse a fault that could not happen as written, naming what is wrong."""
    if spec.kind not in FAULT_KINDS:
        raise ValueError(f"unknown fault kind {spec.kind!r}; known kinds: {', '.join(FAULT_KINDS)}")
    device = devices.get(spec.device_id)
    if device is None:
        raise ValueError(f"fault {spec.kind}: no device {spec.device_id!r} in the fleet")
    allowed = FAULT_KINDS[spec.kind]
    if allowed is not None and device.kind not in allowed:
        raise ValueError(f"fault {spec.kind} needs a {' or '.join(allowed)} device; {device.id} is a {device.kind}")
    if spec.start_after_s < 0:
        raise ValueError(f"fault {spec.kind} on {device.id}: start_after_s must be >= 0")
    if "duration_s" in spec.params and _number(spec, "duration_s", 0.0) <= 0:
        raise ValueError(f"fault {spec.kind} on {device.id}: duration_s must be > 0")
    if spec.kind == "dc_connector_overheat":
        if spec.params.get("gun", 1) not in (1, 2):
            raise ValueError(f"fault {spec.kind} on {device.id}: gun must be 1 or 2")
        if _number(spec, "rise_k_per_min", 75.0) <= 0:
            raise ValueError(f"fault {spec.kind} on {device.id}: rise_k_per_min must be > 0")
        _number(spec, "cap_c", 130.0)
    elif spec.kind == "pv_string_fault":
        string = spec.params.get("string", 1)
        if not isinstance(string, int) or not 1 <= string <= device.strings:
            raise ValueError(f"fault {spec.kind} on {device.id}: string must be 1..{device.strings}")
        if not 0.0 <= _number(spec, "factor", 0.0) <= 1.0:
            raise ValueError(f"fault {spec.kind} on {device.id}: factor must be within 0..1")
    elif spec.kind == "transformer_overload":
        if _number(spec, "extra_kva", 0.6 * device.rated_kw) <= 0:
            raise ValueError(f"fault {spec.kind} on {device.id}: extra_kva must be > 0")
    elif spec.kind == "insulation_decline":
        if _number(spec, "halving_h", 1.0) <= 0:
            raise ValueError(f"fault {spec.kind} on {device.id}: halving_h must be > 0")
        if _number(spec, "floor_kohm", 40.0) < 0:
            raise ValueError(f"fault {spec.kind} on {device.id}: floor_kohm must be >= 0")
    elif spec.kind in ("inverter_overtemp", "transformer_cooling_loss"):
        if _number(spec, "factor", 2.0) <= 1.0:
            raise ValueError(f"fault {spec.kind} on {device.id}: factor must be > 1 (1 is healthy cooling)")
    elif spec.kind == "stuck_sensor":
        metric = spec.params.get("metric")
        if metric not in metric_names(device):
            raise ValueError(
                f"fault {spec.kind} on {device.id}: metric must be one of {', '.join(metric_names(device))}, "
                f"got {metric!r}"
            )
    elif spec.kind == "malformed_payload":
        every_n = spec.params.get("every_n", 5)
        if not isinstance(every_n, int) or isinstance(every_n, bool) or every_n < 1:
            raise ValueError(f"fault {spec.kind} on {device.id}: every_n must be an integer >= 1")


def _parse_value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            continue
    return text


def parse_fault(text: str, default_start_s: float = 10.0) -> FaultSpec:
    """Parse a command-line fault: ``KIND:DEVICE[:START_S][:key=value,key=value]``.

    Examples: ``dc_connector_overheat:DC02``, ``stuck_sensor:TX01:60:metric=top_oil_temp_c``.
    """
    parts = text.split(":")
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise ValueError(f"fault {text!r}: expected KIND:DEVICE[:START_S][:key=value,...]")
    kind, device_id, rest = parts[0], parts[1], parts[2:]
    start = default_start_s
    params: dict[str, Any] = {}
    for part in rest:
        if "=" in part:
            for item in part.split(","):
                key, sep, value = item.partition("=")
                if not sep or not key:
                    raise ValueError(f"fault {text!r}: parameter {item!r} is not key=value")
                params[key.strip()] = _parse_value(value.strip())
        elif part:
            try:
                start = float(part)
            except ValueError:
                raise ValueError(f"fault {text!r}: start {part!r} is not a number of seconds") from None
    return FaultSpec(kind=kind, device_id=device_id, start_after_s=start, params=params)
