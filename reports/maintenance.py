"""Fault rates and maintenance priorities: which device models fail most per 1,000 operating hours, and
which devices to visit first.

Operating hours are the hours in which a device reported at least one good reading (distinct buckets of
`rollup_1h`), so a device that was offline or switched off does not dilute its model's rate. Faults are
counted from two sources, kept apart in the table: fault codes the device itself reported (`events` of
kind `fault`; clearing codes such as NoError are not faults) and alerts GridSentry raised (`alerts`,
suppressed ones excluded: they paged no one because something else explained them; trend forecasts
excluded: they announce a fault, they are not one).

The visit score adds four factors, each capped, so one loud factor cannot hide the others (docs/reports.md
has the table): an open trend forecast (the sooner a limit is reached, the more points), open alerts and
recent faults, age since commissioning, and degradation against peers (a connector running hotter than
its twins, a PV string producing less than the strings beside it, an inverter yielding less per kWp than
the site's other inverters). Every point comes with a sentence an operator can act on.
"""

from __future__ import annotations

import csv
import io
import re
import statistics
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import duckdb

__all__ = [
    "FaultRate",
    "MaintenanceReport",
    "ScoreWeights",
    "VisitPriority",
    "build_maintenance",
    "forecast_seconds",
    "render_csv",
    "render_json",
    "render_markdown",
]

FAULT_EVENT_CLEARING_CODES = ("NoError",)
_DURATION_PART = re.compile(r"(\d+)\s*(d|h|min|s)\b")
_UNIT_SECONDS = {"d": 86400, "h": 3600, "min": 60, "s": 1}
# A per-kind metric whose excess over the same kind's peers at the site means wear: connector contacts
# heat up before they fail (domain.md §3.1); PV strings are compared with the strings of their own inverter.
_HOT_METRICS: dict[str, tuple[str, ...]] = {
    "charger_dc": ("gun1_temp_c", "gun2_temp_c", "module_temp_c"),
    "charger_ac": ("connector_temp_c",),
    "box_transformer": ("top_oil_temp_c",),
    "pv_inverter": ("heatsink_temp_c",),
}
_STRING_METRIC = re.compile(r"^string(\d+)_current_a$")
_STRING_MIN_MEDIAN_A = 1.0  # hours whose median string current is lower are dawn/dusk/night: not compared


@dataclass(frozen=True)
class ScoreWeights:
    """Points of each factor (the caps keep one factor from drowning the others)."""

    forecast_max: float = 40.0  # a limit reached now; linearly less until `forecast_horizon_h`
    forecast_horizon_h: float = 24.0
    alert_points: tuple[tuple[str, float], ...] = (("I", 15.0), ("II", 10.0), ("III", 5.0))
    alerts_max: float = 25.0
    fault_points: float = 3.0  # per fault in the recent window
    faults_max: float = 15.0
    age_points_per_year: float = 2.0
    age_max: float = 10.0
    hot_points_per_k: float = 2.0  # per kelvin above the peers' median, beyond `hot_tolerance_k`
    hot_tolerance_k: float = 3.0
    deficit_points_per_pct: float = 0.5  # per percent of output below peers, beyond `deficit_tolerance_pct`
    deficit_tolerance_pct: float = 5.0
    degradation_max: float = 20.0


@dataclass(frozen=True)
class FaultRate:
    device_kind: str
    model: str
    source: str  # "device fault code" | "GridSentry alert"
    fault: str  # the fault code the device reported, or the id of the rule that raised the alert
    devices: int  # devices of this kind and model in scope
    operating_hours: float  # summed over those devices
    faults: int
    per_1000_h: float | None


@dataclass(frozen=True)
class ModelTotal:
    device_kind: str
    model: str
    devices: int
    operating_hours: float
    faults: int
    per_1000_h: float | None


@dataclass(frozen=True)
class VisitPriority:
    rank: int
    device_id: str
    site: str
    device_kind: str
    model: str
    score: float
    factors: dict[str, float]  # forecast, alerts, faults, age, degradation -> points
    reasons: list[str]  # in operators' words, biggest factor first


@dataclass(frozen=True)
class MaintenanceReport:
    start: datetime
    end: datetime
    timezone: str
    site: str | None
    fault_rates: list[FaultRate]
    model_totals: list[ModelTotal]
    priorities: list[VisitPriority]
    notes: list[str] = field(default_factory=list)


