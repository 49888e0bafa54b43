"""The rules stage inside the running service: packs, ledger, state that survives restarts.

The service owns one `RulesRuntime`. At start-up it loads the packs, binds them to the ledger,
restores pending/firing state from `rule_state` and refills the windows from recent `readings`
(so a trend rule does not need an hour of fresh data after a restart). Every tick it evaluates
the committed readings and, when state changed, rewrites `rule_state` through the single writer.
A reload with broken packs keeps the last valid rules running.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa

from rules.engine import DeviceInfo, RuleEngine, SiteInfo
from rules.loader import LoadedRules, builtin_pack_files, load_packs
from rules.model import Finding
from storage.writer import StorageWriter

log = logging.getLogger(__name__)

# At start-up the windows are refilled from raw readings for the last RAW_BACKFILL, from the
# 1-minute rollups back to MINUTE_BACKFILL and from the hourly rollups beyond: a trend over days
# costs a few thousand rows per series instead of every reading.
RAW_BACKFILL = timedelta(hours=6)
MINUTE_BACKFILL = timedelta(hours=48)


def _floor_hour(ts: datetime) -> datetime:
    return ts.replace(minute=0, second=0, microsecond=0)


def pack_files(packs: Iterable[Path], builtin: bool) -> list[Path]:
    return (builtin_pack_files() if builtin else []) + list(packs)


def devices_from_ledger(con: duckdb.DuckDBPyConnection) -> dict[str, DeviceInfo]:
    rows = con.execute(
        "SELECT device_id, site, kind, tags, rated_kw, expected_interval_s, parent_id, model FROM devices"
    ).fetchall()
    return {
        r[0]: DeviceInfo(
            r[0],
            r[1],
            r[2],
            tuple(r[3] or ()),
            rated_kw=r[4],
            interval_s=float(r[5] or 10.0),
            parent=r[6],
            model=r[7],
        )
        for r in rows
    }


def sites_from_ledger(con: duckdb.DuckDBPyConnection) -> list[SiteInfo]:
    rows = con.execute("SELECT site_id, latitude, longitude FROM sites").fetchall()
    return [SiteInfo(r[0], r[1], r[2]) for r in rows]


def save_state(con: duckdb.DuckDBPyConnection, state: pa.Table) -> int:
    """Replace `rule_state` with the engine's pending and firing rows (one writer transaction)."""
    con.register("gs_rule_state", state)
    try:
        con.execute("DELETE FROM rule_state")
        con.execute(
            """
            INSERT INTO rule_state (rule_id, device_id, metric, pending_since, breaches, firing, fired_at)
            SELECT rule_id, device_id, metric,
                   CASE WHEN pending_since IS NULL THEN NULL ELSE make_timestamptz(pending_since) END,
                   coalesce(breaches, 0), firing,
                   CASE WHEN fired_at IS NULL THEN NULL ELSE make_timestamptz(fired_at) END
            FROM gs_rule_state
            """
        )
    finally:
        con.unregister("gs_rule_state")
    return int(state.num_rows)


def load_state(con: duckdb.DuckDBPyConnection) -> pa.Table:
    return con.execute(
        """
        SELECT rule_id, device_id, metric, epoch_us(pending_since) AS pending_since, breaches, firing,
               epoch_us(fired_at) AS fired_at
        FROM rule_state
        """
    ).to_arrow_table()


