"""The monthly operations report the contract promises: chargers, PV, transformers, alert KPIs and data
completeness, for one month in the contract's time zone, optionally one site.

Figures come from the database only (sessions, events, readings, alerts and their audit trail), computed in
DuckDB where the data is large (readings) and in Python where it is a handful of intervals per device. The
definitions are in docs/reports.md. Renderers live in `reports.monthly_render` and `reports.monthly_html`.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from dataclasses import replace
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import duckdb

from alerts.kpi import month_bounds, monthly_kpis
from reports.monthly_html import render_html
from reports.monthly_model import (
    ChargerMonth,
    DataCompleteness,
    DayFigures,
    InverterMonth,
    MonthlyReport,
    PlantMonth,
    TransformerMonth,
)
from reports.monthly_render import render_markdown, write_xlsx

__all__ = [
    "ChargerMonth",
    "DataCompleteness",
    "DayFigures",
    "InverterMonth",
    "MonthlyReport",
    "PlantMonth",
    "TransformerMonth",
    "build_monthly",
    "render_html",
    "render_markdown",
    "write_xlsx",
]

CHARGER_KINDS = ("charger_ac", "charger_dc")
# A device silent for longer than this many of its reporting intervals counts as down, and such a gap is
# left out of time-weighted figures (insolation, hours above rated load): nothing says what happened in it.
SILENCE_INTERVALS = 3.0
# Connector statuses (OCPP StatusNotification) in which a charger cannot serve a car.
DOWN_STATUSES = ("Faulted", "Unavailable")
# How far back the last reading before the window may lie and still start the energy counter's first step.
COUNTER_LOOKBACK = timedelta(days=1)
KWP_TAG = "kwp:"

log = logging.getLogger(__name__)

_SCOPE = "SELECT device_id FROM devices WHERE CAST($site AS VARCHAR) IS NULL OR site = $site"


def build_monthly(con: duckdb.DuckDBPyConnection, month: str, zone: ZoneInfo, site: str | None = None) -> MonthlyReport:
    """Figures for `month` (YYYY-MM) in the contract's time zone; `site` limits every section to one site."""
    start, end = month_bounds(month, zone)
    notes: list[str] = []
    devices = _devices(con, site, notes)
    window = _observed_window(con, start, end, site)
    kpis = monthly_kpis(con, month, zone, site)
    faults = _fault_counts(con, start, end, site)
    sessions = _sessions(con, start, end, site)
    uses: dict[str, int] = defaultdict(int)
    charged: dict[str, float] = defaultdict(float)
    daily_charged: dict[date, float] = defaultdict(float)
    for dev, _, day, n, kwh in sessions:
        uses[dev] += n
        charged[dev] += kwh
        daily_charged[day] += kwh
    charger_devices = [d for d in devices if d["kind"] in CHARGER_KINDS]
    if window is None:
        # Sessions, faults and alerts are still known; time-based figures are not.
        chargers = [
            ChargerMonth(d["device_id"], uses[d["device_id"]], charged[d["device_id"]], faults.get(d["device_id"], 0),
                         d["site"], d["rated_kw"])
            for d in charger_devices
        ]  # fmt: skip
        daily_only = tuple(DayFigures(day.isoformat(), kwh, 0.0, None) for day, kwh in sorted(daily_charged.items()))
        return MonthlyReport(month, site, zone.key, chargers, kpis, daily=daily_only, notes=tuple(notes))
    w_start, w_end = window
    hours = (w_end - w_start).total_seconds() / 3600.0
    presence = _presence(con, w_start, w_end, site)
    down = _downtime(con, devices, presence, w_start, w_end, site)
    open_alerts = _open_alerts(con, w_end, site)

    def availability(device_id: str) -> float:
        return max(0.0, 1.0 - down.get(device_id, 0.0) / (hours * 3600.0)) if hours > 0 else 0.0

    chargers = []
    for d in charger_devices:
        dev, rated = d["device_id"], d["rated_kw"]
        util = charged[dev] / (rated * hours) if rated and hours > 0 else None
        chargers.append(
            ChargerMonth(dev, uses[dev], charged[dev], faults.get(dev, 0), d["site"], rated, util, availability(dev))
        )

    inverters, plants, daily_generated = _pv(con, devices, w_start, w_end, zone, site, faults, open_alerts, presence)
    inverters = [replace(inv, availability=availability(inv.device_id)) for inv in inverters]
    transformers, daily_peak = _transformers(con, devices, w_start, w_end, zone, site)
    completeness = tuple(
        DataCompleteness(
            d["device_id"],
            d["site"],
            d["kind"],
            d["interval_s"],
            math.ceil((w_end - w_start).total_seconds() / d["interval_s"] - 1e-9),
            presence.get(d["device_id"], (0, None, None, []))[0],
        )
        for d in devices
    )
    days = sorted(set(daily_charged) | set(daily_generated) | set(daily_peak))
    daily = tuple(
        DayFigures(day.isoformat(), daily_charged.get(day, 0.0), daily_generated.get(day, 0.0), daily_peak.get(day))
        for day in days
    )
    return MonthlyReport(
        month,
        site,
        zone.key,
        chargers,
        kpis,
        w_start.astimezone(zone).isoformat(),
        w_end.astimezone(zone).isoformat(),
        tuple(inverters),
        tuple(plants),
        tuple(transformers),
        completeness,
        daily,
        tuple(notes),
    )