def forecast_seconds(text: str | None) -> float | None:
    """Seconds to the limit from a trend alert's forecast text ("reaches 95 °C in about 3 h 20 min");
    0 when it "has reached" it; None when it no longer heads there or the text carries no time."""
    if not text:
        return None
    if text.startswith("has reached"):
        return 0.0
    if text.startswith("no longer") or " in about " not in text:
        return None
    tail = text.rsplit(" in about ", 1)[1]
    parts = _DURATION_PART.findall(tail)
    if not parts:
        return None
    return float(sum(int(n) * _UNIT_SECONDS[u] for n, u in parts))


def _duration(seconds: float) -> str:
    if seconds < 60:
        return "now"
    minutes = round(seconds / 60)
    if minutes < 120:
        return f"{minutes} min"
    hours = seconds / 3600
    return f"{hours:.0f} h" if hours < 48 else f"{hours / 24:.1f} d"


def build_maintenance(
    con: duckdb.DuckDBPyConnection,
    *,
    now: datetime | None = None,
    days: int = 30,
    site: str | None = None,
    zone: ZoneInfo | None = None,
    recent_days: int = 30,
    peer_days: int = 7,
    weights: ScoreWeights | None = None,
    limit: int | None = None,
) -> MaintenanceReport:
    """Fault rates over the `days` before `now`, and devices ranked by visit score (highest first)."""
    if days <= 0 or recent_days <= 0 or peer_days <= 0:
        raise ValueError("--days (and the recent/peer windows) must be a positive number of days")
    w = weights or ScoreWeights()
    now = (now or datetime.now(UTC)).astimezone(UTC)
    start = now - timedelta(days=days)
    zone = zone or ZoneInfo("UTC")
    devices = con.execute(
        "SELECT device_id, site, kind, coalesce(model, '(model unknown)'), commissioned FROM devices "
        "WHERE CAST(? AS VARCHAR) IS NULL OR site = ? ORDER BY device_id",
        [site, site],
    ).fetchall()
    notes: list[str] = []
    if site is not None and not devices:
        raise ValueError(f"site {site!r} has no devices in the ledger; check the site id (gridsentry devices list)")
    ledger = {str(r[0]): (str(r[1]), str(r[2]), str(r[3]), r[4]) for r in devices}
    rates, totals = _fault_rates(con, ledger, start, now)
    priorities = _priorities(con, ledger, now, recent_days, peer_days, w)
    if limit is not None:
        priorities = priorities[:limit]
    if not any(r[3] for r in ledger.values()):
        notes.append(
            "No commissioning dates in the ledger: age is not scored. Add `commissioned: YYYY-MM-DD` to the devices."
        )
    return MaintenanceReport(start, now, zone.key, site, rates, totals, priorities, notes)


def _fault_rates(
    con: duckdb.DuckDBPyConnection,
    ledger: dict[str, tuple[str, str, str, date | None]],
    start: datetime,
    end: datetime,
) -> tuple[list[FaultRate], list[ModelTotal]]:
    hours = dict(
        con.execute(
            "SELECT device_id, count(DISTINCT bucket) FROM rollup_1h WHERE bucket >= ? AND bucket < ? AND count > 0 "
            "GROUP BY device_id",
            [start, end],
        ).fetchall()
    )
    faults = con.execute(
        """
        SELECT device_id, 'device fault code' AS source, code AS fault, count(*) FROM events
        WHERE kind = 'fault' AND code NOT IN (SELECT unnest(?)) AND ts >= ? AND ts < ? GROUP BY ALL
        UNION ALL
        SELECT device_id, 'GridSentry alert', rule_id, count(*) FROM alerts
        WHERE created_at >= ? AND created_at < ? AND suppressed IS NULL AND forecast IS NULL GROUP BY ALL
        """,
        [list(FAULT_EVENT_CLEARING_CODES), start, end, start, end],
    ).fetchall()
    group_devices: dict[tuple[str, str], int] = {}
    group_hours: dict[tuple[str, str], float] = {}
    for device_id, (_site, kind, model, _comm) in ledger.items():
        key = (kind, model)
        group_devices[key] = group_devices.get(key, 0) + 1
        group_hours[key] = group_hours.get(key, 0.0) + float(hours.get(device_id, 0))
    counts: dict[tuple[str, str, str, str], int] = {}
    for device_id, source, fault, n in faults:
        if device_id not in ledger:
            continue
        _site, kind, model, _comm = ledger[device_id]
        key4 = (kind, model, str(source), str(fault))
        counts[key4] = counts.get(key4, 0) + int(n)

    def rate(n: int, h: float) -> float | None:
        return 1000.0 * n / h if h > 0 else None

    rates = [
        FaultRate(kind, model, source, fault, group_devices[(kind, model)], group_hours[(kind, model)], n,
                  rate(n, group_hours[(kind, model)]))
        for (kind, model, source, fault), n in counts.items()
    ]  # fmt: skip
    rates.sort(key=lambda r: (-(r.per_1000_h or 0.0), -r.faults, r.device_kind, r.model, r.fault))
    totals = []
    for (kind, model), n_dev in group_devices.items():
        n = sum(v for k, v in counts.items() if k[0] == kind and k[1] == model)
        totals.append(
            ModelTotal(kind, model, n_dev, group_hours[(kind, model)], n, rate(n, group_hours[(kind, model)]))
        )
    totals.sort(key=lambda t: (-(t.per_1000_h or 0.0), t.device_kind, t.model))
    return rates, totals


