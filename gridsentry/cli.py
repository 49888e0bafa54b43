"""The `gridsentry` command line (typer + rich)."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import getpass
import io
import json
import logging
import os
import signal
import sys
import time
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import duckdb
import httpx
import orjson
import pyarrow.parquet as pq
import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.panel import Panel
from rich.table import Table

from collector.modbus.cli import modbus_app
from gridsentry import __version__
from gridsentry.auth import hash_token, new_token, read_local_token
from gridsentry.cli_alerts import alerts_app, duty_line_of, oncall_app, sla_app
from gridsentry.cli_db import db_app
from gridsentry.cli_maintenance import maintenance_app
from gridsentry.cli_report import report_app
from gridsentry.cli_rules import rules_app
from gridsentry.config import Config, ConfigError, example_yaml, load_config
from gridsentry.screens.cli import screens_app
from gridsentry.service import RUNTIME_FILE, Service
from storage.sql import (
    QueryRejectedError,
    QueryResult,
    QueryTimeoutError,
    result_as_csv,
    result_as_parquet,
    run_read_query,
)

app = typer.Typer(
    help="GridSentry: streaming telemetry monitor for EV-charging, PV and box-transformer fleets.",
    no_args_is_help=True,
    add_completion=False,
)
config_app = typer.Typer(help="Validate and inspect configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(modbus_app, name="modbus")
app.add_typer(db_app, name="db")
app.add_typer(alerts_app, name="alerts")
app.add_typer(oncall_app, name="oncall")
app.add_typer(sla_app, name="sla")
app.add_typer(maintenance_app, name="maintenance")
app.add_typer(rules_app, name="rules")
app.add_typer(report_app, name="report")

console = Console()
err_console = Console(stderr=True)

DEFAULT_DATA_DIR = Path("data")


def _setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=level,
        format="%(message)s",
        datefmt="[%X]",
        handlers=[RichHandler(console=err_console, show_path=False, rich_tracebacks=True)],
        force=True,
    )
    for noisy in ("amqtt", "transitions", "uvicorn.error", "websockets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _fail(message: str, code: int = 2) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)


def _load(config: Path | None) -> Config:
    if config is None:
        return Config()
    try:
        return load_config(config)
    except ConfigError as exc:
        err_console.print(f"[bold red]{config}: the configuration is not valid[/]")
        for issue in exc.issues:
            err_console.print(f"  {issue}")
        raise typer.Exit(2) from None


async def _run_until_signal(main: Any, duration: float | None) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await main(stop, duration)


# --- run ---------------------------------------------------------------------------------------------
@app.command()
def run(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="YAML config file (defaults apply without one).")
    ] = None,
) -> None:
    """Run the service: collectors, storage, rules, alerts and the HTTP API, until Ctrl-C."""
    cfg = _load(config)
    _setup_logging(cfg.log_level)

    async def main(stop: asyncio.Event, _duration: float | None) -> None:
        service = Service(cfg)
        try:
            await service.start()
        except Exception as exc:
            raise _fail(f"GridSentry could not start: {exc}", 1) from exc
        console.print(
            f"GridSentry {__version__} running: API {service.http_url}, metrics {service.http_url}/metrics, database {cfg.database_path}"
        )
        await stop.wait()
        await service.stop()

    asyncio.run(_run_until_signal(main, None))


# --- demo --------------------------------------------------------------------------------------------
class BrokerChoice(StrEnum):
    auto = "auto"
    mosquitto = "mosquitto"
    amqtt = "amqtt"


@app.command()
def demo(
    data_dir: Annotated[Path, typer.Option(help="Where the demo database lives.")] = DEFAULT_DATA_DIR,
    http_port: Annotated[int, typer.Option(help="HTTP API port (a free one is used if taken).")] = 8080,
    mqtt_port: Annotated[int, typer.Option(help="MQTT broker port (a free one is used if taken).")] = 1883,
    speed: Annotated[float, typer.Option(help="Simulated time runs this many times faster than real time.")] = 1.0,
    duration: Annotated[
        float | None, typer.Option(help="Stop after this many seconds (default: until Ctrl-C).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed of the simulated fleet.")] = 1,
    broker: Annotated[
        BrokerChoice, typer.Option(help="MQTT broker: mosquitto if installed, else embedded amqtt.")
    ] = BrokerChoice.auto,
) -> None:
    """Start everything on embedded defaults: broker, simulated fleet, service, API."""
    from gridsentry.demo import start_demo  # the only command that imports the simulator

    _setup_logging("INFO")

    async def main(stop: asyncio.Event, duration: float | None) -> None:
        t0 = time.monotonic()
        try:
            with console.status("Starting the MQTT broker, database, rules, HTTP API and simulated fleet..."):
                run_ = await start_demo(
                    data_dir.resolve(),
                    http_port=http_port,
                    mqtt_port=mqtt_port,
                    speed=speed,
                    seed=seed,
                    broker=broker.value,
                )
        except Exception as exc:
            raise _fail(f"the demo could not start: {exc}", 1) from exc
        _banner(run_, time.monotonic() - t0)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), duration)
        with console.status("Stopping: committing what has arrived..."):
            stats = await run_.shutdown()
        _summary(run_, stats)

    asyncio.run(_run_until_signal(main, duration))


def _banner(run_: Any, startup_s: float) -> None:
    s = run_.service
    cfg = s.cfg
    url = s.http_url
    ddir = cfg.data_dir
    dd_arg = "" if ddir.resolve() == DEFAULT_DATA_DIR.resolve() else f" --data-dir {ddir}"
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    rows = [
        (
            "Site",
            f"{cfg.sites[0].name}: {len(cfg.devices)} devices (4 AC 7 kW, 2 DC 120 kW dual-gun, 2 PV inverters, 1 box transformer)"
            " over MQTT; 3 over Modbus",
        ),
        (
            "Injected fault",
            "DC02 gun 1 connector overheats 5 s after start: class II, then class I alert within a minute",
        ),
        ("MQTT broker", f"mqtt://127.0.0.1:{cfg.mqtt.port} ({run_.broker.kind})"),
        ("Topics", "gridsentry/<site>/<device>/telemetry and .../events"),
        ("Modbus", "TX01-TC, TX01-MTR (shipped maps), INV-MB01 (SunSpec discovery), polled every 5 s on loopback"),
        ("", ""),
        ("HTTP API", f"{url}/api/openapi.json (every /api route needs a token)"),
        *[(f"Token: {role}", token) for role, token in run_.tokens.items()],
        ("Devices", f"{url}/api/devices"),
        ("Alerts", f"{url}/api/alerts"),
        ("On call", f"{duty_line_of(s)}  (gridsentry oncall now{dd_arg})"),
        ("Wall screen", f"{url}/  (open alerts with SLA countdowns, fleet tiles, power; no token needed in the demo)"),
        ("Metrics", f"{url}/metrics"),
        ("Health", f"{url}/healthz  {url}/readyz"),
        ("", ""),
        ("Database", str(cfg.database_path)),
        ("Query it", f'gridsentry sql{dd_arg} "select count(*) from readings"'),
        ("", f'gridsentry sql{dd_arg} "select * from v_open_alerts"'),
        (
            "",
            f"curl -s {url}/api/sql -H 'authorization: Bearer {run_.tokens['engineer']}' "
            f"-H 'content-type: application/json' -d '{{\"query\": \"select count(*) from readings\"}}'",
        ),
        (
            "Logs",
            "this terminal" + (f"; broker log in {ddir / 'mosquitto'}" if run_.broker.kind == "mosquitto" else ""),
        ),
    ]
    for k, v in rows:
        grid.add_row(k, v)
    title = f"GridSentry {__version__} demo is up in {startup_s:.1f} s. Ctrl-C stops it."
    console.print(Panel(grid, title=title, title_align="left", border_style="green", expand=False))


def _summary(run_: Any, stats: Any) -> None:
    s = run_.service
    console.print(
        f"demo stopped: published {stats.readings} readings in {stats.messages} messages "
        f"(incl. {stats.malformed} malformed); this run stored {sum(s.readings_committed.values())} readings, "
        f"{s.dead_letters_committed} dead letters and raised {s.alerts.raised} alerts. "
        f'Query the history: gridsentry sql --data-dir {s.cfg.data_dir} "select count(*) from readings"'
    )


# --- sql ---------------------------------------------------------------------------------------------
class OutputFormat(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"
    parquet = "parquet"


SQL_HISTORY_FILE = Path("~/.gridsentry_sql_history")


@app.command()
def sql(
    query: Annotated[
        str | None,
        typer.Argument(
            help="One read statement: SELECT, WITH, EXPLAIN, DESCRIBE, SUMMARIZE. Without one, an interactive prompt."
        ),
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Data directory of the service (default: ./data, or the config's).")
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="Take the data directory from this config.")
    ] = None,
    output: Annotated[OutputFormat, typer.Option("--format", "-f", help="Output format.")] = OutputFormat.table,
    out_file: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the result to this file (required for parquet).")
    ] = None,
    max_rows: Annotated[int, typer.Option(help="Row cap.")] = 10_000,
    timeout: Annotated[float, typer.Option(help="Stop the query after this many seconds.")] = 60.0,
) -> None:
    """Query the history with SQL: through the running service's API, or the file when it is stopped."""
    cfg = _load(config) if config else Config(data_dir=data_dir or DEFAULT_DATA_DIR)
    if config and data_dir:
        cfg = cfg.model_copy(update={"data_dir": data_dir})
    if output is OutputFormat.parquet and out_file is None:
        raise _fail("--format parquet writes a binary file: add --output FILE.parquet")
    if query is None:
        _sql_prompt(cfg, output, max_rows, timeout)
        return
    try:
        _sql_once(cfg, query, output, out_file, max_rows, timeout)
    except _QueryFailedError as exc:
        raise _fail(str(exc)) from None


