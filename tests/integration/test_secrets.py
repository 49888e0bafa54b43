"""X3: secrets never leak into logs, /metrics, HTTP error bodies, audit rows, config errors or dumps.

The broker password, API token, webhook token and SMTP password are the suite's sentinels (tests/conftest.py);
besides the checks here, the whole session's log is scanned for them at the end.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from gridsentry.config import ConfigError, load_config
from gridsentry.service import Service
from tests.conftest import SENTINELS, MosquittoBroker, free_port, sentinel_leaks

pytestmark = pytest.mark.integration

ENV = {
    "GS_MQTT_PASSWORD": SENTINELS["broker password"],
    "GS_API_TOKEN": SENTINELS["API token"],
    "GS_WEBHOOK_TOKEN": SENTINELS["webhook token"],
    "GS_SMTP_PASSWORD": SENTINELS["SMTP password"],
}


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)


@pytest.fixture
def password_broker(tmp_path_factory: pytest.TempPathFactory) -> MosquittoBroker:
    import shutil
    import tempfile

    # mosquitto started as root drops privileges and must reach the password file: not under pytest's 0700 tmp.
    workdir = Path(tempfile.mkdtemp(prefix="gridsentry-secrets-"))
    workdir.chmod(0o755)
    passwd = workdir / "passwd"
    subprocess.run(
        ["mosquitto_passwd", "-c", "-b", str(passwd), "gridsentry", SENTINELS["broker password"]],
        check=True,
        capture_output=True,
        timeout=30,
    )
    passwd.chmod(0o644)
    broker = MosquittoBroker(workdir / "broker", extra=(f"password_file {passwd}",))
    broker.start()
    broker.conf.write_text(broker.conf.read_text().replace("allow_anonymous true", "allow_anonymous false"))
    broker.stop()
    broker.start()
    yield broker  # type: ignore[misc]
    broker.stop()
    shutil.rmtree(workdir, ignore_errors=True)


def config_text(data_dir: Path, mqtt_port: int, password_ref: str = "${GS_MQTT_PASSWORD}") -> str:
    return f"""
data_dir: {data_dir}
http: {{port: {free_port()}}}
auth:
  tokens:
    - {{name: ops-bot, role: admin, token: "${{GS_API_TOKEN}}"}}
mqtt:
  port: {mqtt_port}
  username: gridsentry
  password: "{password_ref}"
  keepalive_s: 5
  reconnect_min_s: 0.2
  reconnect_max_s: 0.5
devices:
  - {{id: DC01, site: s1, kind: charger_dc}}
"""


async def test_no_secret_leaks_anywhere(
    tmp_path: Path, secret_env: None, password_broker: MosquittoBroker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    path = tmp_path / "gridsentry.yaml"
    path.write_text(config_text(tmp_path / "data", password_broker.port))
    cfg = load_config(path)
    # Dumps of the loaded config hide every secret.
    for dump in (repr(cfg), str(cfg), cfg.model_dump_json(), str(cfg.model_dump())):
        assert not sentinel_leaks(dump), dump[:500]
    service = Service(cfg)
    await service.start()
    exposed: list[str] = []
    try:
        assert service.collector is not None
        await asyncio.wait_for(service.collector.subscribed.wait(), 10)  # the password worked
        token = SENTINELS["API token"]
        good = {"authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=service.http_url, timeout=30) as http:
            exposed.append((await http.get("/metrics", headers=good)).text)
            exposed.append((await http.get("/readyz", headers=good)).text)
            # Error bodies: a secret sent where it does not belong is not echoed back.
            for r in (
                await http.post("/api/sql", json={"query": 5, "secret": SENTINELS["webhook token"]}, headers=good),
                await http.post("/api/sql", json={"query": "drop table readings"}, headers=good),
                await http.get("/api/devices", headers={"authorization": f"Bearer {SENTINELS['webhook token']}"}),
                await http.post("/api/alerts/1/ack", json={"actor": 7}, headers=good),
                await http.get("/api/alerts/not-a-number", headers=good),
            ):
                assert r.status_code >= 400
                exposed.append(r.text)
            for _ in range(100):
                audit = await http.post("/api/sql", json={"query": "select * from audit_log"}, headers=good)
                if len(audit.json()["rows"]) >= 3:
                    break
                await asyncio.sleep(0.05)
            exposed.append(audit.text)
            exposed.append(str(service.app.openapi()))
        exposed.append((tmp_path / "data" / "runtime.json").read_text())
    finally:
        await service.stop()
    exposed.extend(r.getMessage() + (r.exc_text or "") for r in caplog.records)
    for text in exposed:
        assert not sentinel_leaks(text), text[:500]


async def test_a_wrong_password_is_logged_without_it(
    tmp_path: Path, password_broker: MosquittoBroker, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("GS_WRONG", SENTINELS["webhook token"])
    monkeypatch.setenv("GS_API_TOKEN", SENTINELS["API token"])
    path = tmp_path / "gridsentry.yaml"
    path.write_text(config_text(tmp_path / "data", password_broker.port, "${GS_WRONG}"))
    service = Service(load_config(path))
    await service.start()
    try:
        for _ in range(100):
            if any("refused" in r.getMessage() or "not authori" in r.getMessage().lower() for r in caplog.records):
                break
            await asyncio.sleep(0.1)
    finally:
        await service.stop()
    messages = [r.getMessage() + (r.exc_text or "") for r in caplog.records]
    assert any("refused" in m or "not authori" in m.lower() for m in messages), "the refusal was not logged"
    for m in messages:
        assert not sentinel_leaks(m), m


def test_config_errors_do_not_echo_secrets(tmp_path: Path, secret_env: None) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        """
mqtt:
  password: ${GS_MQTT_PASSWORD}
  port: ${GS_SMTP_PASSWORD}
auth:
  tokens:
    - {name: a, role: viewer, sha256: "${GS_API_TOKEN}"}
    - {name: b, role: viewer, token: "${GS_WEBHOOK_TOKEN}", file: /nonexistent}
"""
    )
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert len(err.value.issues) >= 3
    assert not sentinel_leaks(str(err.value)), str(err.value)
    out = subprocess.run(
        [sys.executable, "-m", "gridsentry.cli", "config", "check", str(path)],
        capture_output=True,
        text=True,
        env={**ENV, "PATH": "/usr/bin:/bin", "COLUMNS": "200"},
        check=False,
    )
    assert out.returncode == 1
    assert "auth.tokens[0].sha256" in out.stdout + out.stderr
    assert not sentinel_leaks(out.stdout + out.stderr)
