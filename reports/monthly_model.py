"""The figures of the monthly operations report, as plain data the renderers (Markdown, HTML, XLSX) share.

Every figure is defined in docs/reports.md; `reports.monthly.build_monthly` computes them. Times and days are
ISO 8601 strings in the report's time zone (`2026-02-13T13:30:00+08:00`, `2026-02-13`), so
`dataclasses.asdict(report)` is JSON as it stands (the API's JSON format); `as_datetime` reads them back.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from alerts.kpi import ClassKpi

__all__ = [
    "ChargerMonth",
    "DataCompleteness",
    "DayFigures",
    "InverterMonth",
    "MonthlyReport",
    "PlantMonth",
    "TransformerMonth",
    "as_datetime",
]


def as_datetime(iso: str | None) -> datetime | None:
    return None if iso is None else datetime.fromisoformat(iso)


@dataclass(frozen=True)
class ChargerMonth:
    device_id: str
    uses: int  # sessions started in the month
    energy_kwh: float  # kWh of the sessions started in the month that have stopped
    faults: int  # fault events raised (clearing codes such as NoError are not faults)
    site: str = ""
    rated_kw: float | None = None
    utilisation: float | None = None  # kWh charged / (rated kW x observed hours)
    availability: float | None = None  # share of the observed window not down (fault or silent)


@dataclass(frozen=True)
class InverterMonth:
    device_id: str
    site: str
    peak_kwp: float | None  # the array's DC nameplate: the ledger's rated_kw for a PV inverter
    energy_kwh: float  # increases of the lifetime energy counter in the observed window
    specific_yield: float | None  # kWh / kWp
    insolation_kwh_m2: float | None  # in-plane irradiation from the inverter's irradiance readings
    performance_ratio: float | None  # None where no irradiance was measured
    availability: float | None
    faults: int
    open_alerts: int  # alerts not yet resolved or closed at the end of the observed window
    last_reading: str | None  # ISO 8601, local time
    silent: bool  # no reading in the last 3 intervals of the observed window

    @property
    def status(self) -> str:
        if self.last_reading is None:
            return "no data"
        state = "silent" if self.silent else "reporting"
        if self.open_alerts:
            return f"{state}, {self.open_alerts} open alert{'s' if self.open_alerts > 1 else ''}"
        return state if self.silent else "in service"


@dataclass(frozen=True)
class PlantMonth:
    site: str
    inverters: int
    peak_kwp: float | None
    energy_kwh: float
    specific_yield: float | None
    performance_ratio: float | None  # kWp-weighted over the inverters that measure irradiance


@dataclass(frozen=True)
class TransformerMonth:
    device_id: str
    site: str
    rated_kva: float | None
    peak_load_factor: float | None
    peak_at: str | None  # ISO 8601, local time
    mean_load_factor: float | None
    hours_above_rated: float  # hours with load factor > 1.0
    top_oil_max_c: float | None


@dataclass(frozen=True)
class DataCompleteness:
    device_id: str
    site: str
    kind: str
    interval_s: float
    expected: int  # readings the device's interval promises in the observed window
    stored: int  # distinct reading times stored in it

    @property
    def ratio(self) -> float | None:
        return self.stored / self.expected if self.expected else None


@dataclass(frozen=True)
class DayFigures:
    day: str  # local day in the report's time zone, YYYY-MM-DD
    charged_kwh: float
    generated_kwh: float
    peak_load_factor: float | None


@dataclass(frozen=True)
class MonthlyReport:
    month: str
    site: str | None
    timezone: str
    chargers: list[ChargerMonth]
    kpis: list[ClassKpi]
    window_start: str | None = None  # the observed window (ISO 8601): the month, cut to when readings exist
    window_end: str | None = None
    inverters: tuple[InverterMonth, ...] = ()
    plants: tuple[PlantMonth, ...] = ()
    transformers: tuple[TransformerMonth, ...] = ()
    completeness: tuple[DataCompleteness, ...] = ()
    daily: tuple[DayFigures, ...] = ()
    notes: tuple[str, ...] = ()  # what the reader must know about the figures (ledger problems)

    @property
    def observed_hours(self) -> float:
        start, end = as_datetime(self.window_start), as_datetime(self.window_end)
        if start is None or end is None:
            return 0.0
        return (end - start).total_seconds() / 3600.0
