"""The monthly report over a fixed, seeded month (tests/integration/report_scenario.py): every figure is
recomputed here from what the simulator published and the scenario's alert histories, in plain Python on a
one-minute grid (not through the report's SQL), and compared. Then the three formats: Markdown and HTML
through the CLI, XLSX opened with openpyxl, the HTML rendered in headless Chromium (screen and print)
without console errors, screenshots and a PDF kept in the test's tmp dir."""

from __future__ import annotations

import dataclasses
import itertools
import json
import shutil
from collections import defaultdict
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import openpyxl
import pytest
from typer.testing import CliRunner

from gridsentry.cli import app
from gridsentry.config import Config
from reports.monthly import MonthlyReport, build_monthly, render_html, render_markdown
from reports.monthly_model import as_datetime
from reports.monthly_render import XLSX_SHEETS
from tests.integration import report_scenario as sc

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
MINUTE = timedelta(minutes=1)
GRID = int((sc.MONTH_END - sc.MONTH_START) / MINUTE)  # the whole month is observed: data before and after it
HOURS = GRID / 60.0
SILENT_AFTER_S = 3 * sc.INTERVAL_S


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, sc.Published, MonthlyReport, MonthlyReport]:
    data_dir = tmp_path_factory.mktemp("report-month")
    db = data_dir / Config().storage.path
    db.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(db))
    _, published = sc.build(con)
    report = build_monthly(con, sc.MONTH, sc.ZONE)
    north = build_monthly(con, sc.MONTH, sc.ZONE, site="north")
    con.close()
    return data_dir, published, report, north


def _minute(t: datetime) -> int:
    return int((t - sc.MONTH_START) / MINUTE)


def _telemetry_by_device(published: sc.Published) -> dict[str, list[tuple[datetime, dict[str, float]]]]:
    out: dict[str, list[tuple[datetime, dict[str, float]]]] = defaultdict(list)
    for when, device, metrics in published.telemetry:
        out[device].append((when, metrics))
    for series in out.values():
        series.sort(key=lambda r: r[0])
    return out


def _north_times() -> list[datetime]:
    times, t = [], sc.MONTH_START
    while t < sc.MONTH_END - timedelta(days=1):
        times.append(t)
        t += timedelta(minutes=15)
    return times


def _expected_sessions(published: sc.Published) -> tuple[dict[str, int], dict[str, float]]:
    """Sessions as heard: start time from the start event, or the stop's time less its duration."""
    starts: dict[str, datetime] = {}
    stops: dict[str, tuple[datetime, str, dict[str, Any]]] = {}
    devices: dict[str, str] = {}
    for when, device, body in published.events:
        if body["kind"] != "session":
            continue
        sid = body["detail"]["session_id"]
        devices[sid] = device
        if body["code"] == "start":
            starts.setdefault(sid, when)
        else:
            stops[sid] = (when, device, body["detail"])
    uses: dict[str, int] = defaultdict(int)
    kwh: dict[str, float] = defaultdict(float)
    for sid, device in devices.items():
        began = starts.get(sid)
        if began is None:
            when, _, detail = stops[sid]
            began = when - timedelta(seconds=float(detail["duration_s"]))
        if sc.MONTH_START <= began < sc.MONTH_END:
            uses[device] += 1
            if sid in stops:
                kwh[device] += float(stops[sid][2]["energy_kwh"])
    for _, _started, _, energy in sc.NORTH_SESSIONS:
        uses["NC01"] += 1
        kwh["NC01"] += energy
    return uses, kwh


def _down_minutes(times: list[datetime], events: list[tuple[datetime, dict[str, Any]]]) -> int:
    """Minutes of the month a device was down, marked on a one-minute grid (the simulator moves in whole
    minutes): silent for more than 3 intervals, or a connector in fault or Faulted/Unavailable."""
    down = [False] * GRID
    inside = [t for t in times if sc.MONTH_START <= t < sc.MONTH_END]
    edges = [sc.MONTH_START, *inside, sc.MONTH_END]
    for a, b in itertools.pairwise(edges):
        if (b - a).total_seconds() > SILENT_AFTER_S:
            for m in range(max(0, _minute(a)), min(GRID, _minute(b))):
                down[m] = True
    state: dict[tuple[str, str], bool] = {}
    marks: list[tuple[datetime, tuple[str, str], bool]] = []
    for when, body in sorted(events, key=lambda e: e[0]):
        if body["kind"] == "fault":
            marks.append((when, ("fault", body["text"]), body["code"] != "NoError"))
        elif body["kind"] == "status":
            marks.append((when, ("status", body["text"]), body["code"] in ("Faulted", "Unavailable")))
    for m in range(GRID):
        t = sc.MONTH_START + m * MINUTE
        while marks and marks[0][0] <= t:
            _, key, is_down = marks.pop(0)
            state[key] = is_down
        if any(state.values()):
            down[m] = True
    return sum(down)


