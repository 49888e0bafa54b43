"""End to end on real parts: mosquitto from Debian, the simulated fleet, the service, its HTTP API."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import httpx
import paho.mqtt.client as paho
import pytest

from gridsentry.config import Config, DeviceConfig
from gridsentry.demo import demo_config
from gridsentry.service import Service
from simulator.core import FleetSimulator
from simulator.faults import FaultSpec
from simulator.fleet import demo_fleet, demo_site
from simulator.publisher import MqttFleetPublisher
from tests.conftest import MosquittoBroker, api_headers

pytestmark = pytest.mark.integration


def count(service: Service, sql: str) -> int:
    con = service.writer.reader()
    try:
        row = con.execute(sql).fetchone()
    finally:
        con.close()
    return int(row[0]) if row else 0


async def wait_for(predicate, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def broker_config(
    tmp_path: Path, port: int, *devices: DeviceConfig, client: str | None = None, **overrides: object
) -> Config:
    """A service config for a test broker; `client` picks the collector's MQTT library (default: the config's)."""
    cfg = Config(data_dir=tmp_path / "data", devices=list(devices), **overrides)  # type: ignore[arg-type]
    cfg.http.port = 0
    cfg.mqtt.port = port
    if client is not None:
        cfg.mqtt.client = client  # type: ignore[assignment]
    return cfg


async def start_service(cfg: Config) -> Service:
    service = Service(cfg)
    await service.start()
    assert service.collector is not None
    await asyncio.wait_for(service.collector.subscribed.wait(), 10)
    return service


def publish_raw(port: int, messages: list[tuple[str, bytes]]) -> None:
    """Publish with paho at QoS 1 and wait for every PUBACK."""
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"test-pub-{time.monotonic_ns()}")
    c.max_inflight_messages_set(1000)
    c.connect("127.0.0.1", port)
    c.loop_start()
    infos = [c.publish(t, p, qos=1) for t, p in messages]
    for i in infos:
        i.wait_for_publish(10)
    c.loop_stop()
    c.disconnect()


async def test_simulated_fleet_is_stored_exactly_and_fault_alerts(
    tmp_path: Path, mosquitto: MosquittoBroker, mqtt_client: str
):
    cfg = demo_config(tmp_path / "data", http_port=0, mqtt_port=mosquitto.port)
    cfg.mqtt.client = mqtt_client  # type: ignore[assignment]
    service = await start_service(cfg)
    site = demo_site()
    faults = [
        FaultSpec("dc_connector_overheat", "DC02", start_after_s=5, params={"gun": 1, "rise_k_per_min": 120}),
        FaultSpec("malformed_payload", "AC04", start_after_s=0, params={"every_n": 10}),
    ]
    sim = FleetSimulator(site, demo_fleet(site.id), seed=7, faults=faults)
    publisher = MqttFleetPublisher(sim)
    try:
        # 8 s of wall time at 12x = 96 simulated seconds: enough for the fault to hold 30 s above 90 °C.
        stats = await publisher.run("127.0.0.1", mosquitto.port, speed=12, duration_s=8)
        assert stats.readings > 5000 and stats.malformed >= 5
        await wait_for(
            lambda: service.collector_stats.messages_acked >= stats.messages, what="every published message acked"
        )
        await asyncio.sleep(1.5)  # a rules tick after the last commit

        # Every reading the broker accepted is stored exactly once; nothing else is.
        assert count(service, "select count(*) from readings") == stats.readings
        assert count(service, "select count(*) from events") == stats.events
        assert count(service, "select count(*) from dead_letters where reason = 'invalid_json'") == stats.malformed
        for device, n in stats.per_device.items():
            assert count(service, f"select count(*) from readings where device_id = '{device}'") == n, device

        # The injected fault produced its alerts: class II at 80 °C, class I at 90 °C, on DC02 gun 1 only, and
        # class I for the HighTemperature error code the pile itself reports (rule E1, per connector).
        con = service.writer.reader()
        alerts = con.execute(
            "select rule_id, device_id, metric, event_class, state, value, threshold, message from alerts order by event_class"
        ).fetchall()
        assert {(a[0], a[1], a[2], a[3]) for a in alerts} == {
            ("dc_gun_overtemp_critical", "DC02", "gun1_temp_c", "I"),
            ("dc_gun_overtemp_warning", "DC02", "gun1_temp_c", "II"),
            ("dc_connector_fault_critical", "DC02", "gun 1", "I"),
        }
        assert all(a[4] == "firing" and a[5] > a[6] for a in alerts)
        assert con.execute("select count(*) from alert_events where action = 'fired'").fetchone() == (3,)

        # The HTTP API and /metrics show the same.
        async with httpx.AsyncClient(base_url=service.http_url, headers=api_headers(service.cfg.data_dir)) as http:
            assert (await http.get("/healthz")).json()["status"] == "ok"
            ready = (await http.get("/readyz")).json()
            assert ready["ready"], ready
            body = (await http.get("/metrics")).text
            assert f'gridsentry_ingest_readings_total{{source="mqtt"}} {float(stats.readings)}' in body
            assert f'gridsentry_ingest_rejected_total{{reason="invalid_json"}} {float(stats.malformed)}' in body
            assert 'gridsentry_alerts_open{event_class="I"} 2.0' in body
            assert "gridsentry_storage_commit_seconds_bucket" in body
            devices = (await http.get("/api/devices")).json()
            assert {d["device_id"] for d in devices} == {d.id for d in cfg.devices}
            assert all(d["last_seen"] for d in devices)
            open_alerts = (await http.get("/api/alerts")).json()
            assert len(open_alerts) == 3 and open_alerts[0]["ack_due"]
            sql = (await http.post("/api/sql", json={"query": "select count(*) from readings"})).json()
            assert sql["rows"] == [[stats.readings]]
            denied = await http.post("/api/sql", json={"query": "delete from readings"})
            assert denied.status_code == 400 and "only read statements" in denied.json()["detail"]
            critical = next(a for a in open_alerts if a["rule_id"] == "dc_gun_overtemp_critical")
            acked = await http.post(f"/api/alerts/{critical['alert_id']}/ack", json={"actor": "wang.fang"})
            assert acked.status_code == 200 and acked.json()["state"] == "acknowledged"
            assert [e["action"] for e in acked.json()["events"]] == ["fired", "acknowledged"]
            again = await http.post(f"/api/alerts/{critical['alert_id']}/ack", json={"actor": "wang.fang"})
            assert again.status_code == 409
    finally:
        await service.stop()


async def test_bad_input_is_dead_lettered_counted_and_survived(
    tmp_path: Path, mosquitto: MosquittoBroker, mqtt_client: str
):
    cfg = broker_config(
        tmp_path, mosquitto.port, DeviceConfig(id="DC01", site="s1", kind="charger_dc"), client=mqtt_client
    )
    service = await start_service(cfg)
    try:
        good = b'{"ts": "2026-11-23T08:00:00Z", "metrics": {"gun1_temp_c": 41.5, "gun1_power_kw": 55}}'
        publish_raw(
            mosquitto.port,
            [
                ("gridsentry/s1/DC01/telemetry", b"\x00\xffnot json"),
                ("gridsentry/s1/DC01/telemetry", b'{"ts": "last tuesday", "metrics": {"a": 1}}'),
                ("gridsentry/s1/DC01/telemetry", b"[1, 2, 3]"),
                ("gridsentry/s1/DC01/events", b'{"ts": "2026-11-23T08:00:00Z", "kind": "status"}'),
                ("gridsentry/s1/DC01/telemetry", good),
                ("gridsentry/s1/NEW99/telemetry", good),  # not in the ledger: stored, device auto-added
                ("gridsentry/s1/DC01/telemetry", b'{"metrics": {"gun1_temp_c": 900}}'),  # impossible value
            ],
        )
        await wait_for(lambda: service.collector_stats.messages_acked >= 7, what="all 7 messages acked")
        assert dict(service.collector_stats.rejected) == {
            "invalid_json": 1,
            "bad_timestamp": 1,
            "bad_shape": 1,
            "bad_event": 1,
        }
        con = service.writer.reader()
        reasons = sorted(r[0] for r in con.execute("select reason from dead_letters").fetchall())
        assert reasons == ["bad_event", "bad_shape", "bad_timestamp", "invalid_json"]
        assert con.execute("select payload from dead_letters where reason = 'invalid_json'").fetchone() == (
            b"\x00\xffnot json",
        )
        assert count(service, "select count(*) from readings") == 5
        assert con.execute("select kind, source from devices where device_id = 'NEW99'").fetchone() == (
            "unknown",
            "auto",
        )
        assert con.execute("select quality from readings where value = 900").fetchone() == (2,)  # OUT_OF_RANGE
        # The service is still running and still ingesting (a new reading: the same one again would be a
        # redelivery, and is dropped by the de-duplication window).
        publish_raw(mosquitto.port, [("gridsentry/s1/DC01/telemetry", good.replace(b"08:00:00", b"08:00:10"))])
        await wait_for(lambda: count(service, "select count(*) from readings") == 7, what="ingest after bad input")
    finally:
        await service.stop()


async def test_rejecting_unknown_devices_keeps_their_data_in_dead_letters(tmp_path: Path, mosquitto: MosquittoBroker):
    cfg = broker_config(tmp_path, mosquitto.port, unknown_devices="reject")
    service = await start_service(cfg)
    try:
        publish_raw(mosquitto.port, [("gridsentry/s1/GHOST/telemetry", b'{"metrics": {"power_kw": 3.3}}')])
        await wait_for(lambda: service.collector_stats.messages_acked >= 1, what="ack")
        assert count(service, "select count(*) from readings") == 0
        con = service.writer.reader()
        reason, detail, payload = con.execute("select reason, detail, payload from dead_letters").fetchone()
        assert reason == "unknown_device" and "GHOST" in detail and b"3.3" in payload
    finally:
        await service.stop()


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_messages_sent_while_gridsentry_is_down_arrive_after_restart(
    tmp_path: Path, mosquitto: MosquittoBroker, protocol: str, mqtt_client: str
):
    """The persistent session (3.1.1 clean_session=False; 5 clean_start=False with a session expiry) keeps
    what arrives while we are down."""
    cfg = broker_config(
        tmp_path, mosquitto.port, DeviceConfig(id="INV01", site="s1", kind="pv_inverter"), client=mqtt_client
    )
    cfg.mqtt.protocol = protocol  # type: ignore[assignment]
    service = await start_service(cfg)
    assert service.collector_stats.protocol == protocol
    await service.stop()

    n = 3000  # more than mosquitto's default offline queue of 1000, which the test broker lifts
    publish_raw(
        mosquitto.port,
        [
            ("gridsentry/s1/INV01/telemetry", f'{{"ts": {1_763_880_000 + i}, "ac_power_kw": {i % 50}}}'.encode())
            for i in range(n)
        ],
    )
    service = await start_service(cfg)
    try:
        await wait_for(
            lambda: count(service, "select count(*) from readings") >= n, timeout=30, what=f"{n} queued readings"
        )
        assert count(service, "select count(distinct ts) from readings") == n
    finally:
        await service.stop()


async def test_embedded_amqtt_broker_and_protocol_fallback(tmp_path: Path, mqtt_client: str):
    """Without mosquitto the demo uses amqtt, which speaks only MQTT 3.1.1: the collector falls back."""
    from gridsentry.demo import Broker, free_port

    broker = Broker(free_port(), tmp_path, prefer="amqtt")
    await broker.start()
    cfg = broker_config(
        tmp_path, broker.port, DeviceConfig(id="AC01", site="s1", kind="charger_ac"), client=mqtt_client
    )
    cfg.mqtt.protocol = "auto"
    cfg.mqtt.reconnect_min_s = 0.1
    try:
        service = await start_service(cfg)
        try:
            assert service.collector_stats.protocol == "3.1.1"
            await asyncio.to_thread(
                publish_raw, broker.port, [("gridsentry/s1/AC01/telemetry", b'{"metrics": {"power_kw": 7.0}}')] * 50
            )
            await wait_for(lambda: count(service, "select count(*) from readings") == 50, what="50 readings via amqtt")
        finally:
            await service.stop()
    finally:
        with contextlib.suppress(Exception):
            await broker.stop()


async def test_unreachable_broker_is_counted_and_recovered(tmp_path: Path, mqtt_client: str):
    """No broker yet: the service starts anyway, reports not-ready, retries, and ingests once it appears."""
    from tests.conftest import free_port

    broker = MosquittoBroker(tmp_path / "mosquitto", port=free_port())
    cfg = broker_config(
        tmp_path, broker.port, DeviceConfig(id="TX01", site="s1", kind="box_transformer"), client=mqtt_client
    )
    cfg.mqtt.reconnect_min_s = 0.1
    cfg.mqtt.reconnect_max_s = 0.5
    cfg.mqtt.protocol = "auto"
    service = Service(cfg)
    await service.start()
    try:
        async with httpx.AsyncClient(base_url=service.http_url, headers=api_headers(service.cfg.data_dir)) as http:
            await wait_for(lambda: service.collector_stats.connection_failures >= 2, what="failed connection attempts")
            r = await http.get("/readyz")
            assert r.status_code == 503 and r.json()["checks"]["mqtt"] is False
            assert (
                f'gridsentry_mqtt_connected{{broker="127.0.0.1:{broker.port}"}} 0.0'
                in (await http.get("/metrics")).text
            )
            await asyncio.to_thread(broker.start)
            await wait_for(lambda: service.collector_stats.connected, what="connected after the broker came up")
            assert service.collector_stats.protocol == "5"  # refused connections did not force MQTT 3.1.1
            assert service.collector is not None
            await asyncio.wait_for(service.collector.subscribed.wait(), 10)
            await asyncio.to_thread(
                publish_raw, broker.port, [("gridsentry/s1/TX01/telemetry", b'{"metrics": {"top_oil_temp_c": 61.5}}')]
            )
            await wait_for(lambda: count(service, "select count(*) from readings") == 1, what="the reading")
            assert (await http.get("/readyz")).status_code == 200
    finally:
        await service.stop()
        broker.stop()


async def test_metrics_pass_promtool(tmp_path: Path, mosquitto: MosquittoBroker):
    import shutil
    import subprocess

    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: `make test` installs it (apt-get install prometheus)"
    cfg = broker_config(tmp_path, mosquitto.port, DeviceConfig(id="AC01", site="s1", kind="charger_ac"))
    service = await start_service(cfg)
    try:
        publish_raw(
            mosquitto.port,
            [
                ("gridsentry/s1/AC01/telemetry", b'{"metrics": {"power_kw": 6.9}}'),
                ("gridsentry/s1/AC01/telemetry", b"?"),
            ],
        )
        await wait_for(lambda: service.collector_stats.messages_acked >= 2, what="acks")
        async with httpx.AsyncClient(base_url=service.http_url, headers=api_headers(service.cfg.data_dir)) as http:
            body = (await http.get("/metrics")).text
        check = await asyncio.to_thread(
            subprocess.run, [promtool, "check", "metrics"], input=body, capture_output=True, text=True
        )
        assert check.returncode == 0 and check.stdout.strip() == "" and check.stderr.strip() == "", (
            check.stdout + check.stderr
        )
    finally:
        await service.stop()


async def test_field_mappings_turn_vendor_fields_into_catalogue_metrics(tmp_path: Path, mosquitto: MosquittoBroker):
    from gridsentry.config import parse_config

    cfg = parse_config(
        f"""\
