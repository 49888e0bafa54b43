"""MQTT collector: QoS 1, persistent session, acknowledge only after commit.

Why it is built this way (measured in shared/reliability.md §1):
- aiomqtt acks a QoS 1 message as soon as it is queued; a crash then loses it. We switch the
  wrapped paho client to manual ack and ack each message, in arrival order, only after the batch
  holding it has committed.
- A persistent session needs `clean_start=False`, a Session Expiry Interval > 0 and a stable client
  id; otherwise the broker throws away what it queued while we were down.
- The message iterator is never cancelled (a cancelled get can swallow a message): one reader task
  decodes into a buffer, and this task flushes it on size, age or idle time.
- The broker's in-flight window bounds unacked messages, so a flush must not wait for a large
  batch only: it also runs after a short idle gap, or delivery would stall.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from collector.mapping import FieldMapper
from collector.payloads import (
    BatchBuilder,
    ClockCheck,
    DecodeError,
    MetricLimits,
    TopicInfo,
    TopicTemplate,
    decode_message,
)
from collector.sequence import SequenceTracker
from collector.settings import MqttConfig
from storage.batch import DeadLetter, IngestBatch

log = logging.getLogger(__name__)

Sink = Callable[[IngestBatch], Awaitable[Any]]

# CONNACK reason codes meaning "this broker does not speak MQTT 5" (v5: 132; v3: 1).
_UNSUPPORTED_PROTOCOL = {1, 132}


@dataclass
class CollectorStats:
    """Counters read by the Prometheus exporter. Updated only from the event loop."""

    messages_received: int = 0
    messages_acked: int = 0
    readings_decoded: int = 0
    events_decoded: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    flushes: int = 0
    sink_failures: int = 0
    connects: int = 0
    connection_failures: int = 0
    connected: bool = False
    pending: int = 0
    protocol: str = ""
    last_message_at: float = 0.0
    stalls: int = 0
    duplicates: int = 0


class TopicRouter:
    def __init__(self, templates: list[str]) -> None:
        self._templates = [TopicTemplate(t) for t in templates]

    def route(self, topic: str) -> TopicInfo | None:
        for t in self._templates:
            info = t.match(topic)
            if info is not None:
                return info
        return None


class StallDetectedError(aiomqtt.MqttError):
    """The connection is up but delivers nothing while data is due: reconnect to release held messages."""


class _Flush:
    """Signals from the reader to the flusher."""

    def __init__(self) -> None:
        self.wake = asyncio.Event()
        self.space = asyncio.Event()
        self.space.set()


class CollectorCore:
    """What every MQTT collector shares, whatever client library it uses: the decode into a batch, the
    dead-lettering, the commit (build beside the event loop, store with retry forever), the sequence and
    stall checks. Subclasses own the connection and the acknowledgements."""

    def __init__(
        self,
        cfg: MqttConfig,
        sink: Sink,
        *,
        limits: MetricLimits | None = None,
        stats: CollectorStats | None = None,
        mapper: FieldMapper | None = None,
    ) -> None:
        self.cfg = cfg
        self._sink = sink
        self._limits = limits
        self._mapper = mapper
        self.stats = stats or CollectorStats()
        self._router = TopicRouter([s.template for s in cfg.subscriptions])
        self._reject_logged: Counter[str] = Counter()
        self.subscribed = asyncio.Event()
        self.sequences = SequenceTracker(cfg.sequence_gap_grace_s)
        self._clock = ClockCheck(cfg.max_future_skew_s, cfg.stale_after_s)
        #: How often each device should report (from the ledger); a device absent here counts as 10 s.
        self.device_intervals: dict[str, float] = {}
        self._device_seen: dict[str, float] = {}  # monotonic time of the newest committed message per device

    def _decode(self, builder: BatchBuilder, topic: str, payload: bytes, now: float) -> None:
        """Decode one message into `builder` (or dead-letter it) and count it in the batch."""
        try:
            decode_message(builder, topic, payload, self._router.route(topic), int(now * 1e6))
        except DecodeError as exc:
            self._reject(builder, topic, payload, exc)
        builder.messages += 1

    def _reject(self, builder: BatchBuilder, topic: str, payload: bytes, exc: DecodeError) -> None:
        self.stats.rejected[exc.reason] += 1
        builder.dead.append(DeadLetter("mqtt", topic, exc.reason, exc.detail, payload))
        n = self._reject_logged[exc.reason] = self._reject_logged[exc.reason] + 1
        if n <= 5 or n % 1000 == 0:
            log.warning(
                "rejected MQTT message on %s (%s): %s; kept in dead_letters (%d so far for this reason)",
                topic,
                exc.reason,
                exc.detail,
                n,
            )

    def _stall(self, last_arrival: float, connected_at: float, now: float) -> str | None:
        """Why the live connection counts as stalled (and `stalls` is bumped), or None."""
        limit = self.cfg.stall_timeout_s or float(self.cfg.keepalive_s)
        quiet = now - max(last_arrival, connected_at)
        if quiet < limit:
            return None
        # Only a stall if some device that was reporting is overdue: a fleet that reports every
        # 15 minutes is allowed to be quiet for 15 minutes.
        due = [
            d
            for d, seen in self._device_seen.items()
            if now - seen > 2 * self.device_intervals.get(d, 10.0)
            and now - seen < 20 * self.device_intervals.get(d, 10.0) + limit
            and self.device_intervals.get(d, 10.0) < limit
        ]
        if not due:
            return None
        self.stats.stalls += 1
        return (
            f"no message for {quiet:.1f} s while {len(due)} devices are due (e.g. {due[0]}); "
            "reconnecting to release what the broker holds"
        )

    async def _gaps(self, now: float) -> str | None:
        """Store expired sequence gaps as events; when there were any, bump `stalls` and say why to reconnect."""
        gaps = self.sequences.expired(now)
        if not gaps:
            return None
        b = BatchBuilder()
        b.current = -1  # not a broker message: never de-duplicated
        ts = int(time.time() * 1e6)
        for g in gaps:
            log.warning("sequence gap on %s: %s (kept as an ingest/sequence_gap event)", g.device_id, g.describe())
            b.add_event(ts, g.device_id, "ingest", "sequence_gap", g.describe())
        batch = b.build(source="mqtt")
        batch.message_keys = None
        await self._sink(batch)
        # A broker may hold in-flight messages on a live connection and resend them only on reconnect
        # (shared/reliability.md §1.6): reconnect once, and whatever it held arrives late but arrives.
        self.stats.stalls += 1
        return f"{len(gaps)} sequence gaps; reconnecting to release what the broker may hold"

    async def _commit(self, builder: BatchBuilder) -> None:
        """Build `builder` into a batch and store it, retrying until it is committed. Nothing is acked here."""
        # Arrow conversion runs beside the event loop, which is the busiest thread at high rates.
        batch = await asyncio.to_thread(builder.build, self._limits, "mqtt", self._clock, self._mapper)
        delay = 0.1
        while True:
            try:
                await self._sink(batch)
                break
            except Exception as exc:
                self.stats.sink_failures += 1
                log.error(
                    "could not store %d readings (%s); holding them and retrying in %.1f s, nothing is acked",
                    batch.reading_count,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        now = time.monotonic()
        self.sequences.observe(builder.seqs, now)
        for device in builder.sites:
            self._device_seen[device] = now
        self.stats.flushes += 1
        self.stats.readings_decoded += batch.reading_count
        self.stats.events_decoded += batch.event_count


class MqttCollector(CollectorCore):
    """The collector on aiomqtt: one reader task feeding the flusher on the event loop."""

    def __init__(
        self,
        cfg: MqttConfig,
        sink: Sink,
        *,
        limits: MetricLimits | None = None,
        stats: CollectorStats | None = None,
        mapper: FieldMapper | None = None,
    ) -> None:
        super().__init__(cfg, sink, limits=limits, stats=stats, mapper=mapper)
        self._protocol = {
            "5": aiomqtt.ProtocolVersion.V5,
            "3.1.1": aiomqtt.ProtocolVersion.V311,
            "auto": aiomqtt.ProtocolVersion.V5,
        }[cfg.protocol]
        self._protocol_settled = False

    # --- connection loop -------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        delay = self.cfg.reconnect_min_s
        while not stop.is_set():
            try:
                await self._session(stop)
                delay = self.cfg.reconnect_min_s
            except aiomqtt.MqttError as exc:
                if self._try_other_protocol(exc):
                    continue
                self._connection_lost(exc)
            if stop.is_set():
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(delay * 2, self.cfg.reconnect_max_s)

    def _try_other_protocol(self, exc: aiomqtt.MqttError) -> bool:
        """With protocol 'auto', a broker that refuses MQTT 5 (or, like amqtt, never answers a v5
        CONNECT) gets MQTT 3.1.1 with a persistent session instead. Decided once per collector."""
        if self.cfg.protocol != "auto" or self._protocol_settled or self._protocol != aiomqtt.ProtocolVersion.V5:
            return False
        if isinstance(exc, aiomqtt.MqttCodeError):
            if exc.rc not in _UNSUPPORTED_PROTOCOL:
                return False  # e.g. bad credentials: the same with 3.1.1
        elif "timed out" not in str(exc):
            return False  # the broker is unreachable: no verdict on its protocol yet
        log.warning(
            "broker %s:%d did not accept MQTT 5 (%s); trying MQTT 3.1.1 with a persistent session",
            self.cfg.host,
            self.cfg.port,
            exc,
        )
        self._protocol = aiomqtt.ProtocolVersion.V311
        return True

    def _connection_lost(self, exc: Exception) -> None:
        self.stats.connected = False
        self.stats.connection_failures += 1
        log.warning(
            "MQTT broker %s:%d: %s; reconnecting with backoff (session %r keeps queued messages)",
            self.cfg.host,
            self.cfg.port,
            exc,
            self.cfg.client_id,
        )

    def _client(self) -> aiomqtt.Client:
        kwargs: dict[str, Any] = {}
        if self._protocol == aiomqtt.ProtocolVersion.V5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = self.cfg.session_expiry_s
            kwargs.update(clean_start=False, properties=props)
        else:
            kwargs.update(clean_session=False)
        if self.cfg.tls is not None:
            kwargs["tls_context"] = self.cfg.tls.ssl_context()
        client = aiomqtt.Client(
            self.cfg.host,
            self.cfg.port,
            identifier=self.cfg.client_id,
            protocol=self._protocol,
            username=self.cfg.username,
            password=self.cfg.password.get_secret_value() if self.cfg.password else None,
            keepalive=self.cfg.keepalive_s,
            timeout=5,
            **kwargs,
        )
        # aiomqtt has no public manual-ack API yet (aiomqtt #345): reach the paho client.
        client._client.manual_ack_set(True)
        return client

    # --- one connected session ----------------------------------------------------------------
    async def _session(self, stop: asyncio.Event) -> None:
        client = self._client()
        async with client:
            self._protocol_settled = True
            self.stats.connects += 1
            self.stats.connected = True
            self.stats.protocol = "5" if self._protocol == aiomqtt.ProtocolVersion.V5 else "3.1.1"
            log.info(
                "connected to MQTT broker %s:%d as %r (MQTT %s, QoS 1, persistent session)",
                self.cfg.host,
                self.cfg.port,
                self.cfg.client_id,
                self.stats.protocol,
            )
            for sub in self.cfg.subscriptions:
                await client.subscribe(sub.topic, qos=self.cfg.qos)
            self.subscribed.set()
            state = _SessionState()
            reader = asyncio.create_task(self._read(client, state), name="mqtt-reader")
            try:
                await self._flush_loop(client, state, reader, stop)
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                    await reader
                # What was decoded but not committed is committed now rather than dropped: the broker
                # will redeliver it (never acked), and de-duplication absorbs the repeat.
                await self._flush(client, state)
                if stop.is_set():
                    await asyncio.sleep(0.1)  # let the last PUBACKs leave before the socket closes
                self.stats.connected = False

    async def _read(self, client: aiomqtt.Client, state: _SessionState) -> None:
        cfg = self.cfg
        async for msg in client.messages:
            now = time.time()
            self.stats.messages_received += 1
            self.stats.last_message_at = now
            state.last_arrival = time.monotonic()
            if not state.builder.messages:
                state.first_arrival = state.last_arrival
            topic = msg.topic.value
            payload = msg.payload if isinstance(msg.payload, bytes | bytearray) else str(msg.payload).encode()
            self._decode(state.builder, topic, bytes(payload), now)
            state.unacked.append((msg.mid, msg.qos))
            self.stats.pending = len(state.unacked)
            if len(state.unacked) >= cfg.flush_max_messages:
                state.signals.wake.set()
            if len(state.unacked) >= cfg.max_pending_messages:
                state.signals.space.clear()
                state.signals.wake.set()
                await state.signals.space.wait()

    async def _flush_loop(
        self, client: aiomqtt.Client, state: _SessionState, reader: asyncio.Task[None], stop: asyncio.Event
    ) -> None:
        interval = self.cfg.flush_interval_ms / 1000
        idle = self.cfg.flush_idle_ms / 1000
        tick = min(interval, idle) / 2
        while not stop.is_set():
            if reader.done():
                exc = reader.exception()
                if exc is not None:
                    raise exc
                raise aiomqtt.MqttError("the broker closed the message stream")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(state.signals.wake.wait(), tick)
            state.signals.wake.clear()
            now = time.monotonic()
            if now >= state.next_health_check:
                state.next_health_check = now + 0.25
                await self._report_gaps(now)
                self._check_stall(state, now)
            if not state.unacked:
                continue
            if (
                len(state.unacked) >= self.cfg.flush_max_messages
                or now - state.first_arrival >= interval
                or now - state.last_arrival >= idle
            ):
                await self._flush(client, state)

    def _check_stall(self, state: _SessionState, now: float) -> None:
        why = self._stall(state.last_arrival, state.connected_at, now)
        if why is not None:
            state.connected_at = now  # one reconnect per stall
            raise StallDetectedError(why)

    async def _report_gaps(self, now: float) -> None:
        why = await self._gaps(now)
        if why is not None:
            raise StallDetectedError(why)

    async def _flush(self, client: aiomqtt.Client, state: _SessionState) -> None:
        if not state.unacked:
            return
        builder, unacked = state.builder, state.unacked
        state.builder, state.unacked = BatchBuilder(), []
        await self._commit(builder)
        paho = client._client
        for mid, qos in unacked:  # in arrival order, as MQTT 3.1.1 §4.6 requires
            if qos > 0:
                paho.ack(mid, qos)  # on a lost connection this is a no-op; the broker redelivers
        self.stats.messages_acked += len(unacked)
        self.stats.pending = len(state.unacked)
        state.signals.space.set()


class _SessionState:
    def __init__(self) -> None:
        self.builder = BatchBuilder()
        self.unacked: list[tuple[int, int]] = []
        self.signals = _Flush()
        self.first_arrival = 0.0
        self.last_arrival = 0.0
        self.connected_at = time.monotonic()
        self.next_health_check = 0.0
