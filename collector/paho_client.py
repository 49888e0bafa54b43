"""MQTT collector on paho-mqtt's own network thread: the same promises as `collector.mqtt`, faster.

Why (shared/performance.md §1, §7; docs/adr/0007): aiomqtt costs about 90 µs of CPU per QoS 1 message against
paho's 58 µs, because every packet takes an event-loop wake-up, a `Message` copy and an `asyncio.Queue` hop. With
one reading per message that per-message cost is the ceiling. Here paho's thread decodes each message straight
into the current batch, and the event loop only commits and acknowledges.

What stays the same as `MqttCollector` (shared/reliability.md §1):
- QoS 1, a persistent session under a stable client id, manual ack of each message in arrival order, only after
  the batch holding it has committed;
- flush on size, age or idle time (the broker's in-flight window bounds unacked messages);
- back-pressure instead of loss: at `max_pending_messages` the paho thread blocks, so TCP pushes back on the
  broker;
- the stall and sequence-gap checks force a reconnect.

What is particular to this client:
- paho reconnects by itself (`reconnect_delay_set`). A message id is only meaningful on the connection that
  delivered it, so every entry carries the connection *generation*; a new connection (or a lost one) bumps it and
  older entries are committed but never acked (the broker redelivers them; de-duplication drops the repeat).
- `Client.ack` only appends to paho's outgoing deque and wakes its thread (paho 2.2 `_packet_queue`), so the event
  loop may call it; it does so under the same lock that bumps the generation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import threading
import time
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.client import PUBACK
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from collector.mapping import FieldMapper
from collector.mqtt import _UNSUPPORTED_PROTOCOL, CollectorCore, CollectorStats, Sink
from collector.payloads import BatchBuilder, MetricLimits
from collector.settings import MqttConfig

log = logging.getLogger(__name__)

#: With protocol 'auto': a broker that holds an MQTT 5 CONNECT this long without answering gets MQTT 3.1.1.
_CONNACK_TIMEOUT_S = 5.0


_PUBACK = struct.Struct("!BBH")


def send_acks(client: paho.Client, due: list[tuple[int, int]]) -> int:
    """Acknowledge messages `(mid, qos)` in order, the QoS 1 ones as one write. Returns how many were acknowledged.

    `Client.ack` queues one 4-byte PUBACK per message, wakes paho's thread through its socket pair and makes it
    send each packet with its own `send` call: two system calls and a thread wake-up per message, a large share of
    the per-message cost when every message holds one reading (docs/benchmarks.md). PUBACKs for QoS 1 carry no
    state in paho (it keeps none for inbound QoS 1), so the same packets can go as one run of bytes through paho's
    own outgoing queue, which handles partial writes and keeps them in order with every other packet. The MQTT 5
    PUBACK may omit its reason code when it is 0 (success), so the 4-byte form serves both protocol versions.
    `_packet_queue` is private: on a paho without it this falls back to `Client.ack` per message.
    """
    queue = getattr(client, "_packet_queue", None)
    if queue is None or any(qos != 1 for _, qos in due):  # QoS 2 needs paho's PUBCOMP bookkeeping
        for mid, qos in due:
            client.ack(mid, qos)
        return len(due)
    if due:
        queue(PUBACK, b"".join(_PUBACK.pack(PUBACK, 2, mid) for mid, _ in due), 0, 0)
    return len(due)


class PahoMqttCollector(CollectorCore):
    """Same public surface as `collector.mqtt.MqttCollector`: `run(stop)`, `subscribed`, `stats`, `sequences`,
    `device_intervals`, `cfg`."""

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
        self._v5 = cfg.protocol in ("5", "auto")
        self._protocol_settled = cfg.protocol != "auto"
        self._lock = threading.Lock()
        self._space = threading.Event()  # cleared while the paho thread waits for a flush
        self._space.set()
        # Shared with the paho thread (guarded by _lock where they change together):
        self._generation = 0
        self._builder = BatchBuilder()
        self._unacked: list[tuple[int, int, int]] = []  # (generation, mid, qos) in arrival order
        self._first_arrival = 0.0
        self._last_arrival = 0.0
        self._woken = False
        self._closing = False
        self._connected = False
        self._connected_at = time.monotonic()
        self._socket_open_at: float | None = None
        self._v5_refused = False
        self._refused = False
        self._client: paho.Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None

    # --- client -------------------------------------------------------------------------------------
    def _make_client(self) -> paho.Client:
        cfg = self.cfg
        if self._v5:
            client = paho.Client(
                CallbackAPIVersion.VERSION2, client_id=cfg.client_id, protocol=paho.MQTTv5, manual_ack=True
            )
        else:
            client = paho.Client(
                CallbackAPIVersion.VERSION2,
                client_id=cfg.client_id,
                protocol=paho.MQTTv311,
                clean_session=False,
                manual_ack=True,
            )
        if cfg.username is not None:
            client.username_pw_set(cfg.username, cfg.password.get_secret_value() if cfg.password else None)
        if cfg.tls is not None:
            client.tls_set_context(cfg.tls.ssl_context())
            if cfg.tls.insecure:
                client.tls_insecure_set(True)
        client.reconnect_delay_set(cfg.reconnect_min_s, cfg.reconnect_max_s)  # type: ignore[arg-type]  # floats work
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_socket_open = self._on_socket_open
        return client

    def _start_client(self) -> paho.Client:
        client = self._make_client()
        self._socket_open_at = None
        self._v5_refused = False
        if self._v5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = self.cfg.session_expiry_s
            client.connect_async(
                self.cfg.host, self.cfg.port, self.cfg.keepalive_s, clean_start=False, properties=props
            )
        else:
            client.connect_async(self.cfg.host, self.cfg.port, self.cfg.keepalive_s)
        client.loop_start()
        self._client = client
        return client

    async def _stop_client(self, client: paho.Client) -> None:
        client.disconnect()
        self._space.set()
        await asyncio.to_thread(client.loop_stop)

    # --- paho thread callbacks ---------------------------------------------------------------------
    def _call(self, fn: Any, *args: Any) -> None:
        """Run `fn` on the event loop (stats are written there)."""
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing left to tell
                self._loop.call_soon_threadsafe(fn, *args)

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._socket_open_at = time.monotonic()

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason_code: ReasonCode, properties: Any
    ) -> None:
        with self._lock:
            self._generation += 1
        if reason_code.is_failure:
            if self._v5 and not self._protocol_settled and reason_code.value in _UNSUPPORTED_PROTOCOL:
                self._v5_refused = True
            self._refused = True  # counted here, not again when paho then closes the socket
            self._call(self._connection_lost, f"connection refused: {reason_code}")
            return
        self._protocol_settled = True
        self._connected = True
        self._connected_at = time.monotonic()
        client.subscribe([(s.topic, int(self.cfg.qos)) for s in self.cfg.subscriptions])
        self._call(self._connected_now)

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        failed = [rc for rc in reason_codes if rc.is_failure]
        if failed:
            log.error("the broker refused a subscription: %s", failed)
        self._call(self.subscribed.set)

    def _on_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        self._call(self._connection_lost, "could not connect")

    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason_code: ReasonCode, properties: Any
    ) -> None:
        with self._lock:
            self._generation += 1
        was_connected, self._connected = self._connected, False
        refused, self._refused = self._refused, False
        if not self._closing and not refused:
            what = "connection lost" if was_connected else "connection closed before CONNACK"
            self._call(self._connection_lost, f"{what}: {reason_code}")

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        # An exception escaping here would end paho's network thread: log it instead.
        try:
            self._take(msg)
        except Exception:
            log.exception("unexpected error while decoding an MQTT message; it stays unacked")

    def _take(self, msg: paho.MQTTMessage) -> None:
        cfg = self.cfg
        now = time.time()
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            topic = msg._topic.decode("utf-8", "replace")
        with self._lock:
            if self._closing:
                return  # never acked: the broker redelivers it to the next run
            self.stats.messages_received += 1
            self.stats.last_message_at = now
            arrival = time.monotonic()
            self._last_arrival = arrival
            if not self._unacked:
                self._first_arrival = arrival
            self._decode(self._builder, topic, bytes(msg.payload), now)
            self._unacked.append((self._generation, msg.mid, msg.qos))
            pending = len(self._unacked)
            self.stats.pending = pending
            wake = pending >= cfg.flush_max_messages and not self._woken
            if wake:
                self._woken = True
            full = pending >= cfg.max_pending_messages
            if full:
                self._space.clear()
        if wake or full:
            self._wake_flusher()
        if full:
            # Block paho's thread: the socket is not read, and TCP pushes back on the broker. Never drop.
            while not self._space.wait(0.5) and not self._is_closing():
                pass

    def _is_closing(self) -> bool:
        return self._closing

    def _wake_flusher(self) -> None:
        if self._wake is not None:
            self._call(self._wake.set)

    # --- event loop side ---------------------------------------------------------------------------
    def _connected_now(self) -> None:
        self.stats.connects += 1
        self.stats.connected = True
        self.stats.protocol = "5" if self._v5 else "3.1.1"
        log.info(
            "connected to MQTT broker %s:%d as %r (MQTT %s, QoS 1, persistent session, paho thread)",
            self.cfg.host,
            self.cfg.port,
            self.cfg.client_id,
            self.stats.protocol,
        )

    def _connection_lost(self, why: str) -> None:
        self.stats.connected = False
        self.stats.connection_failures += 1
        log.warning(
            "MQTT broker %s:%d: %s; paho reconnects with backoff (session %r keeps queued messages)",
            self.cfg.host,
            self.cfg.port,
            why,
            self.cfg.client_id,
        )

    def _force_reconnect(self, why: str) -> None:
        """Close the socket under paho's feet: its thread sees a lost connection and reconnects with backoff."""
        log.warning("MQTT broker %s:%d: %s", self.cfg.host, self.cfg.port, why)
        with self._lock:
            self._generation += 1  # nothing received so far is acked on the next connection
        self._connected_at = time.monotonic()
        client = self._client
        sock = client.socket() if client is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)  # type: ignore[arg-type]

    async def run(self, stop: asyncio.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._closing = False
        client = self._start_client()
        try:
            client = await self._flush_loop(client, stop)
        finally:
            with self._lock:
                self._closing = True  # what arrives from now on stays unacked, for the next run
            self._space.set()
            # What was decoded but not committed is committed now rather than dropped.
            await self._flush()
            if stop.is_set():
                await asyncio.sleep(0.1)  # let the last PUBACKs leave before the socket closes
            await self._stop_client(client)
            self.stats.connected = False

    async def _flush_loop(self, client: paho.Client, stop: asyncio.Event) -> paho.Client:
        assert self._wake is not None
        interval = self.cfg.flush_interval_ms / 1000
        idle = self.cfg.flush_idle_ms / 1000
        tick = min(interval, idle) / 2
        next_health_check = 0.0
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), tick)
            self._wake.clear()
            now = time.monotonic()
            if not self._protocol_settled and self._v5 and self._v5_falls_back(now):
                await self._stop_client(client)
                self._v5 = False
                self._protocol_settled = True
                client = self._start_client()
                continue
            if now >= next_health_check:
                next_health_check = now + 0.25
                await self._health_check(now)
            if not self._unacked:
                continue
            if (
                len(self._unacked) >= self.cfg.flush_max_messages
                or now - self._first_arrival >= interval
                or now - self._last_arrival >= idle
            ):
                await self._flush()
        return client

    def _v5_falls_back(self, now: float) -> bool:
        """protocol 'auto': a broker that refuses MQTT 5 (or, like amqtt, never answers a v5 CONNECT) gets
        MQTT 3.1.1 with a persistent session instead. Decided once per collector."""
        silent = (
            self._socket_open_at is not None and not self._connected and now - self._socket_open_at > _CONNACK_TIMEOUT_S
        )
        if not (self._v5_refused or silent):
            return False
        log.warning(
            "broker %s:%d did not accept MQTT 5 (%s); trying MQTT 3.1.1 with a persistent session",
            self.cfg.host,
            self.cfg.port,
            "refused" if self._v5_refused else "no CONNACK",
        )
        return True

    async def _health_check(self, now: float) -> None:
        why = await self._gaps(now)
        if why is None and self._connected:
            why = self._stall(self._last_arrival, self._connected_at, now)
        if why is not None:
            self._force_reconnect(why)

    async def _flush(self) -> None:
        with self._lock:
            if not self._unacked:
                return
            builder, unacked = self._builder, self._unacked
            self._builder, self._unacked = BatchBuilder(), []
            self._woken = False
        await self._commit(builder)
        acked = 0
        with self._lock:
            generation, client = self._generation, self._client
            if client is not None:
                # A mid from an earlier connection would acknowledge a different message on this one.
                due = [(mid, qos) for gen, mid, qos in unacked if gen == generation and qos > 0]  # arrival order
                acked = send_acks(client, due)
            self.stats.pending = len(self._unacked)
        self.stats.messages_acked += acked
        self._space.set()