data_dir: {tmp_path / "data"}
http: {{port: 0}}
mqtt: {{port: {mosquitto.port}}}
devices:
  - {{id: INV01, site: s1, kind: pv_inverter}}
mappings:
  - kinds: [pv_inverter]
    fields:
      W: {{metric: ac_power_kw, unit: W}}
      WH: {{metric: energy_kwh, unit: Wh}}
      TmpSnk: {{metric: heatsink_temp_c, scale: 0.1}}
"""
    )
    service = await start_service(cfg)
    try:
        publish_raw(
            mosquitto.port,
            [
                (
                    "gridsentry/s1/INV01/telemetry",
                    b'{"ts": 1763880000, "W": 41230, "WH": 123456789, "TmpSnk": 412, "Hz": 50.01}',
                )
            ],
        )
        await wait_for(lambda: count(service, "select count(*) from readings") == 4, what="4 readings")
        con = service.writer.reader()
        rows = dict(con.execute("select metric, round(value, 4) from readings").fetchall())
        assert rows == {"ac_power_kw": 41.23, "energy_kwh": 123456.789, "heatsink_temp_c": 41.2, "Hz": 50.01}
    finally:
        await service.stop()


async def test_several_brokers_at_once(tmp_path: Path, mosquitto: MosquittoBroker):
    from collector.settings import MqttConfig
    from tests.conftest import free_port

    second = MosquittoBroker(tmp_path / "mosquitto-2", port=free_port())
    second.start()
    cfg = broker_config(
        tmp_path,
        mosquitto.port,
        DeviceConfig(id="AC01", site="s1", kind="charger_ac"),
        DeviceConfig(id="PV01", site="s2", kind="pv_inverter"),
        extra_brokers=[MqttConfig(port=second.port, client_id="gridsentry-site2")],
    )
    service = await start_service(cfg)
    try:
        assert len(service.collectors) == 2
        await asyncio.wait_for(service.collectors[1].subscribed.wait(), 10)
        publish_raw(mosquitto.port, [("gridsentry/s1/AC01/telemetry", b'{"ts": 1763880000, "power_kw": 7.0}')])
        publish_raw(second.port, [("gridsentry/s2/PV01/telemetry", b'{"ts": 1763880000, "ac_power_kw": 31.5}')])
        await wait_for(lambda: count(service, "select count(*) from readings") == 2, what="a reading from each broker")
        async with httpx.AsyncClient(base_url=service.http_url, headers=api_headers(service.cfg.data_dir)) as http:
            body = (await http.get("/metrics")).text
            assert f'gridsentry_mqtt_messages_acked_total{{broker="127.0.0.1:{second.port}"}} 1.0' in body
            assert (await http.get("/readyz")).json()["checks"]["mqtt"] is True
    finally:
        await service.stop()
        second.stop()


def test_two_brokers_with_one_client_id_are_refused(tmp_path: Path):
    from collector.settings import MqttConfig
    from gridsentry.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match="client_id"):
        parse_config("mqtt: {port: 1883}\nextra_brokers:\n  - {port: 1883}\n")
    assert MqttConfig().client_id == "gridsentry-collector"
