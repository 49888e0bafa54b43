"""Every dashboard query returns data from a real Prometheus scraping a running GridSentry and its fleet.

No Grafana server runs here, so this is how panels are proven: Debian's Prometheus scrapes the service
(once a second) with the shipped recording rules, and every target of every panel, and every variable
query, goes to its HTTP API with the variables set to "All". The simulated hub runs from local noon, so
PV panels have daylight, at 10x speed so the injected DC connector fault raises its alerts in seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
import yaml

from dashboards.generate import OUT_DIR
from gridsentry.demo import DEMO_FAULTS, demo_config
from gridsentry.service import Service
from simulator.core import FleetSimulator
from simulator.fleet import demo_fleet, demo_site
from simulator.publisher import MqttFleetPublisher
from tests.conftest import MosquittoBroker, free_port

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus-rules.yml"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
SUBSTITUTE = {"$__rate_interval": "15s", "$__interval": "5s", "$__range": "60s", "$site": ".*", "$device": ".*"}


def last_local_noon(tz: str) -> datetime:
    now = datetime.now(ZoneInfo(tz))
    noon = now.replace(hour=12, minute=0, second=0, microsecond=0)
    return (noon if noon <= now else noon - timedelta(days=1)).astimezone(UTC)


def substitute(expr: str) -> str:
    for var, value in SUBSTITUTE.items():
        expr = expr.replace(var, value)
    assert "$" not in expr, f"unknown dashboard variable left in {expr!r}"
    return expr


class Prometheus:
    def __init__(self, workdir: Path, target: str) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        rules = yaml.safe_load(RULES.read_text(encoding="utf-8"))
        for group in rules["groups"]:
            group["interval"] = "1s"  # the shipped 15 s would leave the rules unevaluated for this short test
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "rules.yml").write_text(yaml.safe_dump(rules), encoding="utf-8")
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(workdir / "rules.yml")],
            "scrape_configs": [{"job_name": "gridsentry", "static_configs": [{"targets": [target]}]}],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
        self.log = (workdir / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=self.log,
        )

    async def query(self, http: httpx.AsyncClient, expr: str) -> list[dict[str, Any]]:
        r = await http.get(f"{self.url}/api/v1/query", params={"query": expr})
        body = r.json()
        if r.status_code != 200 or body.get("status") != "success":
            raise AssertionError(f"{expr}: {r.status_code} {body.get('error')}")
        return list(body["data"]["result"])

    async def query_range(self, http: httpx.AsyncClient, expr: str) -> list[dict[str, Any]]:
        end = time.time()
        r = await http.get(
            f"{self.url}/api/v1/query_range", params={"query": expr, "start": end - 60, "end": end, "step": 5}
        )
        body = r.json()
        if r.status_code != 200 or body.get("status") != "success":
            raise AssertionError(f"{expr}: {r.status_code} {body.get('error')}")
        return list(body["data"]["result"])

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


async def wait_until(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if await check():
                return
        except (httpx.HTTPError, AssertionError, KeyError, ValueError) as exc:
            last = exc
        await asyncio.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what} ({last})")


def dashboard_queries() -> list[tuple[str, str, str, bool]]:
    """(dashboard, panel, expr, instant) for every target of every panel."""
    out = []
    for path in sorted(OUT_DIR.glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        for panel in data["panels"]:
            for p in [panel, *panel.get("panels", [])]:
                for t in p.get("targets", []):
                    out.append((data["uid"], p["title"], t["expr"], bool(t.get("instant"))))
    return out


def variable_queries() -> list[tuple[str, str, str]]:
    out = []
    for path in sorted(OUT_DIR.glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        for v in data.get("templating", {}).get("list", []):
            out.append((data["uid"], v["name"], v["query"]["query"]))
    return out


async def test_every_dashboard_query_returns_data_from_prometheus(tmp_path: Path, mosquitto: MosquittoBroker):
    assert Path(PROMETHEUS).exists(), "prometheus is missing: `make test` installs it (apt-get install prometheus)"
    cfg = demo_config(tmp_path / "data", 0, mosquitto.port)
    # The fleet runs at simulated times from local noon (hours ago): keep those readings on /metrics and
    # count the devices as online.
    cfg.screens.reading_max_age_s = 3 * 86400
    cfg.screens.offline_after_intervals = 1e6
    service = Service(cfg)
    await service.start()
    assert service.collector is not None
    await asyncio.wait_for(service.collector.subscribed.wait(), 10)
    site = demo_site()
    simulation = FleetSimulator(
        site, demo_fleet(site.id), seed=3, faults=DEMO_FAULTS, start=last_local_noon(site.timezone)
    )
    stop = asyncio.Event()
    publisher = MqttFleetPublisher(simulation, client_id="dashboards-test-fleet")
    fleet = asyncio.create_task(publisher.run("127.0.0.1", mosquitto.port, speed=10, stop=stop))
    assert service.http_url is not None
    prom = Prometheus(tmp_path / "prometheus", service.http_url.removeprefix("http://"))
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            # A reject of each kind the pipeline panel plots.
            import paho.mqtt.publish as publish

            await asyncio.to_thread(
                publish.single, "gridsentry/demo/AC01/telemetry", b"{not json", qos=1, port=mosquitto.port
            )
            await wait_until(
                lambda: _has(prom.query(http, "sum(gridsentry_alerts_open) >= 2")),
                90,
                "the fault's alerts in Prometheus",
            )
            # An operator acknowledges one alert and closes the other, so every KPI of the standard is defined.
            operator = {t.role: t.token for t in cfg.auth.tokens}["operator"]
            assert operator is not None
            headers = {"authorization": f"Bearer {operator.get_secret_value()}"}
            open_alerts = (await http.get(f"{service.http_url}/api/alerts", headers=headers)).json()
            assert len(open_alerts) >= 2, open_alerts
            ack = await http.post(f"{service.http_url}/api/alerts/{open_alerts[0]['alert_id']}/ack", headers=headers)
            close = await http.post(
                f"{service.http_url}/api/alerts/{open_alerts[1]['alert_id']}/close", headers=headers
            )
            assert ack.status_code == 200 and close.status_code == 200, (ack.text, close.text)
            await wait_until(
                lambda: _has(prom.query(http, "gridsentry_alerts_kpi_mean_time_to_resolve_seconds")),
                30,
                "the KPIs after an acknowledgement and a close",
            )
            await wait_until(
                lambda: _has(prom.query(http, "device:gridsentry_inverter_efficiency:ratio")),
                30,
                "recording rules over daylight PV data",
            )
            await wait_until(
                lambda: _has(prom.query(http, "sum(rate(gridsentry_ingest_rejected_total[15s])) > 0")),
                30,
                "the reject in Prometheus",
            )
            await asyncio.sleep(3)  # a few more scrapes for rate() and the histograms

            failures: list[str] = []
            queries = dashboard_queries()
            assert len(queries) >= 60
            for uid, title, expr, instant in queries:
                concrete = substitute(expr)
                try:
                    result = await (prom.query(http, concrete) if instant else prom.query_range(http, concrete))
                except AssertionError as exc:
                    failures.append(f"{uid} / {title}: error {exc}")
                    continue
                if not result:
                    failures.append(f"{uid} / {title}: no data for {concrete}")
            for uid, name, query in variable_queries():
                m = re.fullmatch(r"label_values\((.+), (\w+)\)", query)
                assert m, query
                r = await http.get(
                    f"{prom.url}/api/v1/label/{m.group(2)}/values", params={"match[]": substitute(m.group(1))}
                )
                if not r.json().get("data"):
                    failures.append(f"{uid} variable {name}: no values for {query}")
            assert not failures, "\n".join(failures)

            # The scrape itself passes promtool's lint.
            body = (await http.get(f"{service.http_url}/metrics")).text
            check = await asyncio.to_thread(
                subprocess.run, [PROMTOOL, "check", "metrics"], input=body, capture_output=True, text=True
            )
            assert check.returncode == 0 and not (check.stdout + check.stderr).strip(), check.stdout + check.stderr
            assert 'gridsentry_device_state{site="demo",kind="charger_dc",device="DC02",state="alarm"} 1' in body
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(fleet, 10)
        prom.stop()
        await service.stop()


async def _has(coro) -> bool:
    return bool(await coro)
