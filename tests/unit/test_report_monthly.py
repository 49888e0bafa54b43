"""Monthly report, charger section: figures computed here from the simulator's ground truth (its session
log and the fault events it published), not through the report code."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
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
from reports.monthly import build_monthly, render_html, render_markdown, write_xlsx
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
    args = ["report", "monthly", "--month", "2026-11", "--site", "nowhere", "--data-dir", str(tmp_path)]
    bad = CliRunner().invoke(app, args)
    assert bad.exit_code == 2 and "known sites: demo" in bad.output


def _tiny_plant() -> duckdb.DuckDBPyConnection:
    """Two inverters on site s1 with a hand-written hour of readings: every figure is countable by hand."""
    con = duckdb.connect()
    migrate(con)
    con.execute(
        """
        INSERT INTO devices (device_id, site, kind, rated_kw, expected_interval_s, tags) VALUES
            ('INV09', 's1', 'pv_inverter', 40, 600, ['kwp:48']),
            ('INV10', 's1', 'pv_inverter', 30, 600, ['kwp:abc']),
            ('AC77', 's1', 'charger_ac', 7, 600, [])
        """
    )
    # AC77 never reports readings, only a session in July (a month without any reading).
    con.execute(
        "INSERT INTO charging_sessions VALUES ('AC77-1', 'AC77', 1, TIMESTAMPTZ '2026-07-09 10:00:00+00', "
        "TIMESTAMPTZ '2026-07-09 11:00:00+00', 6.5, 'EVDisconnected')"
    )
    start = datetime(2026, 6, 3, 4, tzinfo=UTC)
    # INV09: +5 kWh every 10 min at 500 W/m², except one drop (a counter reset, which adds nothing).
    energy = [100, 105, 110, 115, 2, 7, 12]
    for i, e in enumerate(energy):
        ts = start + timedelta(minutes=10 * i)
        con.execute("INSERT INTO readings VALUES (?, 'INV09', 'energy_kwh', ?, 0)", [ts, e])
        con.execute("INSERT INTO readings VALUES (?, 'INV09', 'irradiance_wm2', 500, 0)", [ts])
        if i != 3:  # INV10 misses one reading: not a silent gap (2 intervals < 3)
            con.execute("INSERT INTO readings VALUES (?, 'INV10', 'energy_kwh', ?, 0)", [ts, 10 * i])
    return con


def test_pv_figures_by_hand_and_the_kwp_tag() -> None:
    con = _tiny_plant()
    report = build_monthly(con, "2026-06", ZoneInfo("Asia/Shanghai"))
    # No data before or after: the window runs from the first reading to just after the last (1 h + 1 s).
    assert report.observed_hours == pytest.approx(1 + 1 / 3600)
    inv09, inv10 = report.inverters
    assert inv09.peak_kwp == 48.0 and inv10.peak_kwp == 30.0
    assert inv09.energy_kwh == pytest.approx(5 * 5)  # six steps, the reset one counts nothing
    insolation = 6 * 500 * 600 / 3.6e6
    assert inv09.insolation_kwh_m2 == pytest.approx(insolation)
    assert inv09.performance_ratio == pytest.approx(25 / (48 * insolation))
    assert inv09.specific_yield == pytest.approx(25 / 48)
    assert inv10.energy_kwh == pytest.approx(60) and inv10.performance_ratio is None  # no irradiance sensor
    assert inv10.insolation_kwh_m2 is None and inv10.availability == pytest.approx(1.0)
    (plant,) = report.plants
    assert plant.peak_kwp == 78.0 and plant.energy_kwh == pytest.approx(85)
    assert plant.performance_ratio == pytest.approx(inv09.performance_ratio)  # only the measured inverter
    completeness = {c.device_id: (c.expected, c.stored) for c in report.completeness}
    assert completeness == {"INV09": (7, 7), "INV10": (7, 6), "AC77": (7, 0)}
    (ac77,) = report.chargers
    assert ac77.uses == 0 and ac77.availability == 0.0 and ac77.utilisation == 0.0  # silent all window
    assert len(report.notes) == 1 and "INV10" in report.notes[0] and "kwp:55.2" in report.notes[0]
    assert "> Note: INV10" in render_markdown(report)


def test_unknown_site_and_empty_month_are_explained(tmp_path: Path) -> None:
    con = _tiny_plant()
    with pytest.raises(ValueError, match=r"site 'nowhere' is not in the equipment ledger \(known sites: s1\)"):
        build_monthly(con, "2026-06", ZoneInfo("UTC"), site="nowhere")
    empty = build_monthly(con, "2026-07", ZoneInfo("UTC"))
    assert empty.window_start is None and empty.inverters == () and empty.completeness == ()
    (ac77,) = empty.chargers
    assert ac77.uses == 1 and ac77.energy_kwh == 6.5 and ac77.availability is None and ac77.utilisation is None
    assert "No readings are stored for this month" in render_markdown(empty)
    assert "No readings are stored for this month" in render_html(empty)
    write_xlsx(empty, tmp_path / "empty.xlsx")
    assert openpyxl.load_workbook(tmp_path / "empty.xlsx").sheetnames == list(XLSX_SHEETS)


def test_html_escapes_ledger_text() -> None:
    """Device ids and sites come from configs and auto-discovered topics: the page must never run them."""
    con = duckdb.connect()
    migrate(con)
    con.execute(
        "INSERT INTO devices (device_id, site, kind, rated_kw, expected_interval_s) "
        "VALUES ('<script>alert(1)</script>', 's&<1>', 'charger_ac', 7, 60)"
    )
    con.execute("INSERT INTO readings VALUES (TIMESTAMPTZ '2026-06-03 04:00:00+00', '<script>alert(1)</script>', "
                "'power_kw', 1, 0)")  # fmt: skip
    page = render_html(build_monthly(con, "2026-06", ZoneInfo("UTC")))
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "s&amp;&lt;1&gt;" in page
