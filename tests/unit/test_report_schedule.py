"""When the monthly report falls due: at the end of the month in each listed site's own time zone."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import duckdb

from reports.schedule import ReportScheduler, ReportsConfig
from storage.schema import migrate


def test_per_site_monthly_report_waits_for_the_sites_own_midnight() -> None:
    con = duckdb.connect()
    migrate(con)
    # A site's report covers the ledger's devices there; a site the ledger does not know is refused.
    con.execute("INSERT INTO devices (device_id, site, kind) VALUES ('DC01', 'shenzhen', 'charger_dc'), "
                "('INV01', 'urumqi', 'pv_inverter')")  # fmt: skip
    cfg = ReportsConfig.model_validate({"monthly": {"enabled": True, "delay": 0, "per_site": ["shenzhen", "urumqi"]}})
    scheduler = ReportScheduler(
        None,
        cfg,
        zone=ZoneInfo("UTC"),
        targets=[("webhook:ops", None)],
        site_zones={"shenzhen": "Asia/Shanghai", "urumqi": "Asia/Urumqi"},
    )
    # 16:30 UTC on 30 November: 00:30 on 1 December in Shenzhen (UTC+8), 22:30 on 30 November in Urumqi (UTC+6).
    october = {("monthly", "2026-10/shenzhen"), ("monthly", "2026-10/urumqi")}  # sent a month ago
    due = scheduler._monthly(con, datetime(2026, 11, 30, 16, 30, tzinfo=UTC), october)
    assert [(r.report, r.period) for r in due] == [("monthly", "2026-11/shenzhen")]
    assert "Times in Asia/Shanghai." in due[0].text
    due = scheduler._monthly(
        con, datetime(2026, 11, 30, 18, 5, tzinfo=UTC), october | {("monthly", "2026-11/shenzhen")}
    )
    assert [(r.period, r.attachment["filename"] if r.attachment else None) for r in due] == [
        ("2026-11/urumqi", "gridsentry-monthly-2026-11-urumqi.md")
    ]
