"""Catalogue metric -> Prometheus family: base unit in the name, value scaled to that unit.

`gun1_power_kw` (kW) becomes `gridsentry_reading_gun_power_watts{gun="1"}` with the value x 1000;
`top_oil_temp_c` (°C) becomes `gridsentry_reading_top_oil_temp_celsius`. A numbered part (gun1,
string3) turns into a label so one panel can compare a device's guns or strings against each other.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

READING_PREFIX = "gridsentry_reading_"
#: Metrics that are not in the catalogue (no unit known) share one family, labelled with their name.
UNCATALOGUED_FAMILY = "gridsentry_reading_value"


@dataclass(frozen=True)
class BaseUnit:
    suffix: str  # Prometheus base-unit name suffix
    scale: float  # catalogue unit -> base unit
    grafana_unit: str  # how a dashboard shows the base unit


#: Catalogue unit -> Prometheus base unit. Keys are the units used in `metrics:` entries.
BASE_UNITS: dict[str, BaseUnit] = {
    "W": BaseUnit("watts", 1.0, "watt"),
    "kW": BaseUnit("watts", 1e3, "watt"),
    "MW": BaseUnit("watts", 1e6, "watt"),
    "Wh": BaseUnit("joules", 3600.0, "joule"),
    "kWh": BaseUnit("joules", 3.6e6, "joule"),
    "MWh": BaseUnit("joules", 3.6e9, "joule"),
    "VA": BaseUnit("volt_amperes", 1.0, "voltamp"),
    "kVA": BaseUnit("volt_amperes", 1e3, "voltamp"),
    "var": BaseUnit("volt_amperes_reactive", 1.0, "voltampreact"),
    "kvar": BaseUnit("volt_amperes_reactive", 1e3, "voltampreact"),
    "V": BaseUnit("volts", 1.0, "volt"),
    "kV": BaseUnit("volts", 1e3, "volt"),
    "A": BaseUnit("amperes", 1.0, "amp"),
    "°C": BaseUnit("celsius", 1.0, "celsius"),
    "Hz": BaseUnit("hertz", 1.0, "hertz"),
    "%": BaseUnit("ratio", 0.01, "percentunit"),
    "1": BaseUnit("ratio", 1.0, "percentunit"),
    "W/m²": BaseUnit("watts_per_square_meter", 1.0, "Wm2"),
    "s": BaseUnit("seconds", 1.0, "s"),
    "min": BaseUnit("seconds", 60.0, "s"),
    "h": BaseUnit("seconds", 3600.0, "s"),
}

# Unit abbreviations that end catalogue names (power_kw, top_oil_temp_c); dropped from the stem because
# the Prometheus name carries the base unit instead.
_UNIT_TOKENS = frozenset({"w", "kw", "mw", "wh", "kwh", "mwh", "va", "kva", "var", "kvar", "v", "kv", "a", "c"})
_UNIT_TOKENS |= {"hz", "pct", "wm2", "s", "min", "h", "ratio"}
_INDEXED = re.compile(r"^([a-z]+)(\d+)_(.+)$")
_INVALID = re.compile(r"[^a-zA-Z0-9_]")


@dataclass(frozen=True)
class ReadingFamily:
    """Where one catalogue metric goes in the exposition."""

    metric: str
    family: str
    help: str
    scale: float
    index_label: str | None = None  # e.g. "gun" for gun1_power_kw
    index_value: str | None = None
    unit: str | None = None  # the catalogue unit, for the docs

    @property
    def labels(self) -> tuple[str, ...]:
        return ("site", "kind", "device") + ((self.index_label,) if self.index_label else ())


def reading_family(metric: str, unit: str, description: str) -> ReadingFamily:
    base = BASE_UNITS.get(unit)
    m = _INDEXED.match(metric)
    index_label, index_value, rest = (m.group(1), m.group(2), m.group(3)) if m else (None, None, metric)
    tokens = rest.split("_")
    if len(tokens) > 1 and tokens[-1] in _UNIT_TOKENS:
        tokens = tokens[:-1]
    stem = "_".join(([index_label] if index_label else []) + tokens)
    stem = _INVALID.sub("_", stem)
    if base is None:
        # An unknown unit is kept as it is (scale 1) with a name that still says what it is.
        family = f"{READING_PREFIX}{stem}"
        help_text = f"{description} (latest reading, unit {unit}; catalogue metric pattern {_pattern(metric, m)})"
        return ReadingFamily(metric, family, help_text, 1.0, index_label, index_value, unit)
    family = f"{READING_PREFIX}{stem}_{base.suffix}"
    described = _strip_index(description) if index_label else description
    help_text = (
        f"{described}, latest reading in {base.suffix.replace('_', ' ')} (catalogue {_pattern(metric, m)} in {unit})"
    )
    return ReadingFamily(metric, family, help_text, base.scale, index_label, index_value, unit)


def _pattern(metric: str, m: re.Match[str] | None) -> str:
    return f"{m.group(1)}N_{m.group(3)}" if m else metric


def _strip_index(description: str) -> str:
    return re.sub(r"\b(gun|string|module|phase)\s+\d+\s*", r"\1 ", description).replace("  ", " ").strip()


def reading_families(catalogue: Iterable[tuple[str, str, str]]) -> dict[str, ReadingFamily]:
    """metric name -> family for (name, unit, description) entries; the first name keeps a shared family.

    Two catalogue metrics that would land in one family with the same labels (say `power_kw` and a custom
    `power_w`) would collide on one series; the later one falls back to its full name instead.
    """
    out: dict[str, ReadingFamily] = {}
    owners: dict[tuple[str, str | None, str | None], str] = {}
    help_of: dict[str, str] = {}
    for name, unit, description in catalogue:
        fam = reading_family(name, unit, description)
        key = (fam.family, fam.index_label, fam.index_value)
        other_labels = {f.index_label for f in out.values() if f.family == fam.family}
        if key in owners or (other_labels and other_labels != {fam.index_label}):
            base = BASE_UNITS.get(unit)
            suffix = f"_{base.suffix}" if base else ""
            fam = ReadingFamily(
                name,
                f"{READING_PREFIX}{_INVALID.sub('_', name)}{suffix}",
                f"{description} (latest reading, catalogue {name} in {unit})",
                base.scale if base else 1.0,
                unit=unit,
            )
        # One family has one help text: the first metric's (gun1 and gun2 share it).
        fam = ReadingFamily(
            fam.metric,
            fam.family,
            help_of.setdefault(fam.family, fam.help),
            fam.scale,
            fam.index_label,
            fam.index_value,
            fam.unit,
        )
        owners[(fam.family, fam.index_label, fam.index_value)] = name
        out[name] = fam
    return out
