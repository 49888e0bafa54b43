"""Publish a simulated fleet to an MQTT broker, counting only what the broker acknowledged.

A message counts once `client.publish` returns, which at QoS 1 means the broker sent PUBACK.
A message whose publish fails stays at the head of the queue and is sent again after the
reconnect, so the counters are a lower bound of what reached the broker (a lost PUBACK can
make the broker see a message twice, which QoS 1 allows).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import aiomqtt

from simulator.core import FleetSimulator, OutMessage

__all__ = ["MqttFleetPublisher", "PublishStats"]

logger = logging.getLogger(__name__)


@dataclass
class PublishStats:
    """Messages the broker acknowledged, by kind. Updated live while the publisher runs."""

    messages: int = 0  # every acknowledged message: telemetry, events and malformed frames
    readings: int = 0  # metrics carried by acknowledged telemetry
    events: int = 0
    malformed: int = 0
    per_device: dict[str, int] = field(default_factory=dict)  # readings by device id
    telemetry: int = 0
    reconnects: int = 0


def _device_of(topic: str) -> str:
    # gridsentry/{site}/{device_id}/{telemetry|events}
    return topic.split("/")[2]


class MqttFleetPublisher:
    """Runs a `FleetSimulator` against the wall clock and publishes what falls due at QoS 1."""

    def __init__(
        self,
        simulator: FleetSimulator,
        *,
        client_id: str | None = None,
        qos: int = 1,
        batch_size: int = 200,
        publish_timeout_s: float = 5.0,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 10.0,
        keepalive_s: int = 30,
    ) -> None:
        if qos not in (0, 1, 2):
            raise ValueError(f"qos must be 0, 1 or 2, got {qos}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.simulator = simulator
        # 23 characters: the longest id MQTT 3.1.1 obliges every broker to accept.
        self.client_id = client_id or f"gridsentry-sim-{uuid.uuid4().hex[:8]}"
        self.qos = qos
        self.stats = PublishStats()
        self._batch_size = batch_size
        self._publish_timeout_s = publish_timeout_s
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._keepalive_s = keepalive_s
        self._pending: deque[OutMessage] = deque()
        # Never generate more than this much simulated time in one go, so a long outage at high
        # speed catches up in slices instead of materialising hours of messages at once.
        self._max_slice = timedelta(seconds=60)
        self._behind = False

    @property
    def pending(self) -> int:
        """Messages generated but not yet acknowledged."""
        return len(self._pending)

    async def run(
        self,
        host: str,
        port: int,
        *,
        speed: float = 1.0,
        duration_s: float | None = None,
        stop: asyncio.Event | None = None,
    ) -> PublishStats:
        """Publish until `stop` is set or `duration_s` wall-clock seconds pass; return the stats.

        Simulated time runs at `speed` times wall time from where the simulator stands (its
        `start` for a fresh one).
        """
        if speed <= 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        wall0 = loop.time()
        sim0 = self.simulator.now
        deadline = None if duration_s is None else wall0 + duration_s

        def sim_time() -> datetime:
            wall = loop.time()
            if deadline is not None:
                wall = min(wall, deadline)
            return sim0 + timedelta(seconds=(wall - wall0) * speed)

        def finished() -> bool:
            return stop.is_set() or (deadline is not None and loop.time() >= deadline)

        backoff = self._backoff_initial_s
        connected_before = False
        while True:
            try:
                async with aiomqtt.Client(
                    host,
                    port,
                    identifier=self.client_id,
                    protocol=aiomqtt.ProtocolVersion.V311,
                    clean_session=True,
                    keepalive=self._keepalive_s,
                    timeout=self._publish_timeout_s,
                    max_inflight_messages=100,
                ) as client:
                    # We pipeline a whole batch on purpose; aiomqtt warns above 10 pending calls.
                    client.pending_calls_threshold = self._batch_size + 10
                    if connected_before:
                        self.stats.reconnects += 1
                        logger.info("reconnected to MQTT broker %s:%d", host, port)
                    connected_before = True
                    backoff = self._backoff_initial_s
                    while not finished():
                        self._generate(sim_time())
                        await self._publish_pending(client)
                        await self._idle(sim_time, speed, stop, deadline, loop)
                    # Whatever fell due up to the end is published before we leave.
                    if not stop.is_set():
                        self._generate(sim_time(), catch_up=True)
                    await self._publish_pending(client)
                    return self.stats
            except (aiomqtt.MqttError, OSError) as exc:
                if finished():
                    logger.warning("stopping with %d unpublished messages (%s)", len(self._pending), exc)
                    return self.stats
                logger.warning(
                    "MQTT connection to %s:%d failed (%s); %d messages waiting, retrying in %.1f s",
                    host,
                    port,
                    exc,
                    len(self._pending),
                    backoff,
                )
                await self._sleep(stop, backoff, deadline, loop)
                backoff = min(backoff * 2, self._backoff_max_s)
                if finished():
                    return self.stats

    def _generate(self, target: datetime, *, catch_up: bool = False) -> None:
        while True:
            upto = min(target, self.simulator.now + self._max_slice)
            self._pending.extend(self.simulator.step(upto))
            self._behind = upto < target
            if not catch_up or not self._behind:
                return

    async def _publish_pending(self, client: aiomqtt.Client) -> None:
        while self._pending:
            batch = [self._pending.popleft() for _ in range(min(self._batch_size, len(self._pending)))]
            # Sent in order; PUBACKs are awaited together so one round trip does not pace the stream.
            results = await asyncio.gather(*(self._send(client, m) for m in batch), return_exceptions=True)
            failed = [m for m, result in zip(batch, results, strict=True) if result is not None]
            if not failed:
                continue
            self._pending.extendleft(reversed(failed))
            error = next(r for r in results if r is not None)
            if isinstance(error, aiomqtt.MqttError | OSError):
                raise error
            raise RuntimeError("publishing failed unexpectedly") from error

    async def _send(self, client: aiomqtt.Client, message: OutMessage) -> None:
        await client.publish(message.topic, message.payload, qos=self.qos)
        self._count(message)

    def _count(self, message: OutMessage) -> None:
        stats = self.stats
        stats.messages += 1
        if message.kind == "telemetry":
            stats.telemetry += 1
            stats.readings += message.readings
            device = _device_of(message.topic)
            stats.per_device[device] = stats.per_device.get(device, 0) + message.readings
        elif message.kind == "event":
            stats.events += 1
        else:
            stats.malformed += 1

    async def _idle(
        self,
        sim_time: Callable[[], datetime],
        speed: float,
        stop: asyncio.Event,
        deadline: float | None,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        if self._behind:
            return  # keep catching up
        wait = (self.simulator.next_due() - sim_time()).total_seconds() / speed
        # Short naps keep `stop` and the deadline responsive whatever the device intervals are.
        await self._sleep(stop, max(0.0, min(wait, 0.5)), deadline, loop)

    @staticmethod
    async def _sleep(
        stop: asyncio.Event, seconds: float, deadline: float | None, loop: asyncio.AbstractEventLoop
    ) -> None:
        if deadline is not None:
            seconds = min(seconds, max(0.0, deadline - loop.time()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=seconds)
