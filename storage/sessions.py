"""Charging sessions projected from committed session events, in the transaction that stores them.

Chargers report a session as two events on their events channel: kind ``session``, code ``start``
(connector, session id) and code ``stop`` (connector, session id, kWh delivered, duration in s,
stop reason). The collector keeps those figures as JSON in the event's ``text``. This projector turns
them into ``charging_sessions`` rows: a start opens a row, a stop completes it; a stop whose start
was never heard (the pile was offline, or the session began before GridSentry) still makes a row,
dated back by its duration. Replays are harmless: a start never overwrites a row, a stop rewrites
the same figures. Session events without a session id stay in ``events`` and are counted.
"""

from __future__ import annotations

import duckdb
import pyarrow as pa

__all__ = ["project_sessions"]

# One parse of the batch's session events; the statements below read its columns.
_PARSED = """
SELECT ts, device_id, code,
       json_extract_string(doc, '$.session_id') AS sid,
       TRY_CAST(json_extract_string(doc, '$.connector') AS INTEGER) AS connector,
       TRY_CAST(json_extract_string(doc, '$.duration_s') AS DOUBLE) AS duration_s,
       TRY_CAST(json_extract_string(doc, '$.energy_kwh') AS DOUBLE) AS energy_kwh,
       json_extract_string(doc, '$.reason') AS reason
FROM (SELECT ts, device_id, code, CASE WHEN json_valid(text) THEN text END AS doc FROM _session_events_raw)
"""

_STARTS = """
INSERT INTO charging_sessions (session_id, device_id, connector, started_at)
SELECT sid, any_value(device_id), any_value(connector), min(ts)
FROM _session_events
WHERE code = 'start' AND sid IS NOT NULL AND connector IS NOT NULL
GROUP BY sid
ON CONFLICT (session_id) DO NOTHING
"""

_STOPS = """
INSERT INTO charging_sessions (session_id, device_id, connector, started_at, stopped_at, energy_kwh, stop_reason)
SELECT sid, device_id, connector,
       ts - to_microseconds(CAST(coalesce(duration_s, 0) * 1e6 AS BIGINT)),
       ts, energy_kwh, reason
FROM _session_events
WHERE code = 'stop' AND sid IS NOT NULL AND connector IS NOT NULL
QUALIFY row_number() OVER (PARTITION BY sid ORDER BY ts DESC) = 1
ON CONFLICT (session_id) DO UPDATE SET
    stopped_at = excluded.stopped_at, energy_kwh = excluded.energy_kwh, stop_reason = excluded.stop_reason
"""


def project_sessions(con: duckdb.DuckDBPyConnection, events: pa.Table) -> int:
    """Apply the batch's session events to ``charging_sessions``; returns how many were unusable
    (no JSON text, no session id or connector). Runs inside the caller's transaction."""
    kinds = events.column("kind").to_pylist()
    if "session" not in kinds:
        return 0
    con.register("_session_events_raw", events.filter(pa.array([k == "session" for k in kinds])))
    try:
        parsed = con.execute(_PARSED).to_arrow_table()
    finally:
        con.unregister("_session_events_raw")
    con.register("_session_events", parsed)
    try:
        con.execute(_STARTS)
        con.execute(_STOPS)
        row = con.execute(
            "SELECT count(*) FROM _session_events "
            "WHERE code NOT IN ('start', 'stop') OR sid IS NULL OR connector IS NULL"
        ).fetchone()
    finally:
        con.unregister("_session_events")
    return int(row[0]) if row else 0
