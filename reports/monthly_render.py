"""The monthly report as Markdown (e-mail, chat, the CLI) and XLSX (one sheet per section, numbers as numbers)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import xlsxwriter  # type: ignore[import-untyped]

from reports.monthly_model import MonthlyReport, as_datetime

__all__ = [
    "XLSX_SHEETS",
    "fmt_minutes",
    "fmt_number",
    "fmt_pct",
    "fmt_time",
    "render_markdown",
    "window_line",
    "write_xlsx",
]

XLSX_SHEETS = ("Chargers", "PV", "Transformers", "SLA", "Completeness", "Daily")


def fmt_pct(v: float | None) -> str:
    return "–" if v is None else f"{100.0 * v:.1f} %"


def fmt_minutes(v: float | None) -> str:
    return "–" if v is None else f"{v / 60.0:.1f} min"


def fmt_number(v: float | None, digits: int = 1) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def fmt_time(v: str | None) -> str:
    when = as_datetime(v)
    return "–" if when is None else when.strftime("%Y-%m-%d %H:%M")


def window_line(report: MonthlyReport) -> str:
    if report.window_start is None:
        return "No readings are stored for this month: the sections below show sessions, faults and alerts only."
    return (
        f"Observed window {fmt_time(report.window_start)} – {fmt_time(report.window_end)} "
        f"({report.observed_hours:.1f} h) in {report.timezone}."
    )


def render_markdown(report: MonthlyReport) -> str:
    where = f" — site {report.site}" if report.site else ""
    lines = [f"# Monthly operations report {report.month}{where}", "", f"Times in {report.timezone}.", ""]
    lines += [window_line(report), ""]
    lines += [f"> Note: {n}" for n in report.notes] + ([""] if report.notes else [])
    lines += ["## Chargers", ""]
    lines += [
        "| Device | Site | Uses | kWh charged | Utilisation | Availability | Faults |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {c.device_id} | {c.site} | {c.uses} | {c.energy_kwh:.1f} | {fmt_pct(c.utilisation)} | "
        f"{fmt_pct(c.availability)} | {c.faults} |"
        for c in report.chargers
    ]
    total_kwh = sum(c.energy_kwh for c in report.chargers)
    lines += [
        f"| **All** | | {sum(c.uses for c in report.chargers)} | {total_kwh:.1f} | | | "
        f"{sum(c.faults for c in report.chargers)} |",
        "",
        "## PV generation",
        "",
    ]
    if report.inverters:
        lines += [
            "| Inverter | Site | kWp | kWh generated | kWh/kWp | Insolation kWh/m² | PR | Availability | Faults | "
            "Status at end |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        lines += [
            f"| {i.device_id} | {i.site} | {fmt_number(i.peak_kwp)} | {i.energy_kwh:.1f} | "
            f"{fmt_number(i.specific_yield, 2)} | {fmt_number(i.insolation_kwh_m2, 2)} | "
            f"{fmt_pct(i.performance_ratio)} | {fmt_pct(i.availability)} | {i.faults} | {i.status} |"
            for i in report.inverters
        ]
        lines += [
            "",
            "| Plant (site) | Inverters | kWp | kWh generated | kWh/kWp | PR |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {p.site} | {p.inverters} | {fmt_number(p.peak_kwp)} | {p.energy_kwh:.1f} | "
            f"{fmt_number(p.specific_yield, 2)} | {fmt_pct(p.performance_ratio)} |"
            for p in report.plants
        ]
    else:
        lines.append("No PV inverters in scope.")
    lines += ["", "## Box transformers", ""]
    if report.transformers:
        lines += [
            "| Transformer | Site | Rated kVA | Peak load factor | Peak at | Mean load factor | "
            "Hours above rated | Top oil max °C |",
            "|---|---|---:|---:|---|---:|---:|---:|",
        ]
        lines += [
            f"| {t.device_id} | {t.site} | {fmt_number(t.rated_kva, 0)} | {fmt_pct(t.peak_load_factor)} | "
            f"{fmt_time(t.peak_at)} | {fmt_pct(t.mean_load_factor)} | {t.hours_above_rated:.2f} | "
            f"{fmt_number(t.top_oil_max_c)} |"
            for t in report.transformers
        ]
    else:
        lines.append("No box transformers in scope.")
    lines += [
        "",
        "## Alerts and service levels",
        "",
        "| Class | Events | Response timeliness | Resolution rate | Resolved in time | MTTA | MTTR | SLA breaches |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {k.event_class} | {k.events} | {fmt_pct(k.response_timeliness_rate)} | {fmt_pct(k.resolution_rate)} | "
        f"{fmt_pct(k.resolved_in_time_rate)} | {fmt_minutes(k.mtta_s)} | {fmt_minutes(k.mttr_s)} | {k.sla_breaches} |"
        for k in report.kpis
    ]
    lines += ["", "## Data completeness", ""]
    if report.completeness:
        lines += [
            "| Device | Site | Kind | Interval s | Readings expected | Stored | Completeness |",
            "|---|---|---|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {c.device_id} | {c.site} | {c.kind} | {c.interval_s:g} | {c.expected} | {c.stored} | "
            f"{fmt_pct(c.ratio)} |"
            for c in report.completeness
        ]
    else:
        lines.append("No readings in the month: nothing to compare.")
    return "\n".join(lines) + "\n"


def write_xlsx(report: MonthlyReport, path: Path) -> None:
    """The same figures as the Markdown, one sheet per section (XLSX_SHEETS), numbers as numbers."""
    with xlsxwriter.Workbook(str(path), {"remove_timezone": True}) as book:
        bold = book.add_format({"bold": True, "text_wrap": True, "valign": "top"})
        one = book.add_format({"num_format": "0.0"})
        two = book.add_format({"num_format": "0.00"})
        pct = book.add_format({"num_format": "0.0%"})
        when = book.add_format({"num_format": "yyyy-mm-dd hh:mm"})
        day_fmt = book.add_format({"num_format": "yyyy-mm-dd"})

        def sheet(name: str, header: list[str]) -> xlsxwriter.worksheet.Worksheet:
            ws = book.add_worksheet(name)
            ws.write_row(0, 0, header, bold)
            ws.set_column(0, len(header) - 1, 15)
            ws.freeze_panes(1, 1)
            return ws

        def put(ws: xlsxwriter.worksheet.Worksheet, row: int, col: int, value: object, style: object = None) -> None:
            # Missing figures stay empty cells, not zeros, so sums and averages in the sheet stay honest.
            if value is None:
                return
            if isinstance(value, datetime):
                ws.write_datetime(row, col, value.replace(tzinfo=None), when)
            elif isinstance(value, str):
                ws.write_string(row, col, value)
            elif style is None:
                ws.write(row, col, value)
            else:
                ws.write(row, col, value, style)

        def put_row(ws: xlsxwriter.worksheet.Worksheet, row: int, cells: list[tuple[object, object]]) -> None:
            for col, (value, style) in enumerate(cells):
                put(ws, row, col, value, style)

        ws = sheet(
            "Chargers", ["Device", "Uses", "kWh charged", "Faults", "Site", "Utilisation", "Availability", "Rated kW"]
        )
        for r, c in enumerate(report.chargers, start=1):
            put_row(
                ws,
                r,
                [
                    (c.device_id, None),
                    (c.uses, None),
                    (c.energy_kwh, one),
                    (c.faults, None),
                    (c.site, None),
                    (c.utilisation, pct),
                    (c.availability, pct),
                    (c.rated_kw, None),
                ],
            )
        ws = sheet(
            "PV",
            ["Inverter", "Site", "kWp", "kWh generated", "kWh/kWp", "Insolation kWh/m²", "PR", "Availability",
             "Faults", "Open alerts at end", "Last reading", "Status at end"],
        )  # fmt: skip
        for r, i in enumerate(report.inverters, start=1):
            put_row(
                ws,
                r,
                [
                    (i.device_id, None),
                    (i.site, None),
                    (i.peak_kwp, one),
                    (i.energy_kwh, one),
                    (i.specific_yield, two),
                    (i.insolation_kwh_m2, two),
                    (i.performance_ratio, pct),
                    (i.availability, pct),
                    (i.faults, None),
                    (i.open_alerts, None),
                    (as_datetime(i.last_reading), None),
                    (i.status, None),
                ],
            )
        base = len(report.inverters) + 2
        ws.write_row(base, 0, ["Plant (site)", "Inverters", "kWp", "kWh generated", "kWh/kWp", "PR"], bold)
        for r, p in enumerate(report.plants, start=base + 1):
            put_row(
                ws,
                r,
                [
                    (p.site, None),
                    (p.inverters, None),
                    (p.peak_kwp, one),
                    (p.energy_kwh, one),
                    (p.specific_yield, two),
                    (p.performance_ratio, pct),
                ],
            )
        ws = sheet(
            "Transformers",
            ["Transformer", "Site", "Rated kVA", "Peak load factor", "Peak at", "Mean load factor",
             "Hours above rated", "Top oil max °C"],
        )  # fmt: skip
        for r, t in enumerate(report.transformers, start=1):
            put_row(
                ws,
                r,
                [
                    (t.device_id, None),
                    (t.site, None),
                    (t.rated_kva, None),
                    (t.peak_load_factor, pct),
                    (as_datetime(t.peak_at), None),
                    (t.mean_load_factor, pct),
                    (t.hours_above_rated, two),
                    (t.top_oil_max_c, one),
                ],
            )
        ws = sheet(
            "SLA",
            ["Class", "Events", "Response timeliness", "Resolution rate", "MTTA (min)", "MTTR (min)", "Breaches",
             "Resolved in time"],
        )  # fmt: skip
        for r, k in enumerate(report.kpis, start=1):
            put_row(
                ws,
                r,
                [
                    (k.event_class, None),
                    (k.events, None),
                    (k.response_timeliness_rate, pct),
                    (k.resolution_rate, pct),
                    (None if k.mtta_s is None else k.mtta_s / 60.0, one),
                    (None if k.mttr_s is None else k.mttr_s / 60.0, one),
                    (k.sla_breaches, None),
                    (k.resolved_in_time_rate, pct),
                ],
            )
        ws = sheet(
            "Completeness", ["Device", "Site", "Kind", "Interval (s)", "Readings expected", "Stored", "Completeness"]
        )
        for r, dc in enumerate(report.completeness, start=1):
            put_row(
                ws,
                r,
                [
                    (dc.device_id, None),
                    (dc.site, None),
                    (dc.kind, None),
                    (dc.interval_s, None),
                    (dc.expected, None),
                    (dc.stored, None),
                    (dc.ratio, pct),
                ],
            )
        ws = sheet("Daily", ["Day", "kWh charged", "kWh generated", "Peak load factor"])
        for r, d in enumerate(report.daily, start=1):
            ws.write_datetime(r, 0, datetime.fromisoformat(d.day), day_fmt)
            put(ws, r, 1, d.charged_kwh, one)
            put(ws, r, 2, d.generated_kwh, one)
            put(ws, r, 3, d.peak_load_factor, pct)