def _devices(con: duckdb.DuckDBPyConnection, site: str | None, notes: list[str]) -> list[dict[str, Any]]:
    """The ledger's devices in scope. A PV inverter's array size is its rated_kw unless a `kwp:<number>` tag
    gives the DC nameplate (arrays are often oversized against the inverter's AC rating)."""
    if site is not None:
        sites = [str(r[0]) for r in con.execute("SELECT DISTINCT site FROM devices ORDER BY 1").fetchall()]
        if site not in sites:
            known = ", ".join(sites) or "none yet"
            raise ValueError(f"site {site!r} is not in the equipment ledger (known sites: {known}); check --site")
    rows = con.execute(
        "SELECT device_id, site, kind, rated_kw, expected_interval_s, tags FROM devices "
        "WHERE CAST($site AS VARCHAR) IS NULL OR site = $site ORDER BY kind, device_id",
        {"site": site},
    ).fetchall()
    out = []
    for device_id, dev_site, kind, rated, interval, tags in rows:
        size = rated
        for tag in tags or []:
            if kind == "pv_inverter" and str(tag).startswith(KWP_TAG):
                text = str(tag)[len(KWP_TAG) :]
                try:
                    size = float(text)
                    if not size > 0:
                        raise ValueError(text)
                except ValueError:
                    size = rated
                    note = (
                        f"{device_id}: tag {tag!r} is not a positive kWp figure (write e.g. kwp:55.2); "
                        f"using its rated {rated} kW as the array size"
                    )
                    log.warning("monthly report: %s", note)
                    notes.append(note)
        out.append(
            {
                "device_id": str(device_id),
                "site": str(dev_site),
                "kind": str(kind),
                "rated_kw": size if kind == "pv_inverter" else rated,
                "interval_s": float(interval),
            }
        )
    return out


def _observed_window(
    con: duckdb.DuckDBPyConnection, start: datetime, end: datetime, site: str | None
) -> tuple[datetime, datetime] | None:
    """The month, cut to the time readings exist: monitoring that began (or data that ends) inside the month
    must not count the time before (after) as missing. None when the month holds no reading at all."""
    row = con.execute(
        f"""
        WITH scope AS ({_SCOPE})
        SELECT min(ts), max(ts),
               EXISTS (SELECT 1 FROM readings_all WHERE ts < $start AND device_id IN (SELECT device_id FROM scope)),
               EXISTS (SELECT 1 FROM readings_all WHERE ts >= $end AND device_id IN (SELECT device_id FROM scope))
        FROM readings_all WHERE ts >= $start AND ts < $end AND device_id IN (SELECT device_id FROM scope)
        """,
        {"site": site, "start": start, "end": end},
    ).fetchone()
    if row is None or row[0] is None:
        return None
    w_start = start if row[2] else row[0]
    # Without data after the month, the window ends just after the last reading (which it must contain).
    w_end = end if row[3] else min(end, row[1] + timedelta(seconds=1))
    return w_start, w_end


Presence = tuple[int, datetime | None, datetime | None, list[tuple[datetime, datetime]]]


