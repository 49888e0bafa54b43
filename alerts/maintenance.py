"""Planned maintenance windows announced at run time (API, CLI) next to those in the config.

Every window is a row of `maintenance_windows`: the config's are mirrored there at start-up (`source =
'config'`), the operators' are added through the running service (`source = 'api'`) with who announced them
and when. The contract's notice (`alerts.maintenance_notice`, 3 days by default, O&M standard §9.1.1) is
enforced on both; a window announced too late is refused with the shortfall named. Cancelling keeps the row
(who, when, why) so the monthly report can still tell what was planned.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import duckdb
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from alerts.sla import MaintenanceWindow

WINDOW_COLUMNS = (
    "window_id, starts_at, ends_at, announced_at, devices, sites, reason, source, created_at, created_by, "
    "cancelled_at, cancelled_by, cancel_reason"
)
Status = Literal["upcoming", "active", "ended", "cancelled"]
# Ended windows still pause the clocks of alerts raised before them; a month covers any alert still open.
KEEP_ENDED = timedelta(days=31)


class MaintenanceRefused(ValueError):  # noqa: N818 - it reads as what happened to the request
    """The window breaks the contract's notice, overlaps nothing sensible, or its id is taken."""


class MaintenanceConflict(MaintenanceRefused):
    """A window with this id exists already, or the window cannot be cancelled in its state."""


class MaintenanceRequest(BaseModel):
    """A planned maintenance window as an operator announces it."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$",
        max_length=64,
        description="Reference, e.g. the change ticket CHG-2026-118 (default: MW-<start date>-<n>).",
    )
    start: AwareDatetime = Field(description="When the planned work starts (ISO 8601 with offset).")
    end: AwareDatetime = Field(description="When it ends.")
    devices: list[str] = Field(default_factory=list, description="Devices under maintenance.")
    sites: list[str] = Field(default_factory=list, description="...or whole sites.")
    reason: str = Field(min_length=1, description="What is being done, shown on suppressed alerts.")
    announced_at: AwareDatetime | None = Field(
        None,
        description="When the customer was notified, if before now (e.g. by letter); default: now. "
        "It may not lie in the future.",
    )

    @model_validator(mode="after")
    def _sane(self) -> MaintenanceRequest:
        if self.end <= self.start:
            raise ValueError(f"the window ends ({self.end.isoformat()}) before it starts ({self.start.isoformat()})")
        if not self.devices and not self.sites:
            raise ValueError("name at least one device or site (a window for everything is refused)")
        return self


@dataclass(frozen=True)
class StoredWindow:
    window: MaintenanceWindow
    announced_at: datetime
    source: str
    created_by: str


def human(d: timedelta) -> str:
    hours = d.total_seconds() / 3600
    return f"{hours / 24:.1f} days" if abs(hours) >= 24 else f"{hours:.1f} h"


def check_notice(window_id: str, start: datetime, announced_at: datetime, notice: timedelta) -> None:
    ahead = start - announced_at
    if ahead < notice:
        earliest = announced_at + notice
        raise MaintenanceRefused(
            f"maintenance window {window_id!r} starting {start.isoformat()} is announced only {human(ahead)} ahead; "
            f"the contract needs {human(notice)} (alerts.maintenance_notice). Start it at "
            f"{earliest.isoformat(timespec='minutes')} or later, or use a silence for unplanned work"
        )


def status_of(row: dict[str, Any], now: datetime) -> Status:
    if row["cancelled_at"] is not None:
        return "cancelled"
    if now < row["starts_at"]:
        return "upcoming"
    return "active" if now < row["ends_at"] else "ended"


def fetch_windows(
    con: duckdb.DuckDBPyConnection, now: datetime, status: Literal["current", "all"] = "current"
) -> list[dict[str, Any]]:
    """Windows by start; `current` = upcoming and active ones."""
    cur = con.execute(
        f"SELECT {WINDOW_COLUMNS} FROM maintenance_windows "
        "WHERE ? = 'all' OR (cancelled_at IS NULL AND ends_at > ?) ORDER BY starts_at, window_id",
        [status, now],
    )
    cols = [d[0] for d in cur.description or []]
    out = [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
    for row in out:
        row["status"] = status_of(row, now)
    return out


def fetch_window(con: duckdb.DuckDBPyConnection, window_id: str, now: datetime) -> dict[str, Any] | None:
    cur = con.execute(f"SELECT {WINDOW_COLUMNS} FROM maintenance_windows WHERE window_id = ?", [window_id])
    r = cur.fetchone()
    if r is None:
        return None
    row = dict(zip([d[0] for d in cur.description or []], r, strict=True))
    row["status"] = status_of(row, now)
    return row


def live_windows(con: duckdb.DuckDBPyConnection, now: datetime) -> list[MaintenanceWindow]:
    """What suppresses alerts and pauses clocks: every window not cancelled and not long over."""
    rows = con.execute(
        "SELECT window_id, starts_at, ends_at, devices, sites, reason FROM maintenance_windows "
        "WHERE cancelled_at IS NULL AND ends_at > ? ORDER BY starts_at",
        [now - KEEP_ENDED],
    ).fetchall()
    return [MaintenanceWindow(r[0], r[1], r[2], frozenset(r[3]), frozenset(r[4]), r[5] or "") for r in rows]


def next_id(con: duckdb.DuckDBPyConnection, start: datetime) -> str:
    prefix = f"MW-{start:%Y%m%d}-"
    row = con.execute("SELECT count(*) FROM maintenance_windows WHERE starts_with(window_id, ?)", [prefix]).fetchone()
    n = int(row[0]) + 1 if row else 1
    while con.execute("SELECT 1 FROM maintenance_windows WHERE window_id = ?", [f"{prefix}{n}"]).fetchone():
        n += 1
    return f"{prefix}{n}"


def validate_new(
    con: duckdb.DuckDBPyConnection, req: MaintenanceRequest, *, now: datetime, notice: timedelta
) -> tuple[str, datetime]:
    """The window's id and announcement time, or MaintenanceRefused / MaintenanceConflict saying what is wrong."""
    announced = req.announced_at or now
    if announced > now:
        raise MaintenanceRefused(
            f"announced_at {announced.isoformat()} lies in the future; give when the customer was notified"
        )
    window_id = req.id or next_id(con, req.start)
    check_notice(window_id, req.start, announced, notice)
    taken = con.execute(
        "SELECT source, created_by FROM maintenance_windows WHERE window_id = ?", [window_id]
    ).fetchone()
    if taken is not None:
        where = "in the config file" if taken[0] == "config" else f"announced by {taken[1]}"
        raise MaintenanceConflict(f"maintenance window {window_id!r} exists already ({where}); choose another id")
    return window_id, announced


