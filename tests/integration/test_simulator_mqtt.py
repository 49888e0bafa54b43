"""The simulator's MQTT publisher against a real mosquitto on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import aiomqtt
import pytest

from simulator import FaultSpec, FleetSimulator, demo_fleet, demo_site
from simulator.publisher import MqttFleetPublisher, PublishStats
from tests.conftest import mosquitto_path

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def mosquitto(port: int | None = None) -> Iterator[int]:
    """A throwaway mosquitto on 127.0.0.1; yields its port."""
    exe = mosquitto_path()  # fails with install instructions when missing: never skip
    port = port or _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp) / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 10
            while not _port_open(port):
                if proc.poll() is not None:
                    raise RuntimeError(f"mosquitto exited: {proc.stderr.read().decode() if proc.stderr else ''}")
                if time.monotonic() > deadline:
                    raise RuntimeError("mosquitto did not open its port within 10 s")
                time.sleep(0.02)
            yield port
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class Subscriber:
    """Collects everything under gridsentry/# at QoS 1."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.received: list[tuple[str, bytes]] = []
        self.ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        async with aiomqtt.Client(
            "127.0.0.1",
            self.port,
            identifier=f"sub-{uuid.uuid4().hex[:8]}",
            protocol=aiomqtt.ProtocolVersion.V311,
        ) as client:
            await client.subscribe("gridsentry/#", qos=1)
            self.ready.set()
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                self.received.append((str(message.topic), message.payload))

    async def __aenter__(self) -> Subscriber:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self.ready.wait(), timeout=5)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def wait_for(self, count: int, timeout: float = 10.0) -> None:
        for _ in range(int(timeout / 0.05)):
            if len(self.received) >= count:
                break
            await asyncio.sleep(0.05)
        # A little longer, so duplicates or extras would show up too.
        await asyncio.sleep(0.3)


def _tally(received: list[tuple[str, bytes]]) -> PublishStats:
    stats = PublishStats()
    for topic, payload in received:
        stats.messages += 1
        device = topic.split("/")[2]
        try:
            body = json.loads(payload)
        except ValueError:
            stats.malformed += 1
            continue
        if topic.endswith("/telemetry"):
            stats.telemetry += 1
            stats.readings += len(body["metrics"])
            stats.per_device[device] = stats.per_device.get(device, 0) + len(body["metrics"])
        else:
            stats.events += 1
    return stats


def _simulator(faults: list[FaultSpec]) -> FleetSimulator:
    return FleetSimulator(demo_site(), demo_fleet(), seed=11, start=datetime.now(UTC), faults=faults)


async def test_every_counted_message_is_received():
    faults = [
        FaultSpec("malformed_payload", "AC01", 0, {"every_n": 5}),
        FaultSpec("dc_connector_overheat", "DC02", 5, {"gun": 1}),
    ]
    with mosquitto() as port:
        async with Subscriber(port) as sub:
            publisher = MqttFleetPublisher(_simulator(faults))
            stats = await publisher.run("127.0.0.1", port, speed=10, duration_s=3)
            await sub.wait_for(stats.messages)
    got = _tally(sub.received)
    assert stats.messages > 250  # ~30 simulated seconds of 9 devices
    assert stats.malformed > 0 and stats.events > 0
    assert (got.messages, got.telemetry, got.readings, got.events, got.malformed) == (
        stats.messages,
        stats.telemetry,
        stats.readings,
        stats.events,
        stats.malformed,
    )
    assert got.per_device == stats.per_device
    assert stats is publisher.stats
    assert publisher.pending == 0
    # Per device, telemetry arrives in order with no gaps (malformed frames take their number too).
    seqs: dict[str, list[int]] = {}
    for topic, payload in sub.received:
        if topic.endswith("/telemetry"):
            with contextlib.suppress(ValueError):
                seqs.setdefault(topic, []).append(json.loads(payload)["seq"])
    assert len(seqs) == 9
    assert all(s == sorted(s) for s in seqs.values())


async def test_waits_for_a_late_broker_and_loses_nothing():
    port = _free_port()
    simulator = _simulator([])
    # A first retry well after the broker is up, so the subscriber is listening before it.
    publisher = MqttFleetPublisher(simulator, backoff_initial_s=1.5)
    stop = asyncio.Event()
    task = asyncio.create_task(publisher.run("127.0.0.1", port, speed=10, stop=stop))
    await asyncio.sleep(0.2)
    assert publisher.stats.messages == 0  # nothing counts while there is no broker
    with mosquitto(port):
        async with Subscriber(port) as sub:
            for _ in range(200):
                if publisher.stats.messages >= 200:
                    break
                await asyncio.sleep(0.05)
            stop.set()
            stats = await asyncio.wait_for(task, timeout=10)
            await sub.wait_for(stats.messages)
    assert stats.messages >= 200
    assert len(sub.received) == stats.messages
    # The backlog built up while the broker was away was delivered from the very first message.
    first = Counter(
        topic for topic, payload in sub.received if topic.endswith("/telemetry") and json.loads(payload)["seq"] == 1
    )
    assert len(first) == 9 and set(first.values()) == {1}


async def test_command_line_runs_and_prints_stats():
    with mosquitto() as port:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "simulator",
            "--port",
            str(port),
            "--speed",
            "10",
            "--duration",
            "1.5",
            "--fault",
            "dc_connector_overheat:DC02",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode == 0, err.decode()
    text = out.decode()
    assert "published" in text and "readings" in text
    assert "fault dc_connector_overheat on DC02" in text
