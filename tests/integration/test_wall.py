"""The built-in wall screen in a real headless Chromium (Debian's), against a running service.

Readings go in through the service's own store path; the built-in DC pack turns an overheating gun into
class I and II alerts, and the page must show them (the same ones as /api/alerts) without a reload.
Screenshots land in tests/artifacts/ for a human to look at.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import time
from pathlib import Path

import httpx
import pyarrow as pa
import pytest
from pydantic import SecretStr

from alerts.settings import AlertsConfig
from gridsentry.auth import AuthConfig, TokenConfig, new_token
from gridsentry.config import Config, DeviceConfig
from gridsentry.service import Service
from storage.batch import IngestBatch

pytestmark = pytest.mark.integration

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
VIEWER = new_token()

DEVICES = [
    DeviceConfig(id="DC01", site="hub-1", kind="charger_dc", rated_kw=120),
    DeviceConfig(id="DC02", site="hub-1", kind="charger_dc", rated_kw=120),
    DeviceConfig(id="INV01", site="hub-1", kind="pv_inverter", rated_kw=100),
    DeviceConfig(id="TX01", site="hub-1", kind="box_transformer", rated_kw=630),
    DeviceConfig(id="AC09", site="hub-2", kind="charger_ac", rated_kw=7),
]


def readings(rows: list[tuple[float, str, str, float]]) -> IngestBatch:
    return IngestBatch(
        readings=pa.table(
            {
                "ts": pa.array([int(r[0] * 1e6) for r in rows], pa.timestamp("us", tz="UTC")),
                "device_id": [r[1] for r in rows],
                "metric": [r[2] for r in rows],
                "value": pa.array([r[3] for r in rows], pa.float64()),
                "quality": pa.array([0] * len(rows), pa.uint8()),
            }
        ),
        source="test",
    )


def normal_readings(now: float) -> IngestBatch:
    return readings(
        [
            (now, "DC01", "gun1_power_kw", 60.0),
            (now, "DC01", "gun1_temp_c", 45.0),
            (now, "DC02", "gun2_power_kw", 30.0),
            (now, "INV01", "ac_power_kw", 42.5),
            (now, "TX01", "load_kva", 300.0),
            (now, "TX01", "load_factor", 0.48),
        ]
    )


async def start(tmp_path: Path, public: bool) -> Service:
    cfg = Config(data_dir=tmp_path / "data", devices=DEVICES)
    cfg.http.port = 0
    cfg.mqtt.enabled = False
    cfg.rules.tick_ms = 100
    cfg.screens.wall.refresh_s = 1
    # A real rota: the wall shows what the alert stage's /api/oncall says, even to a browser without a token.
    cfg.alerts = AlertsConfig.model_validate(
        {
            "oncall": {
                "people": [
                    {"id": "li.wei", "name": "Li Wei 李伟", "phone": "+86 138 0000 0001"},
                    {"id": "zhang.min", "name": "Zhang Min"},
                ],
                "rotas": [{"name": "engineers", "people": ["li.wei"]}, {"name": "managers", "people": ["zhang.min"]}],
            },
            "escalation": [
                {"name": "on-call engineer", "rota": "engineers", "after": "0m"},
                {"name": "manager", "rota": "managers", "after": "30m"},
            ],
        }
    )
    cfg.auth = AuthConfig(
        tokens=[TokenConfig(name="wall-desk", role="viewer", token=SecretStr(VIEWER))],
        public=["wall"] if public else [],
        local_token=False,
    )
    service = Service(cfg)
    await service.start()
    return service


async def open_alerts(service: Service) -> list[dict]:
    async with httpx.AsyncClient(base_url=service.http_url, headers={"authorization": f"Bearer {VIEWER}"}) as http:
        r = await http.get("/api/alerts")
        r.raise_for_status()
        return r.json()


async def launch(p):
    assert Path(CHROMIUM).exists(), "chromium is missing: `make test` installs it (apt-get install chromium)"
    return await p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])


def watch_console(page, errors: list[str]) -> None:
    page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))


async def test_wall_shows_the_fleet_and_a_new_alert_without_reload(tmp_path: Path):
    from playwright.async_api import async_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    service = await start(tmp_path, public=True)
    errors: list[str] = []

    try:
        await service.store(normal_readings(time.time()))
        async with async_playwright() as p:
            browser = await launch(p)
            page = await browser.new_page(viewport={"width": 1920, "height": 1080})
            watch_console(page, errors)
            response = await page.goto(service.http_url + "/")
            assert response is not None and response.status == 200
            await page.wait_for_function("document.body.dataset.updated !== undefined", timeout=15_000)
            assert await page.locator("#no-alerts").is_visible()
            assert await page.text_content("#count-I") == "0"
            assert await page.text_content("#n-online") == "4" and await page.text_content("#n-never_seen") == "1"
            assert await page.text_content("#pv") == "42.5"
            assert await page.text_content("#charging") == "90.0"
            assert "48 %" in (await page.text_content("#trafo-unit") or "")
            assert await page.locator('.tile.online[data-device="TX01"]').count() == 1
            assert await page.locator('.tile.never_seen[data-device="AC09"]').count() == 1
            assert await page.text_content("#oncall-name") == "Li Wei 李伟 · +86 138 0000 0001  (2: Zhang Min)"
            assert await page.locator("#no-visit").is_visible()
            await page.screenshot(path=str(ARTIFACTS / "wall-calm.png"))

            # DC01's gun 1 runs at 95 °C for 40 s: the built-in pack raises class II (> 80) and class I (> 90).
            now = time.time()
            await service.store(readings([(now - 40 + 5 * i, "DC01", "gun1_temp_c", 95.0) for i in range(9)]))
            deadline = time.monotonic() + 20
            api: list[dict] = []
            while time.monotonic() < deadline and len(api) < 2:
                api = await open_alerts(service)
                await asyncio.sleep(0.2)
            assert {a["event_class"] for a in api} == {"I", "II"}, api

            await page.wait_for_function("document.querySelectorAll('tr[data-alert-id]').length === 2", timeout=15_000)
            shown = await page.eval_on_selector_all(
                "tr[data-alert-id]",
                "rows => rows.map(r => [Number(r.dataset.alertId), r.querySelector('.badge').textContent,"
                " r.children[1].firstChild.textContent, r.querySelector('td[data-due=ack]').textContent])",
            )
            assert sorted((a, c, d) for a, c, d, _ in shown) == sorted(
                (a["alert_id"], a["event_class"], a["device_id"]) for a in api
            )
            for *_, ack_left in shown:  # respond within 5 minutes: a live m:ss countdown
                assert re.fullmatch(r"[0-4]:[0-5]\d|5:00", ack_left), ack_left
            first = shown[0][3]
            await page.wait_for_function(
                f"document.querySelector('td[data-due=ack]').textContent !== {first!r}", timeout=5_000
            )
            assert await page.text_content("#count-I") == "1" and await page.text_content("#count-II") == "1"
            assert await page.locator('.tile.alarm.I[data-device="DC01"]').count() == 1
            assert await page.text_content("#n-alarm") == "1"
            # The visit-first panel ranks DC01 (open class I and II alerts) once its cache turns over (10 refreshes).
            await page.wait_for_selector('#visit li[data-device="DC01"]', timeout=25_000)
            why = await page.text_content('#visit li[data-device="DC01"] div.why') or ""
            assert "open class I alert" in why, why
            await page.screenshot(path=str(ARTIFACTS / "wall-alerts.png"))
            await browser.close()
        assert errors == [], errors
    finally:
        await service.stop()


async def test_wall_asks_for_a_token_once_when_not_public(tmp_path: Path):
    from playwright.async_api import async_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    service = await start(tmp_path, public=False)
    errors: list[str] = []
    try:
        await service.store(normal_readings(time.time()))
        async with async_playwright() as p:
            browser = await launch(p)
            context = await browser.new_context(viewport={"width": 1600, "height": 900})
            page = await context.new_page()
            watch_console(page, errors)
            response = await page.goto(service.http_url + "/")
            assert response is not None and response.status == 401  # the page itself, asking for a token
            await page.wait_for_selector("#login:not([hidden])", timeout=10_000)
            await page.fill("#token", "gst_wrong")
            await page.click("#login-form button")
            await page.wait_for_function("document.getElementById('login-error').textContent !== ''", timeout=10_000)
            await page.fill("#token", VIEWER)
            await page.click("#login-form button")
            await page.wait_for_function("document.body.dataset.updated !== undefined", timeout=15_000)
            assert await page.locator("#login").is_hidden()
            assert await page.text_content("#n-online") == "4"
            # The token is kept: a new page in the same browser profile goes straight to the figures.
            again = await context.new_page()
            await again.goto(service.http_url + "/")
            await again.wait_for_function("document.body.dataset.updated !== undefined", timeout=15_000)
            assert await again.locator("#login").is_hidden()
            await again.screenshot(path=str(ARTIFACTS / "wall-after-login.png"))
            await browser.close()
        # Only the expected refusals: the page and its data without a (valid) token.
        unexpected = [e for e in errors if "401" not in e]
        assert unexpected == [], unexpected
        assert any("401" in e for e in errors)
    finally:
        await service.stop()