def _priorities(
    con: duckdb.DuckDBPyConnection,
    ledger: dict[str, tuple[str, str, str, date | None]],
    now: datetime,
    recent_days: int,
    peer_days: int,
    w: ScoreWeights,
) -> list[VisitPriority]:
    factors: dict[str, dict[str, float]] = {d: {} for d in ledger}
    reasons: dict[str, list[tuple[float, str]]] = {d: [] for d in ledger}

    def add(device_id: str, factor: str, points: float, reason: str) -> None:
        factors[device_id][factor] = round(factors[device_id].get(factor, 0.0) + points, 1)
        reasons[device_id].append((points, reason))

    # 1. Open trend forecasts: the sooner the limit, the more points.
    open_alerts = con.execute(
        "SELECT device_id, event_class, title, forecast, updated_at FROM alerts "
        "WHERE state IN ('firing', 'acknowledged') AND suppressed IS NULL ORDER BY event_class, created_at"
    ).fetchall()
    alert_points = dict(w.alert_points)
    alert_sum: dict[str, float] = {}
    for device_id, klass, title, forecast, updated_at in open_alerts:
        if device_id not in ledger:
            continue
        seconds = forecast_seconds(forecast)
        if seconds is not None:
            left = max(0.0, seconds - max(0.0, (now - updated_at).total_seconds()))
            horizon = w.forecast_horizon_h * 3600
            points = w.forecast_max * max(0.1, 1.0 - left / horizon) if left < horizon else w.forecast_max * 0.1
            if points > factors[device_id].get("forecast", 0.0):
                factors[device_id]["forecast"] = round(points, 1)
                reasons[device_id] = [r for r in reasons[device_id] if not r[1].startswith("forecast: ")]
                when = "has reached its limit" if left <= 0 else f"limit in about {_duration(left)}"
                reasons[device_id].append((points, f"forecast: {title} ({forecast}; {when})"))
            continue
        points = alert_points.get(str(klass), 5.0)
        before = alert_sum.get(device_id, 0.0)
        granted = min(points, w.alerts_max - before)
        if granted > 0:
            alert_sum[device_id] = before + granted
            add(device_id, "alerts", granted, f"open class {klass} alert: {title}")

    # 2. Recent faults (device fault codes and GridSentry alerts raised in the window).
    since = now - timedelta(days=recent_days)
    recent = con.execute(
        """
        WITH f AS (
            SELECT device_id, code AS what FROM events
            WHERE kind = 'fault' AND code NOT IN (SELECT unnest(?)) AND ts >= ? AND ts <= ?
            UNION ALL
            SELECT device_id, title FROM alerts
            WHERE created_at >= ? AND created_at <= ? AND suppressed IS NULL AND forecast IS NULL
        )
        SELECT device_id, count(*), list(DISTINCT what ORDER BY what)[1:3] FROM f GROUP BY device_id
        """,
        [list(FAULT_EVENT_CLEARING_CODES), since, now, since, now],
    ).fetchall()
    for device_id, n, examples in recent:
        if device_id in ledger:
            points = min(w.faults_max, w.fault_points * int(n))
            add(device_id, "faults", points,
                f"{n} fault(s) in the last {recent_days} days ({', '.join(str(e) for e in examples)})")  # fmt: skip

    # 3. Age since commissioning.
    today = now.date()
    for device_id, (_site, _kind, _model, commissioned) in ledger.items():
        if commissioned is None:
            continue
        years = max(0.0, (today - commissioned).days / 365.25)
        points = min(w.age_max, w.age_points_per_year * years)
        if points > 0:
            add(device_id, "age", points, f"in service {years:.1f} years (commissioned {commissioned.isoformat()})")

    # 4. Degradation against peers.
    for device_id, points, reason in _degradation(con, ledger, now - timedelta(days=peer_days), now, w):
        add(device_id, "degradation", points, reason)

    ranked = []
    for device_id, f in factors.items():
        score = round(sum(f.values()), 1)
        if score <= 0:
            continue
        site, kind, model, _ = ledger[device_id]
        why = [text for _p, text in sorted(reasons[device_id], key=lambda r: -r[0])]
        ranked.append((score, device_id, site, kind, model, f, why))
    ranked.sort(key=lambda r: (-r[0], r[1]))
    return [
        VisitPriority(i + 1, device_id, site, kind, model, score, f, why)
        for i, (score, device_id, site, kind, model, f, why) in enumerate(ranked)
    ]