def _presence(
    con: duckdb.DuckDBPyConnection, w_start: datetime, w_end: datetime, site: str | None
) -> dict[str, Presence]:
    """Per device: distinct reading times in the window, the first and last, and the silent gaps between
    consecutive readings longer than SILENCE_INTERVALS of its interval."""
    rows = con.execute(
        f"""
        WITH scope AS ({_SCOPE}),
        t AS (SELECT DISTINCT device_id, ts FROM readings_all
              WHERE ts >= $start AND ts < $end AND device_id IN (SELECT device_id FROM scope)),
        l AS (SELECT device_id, ts, lag(ts) OVER (PARTITION BY device_id ORDER BY ts) AS prev FROM t)
        SELECT l.device_id, count(*), min(ts), max(ts),
               list(prev ORDER BY ts) FILTER (WHERE epoch(ts) - epoch(prev) > $k * d.expected_interval_s),
               list(ts ORDER BY ts) FILTER (WHERE epoch(ts) - epoch(prev) > $k * d.expected_interval_s)
        FROM l JOIN devices d USING (device_id) GROUP BY l.device_id
        """,
        {"site": site, "start": w_start, "end": w_end, "k": SILENCE_INTERVALS},
    ).fetchall()
    return {str(r[0]): (int(r[1]), r[2], r[3], list(zip(r[4] or [], r[5] or [], strict=True))) for r in rows}


def _merged_seconds(spans: list[tuple[datetime, datetime]]) -> float:
    total = 0.0
    current: tuple[datetime, datetime] | None = None
    for a, b in sorted(spans):
        if current is None or a > current[1]:
            if current is not None:
                total += (current[1] - current[0]).total_seconds()
            current = (a, b)
        else:
            current = (current[0], max(current[1], b))
    if current is not None:
        total += (current[1] - current[0]).total_seconds()
    return total


def _downtime(
    con: duckdb.DuckDBPyConnection,
    devices: list[dict[str, Any]],
    presence: dict[str, Presence],
    w_start: datetime,
    w_end: datetime,
    site: str | None,
) -> dict[str, float]:
    """Seconds of the window each device was down: silent, or with a connector faulted (a fault code other
    than NoError until NoError on that connector, or an OCPP status Faulted/Unavailable until another status)."""
    spans: dict[str, list[tuple[datetime, datetime]]] = defaultdict(list)
    for d in devices:
        dev, limit = d["device_id"], timedelta(seconds=SILENCE_INTERVALS * d["interval_s"])
        _, first, last, gaps = presence.get(dev, (0, None, None, []))
        if first is None or last is None:
            spans[dev].append((w_start, w_end))
            continue
        spans[dev].extend(gaps)
        if first - w_start > limit:
            spans[dev].append((w_start, first))
        if w_end - last > limit:
            spans[dev].append((last, w_end))
    rows = con.execute(
        f"""
        WITH scope AS ({_SCOPE}),
        e AS (SELECT device_id, kind, coalesce(text, '') AS connector, code, ts FROM events
              WHERE kind IN ('fault', 'status') AND ts < $end AND device_id IN (SELECT device_id FROM scope))
        SELECT * FROM e WHERE ts >= $start
        UNION ALL
        (SELECT * FROM e WHERE ts < $start
         QUALIFY row_number() OVER (PARTITION BY device_id, kind, connector ORDER BY ts DESC) = 1)
        ORDER BY ts
        """,
        {"site": site, "start": w_start, "end": w_end},
    ).fetchall()
    down_since: dict[tuple[str, str, str], datetime] = {}
    for dev, kind, connector, code, ts in rows:
        key = (str(dev), str(kind), str(connector))
        is_down = code != "NoError" if kind == "fault" else code in DOWN_STATUSES
        if is_down and key not in down_since:
            down_since[key] = max(ts, w_start)
        elif not is_down and key in down_since:
            since = down_since.pop(key)
            if ts > since:
                spans[key[0]].append((since, ts))
    for key, since in down_since.items():
        spans[key[0]].append((since, w_end))
    return {dev: _merged_seconds(s) for dev, s in spans.items()}


def _fault_counts(con: duckdb.DuckDBPyConnection, start: datetime, end: datetime, site: str | None) -> dict[str, int]:
    rows = con.execute(
        f"""
        WITH scope AS ({_SCOPE})
        SELECT device_id, count(*) FROM events
        WHERE kind = 'fault' AND code <> 'NoError' AND ts >= $start AND ts < $end
          AND device_id IN (SELECT device_id FROM scope)
        GROUP BY device_id
        """,
        {"site": site, "start": start, "end": end},
    ).fetchall()
    return {str(r[0]): int(r[1]) for r in rows}


