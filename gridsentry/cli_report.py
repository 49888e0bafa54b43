"""`gridsentry report`: the contract's reports, read from the database file (read-only)."""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, TypeVar
from zoneinfo import ZoneInfo

import duckdb
import typer
from rich.console import Console

from gridsentry.cli_alerts import ConfigOpt, DataDir, _config, _fail
from gridsentry.config import Config
from reports.monthly import build_monthly, render_html, render_markdown, write_xlsx

report_app = typer.Typer(help="Reports the service contract asks for.", no_args_is_help=True)
err = Console(stderr=True)
T = TypeVar("T")


def _from_database(cfg: Config, when_in_use: str, build: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
    """Build a report from the database file opened read-only; a bad argument (ValueError) is a clean CLI error."""
    db = cfg.database_path
    if not db.exists():
        raise _fail(f"no database at {db}; start GridSentry first, or pass --data-dir/--config")
    try:
        con = duckdb.connect(str(db), read_only=True)
    except duckdb.IOException as exc:
        raise _fail(f"the database {db} is in use by a running GridSentry ({exc}); {when_in_use}") from exc
    try:
        return build(con)
    except ValueError as exc:
        raise _fail(str(exc)) from exc
    finally:
        con.close()


class ReportFormat(StrEnum):
    md = "md"
    html = "html"
    xlsx = "xlsx"


@report_app.command("monthly")
def monthly(
    month: Annotated[str, typer.Option(help="YYYY-MM, in the standby time zone.")],
    site: Annotated[str | None, typer.Option(help="Only this site: every section, the alert KPIs included.")] = None,
    output_format: Annotated[
        ReportFormat, typer.Option("--format", "-f", help="md (text), html (printable, with charts) or xlsx.")
    ] = ReportFormat.md,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write here (xlsx needs it).")] = None,
    data_dir: DataDir = None,
    config: ConfigOpt = None,
) -> None:
    """Monthly operations report: chargers, PV, transformers, alert KPIs per class, data completeness."""
    if output_format is ReportFormat.xlsx and output is None:
        raise _fail("--format xlsx writes a file: add --output report.xlsx")
    cfg = _config(config, data_dir)
    zone = ZoneInfo(cfg.alerts.sla.standby.timezone)
    report = _from_database(cfg, "stop it or use a backup", lambda con: build_monthly(con, month, zone, site))
    if output_format is ReportFormat.xlsx and output is not None:
        write_xlsx(report, output)
        err.print(f"report written to {output}")
        return
    text = render_html(report) if output_format is ReportFormat.html else render_markdown(report)
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")
        err.print(f"report written to {output}")


class MaintenanceFormat(StrEnum):
    md = "md"
    json = "json"
    csv = "csv"


@report_app.command("maintenance")
def maintenance(
    site: Annotated[str | None, typer.Option(help="Only this site's devices.")] = None,
    days: Annotated[int, typer.Option(min=1, help="Fault-rate period: the last N days.")] = 30,
    top: Annotated[int | None, typer.Option(min=1, help="Show only the first N devices to visit.")] = None,
    output_format: Annotated[MaintenanceFormat, typer.Option("--format", "-f", help="md, json or csv.")] = (
        MaintenanceFormat.md
    ),
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write here instead of stdout.")] = None,
    data_dir: DataDir = None,
    config: ConfigOpt = None,
) -> None:
    """Fault rates per device model per 1,000 operating hours, and the devices to visit first, with why."""
    from reports.maintenance import build_maintenance
    from reports.maintenance import render_csv as maintenance_csv
    from reports.maintenance import render_json as maintenance_json
    from reports.maintenance import render_markdown as maintenance_md

    cfg = _config(config, data_dir)
    zone = ZoneInfo(cfg.alerts.sla.standby.timezone)
    report = _from_database(
        cfg, "use the API route instead", lambda con: build_maintenance(con, days=days, site=site, zone=zone, limit=top)
    )
    render = {
        MaintenanceFormat.md: maintenance_md,
        MaintenanceFormat.json: maintenance_json,
        MaintenanceFormat.csv: maintenance_csv,
    }[output_format]
    text = render(report)
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")
        err.print(f"report written to {output}")


@report_app.command("runs")
def runs(
    limit: Annotated[int, typer.Option(min=1, help="Newest N scheduled reports.")] = 20,
    data_dir: DataDir = None,
    config: ConfigOpt = None,
) -> None:
    """Scheduled reports queued (monthly, dispatch progress, device status) and how their delivery went."""
    from rich.table import Table

    cfg = _config(config, data_dir)
    db = cfg.database_path
    if not db.exists():
        raise _fail(f"no database at {db}; start GridSentry first, or pass --data-dir/--config")
    try:
        con = duckdb.connect(str(db), read_only=True)
    except duckdb.IOException as exc:
        raise _fail(f"the database {db} is in use by a running GridSentry ({exc}); stop it or use a backup") from exc
    try:
        rows = con.execute(
            """
            SELECT r.report, r.period, r.queued_at, r.recipients,
                   count(*) FILTER (WHERE n.status = 'sent'), count(*) FILTER (WHERE n.status = 'pending'),
                   count(*) FILTER (WHERE n.status = 'failed'), max(n.last_error)
            FROM report_runs r LEFT JOIN notifications n ON n.idempotency_key = 'report:' || r.report || ':' || r.period
            GROUP BY ALL ORDER BY r.queued_at DESC LIMIT ?
            """,
            [limit],
        ).fetchall()
    finally:
        con.close()
    zone = ZoneInfo(cfg.alerts.sla.standby.timezone)
    table = Table("report", "period", f"queued ({zone.key})", "recipients", "sent", "pending", "failed", "last error")
    for report, period, queued, recipients, sent, pending, failed, error in rows:
        table.add_row(
            report, period, f"{queued.astimezone(zone):%Y-%m-%d %H:%M}", str(recipients), str(sent), str(pending),
            str(failed), error or "",
        )  # fmt: skip
    Console().print(table if rows else "no scheduled report has been queued yet (see `reports:` in the config)")
