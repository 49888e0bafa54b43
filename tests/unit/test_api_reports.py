"""Report route helpers: the printable monthly page escapes what devices named themselves; the default month."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from gridsentry.api_reports import default_month, monthly_html
from reports.monthly import ChargerMonth, MonthlyReport


def test_monthly_html_escapes_device_ids() -> None:
    # Device ids can come from MQTT topics of devices nobody registered (unknown_devices: accept).
    report = MonthlyReport(
        "2026-11", None, "Asia/Shanghai", [ChargerMonth("<script>alert(1)</script>", 3, 41.5, 0)], []
    )
    page = monthly_html(report)
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;" in page and "<table" in page


def test_default_month_is_the_one_just_ended_in_the_zone() -> None:
    shanghai = ZoneInfo("Asia/Shanghai")
    assert default_month(shanghai, datetime(2026, 1, 10, tzinfo=UTC)) == "2025-12"
    # 2026-11-30 17:00 UTC is already 1 December in Shanghai.
    assert default_month(shanghai, datetime(2026, 11, 30, 17, tzinfo=UTC)) == "2026-11"
