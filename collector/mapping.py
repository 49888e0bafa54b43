"""Per-device field mappings: vendor field names and units in, catalogue metrics out.

A data logger may publish `{"W": 5230, "TmpCab": 41.2}`; the mapping turns that into
`ac_power_kw = 5.23` and `heatsink_temp_c = 41.2`. Applied to whole Arrow batches with one join,
never per reading.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl
import pyarrow as pa

# (from, to) -> (scale, offset): value_to = value_from * scale + offset
_CONVERSIONS: dict[tuple[str, str], tuple[float, float]] = {
    ("W", "kW"): (0.001, 0.0),
    ("kW", "W"): (1000.0, 0.0),
    ("kW", "MW"): (0.001, 0.0),
    ("MW", "kW"): (1000.0, 0.0),
    ("Wh", "kWh"): (0.001, 0.0),
    ("kWh", "Wh"): (1000.0, 0.0),
    ("kWh", "MWh"): (0.001, 0.0),
    ("MWh", "kWh"): (1000.0, 0.0),
    ("VA", "kVA"): (0.001, 0.0),
    ("var", "kvar"): (0.001, 0.0),
    ("mA", "A"): (0.001, 0.0),
    ("mV", "V"): (0.001, 0.0),
    ("kV", "V"): (1000.0, 0.0),
    ("V", "kV"): (0.001, 0.0),
    ("°F", "°C"): (5 / 9, -32 * 5 / 9),
    ("K", "°C"): (1.0, -273.15),
    ("0.1°C", "°C"): (0.1, 0.0),
    ("Ω", "kΩ"): (0.001, 0.0),
    ("kΩ", "MΩ"): (0.001, 0.0),
    ("‰", "%"): (0.1, 0.0),
    ("1", "%"): (100.0, 0.0),
    ("%", "1"): (0.01, 0.0),
}


def unit_conversion(from_unit: str, to_unit: str) -> tuple[float, float]:
    """Scale and offset that turn a value in `from_unit` into `to_unit`."""
    if from_unit == to_unit:
        return 1.0, 0.0
    try:
        return _CONVERSIONS[(from_unit, to_unit)]
    except KeyError:
        known = ", ".join(sorted(f"{a}->{b}" for a, b in _CONVERSIONS))
        raise ValueError(
            f"no conversion from {from_unit!r} to {to_unit!r}; known: {known}; or give scale/offset instead"
        ) from None


@dataclass(frozen=True)
class FieldRule:
    device_id: str
    field: str  # the name in the payload
    metric: str  # the catalogue metric it becomes
    scale: float = 1.0
    offset: float = 0.0


class FieldMapper:
    def __init__(self, rules: list[FieldRule]) -> None:
        self._table = pl.DataFrame(
            {
                "device_id": [r.device_id for r in rules],
                "metric": [r.field for r in rules],
                "_to": [r.metric for r in rules],
                "_scale": [r.scale for r in rules],
                "_offset": [r.offset for r in rules],
            },
            schema={
                "device_id": pl.String,
                "metric": pl.String,
                "_to": pl.String,
                "_scale": pl.Float64,
                "_offset": pl.Float64,
            },
        ).unique(subset=["device_id", "metric"], keep="last")

    def __len__(self) -> int:
        return self._table.height

    def apply(self, readings: pa.Table) -> pa.Table:
        if self._table.height == 0 or readings.num_rows == 0:
            return readings
        frame = pl.from_arrow(readings)
        assert isinstance(frame, pl.DataFrame)
        mapped = frame.join(self._table, on=["device_id", "metric"], how="left", maintain_order="left").select(
            "ts",
            "device_id",
            pl.coalesce("_to", "metric").alias("metric"),
            (pl.col("value") * pl.col("_scale").fill_null(1.0) + pl.col("_offset").fill_null(0.0)).alias("value"),
            "quality",
        )
        return mapped.to_arrow().cast(readings.schema)
