"""Service KPIs per month and event class, from `alert_events` (the audit trail, not the mutable alert row).

As the O&M standard defines them (shared/seeds/000_*.txt):
- response timeliness rate (§8.2.1) = requests answered within the response time / all requests; an alert is
  answered when first acknowledged, in time when that is no later than its acknowledge deadline;
- event resolution rate (§8.4.2) = events resolved / events that occurred (recommended 85-100 %, §8.4.1);
  resolved means the condition cleared or an operator closed it. Also shown: resolved within the class's
  restore deadline (table 1), MTTA (fired -> first acknowledgement) and MTTR (fired -> resolved or closed).
Alerts suppressed by maintenance, a silence or a parent fault are not service requests and are left out.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import duckdb

_MONTH = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")


@dataclass(frozen=True)
class ClassKpi:
    month: str
    event_class: str
    events: int
    responded: int
    responded_in_time: int
    resolved: int
    resolved_in_time: int
    sla_breaches: int
    mtta_s: float | None
    mttr_s: float | None

    @property
    def response_timeliness_rate(self) -> float | None:
        return self.responded_in_time / self.events if self.events else None

    @property
    def resolution_rate(self) -> float | None:
        return self.resolved / self.events if self.events else None

    @property
    def resolved_in_time_rate(self) -> float | None:
        return self.resolved_in_time / self.events if self.events else None

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "response_timeliness_rate": self.response_timeliness_rate,
            "resolution_rate": self.resolution_rate,
            "resolved_in_time_rate": self.resolved_in_time_rate,
        }


def month_bounds(month: str, zone: ZoneInfo) -> tuple[datetime, datetime]:
    m = _MONTH.match(month.strip())
    if not m:
        raise ValueError(f"{month!r} is not a month; write YYYY-MM, e.g. 2026-11")
    y, mo = int(m.group(1)), int(m.group(2))
    start = datetime(y, mo, 1, tzinfo=zone)
    end = datetime(y + (mo == 12), 1 if mo == 12 else mo + 1, 1, tzinfo=zone)
    return start, end


def monthly_kpis(con: duckdb.DuckDBPyConnection, month: str, zone: ZoneInfo, site: str | None = None) -> list[ClassKpi]:
    """One row per event class (I, II, III, all), in the month of the contract's time zone; `site` keeps
    only that site's alerts."""
    start, end = month_bounds(month, zone)
    rows = con.execute(
        """
        WITH ev AS (
            SELECT alert_id,
                   min(ts) FILTER (WHERE action = 'fired') AS fired,
                   min(ts) FILTER (WHERE action = 'acknowledged') AS acked,
                   min(ts) FILTER (WHERE action IN ('resolved', 'closed')) AS restored
            FROM alert_events GROUP BY alert_id
        )
        SELECT coalesce(a.event_class, 'all') AS cls,
               count(*) AS events,
               count(ev.acked) AS responded,
               count(*) FILTER (WHERE ev.acked <= a.ack_due) AS responded_in_time,
               count(ev.restored) AS resolved,
               count(*) FILTER (WHERE ev.restored <= a.restore_due) AS resolved_in_time,
               count(*) FILTER (WHERE len(list_filter(coalesce(a.sla_marks, []), m -> m LIKE 'breach:%')) > 0)
                   AS breaches,
               avg(epoch(ev.acked) - epoch(ev.fired)) AS mtta,
               avg(epoch(ev.restored) - epoch(ev.fired)) AS mttr
        FROM alerts a JOIN ev USING (alert_id)
        WHERE a.suppressed IS NULL AND ev.fired >= ? AND ev.fired < ?
          AND (CAST(? AS VARCHAR) IS NULL OR a.site = ?)
        GROUP BY ROLLUP (a.event_class)
        """,
        [start, end, site, site],
    ).fetchall()
    found = {str(r[0]): r for r in rows}
    out = []
    for cls in ("I", "II", "III", "all"):
        r = found.get(cls)
        if r is None:
            out.append(ClassKpi(month, cls, 0, 0, 0, 0, 0, 0, None, None))
        else:
            out.append(
                ClassKpi(
                    month,
                    cls,
                    int(r[1]),
                    int(r[2]),
                    int(r[3]),
                    int(r[4]),
                    int(r[5]),
                    int(r[6]),
                    float(r[7]) if r[7] is not None else None,
                    float(r[8]) if r[8] is not None else None,
                )
            )
    return out
