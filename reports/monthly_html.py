"""The monthly report as one self-contained HTML page: print CSS (A4, tables kept whole, no dark
backgrounds), inline SVG charts, no script and no external resource, so it opens offline and as a mail
attachment."""

from __future__ import annotations

import jinja2

from reports.monthly_model import MonthlyReport
from reports.monthly_render import fmt_minutes, fmt_number, fmt_pct, fmt_time, window_line
from reports.svg_charts import PALETTE, daily_columns, horizontal_bars

__all__ = ["render_html"]

_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Monthly operations report {{ r.month }}{% if r.site %} — site {{ r.site }}{% endif %}</title>
<style>
  body { font: 14px/1.4 "Noto Sans", "Noto Sans CJK SC", Arial, sans-serif; color: #111; margin: 24px auto;
         max-width: 1100px; padding: 0 16px; }
  h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 17px; margin-top: 28px; border-bottom: 2px solid #1f6fb2; }
  table { border-collapse: collapse; margin: 8px 0 12px; font-variant-numeric: tabular-nums; }
  th, td { border: 1px solid #bbb; padding: 3px 8px; } th { background: #eef3f8; text-align: left; }
  td.n { text-align: right; white-space: nowrap; } tr.total td { font-weight: bold; } .muted { fill: #666; color: #666; }
  .chart { display: block; margin: 6px 0 14px; max-width: 100%; height: auto; font-size: 11px; }
  .chart-title { font-weight: bold; font-size: 12px; } .charts { display: flex; flex-wrap: wrap; gap: 12px 32px; }
  .bad { color: #b23a48; font-weight: bold; }
  @page { size: A4; margin: 14mm 12mm; }
  @media print {
    body { margin: 0; max-width: none; font-size: 10.5pt; padding: 0; }
    table { font-size: 8.5pt; } th, td { padding: 2px 4px; }
    td.when { white-space: normal; }
    section { break-inside: avoid-page; } table, .chart { break-inside: avoid; }
    h2 { break-after: avoid; } th { background: #eee !important; -webkit-print-color-adjust: exact;
    print-color-adjust: exact; } rect { print-color-adjust: exact; -webkit-print-color-adjust: exact; }
  }
</style>
</head>
<body>
<header>
<h1>Monthly operations report {{ r.month }}{% if r.site %} — site {{ r.site }}{% endif %}</h1>
<p>{{ window }}</p>
{% for n in r.notes %}<p class="bad">Note: {{ n }}</p>
{% endfor %}</header>

<section id="daily">
<h2>Energy per day</h2>
{% if r.daily %}{{ daily_chart }}{% else %}<p>No energy figures for this month.</p>{% endif %}
</section>

<section id="chargers">
<h2>Chargers</h2>
<table>
<tr><th>Device</th><th>Site</th><th>Uses</th><th>kWh charged</th><th>Utilisation</th><th>Availability</th><th>Faults</th></tr>
{% for c in r.chargers %}<tr><td>{{ c.device_id }}</td><td>{{ c.site }}</td><td class="n">{{ c.uses }}</td>
<td class="n">{{ "%.1f"|format(c.energy_kwh) }}</td><td class="n">{{ pct(c.utilisation) }}</td>
<td class="n">{{ pct(c.availability) }}</td><td class="n{% if c.faults %} bad{% endif %}">{{ c.faults }}</td></tr>
{% endfor %}<tr class="total"><td>All</td><td></td><td class="n">{{ total_uses }}</td><td class="n">{{ "%.1f"|format(total_kwh) }}</td>
<td></td><td></td><td class="n">{{ total_faults }}</td></tr>
</table>
<div class="charts">{{ charger_chart }}{{ availability_chart }}</div>
</section>

<section id="pv">
<h2>PV generation</h2>
{% if r.inverters %}
<table>
<tr><th>Inverter</th><th>Site</th><th>kWp</th><th>kWh generated</th><th>kWh/kWp</th><th>Insolation kWh/m²</th>
<th>PR</th><th>Availability</th><th>Faults</th><th>Last reading</th><th>Status at end</th></tr>
{% for i in r.inverters %}<tr><td>{{ i.device_id }}</td><td>{{ i.site }}</td><td class="n">{{ num(i.peak_kwp) }}</td>
<td class="n">{{ "%.1f"|format(i.energy_kwh) }}</td><td class="n">{{ num(i.specific_yield, 2) }}</td>
<td class="n">{{ num(i.insolation_kwh_m2, 2) }}</td><td class="n">{{ pct(i.performance_ratio) }}</td>
<td class="n">{{ pct(i.availability) }}</td><td class="n">{{ i.faults }}</td><td class="when">{{ when(i.last_reading) }}</td>
<td{% if i.silent or i.open_alerts %} class="bad"{% endif %}>{{ i.status }}</td></tr>
{% endfor %}</table>
<table>
<tr><th>Plant (site)</th><th>Inverters</th><th>kWp</th><th>kWh generated</th><th>kWh/kWp</th><th>PR</th></tr>
{% for p in r.plants %}<tr><td>{{ p.site }}</td><td class="n">{{ p.inverters }}</td><td class="n">{{ num(p.peak_kwp) }}</td>
<td class="n">{{ "%.1f"|format(p.energy_kwh) }}</td><td class="n">{{ num(p.specific_yield, 2) }}</td>
<td class="n">{{ pct(p.performance_ratio) }}</td></tr>
{% endfor %}</table>
{{ pv_chart }}
{% else %}<p>No PV inverters in scope.</p>{% endif %}
</section>

<section id="transformers">
<h2>Box transformers</h2>
{% if r.transformers %}
<table>
<tr><th>Transformer</th><th>Site</th><th>Rated kVA</th><th>Peak load factor</th><th>Peak at</th><th>Mean load factor</th>
<th>Hours above rated</th><th>Top oil max °C</th></tr>
{% for t in r.transformers %}<tr><td>{{ t.device_id }}</td><td>{{ t.site }}</td><td class="n">{{ num(t.rated_kva, 0) }}</td>
<td class="n{% if (t.peak_load_factor or 0) > 1 %} bad{% endif %}">{{ pct(t.peak_load_factor) }}</td><td>{{ when(t.peak_at) }}</td>
<td class="n">{{ pct(t.mean_load_factor) }}</td><td class="n">{{ "%.2f"|format(t.hours_above_rated) }}</td>
<td class="n">{{ num(t.top_oil_max_c) }}</td></tr>
{% endfor %}</table>
{{ load_chart }}
{% else %}<p>No box transformers in scope.</p>{% endif %}
</section>

<section id="sla">
<h2>Alerts and service levels</h2>
<table>
<tr><th>Class</th><th>Events</th><th>Response timeliness</th><th>Resolution rate</th><th>Resolved in time</th>
<th>MTTA</th><th>MTTR</th><th>SLA breaches</th></tr>
{% for k in r.kpis %}<tr><td>{{ k.event_class }}</td><td class="n">{{ k.events }}</td>
<td class="n">{{ pct(k.response_timeliness_rate) }}</td><td class="n">{{ pct(k.resolution_rate) }}</td>
<td class="n">{{ pct(k.resolved_in_time_rate) }}</td><td class="n">{{ minutes(k.mtta_s) }}</td>
<td class="n">{{ minutes(k.mttr_s) }}</td><td class="n{% if k.sla_breaches %} bad{% endif %}">{{ k.sla_breaches }}</td></tr>
{% endfor %}</table>
<div class="charts">{{ response_chart }}{{ resolution_chart }}</div>
</section>

<section id="completeness">
<h2>Data completeness</h2>
{% if r.completeness %}
<table>
<tr><th>Device</th><th>Site</th><th>Kind</th><th>Interval s</th><th>Readings expected</th><th>Stored</th><th>Completeness</th></tr>
{% for c in r.completeness %}<tr><td>{{ c.device_id }}</td><td>{{ c.site }}</td><td>{{ c.kind }}</td>
<td class="n">{{ "%g"|format(c.interval_s) }}</td><td class="n">{{ c.expected }}</td><td class="n">{{ c.stored }}</td>
<td class="n{% if c.ratio is not none and c.ratio < 0.99 %} bad{% endif %}">{{ pct(c.ratio) }}</td></tr>
{% endfor %}</table>
{{ completeness_chart }}
{% else %}<p>No readings in the month: nothing to compare.</p>{% endif %}
</section>
<footer><p class="muted">GridSentry · times in {{ r.timezone }} · definitions in docs/reports.md</p></footer>
</body>
</html>
"""

_ENV = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def render_html(report: MonthlyReport) -> str:
    r = report
    days = [d.day for d in r.daily]
    kpi_rows = [k for k in r.kpis if k.event_class != "all"]
    return _ENV.from_string(_TEMPLATE).render(
        r=r,
        window=window_line(r),
        pct=fmt_pct,
        num=fmt_number,
        minutes=fmt_minutes,
        when=fmt_time,
        total_uses=sum(c.uses for c in r.chargers),
        total_kwh=sum(c.energy_kwh for c in r.chargers),
        total_faults=sum(c.faults for c in r.chargers),
        daily_chart=(
            daily_columns(
                "kWh per day",
                days,
                [("Charged", [d.charged_kwh for d in r.daily]), ("Generated (PV)", [d.generated_kwh for d in r.daily])],
                "kWh",
            )
        ),
        load_chart=daily_columns(
            "Peak load factor per day (100 % = rated kVA)",
            days,
            [("Peak load factor", [d.peak_load_factor or 0.0 for d in r.daily])],
            "%",
            reference=1.0,
        ),
        charger_chart=(horizontal_bars("kWh charged", [(c.device_id, c.energy_kwh) for c in r.chargers], "kWh")),
        availability_chart=(
            horizontal_bars(
                "Availability",
                [(c.device_id, c.availability) for c in r.chargers],
                "%",
                full_scale=1.0,
                color=PALETTE[2],
            )
        ),
        pv_chart=(
            horizontal_bars(
                "Specific yield kWh/kWp",
                [(i.device_id, i.specific_yield) for i in r.inverters],
                "kWh/kWp",
                color=PALETTE[1],
            )
        ),
        response_chart=(
            horizontal_bars(
                "Response timeliness by class",
                [(f"class {k.event_class}", k.response_timeliness_rate) for k in kpi_rows],
                "%",
                full_scale=1.0,
            )
        ),
        resolution_chart=(
            horizontal_bars(
                "Resolution rate by class",
                [(f"class {k.event_class}", k.resolution_rate) for k in kpi_rows],
                "%",
                full_scale=1.0,
                color=PALETTE[2],
            )
        ),
        completeness_chart=(
            horizontal_bars(
                "Data completeness",
                [(c.device_id, c.ratio) for c in r.completeness],
                "%",
                full_scale=1.0,
                color=PALETTE[3],
            )
        ),
    )
