"""`gridsentry db`: backup, restore, check and list backups.

With the service running, `backup` and `check` go through its API (the database file is locked by its
single writer) with the local admin token; with the service stopped they open the file directly.
`restore` refuses to run while the service runs.
"""

from __future__ import annotations

import dataclasses
import json
import os
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import duckdb
import httpx
import typer
from rich.console import Console
from rich.table import Table

from gridsentry.auth import read_local_token
from gridsentry.config import Config, ConfigError, load_config
from storage import archive, backup, pitr
from storage.writer import open_database

db_app = typer.Typer(help="Backups, restore and integrity checks of the history.", no_args_is_help=True)
console = Console()
err_console = Console(stderr=True)

DataDirOption = Annotated[
    Path | None, typer.Option("--data-dir", help="Data directory of the service (default: ./data, or the config's).")
]
ConfigOption = Annotated[Path | None, typer.Option("--config", "-c", help="The service's config file.")]


def _fail(message: str, code: int = 2) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)


def _config(config: Path | None, data_dir: Path | None) -> Config:
    try:
        cfg = load_config(config) if config else Config()
    except ConfigError as exc:
        err_console.print(f"[bold red]{config}: the configuration is not valid[/]")
        for issue in exc.issues:
            err_console.print(f"  {issue}")
        raise typer.Exit(2) from None
    if data_dir is not None:
        cfg = cfg.model_copy(update={"data_dir": data_dir})
    return cfg