def _sessions(
    con: duckdb.DuckDBPyConnection, start: datetime, end: datetime, site: str | None
) -> list[tuple[str, str, date, int, float]]:
    """(device, site, local day, sessions started, kWh of those that stopped) per charger and day."""
    rows = con.execute(
        f"""
        WITH scope AS ({_SCOPE})
        SELECT s.device_id, d.site, CAST(timezone($tz, s.started_at) AS DATE) AS day,
               count(*), coalesce(sum(s.energy_kwh) FILTER (WHERE s.stopped_at IS NOT NULL), 0)
        FROM charging_sessions s JOIN devices d USING (device_id)
        WHERE s.started_at >= $start AND s.started_at < $end AND s.device_id IN (SELECT device_id FROM scope)
        GROUP BY ALL
        """,
        {"site": site, "start": start, "end": end, "tz": str(start.tzinfo)},
    ).fetchall()
    return [(str(r[0]), str(r[1]), r[2], int(r[3]), float(r[4])) for r in rows]


def _open_alerts(con: duckdb.DuckDBPyConnection, at: datetime, site: str | None) -> dict[str, int]:
    rows = con.execute(
        f"""
        WITH scope AS ({_SCOPE})
        SELECT device_id, count(*) FROM alerts
        WHERE suppressed IS NULL AND created_at < $at AND device_id IN (SELECT device_id FROM scope)
          AND (coalesce(resolved_at, closed_at) IS NULL OR coalesce(resolved_at, closed_at) >= $at)
        GROUP BY device_id
        """,
        {"site": site, "at": at},
    ).fetchall()
    return {str(r[0]): int(r[1]) for r in rows}


def _pv(
    con: duckdb.DuckDBPyConnection,
    devices: list[dict[str, Any]],
    w_start: datetime,
    w_end: datetime,
    zone: ZoneInfo,
    site: str | None,
    faults: dict[str, int],
    open_alerts: dict[str, int],
    presence: dict[str, Presence],
) -> tuple[list[InverterMonth], list[PlantMonth], dict[date, float]]:
    """Energy from the lifetime counter's increases between consecutive readings (a drop - a replaced
    inverter - adds nothing); performance ratio over the steps with irradiance and no silent gap."""
    rows = con.execute(
        """
        WITH p AS (
            SELECT device_id, ts,
                   max(value) FILTER (WHERE metric = 'energy_kwh') AS e,
                   max(value) FILTER (WHERE metric = 'irradiance_wm2') AS g
            FROM readings_all
            WHERE metric IN ('energy_kwh', 'irradiance_wm2') AND ts >= $lookback AND ts < $end
              AND device_id IN (SELECT device_id FROM devices
                                WHERE kind = 'pv_inverter' AND (CAST($site AS VARCHAR) IS NULL OR site = $site))
            GROUP BY device_id, ts
        ),
        q AS (
            SELECT device_id, ts, g,
                   greatest(e - lag(e) OVER w, 0) AS de,
                   epoch(ts) - epoch(lag(ts) OVER w) AS dt
            FROM p WINDOW w AS (PARTITION BY device_id ORDER BY ts)
        )
        SELECT q.device_id, CAST(timezone($tz, q.ts) AS DATE) AS day,
               coalesce(sum(de), 0),
               coalesce(sum(de) FILTER (WHERE g IS NOT NULL AND dt <= $k * d.expected_interval_s), 0),
               sum(g * dt) FILTER (WHERE dt <= $k * d.expected_interval_s) / 3.6e6,
               count(g)
        FROM q JOIN devices d USING (device_id)
        WHERE q.ts >= $start
        GROUP BY ALL
        """,
        {
            "site": site,
            "start": w_start,
            "end": w_end,
            "lookback": w_start - COUNTER_LOOKBACK,
            "tz": zone.key,
            "k": SILENCE_INTERVALS,
        },
    ).fetchall()
    kwh: dict[str, float] = defaultdict(float)
    kwh_pr: dict[str, float] = defaultdict(float)
    insolation: dict[str, float] = defaultdict(float)
    irradiance_readings: dict[str, int] = defaultdict(int)
    daily: dict[date, float] = defaultdict(float)
    for dev, day, e, e_pr, h, n_g in rows:
        kwh[dev] += float(e)
        kwh_pr[dev] += float(e_pr)
        insolation[dev] += float(h or 0.0)
        irradiance_readings[dev] += int(n_g)
        daily[day] += float(e)
    inverters: list[InverterMonth] = []
    for d in devices:
        if d["kind"] != "pv_inverter":
            continue
        dev, kwp = d["device_id"], d["rated_kw"]
        has_irradiance = irradiance_readings[dev] > 0 and insolation[dev] > 0
        _, _, last, _ = presence.get(dev, (0, None, None, []))
        silent = last is None or (w_end - last).total_seconds() > SILENCE_INTERVALS * d["interval_s"]
        inverters.append(
            InverterMonth(
                device_id=dev,
                site=d["site"],
                peak_kwp=kwp,
                energy_kwh=kwh[dev],
                specific_yield=kwh[dev] / kwp if kwp else None,
                insolation_kwh_m2=insolation[dev] if has_irradiance else None,
                performance_ratio=kwh_pr[dev] / (kwp * insolation[dev]) if has_irradiance and kwp else None,
                availability=None,
                faults=faults.get(dev, 0),
                open_alerts=open_alerts.get(dev, 0),
                last_reading=last.astimezone(zone).isoformat() if last is not None else None,
                silent=silent,
            )
        )
    plants: list[PlantMonth] = []
    for plant_site in sorted({i.site for i in inverters}):
        members = [i for i in inverters if i.site == plant_site]
        kwp_total = sum(i.peak_kwp or 0.0 for i in members)
        measured = [i for i in members if i.performance_ratio is not None and i.peak_kwp]
        reference = sum((i.peak_kwp or 0.0) * (i.insolation_kwh_m2 or 0.0) for i in measured)
        plants.append(
            PlantMonth(
                site=plant_site,
                inverters=len(members),
                peak_kwp=kwp_total or None,
                energy_kwh=sum(i.energy_kwh for i in members),
                specific_yield=sum(i.energy_kwh for i in members) / kwp_total if kwp_total else None,
                performance_ratio=sum(kwh_pr[i.device_id] for i in measured) / reference if reference else None,
            )
        )
    return inverters, plants, dict(daily)


