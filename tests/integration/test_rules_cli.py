"""`gridsentry rules check|list|test` on real packs and a real DuckDB; rule state across a restart."""

import asyncio
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from gridsentry.cli import app
from gridsentry.demo_history import ledger_rows
from rules.engine import DeviceInfo
from rules.runtime import RulesRuntime
from simulator import METRIC_UNITS, demo_fleet, demo_site
from simulator.core import FleetSimulator
from simulator.faults import FaultSpec
from simulator.scoring import messages_to_readings
from storage.batch import IngestBatch, events_from_columns, readings_from_columns
from storage.ledger import sync_ledger
from storage.writer import StorageWriter

runner = CliRunner()
START = datetime(2026, 7, 1, 0, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def history_db(tmp_path_factory) -> Path:
    """Two hours of the demo hub with a DC gun contact degrading, stored through the writer."""
    path = tmp_path_factory.mktemp("rules") / "gs.duckdb"
    site, devices = demo_site(), demo_fleet(interval_s=15)
    writer = StorageWriter(path)
    writer.start()
    try:
        site_row = {"id": site.id, "name": site.name, "latitude": site.latitude, "longitude": site.longitude}
        site_row["timezone"] = site.timezone
        writer.submit(
            lambda con: sync_ledger(
                con,
                devices=ledger_rows(devices),
                sites=[site_row],
                metrics=[
                    {"name": n, "unit": u, "description": "", "min": None, "max": None} for n, u in METRIC_UNITS.items()
                ],
            )
        ).result()
        sim = FleetSimulator(
            site,
            devices,
            seed=2,
            start=START,
            faults=[FaultSpec("dc_connector_overheat", "DC01", 1200, {"rise_k_per_min": 0.4})],
            physics_step_s=5,
        )
        t = START
        while t < START + timedelta(hours=2):
            t += timedelta(minutes=10)
            writer.append_sync(IngestBatch(readings=messages_to_readings(sim.step(t))))
    finally:
        writer.close()
    return path


def test_check_shipped_packs_passes():
    result = runner.invoke(app, ["rules", "check"])
    assert result.exit_code == 0, result.output
    assert "all packs valid" in result.output and "trend" in result.output


def test_check_reports_file_line_and_fix(tmp_path: Path):
    pack = tmp_path / "site.yaml"
    pack.write_text(
        "pack: site\nrules:\n  - id: x\n    title: X\n    metric: gun1_temp_cc\n    above: 80\n    class: II\n"
    )
    result = runner.invoke(app, ["rules", "check", str(pack)])
    assert result.exit_code == 1
    assert f"{pack}:5" in result.output and "gun1_temp_cc" in result.output and "metric catalogue" in result.output


def test_list_shows_rules_with_their_pack():
    result = runner.invoke(app, ["rules", "list", "charger_dc", "--kind", "trend"])
    assert result.exit_code == 0, result.output
    assert "dc_gun_temp_forecast" in result.output.replace("\n", "") or "dc_gun_" in result.output


def test_backtest_prints_what_would_have_fired(history_db: Path):
    result = runner.invoke(
        app,
        [
            "rules",
            "test",
            "charger_dc",
            "--db",
            str(history_db),
            "--from",
            START.isoformat(),
            "--to",
            (START + timedelta(hours=2)).isoformat(),
        ],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    assert "replayed" in result.output
    lines = [line for line in result.output.splitlines() if "dc_gun_temp_forecast" in line]
    assert any("DC01" in line and "reaches 80 °C in about" in line for line in lines), result.output
    assert any("dc_gun_overtemp_warning" in line and "DC01" in line for line in result.output.splitlines())


def test_backtest_needs_a_database(tmp_path: Path):
    result = runner.invoke(
        app,
        ["rules", "test", "fleet", "--db", str(tmp_path / "none.duckdb"), "--from", "2026-07-01", "--to", "2026-07-02"],
    )
    assert result.exit_code == 2 and "no database" in result.output


def test_state_persists_across_a_restart(tmp_path: Path):
    path = tmp_path / "state.duckdb"
    devices = {"DC01": DeviceInfo("DC01", "demo", "charger_dc", interval_s=10)}
    now = datetime.now(UTC).replace(microsecond=0)

    def hot(seconds: float):
        return readings_from_columns(
            [int((now + timedelta(seconds=seconds)).timestamp() * 1e6)], ["DC01"], ["gun1_temp_c"], [95.0]
        )

    writer = StorageWriter(path)
    writer.start()
    try:
        runtime = RulesRuntime(writer, METRIC_UNITS)
        runtime.load(devices)
        assert runtime.evaluate(hot(0), now=now) == []  # pending: the rule needs 30 s
        asyncio.run(runtime.persist())
        writer.append_sync(IngestBatch(readings=hot(0)))  # stored history the restart refills windows from
    finally:
        writer.close()
    writer = StorageWriter(path)
    writer.start()
    try:
        runtime = RulesRuntime(writer, METRIC_UNITS)
        runtime.load(devices)
        assert runtime.engine._buckets.filter(pl.col("metric") == "gun1_temp_c").height == 1  # window refilled
        fired = runtime.evaluate(hot(31), now=now + timedelta(seconds=31))
        assert {f.rule_id for f in fired} >= {"dc_gun_overtemp_warning", "dc_gun_overtemp_critical"}
        asyncio.run(runtime.persist())
        count = writer.reader().execute("SELECT count(*) FROM rule_state WHERE firing").fetchone()
        assert count is not None and count[0] >= 2
        # A reload with a broken pack keeps the running rules.
        bad = tmp_path / "bad.yaml"
        bad.write_text("pack: bad\nrules:\n  - id: b\n    title: B\n    metric: nope_c\n    above: 1\n    class: II\n")
        runtime.packs = [bad]
        problems = runtime.reload()
        assert problems and "nope_c" in problems[0]
        assert "dc_gun_overtemp_warning" in runtime.engine.rules
        assert runtime.engine.firing().height >= 2
    finally:
        writer.close()


def test_http_status_and_reload(tmp_path: Path):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from gridsentry.api_rules import rules_router
    from gridsentry.auth import Principal, TokenStore

    writer = StorageWriter(tmp_path / "api.duckdb")
    writer.start()
    try:
        runtime = RulesRuntime(writer, METRIC_UNITS)
        runtime.load({"DC01": DeviceInfo("DC01", "demo", "charger_dc", interval_s=10)})
        now = datetime.now(UTC)
        for seconds in (0, 40):
            at = now + timedelta(seconds=seconds)
            hot = readings_from_columns([int(at.timestamp() * 1e6)], ["DC01"], ["gun1_temp_c"], [99.0])
            runtime.evaluate(hot, now=at)

        class FakeService:
            rules_runtime = runtime

            @property
            def engine(self):
                return runtime.engine

        app = FastAPI()
        app.include_router(rules_router(FakeService()))  # type: ignore[arg-type]
        app.state.tokens = TokenStore()
        app.state.tokens.add_token("gst_test-admin", Principal("test", "admin"))
        app.state.tokens.add_token("gst_test-viewer", Principal("duty", "viewer"))
        client = TestClient(app, headers={"authorization": "Bearer gst_test-admin"})
        assert client.get("/api/rules", headers={"authorization": "Bearer nope"}).status_code == 401
        viewer = {"authorization": "Bearer gst_test-viewer"}
        assert client.get("/api/rules", headers=viewer).status_code == 200
        assert client.post("/api/rules/reload", headers=viewer).status_code == 403
        body = client.get("/api/rules").json()
        assert body["rules"] >= 30 and body["pack_problems"] == [] and body["failed_rules"] == {}
        assert {(f["rule_id"], f["device_id"]) for f in body["firing"]} >= {("dc_gun_overtemp_critical", "DC01")}
        bad = tmp_path / "bad.yaml"
        bad.write_text(
            "pack: bad\nrules:\n  - id: b\n    title: B\n    kind: trend\n    metric: gun1_temp_c\n    class: II\n"
        )
        runtime.packs = [bad]
        refused = client.post("/api/rules/reload").json()
        assert refused["reloaded"] is False and "bad.yaml:3" in refused["problems"][0]
        assert client.get("/api/rules").json()["reload_problems"] == refused["problems"]
        runtime.packs = []
        assert client.post("/api/rules/reload").json()["reloaded"] is True
        assert len(client.get("/api/rules").json()["firing"]) >= 2  # state carried over the reload
    finally:
        writer.close()


def test_backtest_replays_stored_events_for_event_rules(history_db: Path, tmp_path: Path):
    copy = tmp_path / "gs.duckdb"
    shutil.copy(history_db, copy)
    writer = StorageWriter(copy)
    writer.start()
    try:
        at = int((START + timedelta(minutes=45)).timestamp() * 1_000_000)
        fault = events_from_columns([at], ["DC01"], ["fault"], ["GroundFailure"], ["gun 2"])
        writer.append_sync(IngestBatch(events=fault))
    finally:
        writer.close()
    result = runner.invoke(
        app,
        [
            "rules",
            "test",
            "charger_dc",
            "--db",
            str(copy),
            "--from",
            START.isoformat(),
            "--to",
            (START + timedelta(hours=2)).isoformat(),
        ],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    assert any("dc_connector_fault_critical" in line and "DC01" in line for line in result.output.splitlines()), (
        result.output
    )
    assert "GroundFailure" in result.output
