"""Small inline SVG charts, drawn on the server: the HTML report works offline, prints, and needs no script.

Only two shapes are needed (labelled horizontal bars; daily columns in series), so plain SVG elements are
simpler and lighter than a charting dependency. All text is escaped.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from markupsafe import Markup

__all__ = ["PALETTE", "daily_columns", "horizontal_bars"]

PALETTE = ("#1f6fb2", "#e08a1e", "#3a9d5d", "#b23a48")


def _fmt(value: float, unit: str) -> str:
    if unit == "%":
        return f"{100.0 * value:.1f} %"
    return f"{value:,.1f} {unit}".strip()


def horizontal_bars(
    title: str,
    rows: Sequence[tuple[str, float | None]],
    unit: str,
    *,
    full_scale: float | None = None,
    color: str = PALETTE[0],
) -> Markup:
    """One bar per row, value printed at its end; `unit` "%" takes values as fractions and scales to 100 %."""
    label_w, bar_w, row_h, top = 110, 330, 20, 26
    scale = full_scale if full_scale is not None else max((v for _, v in rows if v is not None), default=0.0)
    scale = scale or 1.0
    height = top + row_h * len(rows) + 8
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" aria-label="{escape(title)}" '
        f'viewBox="0 0 {label_w + bar_w + 110} {height}" width="{label_w + bar_w + 110}" height="{height}">',
        f'<text x="0" y="16" class="chart-title">{escape(title)}</text>',
    ]
    for i, (label, value) in enumerate(rows):
        y = top + i * row_h
        parts.append(f'<text x="{label_w - 6}" y="{y + 14}" text-anchor="end">{escape(label)}</text>')
        if value is None:
            parts.append(f'<text x="{label_w + 4}" y="{y + 14}" class="muted">no data</text>')
            continue
        width = max(0.0, min(1.0, value / scale)) * bar_w
        parts.append(f'<rect x="{label_w}" y="{y + 3}" width="{width:.1f}" height="{row_h - 6}" fill="{color}"/>')
        parts.append(f'<text x="{label_w + width + 4:.1f}" y="{y + 14}">{escape(_fmt(value, unit))}</text>')
    parts.append("</svg>")
    # Every text above went through escape(); the rest are numbers this module formatted.
    return Markup("".join(parts))  # noqa: S704  # nosec B704


def daily_columns(
    title: str,
    days: Sequence[str],
    series: Sequence[tuple[str, Sequence[float]]],
    unit: str,
    *,
    reference: float | None = None,
) -> Markup:
    """Columns per day, one colour per series side by side, with a legend, a labelled maximum and, if given,
    a dashed reference line (e.g. rated load)."""
    left, plot_w, plot_h, top = 56.0, 640.0, 160.0, 40.0
    n = max(1, len(days))
    peak = max([v for _, values in series for v in values] + [reference or 0.0]) or 1.0
    slot = plot_w / n
    col_w = max(1.0, slot * 0.8 / max(1, len(series)))
    height = top + plot_h + 34
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" aria-label="{escape(title)}" '
        f'viewBox="0 0 {left + plot_w + 10} {height}" width="{left + plot_w + 10}" height="{height}">',
        f'<text x="0" y="16" class="chart-title">{escape(title)}</text>',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#888"/>',
        f'<text x="{left - 4}" y="{top + 4}" text-anchor="end" class="muted">{escape(_fmt(peak, unit))}</text>',
        f'<line x1="{left}" y1="{top}" x2="{left + plot_w}" y2="{top}" stroke="#ddd"/>',
    ]
    if reference is not None:
        y = top + plot_h - reference / peak * plot_h
        parts.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#b23a48" stroke-dasharray="4 3"/>'
        )
        parts.append(f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end">{escape(_fmt(reference, unit))}</text>')
    for s, (name, _) in enumerate(series):
        x = left + s * 150
        parts.append(f'<rect x="{x}" y="24" width="10" height="10" fill="{PALETTE[s % len(PALETTE)]}"/>')
        parts.append(f'<text x="{x + 14}" y="33">{escape(name)}</text>')
    for d, day in enumerate(days):
        for s, (_, values) in enumerate(series):
            value = values[d] if d < len(values) else 0.0
            h = max(0.0, value / peak) * plot_h
            x = left + d * slot + slot * 0.1 + s * col_w
            parts.append(
                f'<rect x="{x:.1f}" y="{top + plot_h - h:.1f}" width="{col_w:.1f}" height="{h:.1f}" '
                f'fill="{PALETTE[s % len(PALETTE)]}"><title>{escape(day)}: {escape(_fmt(value, unit))}</title></rect>'
            )
        if n <= 12 or d % max(1, n // 10) == 0:
            parts.append(
                f'<text x="{left + d * slot + slot / 2:.1f}" y="{top + plot_h + 14}" text-anchor="middle" '
                f'class="muted">{escape(day[-2:])}</text>'
            )
    parts.append("</svg>")
    # Every text above went through escape(); the rest are numbers this module formatted.
    return Markup("".join(parts))  # noqa: S704  # nosec B704