def _degradation(
    con: duckdb.DuckDBPyConnection,
    ledger: dict[str, tuple[str, str, str, date | None]],
    since: datetime,
    until: datetime,
    w: ScoreWeights,
) -> list[tuple[str, float, str]]:
    means = con.execute(
        "SELECT device_id, metric, sum(sum) / sum(count) FROM rollup_1h "
        "WHERE bucket >= ? AND bucket < ? AND count > 0 GROUP BY device_id, metric",
        [since, until],
    ).fetchall()
    by_metric: dict[tuple[str, str, str], dict[str, float]] = {}  # (site, kind, metric) -> device -> mean
    for device_id, metric, mean in means:
        if device_id not in ledger or mean is None:
            continue
        site, kind, _model, _ = ledger[device_id]
        if metric in _HOT_METRICS.get(kind, ()):
            by_metric.setdefault((site, kind, metric), {})[device_id] = float(mean)
    found: dict[str, tuple[float, str]] = {}

    def keep(device_id: str, points: float, reason: str) -> None:
        points = min(w.degradation_max, points)
        if points > found.get(device_id, (0.0, ""))[0]:
            found[device_id] = (points, reason)

    for (_site, _kind, metric), values in by_metric.items():
        if len(values) < 2:
            continue
        for device_id, mean in values.items():
            peers = [v for d, v in values.items() if d != device_id]
            excess = mean - statistics.median(peers)
            if excess > w.hot_tolerance_k:
                keep(device_id, w.hot_points_per_k * (excess - w.hot_tolerance_k),
                     f"{metric} averages {mean:.1f} °C, {excess:.1f} K above its peers at the site "
                     f"(last {(until - since).days} days)")  # fmt: skip
    # PV strings against the other strings of the same inverter, in daylight hours only.
    strings = con.execute(
        r"""
        WITH s AS (
            SELECT device_id, metric, bucket, sum / count AS amps FROM rollup_1h
            WHERE bucket >= ? AND bucket < ? AND count > 0 AND regexp_matches(metric, '^string\d+_current_a$')
        ), m AS (
            SELECT device_id, bucket, median(amps) AS med FROM s GROUP BY ALL HAVING count(*) >= 3
        )
        SELECT s.device_id, s.metric, sum(s.amps) / sum(m.med) FROM s JOIN m USING (device_id, bucket)
        WHERE m.med >= ? GROUP BY ALL
        """,
        [since, until, _STRING_MIN_MEDIAN_A],
    ).fetchall()
    for device_id, metric, ratio in strings:
        if device_id not in ledger or ratio is None:
            continue
        deficit = 100.0 * (1.0 - float(ratio))
        if deficit > w.deficit_tolerance_pct:
            match = _STRING_METRIC.match(str(metric))
            name = f"string {match.group(1)}" if match else str(metric)
            keep(device_id, w.deficit_points_per_pct * (deficit - w.deficit_tolerance_pct) + 5.0,
                 f"{name} produces {deficit:.0f} % less than the inverter's other strings in daylight "
                 "(soiling, shading or a failed bypass diode)")  # fmt: skip
    # Inverter yield per kWp against the site's other inverters.
    yields = con.execute(
        """
        SELECT r.device_id, d.site, sum(r.sum) / sum(r.count) / d.rated_kw FROM rollup_1h r JOIN devices d USING (device_id)
        WHERE r.bucket >= ? AND r.bucket < ? AND r.metric = 'ac_power_kw' AND d.kind = 'pv_inverter' AND d.rated_kw > 0
        GROUP BY r.device_id, d.site, d.rated_kw
        """,
        [since, until],
    ).fetchall()
    per_site: dict[str, dict[str, float]] = {}
    for device_id, site, specific in yields:
        if device_id in ledger and specific is not None:
            per_site.setdefault(str(site), {})[str(device_id)] = float(specific)
    for values in per_site.values():
        if len(values) < 2:
            continue
        for device_id, specific in values.items():
            med = statistics.median(v for d, v in values.items() if d != device_id)
            if med <= 0:
                continue
            deficit = 100.0 * (1.0 - specific / med)
            if deficit > w.deficit_tolerance_pct:
                keep(device_id, w.deficit_points_per_pct * (deficit - w.deficit_tolerance_pct) + 5.0,
                     f"yields {deficit:.0f} % less per kWp than the site's other inverters")  # fmt: skip
    return [(d, round(p, 1), reason) for d, (p, reason) in found.items()]


