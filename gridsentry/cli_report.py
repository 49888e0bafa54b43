"""`gridsentry report`: the contract's reports, read from the database file (read-only)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated
from zoneinfo import ZoneInfo

import duckdb
import typer
from rich.console import Console

from gridsentry.cli_alerts import ConfigOpt, DataDir, _config, _fail
from reports.monthly import build_monthly, render_markdown

report_app = typer.Typer(help="Reports the service contract asks for.", no_args_is_help=True)
err = Console(stderr=True)


@report_app.command("monthly")
def monthly(
    month: Annotated[str, typer.Option(help="YYYY-MM, in the standby time zone.")],
    site: Annotated[str | None, typer.Option(help="Only this site's chargers.")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write here instead of stdout.")] = None,
    data_dir: DataDir = None,
    config: ConfigOpt = None,
) -> None:
    """Monthly operations report (Markdown): uses, kWh charged and faults per charger; alert KPIs per class."""
    cfg = _config(config, data_dir)
    zone = ZoneInfo(cfg.alerts.sla.standby.timezone)
    db = cfg.database_path
    if not db.exists():
        raise _fail(f"no database at {db}; start GridSentry first, or pass --data-dir/--config")
    try:
        con = duckdb.connect(str(db), read_only=True)
    except duckdb.IOException as exc:
        raise _fail(f"the database {db} is in use by a running GridSentry ({exc}); stop it or use a backup") from exc
    try:
        text = render_markdown(build_monthly(con, month, zone, site))
    except ValueError as exc:
        raise _fail(str(exc)) from exc
    finally:
        con.close()
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")
        err.print(f"report written to {output}")
