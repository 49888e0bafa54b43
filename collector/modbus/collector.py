"""The Modbus collector: one poller task per device, one link per connection, one commit per flush.

Poll results of every device are gathered and committed together every `flush_interval_ms`, as
the same IngestBatch (readings + events) the MQTT path produces, so storage, rules and alerts need
no change. Modbus has no broker acknowledgement: a poll result counts as accepted once committed;
a failed commit keeps it for the next flush (bounded), and the next poll reads fresh values anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from collector.modbus.links import LinkPool
from collector.modbus.maps import MapError, RegisterMap, load_map_file, resolve_map
from collector.modbus.poller import DevicePoller, PollOutput
from collector.modbus.settings import ModbusConfig, ModbusDeviceConfig
from collector.payloads import MetricLimits
from storage.batch import IngestBatch, events_from_columns, readings_from_columns

log = logging.getLogger(__name__)
# pymodbus reports every retry, frame and refused connection; GridSentry counts and logs those itself.
logging.getLogger("pymodbus").setLevel(logging.ERROR)

Sink = Callable[[IngestBatch], Awaitable[Any]]

#: Readings kept for the next flush when a commit fails; beyond this the oldest are dropped (counted).
MAX_PENDING_READINGS = 500_000


@dataclass
class ModbusStats:
    flushes: int = 0
    sink_failures: int = 0
    readings_dropped: int = 0
    map_reloads: int = 0
    map_errors: int = 0
    devices_skipped: int = 0
    map_problems: list[str] = field(default_factory=list)


@dataclass
class _MapFile:
    path: Path
    mtime: float
    devices: list[str]


class ModbusCollector:
    def __init__(
        self,
        cfg: ModbusConfig,
        devices: list[tuple[str, ModbusDeviceConfig]],
        sink: Sink,
        *,
        limits: MetricLimits | None = None,
    ) -> None:
        self.cfg = cfg
        self.sink = sink
        self.limits = limits
        self.stats = ModbusStats()
        self.links = LinkPool()
        self.pollers: dict[str, DevicePoller] = {}
        self._maps: dict[Path, _MapFile] = {}
        self._pending: list[tuple[str, PollOutput]] = []
        self._tasks: list[asyncio.Task[Any]] = []
        for device_id, dcfg in devices:
            register_map: RegisterMap | None = None
            if dcfg.map != "sunspec":
                try:
                    path = resolve_map(dcfg.map, cfg.map_dirs).resolve()
                    register_map = load_map_file(path)
                except MapError as exc:
                    # `gridsentry config check` refuses this before start; a map broken since is logged and skipped.
                    self.stats.devices_skipped += 1
                    self.stats.map_errors += 1
                    self.stats.map_problems = [str(i) for i in exc.issues]
                    log.error("Modbus device %s is not polled: its map is unusable: %s", device_id, exc)
                    continue
                entry = self._maps.get(path)
                if entry is None:
                    entry = self._maps[path] = _MapFile(path, _mtime(path), [])
                entry.devices.append(device_id)
            self.pollers[device_id] = DevicePoller(device_id, dcfg, self.links.get(dcfg), register_map, self._collect)

    # --- running ------------------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        if not self.pollers:
            return
        log.info(
            "Modbus: polling %d devices over %d links (%s)",
            len(self.pollers),
            len(self.links.links),
            ", ".join(sorted(self.links.links)),
        )
        self._tasks = [
            asyncio.create_task(p.run(stop), name=f"modbus {device_id}") for device_id, p in self.pollers.items()
        ]
        if self.cfg.map_check_interval_s > 0 and self._maps:
            self._tasks.append(asyncio.create_task(self._watch_maps(stop), name="modbus maps"))
        try:
            flush = self.cfg.flush_interval_ms / 1000
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), flush)
                await self.flush()
        finally:
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self.flush()
            self.links.close()

    def _collect(self, device_id: str, out: PollOutput) -> None:
        self._pending.append((device_id, out))

    async def flush(self) -> None:
        if not self._pending:
            return
        taken, self._pending = self._pending, []
        batch = self._build(taken)
        try:
            await self.sink(batch)
        except Exception as exc:
            self.stats.sink_failures += 1
            log.error(
                "Modbus: committing %d readings failed (%s); retrying with the next flush", batch.reading_count, exc
            )
            self._pending = taken + self._pending
            self._trim_pending()
            return
        self.stats.flushes += 1

    def _trim_pending(self) -> None:
        total = sum(len(o.ts) for _d, o in self._pending)
        while total > MAX_PENDING_READINGS and self._pending:
            _dev, dropped = self._pending.pop(0)
            total -= len(dropped.ts)
            self.stats.readings_dropped += len(dropped.ts)

    def _build(self, taken: list[tuple[str, PollOutput]]) -> IngestBatch:
        ts: list[int] = []
        dev: list[str] = []
        metric: list[str] = []
        value: list[float | None] = []
        quality: list[int] = []
        ev_ts: list[int] = []
        ev_dev: list[str] = []
        ev_kind: list[str] = []
        ev_code: list[str] = []
        ev_text: list[str | None] = []
        for device_id, o in taken:
            ts += o.ts
            dev += [device_id] * len(o.ts)
            metric += o.metric
            value += o.value
            quality += o.quality
            ev_ts += o.ev_ts
            ev_dev += [device_id] * len(o.ev_ts)
            ev_kind += o.ev_kind
            ev_code += o.ev_code
            ev_text += o.ev_text
        readings = readings_from_columns(ts, dev, metric, value, quality)
        if self.limits is not None and readings.num_rows:
            readings = self.limits.flag_out_of_range(readings)
        return IngestBatch(
            readings=readings,
            events=events_from_columns(ev_ts, ev_dev, ev_kind, ev_code, ev_text),
            source="modbus",
        )

    # --- map reloads ----------------------------------------------------------------------------------------
    async def _watch_maps(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.cfg.map_check_interval_s)
            self.check_maps()

    def check_maps(self) -> None:
        """Reload changed map files; a broken one is refused and the running map kept."""
        for entry in self._maps.values():
            mtime = _mtime(entry.path)
            if mtime == entry.mtime:
                continue
            entry.mtime = mtime
            try:
                new_map = load_map_file(entry.path)
            except MapError as exc:
                self.stats.map_errors += 1
                self.stats.map_problems = [str(i) for i in exc.issues]
                log.error(
                    "register map %s changed but is not valid; still polling %s with the previous version:\n  %s",
                    entry.path,
                    ", ".join(entry.devices),
                    "\n  ".join(self.stats.map_problems),
                )
                continue
            self.stats.map_reloads += 1
            self.stats.map_problems = []
            for device_id in entry.devices:
                self.pollers[device_id].set_map(new_map)
            log.info("register map %s reloaded for %s", entry.path, ", ".join(entry.devices))


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
