"""Starts and stops the stages and wires them: collector -> storage -> rules -> alerts.

This is the only module that knows every stage. The flow of one batch:
1. the MQTT collector decodes a flush of messages into an IngestBatch and awaits `store`;
2. `store` registers unknown devices and appends the batch in one writer transaction;
3. after COMMIT the collector acknowledges the messages, and the readings join the rules queue;
4. the rules task evaluates committed readings every tick and hands findings to the alert lifecycle.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import Future
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import duckdb
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import uvicorn

from alerts.runtime import AlertStage
from collector.mapping import FieldMapper
from collector.mqtt import CollectorStats, MqttCollector
from collector.paho_client import PahoMqttCollector
from collector.payloads import MetricLimits
from gridsentry.auth import TokenStore, write_local_token
from gridsentry.config import Config, ConfigError, ConfigIssue, field_rules, metric_catalogue
from gridsentry.exporter import build_registry
from gridsentry.screens.fleet import ScreensView
from reports.schedule import ReportScheduler, report_targets
from rules.engine import DeviceInfo, RuleEngine
from rules.loader import LoadedRules
from rules.runtime import RulesRuntime, devices_from_ledger
from storage.batch import DeadLetter, IngestBatch, dead_letters_table
from storage.history import HistoryJobs
from storage.ledger import register_unknown_devices, sync_ledger
from storage.sql_snapshot import query_runner
from storage.writer import CommitResult, StorageWriter

if TYPE_CHECKING:
    from collector.modbus.collector import ModbusCollector

log = logging.getLogger("gridsentry")

RUNTIME_FILE = "runtime.json"
# Committed readings are evaluated at once, but not more often than this (ADR 37).
FRESH_READINGS_GAP_S = 0.1
_NO_READINGS = pa.table(
    {
        "ts": pa.array([], pa.timestamp("us", tz="UTC")),
        "device_id": pa.array([], pa.string()),
        "metric": pa.array([], pa.string()),
        "value": pa.array([], pa.float64()),
        "quality": pa.array([], pa.uint8()),
    }
)


class Service:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.started_at = datetime.now(UTC)
        self.writer = StorageWriter(
            cfg.database_path,
            memory_limit=cfg.storage.memory_limit,
            threads=cfg.storage.threads,
            allowed_directories=[
                cfg.history.archive_path(cfg.data_dir),
                cfg.history.backup_path(cfg.data_dir),
                cfg.history.snapshot_path(cfg.data_dir),
            ],
            lock_configuration=cfg.history.sql.lock_configuration,
            worker_nice=cfg.history.sql.nice,
        )
        self.history = HistoryJobs(self.writer, cfg.history, cfg.data_dir)
        self.sql = query_runner(self.writer.reader, cfg.history, cfg.data_dir)
        self.writer.on_memory_pressure = self.sql.stop_all
        self.catalogue = metric_catalogue(cfg)
        self.alert_stage = AlertStage(self.writer, cfg.alerts)
        self.alerts = self.alert_stage.lifecycle
        try:
            report_channels = report_targets(
                cfg.reports, [w.name for w in cfg.alerts.webhooks], [p.id for p in cfg.alerts.oncall.people]
            )
        except ValueError as exc:
            raise ConfigError(None, [ConfigIssue("reports", None, str(exc))]) from exc
        self.reports = ReportScheduler(
            self.writer,
            cfg.reports,
            zone=ZoneInfo(cfg.alerts.sla.standby.timezone),
            targets=report_channels,
            public_url=cfg.alerts.public_url,
            site_zones={site.id: site.timezone for site in cfg.sites},
            wake=self.alert_stage.wake,
        )
        self.rules_runtime = RulesRuntime(
            self.writer,
            {m.name: m.unit for m in self.catalogue.values()},
            packs=cfg.rules.packs,
            builtin_packs=cfg.rules.builtin_packs,
            bucket_s=cfg.rules.bucket_s,
            shards=cfg.rules.shards,
        )
        self.collector_stats = CollectorStats()
        self.collector: MqttCollector | PahoMqttCollector | None = None  # the first broker's; `collectors` holds all
        self.collectors: list[MqttCollector | PahoMqttCollector] = []
        self.modbus: ModbusCollector | None = None  # polls the devices that have a `modbus:` block
        self.known_devices: dict[str, DeviceInfo] = {}
        self.last_seen: dict[str, float] = {}
        self.readings_committed: Counter[str] = Counter()
        self.events_committed = 0
        self.dead_letters_committed = 0
        self.unknown_devices_seen = 0
        self.duplicates_dropped = 0
        self.rule_errors = 0
        self.http_url: str | None = None
        self._rules_queue: asyncio.Queue[pa.Table] = asyncio.Queue(maxsize=1000)
        # Committed device events (status and fault codes) for the event rules, drained with the readings.
        self._rules_events: list[pa.Table] = []
        self._rules_fresh = asyncio.Event()  # set when committed readings wait for evaluation (ADR 37)
        self.rules_fresh_gap_s: float | None = FRESH_READINGS_GAP_S
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._http: uvicorn.Server | None = None
        self.ready = asyncio.Event()
        try:
            self.tokens = TokenStore.from_config(cfg.auth, base_dir=cfg.data_dir)
        except ValueError as exc:
            raise ConfigError(None, [ConfigIssue("auth.tokens", None, str(exc))]) from exc
        self.audit_failures = 0
        self.app: Any = None  # the FastAPI app, once the HTTP server starts
        self.screens = ScreensView(self, cfg.screens)
        self.instruments = build_registry(self)
        self.registry = self.instruments.registry
        self.writer.on_commit = lambda result: self.instruments.commit_seconds.observe(result.seconds)

    # --- start / stop ------------------------------------------------------------------------------
    async def start(self) -> None:
        cfg = self.cfg
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(self.writer.start)
        log.info("database %s open (schema up to date)", cfg.database_path)
        await self.history.startup()
        await self.writer.run(
            lambda con: sync_ledger(
                con,
                devices=[_device_row(d) for d in cfg.devices],
                sites=[s.model_dump() for s in cfg.sites],
                metrics=[m.model_dump() for m in self.catalogue.values()],
            )
        )
        await self.writer.run(self.alerts.sync_maintenance)
        self._load_known_devices()
        self._load_rules()
        limits = MetricLimits({m.name: (m.min, m.max) for m in self.catalogue.values()})
        mapper = FieldMapper(field_rules(cfg)) if cfg.mappings else None
        for broker in cfg.brokers:
            collector_class = PahoMqttCollector if broker.client == "paho" else MqttCollector
            collector = collector_class(
                broker,
                self.store,
                limits=limits,
                stats=self.collector_stats if broker is cfg.mqtt else CollectorStats(),
                mapper=mapper,
            )
            collector.device_intervals = {d.id: d.expected_interval_s for d in cfg.devices}
            self.collectors.append(collector)
            name = f"mqtt-collector {broker.host}:{broker.port}"
            self._tasks.append(asyncio.create_task(collector.run(self._stop), name=name))
        self.collector = self.collectors[0] if self.collectors else None
        modbus_devices = [(d.id, d.modbus) for d in cfg.devices if d.modbus is not None]
        if modbus_devices:
            from collector.modbus.collector import ModbusCollector  # pymodbus loads only when something is polled

            self.modbus = ModbusCollector(cfg.modbus, modbus_devices, self.store, limits=limits)
            self._tasks.append(asyncio.create_task(self.modbus.run(self._stop), name="modbus-collector"))
        self._tasks.append(asyncio.create_task(self._rules_loop(), name="rules"))
        self._tasks.append(asyncio.create_task(self.history.run(self._stop), name="history"))
        self._tasks.extend(self.alert_stage.tasks(self._stop))
        if self.reports.active:
            self._tasks.append(asyncio.create_task(self.reports.run(self._stop), name="scheduled-reports"))
        if cfg.auth.local_token:
            write_local_token(cfg.data_dir, self.tokens)
        if not self.tokens:
            log.warning(
                "no API tokens are configured: every /api route will answer 401. "
                "Create one with `gridsentry token create --role operator` and add it under auth.tokens"
            )
        await self._start_http()
        self._write_runtime_file()
        self.ready.set()

    async def stop(self) -> None:
        self._stop.set()
        if self._http is not None:
            self._http.should_exit = True
        if self._tasks:
            done, pending = await asyncio.wait(self._tasks, timeout=15)
            for t in pending:
                log.warning("stage %s did not stop within 15 s; cancelling it", t.get_name())
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            for t in done:
                if not t.cancelled() and t.exception() is not None:
                    log.error("stage %s had failed: %s", t.get_name(), t.exception())
        await self._drain_rules()
        self.sql.close()
        await asyncio.to_thread(self.writer.close)
        with contextlib.suppress(FileNotFoundError):
            (self.cfg.data_dir / RUNTIME_FILE).unlink()
        log.info("GridSentry stopped; every accepted reading is committed")

    async def run_forever(self) -> None:
        await self._stop.wait()

    def request_stop(self) -> None:
        self._stop.set()

    # --- ingest --------------------------------------------------------------------------------------
    async def store(self, batch: IngestBatch) -> CommitResult:
        """The collector's sink: one transaction per flush. Returns after COMMIT."""
        batch, new_devices = self._screen_devices(batch)
        before = None if new_devices is None else (lambda con: register_unknown_devices(con, new_devices))
        result = await self.writer.append(batch, before)
        self.duplicates_dropped += result.duplicates
        self._after_commit(batch, result)
        return result

    def _screen_devices(self, batch: IngestBatch) -> tuple[IngestBatch, pa.Table | None]:
        ids = set(pc.unique(batch.readings["device_id"]).to_pylist()) | set(
            pc.unique(batch.events["device_id"]).to_pylist()
        )
        unknown = sorted(i for i in ids if i not in self.known_devices)
        if not unknown:
            return batch, None
        if self.cfg.unknown_devices == "reject":
            return self._reject_unknown(batch, unknown), None
        self.unknown_devices_seen += len(unknown)
        for dev in unknown:
            log.warning(
                "device %r is not in the ledger; storing its data and adding it as kind 'unknown' "
                "(list it under devices: in the config to give it a site, kind and rules)",
                dev,
            )
            self.known_devices[dev] = DeviceInfo(dev, None, "unknown")
        now = datetime.now(UTC)
        table = pa.table(
            {
                "device_id": pa.array(unknown, pa.string()),
                "site": pa.array([None] * len(unknown), pa.string()),
                "first_seen": pa.array([now] * len(unknown), pa.timestamp("us", tz="UTC")),
            }
        )
        self.rules_runtime.set_devices([self.known_devices[d] for d in unknown])
        return batch, table

    def _reject_unknown(self, batch: IngestBatch, unknown: list[str]) -> IngestBatch:
        value_set = pa.array(unknown, pa.string())
        bad_r = pc.is_in(batch.readings["device_id"], value_set=value_set)
        bad_e = pc.is_in(batch.events["device_id"], value_set=value_set)
        letters = []
        for dev in unknown:
            rows = batch.readings.filter(pc.equal(batch.readings["device_id"], dev))
            self.collector_stats.rejected["unknown_device"] += 1
            letters.append(
                DeadLetter(
                    batch.source,
                    None,
                    "unknown_device",
                    f"device {dev!r} is not in the ledger and unknown_devices is 'reject'; "
                    f"{rows.num_rows} readings kept here. Add it under devices: in the config.",
                    orjson.dumps(rows.slice(0, 200).to_pylist(), default=str),
                )
            )
        kept = batch.filter_rows(pc.invert(bad_r), pc.invert(bad_e))
        kept.dead_letters = pa.concat_tables([batch.dead_letters, dead_letters_table(letters)])
        return kept

    def _after_commit(self, batch: IngestBatch, result: CommitResult) -> None:
        self.readings_committed[batch.source] += result.readings
        self.events_committed += result.events
        self.dead_letters_committed += result.dead_letters
        if batch.events.num_rows and len(self._rules_events) < 1000:
            self._rules_events.append(batch.events)
            self._rules_fresh.set()  # a connector fault event is judged as soon as it is stored, like a reading
        if batch.reading_count:
            self.screens.latest.update(batch.readings)
            grouped = batch.readings.group_by("device_id").aggregate([("ts", "max")])
            for dev, ts in zip(grouped["device_id"].to_pylist(), grouped["ts_max"].to_pylist(), strict=True):
                self.last_seen[dev] = ts.timestamp()
            try:
                self._rules_queue.put_nowait(batch.readings)
                self._rules_fresh.set()
            except asyncio.QueueFull:
                # Rules fell behind; the data is committed, so evaluation catches up later on what it
                # sees next. Counted so the operator sees it on the pipeline-health screen.
                self.rule_errors += 1
                log.error(
                    "rule evaluation is falling behind ingest; skipped evaluating %d readings", batch.reading_count
                )

    # --- rules -----------------------------------------------------------------------------------------
    @property
    def engine(self) -> RuleEngine:
        return self.rules_runtime.engine

    @property
    def loaded_rules(self) -> LoadedRules:
        return self.rules_runtime.loaded

    def _load_rules(self) -> None:
        self.rules_runtime.load(self.known_devices)

    async def _rules_loop(self) -> None:
        """Evaluate every `rules.tick_ms` (silence is what offline rules look for), and sooner when readings are
        committed: a fault is judged as soon as it is stored, at most every `rules_fresh_gap_s` (ADR 37)."""
        tick = self.cfg.rules.tick_ms / 1000
        gap = tick if self.rules_fresh_gap_s is None else min(tick, self.rules_fresh_gap_s)
        stopping = asyncio.ensure_future(self._stop.wait())
        last = time.monotonic()
        try:
            while not self._stop.is_set():
                waits: set[asyncio.Future[Any]] = {stopping}
                if self.rules_fresh_gap_s is not None:
                    waits.add(asyncio.ensure_future(self._rules_fresh.wait()))
                await asyncio.wait(
                    waits, timeout=max(0.0, last + tick - time.monotonic()), return_when="FIRST_COMPLETED"
                )
                since = time.monotonic() - last
                if since < gap:  # under load, batches arrive faster than evaluations are worth running
                    await asyncio.wait({stopping}, timeout=gap - since)
                for w in waits - {stopping}:
                    w.cancel()
                self._rules_fresh.clear()
                last = time.monotonic()
                await self._evaluate_pending()
        finally:
            stopping.cancel()

    async def _drain_rules(self) -> None:
        with contextlib.suppress(Exception):
            await self._evaluate_pending()
            await self.rules_runtime.persist()

    async def _evaluate_pending(self) -> None:
        tables = []
        while not self._rules_queue.empty():
            tables.append(self._rules_queue.get_nowait())
        # Evaluated every tick even without new readings: silence is what offline rules look for.
        readings = pa.concat_tables(tables) if len(tables) > 1 else tables[0] if tables else _NO_READINGS
        pending_events, self._rules_events = self._rules_events, []
        events = pa.concat_tables(pending_events) if pending_events else None
        try:
            findings = await asyncio.to_thread(self.rules_runtime.evaluate, readings, None, events)
            self.instruments.rule_evaluation_seconds.observe(self.engine.last_eval_seconds)
            if findings:
                await self.alerts.apply(findings)
            await self.rules_runtime.persist()
        except Exception:
            self.rule_errors += 1
            log.exception("rule evaluation failed for %d readings; continuing with the next batch", readings.num_rows)

    # --- ledger ----------------------------------------------------------------------------------------
    def _load_known_devices(self) -> None:
        con = self.writer.reader()
        try:
            self.known_devices = devices_from_ledger(con)
        finally:
            con.close()

    # --- HTTP ------------------------------------------------------------------------------------------
    async def _start_http(self) -> None:
        from gridsentry.api import create_app  # the API imports the service's types

        app = self.app = create_app(self)
        config = uvicorn.Config(
            app,
            host=self.cfg.http.host,
            port=self.cfg.http.port,
            log_level="warning",
            access_log=False,
            lifespan="off",
        )
        self._http = uvicorn.Server(config)
        # The CLI owns SIGINT/SIGTERM and stops every stage in order; uvicorn must not grab them.
        task = asyncio.create_task(self._http._serve(), name="http")
        self._tasks.append(task)
        while not self._http.started:
            if task.done():
                exc = task.exception()
                raise RuntimeError(
                    f"the HTTP server could not start on {self.cfg.http.host}:{self.cfg.http.port}"
                    " (is the port in use? set http.port or pass --http-port)"
                ) from exc
            await asyncio.sleep(0.02)
        sock = self._http.servers[0].sockets[0]
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        self.http_url = f"http://{shown}:{port}"
        if self.cfg.http.host not in ("127.0.0.1", "::1", "localhost"):
            log.warning(
                "the HTTP API listens on %s, beyond loopback, without TLS: put it behind a TLS reverse proxy",
                self.cfg.http.host,
            )

    def _write_runtime_file(self) -> None:
        info = {
            "pid": os.getpid(),
            "http_url": self.http_url,
            "database": str(self.cfg.database_path),
            "started_at": self.started_at.isoformat(),
        }
        # Written beside and renamed so a reader (the `sql` command, a supervisor) never sees a half file.
        final = self.cfg.data_dir / RUNTIME_FILE
        partial = final.with_name(f".{RUNTIME_FILE}.{os.getpid()}")
        partial.write_text(json.dumps(info, indent=2), encoding="utf-8")
        partial.replace(final)

    def audit(
        self,
        *,
        actor: str,
        role: str,
        action: str,
        target: str,
        status: int | None = None,
        client: str | None = None,
        duration_s: float | None = None,
        detail: str | None = None,
    ) -> None:
        """Record who changed what (or queried what) in `audit_log`, through the single writer."""
        log.info("audit: %s (%s) %s %s -> %s", actor, role, action, target, status)
        row = [actor, role, action, target, status, client, duration_s, detail[:4000] if detail else None]

        def write(con: duckdb.DuckDBPyConnection) -> None:
            con.execute(
                "INSERT INTO audit_log (actor, role, action, target, status, client, duration_s, detail) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                row,
            )

        def done(fut: Future[None]) -> None:
            if fut.exception() is not None:
                self.audit_failures += 1
                log.error("audit row for %s %s %s not written: %s", actor, action, target, fut.exception())

        try:
            self.writer.submit(write).add_done_callback(done)
        except RuntimeError as exc:
            self.audit_failures += 1
            log.error("audit row for %s %s %s not written: %s", actor, action, target, exc)

    # --- read side used by the API and exporter ----------------------------------------------------------
    def uptime_s(self) -> float:
        return (datetime.now(UTC) - self.started_at).total_seconds()

    def open_alert_counts(self) -> dict[str, int]:
        con = self.writer.reader()
        try:
            rows = con.execute(
                "SELECT event_class, count(*) FROM alerts WHERE state IN ('firing', 'acknowledged') GROUP BY 1"
            ).fetchall()
        finally:
            con.close()
        out = {"I": 0, "II": 0, "III": 0}
        out.update({str(r[0]): int(r[1]) for r in rows})
        return out


def _device_row(d: Any) -> Mapping[str, Any]:
    return {
        "device_id": d.id,
        "site": d.site,
        "kind": d.kind,
        "vendor": d.vendor,
        "model": d.model,
        "rated_kw": d.rated_kw,
        "parent_id": d.parent,
        "expected_interval_s": d.expected_interval_s,
        "commissioned": d.commissioned,
        "location": d.location,
        "tags": list(d.tags),
    }
