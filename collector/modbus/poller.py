"""One device's poll loop: its own cadence, timeout, retries, backoff and health.

A poll reads every planned request, then turns raw registers into readings and events (scale
factors may sit in another request, so values are computed once all reads are in). What can go
wrong, and what becomes of it:
- exception response on a merged read: the device refuses the span; the read is split into one
  per point, remembered for this device, and retried at once;
- exception response on a single point: that point is flagged (a null reading, quality SUSPECT)
  and counted under its metric; the rest of the poll goes on;
- timeout or lost connection: the device is not answering; the poll stops, the device backs off
  (interval x 2^n up to `max_backoff_s`), and after `offline_after` failed polls an `offline`
  event is stored. A refused connection costs nothing to retry, so a backing-off device whose
  last failure was a refused connection still probes the TCP connect once per interval and polls
  as soon as it is back (resume within two intervals of a restart).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from collector.modbus.decode import PointDecodeError, normalise, raw_decoder, scaled
from collector.modbus.links import Link, ModbusReadError
from collector.modbus.maps import Point, RegisterMap
from collector.modbus.metrics import LATENCY_BUCKETS
from collector.modbus.planner import ReadRequest, plan, split
from collector.modbus.settings import ModbusDeviceConfig
from collector.modbus.sunspec import SunSpecDevice, SunSpecNotFoundError, discover
from storage.batch import Quality

log = logging.getLogger(__name__)


@dataclass
class DeviceHealth:
    """Link-health counters of one device, read by the Prometheus exporter."""

    device_id: str
    endpoint: str
    link: str
    map_name: str
    interval_s: float
    polls: int = 0
    polls_failed: int = 0
    requests: int = 0
    readings: int = 0
    events: int = 0
    errors: Counter[str] = field(default_factory=Counter)  # by kind: timeout, connection, exception_02, decode
    point_errors: Counter[tuple[str, str]] = field(default_factory=Counter)  # (metric, kind)
    latency_buckets: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BUCKETS))
    latency_sum: float = 0.0
    latency_count: int = 0
    last_success: float = 0.0  # Unix time of the last answered poll
    consecutive_failures: int = 0
    backoff_s: float = 0.0  # extra delay beyond the interval while failing
    online: bool | None = None
    merged_reads_refused: int = 0
    jitter_s: deque[float] = field(default_factory=lambda: deque(maxlen=4096))
    poll_started: deque[float] = field(default_factory=lambda: deque(maxlen=4096))  # monotonic

    def observe_latency(self, seconds: float) -> None:
        self.latency_sum += seconds
        self.latency_count += 1
        for i, bound in enumerate(LATENCY_BUCKETS):
            if seconds <= bound:
                self.latency_buckets[i] += 1
                break


@dataclass
class PollOutput:
    """Rows of one poll, as columns (collected by the ModbusCollector until the next commit)."""

    ts: list[int] = field(default_factory=list)
    metric: list[str] = field(default_factory=list)
    value: list[float | None] = field(default_factory=list)
    quality: list[int] = field(default_factory=list)
    ev_ts: list[int] = field(default_factory=list)
    ev_kind: list[str] = field(default_factory=list)
    ev_code: list[str] = field(default_factory=list)
    ev_text: list[str | None] = field(default_factory=list)

    def reading(self, ts: int, metric: str, value: float | None, quality: int) -> None:
        self.ts.append(ts)
        self.metric.append(metric)
        self.value.append(value)
        self.quality.append(quality)

    def event(self, ts: int, kind: str, code: str, text: str | None) -> None:
        self.ev_ts.append(ts)
        self.ev_kind.append(kind)
        self.ev_code.append(code)
        self.ev_text.append(text)


Emit = Callable[[str, PollOutput], None]


def now_us() -> int:
    return time.time_ns() // 1000


class DevicePoller:
    def __init__(
        self,
        device_id: str,
        cfg: ModbusDeviceConfig,
        link: Link,
        register_map: RegisterMap | None,
        emit: Emit,
    ) -> None:
        self.device_id = device_id
        self.cfg = cfg
        self.link = link
        self.emit = emit
        self.health = DeviceHealth(device_id, cfg.endpoint, link.key, cfg.map, cfg.interval_s)
        self.sunspec: SunSpecDevice | None = None
        self.register_map: RegisterMap | None = None
        self.requests: list[ReadRequest] = []
        self._decoders: list[Any] = []
        self._last_event_state: dict[str, Any] = {}
        self._last_error: ModbusReadError | None = None
        self._failing_since: float | None = None
        if register_map is not None:
            self.set_map(register_map)

    # --- map ------------------------------------------------------------------------------------------
    def set_map(self, register_map: RegisterMap) -> None:
        """Use a (re)loaded map from the next poll on; forgets which merged reads were refused."""
        self.register_map = register_map
        self.requests = plan(register_map)
        self._decoders = [raw_decoder(p) if p.type != "bit" else None for p in register_map.points]
        self._last_event_state.clear()

    # --- loop -----------------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        interval = self.cfg.interval_s
        due = time.monotonic()
        while not stop.is_set():
            delay = due - time.monotonic()
            if delay > 0 and await _wait(stop, delay):
                return
            started = time.monotonic()
            self.health.jitter_s.append(max(0.0, started - due))
            self.health.poll_started.append(started)
            try:
                ok = await self.poll_once()
            except Exception:  # a bug in one device's handling must not stop its polling, nor the others'
                log.exception("Modbus device %s: poll failed unexpectedly; polling goes on", self.device_id)
                self.health.errors["internal"] += 1
                ok = False
            now = time.monotonic()
            if ok:
                self.health.backoff_s = 0.0
                due += interval
                if due < now:  # overran (slow bus): skip the missed slots rather than burst
                    due += ((now - due) // interval + 1) * interval
                continue
            backoff = min(interval * 2 ** (self.health.consecutive_failures - 1), self.cfg.max_backoff_s)
            self.health.backoff_s = max(0.0, backoff - interval)
            due = now + backoff
            if self._last_error is not None and self._last_error.kind == "connection":
                due = await self._probe_until(stop, due, interval)

    async def _probe_until(self, stop: asyncio.Event, due: float, interval: float) -> float:
        """While backing off from a refused connection, try the TCP connect once per interval."""
        if self.cfg.transport == "rtu":
            return due
        while True:
            step = min(interval, due - time.monotonic())
            if step <= 0 or await _wait(stop, step):
                return due
            if time.monotonic() >= due:
                return due
            with contextlib.suppress(ModbusReadError):
                async with self.link.lock:
                    await self.link.connect(self.cfg.timeout_s)
                return time.monotonic()

    # --- one poll -------------------------------------------------------------------------------------
    async def poll_once(self) -> bool:
        """Read, decode and hand over one poll. True when the device answered."""
        h = self.health
        h.polls += 1
        out = PollOutput()
        if self.register_map is None and not await self._discover(out):
            self._emit(out)
            return False
        assert self.register_map is not None
        raw: dict[int, tuple[int, Any]] = {}
        flagged: dict[int, tuple[int, str]] = {}
        failure: ModbusReadError | None = None
        pending = deque(self.requests)
        while pending:
            req = pending.popleft()
            try:
                regs = await self._read(req)
            except ModbusReadError as exc:
                if exc.kind in ("timeout", "connection"):
                    failure = exc
                    break
                if exc.kind == "exception" and len(req.slots) > 1 and exc.code in (2, 3, 4):
                    parts = split(self.register_map, req)
                    if req in self.requests:  # (a map reloaded mid-poll has a fresh plan already)
                        i = self.requests.index(req)
                        self.requests[i : i + 1] = parts
                    pending.extendleft(reversed(parts))
                    h.merged_reads_refused += 1
                    log.warning(
                        "Modbus device %s refused the merged read %s (%s); reading its %d points one by one from now on",
                        self.device_id,
                        req.describe(),
                        exc.detail,
                        len(parts),
                    )
                    continue
                ts = now_us()
                for s in req.slots:
                    flagged[s.index] = (ts, exc.label)
                continue
            ts = now_us()
            for s in req.slots:
                p = self.register_map.points[s.index]
                if p.type == "bit":
                    raw[s.index] = (ts, regs[s.offset])
                else:
                    raw[s.index] = (ts, regs[s.offset : s.offset + p.register_count])
        answered = bool(raw or flagged)
        if failure is not None and not answered:
            self._failed(failure, out)
            self._emit(out)
            return False
        self._decode(raw, flagged, out)
        self._succeeded(out)
        self._emit(out)
        return True

    async def _read(self, req: ReadRequest) -> list[int]:
        h = self.health
        attempt = 0
        while True:
            t0 = time.monotonic()
            h.requests += 1
            try:
                regs = await self.link.read(req.fc, req.address, req.count, self.cfg.unit, self.cfg.timeout_s)
            except ModbusReadError as exc:
                h.errors[exc.label] += 1
                if exc.kind == "exception":
                    h.observe_latency(time.monotonic() - t0)
                if exc.kind == "timeout" and attempt < self.cfg.retries:
                    attempt += 1
                    continue
                raise
            h.observe_latency(time.monotonic() - t0)
            return regs

    async def _discover(self, out: PollOutput) -> bool:
        async def read(address: int, count: int) -> list[int]:
            return await self._read(ReadRequest(3, address, count, ()))

        try:
            device = await discover(read)
        except ModbusReadError as exc:
            self._failed(exc, out)
            return False
        except SunSpecNotFoundError as exc:
            self.health.errors["not_sunspec"] += 1
            self._failed(ModbusReadError("decode", str(exc)), out)
            return False
        self.sunspec = device
        self.set_map(device.register_map())
        log.info("Modbus device %s: %s", self.device_id, device.describe())
        ts = now_us()
        for key, value in device.common.items():
            if value:
                out.event(ts, "info", key, value)
        return True

    def _decode(self, raw: dict[int, tuple[int, Any]], flagged: dict[int, tuple[int, str]], out: PollOutput) -> None:
        assert self.register_map is not None
        points = self.register_map.points
        index_of = {p.metric: i for i, p in enumerate(points)}
        # Scale-factor registers (SunSpec *_SF) are inputs to other points, not readings of their own.
        factors = {index_of[p.scale_factor] for p in points if p.scale_factor is not None}
        values: dict[int, Any] = {}
        missing: set[int] = set()
        for i, (_ts, regs) in raw.items():
            p = points[i]
            if p.type == "bit":
                values[i] = regs
                continue
            if p.sentinel is not None:
                raw_unsigned = _unsigned(regs, p)
                width = 16 * p.register_count
                if raw_unsigned == p.sentinel & ((1 << width) - 1):
                    missing.add(i)
                    continue
                if p.type == "bitfield" and raw_unsigned >> (width - 1):
                    # SunSpec bitfields use at most 15 (31) bits: with the top bit set the rest is meaningless.
                    missing.add(i)
                    continue
            values[i] = self._decoders[i](regs)
        for i, (ts, _regs) in raw.items():
            p = points[i]
            if i in missing or i in factors:
                continue
            try:
                self._emit_point(i, p, ts, values[i], values, missing, flagged, index_of, out)
            except PointDecodeError as exc:
                flagged[i] = (ts, "decode")
                self.health.errors["decode"] += 1
                log.debug("Modbus device %s: %s", self.device_id, exc)
        for i, (ts, label) in flagged.items():
            p = points[i]
            self.health.point_errors[(p.metric, label)] += 1
            if not p.is_event and i not in factors:
                out.reading(ts, p.metric, None, Quality.SUSPECT)

    def _emit_point(
        self,
        i: int,
        p: Point,
        ts: int,
        value: Any,
        values: dict[int, Any],
        missing: set[int],
        flagged: dict[int, tuple[int, str]],
        index_of: dict[str, int],
        out: PollOutput,
    ) -> None:
        if p.type == "string":
            if self._last_event_state.get(p.metric) != value:
                self._last_event_state[p.metric] = value
                out.event(ts, p.kind_of_event, p.metric, str(value))
            return
        if p.enum is not None:
            state = p.enum.get(int(value))
            if state is None:  # a value the map does not know: kept as an event, counted against the point
                state = f"UNKNOWN_{int(value)}"
                self.health.point_errors[(p.metric, "unknown_state")] += 1
            if self._last_event_state.get(p.metric) != state:
                self._last_event_state[p.metric] = state
                out.event(ts, p.kind_of_event, state, f"{p.metric} is {state} (raw {int(value)})")
            return
        if p.bits is not None:
            word = int(value)
            before = self._last_event_state.get(p.metric)
            self._last_event_state[p.metric] = word
            for bit, name in sorted(p.bits.items()):
                now_set = bool(word >> bit & 1)
                was_set = bool(before >> bit & 1) if before is not None else False
                if now_set != was_set:
                    out.event(
                        ts, p.kind_of_event, name, f"{name} {'raised' if now_set else 'cleared'} ({p.metric} bit {bit})"
                    )
            return
        sf: int | None = None
        if p.scale_factor is not None:
            j = index_of[p.scale_factor]
            if j in missing or j not in values:
                if j in flagged:
                    flagged[i] = flagged[j]
                return  # the scale factor is not implemented or was not read: the value is unusable
            sf = int(values[j])
            if not -10 <= sf <= 10:
                raise PointDecodeError(f"{p.metric}: scale factor {p.scale_factor} = {sf} is outside -10..10")
        out.reading(ts, p.metric, scaled(p, value, sf), Quality.GOOD)

    # --- state ------------------------------------------------------------------------------------------
    def _failed(self, exc: ModbusReadError, out: PollOutput) -> None:
        h = self.health
        h.polls_failed += 1
        h.consecutive_failures += 1
        self._last_error = exc
        if self._failing_since is None:
            self._failing_since = time.time()
        if h.consecutive_failures == 1:
            log.warning("Modbus device %s (%s): %s", self.device_id, self.cfg.endpoint, exc.detail)
        if h.consecutive_failures == self.cfg.offline_after and h.online is not False:
            h.online = False
            text = (
                f"Modbus device {self.device_id} at {self.cfg.endpoint} is offline: {h.consecutive_failures} polls "
                f"in a row failed ({exc.detail}); retrying with backoff up to {self.cfg.max_backoff_s:g} s"
            )
            log.error(text)
            out.event(now_us(), "link", "offline", text)

    def _succeeded(self, out: PollOutput) -> None:
        h = self.health
        if h.online is False:
            down = time.time() - (self._failing_since or time.time())
            text = f"Modbus device {self.device_id} at {self.cfg.endpoint} is answering again after {down:.0f} s"
            log.warning(text)
            out.event(now_us(), "link", "online", text)
        h.online = True
        h.consecutive_failures = 0
        h.last_success = time.time()
        self._last_error = None
        self._failing_since = None

    def _emit(self, out: PollOutput) -> None:
        self.health.readings += len(out.ts)
        self.health.events += len(out.ev_ts)
        if out.ts or out.ev_ts:
            self.emit(self.device_id, out)


def _unsigned(regs: Any, p: Point) -> int:
    return int.from_bytes(normalise(regs, p.byte_order), "big")


async def _wait(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep, waking early on stop. True when stopping."""
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return False
    return True