class RulesRuntime:
    def __init__(
        self,
        writer: StorageWriter,
        units: Mapping[str, str],
        *,
        packs: Iterable[Path] = (),
        builtin_packs: bool = True,
        bucket_s: float = 30.0,
        shards: int = 8,
    ) -> None:
        self.writer = writer
        self.units = dict(units)
        self.packs = list(packs)
        self.builtin_packs = builtin_packs
        self.bucket_s = bucket_s
        self.shards = shards
        self.loaded = LoadedRules()
        self.engine = RuleEngine([], self.units, bucket_s=bucket_s, shards=shards)
        self.devices: dict[str, DeviceInfo] = {}
        self.sites: list[SiteInfo] = []
        self.reload_problems: list[str] = []
        self.state_writes = 0
        # What the last start-up or reload refilled the windows from.
        self.backfilled = {"readings": 0, "rollup_buckets": 0}
        # Evaluation runs on a worker thread; a reload swaps the engine between two ticks, never during one.
        self._lock = threading.Lock()

    # --- loading ----------------------------------------------------------------------------
    def _build(self, loaded: LoadedRules) -> RuleEngine:
        engine = RuleEngine(
            loaded.rules + loaded.disabled,
            self.units,
            overrides=loaded.overrides,
            bucket_s=self.bucket_s,
            shards=self.shards,
        )
        engine.set_sites(self.sites)
        engine.set_devices(self.devices.values())
        return engine

    def load(self, devices: Mapping[str, DeviceInfo] | None = None) -> RuleEngine:
        """First load at start-up: broken rules are skipped (and reported), the rest run."""
        con = self.writer.reader()
        try:
            self.devices = dict(devices) if devices is not None else devices_from_ledger(con)
            self.sites = sites_from_ledger(con)
            state = load_state(con)
        finally:
            con.close()
        self.loaded = load_packs(pack_files(self.packs, self.builtin_packs), set(self.units))
        self.engine = self._build(self.loaded)
        self.engine.import_state(state)
        self._backfill()
        log.info(
            "rules: %d loaded, %d overrides, %d device bindings, %d pack problems, %d states restored",
            len(self.loaded.rules),
            len(self.loaded.overrides),
            self.engine.binding_count,
            len(self.loaded.problems),
            state.num_rows,
        )
        return self.engine

    def reload(self) -> list[str]:
        """Load the packs again. With any problem the running rules stay as they are; returns the problems."""
        loaded = load_packs(pack_files(self.packs, self.builtin_packs), set(self.units))
        if loaded.problems:
            self.reload_problems = [str(p) for p in loaded.problems]
            log.error("rule packs not reloaded: %d problems; the last valid packs keep running", len(loaded.problems))
            return self.reload_problems
        engine = self._build(loaded)
        with self._lock:
            engine.import_state(self.engine.export_state())
            self.loaded = loaded
            self.engine = engine
            self._backfill()
        self.reload_problems = []
        log.info("rule packs reloaded: %d rules", len(loaded.rules))
        return []

    def _backfill(self) -> None:
        """Refill each metric's window (its longest) from storage: raw readings for the recent hours,
        `rollup_1m` and `rollup_1h` for the days before (see RAW_BACKFILL, MINUTE_BACKFILL)."""
        spans = self.engine.window_spans()
        if not spans:
            return
        now = datetime.now(UTC)
        # Whole hours, so a minute or hour rollup never straddles two sources.
        raw_since = _floor_hour(now - RAW_BACKFILL)
        minute_since = _floor_hour(now - MINUTE_BACKFILL)
        oldest = now - timedelta(seconds=max(spans.values()))
        metrics = sorted(spans)
        cutoff = {m: int((now - timedelta(seconds=sec)).timestamp() * 1_000_000) for m, sec in spans.items()}

        def within_window(frame: pl.DataFrame, ts: str) -> pl.DataFrame:
            return frame.filter(
                pl.col(ts).dt.epoch("us") >= pl.col("metric").replace_strict(cutoff, default=0, return_dtype=pl.Int64)
            )

        con = self.writer.reader()
        try:
            history = con.execute(
                "SELECT ts, device_id, metric, value, quality FROM readings WHERE ts >= ? AND metric IN "
                "(SELECT unnest(?::VARCHAR[]))",
                [max(oldest, raw_since), metrics],
            ).to_arrow_table()
            rollups: list[tuple[pa.Table, float]] = []
            for table, width_s, lo, hi in (
                ("rollup_1h", 3600.0, oldest, minute_since),
                ("rollup_1m", 60.0, max(oldest, minute_since), raw_since),
            ):
                if lo >= hi:
                    continue
                # The bucket's start is inside the window; its mean time (the middle) stays inside too.
                rows = con.execute(
                    f"SELECT device_id, metric, bucket, count, sum, min, max, last_ts FROM {table} "
                    "WHERE bucket >= ? AND bucket < ? AND metric IN (SELECT unnest(?::VARCHAR[]))",
                    [lo, hi, metrics],
                ).to_arrow_table()
                rollups.append((rows, width_s))
        finally:
            con.close()
        from_rollups = 0
        for rows, width_s in rollups:
            if rows.num_rows:
                frame = pl.from_arrow(rows)
                assert isinstance(frame, pl.DataFrame)
                frame = within_window(frame, "bucket")
                self.engine.prime_buckets(frame, width_s)
                from_rollups += frame.height
        raw = 0
        if history.num_rows:
            frame = pl.from_arrow(history)
            assert isinstance(frame, pl.DataFrame)
            frame = within_window(frame, "ts").sort("ts")
            self.engine.prime(frame)
            raw = frame.height
        self.backfilled = {"readings": raw, "rollup_buckets": from_rollups}
        if raw or from_rollups:
            log.info("rules: windows refilled from %d stored readings and %d rollup buckets", raw, from_rollups)

    def set_devices(self, devices: Iterable[DeviceInfo]) -> None:
        devices = list(devices)
        for d in devices:
            self.devices[d.device_id] = d
        self.engine.set_devices(devices)

    # --- ticks ------------------------------------------------------------------------------
    def evaluate(
        self, readings: pa.Table | pl.DataFrame, now: datetime | None = None, events: pa.Table | None = None
    ) -> list[Finding]:
        with self._lock:
            return self.engine.evaluate(readings, now=now or datetime.now(UTC), events=events)

    async def persist(self) -> None:
        """Rewrite `rule_state` if anything changed since the last write."""
        if not self.engine.state_changed:
            return
        state = self.engine.export_state()
        # Urgent: the rules loop waits for this before its next tick; queued ingest batches must not delay it.
        await self.writer.run(lambda con: save_state(con, state), urgent=True)
        self.state_writes += 1

    def status(self) -> dict[str, Any]:
        return {
            "rules": len(self.engine.rules),
            "bindings": self.engine.binding_count,
            "overrides": len(self.loaded.overrides),
            "pack_problems": [str(p) for p in self.loaded.problems],
            "reload_problems": self.reload_problems,
            "failed_rules": dict(self.engine.failed_rules),
            "firing": self.engine.firing().height,
            "backfilled": dict(self.backfilled),
        }
