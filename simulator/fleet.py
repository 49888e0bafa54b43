"""The simulated equipment ledger: sites, devices and the metrics each kind publishes.

Metric names carry their unit in the suffix; `METRIC_UNITS` is the catalogue the service can
load so a reading never arrives with a unit nobody wrote down.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "DEVICE_KINDS",
    "MAX_PV_STRINGS",
    "METRIC_UNITS",
    "DeviceSpec",
    "SiteSpec",
    "demo_fleet",
    "demo_site",
    "metric_names",
]

DEVICE_KINDS = ("charger_ac", "charger_dc", "pv_inverter", "box_transformer")

# The unit catalogue lists strings up to this index; inverters with more strings are refused
# rather than publishing metrics the catalogue does not know.
MAX_PV_STRINGS = 8


@dataclass(frozen=True)
class SiteSpec:
    """A site: where it is decides the sun, and the time zone decides the daily load curve."""

    id: str
    name: str
    latitude: float
    longitude: float
    timezone: str


@dataclass(frozen=True)
class DeviceSpec:
    """One device of the fleet, as the equipment ledger would describe it."""

    id: str
    site: str
    kind: str  # "charger_ac" | "charger_dc" | "pv_inverter" | "box_transformer"
    vendor: str
    model: str
    rated_kw: float  # box transformers: rated kVA
    parent: str | None  # the transformer feeding this device
    interval_s: float
    tags: tuple[str, ...] = ()
    strings: int = 0  # PV inverters: number of strings

    def __post_init__(self) -> None:
        if self.kind not in DEVICE_KINDS:
            raise ValueError(f"device {self.id!r}: kind {self.kind!r} is not one of {', '.join(DEVICE_KINDS)}")
        if self.interval_s <= 0:
            raise ValueError(f"device {self.id!r}: interval_s must be > 0, got {self.interval_s}")
        if self.rated_kw <= 0:
            raise ValueError(f"device {self.id!r}: rated_kw must be > 0, got {self.rated_kw}")
        if self.kind == "pv_inverter" and not 1 <= self.strings <= MAX_PV_STRINGS:
            raise ValueError(f"device {self.id!r}: a pv_inverter needs 1..{MAX_PV_STRINGS} strings, got {self.strings}")


_AC_METRICS = ("power_kw", "energy_kwh", "voltage_v", "current_a", "connector_temp_c")
_DC_METRICS = (
    "gun1_power_kw",
    "gun2_power_kw",
    "gun1_voltage_v",
    "gun2_voltage_v",
    "gun1_current_a",
    "gun2_current_a",
    "gun1_temp_c",
    "gun2_temp_c",
    "gun1_soc_pct",
    "gun2_soc_pct",
    "module_temp_c",
    "cabinet_temp_c",
    "input_power_kw",
    "energy_kwh",
    "insulation_kohm",
)
_PV_HEAD = ("ac_power_kw", "dc_power_kw", "energy_kwh", "dc_voltage_v")
_PV_TAIL = ("heatsink_temp_c", "irradiance_wm2", "ambient_temp_c")
_TX_METRICS = (
    "load_kva",
    "load_factor",
    "top_oil_temp_c",
    "hot_spot_temp_c",
    "ambient_temp_c",
    "lv_voltage_v",
    "lv_current_a",
)


def metric_names(device: DeviceSpec) -> tuple[str, ...]:
    """Every metric the device publishes, in payload order."""
    if device.kind == "charger_ac":
        return _AC_METRICS
    if device.kind == "charger_dc":
        return _DC_METRICS
    if device.kind == "pv_inverter":
        strings = tuple(f"string{i}_current_a" for i in range(1, device.strings + 1))
        return _PV_HEAD + strings + _PV_TAIL
    return _TX_METRICS


def _unit_of(metric: str) -> str:
    suffixes = {
        "_kwh": "kWh",
        "_kw": "kW",
        "_kva": "kVA",
        "_v": "V",
        "_a": "A",
        "_c": "°C",
        "_pct": "%",
        "_wm2": "W/m²",
        "_kohm": "kΩ",
    }
    for suffix, unit in suffixes.items():
        if metric.endswith(suffix):
            return unit
    return "1"


def _all_metrics() -> list[str]:
    names: list[str] = []
    strings = tuple(f"string{i}_current_a" for i in range(1, MAX_PV_STRINGS + 1))
    for group in (_AC_METRICS, _DC_METRICS, _PV_HEAD, strings, _PV_TAIL, _TX_METRICS):
        names.extend(name for name in group if name not in names)
    return names


METRIC_UNITS: dict[str, str] = {name: _unit_of(name) for name in _all_metrics()}


def demo_site() -> SiteSpec:
    """The demo charging hub in Shenzhen."""
    return SiteSpec(id="demo", name="Demo charging hub", latitude=22.54, longitude=114.06, timezone="Asia/Shanghai")


def demo_fleet(site: str = "demo", interval_s: float = 1.0) -> list[DeviceSpec]:
    """A small hub: 4 AC piles, 2 dual-gun DC piles and 2 PV inverters behind one box transformer."""
    tx = "TX01"
    devices: list[DeviceSpec] = [
        DeviceSpec(
            id=f"AC{i:02d}",
            site=site,
            kind="charger_ac",
            vendor="Lingxi Power",
            model="LX-AC7K-G1",
            rated_kw=7.0,
            parent=tx,
            interval_s=interval_s,
            tags=("carport-a",),
        )
        for i in range(1, 5)
    ]
    devices += [
        DeviceSpec(
            id=f"DC{i:02d}",
            site=site,
            kind="charger_dc",
            vendor="Qianhai Charging Systems",
            model="QH-DC120-2G",
            rated_kw=120.0,
            parent=tx,
            interval_s=interval_s,
            tags=("fast-lane",),
        )
        for i in range(1, 3)
    ]
    devices += [
        DeviceSpec(
            id=f"INV{i:02d}",
            site=site,
            kind="pv_inverter",
            vendor="Nanshan Solar Electric",
            model="NS-50K-MT4",
            rated_kw=50.0,
            parent=tx,
            interval_s=interval_s,
            tags=("carport-roof",),
            strings=4,
        )
        for i in range(1, 3)
    ]
    devices.append(
        DeviceSpec(
            id=tx,
            site=site,
            kind="box_transformer",
            vendor="Pearl River Transformer Works",
            model="ZGS11-630/10",
            rated_kw=630.0,
            parent=None,
            interval_s=interval_s,
            tags=("onan",),
        )
    )
    return devices
