"""`gridsentry maintenance add|list|show|cancel`: planned maintenance windows on the running service.

Announcing and cancelling go through the API (so the contract's notice is enforced, suppression is replanned at
once and the change is audited); listing reads the database read-only when GridSentry is stopped.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

import duckdb
import typer
from rich.table import Table

from alerts.maintenance import fetch_window, fetch_windows
from gridsentry.cli_alerts import Actor, ConfigOpt, DataDir, Fmt, _api, _config, _dump, _fail, _read, _when, console
from rules.model import parse_duration

maintenance_app = typer.Typer(
    help="Planned maintenance windows: announce, list, cancel (alerts of the listed devices page nobody).",
    no_args_is_help=True,
)


def _moment(text: str, zone: ZoneInfo, option: str) -> datetime:
    """ISO 8601 with offset, or local wall time in the standby zone ('2026-12-01 09:00')."""
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise _fail(f"{option} {text!r} is not a date and time; write e.g. '2026-12-01 09:00' or with +08:00") from None
    return at if at.tzinfo is not None else at.replace(tzinfo=zone)


@maintenance_app.command("add")
def add(
    start: Annotated[str, typer.Option(help="Start: '2026-12-01 09:00' (standby time zone) or ISO 8601 with offset.")],
    reason: Annotated[str, typer.Option("--reason", "-m", help="What is being done (shown on suppressed alerts).")],
    end: Annotated[str | None, typer.Option(help="End, like --start.")] = None,
    duration: Annotated[str | None, typer.Option(help="...or how long: 3h, 90m, 1d.")] = None,
    device: Annotated[list[str] | None, typer.Option(help="Device under maintenance (repeat for more).")] = None,
    site: Annotated[list[str] | None, typer.Option(help="Whole site under maintenance (repeat for more).")] = None,
    window_id: Annotated[str | None, typer.Option("--id", help="Reference, e.g. the change ticket.")] = None,
    announced_at: Annotated[
        str | None, typer.Option(help="When the customer was notified, if earlier than now (e.g. by letter).")
    ] = None,
    actor: Actor = None,
    data_dir: DataDir = None,
    config: ConfigOpt = None,
) -> None:
    """Announce a planned window. Refused when less than the contract's notice (3 days by default) ahead."""
    cfg = _config(config, data_dir)
    zone = ZoneInfo(cfg.alerts.sla.standby.timezone)
    begins = _moment(start, zone, "--start")
    if (end is None) == (duration is None):
        raise _fail("give either --end or --duration")
    if end is not None:
        ends = _moment(end, zone, "--end")
    elif duration is not None:
        try:
            ends = begins + timedelta(seconds=parse_duration(duration))
        except ValueError as exc:
            raise _fail(f"--duration: {exc}") from None
    if not device and not site:
        raise _fail("name at least one --device or --site (a window for everything is refused)")
    body: dict[str, Any] = {
        "id": window_id,
        "start": begins.isoformat(),
        "end": ends.isoformat(),
        "devices": device or [],
        "sites": site or [],
        "reason": reason,
        "announced_at": _moment(announced_at, zone, "--announced-at").isoformat() if announced_at else None,
        "actor": actor,
    }
    w = _api(cfg, "POST", "/api/maintenance", json={k: v for k, v in body.items() if v is not None})
    console.print(
        f"maintenance window {w['window_id']}: {_when(w['starts_at'], zone)} - {_when(w['ends_at'], zone)} "
        f"({zone.key}), {', '.join([*w['devices'], *w['sites']])}; announced by {w['created_by']}"
    )


@maintenance_app.command("list")
def list_windows(
    show_all: Annotated[bool, typer.Option("--all", help="Include ended and cancelled windows.")] = False,
    output: Annotated[Fmt, typer.Option("--format", "-f")] = Fmt.table,
    data_dir: DataDir = None,
    config: ConfigOpt = None,
) -> None:
    """Upcoming and active windows (with --all: every one), in the standby time zone."""
    cfg = _config(config, data_dir)
    status: Literal["current", "all"] = "all" if show_all else "current"

    def offline(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
        return fetch_windows(con, datetime.now(zone), status)

    zone = ZoneInfo(cfg.alerts.sla.standby.timezone)
    data = _read(cfg, "/api/maintenance", {"status": status}, offline)
    if output is Fmt.json:
        _dump(data)
        return
    table = Table("id", "status", "from", "to", "devices / sites", "reason", "announced", "by", title=zone.key)
    for w in data:
        cancelled = f" by {w['cancelled_by']}: {w['cancel_reason']}" if w["cancelled_at"] else ""
        table.add_row(
            w["window_id"],
            w["status"] + cancelled,
            _when(w["starts_at"], zone),
            _when(w["ends_at"], zone),
            ", ".join([*w["devices"], *(f"site {s}" for s in w["sites"])]),
            w["reason"] or "",
            _when(w["announced_at"], zone),
            w["created_by"],
        )
    console.print(table)


@maintenance_app.command("show")
def show(
    window_id: Annotated[str, typer.Argument(help="Window id.")],
    data_dir: DataDir = None,
    config: ConfigOpt = None,
) -> None:
    """One window as JSON, with its status."""
    cfg = _config(config, data_dir)

    def offline(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
        row = fetch_window(con, window_id, datetime.now(ZoneInfo("UTC")))
        if row is None:
            raise _fail(f"maintenance window {window_id!r} does not exist")
        return row

    _dump(_read(cfg, f"/api/maintenance/{window_id}", {}, offline))


@maintenance_app.command("cancel")
def cancel(
    window_id: Annotated[str, typer.Argument(help="Window id (gridsentry maintenance list).")],
    reason: Annotated[str, typer.Option("--reason", "-m", help="Why (kept with the window).")],
    actor: Actor = None,
    data_dir: DataDir = None,
    config: ConfigOpt = None,
) -> None:
    """Cancel a planned window, or end one in progress: its devices' open alerts page again."""
    body = {"reason": reason, "actor": actor}
    w = _api(
        _config(config, data_dir),
        "POST",
        f"/api/maintenance/{window_id}/cancel",
        json={k: v for k, v in body.items() if v},
    )
    console.print(f"maintenance window {w['window_id']} cancelled by {w['cancelled_by']}")
