"""`gridsentry rules ...`: check packs, list rules, and replay stored history through a pack."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import duckdb
import polars as pl
import typer
from rich.console import Console
from rich.table import Table

from gridsentry.config import Config, ConfigError, load_config, metric_catalogue
from rules.engine import RuleEngine, from_us
from rules.loader import BUILTIN_PACK_DIR, LoadedRules, load_packs
from rules.model import Finding, Rule, format_duration
from rules.runtime import devices_from_ledger, pack_files, sites_from_ledger

rules_app = typer.Typer(help="Check, list and back-test rule packs.", no_args_is_help=True)
console = Console()
err_console = Console(stderr=True)

ConfigOption = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file (defaults without one).")]


def _config(path: Path | None) -> Config:
    if path is None:
        return Config()
    try:
        return load_config(path)
    except ConfigError as exc:
        err_console.print(f"[bold red]{path}: the configuration is not valid[/]")
        for issue in exc.issues:
            err_console.print(f"  {issue}")
        raise typer.Exit(2) from None


def _resolve(paths: list[Path]) -> list[Path]:
    """A path, or the name of a shipped pack (charger_dc, fleet...)."""
    out = []
    for p in paths:
        if not p.exists() and not p.suffix and (BUILTIN_PACK_DIR / f"{p}.yaml").exists():
            p = BUILTIN_PACK_DIR / f"{p}.yaml"
        out.append(p)
    return out


def _load(cfg: Config, paths: list[Path] | None) -> LoadedRules:
    files = _resolve(paths) if paths else pack_files(cfg.rules.packs, cfg.rules.builtin_packs)
    return load_packs(files, set(metric_catalogue(cfg)))


def _condition(rule: Rule) -> str:
    k = rule.kind
    if k in ("threshold", "expression"):
        parts = []
        if rule.above is not None:
            parts.append(f"> {rule.above:g}")
        if rule.below is not None:
            parts.append(f"< {rule.below:g}")
        text = " or ".join(parts)
        return f"{rule.expression} {text}" if k == "expression" else text
    if k == "rate":
        return f"rises > {rule.rise_per_min:g}/min" if rule.rise_per_min else f"falls > {rule.fall_per_min:g}/min"
    if k == "trend":
        return f"{rule.direction} to {rule.limit:g} within {format_duration(rule.horizon_s or 0)}"
    if k == "stuck":
        return f"moves <= {rule.tolerance:g} in {format_duration(rule.window_s or 0)}"
    if k in ("offline", "data_gap"):
        return f"silent > {rule.missed_intervals:g} intervals (>= {format_duration(rule.min_silence_s)})"
    if k == "deviation":
        limit = f"< {rule.ratio_below:g}" if rule.ratio_below else f"> {rule.ratio_above:g}"
        return f"value / peer median {limit}"
    return ""


@rules_app.command("check")
def check(
    paths: Annotated[
        list[Path] | None, typer.Argument(help="Pack files or shipped pack names; default: shipped + configured.")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Validate rule packs: every problem with file, line and what to change. Exit 1 on any problem."""
    cfg = _config(config)
    loaded = _load(cfg, paths)
    for p in loaded.problems:
        err_console.print(f"[bold red]{p.file}:{p.line or '?'}[/] {p.path}: {p.message}")
    counts: defaultdict[str, int] = defaultdict(int)
    for r in loaded.rules + loaded.disabled:
        counts[r.kind] += 1
    summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    console.print(
        f"{len(loaded.rules)} rules enabled, {len(loaded.disabled)} disabled, {len(loaded.overrides)} overrides "
        f"in {len(loaded.files)} packs ({summary})"
    )
    if loaded.problems:
        err_console.print(f"[bold red]{len(loaded.problems)} problem(s)[/]: those rules would be skipped")
        raise typer.Exit(1)
    console.print("[green]all packs valid[/]")


@rules_app.command("list")
def list_rules(
    paths: Annotated[list[Path] | None, typer.Argument(help="Pack files or shipped pack names.")] = None,
    config: ConfigOption = None,
    kind: Annotated[str | None, typer.Option(help="Only rules of this kind (trend, threshold...).")] = None,
) -> None:
    """The rules that would run, with kind, class, devices, condition and source."""
    cfg = _config(config)
    loaded = _load(cfg, paths)
    table = Table(title="GridSentry rules")
    for col in ("id", "kind", "class", "devices", "metric", "condition", "for", "pack"):
        table.add_column(col)
    for r in loaded.rules + loaded.disabled:
        if kind and r.kind != kind:
            continue
        sel = r.applies_to
        devices = ",".join(sel.kinds + sel.sites + sel.tags + sel.devices) or "all"
        table.add_row(
            r.id + ("" if r.enabled else " (off)"),
            r.kind,
            r.event_class,
            devices,
            ",".join(r.output_metrics)[:40],
            _condition(r),
            format_duration(r.for_s) if r.for_s else "",
            loaded.origin[r.id].stem,
        )
    console.print(table)
    for p in loaded.problems:
        err_console.print(f"[yellow]skipped[/] {p}")


