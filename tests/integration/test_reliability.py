"""Reliability battery R2-R5 (shared/reliability.md §7) on a real mosquitto. Each test prints its figures."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from gridsentry.config import DeviceConfig
from tests.conftest import MosquittoBroker
from tests.integration.test_pipeline import broker_config, count, start_service, wait_for

pytestmark = pytest.mark.integration

DEVICES = [DeviceConfig(id=f"DC{i:02d}", site="s1", kind="charger_dc", expected_interval_s=1) for i in range(10)]


class Publisher:
    """A paho publisher at QoS 1 with a persistent session, so it rides out broker restarts."""

    def __init__(self, port: int, name: str) -> None:
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=name, clean_session=False)
        self.client.max_inflight_messages_set(200)
        self.client.max_queued_messages_set(0)
        self.client.reconnect_delay_set(0.1, 1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.infos: list[paho.MQTTMessageInfo] = []
        self.seq: dict[str, int] = {}

    def send(self, device: str, n_metrics: int = 10, skip: int = 0) -> None:
        seq = self.seq.get(device, 0) + 1 + skip
        self.seq[device] = seq
        payload = {
            "ts": 1_763_880_000 + seq,
            "seq": seq,
            "metrics": {f"m{k}": float(seq + k) for k in range(n_metrics)},
        }
        self.infos.append(self.client.publish(f"gridsentry/s1/{device}/telemetry", json.dumps(payload), qos=1))

    def stream(self, messages: int, rate: float, stop: threading.Event | None = None) -> None:
        for i in range(messages):
            if stop is not None and stop.is_set():
                return
            self.send(DEVICES[i % len(DEVICES)].id)
            time.sleep(1 / rate)

    def wait_connected(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not self.client.is_connected():
            assert time.monotonic() < deadline, "the publisher did not reconnect"
            time.sleep(0.05)

    def wait_all(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not all(i.is_published() for i in self.infos):
            assert time.monotonic() < deadline, "the broker did not acknowledge every publish"
            time.sleep(0.05)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


async def test_r2_broker_restart_loses_nothing(tmp_path: Path, mosquitto: MosquittoBroker, mqtt_client: str):
    cfg = broker_config(tmp_path, mosquitto.port, *DEVICES, client=mqtt_client)
    cfg.mqtt.reconnect_min_s = 0.1
    cfg.mqtt.reconnect_max_s = 0.5
    service = await start_service(cfg)
    pub = Publisher(mosquitto.port, "r2-pub")
    try:
        await asyncio.to_thread(pub.stream, 1500, 1000)
        await asyncio.to_thread(pub.wait_all)
        # Stop the broker while messages are still queued for GridSentry, then bring it back.
        t0 = time.monotonic()
        await asyncio.to_thread(mosquitto.stop)  # SIGTERM: mosquitto saves its persistence file
        await asyncio.to_thread(mosquitto.start)
        await asyncio.to_thread(pub.wait_connected)
        await asyncio.to_thread(pub.stream, 1500, 1000)
        await asyncio.to_thread(pub.wait_all)
        expected = 3000 * 10
        await wait_for(lambda: count(service, "select count(*) from readings") >= expected, 60, "every reading")
        stored = count(service, "select count(*) from readings")
        print(f"R2: broker SIGTERM restart; stored {stored} of {expected}; back in {time.monotonic() - t0:.1f} s")
        assert stored == expected
        assert service.collector_stats.connection_failures >= 1
    finally:
        pub.close()
        await service.stop()


async def test_r3_frozen_broker_is_detected_and_nothing_is_lost(
    tmp_path: Path, mosquitto: MosquittoBroker, mqtt_client: str
):
    cfg = broker_config(tmp_path, mosquitto.port, *DEVICES, client=mqtt_client)
    cfg.mqtt.keepalive_s = 5
    cfg.mqtt.reconnect_min_s = 0.1
    cfg.mqtt.reconnect_max_s = 1
    service = await start_service(cfg)
    pub = Publisher(mosquitto.port, "r3-pub")
    stop_pub = threading.Event()
    try:
        feeder = asyncio.create_task(asyncio.to_thread(pub.stream, 100_000, 200, stop_pub))
        await wait_for(lambda: count(service, "select count(*) from readings") > 1000, 20, "a steady stream")
        assert mosquitto.proc is not None
        mosquitto.proc.send_signal(signal.SIGSTOP)
        frozen_at = time.monotonic()
        try:
            await wait_for(lambda: service.collector_stats.stalls >= 1, 20, "stall detection")
            detected = time.monotonic() - frozen_at
        finally:
            mosquitto.proc.send_signal(signal.SIGCONT)
        stop_pub.set()
        await feeder
        await asyncio.to_thread(pub.wait_all, 90)
        expected = len(pub.infos) * 10
        await wait_for(lambda: count(service, "select count(*) from readings") >= expected, 90, "every reading")
        stored = count(service, "select count(*) from readings")
        print(
            f"R3: broker SIGSTOP; stall detected after {detected:.2f} s (keepalive 5 s); stored {stored} of {expected}"
        )
        assert detected <= 1.5 * cfg.mqtt.keepalive_s
        assert stored == expected
    finally:
        stop_pub.set()
        pub.close()
        await service.stop()


async def test_r4_backlog_while_down_drains_faster_than_live(tmp_path: Path, mosquitto: MosquittoBroker):
    cfg = broker_config(tmp_path, mosquitto.port, *DEVICES)
    service = await start_service(cfg)  # creates the persistent session
    await service.stop()
    pub = Publisher(mosquitto.port, "r4-pub")
    live_rate = 100  # messages/s, 1,000 readings/s
    down_s = 60
    t0 = time.monotonic()
    await asyncio.to_thread(pub.stream, live_rate * down_s, live_rate)
    await asyncio.to_thread(pub.wait_all)
    published_s = time.monotonic() - t0
    backlog = len(pub.infos) * 10
    t1 = time.monotonic()
    service = await start_service(cfg)
    try:
        await wait_for(lambda: count(service, "select count(*) from readings") >= backlog, 60, "the backlog")
        drain_s = time.monotonic() - t1
        stored = count(service, "select count(*) from readings")
        print(
            f"R4: down {published_s:.0f} s; backlog {backlog} readings drained in {drain_s:.2f} s "
            f"({backlog / drain_s:,.0f} readings/s vs live {live_rate * 10:,} readings/s); stored {stored}"
        )
        assert stored == backlog
        assert backlog / drain_s > live_rate * 10 * 5
    finally:
        pub.close()
        await service.stop()


async def test_r5_sequence_gap_is_reported_with_device_and_range(
    tmp_path: Path, mosquitto: MosquittoBroker, mqtt_client: str
):
    cfg = broker_config(tmp_path, mosquitto.port, *DEVICES, client=mqtt_client)
    cfg.mqtt.sequence_gap_grace_s = 1.0
    service = await start_service(cfg)
    pub = Publisher(mosquitto.port, "r5-pub")
    try:
        for _ in range(100):
            pub.send("DC03")
        pub.send("DC03", skip=20)  # 101-120 never sent
        for _ in range(10):
            pub.send("DC03")
        pub.send("DC05")
        pub.send("DC05", skip=1)  # 2 missing ...
        await asyncio.to_thread(pub.wait_all)
        pub.seq["DC05"] = 1
        pub.send("DC05")  # ... but arrives late, within the grace period: no gap
        await asyncio.to_thread(pub.wait_all)
        await wait_for(lambda: count(service, "select count(*) from events") >= 1, 15, "the gap event")
        await asyncio.sleep(1.5)
        con = service.writer.reader()
        rows = con.execute("select device_id, kind, code, text from events").fetchall()
        print(f"R5: events {rows}")
        assert rows == [("DC03", "ingest", "sequence_gap", "messages 101-120 never arrived (20 messages)")]
        assert service.collector is not None and service.collector.sequences.messages_missing == 20
    finally:
        pub.close()
        await service.stop()
