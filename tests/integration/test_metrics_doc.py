"""docs/metrics.md is what `gridsentry screens metrics-doc` generates from the running code."""

from __future__ import annotations

from pathlib import Path

import pytest

from gridsentry.screens.catalogue import metrics_markdown

pytestmark = pytest.mark.integration

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"


def test_metric_catalogue_is_current():
    generated = metrics_markdown()
    assert DOC.read_text(encoding="utf-8") == generated, "docs/metrics.md is stale: run `make metrics-doc` and commit"
    # Every family the service yields is listed, with its exposed name.
    for name in ("gridsentry_ingest_readings_total", "gridsentry_alerts_sla_breached", "gridsentry_device_state"):
        assert f"`{name}`" in generated
    assert "`gridsentry_reading_gun_power_watts` | `site`, `kind`, `device`, `gun`" in generated
