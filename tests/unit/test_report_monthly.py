"""Monthly report, charger section: figures computed here from the simulator's ground truth (its session
log and the fault events it published), not through the report code."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import duckdb
import openpyxl
import orjson
import pytest
from typer.testing import CliRunner

from gridsentry.cli import app
from gridsentry.config import Config
from gridsentry.demo_history import seed_demo_history
from reports.monthly import build_monthly, render_markdown, write_xlsx
from reports.monthly_render import XLSX_SHEETS
from simulator.core import FleetSimulator
from storage.schema import migrate


def test_charger_figures_match_ground_truth(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    sims: list[FleetSimulator] = []
    original_step = FleetSimulator.step
    published: list[dict[str, object]] = []

    def recording_step(self: FleetSimulator, now: datetime) -> list[object]:
        if self not in sims:
            sims.append(self)
        out = original_step(self, now)
        published.extend(orjson.loads(m.payload) | {"device": m.topic.split("/")[2]} for m in out if m.kind == "event")
        return list(out)

    monkeypatch.setattr(FleetSimulator, "step", recording_step)
    con = duckdb.connect()
    migrate(con)
    zone = ZoneInfo("UTC")
    seed_demo_history(con, days=4, interval_s=300, end=datetime(2026, 11, 2, 12, tzinfo=UTC))
    report = build_monthly(con, "2026-11", zone)

    start, end = datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC)
    uses: dict[str, int] = {}
    kwh: dict[str, float] = {}
    started: set[str] = set()
    for when, device, code, detail in sims[0].session_log:
        sid = str(detail["session_id"])
        if code == "start" and start <= when < end:
            uses[device] = uses.get(device, 0) + 1
            started.add(sid)
        elif code == "stop" and sid in started:
            kwh[device] = kwh.get(device, 0.0) + float(str(detail["energy_kwh"]))
    faults: dict[str, int] = {}
    for e in published:
        when = datetime.fromisoformat(str(e["ts"]))
        if e["kind"] == "fault" and e["code"] != "NoError" and start <= when < end:
            faults[str(e["device"])] = faults.get(str(e["device"]), 0) + 1

    chargers = {c.device_id: c for c in report.chargers}
    assert set(chargers) == {"AC01", "AC02", "AC03", "AC04", "DC01", "DC02"}
    assert sum(uses.values()) > 5
    for device, row in chargers.items():
        assert row.uses == uses.get(device, 0), device
        assert row.energy_kwh == pytest.approx(kwh.get(device, 0.0), abs=1e-6), device
        assert row.faults == faults.get(device, 0), device
    text = render_markdown(report)
    assert "| AC01 |" in text and "Response timeliness" in text
    xlsx = tmp_path / "report.xlsx"
    write_xlsx(report, xlsx)
    book = openpyxl.load_workbook(xlsx)
    assert book.sheetnames == list(XLSX_SHEETS)
    sheet_rows = {r[0]: r for r in book["Chargers"].iter_rows(min_row=2, values_only=True)}
    for device, row in chargers.items():
        assert sheet_rows[device][1] == row.uses and sheet_rows[device][3] == row.faults
        assert sheet_rows[device][2] == pytest.approx(row.energy_kwh)


def test_cli_monthly_writes_markdown(tmp_path: Path) -> None:
    con = duckdb.connect(
        str(Config().storage.path if Config().storage.path.is_absolute() else tmp_path / Config().storage.path)
    )
    migrate(con)
    seed_demo_history(con, days=1, interval_s=600, end=datetime(2026, 11, 1, 18, tzinfo=UTC))
    con.close()
    out = tmp_path / "report.md"
    result = CliRunner().invoke(
        app, ["report", "monthly", "--month", "2026-11", "--data-dir", str(tmp_path), "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    text = out.read_text(encoding="utf-8")
    assert text.startswith("# Monthly operations report 2026-11") and "| DC01 |" in text
    xlsx = tmp_path / "report.xlsx"
    args = ["report", "monthly", "--month", "2026-11", "--data-dir", str(tmp_path), "-f", "xlsx", "-o", str(xlsx)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert openpyxl.load_workbook(xlsx).sheetnames == list(XLSX_SHEETS)
    bad = CliRunner().invoke(app, ["report", "monthly", "--month", "2026-13", "--data-dir", str(tmp_path)])
    assert bad.exit_code == 2 and "YYYY-MM" in bad.output
