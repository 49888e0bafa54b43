"""Committed readings are judged at once, not at the next rules tick (ADR 37)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pyarrow as pa
import pytest

from gridsentry.config import Config, DeviceConfig, RulesConfig
from gridsentry.service import Service
from storage.batch import IngestBatch

pytestmark = pytest.mark.integration

PACK = """pack: fresh
rules:
  - {id: gun_hot, title: Gun hot, applies_to: {devices: [DC01]}, metric: gun1_temp_c, above: 90, hysteresis: 1,
     class: I}
"""


def hot_reading() -> IngestBatch:
    return IngestBatch(
        readings=pa.table(
            {
                "ts": pa.array([int(time.time() * 1e6)], pa.timestamp("us", tz="UTC")),
                "device_id": ["DC01"],
                "metric": ["gun1_temp_c"],
                "value": pa.array([95.0], pa.float64()),
                "quality": pa.array([0], pa.uint8()),
            }
        ),
        source="test",
    )


async def first_alert_after_store(tmp_path: Path, *, fresh: bool) -> float | None:
    pack = tmp_path / "fresh.yaml"
    pack.write_text(PACK)
    cfg = Config(
        data_dir=tmp_path / ("fresh" if fresh else "tick-only"),
        rules=RulesConfig(builtin_packs=False, packs=[pack], tick_ms=60_000),  # the longest tick allowed
        devices=[DeviceConfig(id="DC01", site="hub-1", kind="charger_dc")],
    )
    cfg.http.port = 0
    cfg.mqtt.enabled = False
    service = Service(cfg)
    if not fresh:
        service.rules_fresh_gap_s = None
    await service.start()
    try:
        await asyncio.sleep(0.3)
        t0 = time.monotonic()
        await service.store(hot_reading())
        while time.monotonic() - t0 < 5:
            if service.alerts.raised:
                return time.monotonic() - t0
            await asyncio.sleep(0.02)
        return None
    finally:
        await service.stop()


async def test_a_hot_reading_raises_its_alert_without_waiting_for_the_tick(tmp_path: Path) -> None:
    took = await first_alert_after_store(tmp_path, fresh=True)
    assert took is not None and took < 3, took  # generous: the tick is 60 s, the shared machine is busy
    # Without the wake-up, the same reading waits for the 60 s tick: the test above can fail.
    assert await first_alert_after_store(tmp_path, fresh=False) is None
