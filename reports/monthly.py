"""The monthly operations report, charger and SLA sections: per charger uses, kWh charged and faults
(the bid's promise), and the alert KPIs per event class, reused from `alerts.kpi`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo

import duckdb
import xlsxwriter  # type: ignore[import-untyped]

from alerts.kpi import ClassKpi, month_bounds, monthly_kpis

__all__ = ["ChargerMonth", "MonthlyReport", "build_monthly", "render_markdown", "write_xlsx"]


@dataclass(frozen=True)
class ChargerMonth:
    device_id: str
    uses: int  # sessions started in the month
    energy_kwh: float  # kWh of the sessions started in the month that have stopped
    faults: int  # fault events raised (clearing codes such as NoError are not faults)


@dataclass(frozen=True)
class MonthlyReport:
    month: str
    site: str | None
    timezone: str
    chargers: list[ChargerMonth]
    kpis: list[ClassKpi]


def build_monthly(con: duckdb.DuckDBPyConnection, month: str, zone: ZoneInfo, site: str | None = None) -> MonthlyReport:
    """Figures for `month` (YYYY-MM) in the contract's time zone; `site` limits the chargers to one site."""
    start, end = month_bounds(month, zone)
    rows = con.execute(
        """
        WITH chargers AS (
            SELECT device_id FROM devices
            WHERE kind IN ('charger_ac', 'charger_dc') AND (CAST(? AS VARCHAR) IS NULL OR site = ?)
        ),
        s AS (
            SELECT device_id, count(*) AS uses, coalesce(sum(energy_kwh), 0) AS kwh
            FROM charging_sessions WHERE started_at >= ? AND started_at < ? GROUP BY device_id
        ),
        f AS (
            SELECT device_id, count(*) AS faults FROM events
            WHERE kind = 'fault' AND code <> 'NoError' AND ts >= ? AND ts < ? GROUP BY device_id
        )
        SELECT c.device_id, coalesce(s.uses, 0), coalesce(s.kwh, 0.0), coalesce(f.faults, 0)
        FROM chargers c LEFT JOIN s USING (device_id) LEFT JOIN f USING (device_id)
        ORDER BY c.device_id
        """,
        [site, site, start, end, start, end],
    ).fetchall()
    chargers = [ChargerMonth(str(r[0]), int(r[1]), float(r[2]), int(r[3])) for r in rows]
    return MonthlyReport(month, site, zone.key, chargers, monthly_kpis(con, month, zone))


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100.0 * v:.1f} %"


def _minutes(v: float | None) -> str:
    return "–" if v is None else f"{v / 60.0:.1f} min"


def render_markdown(report: MonthlyReport) -> str:
    where = f" — site {report.site}" if report.site else ""
    lines = [
        f"# Monthly operations report {report.month}{where}",
        "",
        f"Times in {report.timezone}.",
        "",
        "## Chargers",
        "",
        "| Device | Uses | kWh charged | Faults |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {c.device_id} | {c.uses} | {c.energy_kwh:.1f} | {c.faults} |" for c in report.chargers]
    total_kwh = sum(c.energy_kwh for c in report.chargers)
    lines += [
        f"| **All** | {sum(c.uses for c in report.chargers)} | {total_kwh:.1f} | "
        f"{sum(c.faults for c in report.chargers)} |",
        "",
        "## Alerts and service levels",
        "",
        "| Class | Events | Response timeliness | Resolution rate | MTTA | MTTR | SLA breaches |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {k.event_class} | {k.events} | {_pct(k.response_timeliness_rate)} | {_pct(k.resolution_rate)} | "
        f"{_minutes(k.mtta_s)} | {_minutes(k.mttr_s)} | {k.sla_breaches} |"
        for k in report.kpis
    ]
    return "\n".join(lines) + "\n"


def write_xlsx(report: MonthlyReport, path: Path) -> None:
    """The same figures as the Markdown, one sheet per section, numbers as numbers (kWh, %, minutes)."""
    with xlsxwriter.Workbook(str(path)) as book:
        bold = book.add_format({"bold": True})
        kwh = book.add_format({"num_format": "0.0"})
        pct = book.add_format({"num_format": "0.0%"})
        chargers = book.add_worksheet("Chargers")
        chargers.write_row(0, 0, ["Device", "Uses", "kWh charged", "Faults"], bold)
        for i, c in enumerate(report.chargers, start=1):
            chargers.write_row(i, 0, [c.device_id, c.uses])
            chargers.write_number(i, 2, c.energy_kwh, kwh)
            chargers.write_number(i, 3, c.faults)
        chargers.set_column(0, 3, 14)
        sla = book.add_worksheet("SLA")
        header = ["Class", "Events", "Response timeliness", "Resolution rate", "MTTA (min)", "MTTR (min)", "Breaches"]
        sla.write_row(0, 0, header, bold)
        for i, k in enumerate(report.kpis, start=1):
            sla.write_row(i, 0, [k.event_class, k.events])
            for col, rate in ((2, k.response_timeliness_rate), (3, k.resolution_rate)):
                if rate is not None:
                    sla.write_number(i, col, rate, pct)
            for col, secs in ((4, k.mtta_s), (5, k.mttr_s)):
                if secs is not None:
                    sla.write_number(i, col, secs / 60.0, kwh)
            sla.write_number(i, 6, k.sla_breaches)
        sla.set_column(0, 6, 18)