class _QueryFailedError(Exception):
    pass


def _sql_once(
    cfg: Config, query: str, output: OutputFormat, out_file: Path | None, max_rows: int, timeout: float
) -> None:
    runtime = cfg.data_dir / RUNTIME_FILE
    result: QueryResult
    if runtime.exists() and _pid_alive(json.loads(runtime.read_text(encoding="utf-8")).get("pid")):
        token = os.environ.get("GRIDSENTRY_TOKEN") or read_local_token(cfg.data_dir)
        url = json.loads(runtime.read_text(encoding="utf-8"))["http_url"]
        result = _sql_via_api(url, query, max_rows, timeout, token)
    else:
        result = _sql_on_file(cfg, query, max_rows, timeout)
    _print_result(result, output, out_file)


def _sql_on_file(cfg: Config, query: str, max_rows: int, timeout: float) -> QueryResult:
    db = cfg.database_path
    if not db.exists():
        raise _QueryFailedError(f"no database at {db}; start GridSentry first (make demo), or pass --data-dir/--config")
    archive_dir = cfg.history.archive_path(cfg.data_dir)
    try:
        con = duckdb.connect(
            str(db),
            read_only=True,
            config={"autoinstall_known_extensions": False, "autoload_known_extensions": False},
        )
        quoted = str(archive_dir).replace("'", "''")
        con.execute(f"SET allowed_directories = ['{quoted}/']")
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
    except duckdb.IOException as exc:
        raise _QueryFailedError(
            f"the database {db} is locked by a running GridSentry without a runtime file ({exc})"
        ) from exc
    t0 = time.perf_counter()
    status = "ok"
    try:
        return run_read_query(con, query, timeout_s=timeout, max_rows=max_rows)
    except (QueryRejectedError, QueryTimeoutError) as exc:
        status = type(exc).__name__
        raise _QueryFailedError(str(exc)) from exc
    except duckdb.Error as exc:
        status = type(exc).__name__
        raise _QueryFailedError(f"the query failed: {exc}") from exc
    finally:
        con.close()
        _audit_offline(cfg, query, status, time.perf_counter() - t0)


