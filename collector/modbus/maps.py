"""Register maps as data: the schema of `collector/maps/*.yaml` and its loader.

A map lists the points of one device model: where each value lives (function code, address),
how it is encoded (type, byte and word order), how raw becomes physical (scale, offset, or a
SunSpec scale-factor point), and what status and alarm words mean (enumerations and bit meanings
that become events). GridSentry only reads: function codes 1-4, never a write.

Loading names the file and line of every problem, so an operator can fix a map without guessing.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from storage.yamlsource import dotted_path, load_yaml_with_lines, nearest_line

PointType = Literal[
    "bit", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "string", "bitfield"
]
ByteOrder = Literal["ABCD", "CDAB", "BADC", "DCBA"]
FunctionCode = Literal[1, 2, 3, 4]

#: Registers each fixed-size type occupies; strings and bitfields take `length`.
TYPE_REGISTERS: dict[str, int] = {
    "bit": 1,  # one coil or discrete input (counted in bits, not registers)
    "int16": 1,
    "uint16": 1,
    "int32": 2,
    "uint32": 2,
    "int64": 4,
    "uint64": 4,
    "float32": 2,
    "float64": 4,
}
INTEGER_TYPES = frozenset({"int16", "uint16", "int32", "uint32", "int64", "uint64"})

#: Protocol limits (Modbus application protocol v1.1b3, §6.1-6.4).
MAX_REGISTERS_PER_READ = 125
MAX_BITS_PER_READ = 2000
TABLE_NAMES = {1: "coils", 2: "discrete inputs", 3: "holding registers", 4: "input registers"}

BUILTIN_MAP_DIR = Path(__file__).resolve().parent.parent / "maps"
_METRIC_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Point(_Model):
    metric: str = Field(
        description="Metric name the value is stored under (snake_case, unit suffix: top_oil_temp_c, active_power_kw)."
    )
    fc: FunctionCode = Field(
        description="Function code to read it with: 1 coils, 2 discrete inputs, 3 holding registers, 4 input registers."
    )
    address: int = Field(ge=0, description="Address as the vendor's map gives it (see the map's `base`).")
    type: PointType = Field(
        description="bit, int16, uint16, int32, uint32, int64, uint64, float32, float64, string or bitfield."
    )
    byte_order: ByteOrder = Field(
        "ABCD",
        description="ABCD big-endian (Modbus norm), CDAB word-swapped, BADC byte-swapped, DCBA little-endian.",
    )
    length: int | None = Field(
        None, ge=1, le=125, description="Registers of a string (2 characters each) or bitfield (1, 2 or 4)."
    )
    scale: float = Field(1.0, description="Physical value = raw x scale + offset (e.g. 0.1 for 0.1 °C/bit).")
    offset: float = Field(0.0, description="Added after scaling (e.g. -50 for a temperature sent +50 °C).")
    scale_factor: str | None = Field(
        None,
        description="Name of another point of this map holding a power-of-ten exponent (SunSpec *_SF): "
        "value = raw x 10^sf x scale + offset.",
    )
    unit: str | None = Field(None, description="Unit of the stored value as operators read it: kW, kWh, °C, V, A, %.")
    description: str = Field("", description="What the point measures, for people reading the map.")
    sentinel: int | None = Field(
        None,
        description="Raw value the device sends when the point is not implemented (SunSpec 0x8000, 0xFFFF); "
        "such a reading is skipped.",
    )
    enum: dict[int, str] | None = Field(
        None, description="Status word: raw value -> state name. A change becomes an event, not a reading."
    )
    bits: dict[int, str] | None = Field(
        None, description="Alarm word: bit number (0 = least significant) -> alarm name. Each bit change is an event."
    )
    event_kind: str | None = Field(
        None, description="Event kind for enum/bit/string points (default: status, alarm or info)."
    )

    @field_validator("metric")
    @classmethod
    def _metric_name(cls, v: str) -> str:
        if not _METRIC_NAME.match(v):
            raise ValueError(f"metric name {v!r} must be snake_case: lower-case letters, digits and _")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Point:
        if (self.type == "bit") != (self.fc in (1, 2)):
            raise ValueError(
                f"type {self.type!r} does not fit function code {self.fc}: "
                "bits are read with fc 1 (coils) or 2 (discrete inputs), registers with fc 3 or 4"
            )
        if self.type == "string" and self.length is None:
            raise ValueError("a string point needs `length` (registers; 2 characters each)")
        if self.type == "bitfield":
            if self.length not in (None, 1, 2, 4):
                raise ValueError("a bitfield is 1, 2 or 4 registers long")
            if not self.bits:
                raise ValueError("a bitfield point needs `bits` (bit number -> alarm name)")
        elif self.type != "string" and self.length is not None:
            raise ValueError(f"`length` only applies to string and bitfield points, not {self.type}")
        if self.enum is not None and self.type not in INTEGER_TYPES:
            raise ValueError(f"`enum` needs an integer type (int16/uint16/...), not {self.type}")
        if self.bits is not None:
            if self.type not in INTEGER_TYPES | {"bitfield"}:
                raise ValueError(f"`bits` needs a bitfield or unsigned integer type, not {self.type}")
            width = 16 * self.register_count
            bad = [b for b in self.bits if not 0 <= b < width]
            if bad:
                raise ValueError(f"bit numbers {bad} do not fit a {width}-bit word (0..{width - 1})")
        if self.enum is not None and self.bits is not None:
            raise ValueError("a point has either `enum` (status word) or `bits` (alarm word), not both")
        return self

    @property
    def register_count(self) -> int:
        if self.type in ("string", "bitfield"):
            return self.length or 1
        return TYPE_REGISTERS[self.type]

    @property
    def is_event(self) -> bool:
        return self.enum is not None or self.bits is not None or self.type == "string"

    @property
    def kind_of_event(self) -> str:
        if self.event_kind:
            return self.event_kind
        if self.bits is not None:
            return "alarm"
        if self.enum is not None:
            return "status"
        return "info"


class RegisterMap(_Model):
    name: str = Field(description="Map name devices refer to (the file name without .yaml).")
    description: str = Field("", description="The device model(s) the map is for.")
    vendor: str | None = Field(None, description="Manufacturer.")
    base: Literal[0, 1] = Field(
        0,
        description="0: addresses are protocol addresses (0-65535); 1: the vendor counts registers from 1 "
        "(register 1 is sent as address 0).",
    )
    max_registers_per_read: int = Field(
        MAX_REGISTERS_PER_READ,
        ge=1,
        le=MAX_REGISTERS_PER_READ,
        description="Largest register read this device accepts (protocol cap 125).",
    )
    max_bits_per_read: int = Field(
        MAX_BITS_PER_READ, ge=1, le=MAX_BITS_PER_READ, description="Largest coil/input read (protocol cap 2000)."
    )
    max_gap: int = Field(
        4,
        ge=0,
        le=100,
        description="Unused registers a merged read may span between two points (0: only adjacent points merge).",
    )
    points: list[Point] = Field(min_length=1, description="The values to read.")

    @model_validator(mode="after")
    def _check_points(self) -> RegisterMap:
        seen: dict[str, int] = {}
        for i, p in enumerate(self.points):
            if p.metric in seen:
                raise ValueError(f"points[{i}] repeats metric {p.metric!r} of points[{seen[p.metric]}]")
            seen[p.metric] = i
            start = p.address - self.base
            if start < 0:
                raise ValueError(f"points[{i}] ({p.metric}): address {p.address} is below the map's base {self.base}")
            end = start + p.register_count - 1
            if end > 65535:
                raise ValueError(
                    f"points[{i}] ({p.metric}): address {p.address} + {p.register_count} registers ends at "
                    f"{end}, past the last Modbus address 65535"
                )
        for i, p in enumerate(self.points):
            if p.scale_factor is not None:
                j = seen.get(p.scale_factor)
                if j is None:
                    raise ValueError(f"points[{i}] ({p.metric}): scale_factor {p.scale_factor!r} is not a point")
                if self.points[j].type != "int16":
                    raise ValueError(f"points[{i}] ({p.metric}): scale factor {p.scale_factor!r} must be an int16")
        by_table: dict[int, list[tuple[int, int, int]]] = {}
        for i, p in enumerate(self.points):
            by_table.setdefault(p.fc, []).append((p.address - self.base, p.register_count, i))
        for fc, spans in by_table.items():
            spans.sort()
            for (a_start, a_len, a_i), (b_start, _b_len, b_i) in itertools.pairwise(spans):
                if b_start < a_start + a_len:
                    a, b = self.points[a_i], self.points[b_i]
                    raise ValueError(
                        f"points[{b_i}] ({b.metric}) at address {b.address} overlaps points[{a_i}] ({a.metric}) "
                        f"at {a.address} ({a.register_count} {'bits' if fc in (1, 2) else 'registers'}) in the "
                        f"{TABLE_NAMES[fc]}"
                    )
        return self

    def protocol_address(self, point: Point) -> int:
        return point.address - self.base


@dataclass(frozen=True)
class MapIssue:
    file: Path | None
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = "" if self.file is None else f"{self.file}" + (f":{self.line}" if self.line is not None else "")
        return ": ".join(part for part in (where, self.path, self.message) if part)


class MapError(Exception):
    """A register map that cannot be used; carries every problem with file and line."""

    def __init__(self, issues: list[MapIssue]):
        self.issues = issues
        super().__init__("; ".join(str(i) for i in issues))


def parse_map(text: str, file: Path | None = None) -> RegisterMap:
    try:
        raw, lines = load_yaml_with_lines(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise MapError([MapIssue(file, line, "(yaml)", f"not valid YAML: {exc}")]) from None
    if not isinstance(raw, dict):
        raise MapError([MapIssue(file, 1, "(top level)", "a register map is a mapping with name and points")])
    if file is not None:
        raw.setdefault("name", file.stem)
    try:
        return RegisterMap.model_validate(raw)
    except ValidationError as exc:
        issues = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            msg = str(err["msg"]).removeprefix("Value error, ")
            # Whole-map checks name the offending point; point to its line rather than the top.
            m = re.match(r"points\[(\d+)\]", msg)
            if not loc and m:
                loc = ("points", int(m.group(1)))
            if err["type"] == "extra_forbidden":
                msg = "unknown key (check its spelling; docs/modbus.md lists every key)"
            elif isinstance(err.get("input"), bool) and err["type"] == "string_type":
                # YAML 1.1 reads OFF/ON/YES/NO as booleans: the classic trap in enumeration names.
                msg = f"{msg} (YAML read it as {err['input']}: quote names like 'OFF', 'ON', 'NO')"
            elif err["type"] in ("literal_error", "string_type", "int_type", "int_parsing") and "input" in err:
                msg = f"{msg} (got {err['input']!r})"
            issues.append(MapIssue(file, nearest_line(lines, loc), dotted_path(loc), msg))
        raise MapError(issues) from None


def load_map_file(path: Path) -> RegisterMap:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise MapError([MapIssue(path, None, "(file)", f"cannot read the map: {exc.strerror}")]) from None
    return parse_map(text, path)


def point_lines(path: Path) -> dict[int, int]:
    """Line of each point of a (valid) map file, for messages about its points."""
    _raw, lines = load_yaml_with_lines(path.read_text(encoding="utf-8"))
    return {
        loc[1]: line for loc, line in lines.items() if len(loc) == 2 and loc[0] == "points" and isinstance(loc[1], int)
    }


def builtin_maps() -> list[str]:
    return sorted(p.stem for p in BUILTIN_MAP_DIR.glob("*.yaml"))


def resolve_map(name: str, map_dirs: list[Path] | tuple[Path, ...] = ()) -> Path:
    """A map named by file path, or by name in the configured directories, then the shipped ones."""
    if name.endswith((".yaml", ".yml")) or "/" in name:
        return Path(name)
    for d in [*map_dirs, BUILTIN_MAP_DIR]:
        candidate: Path = Path(d) / f"{name}.yaml"
        if candidate.exists():
            return candidate
    searched = ", ".join(str(d) for d in [*map_dirs, BUILTIN_MAP_DIR])
    raise MapError(
        [
            MapIssue(
                None,
                None,
                "",
                f"no register map named {name!r} in {searched}; shipped maps: {', '.join(builtin_maps())}, "
                "or `sunspec` for SunSpec discovery",
            )
        ]
    )
