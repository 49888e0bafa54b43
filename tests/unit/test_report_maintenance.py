"""Fault rates and maintenance priorities over a hand-built fleet whose figures are worked out here."""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import duckdb
import orjson
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from gridsentry.cli import app
from gridsentry.config import Config
from reports.maintenance import build_maintenance, forecast_seconds, render_csv, render_json, render_markdown
from storage.schema import migrate

NOW = datetime(2026, 11, 20, 12, tzinfo=UTC)


def _fleet() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    migrate(con)
    devices = [
        ("DC01", "north", "charger_dc", "QH-DC120", 120.0, date(2019, 11, 20)),
        ("DC02", "north", "charger_dc", "QH-DC120", 120.0, date(2025, 11, 20)),
        ("DC03", "north", "charger_dc", "QH-DC120", 120.0, None),
        ("TX01", "north", "box_transformer", "ZGS11", 630.0, None),
        ("INV01", "north", "pv_inverter", "NS-50K", 50.0, None),
        ("AC01", "south", "charger_ac", "LX-AC7", 7.0, None),
    ]
    for dev, site, kind, model, kw, comm in devices:
        con.execute(
            "INSERT INTO devices (device_id, site, kind, model, rated_kw, commissioned) VALUES (?, ?, ?, ?, ?, ?)",
            [dev, site, kind, model, kw, comm],
        )
    # Operating hours: DC01 and DC02 report for 100 h each, DC03 for 50 h, TX01 and INV01 for 10 h, AC01 200 h.
    hours = {"DC01": 100, "DC02": 100, "DC03": 50, "TX01": 10, "INV01": 10, "AC01": 200}
    rows = []
    for dev, n in hours.items():
        for h in range(n):
            bucket = NOW - timedelta(hours=h + 1)
            temp = {"DC01": 58.0, "DC02": 45.0, "DC03": 46.0}.get(dev)  # DC01's gun 1 runs 12.5 K hot
            if temp is not None:
                rows.append((dev, "gun1_temp_c", bucket, 4, temp * 4))
            rows.append((dev, "power_kw", bucket, 4, 40.0))
            if dev == "INV01":  # string 2 delivers 30 % less than strings 1, 3 and 4
                for s, amps in ((1, 8.0), (2, 5.6), (3, 8.0), (4, 8.0)):
                    rows.append((dev, f"string{s}_current_a", bucket, 4, amps * 4))
    table = pa.table(
        {
            "device_id": [r[0] for r in rows],
            "metric": [r[1] for r in rows],
            "bucket": pa.array([r[2] for r in rows], pa.timestamp("us", tz="UTC")),
            "count": [r[3] for r in rows],
            "sum": [r[4] for r in rows],
        }
    )
    con.register("hours", table)
    con.execute("INSERT INTO rollup_1h (device_id, metric, bucket, count, sum, avg) SELECT *, sum / count FROM hours")
    con.unregister("hours")
    # An hour outside the 30-day period does not count.
    con.execute(
        "INSERT INTO rollup_1h (device_id, metric, bucket, count, sum) VALUES ('AC01', 'power_kw', ?, 1, 1)",
        [NOW - timedelta(days=40)],
    )
    # Faults: DC01 reports two GunOverTemp codes and a NoError clearance, DC02 one; AC01 one old code (ignored).
    for dev, code, ago in (("DC01", "GunOverTemp", 2), ("DC01", "GunOverTemp", 5), ("DC01", "NoError", 5),
                           ("DC02", "GunOverTemp", 9), ("AC01", "RCDTrip", 45)):  # fmt: skip
        con.execute("INSERT INTO events VALUES (?, ?, 'fault', ?, NULL)", [NOW - timedelta(days=ago), dev, code])
    alerts = [
        # (device, class, state, rule, title, forecast, created ago, updated ago, suppressed)
        ("TX01", "II", "firing", "tx_top_oil_forecast", "Transformer top oil heading for its maximum",
         "reaches 95 °C in about 6 h", timedelta(hours=2), timedelta(hours=0), None),
        ("DC03", "I", "acknowledged", "dc_gun_temp_high", "Gun connector over temperature", None,
         timedelta(hours=1), timedelta(hours=1), None),
        ("AC01", "III", "firing", "ac_offline", "Charger silent", None, timedelta(hours=1), timedelta(hours=1),
         "parent TX09 offline"),
    ]  # fmt: skip
    for i, (dev, klass, state, rule, title, forecast, created, updated, suppressed) in enumerate(alerts):
        con.execute(
            "INSERT INTO alerts (fingerprint, rule_id, device_id, site, event_class, state, title, message, fired_at, "
            "created_at, updated_at, forecast, suppressed) VALUES (?, ?, ?, 'north', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [f"fp{i}", rule, dev, klass, state, title, title, NOW - created, NOW - created, NOW - updated, forecast,
             suppressed],
        )  # fmt: skip
    return con


def test_forecast_text_parses_back_to_seconds() -> None:
    assert forecast_seconds("reaches 95 °C in about 3 h 20 min") == 3 * 3600 + 20 * 60
    assert forecast_seconds("reaches 90 °C in about 1 d 2 h") == 26 * 3600
    assert forecast_seconds("reaches 90 °C in about 45 s") == 45
    assert forecast_seconds("has reached 95 °C") == 0
    assert forecast_seconds("no longer heading for 95 °C") is None
    assert forecast_seconds(None) is None