def _parse_time(text: str, name: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is not a time; write e.g. 2026-07-01 or 2026-07-01T08:00+08:00", param_hint=name
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def replay(
    con: duckdb.DuckDBPyConnection,
    loaded: LoadedRules,
    units: dict[str, str],
    start: datetime,
    end: datetime,
    step_s: float = 60.0,
) -> tuple[list[Finding], int]:
    """Stored readings (and device events, for event rules) from `start` to `end`, fed to a fresh engine
    `step_s` of data time at a time."""
    engine = RuleEngine(loaded.rules + loaded.disabled, units, overrides=loaded.overrides)
    engine.set_sites(sites_from_ledger(con))
    engine.set_devices(devices_from_ledger(con).values())
    metrics = sorted({m for r in engine.rules.values() for m in r.input_metrics})
    findings: list[Finding] = []
    total = 0
    step = timedelta(seconds=step_s)
    chunk = max(step, timedelta(hours=1))
    t = start
    while t < end:
        until = min(end, t + chunk)
        query = "SELECT ts, device_id, metric, value, quality FROM readings WHERE ts >= ? AND ts < ?"
        params: list[object] = [t, until]
        if not any(r.kind in ("offline", "data_gap") for r in engine.rules.values()):
            query += " AND metric IN (SELECT unnest(?::VARCHAR[]))"
            params.append(metrics)
        frame = pl.from_arrow(con.execute(query + " ORDER BY ts", params).to_arrow_table())
        assert isinstance(frame, pl.DataFrame)
        total += frame.height
        slot_us = int(step_s * 1_000_000)
        frame = frame.with_columns(slot=pl.col("ts").dt.epoch("us") // slot_us)
        slots = {int(k[0]): g.drop("slot") for k, g in frame.partition_by("slot", as_dict=True).items()}
        event_slots: dict[int, pl.DataFrame] = {}
        if any(r.kind == "event" for r in engine.rules.values()):
            events = pl.from_arrow(
                con.execute(
                    "SELECT ts, device_id, kind, code, text FROM events WHERE ts >= ? AND ts < ? ORDER BY ts",
                    [t, until],
                ).to_arrow_table()
            )
            assert isinstance(events, pl.DataFrame)
            events = events.with_columns(slot=pl.col("ts").dt.epoch("us") // slot_us)
            event_slots = {int(k[0]): g.drop("slot") for k, g in events.partition_by("slot", as_dict=True).items()}
        s = t
        while s < until:
            key = int(s.timestamp() * 1_000_000) // slot_us
            batch = slots.get(key, frame.clear().drop("slot"))
            now = min(until, from_us((key + 1) * slot_us))
            findings += engine.evaluate(batch, now=now, events=event_slots.get(key))
            s += step
        t = until
    return findings, total


@rules_app.command("test")
def test_pack(
    packs: Annotated[list[Path], typer.Argument(help="Pack files or shipped pack names to back-test.")],
    from_: Annotated[
        str, typer.Option("--from", help="Start of the replay (ISO time; UTC unless an offset is given).")
    ],
    to: Annotated[str, typer.Option("--to", help="End of the replay.")],
    config: ConfigOption = None,
    database: Annotated[Path | None, typer.Option("--db", help="DuckDB file (default: the configured one).")] = None,
    step: Annotated[float, typer.Option(help="Seconds of history per evaluation tick.")] = 60.0,
    show: Annotated[int, typer.Option(help="Findings to print per rule.")] = 5,
) -> None:
    """Replay stored history through PACKS and print, per rule, what would have fired and when."""
    cfg = _config(config)
    start, end = _parse_time(from_, "--from"), _parse_time(to, "--to")
    if end <= start:
        raise typer.BadParameter("--to must be after --from", param_hint="--to")
    loaded = _load(cfg, packs)
    for p in loaded.problems:
        err_console.print(f"[yellow]skipped[/] {p}")
    db = database or cfg.database_path
    if not db.exists():
        err_console.print(f"[bold red]error:[/] no database at {db}; pass --db or --config")
        raise typer.Exit(2)
    try:
        con = duckdb.connect(str(db), read_only=True)
    except duckdb.IOException as exc:
        err_console.print(
            f"[bold red]error:[/] cannot open {db} read-only ({str(exc).splitlines()[0]}). While GridSentry runs it "
            "holds the file: back-test on a backup copy (gridsentry db backup) or stop the service."
        )
        raise typer.Exit(2) from None
    units = {m.name: m.unit for m in metric_catalogue(cfg).values()}
    try:
        findings, total = replay(con, loaded, units, start, end, step)
    finally:
        con.close()
    console.print(
        f"replayed {total:,} readings from {start.isoformat()} to {end.isoformat()} through "
        f"{len(loaded.rules)} rules ({step:g} s ticks)"
    )
    by_rule: dict[str, list[Finding]] = defaultdict(list)
    for f in findings:
        by_rule[f.rule_id].append(f)
    table = Table(title="what would have fired")
    for col in ("rule", "class", "fired", "cleared", "devices", "first", "last"):
        table.add_column(col)
    for rule in loaded.rules:
        fs = by_rule.get(rule.id, [])
        fires = [f for f in fs if f.action == "fire"]
        table.add_row(
            rule.id,
            rule.event_class,
            str(len(fires)),
            str(sum(1 for f in fs if f.action == "clear")),
            ",".join(sorted({f.device_id for f in fires}))[:40],
            fires[0].ts.isoformat(timespec="seconds") if fires else "",
            fires[-1].ts.isoformat(timespec="seconds") if fires else "",
        )
    console.print(table)
    for rule_id, fs in by_rule.items():
        fires = [f for f in fs if f.action == "fire"]
        for f in fires[:show]:
            console.print(f"  {f.ts.isoformat(timespec='seconds')} [bold]{rule_id}[/] {f.event_class}: {f.message}")
        if len(fires) > show:
            console.print(f"  ... and {len(fires) - show} more for {rule_id}")
