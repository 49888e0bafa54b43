"""Configuration of Modbus collection: the `modbus:` block of a device, and the global `modbus:` section."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SerialSettings(_Model):
    port: str = Field(description="Serial device of the RS-485 adapter, e.g. /dev/ttyUSB0.")
    baudrate: int = Field(9600, description="Line speed; RS-485 field buses commonly run 9600 or 19200.")
    parity: Literal["N", "E", "O"] = Field("N", description="Parity: N none, E even, O odd.")
    stopbits: Literal[1, 2] = Field(1, description="Stop bits.")
    bytesize: Literal[7, 8] = Field(8, description="Data bits.")


class ModbusDeviceConfig(_Model):
    transport: Literal["tcp", "rtu", "rtu_over_tcp"] = Field(
        "tcp",
        description="tcp: Modbus TCP; rtu: RTU on a serial line (set serial:); rtu_over_tcp: RTU frames through a "
        "TCP gateway (many unit ids on one connection).",
    )
    host: str | None = Field(None, description="Device or gateway address (tcp, rtu_over_tcp).")
    port: int = Field(502, ge=1, le=65535, description="TCP port (Modbus TCP uses 502).")
    serial: SerialSettings | None = Field(None, description="Serial line settings (transport rtu).")
    unit: int = Field(1, ge=0, le=255, description="Unit (slave) id; 1-247 on serial lines and behind gateways.")
    map: str = Field(
        "sunspec",
        description="Register map: a shipped map name (box_transformer_tc, box_transformer_meter, dc_charger_vendor, "
        "meter_3ph), a map name in modbus.map_dirs, a .yaml path, or sunspec for automatic SunSpec discovery.",
    )
    interval_s: float = Field(10.0, gt=0, le=86_400, description="Poll interval of this device.")
    timeout_s: float = Field(1.0, gt=0, le=60, description="How long to wait for one response.")
    retries: int = Field(1, ge=0, le=10, description="Extra attempts of a request that timed out, within one poll.")
    max_backoff_s: float = Field(
        300.0, gt=0, le=3600, description="A failing device is polled less and less often, down to once per this."
    )
    offline_after: int = Field(
        3, ge=1, le=100, description="Failed polls in a row after which the device is reported offline (an event)."
    )

    @model_validator(mode="after")
    def _endpoint(self) -> ModbusDeviceConfig:
        if self.transport == "rtu":
            if self.serial is None:
                raise ValueError("transport rtu needs serial: (port, baudrate, parity...)")
        elif self.host is None:
            raise ValueError(f"transport {self.transport} needs host: (the device or gateway address)")
        return self

    @property
    def link_key(self) -> str:
        """Devices with the same key share one connection (a gateway, a serial line)."""
        if self.transport == "rtu":
            assert self.serial is not None
            return f"rtu:{self.serial.port}"
        return f"{self.transport}:{self.host}:{self.port}"

    @property
    def endpoint(self) -> str:
        if self.transport == "rtu":
            assert self.serial is not None
            return f"{self.serial.port} unit {self.unit}"
        return f"{self.host}:{self.port} unit {self.unit}"


class ModbusConfig(_Model):
    map_dirs: list[Path] = Field(
        default_factory=list, description="Directories with your own register maps (searched before the shipped ones)."
    )
    flush_interval_ms: int = Field(
        250, ge=10, le=10_000, description="Poll results of all devices are committed together at this pace."
    )
    map_check_interval_s: float = Field(
        5.0,
        ge=0,
        le=3600,
        description="How often map files are checked for changes and reloaded (0: never). A broken map is "
        "refused and the running one kept.",
    )


def check_device_maps(
    devices: list[tuple[str, ModbusDeviceConfig]], map_dirs: list[Path], units: dict[str, str] | None = None
) -> list[str]:
    """Every problem of the maps the devices name (file and line), for `gridsentry config check`.

    With `units` (the metric catalogue), a point whose unit differs from its metric's catalogue unit
    is a problem too: rules and screens would show a W value as kW.
    """
    from collector.modbus.maps import MapError, load_map_file, point_lines, resolve_map

    problems: list[str] = []
    checked: dict[Path, list[str]] = {}
    for device_id, cfg in devices:
        if cfg.map == "sunspec":
            continue
        try:
            path = resolve_map(cfg.map, map_dirs).resolve()
            if path not in checked:
                try:
                    register_map = load_map_file(path)
                    lines = point_lines(path)
                    checked[path] = [
                        f"{path}:{lines.get(i, '?')}: points[{i}] ({p.metric}): unit {p.unit!r} differs from the "
                        f"catalogue's {units[p.metric]!r} for this metric; scale the value to "
                        f"{units[p.metric]} (scale:) and say unit: {units[p.metric]}, or name another metric"
                        for i, p in enumerate(register_map.points)
                        if units and p.unit is not None and p.metric in units and p.unit != units[p.metric]
                    ]
                except MapError as exc:
                    checked[path] = [str(i) for i in exc.issues]
            problems += [f"device {device_id}: register map {p}" for p in checked[path]]
        except MapError as exc:
            problems += [f"device {device_id}: {i.message}" for i in exc.issues]
    return problems