def test_fault_rates_per_1000_operating_hours() -> None:
    report = build_maintenance(_fleet(), now=NOW, days=30, zone=ZoneInfo("Asia/Shanghai"))
    totals = {(t.device_kind, t.model): t for t in report.model_totals}
    dc = totals[("charger_dc", "QH-DC120")]
    # 3 GunOverTemp codes + 1 class I alert over 100 + 100 + 50 operating hours.
    assert (dc.devices, dc.operating_hours, dc.faults) == (3, 250.0, 4)
    assert dc.per_1000_h == pytest.approx(1000 * 4 / 250)
    by_fault = {(r.model, r.source, r.fault): r for r in report.fault_rates}
    assert by_fault[("QH-DC120", "device fault code", "GunOverTemp")].per_1000_h == pytest.approx(12.0)
    assert by_fault[("QH-DC120", "GridSentry alert", "dc_gun_temp_high")].faults == 1
    # AC01: its only code is older than the period and its alert was suppressed; 200 h in the period.
    ac = totals[("charger_ac", "LX-AC7")]
    assert (ac.operating_hours, ac.faults, ac.per_1000_h) == (200.0, 0, 0.0)
    assert "NoError" not in {r.fault for r in report.fault_rates}


def test_ranking_says_why() -> None:
    report = build_maintenance(_fleet(), now=NOW, days=30)
    ranked = {p.device_id: p for p in report.priorities}
    # TX01: the oil reaches 95 °C in 6 h, forecast 0 h ago: 40 x (1 - 6/24) = 30 points; nothing else.
    assert ranked["TX01"].factors == {"forecast": 30.0}
    assert "top oil heading for its maximum" in ranked["TX01"].reasons[0]
    assert "limit in about 6 h" in ranked["TX01"].reasons[0]
    # DC01: two codes in 30 days (6), 7.0 years old (2/year, capped at 10), gun 1 12.5 K above the median
    # of DC02/DC03 (45.5 °C) -> 2 x (12.5 - 3) = 19 points.
    assert ranked["DC01"].factors == {"faults": 6.0, "age": 10.0, "degradation": 19.0}
    assert ranked["DC01"].score == 35.0
    assert ranked["DC01"].reasons[0].startswith("gun1_temp_c averages 58.0 °C, 12.5 K above its peers")
    # DC03: open class I alert (15) + that alert is a fault in the window (3).
    assert ranked["DC03"].factors == {"alerts": 15.0, "faults": 3.0}
    assert "open class I alert: Gun connector over temperature" in ranked["DC03"].reasons
    # INV01 string 2: 30 % below the median of its strings -> 0.5 x (30 - 5) + 5 = 17.5.
    assert ranked["INV01"].factors == {"degradation": 17.5}
    assert "string 2 produces 30 % less" in ranked["INV01"].reasons[0]
    # DC02: one code (3) + 1 year (2).
    assert ranked["DC02"].factors == {"faults": 3.0, "age": 2.0}
    assert [p.device_id for p in report.priorities] == ["DC01", "TX01", "DC03", "INV01", "DC02"]
    assert "AC01" not in ranked  # its only alert was suppressed, its only code is old


def test_site_filter_and_renderings() -> None:
    con = _fleet()
    report = build_maintenance(con, now=NOW, site="north", limit=2)
    assert [p.device_id for p in report.priorities] == ["DC01", "TX01"]
    assert all(t.device_kind != "charger_ac" for t in report.model_totals)
    md = render_markdown(report)
    assert "| 1 | DC01 | north | charger_dc | QH-DC120 | 35 |" in md
    doc = orjson.loads(render_json(report))
    assert doc["priorities"][0]["factors"]["degradation"] == 19.0
    rows = list(csv.reader(io.StringIO(render_csv(report))))
    assert rows[0][:6] == ["rank", "device_id", "site", "kind", "model", "score"]
    assert rows[1][1] == "DC01"
    with pytest.raises(ValueError, match="site 'nowhere' has no devices"):
        build_maintenance(con, now=NOW, site="nowhere")


def test_cli_report_maintenance(tmp_path: Path) -> None:
    cfg = Config(data_dir=tmp_path)
    disk = duckdb.connect(str(cfg.database_path))
    mem = _fleet()
    migrate(disk)
    for table in ("devices", "rollup_1h", "events", "alerts"):
        disk.register("src", mem.execute(f"SELECT * FROM {table}").to_arrow_table())
        disk.execute(f"INSERT INTO {table} SELECT * FROM src")
        disk.unregister("src")
    disk.close()
    runner = CliRunner()
    result = runner.invoke(app, ["report", "maintenance", "--data-dir", str(tmp_path), "--days", "3650",
                                 "--format", "json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = orjson.loads(result.stdout)
    assert {p["device_id"] for p in doc["priorities"]} >= {"DC01", "DC03"}
    bad = runner.invoke(app, ["report", "maintenance", "--data-dir", str(tmp_path), "--site", "nowhere"])
    assert bad.exit_code != 0
    assert "site 'nowhere' has no devices" in bad.output
