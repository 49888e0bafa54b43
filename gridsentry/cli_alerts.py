"""`gridsentry alerts ...`, `gridsentry oncall now` and `gridsentry sla report`.

Changes (ack, assign, comment, close, arrive, silence) go through the running service's API, so they are
paged, audited and written by the single writer. Reads use the API too, or open the database read-only
when GridSentry is stopped.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar
from zoneinfo import ZoneInfo

import duckdb
import httpx
import orjson
import typer
from rich.console import Console
from rich.table import Table

from alerts.kpi import monthly_kpis
from alerts.lifecycle import ALERT_COLUMNS
from alerts.oncall import OnCall, duty_line
from gridsentry.auth import read_local_token
from gridsentry.config import Config, ConfigError, load_config
from gridsentry.service import RUNTIME_FILE, Service

alerts_app = typer.Typer(help="Alerts: list, show, acknowledge, assign, comment, close, silence.", no_args_is_help=True)
oncall_app = typer.Typer(help="Who is on call.", no_args_is_help=True)
sla_app = typer.Typer(help="Service-level KPIs.", no_args_is_help=True)

console = Console()
err = Console(stderr=True)
T = TypeVar("T")

DataDir = Annotated[Path | None, typer.Option(help="Data directory of the service (default ./data or the config's).")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="The service's config file.")]
Actor = Annotated[
    str | None, typer.Option(help="Who acts, when the token is shared (recorded as 'ACTOR via token-holder').")
]


class Fmt(StrEnum):
    table = "table"
    json = "json"


def _fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)


def _config(config: Path | None, data_dir: Path | None) -> Config:
    if config is not None:
        try:
            cfg = load_config(config)
        except ConfigError as exc:
            err.print(f"[bold red]{config}: the configuration is not valid[/]")
            for issue in exc.issues:
                err.print(f"  {issue}")
            raise typer.Exit(2) from None
    else:
        cfg = Config()
    if data_dir is not None:
        cfg.data_dir = data_dir
    return cfg


def _running(cfg: Config) -> tuple[str, str | None] | None:
    """(API URL, token) of the service running on this data directory, or None."""
    runtime = cfg.data_dir / RUNTIME_FILE
    try:
        info = json.loads(runtime.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    pid = info.get("pid")
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return None
    except (PermissionError, TypeError, ValueError):
        pass
    token = os.environ.get("GRIDSENTRY_TOKEN") or read_local_token(cfg.data_dir)
    return str(info["http_url"]), token


def _api(cfg: Config, method: str, path: str, **kw: Any) -> Any:
    found = _running(cfg)
    if found is None:
        raise _fail(
            f"GridSentry is not running on {cfg.data_dir} (no live {RUNTIME_FILE}): alert changes go through the "
            "running service so that they are paged and audited. Start it, or pass --data-dir/--config"
        )
    url, token = found
    headers = {"authorization": f"Bearer {token}"} if token else {}
    try:
        r = httpx.request(method, url + path, headers=headers, timeout=30, **kw)
    except httpx.HTTPError as exc:
        raise _fail(f"GridSentry's API at {url} did not answer: {exc}") from exc
    if r.status_code >= 400:
        try:
            detail = r.json().get("detail", r.text)
        except ValueError:
            detail = r.text
        if r.status_code == 401 and not token:
            detail = f"{detail}. Set GRIDSENTRY_TOKEN to an operator token, or run as the user that runs GridSentry"
        raise _fail(str(detail))
    return r.json()


def _read(cfg: Config, path: str, params: dict[str, Any], offline: Callable[[duckdb.DuckDBPyConnection], T]) -> Any:
    if _running(cfg) is not None:
        return _api(cfg, "GET", path, params={k: v for k, v in params.items() if v is not None})
    db = cfg.database_path
    if not db.exists():
        raise _fail(f"no database at {db}; start GridSentry first, or pass --data-dir/--config")
    try:
        con = duckdb.connect(str(db), read_only=True)
    except duckdb.IOException as exc:
        raise _fail(f"the database {db} is locked by a running GridSentry without a runtime file ({exc})") from exc
    try:
        return orjson.loads(orjson.dumps(offline(con), default=str))
    finally:
        con.close()


def _dump(data: Any) -> None:
    sys.stdout.write(orjson.dumps(data, default=str, option=orjson.OPT_INDENT_2).decode() + "\n")


def _when(v: Any, zone: ZoneInfo) -> str:
    if not v:
        return ""
    return datetime.fromisoformat(str(v)).astimezone(zone).strftime("%m-%d %H:%M")


def _rows(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any]) -> list[dict[str, Any]]:
    cur = con.execute(sql, params)
    cols = [d[0] for d in cur.description or []]
    return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


# --- alerts --------------------------------------------------------------------------------------------
@alerts_app.command("list")
def list_alerts(
    state: Annotated[str, typer.Option(help="open, pending, firing, acknowledged, resolved, closed or all.")] = "open",
    device: Annotated[str | None, typer.Option(help="Only this device.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many.")] = 200,
    output: Annotated[Fmt, typer.Option("--format", "-f")] = Fmt.table,
    data_dir: DataDir = None,
    config: ConfigOpt = None,
) -> None:
    """Alerts, newest first, with class, device, value and deadlines (local time)."""
    cfg = _config(config, data_dir)
    states = {
        "open": ["pending", "firing", "acknowledged"],
        "all": ["pending", "firing", "acknowledged", "resolved", "closed"],
    }
    chosen = states.get(state, [state])

    def offline(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
        return _rows(
            con,
            f"SELECT {ALERT_COLUMNS} FROM alerts WHERE list_contains(?, state) AND (? IS NULL OR device_id = ?) "
            "ORDER BY alert_id DESC LIMIT ?",
            [chosen, device, device, limit],
        )

    data = _read(cfg, "/api/alerts", {"state": state, "device_id": device, "limit": limit}, offline)
    if output is Fmt.json:
        _dump(data)
        return
    zone = ZoneInfo(cfg.alerts.sla.standby.timezone)
    table = Table("#", "class", "state", "device", "site", "alert", "value", "ack due", "restore due", "who")
    for a in data:
        value = f"{a['value']:.1f} {a['unit'] or ''}" if a["value"] is not None else ""
        flags = " (silenced)" if a.get("suppressed") else (" (flapping)" if a.get("flapping") else "")
        table.add_row(
            str(a["alert_id"]),
            a["event_class"],
            a["state"] + flags,
            a["device_id"],
            a["site"] or "",
            a["title"],
            value,
            _when(a["ack_due"], zone),
            _when(a["restore_due"], zone),
            a.get("assignee") or a.get("acknowledged_by") or "",
        )
    console.print(table)
    err.print(f"[dim]{len(data)} alerts, times in {zone.key}[/]")


@alerts_app.command("show")
def show(
    alert_id: Annotated[int, typer.Argument(help="Alert number.")],
    output: Annotated[Fmt, typer.Option("--format", "-f")] = Fmt.table,
    data_dir: DataDir = None,
    config: ConfigOpt = None,
) -> None:
    """One alert: values, deadlines, its trail and its notifications."""
    cfg = _config(config, data_dir)

    def offline(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
        found = _rows(con, f"SELECT {ALERT_COLUMNS} FROM alerts WHERE alert_id = ?", [alert_id])
        if not found:
            raise _fail(f"alert #{alert_id} does not exist")
        a = found[0]
        a["events"] = _rows(
            con, "SELECT ts, action, actor, detail FROM alert_events WHERE alert_id = ? ORDER BY ts, rowid", [alert_id]
        )
        a["notifications"] = _rows(
            con,
            "SELECT kind, channel, recipient, status, attempts, last_error FROM notifications WHERE alert_id = ? "
            "ORDER BY notification_id",
            [alert_id],
        )
        return a

    a = _read(cfg, f"/api/alerts/{alert_id}", {}, offline)
    if output is Fmt.json:
        _dump(a)
        return
    zone = ZoneInfo(cfg.alerts.sla.standby.timezone)
    console.print(
        f"[bold]#{a['alert_id']} class {a['event_class']} {a['state'].upper()}[/] {a['device_id']} @ {a['site'] or '-'}: "
        f"{a['title']}\n{a['message']}\n"
        f"ack due {_when(a['ack_due'], zone)}, on site due {_when(a['onsite_due'], zone)}, "
        f"restore due {_when(a['restore_due'], zone)} ({zone.key}); policy {a['policy']}; "
        f"escalation level {int(a['escalation_level'] or 0) + 1}"
        + (f"; not paged: {a['suppressed']}" if a.get("suppressed") else "")
    )
    trail = Table("when", "action", "who", "detail", title="trail")
    for e in a["events"]:
        trail.add_row(_when(e["ts"], zone), e["action"], e["actor"], e["detail"] or "")
    console.print(trail)
    sent = Table("kind", "channel", "to", "status", "attempts", "last error", title="notifications")
    for n in a["notifications"]:
        sent.add_row(
            n["kind"], n["channel"], n["recipient"] or "", n["status"], str(n["attempts"]), n["last_error"] or ""
        )
    console.print(sent)


def _post(cfg: Config, path: str, body: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = _api(cfg, "POST", path, json={k: v for k, v in body.items() if v is not None})
    return result


@alerts_app.command("ack")
def ack(
    alert_id: Annotated[int, typer.Argument(help="Alert number.")],
    comment: Annotated[str | None, typer.Option("--comment", "-m", help="Kept in the trail.")] = None,
    actor: Actor = None,
    data_dir: DataDir = None,
    config: ConfigOpt = None,
) -> None:
    """Acknowledge a firing alert: stops the response clock and the escalation."""
    a = _post(_config(config, data_dir), f"/api/alerts/{alert_id}/ack", {"comment": comment, "actor": actor})
    console.print(f"alert #{alert_id} acknowledged by {a['acknowledged_by']}")


@alerts_app.command("assign")
def assign(
    alert_id: Annotated[int, typer.Argument(help="Alert number.")],
    assignee: Annotated[str, typer.Argument(help="Person id from alerts.oncall.people, or a name.")],
    comment: Annotated[str | None, typer.Option("--comment", "-m")] = None,
    actor: Actor = None,
    data_dir: DataDir = None,
    config: ConfigOpt = None,
) -> None:
    """Give an alert to a person (notified when they are in the config's people)."""
    body = {"assignee": assignee, "comment": comment, "actor": actor}
    _post(_config(config, data_dir), f"/api/alerts/{alert_id}/assign", body)
    console.print(f"alert #{alert_id} assigned to {assignee}")


@alerts_app.command("comment")
def comment_cmd(
    alert_id: Annotated[int, typer.Argument(help="Alert number.")],
    text: Annotated[str, typer.Argument(help="The comment.")],
    actor: Actor = None,
    data_dir: DataDir = None,
    config: ConfigOpt = None,
) -> None:
    """Add a comment to an alert's trail."""
    _post(_config(config, data_dir), f"/api/alerts/{alert_id}/comment", {"comment": text, "actor": actor})
    console.print(f"comment added to alert #{alert_id}")


@alerts_app.command("arrive")
def arrive(
    alert_id: Annotated[int, typer.Argument(help="Alert number.")],
    comment: Annotated[str | None, typer.Option("--comment", "-m")] = None,
    actor: Actor = None,
    data_dir: DataDir = None,
    config: ConfigOpt = None,
) -> None:
    """Record the engineer on site: stops the on-site clock."""
    _post(_config(config, data_dir), f"/api/alerts/{alert_id}/arrive", {"comment": comment, "actor": actor})
    console.print(f"alert #{alert_id}: engineer on site recorded")


@alerts_app.command("close")
def close(
    alert_id: Annotated[int, typer.Argument(help="Alert number.")],
    comment: Annotated[str | None, typer.Option("--comment", "-m", help="What was done.")] = None,
    actor: Actor = None,
    data_dir: DataDir = None,
    config: ConfigOpt = None,
) -> None:
    """Close an alert once the fault is cleared."""
    _post(_config(config, data_dir), f"/api/alerts/{alert_id}/close", {"comment": comment, "actor": actor})
    console.print(f"alert #{alert_id} closed")


@alerts_app.command("silence")
def silence(
    comment: Annotated[str, typer.Option("--comment", "-m", help="Why (required).")],
    device: Annotated[str | None, typer.Option(help="Device id.")] = None,
    rule: Annotated[str | None, typer.Option(help="Rule id.")] = None,
    site: Annotated[str | None, typer.Option(help="Site id.")] = None,
    duration: Annotated[str, typer.Option(help="How long: 30m, 2h, 1d.")] = "2h",
    data_dir: DataDir = None,
    config: ConfigOpt = None,
) -> None:
    """Stop paging for a device, rule or site for a while (open alerts included)."""
    body = {"device_id": device, "rule_id": rule, "site": site, "duration": duration, "comment": comment}
    if device is None and rule is None and site is None:
        raise _fail("name at least one of --device, --rule or --site (silencing everything is refused)")
    r = _post(_config(config, data_dir), "/api/silences", body)
    console.print(f"silence #{r['silence_id']} until {r['ends_at']}")


@alerts_app.command("unsilence")
def unsilence(
    silence_id: Annotated[int, typer.Argument(help="Silence number.")],
    data_dir: DataDir = None,
    config: ConfigOpt = None,
) -> None:
    """End a silence now."""
    _api(_config(config, data_dir), "DELETE", f"/api/silences/{silence_id}")
    console.print(f"silence #{silence_id} ended")


@alerts_app.command("outbox")
def outbox(
    status: Annotated[str, typer.Option(help="pending, sent, failed or all.")] = "pending",
    output: Annotated[Fmt, typer.Option("--format", "-f")] = Fmt.table,
    data_dir: DataDir = None,
    config: ConfigOpt = None,
) -> None:
    """Notifications waiting, sent or given up on, with attempts and the last error."""
    cfg = _config(config, data_dir)

    def offline(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
        return _rows(
            con,
            "SELECT notification_id, alert_id, kind, channel, recipient, status, attempts, next_try_at, last_error "
            "FROM notifications WHERE ? = 'all' OR status = ? ORDER BY notification_id DESC LIMIT 500",
            [status, status],
        )

    data = _read(cfg, "/api/notifications", {"status": status}, offline)
    if output is Fmt.json:
        _dump(data)
        return
    table = Table("id", "alert", "kind", "channel", "to", "status", "attempts", "last error")
    for n in data:
        table.add_row(
            str(n["notification_id"]),
            str(n["alert_id"] or ""),
            n["kind"],
            n["channel"],
            n["recipient"] or "",
            n["status"],
            str(n["attempts"]),
            n["last_error"] or "",
        )
    console.print(table)


# --- on call -------------------------------------------------------------------------------------------
def duty_line_of(service: Service) -> str:
    """Who the running service pages now, for the demo banner."""
    cfg = service.cfg.alerts
    return duty_line(
        service.alerts.oncall, [lvl.after for lvl in cfg.escalation], datetime.now(UTC), service.alerts.zone
    )


@oncall_app.command("now")
def oncall_now(
    at: Annotated[str | None, typer.Option(help="Another moment, ISO 8601 with offset.")] = None,
    output: Annotated[Fmt, typer.Option("--format", "-f")] = Fmt.table,
    data_dir: DataDir = None,
    config: ConfigOpt = None,
) -> None:
    """Who is paged now at each escalation level (from the config, or the running service)."""
    cfg = _config(config, data_dir)
    when = datetime.fromisoformat(at) if at else datetime.now(UTC)
    if when.tzinfo is None:
        raise _fail("give --at with a UTC offset, e.g. 2026-11-23T09:00:00+08:00")
    zone = ZoneInfo(cfg.alerts.sla.standby.timezone)
    if config is None and _running(cfg) is not None:
        data = _api(cfg, "GET", "/api/oncall", params={"at": when.isoformat()})
    else:
        data = [
            {
                "level": p.level + 1,
                "level_name": p.level_name,
                "rota": p.shift.rota,
                "person": p.person.id,
                "name": p.person.name,
                "phone": p.person.phone,
                "since": p.shift.since.isoformat(),
                "until": p.shift.until.isoformat(),
                "override": p.shift.override,
                "pages_after_s": cfg.alerts.escalation[p.level].after,
            }
            for p in OnCall(cfg.alerts).paged(when)
        ]
    if output is Fmt.json:
        _dump(data)
        return
    if not data:
        err.print("no escalation levels are configured (alerts.escalation): nobody is paged, only webhooks")
        return
    table = Table(
        "level",
        "paged after",
        "who",
        "phone",
        "rota",
        "shift (local)",
        title=f"on call at {_when(when.isoformat(), zone)}",
    )
    for p in data:
        who = f"{p['name']} ({p['person']})" + (" [override]" if p["override"] else "")
        table.add_row(
            f"{p['level']} {p['level_name']}",
            f"{p['pages_after_s'] / 60:.0f} min",
            who,
            p["phone"] or "",
            p["rota"],
            f"{_when(p['since'], zone)} - {_when(p['until'], zone)}",
        )
    console.print(table)


# --- SLA -----------------------------------------------------------------------------------------------
@sla_app.command("report")
def sla_report(
    month: Annotated[str, typer.Option(help="YYYY-MM, in the standby time zone.")],
    output: Annotated[Fmt, typer.Option("--format", "-f")] = Fmt.table,
    data_dir: DataDir = None,
    config: ConfigOpt = None,
) -> None:
    """Response timeliness rate, resolution rate, MTTA and MTTR per event class for one month."""
    cfg = _config(config, data_dir)
    zone = ZoneInfo(cfg.alerts.sla.standby.timezone)

    def offline(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
        try:
            return [k.as_dict() for k in monthly_kpis(con, month, zone)]
        except ValueError as exc:
            raise _fail(str(exc)) from exc

    data = _read(cfg, "/api/sla/report", {"month": month}, offline)
    if output is Fmt.json:
        _dump(data)
        return

    def pct(v: float | None) -> str:
        return f"{v * 100:.1f} %" if v is not None else "-"

    def mins(v: float | None) -> str:
        return f"{v / 60:.1f} min" if v is not None else "-"

    table = Table(
        "class", "events", "responded in time", "response timeliness", "resolved", "resolution rate",
        "in restore deadline", "SLA breaches", "MTTA", "MTTR", title=f"SLA report {month} ({zone.key})",
    )  # fmt: skip
    for k in data:
        table.add_row(
            k["event_class"],
            str(k["events"]),
            str(k["responded_in_time"]),
            pct(k["response_timeliness_rate"]),
            str(k["resolved"]),
            pct(k["resolution_rate"]),
            pct(k["resolved_in_time_rate"]),
            str(k["sla_breaches"]),
            mins(k["mtta_s"]),
            mins(k["mttr_s"]),
        )
    console.print(table)
