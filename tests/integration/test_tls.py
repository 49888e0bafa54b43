"""MQTT over TLS with a client certificate, against a real mosquitto (certificates made with openssl)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from collector.settings import MqttConfig, TlsConfig
from gridsentry.config import Config, DeviceConfig, HttpConfig
from tests.conftest import MosquittoBroker
from tests.integration.test_pipeline import count, start_service, wait_for

pytestmark = pytest.mark.integration


def openssl(*args: str, cwd: Path) -> None:
    exe = shutil.which("openssl")
    assert exe, "openssl is missing (apt-get install openssl)"
    subprocess.run([exe, *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_pki(d: Path) -> None:
    """A private CA, a server certificate for 127.0.0.1 and a client certificate."""
    d.mkdir(parents=True, exist_ok=True)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=GridSentry test CA",
            "-keyout", "ca.key", "-out", "ca.pem", cwd=d)  # fmt: skip
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, subject, ext in (("server", "/CN=127.0.0.1", ["-extfile", "san.ext"]), ("client", "/CN=gridsentry", [])):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", subject, "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)  # fmt: skip
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "2", "-out", f"{name}.pem", *ext, cwd=d)  # fmt: skip
    for f in d.iterdir():
        f.chmod(0o644)


@pytest.fixture
def tls_broker(tmp_path: Path):
    pki = tmp_path / "pki"
    make_pki(pki)
    broker = MosquittoBroker(
        tmp_path / "mosquitto",
        extra=(
            f"cafile {pki / 'ca.pem'}",
            f"certfile {pki / 'server.pem'}",
            f"keyfile {pki / 'server.key'}",
            "require_certificate true",
        ),
    )
    broker.start()
    yield broker, pki
    broker.stop()


async def test_tls_with_client_certificate(tmp_path: Path, tls_broker, mqtt_client: str):
    broker, pki = tls_broker
    cfg = Config(
        data_dir=tmp_path / "data",
        http=HttpConfig(port=0),
        mqtt=MqttConfig(
            port=broker.port,
            tls=TlsConfig(ca_file=pki / "ca.pem", cert_file=pki / "client.pem", key_file=pki / "client.key"),
            client=mqtt_client,
        ),
        devices=[DeviceConfig(id="TX01", site="s1", kind="box_transformer")],
    )
    service = await start_service(cfg)
    try:
        pub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="tls-device")
        pub.tls_set(ca_certs=str(pki / "ca.pem"), certfile=str(pki / "client.pem"), keyfile=str(pki / "client.key"))
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        info = pub.publish("gridsentry/s1/TX01/telemetry", b'{"ts": 1763880000, "top_oil_temp_c": 61.5}', qos=1)
        await asyncio.to_thread(info.wait_for_publish, 10)
        pub.loop_stop()
        pub.disconnect()
        await wait_for(lambda: count(service, "select count(*) from readings") == 1, what="the reading over TLS")
    finally:
        await service.stop()


async def test_tls_without_client_certificate_is_refused_and_reported(tmp_path: Path, tls_broker, mqtt_client: str):
    broker, pki = tls_broker
    cfg = Config(
        data_dir=tmp_path / "data",
        http=HttpConfig(port=0),
        mqtt=MqttConfig(
            port=broker.port,
            tls=TlsConfig(ca_file=pki / "ca.pem"),
            reconnect_min_s=0.1,
            reconnect_max_s=0.2,
            client=mqtt_client,
        ),
    )
    from gridsentry.service import Service

    service = Service(cfg)
    await service.start()
    try:
        await wait_for(lambda: service.collector_stats.connection_failures >= 2, what="refused TLS connections")
        assert not service.collector_stats.connected
    finally:
        await service.stop()