def test_every_figure_matches_the_ground_truth(
    scenario: tuple[Path, sc.Published, MonthlyReport, MonthlyReport],
) -> None:
    _, published, report, _ = scenario
    telemetry = _telemetry_by_device(published)
    events: dict[str, list[tuple[datetime, dict[str, Any]]]] = defaultdict(list)
    for when, device, body in published.events:
        events[device].append((when, body))
    times = {device: [t for t, _ in series] for device, series in telemetry.items()} | {"NC01": _north_times()}
    rated = {"AC01": 7.0, "AC02": 7.0, "AC03": 7.0, "AC04": 7.0, "NC01": 7.0, "DC01": 120.0, "DC02": 120.0}
    assert as_datetime(report.window_start) == sc.MONTH_START and as_datetime(report.window_end) == sc.MONTH_END

    # Chargers: uses, kWh, utilisation, availability, faults.
    uses, kwh = _expected_sessions(published)
    faults = {
        device: sum(
            1
            for when, body in evs
            if body["kind"] == "fault" and body["code"] != "NoError" and sc.MONTH_START <= when < sc.MONTH_END
        )
        for device, evs in events.items()
    }
    chargers = {c.device_id: c for c in report.chargers}
    assert set(chargers) == set(rated)
    for device, row in chargers.items():
        assert row.uses == uses[device], device
        assert row.energy_kwh == pytest.approx(kwh[device], abs=1e-6), device
        assert row.utilisation == pytest.approx(kwh[device] / (rated[device] * HOURS)), device
        assert row.faults == faults.get(device, 0), device
        expected_down = _down_minutes(times[device], events.get(device, []))
        assert row.availability == pytest.approx(1 - expected_down / GRID), device
    # The scenario's known incidents show: DC02 overheated, AC02 fell silent for 7 h.
    assert faults["DC02"] >= 1 and chargers["DC02"].availability is not None and chargers["DC02"].availability < 1
    assert chargers["AC02"].availability == pytest.approx(1 - 7 * 60 / GRID, abs=30 / GRID)
    assert sum(uses.values()) > 500

    # PV: kWh from counter increases, insolation and PR over steps of at most 3 intervals, plant totals.
    inverters = {i.device_id: i for i in report.inverters}
    assert set(inverters) == {"INV01", "INV02"}
    plant_kwh = plant_pr_kwh = plant_reference = 0.0
    for device, inv in inverters.items():
        energy = pr_energy = insolation = 0.0
        prev: tuple[datetime, dict[str, float]] | None = None
        for when, metrics in telemetry[device]:
            if prev is not None and sc.MONTH_START <= when < sc.MONTH_END:
                step = max(0.0, metrics["energy_kwh"] - prev[1]["energy_kwh"])
                dt = (when - prev[0]).total_seconds()
                energy += step
                if dt <= SILENT_AFTER_S:
                    pr_energy += step
                    insolation += metrics["irradiance_wm2"] * dt / 3.6e6
            prev = (when, metrics)
        assert inv.energy_kwh == pytest.approx(energy, rel=1e-9), device
        assert inv.peak_kwp == 50.0
        assert inv.specific_yield == pytest.approx(energy / 50.0, rel=1e-9), device
        assert inv.insolation_kwh_m2 == pytest.approx(insolation, rel=1e-9), device
        assert inv.performance_ratio == pytest.approx(pr_energy / (50.0 * insolation), rel=1e-9), device
        assert inv.availability == pytest.approx(1 - _down_minutes(times[device], events.get(device, [])) / GRID)
        plant_kwh += energy
        plant_pr_kwh += pr_energy
        plant_reference += 50.0 * insolation
    # INV01 lost a whole string for 8 days: its ratio trails its twin's.
    assert inverters["INV01"].performance_ratio is not None and inverters["INV02"].performance_ratio is not None
    assert inverters["INV01"].performance_ratio < inverters["INV02"].performance_ratio
    assert 0.5 < inverters["INV02"].performance_ratio < 1.0
    # INV02 went silent 12 h before the month ended, with an alert still open.
    assert inverters["INV02"].silent and inverters["INV02"].open_alerts == 1
    assert inverters["INV02"].status == "silent, 1 open alert" and inverters["INV01"].status == "in service"
    (plant,) = report.plants
    assert plant.site == "demo" and plant.inverters == 2 and plant.peak_kwp == 100.0
    assert plant.energy_kwh == pytest.approx(plant_kwh, rel=1e-9)
    assert plant.specific_yield == pytest.approx(plant_kwh / 100.0, rel=1e-9)
    assert plant.performance_ratio == pytest.approx(plant_pr_kwh / plant_reference, rel=1e-9)

    # Transformer: peak and mean load factor, hours above rated, top oil.
    (tx,) = report.transformers
    series = [(t, m) for t, m in telemetry["TX01"]]
    inside = [(i, t, m) for i, (t, m) in enumerate(series) if sc.MONTH_START <= t < sc.MONTH_END]
    _peak_i, peak_t, peak_m = max(inside, key=lambda r: r[2]["load_factor"])
    above = 0.0
    for i, t, m in inside:
        dt = (t - series[i - 1][0]).total_seconds()
        if m["load_factor"] > 1.0 and dt <= SILENT_AFTER_S:
            above += dt
    assert tx.peak_load_factor == pytest.approx(peak_m["load_factor"])
    assert as_datetime(tx.peak_at) == peak_t and tx.peak_at is not None and tx.peak_at.endswith("+08:00")
    assert tx.mean_load_factor == pytest.approx(sum(m["load_factor"] for _, _, m in inside) / len(inside))
    assert tx.hours_above_rated == pytest.approx(above / 3600.0)
    assert tx.top_oil_max_c == pytest.approx(max(m["top_oil_temp_c"] for _, _, m in inside))
    assert 4.0 <= tx.hours_above_rated <= 5.0  # the 5 h overload of 520 kVA, less its first climb

    # Data completeness: 2,688 readings a month at 15 min; stored = distinct reading times in the month.
    completeness = {c.device_id: c for c in report.completeness}
    assert set(completeness) == set(times)
    for device, row in completeness.items():
        assert row.expected == GRID // 15, device
        assert row.stored == len({t for t in times[device] if sc.MONTH_START <= t < sc.MONTH_END}), device
    assert completeness["INV02"].stored < completeness["INV01"].stored == GRID // 15  # garbled + silent

    _assert_kpis(report, site=None)


