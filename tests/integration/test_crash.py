"""R1: kill -9 GridSentry at random points while it ingests; nothing the broker accepted is lost or doubled.

Acknowledging only after commit leaves every uncommitted message with the broker, which redelivers
it to the restarted collector's persistent session; the de-duplication window (committed in the same
transaction as the readings) drops what had been committed but not yet acknowledged.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import httpx
import paho.mqtt.client as paho
import pytest

from tests.conftest import MosquittoBroker, api_headers

pytestmark = pytest.mark.integration

MESSAGES = 1000
READINGS_PER_MESSAGE = 50
DEVICES = 20


def write_config(path: Path, data_dir: Path, mqtt_port: int, client: str) -> None:
    devices = "\n".join(f"  - {{id: DC{i:02d}, site: s1, kind: charger_dc}}" for i in range(DEVICES))
    path.write_text(
        f"data_dir: {data_dir}\nhttp: {{port: 0}}\n"
        f"mqtt: {{port: {mqtt_port}, client_id: crash-test, client: {client}}}\n"
        f"devices:\n{devices}\n"
    )


def start(config: Path, data_dir: Path) -> subprocess.Popen[bytes]:
    runtime = data_dir / "runtime.json"
    runtime.unlink(missing_ok=True)
    with open(data_dir.parent / f"service-{time.monotonic_ns()}.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gridsentry.cli", "run", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, "gridsentry run exited at start-up"
        if runtime.exists():
            url = json.loads(runtime.read_text())["http_url"]
            try:
                if httpx.get(f"{url}/readyz", timeout=1, headers=api_headers(data_dir)).json()["ready"]:
                    return proc
            except (httpx.HTTPError, ValueError):
                pass
        time.sleep(0.1)
    proc.kill()
    raise AssertionError("gridsentry run did not become ready in 30 s")


def publish(port: int, done: threading.Event) -> None:
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="crash-publisher")
    c.max_inflight_messages_set(100)
    c.connect("127.0.0.1", port)
    c.loop_start()
    infos = []
    for i in range(MESSAGES):
        device = f"DC{i % DEVICES:02d}"
        metrics = {f"m{k:02d}": float(i * 100 + k) for k in range(READINGS_PER_MESSAGE)}
        payload = json.dumps({"ts": 1_763_880_000 + i, "seq": i, "metrics": metrics})
        infos.append(c.publish(f"gridsentry/s1/{device}/telemetry", payload, qos=1))
        time.sleep(0.004)
    for info in infos:
        info.wait_for_publish(30)
    c.loop_stop()
    c.disconnect()
    done.set()


def test_kill_minus_nine_loses_nothing(tmp_path: Path, mosquitto: MosquittoBroker, mqtt_client: str):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    config = tmp_path / "gridsentry.yaml"
    write_config(config, data_dir, mosquitto.port, mqtt_client)
    proc = start(config, data_dir)
    done = threading.Event()
    publisher = threading.Thread(target=publish, args=(mosquitto.port, done))
    publisher.start()
    kills = 0
    restarts: list[float] = []
    rng = random.Random(5)
    try:
        for _ in range(5):
            time.sleep(rng.uniform(0.2, 0.9))
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
            t0 = time.monotonic()
            proc = start(config, data_dir)
            restarts.append(time.monotonic() - t0)
        publisher.join(60)
        assert done.is_set(), "the publisher did not get every PUBACK"
        expected = MESSAGES * READINGS_PER_MESSAGE
        url = json.loads((data_dir / "runtime.json").read_text())["http_url"]
        deadline = time.monotonic() + 60
        distinct = 0
        while time.monotonic() < deadline:
            body = httpx.post(
                f"{url}/api/sql",
                json={"query": "select count(*) from (select distinct device_id, metric, ts from readings_all)"},
                timeout=10,
                headers=api_headers(data_dir),
            ).json()
            distinct = body["rows"][0][0]
            if distinct >= expected:
                break
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    con = duckdb.connect(str(data_dir / "gridsentry.duckdb"), read_only=True)
    distinct, total = con.execute(
        "select count(*) , (select count(*) from readings_all) from (select distinct device_id, metric, ts from readings_all)"
    ).fetchone()
    print(
        f"R1: {kills} kills, restart to ready {max(restarts):.2f} s max, stored {total} of {expected}, distinct {distinct}"
    )
    assert kills == 5
    assert distinct == expected, f"lost {expected - distinct} of {expected} readings"
    assert total == expected, f"{total - expected} readings stored twice"
    assert max(restarts) <= 5.0