def insert_window(
    con: duckdb.DuckDBPyConnection, req: MaintenanceRequest, *, actor: str, now: datetime, notice: timedelta
) -> str:
    """Store an operator's window after checking the notice and the id; returns its id."""
    window_id, announced = validate_new(con, req, now=now, notice=notice)
    con.execute(
        f"INSERT INTO maintenance_windows ({WINDOW_COLUMNS}) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, 'api', ?, ?, NULL, NULL, NULL)",
        [window_id, req.start, req.end, announced, req.devices, req.sites, req.reason, now, actor],
    )
    return window_id


def validate_cancel(con: duckdb.DuckDBPyConnection, window_id: str, now: datetime) -> dict[str, Any]:
    row = fetch_window(con, window_id, now)
    if row is None:
        raise LookupError(f"maintenance window {window_id!r} does not exist (gridsentry maintenance list --all)")
    if row["source"] == "config":
        raise MaintenanceConflict(
            f"maintenance window {window_id!r} comes from the config file (alerts.maintenance): remove it there "
            "and restart GridSentry"
        )
    if row["status"] in ("cancelled", "ended"):
        raise MaintenanceConflict(f"maintenance window {window_id!r} is already {row['status']}")
    return row


def cancel_window(
    con: duckdb.DuckDBPyConnection, window_id: str, *, actor: str, reason: str, now: datetime
) -> dict[str, Any]:
    row = validate_cancel(con, window_id, now)
    con.execute(
        "UPDATE maintenance_windows SET cancelled_at = ?, cancelled_by = ?, cancel_reason = ? WHERE window_id = ?",
        [now, actor, reason, window_id],
    )
    return row