def _assert_kpis(report: MonthlyReport, site: str | None) -> None:
    """The standard's KPIs from the scenario's handling times, per class and for all classes."""
    counted = [
        a
        for a in sc.ALERTS
        if a.suppressed is None and sc.MONTH_START <= a.fired < sc.MONTH_END and site in (None, a.site)
    ]
    kpis = {k.event_class: k for k in report.kpis}
    for cls in ("I", "II", "III", "all"):
        alerts = [a for a in counted if cls in ("all", a.event_class)]
        k = kpis[cls]
        assert k.events == len(alerts), cls
        if not alerts:
            assert k.response_timeliness_rate is None and k.mtta_s is None
            continue
        acked = [a.ack_min for a in alerts if a.ack_min is not None]
        restored = [a.restore_h for a in alerts if a.restore_h is not None]
        assert k.response_timeliness_rate == pytest.approx(sum(1 for m in acked if m <= 5) / len(alerts)), cls
        assert k.resolution_rate == pytest.approx(len(restored) / len(alerts)), cls
        in_time = sum(1 for a in alerts if a.restore_h is not None and a.restore_h <= sc.RESTORE_DUE_H[a.event_class])
        assert k.resolved_in_time_rate == pytest.approx(in_time / len(alerts)), cls
        assert k.mtta_s == (pytest.approx(60 * sum(acked) / len(acked)) if acked else None), cls
        assert k.mttr_s == (pytest.approx(3600 * sum(restored) / len(restored)) if restored else None), cls
        breaches = sum(
            1
            for a in alerts
            if a.ack_min is None
            or a.ack_min > 5
            or a.restore_h is None
            or a.restore_h > sc.RESTORE_DUE_H[a.event_class]
        )
        assert k.sla_breaches == breaches, cls


def test_site_filter_applies_to_every_section(
    scenario: tuple[Path, sc.Published, MonthlyReport, MonthlyReport],
) -> None:
    _, _, _, north = scenario
    assert [c.device_id for c in north.chargers] == ["NC01"]
    (nc,) = north.chargers
    assert nc.uses == 2 and nc.energy_kwh == pytest.approx(32.75) and nc.faults == 0
    assert north.inverters == () and north.plants == () and north.transformers == ()
    assert [c.device_id for c in north.completeness] == ["NC01"]
    # North's readings stop a day early: its observed window ends with them, so it is complete within it.
    north_end = as_datetime(north.window_end)
    assert north_end is not None and north_end < sc.MONTH_END - timedelta(hours=23)
    assert north.completeness[0].ratio == 1.0
    _assert_kpis(north, site="north")
    text = render_markdown(north)
    assert "site north" in text and "DC01" not in text and "No PV inverters in scope." in text