# --- rendering ----------------------------------------------------------------------------------------


def _rate(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}"


def render_markdown(report: MaintenanceReport) -> str:
    zone = ZoneInfo(report.timezone)
    where = f" — site {report.site}" if report.site else ""
    span = f"{report.start.astimezone(zone):%Y-%m-%d %H:%M} to {report.end.astimezone(zone):%Y-%m-%d %H:%M}"
    lines = [
        f"# Maintenance priorities{where}",
        "",
        f"Period {span} ({report.timezone}).",
        "",
        "## Devices to visit first",
        "",
    ]
    if report.priorities:
        lines += ["| # | Device | Site | Kind | Model | Score | Why |", "|---:|---|---|---|---|---:|---|"]
        for p in report.priorities:
            why = "; ".join(p.reasons).replace("|", "/")
            lines.append(
                f"| {p.rank} | {p.device_id} | {p.site} | {p.device_kind} | {p.model} | {p.score:.0f} | {why} |"
            )
    else:
        lines.append("No device has an open forecast, alert, recent fault, age or peer deviation to score.")
    lines += ["", "## Fault rates per 1,000 operating hours", ""]
    lines += ["| Kind | Model | Devices | Operating h | Faults | per 1,000 h |", "|---|---|---:|---:|---:|---:|"]
    for t in report.model_totals:
        lines.append(
            f"| {t.device_kind} | {t.model} | {t.devices} | {t.operating_hours:.0f} | {t.faults} | {_rate(t.per_1000_h)} |"
        )
    if report.fault_rates:
        lines += ["", "### By fault", ""]
        lines += ["| Kind | Model | Source | Fault | Faults | per 1,000 h |", "|---|---|---|---|---:|---:|"]
        for r in report.fault_rates:
            fault = r.fault.replace("|", "/")
            lines.append(f"| {r.device_kind} | {r.model} | {r.source} | {fault} | {r.faults} | {_rate(r.per_1000_h)} |")
    for note in report.notes:
        lines += ["", f"Note: {note}"]
    return "\n".join(lines) + "\n"


def report_dict(report: MaintenanceReport) -> dict[str, Any]:
    return {
        "start": report.start.isoformat(),
        "end": report.end.isoformat(),
        "timezone": report.timezone,
        "site": report.site,
        "priorities": [asdict(p) for p in report.priorities],
        "model_totals": [asdict(t) for t in report.model_totals],
        "fault_rates": [asdict(r) for r in report.fault_rates],
        "notes": report.notes,
    }


def render_json(report: MaintenanceReport) -> str:
    import orjson

    return orjson.dumps(report_dict(report), option=orjson.OPT_INDENT_2).decode() + "\n"


def render_csv(report: MaintenanceReport) -> str:
    """Two tables in one file, each with its header, separated by a blank line: priorities, then fault rates."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["rank", "device_id", "site", "kind", "model", "score", "forecast", "alerts", "faults", "age",
                     "degradation", "why"])  # fmt: skip
    for p in report.priorities:
        f = p.factors
        writer.writerow([p.rank, p.device_id, p.site, p.device_kind, p.model, p.score, f.get("forecast", 0),
                         f.get("alerts", 0), f.get("faults", 0), f.get("age", 0), f.get("degradation", 0),
                         "; ".join(p.reasons)])  # fmt: skip
    writer.writerow([])
    writer.writerow(["kind", "model", "source", "fault", "devices", "operating_hours", "faults", "per_1000_h"])
    for r in report.fault_rates:
        writer.writerow([r.device_kind, r.model, r.source, r.fault, r.devices, round(r.operating_hours, 1), r.faults,
                         "" if r.per_1000_h is None else round(r.per_1000_h, 3)])  # fmt: skip
    return out.getvalue()
