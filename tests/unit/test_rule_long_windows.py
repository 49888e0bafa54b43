"""Windows of days: refilled at start-up from the rollups, so a 3-day trend works after a restart."""

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from rules.engine import DeviceInfo
from rules.runtime import RulesRuntime
from storage import rollup
from storage.batch import IngestBatch, empty_readings, readings_from_columns
from storage.writer import StorageWriter

UNITS = {"top_oil_temp_c": "°C"}
PACK = """
pack: long
rules:
  - id: tx_oil_creeping_up
    title: Top oil creeping up over days
    applies_to: {kinds: [box_transformer]}
    metric: top_oil_temp_c
    kind: trend
    limit: 95
    window: 3d
    horizon: 3d
    min_points: 100
    class: III
    message: "{device_id} top oil {value:.1f} {unit}, rising {slope_per_h:.2f} K/h over 3 days: {forecast}"
"""
SLOPE_K_PER_H = 0.25


def oil(hours_ago: float) -> float:
    """A daily load cycle of ±8 K on top of a slow rise: over 6 h the cycle hides the rise."""
    t = 72 - hours_ago
    return 60 + SLOPE_K_PER_H * t + 8 * math.cos(2 * math.pi * t / 24)


@pytest.fixture
def writer(tmp_path: Path):
    w = StorageWriter(tmp_path / "gs.duckdb")
    w.start()
    yield w
    w.close()


def store_three_days(writer: StorageWriter, now: datetime) -> None:
    minutes = range(72 * 60, 0, -5)
    ts = [int((now - timedelta(minutes=m)).timestamp() * 1e6) for m in minutes]
    values = [oil(m / 60) for m in minutes]
    writer.append_sync(
        IngestBatch(readings=readings_from_columns(ts, ["TX01"] * len(ts), ["top_oil_temp_c"] * len(ts), values))
    )
    writer.submit(rollup.fold_pending).result()
    # Older readings leave the hot table (the archive job moves them to Parquet); rollups stay.
    writer.submit(lambda con: con.execute("DELETE FROM readings WHERE ts < ?", [now - timedelta(hours=6)])).result()


def test_three_day_trend_after_a_restart_reads_the_rollups(writer: StorageWriter, tmp_path: Path):
    now = datetime.now(UTC)
    store_three_days(writer, now)
    pack = tmp_path / "long.yaml"
    pack.write_text(PACK)
    runtime = RulesRuntime(writer, UNITS, packs=[pack], builtin_packs=False)
    runtime.load({"TX01": DeviceInfo("TX01", "s1", "box_transformer", interval_s=300)})
    assert runtime.loaded.problems == []
    # Raw readings for the last hours, 1-minute rollups back to 48 h, hourly rollups before.
    assert runtime.backfilled["readings"] > 50
    assert runtime.backfilled["rollup_buckets"] > 400
    [fire] = runtime.evaluate(empty_readings(), now=now + timedelta(seconds=1))
    assert fire.action == "fire" and fire.rule_id == "tx_oil_creeping_up"
    slope_per_h = float(fire.message.split("rising ")[1].split(" K/h")[0])
    assert 0.8 * SLOPE_K_PER_H <= slope_per_h <= 1.2 * SLOPE_K_PER_H, fire.message
    # 95 °C is (95 - 78) / 0.25 = 68 h away on the true trend.
    assert fire.seconds_to_limit is not None and 50 * 3600 <= fire.seconds_to_limit <= 90 * 3600


def test_without_rollups_the_long_window_cannot_judge(writer: StorageWriter, tmp_path: Path):
    # The same 3-day rule with only the last 6 h of raw readings: too few points to judge, so silent.
    now = datetime.now(UTC)
    store_three_days(writer, now)
    writer.submit(lambda con: con.execute("DELETE FROM rollup_1m; DELETE FROM rollup_1h")).result()
    pack = tmp_path / "long.yaml"
    pack.write_text(PACK)
    runtime = RulesRuntime(writer, UNITS, packs=[pack], builtin_packs=False)
    runtime.load({"TX01": DeviceInfo("TX01", "s1", "box_transformer", interval_s=300)})
    assert runtime.backfilled["rollup_buckets"] == 0
    assert runtime.evaluate(empty_readings(), now=now + timedelta(seconds=1)) == []
