"""Modbus collection against real pymodbus servers on loopback (and RTU over a socat pty pair).

Every simulated server in this module records the function codes it receives into one
session-wide counter; the last test proves GridSentry sent nothing but reads (FC 1-4).
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.framer import FramerType

from collector.modbus.collector import ModbusCollector
from collector.modbus.maps import load_map_file, resolve_map
from collector.modbus.settings import ModbusConfig, ModbusDeviceConfig, SerialSettings
from gridsentry.config import Config, DeviceConfig, HttpConfig, SiteConfig
from gridsentry.service import Service
from simulator.modbus_fleet import map_device, sunspec_inverter
from simulator.modbus_server import SimulatedModbusDevice, SimulatedModbusServer
from storage.batch import IngestBatch, Quality
from tests.conftest import api_headers

pytestmark = pytest.mark.integration

SESSION_FUNCTION_CODES: Counter[int] = Counter()


async def _serve(devices: list[SimulatedModbusDevice], **kw: Any) -> SimulatedModbusServer:
    server = SimulatedModbusServer(devices, **kw)
    server.function_codes = SESSION_FUNCTION_CODES  # one recorder for the whole session
    await server.start()
    return server


class Sink:
    def __init__(self) -> None:
        self.batches: list[IngestBatch] = []

    async def __call__(self, batch: IngestBatch) -> None:
        self.batches.append(batch)

    def readings(self) -> pa.Table:
        return pa.concat_tables([b.readings for b in self.batches])

    def events(self) -> pa.Table:
        return pa.concat_tables([b.events for b in self.batches])

    def device(self, device_id: str) -> pa.Table:
        r = self.readings()
        return r.filter(pc.equal(r["device_id"], device_id))


def _tcp(port: int, map_name: str, **kw: Any) -> ModbusDeviceConfig:
    return ModbusDeviceConfig(host="127.0.0.1", port=port, map=map_name, **kw)


async def _run(collector: ModbusCollector, seconds: float) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(collector.run(stop))
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.wait_for(task, 10)


# --- M2: partial device failure ----------------------------------------------------------------------------
async def test_m2_failing_devices_are_isolated() -> None:
    interval = 0.5
    common = {"interval_s": interval, "timeout_s": 0.25, "retries": 0, "offline_after": 2, "max_backoff_s": 4.0}
    good = map_device("meter_3ph")
    bad_point = map_device("dc_charger_vendor")
    charger_map = load_map_file(resolve_map("dc_charger_vendor"))
    temp = next(p for p in charger_map.points if p.metric == "gun1_temp_c")
    bad_point.exception_at.add((3, charger_map.protocol_address(temp)))
    silent = map_device("box_transformer_meter")
    silent.silent = True
    restarted = map_device("box_transformer_tc")
    servers = [await _serve([d]) for d in (good, bad_point, silent, restarted)]
    sink = Sink()
    collector = ModbusCollector(
        ModbusConfig(flush_interval_ms=100),
        [
            ("GOOD", _tcp(servers[0].port, "meter_3ph", **common)),
            ("BADPOINT", _tcp(servers[1].port, "dc_charger_vendor", **common)),
            ("SILENT", _tcp(servers[2].port, "box_transformer_meter", **common)),
            ("RESTART", _tcp(servers[3].port, "box_transformer_tc", **common)),
        ],
        sink,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(collector.run(stop))
    try:
        await asyncio.sleep(3.0)
        await servers[3].stop()
        killed_at = time.time()
        await asyncio.sleep(3.0)
        await servers[3].start()  # same port: the device comes back
        restarted_at = time.time()
        await asyncio.sleep(3.0)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        for s in servers:
            await s.stop()
    p = collector.pollers

    # The healthy devices kept their cadence while the others failed (p99 jitter < 1 interval).
    for dev in ("GOOD", "BADPOINT"):
        jitter = sorted(p[dev].health.jitter_s)
        p99 = jitter[min(len(jitter) - 1, int(0.99 * len(jitter)))]
        assert p99 < interval, f"{dev}: p99 poll jitter {p99:.3f} s"
        assert p[dev].health.polls >= 0.8 * 9.0 / interval, f"{dev} polled {p[dev].health.polls} times"

    # The bad point is flagged and counted; the rest of that device is good.
    charger = sink.device("BADPOINT")
    temp_rows = charger.filter(pc.equal(charger["metric"], "gun1_temp_c"))
    assert temp_rows.num_rows > 0
    assert set(temp_rows["quality"].to_pylist()) == {Quality.SUSPECT}
    assert temp_rows["value"].null_count == temp_rows.num_rows
    others = charger.filter(pc.not_equal(charger["metric"], "gun1_temp_c"))
    assert set(others["quality"].to_pylist()) == {Quality.GOOD}
    assert p["BADPOINT"].health.point_errors[("gun1_temp_c", "exception_02")] >= 5
    assert p["BADPOINT"].health.merged_reads_refused == 1  # refused once, then remembered

    # The silent device times out, backs off, and is reported offline.
    events = sink.events()
    offline = events.filter(pc.equal(events["code"], "offline"))
    assert set(offline["device_id"].to_pylist()) == {"SILENT", "RESTART"}
    assert p["SILENT"].health.errors["timeout"] >= 2
    assert p["SILENT"].health.polls < 9.0 / interval / 2  # backing off: far fewer polls than the cadence
    assert sink.device("SILENT").num_rows == 0

    # The killed device raised offline after the kill and resumed within 2 intervals of its restart.
    restart_rows = sink.device("RESTART")
    ts = [t.timestamp() for t in restart_rows["ts"].to_pylist()]
    assert any(t < killed_at for t in ts)
    assert not any(killed_at + 0.5 < t < restarted_at for t in ts)
    resumed = min(t for t in ts if t > restarted_at)
    assert resumed - restarted_at <= 2 * interval + 0.5, f"resumed {resumed - restarted_at:.2f} s after restart"
    online = events.filter(pc.equal(events["code"], "online"))
    assert online["device_id"].to_pylist() == ["RESTART"]


# --- transports --------------------------------------------------------------------------------------------
async def test_rtu_over_tcp_gateway_serves_many_units_on_one_link() -> None:
    units = [map_device("meter_3ph", unit=3), map_device("box_transformer_tc", unit=7)]
    server = await _serve(units, framer=FramerType.RTU)
    sink = Sink()
    cfg = {"transport": "rtu_over_tcp", "interval_s": 0.3, "timeout_s": 0.5}
    collector = ModbusCollector(
        ModbusConfig(flush_interval_ms=100),
        [
            ("M3", ModbusDeviceConfig(host="127.0.0.1", port=server.port, unit=3, map="meter_3ph", **cfg)),
            ("TC7", ModbusDeviceConfig(host="127.0.0.1", port=server.port, unit=7, map="box_transformer_tc", **cfg)),
        ],
        sink,
    )
    try:
        await _run(collector, 1.5)
    finally:
        await server.stop()
    assert len(collector.links.links) == 1  # one connection to the gateway, requests serialised on it
    m3, tc7 = sink.device("M3"), sink.device("TC7")
    assert "voltage_l1_v" in m3["metric"].to_pylist() and "top_oil_temp_c" in tc7["metric"].to_pylist()
    assert "top_oil_temp_c" not in m3["metric"].to_pylist()  # each unit answered with its own registers
    for dev in ("M3", "TC7"):
        assert collector.pollers[dev].health.errors == Counter()


@pytest.fixture
def pty_pair(tmp_path: Path) -> Iterator[tuple[str, str]]:
    if shutil.which("socat") is None:
        pytest.fail("socat is not installed: apt-get install socat (make system-deps does it)")
    a, b = tmp_path / "ttyA", tmp_path / "ttyB"
    proc = subprocess.Popen(
        ["socat", f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 5
        while not (a.exists() and b.exists()):
            assert time.monotonic() < deadline, "socat did not create the pty pair"
            time.sleep(0.05)
        yield str(a), str(b)
    finally:
        proc.terminate()
        proc.wait(5)


async def test_rtu_over_serial_pty(pty_pair: tuple[str, str]) -> None:
    device_end, collector_end = pty_pair
    server = await _serve([map_device("box_transformer_tc", unit=5)], serial_port=device_end)
    sink = Sink()
    dcfg = ModbusDeviceConfig(
        transport="rtu",
        serial=SerialSettings(port=collector_end, baudrate=115200),
        unit=5,
        map="box_transformer_tc",
        interval_s=0.3,
        timeout_s=0.5,
    )
    collector = ModbusCollector(ModbusConfig(flush_interval_ms=100), [("TC-RTU", dcfg)], sink)
    try:
        await _run(collector, 2.0)
    finally:
        await server.stop()
    rows = sink.device("TC-RTU")
    oil = rows.filter(pc.equal(rows["metric"], "top_oil_temp_c"))["value"].to_pylist()
    assert oil and all(55 < v < 70 for v in oil)
    assert collector.pollers["TC-RTU"].health.errors == Counter()


# --- SunSpec -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("base", [40000, 0, 50000])
async def test_sunspec_discovery_at_each_base(base: int) -> None:
    server = await _serve([sunspec_inverter(base=base)])
    sink = Sink()
    collector = ModbusCollector(
        ModbusConfig(flush_interval_ms=100), [("INV", _tcp(server.port, "sunspec", interval_s=0.3))], sink
    )
    try:
        await _run(collector, 1.2)
    finally:
        await server.stop()
    poller = collector.pollers["INV"]
    assert poller.sunspec is not None and poller.sunspec.base == base
    assert [m.id for m in poller.sunspec.models] == [1, 103, 120, 160]
    values = dict(zip(sink.readings()["metric"].to_pylist(), sink.readings()["value"].to_pylist(), strict=True))
    assert 40 < values["ac_power_kw"] < 56  # W x 10^W_SF (W_SF = 1) / 1000
    assert 640 < values["dc_voltage_v"] < 670  # DCV x 10^-1
    assert values["rated_power_kw"] == 50
    assert "mppt2_voltage_v" in values
    assert "transformer_temp_c" not in values  # served as 0x8000: not implemented, skipped
    assert not any(m.startswith("sf_") for m in values)  # scale factors are not readings
    events = sink.events()
    codes = set(zip(events["kind"].to_pylist(), events["code"].to_pylist(), strict=True))
    assert ("status", "MPPT") in codes and ("info", "serial") in codes


async def test_scan_command_prints_models(tmp_path: Path) -> None:
    server = await _serve([sunspec_inverter()])
    try:
        proc = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "gridsentry"),  # the venv's entry point, whatever PATH says
            "modbus",
            "scan",
            f"127.0.0.1:{server.port}",
            "--unit",
            "1",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
        )
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        await server.stop()
    text = out.decode()
    assert proc.returncode == 0, err.decode()
    assert "SunSpec device" in text and "SIM-INV-0001" in text
    for line in ("Inverter (three phase)", "Multiple MPPT", "ac_power_kw", "kW"):
        assert line in text


# --- status and alarm words become events on change -----------------------------------------------------------
async def test_status_and_alarm_words_become_events() -> None:
    tc = map_device("box_transformer_tc")
    server = await _serve([tc])
    sink = Sink()
    collector = ModbusCollector(
        ModbusConfig(flush_interval_ms=50), [("TC", _tcp(server.port, "box_transformer_tc", interval_s=0.2))], sink
    )
    stop = asyncio.Event()
    task = asyncio.create_task(collector.run(stop))
    try:
        await asyncio.sleep(0.5)
        tc.overrides["controller_alarms"] = 0b1_0000_0001  # TOP_OIL_ALARM and WATER_IMMERSION
        tc.overrides["fan_state"] = 3
        await asyncio.sleep(0.5)
        tc.overrides["controller_alarms"] = 0b1_0000_0000  # the top-oil alarm clears
        tc.overrides["fan_state"] = 9  # a state the map does not know
        await asyncio.sleep(0.5)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await server.stop()
    ev = sink.events()
    seen = list(zip(ev["kind"].to_pylist(), ev["code"].to_pylist(), ev["text"].to_pylist(), strict=True))
    assert [(k, c) for k, c, _t in seen] == [
        ("status", "FAN_ON_AUTO"),
        ("status", "FAN_FAULT"),  # within one poll, in register order: the fan state word comes first
        ("alarm", "TOP_OIL_ALARM"),
        ("alarm", "WATER_IMMERSION"),
        ("status", "UNKNOWN_9"),
        ("alarm", "TOP_OIL_ALARM"),
    ]
    assert "raised" in seen[2][2] and "raised" in seen[3][2] and "cleared" in seen[5][2]
    assert collector.pollers["TC"].health.point_errors[("fan_state", "unknown_state")] >= 1
    assert "controller_alarms" not in sink.readings()["metric"].to_pylist()  # events, not readings


# --- broken map at reload: refused, running map kept -----------------------------------------------------------
async def test_broken_map_reload_keeps_running_map(tmp_path: Path) -> None:
    shipped = resolve_map("meter_3ph")
    mine = tmp_path / "site_meter.yaml"
    mine.write_text(shipped.read_text(encoding="utf-8").replace("name: meter_3ph", "name: site_meter"), "utf-8")
    server = await _serve([map_device("meter_3ph")])
    sink = Sink()
    collector = ModbusCollector(
        ModbusConfig(flush_interval_ms=100, map_check_interval_s=0, map_dirs=[tmp_path]),
        [("MTR", _tcp(server.port, "site_meter", interval_s=0.2))],
        sink,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(collector.run(stop))
    try:
        await asyncio.sleep(0.6)
        mine.write_text(mine.read_text("utf-8").replace("type: int16", "type: int12"), "utf-8")
        collector.check_maps()
        assert collector.stats.map_errors == 1
        assert any(f"{mine.resolve()}:" in p and "int12" in p for p in collector.stats.map_problems)
        before = sink.device("MTR").num_rows
        await asyncio.sleep(0.6)
        assert sink.device("MTR").num_rows > before  # still polling with the previous map
        mine.write_text(shipped.read_text("utf-8").replace("scale: 0.01, unit: Hz", "scale: 1, unit: cHz"), "utf-8")
        collector.check_maps()
        assert collector.stats.map_reloads == 1
        await asyncio.sleep(0.6)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await server.stop()
    freq = sink.device("MTR").filter(pc.equal(sink.device("MTR")["metric"], "frequency_hz"))["value"].to_pylist()
    assert freq[0] < 60 and freq[-1] > 4900  # the fixed map took over


# --- end to end: device block -> DuckDB and /metrics ----------------------------------------------------------
@pytest.fixture
async def modbus_fleet() -> AsyncIterator[dict[str, int]]:
    servers = {
        "TX01-TC": await _serve([map_device("box_transformer_tc")]),
        "TX01-MTR": await _serve([map_device("box_transformer_meter")]),
        "INV01": await _serve([sunspec_inverter()]),
    }
    yield {k: s.port for k, s in servers.items()}
    for s in servers.values():
        await s.stop()


async def test_device_blocks_reach_duckdb_and_metrics(tmp_path: Path, modbus_fleet: dict[str, int]) -> None:
    ports = modbus_fleet
    cfg = Config(
        data_dir=tmp_path,
        http=HttpConfig(port=0),
        sites=[SiteConfig(id="s1")],
        devices=[
            DeviceConfig(
                id="TX01-TC",
                site="s1",
                kind="box_transformer",
                modbus=_tcp(ports["TX01-TC"], "box_transformer_tc", interval_s=0.3),
            ),
            DeviceConfig(
                id="TX01-MTR",
                site="s1",
                kind="meter",
                modbus=_tcp(ports["TX01-MTR"], "box_transformer_meter", interval_s=0.3),
            ),
            # A SunSpec inverter needs only its address.
            DeviceConfig(
                id="INV01",
                site="s1",
                kind="pv_inverter",
                modbus=ModbusDeviceConfig(host="127.0.0.1", port=ports["INV01"]),
            ),
            DeviceConfig(
                id="DEAD",
                site="s1",
                kind="meter",
                modbus=_tcp(1, "meter_3ph", interval_s=0.3, offline_after=1, timeout_s=0.2),
            ),
        ],
    )
    cfg.mqtt.enabled = False
    service = Service(cfg)
    await service.start()
    try:
        await asyncio.sleep(2.0)
        async with httpx.AsyncClient(headers=api_headers(service.cfg.data_dir)) as client:
            metrics = (await client.get(f"{service.http_url}/metrics")).text
            health = {d["device_id"]: d for d in (await client.get(f"{service.http_url}/api/modbus/devices")).json()}
            missing = await client.get(f"{service.http_url}/api/modbus/devices/NOPE")
        con = service.writer.reader()
        try:
            rows = dict(
                con.execute("SELECT device_id, count(*) FROM readings GROUP BY 1").fetchall()  # type: ignore[arg-type]
            )
            oil = con.execute(
                "SELECT avg(value), min(quality) FROM readings WHERE device_id='TX01-TC' AND metric='top_oil_temp_c'"
            ).fetchone()
            events = con.execute("SELECT device_id, kind, code FROM events").fetchall()
        finally:
            con.close()
    finally:
        await service.stop()
    assert rows["TX01-TC"] > 0 and rows["TX01-MTR"] > 0 and rows["INV01"] > 0
    assert "DEAD" not in rows
    assert oil is not None and 55 < oil[0] < 70 and oil[1] == Quality.GOOD
    assert ("DEAD", "link", "offline") in events
    assert health["TX01-TC"]["state"] == "online" and health["DEAD"]["state"] == "offline"
    assert health["DEAD"]["errors"]["connection"] >= 1 and health["DEAD"]["backoff_s"] >= 0
    assert [m["id"] for m in health["INV01"]["sunspec"]["models"]] == [1, 103, 120, 160]
    assert missing.status_code == 404 and "modbus" in missing.json()["detail"]
    assert ("INV01", "status", "MPPT") in events
    assert 'gridsentry_modbus_device_up{device_id="TX01-TC",link="tcp:127.0.0.1:' in metrics
    assert 'gridsentry_modbus_errors_total{device_id="DEAD"' in metrics and 'kind="connection"' in metrics
    assert "gridsentry_modbus_request_duration_seconds_bucket" in metrics
    assert 'gridsentry_ingest_readings_total{source="modbus"}' in metrics
    if shutil.which("promtool"):
        lint = await asyncio.create_subprocess_exec(
            "promtool",
            "check",
            "metrics",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        report, _ = await lint.communicate(metrics.encode())
        assert lint.returncode == 0, report.decode()


# --- read-only, proven ---------------------------------------------------------------------------------------
async def test_recorder_sees_writes() -> None:
    """The recorder is not blind: a write sent by a plain client shows up (on a private counter)."""
    server = SimulatedModbusServer([map_device("meter_3ph")])
    await server.start()
    try:
        client = AsyncModbusTcpClient("127.0.0.1", port=server.port, timeout=1, retries=0)
        await client.connect()
        await client.write_register(0, 1, device_id=1)
        client.close()
    finally:
        await server.stop()
    assert server.function_codes[6] == 1


def test_zz_only_reads_were_sent() -> None:
    """Runs last in this module: every request any simulated server received was a read."""
    if not SESSION_FUNCTION_CODES:
        pytest.skip("no simulated server ran: run it together with the rest of this module")
    assert set(SESSION_FUNCTION_CODES) <= {1, 2, 3, 4}, dict(SESSION_FUNCTION_CODES)