def test_formats_through_the_cli_xlsx_and_chromium(
    scenario: tuple[Path, sc.Published, MonthlyReport, MonthlyReport], tmp_path: Path
) -> None:
    data_dir, _, report, _ = scenario
    # The API's JSON format is the dataclass as it stands: every figure must survive json.dumps.
    doc = json.loads(json.dumps(dataclasses.asdict(report)))
    assert doc["window_start"] == "2026-02-01T00:00:00+08:00" and doc["daily"][0]["day"] == "2026-02-01"
    assert doc["transformers"][0]["peak_at"] == report.transformers[0].peak_at
    runner = CliRunner()
    base = ["report", "monthly", "--month", sc.MONTH, "--data-dir", str(data_dir)]
    md = tmp_path / "report.md"
    result = runner.invoke(app, [*base, "-o", str(md)])
    assert result.exit_code == 0, result.output
    assert md.read_text(encoding="utf-8") == render_markdown(report)

    xlsx = tmp_path / "report.xlsx"
    result = runner.invoke(app, [*base, "-f", "xlsx", "-o", str(xlsx)])
    assert result.exit_code == 0, result.output
    book = openpyxl.load_workbook(xlsx)
    assert book.sheetnames == list(XLSX_SHEETS)
    pv = {r[0]: r for r in book["PV"].iter_rows(min_row=2, values_only=True) if r[0] in ("INV01", "INV02")}
    for inv in report.inverters:
        assert pv[inv.device_id][3] == pytest.approx(inv.energy_kwh)
        assert pv[inv.device_id][6] == pytest.approx(inv.performance_ratio)
    tx_row = next(book["Transformers"].iter_rows(min_row=2, values_only=True))
    assert tx_row[0] == "TX01" and tx_row[3] == pytest.approx(report.transformers[0].peak_load_factor)
    assert tx_row[6] == pytest.approx(report.transformers[0].hours_above_rated)
    stored = {r[0]: r[5] for r in book["Completeness"].iter_rows(min_row=2, values_only=True)}
    assert stored == {c.device_id: c.stored for c in report.completeness}
    sla = {r[0]: r for r in book["SLA"].iter_rows(min_row=2, values_only=True)}
    assert sla["all"][1] == report.kpis[-1].events and sla["all"][6] == report.kpis[-1].sla_breaches
    assert len(list(book["Daily"].iter_rows(min_row=2))) == 28

    html = tmp_path / "report.html"
    result = runner.invoke(app, [*base, "-f", "html", "-o", str(html)])
    assert result.exit_code == 0, result.output
    page_text = html.read_text(encoding="utf-8")
    assert page_text == render_html(report)
    assert "http://" not in page_text.replace('xmlns="http://www.w3.org/2000/svg"', "")  # nothing to fetch
    _render_in_chromium(html, tmp_path)


def _render_in_chromium(html: Path, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "chromium is missing: `make test` installs it (apt-get install chromium)"
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
            page.on("request", lambda r: errors.append(f"request {r.url}") if not r.url.startswith("file:") else None)
            page.goto(html.as_uri())
            assert page.locator("h1").inner_text().startswith(f"Monthly operations report {sc.MONTH}")
            for section in ("chargers", "pv", "transformers", "sla", "completeness", "daily"):
                assert page.locator(f"section#{section} h2").is_visible(), section
            assert page.locator("svg.chart").count() == 8
            # The daily chart draws one column per day and series, each at least partly visible.
            assert page.locator("section#daily svg rect[height]").count() >= 2 * 28
            page.screenshot(path=str(out / "monthly-report.png"), full_page=True)
            # Printed on A4 portrait: nothing may be wider than the printable width (210 mm - 2 x 12 mm).
            page.emulate_media(media="print")
            page.set_viewport_size({"width": 703, "height": 1000})  # 186 mm at 96 dpi
            overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 0, f"the printed report is {overflow} px wider than an A4 page"
            page.screenshot(path=str(out / "monthly-report-print.png"), full_page=True)
            page.pdf(path=str(out / "monthly-report.pdf"), format="A4")
        finally:
            browser.close()
    assert errors == []
    assert (out / "monthly-report.png").stat().st_size > 10_000
    assert (out / "monthly-report.pdf").read_bytes().startswith(b"%PDF")