def _audit_offline(cfg: Config, query: str, status: str, seconds: float) -> None:
    """With the service stopped the database is opened read-only, so the audit trail is a JSON-lines file."""
    line = {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "actor": getpass.getuser(),
        "action": "sql (service stopped)",
        "status": status,
        "duration_s": round(seconds, 4),
        "query": query[:4000],
    }
    try:
        with open(cfg.data_dir / "sql-audit.jsonl", "ab") as f:
            f.write(orjson.dumps(line) + b"\n")
    except OSError as exc:
        err_console.print(f"[yellow]warning:[/] could not append to {cfg.data_dir / 'sql-audit.jsonl'}: {exc}")


def _sql_prompt(cfg: Config, output: OutputFormat, max_rows: int, timeout: float) -> None:
    """A small read-eval-print loop: statements end with ';', history persists across sessions."""
    import readline

    history = SQL_HISTORY_FILE.expanduser()
    with contextlib.suppress(OSError):
        readline.read_history_file(history)
    readline.set_history_length(2000)
    err_console.print(
        f"GridSentry SQL on {cfg.data_dir} - one read statement, end it with ';'. "
        "Try: SELECT * FROM v_device_health; .tables lists views and tables, .quit leaves."
    )
    buffer: list[str] = []
    try:
        while True:
            try:
                line = input("gridsentry> " if not buffer else "       ...> ")
            except EOFError:
                break
            stripped = line.strip()
            if not buffer and stripped in (".quit", ".exit", "\\q", "exit", "quit"):
                break
            if not buffer and stripped == ".tables":
                stripped = "SELECT table_name, table_type FROM information_schema.tables ORDER BY 1;"
            if not stripped:
                continue
            buffer.append(stripped)
            if not stripped.endswith(";"):
                continue
            statement = " ".join(buffer).rstrip(";").strip()
            buffer = []
            try:
                _sql_once(
                    cfg,
                    statement,
                    output if output is not OutputFormat.parquet else OutputFormat.table,
                    None,
                    max_rows,
                    timeout,
                )
            except _QueryFailedError as exc:
                err_console.print(f"[bold red]error:[/] {exc}")
            except typer.Exit:
                pass
    except KeyboardInterrupt:
        err_console.print()
    finally:
        with contextlib.suppress(OSError):
            readline.write_history_file(history)


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sql_via_api(url: str, query: str, max_rows: int, timeout: float, token: str | None) -> QueryResult:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    try:
        r = httpx.post(
            f"{url}/api/sql",
            json={"query": query, "max_rows": max_rows, "timeout_s": timeout, "format": "parquet"},
            headers=headers,
            timeout=timeout + 10,
        )
    except httpx.HTTPError as exc:
        raise _QueryFailedError(f"GridSentry is running but its API at {url} did not answer: {exc}") from exc
    if r.status_code != 200:
        detail = (
            r.json().get("detail", r.text)
            if r.headers.get("content-type", "").startswith("application/json")
            else r.text
        )
        if r.status_code == 401 and not token:
            detail = (
                f"{detail}. Set GRIDSENTRY_TOKEN to an engineer token, or run this as the user that runs GridSentry"
            )
        raise _QueryFailedError(str(detail))
    # Parquet keeps the column types (timestamps, decimals) that JSON would flatten to text.
    table = pq.read_table(io.BytesIO(r.content))
    rows = list(zip(*(c.to_pylist() for c in table.columns), strict=True)) if table.num_columns else []
    return QueryResult(
        table.column_names,
        [str(t) for t in table.schema.types],
        rows,
        r.headers.get("x-gridsentry-truncated") == "true",
        float(r.headers.get("x-gridsentry-seconds", "0")),
        table,
        _as_of(r.headers.get("x-gridsentry-data-as-of")),
    )