def _transformers(
    con: duckdb.DuckDBPyConnection,
    devices: list[dict[str, Any]],
    w_start: datetime,
    w_end: datetime,
    zone: ZoneInfo,
    site: str | None,
) -> tuple[list[TransformerMonth], dict[date, float]]:
    """Load factor as the transformer reports it (load kVA / rated kVA); a reading above 1.0 counts the time
    since the previous reading as above rated load, unless that step is a silent gap."""
    rows = con.execute(
        """
        WITH p AS (
            SELECT device_id, ts,
                   max(value) FILTER (WHERE metric = 'load_factor') AS lf,
                   max(value) FILTER (WHERE metric = 'top_oil_temp_c') AS oil
            FROM readings_all
            WHERE metric IN ('load_factor', 'top_oil_temp_c') AND ts >= $lookback AND ts < $end
              AND device_id IN (SELECT device_id FROM devices
                                WHERE kind = 'box_transformer' AND (CAST($site AS VARCHAR) IS NULL OR site = $site))
            GROUP BY device_id, ts
        ),
        q AS (SELECT *, epoch(ts) - epoch(lag(ts) OVER (PARTITION BY device_id ORDER BY ts)) AS dt FROM p)
        SELECT q.device_id, CAST(timezone($tz, q.ts) AS DATE) AS day,
               max(lf), arg_max(ts, lf), sum(lf), count(lf),
               coalesce(sum(dt) FILTER (WHERE lf > 1.0 AND dt <= $k * d.expected_interval_s), 0),
               max(oil)
        FROM q JOIN devices d USING (device_id)
        WHERE q.ts >= $start
        GROUP BY ALL
        """,
        {
            "site": site,
            "start": w_start,
            "end": w_end,
            "lookback": w_start - COUNTER_LOOKBACK,
            "tz": zone.key,
            "k": SILENCE_INTERVALS,
        },
    ).fetchall()
    per_device: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
    daily: dict[date, float] = {}
    for r in rows:
        per_device[str(r[0])].append(r)
        if r[2] is not None:
            daily[r[1]] = max(daily.get(r[1], float("-inf")), float(r[2]))
    out: list[TransformerMonth] = []
    for d in devices:
        if d["kind"] != "box_transformer":
            continue
        days = per_device.get(d["device_id"], [])
        with_lf = [r for r in days if r[2] is not None]
        peak = max(with_lf, key=lambda r: float(r[2])) if with_lf else None
        count = sum(int(r[5]) for r in days)
        oils = [float(r[7]) for r in days if r[7] is not None]
        out.append(
            TransformerMonth(
                device_id=d["device_id"],
                site=d["site"],
                rated_kva=d["rated_kw"],
                peak_load_factor=float(peak[2]) if peak else None,
                peak_at=peak[3].astimezone(zone).isoformat() if peak else None,
                mean_load_factor=sum(float(r[4] or 0.0) for r in days) / count if count else None,
                hours_above_rated=sum(float(r[6]) for r in days) / 3600.0,
                top_oil_max_c=max(oils) if oils else None,
            )
        )
    return out, daily