def _running(cfg: Config) -> tuple[str, str | None] | None:
    runtime = cfg.data_dir / "runtime.json"
    try:
        info = json.loads(runtime.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    pid = info.get("pid")
    if not isinstance(pid, int):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return str(info["http_url"]), os.environ.get("GRIDSENTRY_TOKEN") or read_local_token(cfg.data_dir)


def _api(method: str, url: str, token: str | None, timeout: float = 3600, **kwargs: Any) -> Any:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    try:
        r = httpx.request(method, url, headers=headers, timeout=timeout, **kwargs)
    except httpx.HTTPError as exc:
        raise _fail(f"GridSentry is running but its API at {url} did not answer: {exc}") from exc
    if r.status_code != 200:
        try:
            detail = r.json().get("detail", r.text)
        except ValueError:
            detail = r.text
        raise _fail(f"{url}: {r.status_code} {detail}")
    return r.json()


@db_app.command("backup")
def backup_cmd(
    kind: Annotated[backup.BackupKindEnum, typer.Option("--kind", "-k", help="full, or incremental")] = (
        backup.BackupKindEnum.full
    ),
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """Back up the database and its Parquet archive (online when the service runs)."""
    cfg = _config(config, data_dir)
    running = _running(cfg)
    if running:
        url, token = running
        info = _api("POST", f"{url}/api/history/backup", token, json={"kind": kind.value})
        console.print(
            f"[green]{info['kind']} backup {info['backup_id']}[/]: {info['readings']:,} readings "
            f"({info['archived_readings']:,} archived), {info['bytes'] / 1e6:.1f} MB in {info['seconds']:.1f} s -> "
            f"{info['path']}"
        )
        return
    db = cfg.database_path
    if not db.exists():
        raise _fail(f"no database at {db}; pass --data-dir or --config of the service to back up")
    con = open_database(db)
    try:
        b = backup.create_backup(
            con,
            cfg.history.backup_path(cfg.data_dir),
            cfg.history.archive_path(cfg.data_dir),
            "full" if kind is backup.BackupKindEnum.full else "incremental",
        )
        backup.record(con, b)
    except (backup.BackupError, duckdb.Error, OSError) as exc:
        raise _fail(f"the backup failed: {exc}") from exc
    finally:
        con.close()
    console.print(
        f"[green]{b.kind} backup {b.backup_id}[/]: {b.readings:,} readings ({b.archived_readings:,} archived), "
        f"{b.bytes / 1e6:.1f} MB in {b.seconds:.1f} s -> {b.path}"
    )


def _parse_at(text: str) -> datetime:
    try:
        at = datetime.fromisoformat(text.replace(" ", "T", 1) if " " in text and "T" not in text else text)
    except ValueError:
        raise _fail(
            f"--at {text!r} is not a time: write it as ISO 8601 with its zone, e.g. 2026-11-20T14:30:00+08:00"
        ) from None
    if at.tzinfo is None:
        raise _fail(f"--at {text!r} has no time zone: add it, e.g. {text}+08:00 (Beijing) or {text}Z (UTC)")
    return at


@db_app.command("restore")
def restore_cmd(
    backup_dir: Annotated[
        Path | None,
        typer.Argument(
            help="The backup directory (its chain must sit beside it). With --at it may be left out: the newest "
            "backup in history.backup.directory is used."
        ),
    ] = None,
    at: Annotated[
        str | None,
        typer.Option(
            "--at",
            help="Point in time (ISO 8601 with zone, e.g. 2026-11-20T14:30:00+08:00): restore the history as it "
            "stood then - readings, events and alerts up to it, alert states of that moment.",
        ),
    ] = None,
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
    force: Annotated[
        bool, typer.Option(help="Move an existing database aside (kept as *.pre-restore-<time>) and restore.")
    ] = False,
) -> None:
    """Restore a backup into the data directory; every file's checksum and every row count is verified."""
    cfg = _config(config, data_dir)
    if _running(cfg):
        raise _fail("GridSentry is running on this data directory; stop it before restoring")
    archive_root = cfg.history.archive_path(cfg.data_dir)
    if at is not None:
        when = _parse_at(at)
        try:
            point = pitr.restore_at(
                cfg.history.backup_path(cfg.data_dir),
                when,
                cfg.database_path,
                archive_root,
                force=force,
                backup_dir=backup_dir,
            )
        except backup.BackupError as exc:
            raise _fail(str(exc)) from exc
        removed = ", ".join(f"{n:,} {what}" for what, n in point.removed.items()) or "nothing"
        console.print(
            f"[green]restored the history as of {point.at}[/] from backup {point.backup_id} (taken "
            f"{point.backup_taken_at}): {point.readings:,} readings, the latest at {point.latest_reading}; "
            f"removed as later than {point.at}: {removed}",
            soft_wrap=True,
        )
        if point.moved_aside:
            console.print(f"the previous database was kept as {point.moved_aside}")
        return
    if backup_dir is None:
        raise _fail("name the backup directory to restore (gridsentry db backups lists them), or pass --at TIME")
    try:
        report = backup.restore(backup_dir, cfg.database_path, archive_root, force=force)
    except backup.BackupError as exc:
        raise _fail(str(exc)) from exc
    console.print(
        f"[green]restored {report.backup_id}[/] into {report.database}: {report.counts['readings']:,} hot and "
        f"{report.archived_readings:,} archived readings, {report.counts['alerts']:,} alerts; counts verified"
    )
    if report.moved_aside:
        console.print(f"the previous database was kept as {report.moved_aside}")


@db_app.command("check")
def check_cmd(
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Integrity: read every value, count rows per table, verify the archive; exit 1 on any problem."""
    cfg = _config(config, data_dir)
    running = _running(cfg)
    if running:
        url, token = running
        out = _api("GET", f"{url}/api/history/check", token)
    else:
        db = cfg.database_path
        if not db.exists():
            raise _fail(f"no database at {db}; pass --data-dir or --config")
        con = duckdb.connect(str(db), read_only=True)
        try:
            # The archive may have moved with its data directory (a copied or restored backup): read it where it is.
            sql = archive.view_sql(con, cfg.history.archive_path(cfg.data_dir))
            con.execute(sql.replace("CREATE OR REPLACE VIEW readings_archive", "CREATE TEMP VIEW gs_check_archive", 1))
            report = backup.check(con, cfg.history.archive_path(cfg.data_dir), archive_view="gs_check_archive")
        except duckdb.Error as exc:
            raise _fail(f"{db} cannot be checked: {exc}", 1) from exc
        finally:
            con.close()
        out = dataclasses.asdict(report)
        out["ok"] = report.ok
    if as_json:
        console.print_json(data=out)
    else:
        table = Table("table", "rows", title=f"schema version {out['schema_version']}")
        for name, n in out["counts"].items():
            table.add_row(name, f"{n:,}")
        table.add_row("readings (archive)", f"{out['archived_readings']:,}")
        console.print(table)
        console.print(f"readings from {out['first_reading']} to {out['last_reading']}")
        if out["days_without_readings"]:
            console.print(f"[yellow]UTC days with no readings at all:[/] {', '.join(out['days_without_readings'])}")
        for p in out["problems"]:
            err_console.print(f"[bold red]problem:[/] {p}")
        console.print("[green]ok[/]" if out["ok"] else f"[bold red]{len(out['problems'])} problem(s)[/]")
    if not out["ok"]:
        raise typer.Exit(1)


@db_app.command("backups")
def list_cmd(data_dir: DataDirOption = None, config: ConfigOption = None) -> None:
    """List the complete backups, oldest first."""
    cfg = _config(config, data_dir)
    table = Table("backup", "kind", "parent", "readings", "MB", "seconds")
    for b in backup.list_backups(cfg.history.backup_path(cfg.data_dir)):
        table.add_row(b.backup_id, b.kind, b.parent_id or "", f"{b.readings:,}", f"{b.bytes / 1e6:.1f}", f"{b.seconds}")
    console.print(table)


@db_app.command("seed-demo")
def seed_demo_cmd(
    days: Annotated[float, typer.Option(help="Days of history, ending now.")] = 3.0,
    interval_s: Annotated[float, typer.Option(help="Seconds between a device's readings.")] = 60.0,
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """Fill a stopped, empty data directory with the demo hub's simulated history (for the SQL cookbook)."""
    from gridsentry.config import metric_catalogue
    from gridsentry.demo_history import seed_demo_history

    cfg = _config(config, data_dir)
    if _running(cfg):
        raise _fail("GridSentry is running on this data directory; seed a stopped one")
    con = open_database(cfg.database_path)
    try:
        have = con.execute("SELECT count(*) FROM readings").fetchone()
        if have and have[0]:
            raise _fail(f"{cfg.database_path} already holds {have[0]:,} readings; seed an empty data directory")
        n = seed_demo_history(
            con, days=days, interval_s=interval_s, metrics=[m.model_dump() for m in metric_catalogue(cfg).values()]
        )
    finally:
        con.close()
    console.print(f"[green]{n:,} readings[/] of the demo hub over {days:g} days written to {cfg.database_path}")