def _as_of(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def _print_result(result: QueryResult, output: OutputFormat, out_file: Path | None = None) -> None:
    if output is OutputFormat.parquet:
        assert out_file is not None
        out_file.write_bytes(result_as_parquet(result))
        err_console.print(f"[dim]{len(result.rows)} rows written to {out_file}[/]")
        return
    if out_file is not None and output is not OutputFormat.table:
        text = result_as_csv(result).decode() if output is OutputFormat.csv else _json_text(result)
        out_file.write_text(text, encoding="utf-8")
        err_console.print(f"[dim]{len(result.rows)} rows written to {out_file}[/]")
        return
    if output is OutputFormat.csv:
        w = csv.writer(sys.stdout)
        w.writerow(result.columns)
        w.writerows(result.rows)
    elif output is OutputFormat.json:
        sys.stdout.write(_json_text(result))
    else:
        table = Table(*result.columns, show_lines=False)
        for r in result.rows:
            table.add_row(*["" if v is None else str(v) for v in r])
        console.print(table)
    err_console.print(
        f"[dim]{len(result.rows)} rows in {result.seconds * 1000:.0f} ms"
        + (" (truncated: raise --max-rows)" if result.truncated else "")
        + (f"; data as of {result.data_as_of:%Y-%m-%d %H:%M:%S %Z} (snapshot)" if result.data_as_of else "")
        + "[/]"
    )


def _json_text(result: QueryResult) -> str:
    return orjson.dumps(result.as_records(), default=str, option=orjson.OPT_INDENT_2).decode() + "\n"


# --- config ------------------------------------------------------------------------------------------
@config_app.command("check")
def config_check(file: Annotated[Path, typer.Argument(help="The YAML config file to validate.")]) -> None:
    """Validate a config file; print every problem with its key path and line."""
    try:
        cfg = load_config(file)
    except ConfigError as exc:
        err_console.print(f"[bold red]{file}: {len(exc.issues)} problem(s)[/]")
        for issue in exc.issues:
            err_console.print(f"  {issue}")
        raise typer.Exit(1) from None
    console.print(
        f"[green]{file} is valid[/]: {len(cfg.devices)} devices, {len(cfg.sites)} sites, "
        f"MQTT {cfg.mqtt.host}:{cfg.mqtt.port}, database {cfg.database_path}"
    )


@config_app.command("example")
def config_example() -> None:
    """Print a config file documenting every key with its default."""
    sys.stdout.write(example_yaml())


# --- tokens ------------------------------------------------------------------------------------------
token_app = typer.Typer(help="API tokens: create them for people and systems.", no_args_is_help=True)
app.add_typer(token_app, name="token")
app.add_typer(screens_app, name="screens")


class RoleChoice(StrEnum):
    viewer = "viewer"
    operator = "operator"
    engineer = "engineer"
    admin = "admin"


@token_app.command("create")
def token_create(
    role: Annotated[
        RoleChoice, typer.Option(help="viewer < operator < engineer < admin; each includes the ones before.")
    ],
    name: Annotated[str, typer.Option(help="Who will hold it: recorded as the actor of what they do.")] = "someone",
) -> None:
    """Print a new token once, and the config lines that accept it (only its SHA-256 goes in the file)."""
    token = new_token()
    console.print(f"[bold]Token for {name} ({role.value})[/bold]: give it to them now, it is not shown again:")
    sys.stdout.write(token + "\n")
    console.print("Add to the config under [bold]auth.tokens[/bold]:")
    sys.stdout.write(f"  - name: {name}\n    role: {role.value}\n    sha256: {hash_token(token)}\n")


@app.command()
def version() -> None:
    """Print the version."""
    console.print(f"gridsentry {__version__}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
