"""The command line as a user runs it: demo, sql (service running and stopped), config check."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import api_headers

pytestmark = pytest.mark.integration

GS = [sys.executable, "-m", "gridsentry.cli"]
ENV = {**os.environ, "COLUMNS": "200"}


def gs(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*GS, *args], capture_output=True, text=True, timeout=timeout, env=ENV)


def test_demo_runs_prints_banner_and_sql_works_live_and_stopped(tmp_path: Path):
    data = tmp_path / "data"
    proc = subprocess.Popen(
        [
            *GS,
            "demo",
            "--data-dir",
            str(data),
            "--http-port",
            "0",
            "--mqtt-port",
            "0",
            "--speed",
            "4",
            "--duration",
            "40",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        deadline = time.monotonic() + 60
        runtime = data / "runtime.json"
        while not runtime.exists():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the demo did not come up within 60 s"
            time.sleep(0.2)
        url = json.loads(runtime.read_text())["http_url"]
        # While it runs, `gridsentry sql` goes through the API and the count grows.
        counts = []
        for _ in range(2):
            r = gs("sql", "--data-dir", str(data), "--format", "json", "select count(*) as n from readings")
            assert r.returncode == 0, r.stderr
            counts.append(json.loads(r.stdout)[0]["n"])
            time.sleep(2)
        assert counts[1] > counts[0] > 0
        # The demo opens /metrics without a token; /api routes never answer without one.
        metrics = httpx.get(f"{url}/metrics").text
        assert httpx.get(f"{url}/api/alerts").status_code == 401
        assert "gridsentry_ingest_readings_total" in metrics
        # At 4x, the injected DC02 fault holds above 90 °C for 30 simulated seconds well within the run.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            alerts = httpx.get(f"{url}/api/alerts", headers=api_headers(data)).json()
            if {a["event_class"] for a in alerts} >= {"I", "II"}:
                break
            time.sleep(0.5)
        assert {(a["device_id"], a["event_class"]) for a in alerts} == {("DC02", "I"), ("DC02", "II")}
        # The demo has a duty roster: `oncall now` asks the running service who is paged.
        r = gs("oncall", "now", "--data-dir", str(data))
        assert r.returncode == 0 and "on-call engineer" in r.stdout and "Chen Jie" in r.stdout, r.stdout + r.stderr
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    for needle in (
        "HTTP API",
        "Token: operator",
        "gst_",
        "/metrics",
        "Database",
        "gridsentry.duckdb",
        "gridsentry sql",
        "On call",
        "demo stopped",
    ):
        assert needle in out, needle
    assert not runtime.exists()
    # With the service stopped, the file is opened read-only.
    r = gs(
        "sql",
        "--data-dir",
        str(data),
        "--format",
        "csv",
        "select device_id, event_class from alerts order by event_class",
    )
    assert r.returncode == 0, r.stderr
    # Distinct classes: the gun over 90 °C (I) and 80 °C (II); the pile's own HighTemperature error code may add
    # a second class I alert (rule E1) when the pin passes 100 °C within the run.
    lines = r.stdout.splitlines()
    assert lines[0] == "device_id,event_class" and sorted(set(lines[1:])) == ["DC02,I", "DC02,II"]
    r = gs("sql", "--data-dir", str(data), "drop table readings")
    assert r.returncode == 2 and "only read statements" in r.stderr
    r = gs("sql", "--data-dir", str(data), "select count(*) from readings")
    assert r.returncode == 0 and "count_star()" in r.stdout


def test_sql_without_database_explains(tmp_path: Path):
    r = gs("sql", "--data-dir", str(tmp_path), "select 1")
    assert r.returncode == 2 and "no database" in r.stderr


def test_config_check(tmp_path: Path):
    good = Path(__file__).parents[2] / "deploy" / "gridsentry.example.yaml"
    r = subprocess.run(
        [*GS, "config", "check", str(good)],
        capture_output=True,
        text=True,
        env={**ENV, "GRIDSENTRY_MQTT_PASSWORD": "x"},
    )
    assert r.returncode == 0 and "is valid" in r.stdout, r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("http:\n  port: -1\nmqtt:\n  hots: x\n")
    r = gs("config", "check", str(bad))
    assert r.returncode == 1
    assert "line 2: http.port" in r.stderr and "line 4: mqtt.hots" in r.stderr


def test_run_with_broken_config_says_why(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("storage: {threads: zero}\n")
    r = gs("run", "--config", str(bad))
    assert r.returncode == 2 and "storage.threads" in r.stderr
