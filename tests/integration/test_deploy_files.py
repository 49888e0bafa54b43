"""The deployment files are valid for the real tools that read them, and agree with each other.

Checked with the real programs where Debian has them (no Docker engine needed):
- docker-compose.yml with Debian's docker-compose 1.29.2 (`config -q`),
- deploy/mosquitto.conf and deploy/mosquitto.acl by starting Debian's mosquitto 2.0.11 on them and
  connecting as the collector and as a device,
- deploy/prometheus.yml with promtool and deploy/alertmanager.yml with amtool, when installed,
- deploy/gridsentry.service with systemd-analyze verify, when installed,
- deploy/gridsentry.compose.yaml with GridSentry's own config loader,
- the Dockerfile's HEALTHCHECK command against a throwaway HTTP server.
"""

from __future__ import annotations

import configparser
import contextlib
import http.server
import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from tests.conftest import SENTINELS

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
DEPLOY = REPO / "deploy"
MOSQUITTO_CONF = DEPLOY / "mosquitto.conf"
MOSQUITTO_ACL = DEPLOY / "mosquitto.acl"
PROMETHEUS_YML = DEPLOY / "prometheus.yml"
ALERTMANAGER_YML = DEPLOY / "alertmanager.yml"
SERVICE_CONFIG = DEPLOY / "gridsentry.compose.yaml"
SYSTEMD_UNIT = DEPLOY / "gridsentry.service"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
GRAFANA_DATASOURCE = REPO / "dashboards" / "provisioning" / "datasources" / "prometheus.yaml"
GRAFANA_DASHBOARDS = REPO / "dashboards" / "provisioning" / "dashboards" / "gridsentry.yaml"

DOCKER_COMPOSE = Path("/usr/bin/docker-compose")
MOSQUITTO = Path("/usr/sbin/mosquitto")
MOSQUITTO_PASSWD = Path("/usr/bin/mosquitto_passwd")
PROMTOOL = Path("/usr/bin/promtool")
AMTOOL = Path("/usr/bin/amtool")

SERVICES = {"gridsentry", "mosquitto", "prometheus", "alertmanager", "grafana"}


def _require(tool: Path, package: str) -> None:
    """The test-suite installer provides these tools; a missing one is a broken setup, not a skip."""
    if not tool.exists():
        pytest.fail(f"{tool} is missing: install it with `apt-get install {package}`", pytrace=False)


def _load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = _load_yaml(COMPOSE_FILE)
    assert isinstance(data, dict)
    return data


def _volume_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, target) for every volume of a service, short or long syntax."""
    out = []
    for v in service.get("volumes", []):
        if isinstance(v, dict):
            out.append((str(v.get("source", "")), str(v["target"])))
        else:
            source, target = str(v).split(":")[:2]
            out.append((source, target))
    return out


def _is_host_path(source: str) -> bool:
    return source.startswith((".", "/", "~"))


def _host_mounts(compose: dict[str, Any], service: str) -> dict[Path, str]:
    """Host path (resolved against the repo) -> container path, for the bind mounts of a service."""
    return {
        (REPO / source).resolve(): target
        for source, target in _volume_mounts(compose["services"][service])
        if _is_host_path(source)
    }


def _mount_target(compose: dict[str, Any], service: str, host_path: Path) -> str:
    mounts = _host_mounts(compose, service)
    assert host_path.resolve() in mounts, f"{service} does not mount {host_path.relative_to(REPO)}"
    return mounts[host_path.resolve()]


def _container_ports(service: dict[str, Any]) -> set[int]:
    ports = set()
    for p in service.get("ports", []):
        target = p["target"] if isinstance(p, dict) else str(p).rsplit(":", 1)[-1].split("/")[0]
        ports.add(int(target))
    return ports


# --- docker-compose.yml -----------------------------------------------------------------------


def test_docker_compose_accepts_the_file() -> None:
    _require(DOCKER_COMPOSE, "docker-compose")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_"))}
    proc = subprocess.run(
        [str(DOCKER_COMPOSE), "-f", str(COMPOSE_FILE), "config", "-q"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"docker-compose config -q failed:\n{proc.stdout}\n{proc.stderr}"
    # Unset variables without a default come out as warnings, not errors: there must be none.
    assert "is not set" not in proc.stderr, proc.stderr


def test_compose_avoids_keys_docker_compose_1_29_rejects(compose: dict[str, Any]) -> None:
    assert str(compose.get("version")) == "3.8"
    assert "name" not in compose
    for name, service in compose["services"].items():
        assert "start_interval" not in (service.get("healthcheck") or {}), name
        depends = service.get("depends_on") or []
        if isinstance(depends, dict):
            for target, spec in depends.items():
                assert "required" not in (spec or {}), f"{name}.depends_on.{target}"


def test_compose_has_the_five_services(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) >= SERVICES


def test_every_host_path_compose_mounts_exists(compose: dict[str, Any]) -> None:
    declared_volumes = set(compose.get("volumes") or {})
    checked = 0
    for name, service in compose["services"].items():
        for source, target in _volume_mounts(service):
            if _is_host_path(source):
                host = (REPO / source).resolve()
                assert host.is_relative_to(REPO), f"{name} mounts {source}, outside the repository"
                assert host.exists(), f"{name} mounts {source} -> {target}, which does not exist"
                checked += 1
            else:
                assert source in declared_volumes, f"{name} uses volume {source!r}, not declared"
        if "build" in service:
            build = service["build"]
            context = REPO / (build if isinstance(build, str) else build.get("context", "."))
            dockerfile = build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile"
            assert (context / dockerfile).is_file(), f"{name} builds from a missing {dockerfile}"
    assert checked >= 8


def test_every_published_port_binds_loopback(compose: dict[str, Any]) -> None:
    published = 0
    for name, service in compose["services"].items():
        assert service.get("network_mode") != "host", name
        for p in service.get("ports", []):
            if isinstance(p, dict):
                host_ip = p.get("host_ip")
            else:
                parts = str(p).split(":")
                host_ip = parts[0] if len(parts) == 3 else None
            assert host_ip == "127.0.0.1", f"{name} publishes {p!r} beyond loopback"
            published += 1
    assert published >= len(SERVICES)


def test_images_are_pinned(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if "build" in service:
            continue
        image = service["image"]
        if "@sha256:" in image:
            continue
        last = image.rsplit("/", 1)[-1]
        assert ":" in last, f"{name}: image {image} has no tag"
        tag = last.split(":", 1)[1]
        assert tag and tag != "latest", f"{name}: image {image} is not pinned"
        assert re.search(r"\d", tag), f"{name}: tag {tag!r} names no version"


def test_service_config_used_by_compose_is_valid_and_matches(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Imported here so that a broken config module fails this test only, not the whole file.
    from gridsentry.config import parse_config

    monkeypatch.setenv("GRIDSENTRY_MQTT_PASSWORD", "s3cret")
    cfg = parse_config(SERVICE_CONFIG.read_text(encoding="utf-8"), SERVICE_CONFIG)
    services = compose["services"]
    assert _mount_target(compose, "gridsentry", SERVICE_CONFIG) == "/etc/gridsentry/gridsentry.yaml"
    # Reachable from the other containers, on the port compose publishes.
    assert cfg.http.host == "0.0.0.0"
    assert cfg.http.port in _container_ports(services["gridsentry"])
    # The broker is the compose service, on the port its config listens on.
    assert cfg.mqtt.host == "mosquitto"
    assert cfg.mqtt.port in _container_ports(services["mosquitto"])
    assert cfg.mqtt.username == "gridsentry"
    assert cfg.mqtt.password is not None
    assert cfg.mqtt.password.get_secret_value() == "s3cret", "the password must come from the environment"
    assert "GRIDSENTRY_MQTT_PASSWORD" in (services["gridsentry"].get("environment") or {})
    # The database lands on the data volume.
    assert str(cfg.data_dir) == "/var/lib/gridsentry"
    assert cfg.database_path.is_relative_to("/var/lib/gridsentry")
    assert any(t == "/var/lib/gridsentry" for _, t in _volume_mounts(services["gridsentry"]))
    # Its session must not outlive the broker's cap on abandoned sessions (14d).
    assert cfg.mqtt.session_expiry_s <= 14 * 86400


# --- mosquitto --------------------------------------------------------------------------------


def _mosquitto_directives(text: str) -> list[tuple[str, str]]:
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition(" ")
        out.append((key, value.strip()))
    return out


@pytest.fixture(scope="module")
def mosquitto_conf() -> dict[str, list[str]]:
    conf: dict[str, list[str]] = {}
    for key, value in _mosquitto_directives(MOSQUITTO_CONF.read_text(encoding="utf-8")):
        conf.setdefault(key, []).append(value)
    return conf


def _one(conf: dict[str, list[str]], key: str) -> str:
    assert key in conf, f"mosquitto.conf does not set {key}"
    assert len(conf[key]) == 1, f"mosquitto.conf sets {key} more than once"
    return conf[key][0]


def test_mosquitto_conf_keeps_what_it_queues(mosquitto_conf: dict[str, list[str]]) -> None:
    assert _one(mosquitto_conf, "persistence") == "true"
    # Mosquitto appends persistence_file to this string as it is, so it needs the trailing slash.
    assert _one(mosquitto_conf, "persistence_location").endswith("/")
    assert 1 <= int(_one(mosquitto_conf, "autosave_interval")) <= 5
    assert _one(mosquitto_conf, "autosave_on_changes") in {"true", "false"}
    queued = int(_one(mosquitto_conf, "max_queued_messages"))
    assert queued == 0 or queued > 1000, "the default of 1000 drops queued readings silently"
    assert int(_one(mosquitto_conf, "max_queued_bytes")) > 0, "the queue needs a memory/disk budget"
    # At least one flush window of manual acks (the default 20 throttles ingest to ~200 msg/s).
    assert int(_one(mosquitto_conf, "max_inflight_messages")) >= 100
    assert re.fullmatch(r"\d+[hdwmy]", _one(mosquitto_conf, "persistent_client_expiration"))
    assert _one(mosquitto_conf, "persistent_client_expiration") == "14d"


def test_mosquitto_conf_requires_accounts(mosquitto_conf: dict[str, list[str]]) -> None:
    assert _one(mosquitto_conf, "allow_anonymous") == "false"
    assert _one(mosquitto_conf, "password_file")
    assert _one(mosquitto_conf, "acl_file")
    assert mosquitto_conf.get("per_listener_settings", ["false"]) == ["false"]
    assert mosquitto_conf["listener"] == ["1883"]


def test_mosquitto_paths_match_the_compose_mounts(
    compose: dict[str, Any], mosquitto_conf: dict[str, list[str]]
) -> None:
    mosq = compose["services"]["mosquitto"]
    assert _mount_target(compose, "mosquitto", MOSQUITTO_CONF) == "/mosquitto/config/mosquitto.conf"
    assert _mount_target(compose, "mosquitto", MOSQUITTO_ACL) == _one(mosquitto_conf, "acl_file")
    named = {t.rstrip("/") for s, t in _volume_mounts(mosq) if not _is_host_path(s)}
    assert _one(mosquitto_conf, "persistence_location").rstrip("/") in named
    assert str(Path(_one(mosquitto_conf, "password_file")).parent) in named
    assert 1883 in _container_ports(mosq)
    command = "\n".join(mosq.get("command") or [])
    assert _one(mosquitto_conf, "password_file") in command
    assert "mosquitto_passwd" in command


def test_mosquitto_acl_confines_devices_to_their_own_topics() -> None:
    lines = [ln.split() for ln in MOSQUITTO_ACL.read_text(encoding="utf-8").splitlines()]
    lines = [ln for ln in lines if ln and not ln[0].startswith("#")]
    assert ["user", "gridsentry"] in lines
    after_user = lines[lines.index(["user", "gridsentry"]) + 1 :]
    assert ["topic", "read", "gridsentry/#"] in after_user
    assert ["pattern", "write", "gridsentry/+/%u/#"] in lines
    # No blanket grants: every topic line is for a named user, and nothing grants write to "#".
    first_user = next(i for i, ln in enumerate(lines) if ln[0] == "user")
    assert not [ln for ln in lines[:first_user] if ln[0] == "topic"], "anonymous grants"
    assert not [ln for ln in lines if ln[-1] == "#" and ln[0] in {"topic", "pattern"} and ln[1] != "read"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)


class _Client:
    """A small synchronous MQTT v5 client for the broker test."""

    def __init__(self, port: int, client_id: str, username: str | None, password: str | None) -> None:
        self.connack = threading.Event()
        self.reason: ReasonCode | None = None
        self.messages: list[tuple[str, bytes]] = []
        self.got_message = threading.Event()
        self.pubacks: dict[int, ReasonCode] = {}
        self.acked = threading.Condition()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        assert self.connack.wait(5), f"{client_id}: no CONNACK"

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: ReasonCode, props: Any) -> None:
        self.reason = reason
        self.connack.set()

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.messages.append((msg.topic, bytes(msg.payload)))
        self.got_message.set()

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: ReasonCode, props: Properties) -> None:
        with self.acked:
            self.pubacks[mid] = reason
            self.acked.notify_all()

    @property
    def refused(self) -> bool:
        assert self.reason is not None
        return bool(self.reason.is_failure)

    def publish(self, topic: str, payload: bytes) -> ReasonCode:
        info = self.client.publish(topic, payload, qos=1)
        with self.acked:
            assert self.acked.wait_for(lambda: info.mid in self.pubacks, 5), f"no PUBACK for {topic}"
            return self.pubacks[info.mid]

    def subscribe(self, topic: str) -> None:
        done = threading.Event()
        granted: list[Any] = []

        def on_subscribe(client: Any, userdata: Any, mid: int, codes: list[Any], props: Any) -> None:
            granted.extend(codes)
            done.set()

        self.client.on_subscribe = on_subscribe
        self.client.subscribe(topic, qos=1)
        assert done.wait(5), f"no SUBACK for {topic}"
        assert not granted[0].is_failure, f"subscription to {topic} refused: {granted[0]}"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def shipped_broker() -> Iterator[tuple[int, Path, Path]]:
    """Debian's mosquitto on deploy/mosquitto.conf, with only paths and the port rewritten.

    Yields (port, state directory, log file). Accounts: gridsentry/SENTINEL-mqtt-pw-7f3a9c and
    ev-dc-0001/device-pw, made with the real mosquitto_passwd.
    """
    _require(MOSQUITTO, "mosquitto")
    _require(MOSQUITTO_PASSWD, "mosquitto")
    # Not under pytest's tmp_path: its parents are 0700, and mosquitto started as root drops to
    # the mosquitto user, which must reach these files (as in production).
    with tempfile.TemporaryDirectory(prefix="gridsentry-mosquitto-") as tmp:
        root = Path(tmp)
        data = root / "data"
        data.mkdir()
        passwd = root / "passwd"
        acl = root / "mosquitto.acl"
        shutil.copyfile(MOSQUITTO_ACL, acl)
        for args in (
            ["-c", str(passwd), "gridsentry", SENTINELS["broker password"]],
            [str(passwd), "ev-dc-0001", "device-pw"],
        ):
            subprocess.run([str(MOSQUITTO_PASSWD), "-b", *args], check=True, capture_output=True, timeout=30)
        port = _free_port()
        rewrites = {
            "listener": f"{port} 127.0.0.1",
            "persistence_location": f"{data}/",
            "password_file": str(passwd),
            "acl_file": str(acl),
        }
        lines = []
        for raw in MOSQUITTO_CONF.read_text(encoding="utf-8").splitlines():
            key = raw.strip().split(" ", 1)[0]
            lines.append(f"{key} {rewrites[key]}" if key in rewrites and not raw.startswith("#") else raw)
        conf = root / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n", encoding="utf-8")
        if os.geteuid() == 0:
            user = pwd.getpwnam("mosquitto")
            for p in (root, data, passwd, acl, conf):
                os.chown(p, user.pw_uid, user.pw_gid)
        log = root / "broker.log"
        with log.open("wb") as out:
            proc = subprocess.Popen([str(MOSQUITTO), "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT)
        try:
            _wait_listening(port, proc)
            time.sleep(1.0)
            assert proc.poll() is None, (
                f"mosquitto exited ({proc.returncode}) on the shipped config:\n{log.read_text(errors='replace')}"
            )
            yield port, data, log
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        assert proc.returncode == 0, log.read_text(errors="replace")
        assert (data / "mosquitto.db").is_file(), "no database written at shutdown"


def test_real_mosquitto_runs_the_shipped_config(shipped_broker: tuple[int, Path, Path]) -> None:
    port, data, log = shipped_broker
    with socket.create_connection(("127.0.0.1", port), timeout=2):
        pass
    # autosave_interval is in seconds: the snapshot appears without a shutdown.
    deadline = time.monotonic() + 6
    while not (data / "mosquitto.db").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert (data / "mosquitto.db").is_file(), "persistence is on but no autosave happened within 6 s"
    text = log.read_text(errors="replace")
    assert "Error" not in text, text
    assert "Unknown configuration variable" not in text, text


def test_real_mosquitto_enforces_accounts_and_acl(shipped_broker: tuple[int, Path, Path]) -> None:
    port, _, _ = shipped_broker
    anonymous = _Client(port, "anon", None, None)
    wrong = _Client(port, "wrong-pw", "gridsentry", "not-the-password")
    try:
        assert anonymous.refused, "anonymous clients must be refused"
        assert wrong.refused, "a wrong password must be refused"
    finally:
        anonymous.close()
        wrong.close()

    collector = _Client(port, "gridsentry-collector", "gridsentry", SENTINELS["broker password"])
    device = _Client(port, "ev-dc-0001", "ev-dc-0001", "device-pw")
    try:
        assert not collector.refused
        assert not device.refused
        collector.subscribe("gridsentry/#")
        # A device may not publish as its neighbour; the broker answers "not authorized".
        forged = device.publish("gridsentry/site-a/ev-dc-0002/telemetry", b'{"power_kw": 1}')
        assert forged.value == 0x87, f"forged topic was not refused: {forged}"
        own = device.publish("gridsentry/site-a/ev-dc-0001/telemetry", b'{"power_kw": 42}')
        assert not own.is_failure, own
        assert collector.got_message.wait(5), "the collector did not receive the device's reading"
        # Same publisher, same subscriber: had the forged one got through, it would have come first.
        assert collector.messages == [("gridsentry/site-a/ev-dc-0001/telemetry", b'{"power_kw": 42}')]
        # The collector reads only.
        assert collector.publish("gridsentry/site-a/ev-dc-0001/telemetry", b"{}").value == 0x87
    finally:
        collector.close()
        device.close()


# --- Prometheus and Alertmanager ---------------------------------------------------------------


def test_prometheus_config() -> None:
    if PROMTOOL.exists():
        proc = subprocess.run(
            [str(PROMTOOL), "check", "config", str(PROMETHEUS_YML)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
    cfg = _load_yaml(PROMETHEUS_YML)
    jobs = {job["job_name"]: job for job in cfg["scrape_configs"]}
    job = jobs["gridsentry"]
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == ["gridsentry:8080"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert job.get("scrape_interval", cfg["global"]["scrape_interval"]) == "15s"
    alertmanagers = [t for am in cfg["alerting"]["alertmanagers"] for sc in am["static_configs"] for t in sc["targets"]]
    assert alertmanagers == ["alertmanager:9093"]
    # The dashboards' recording rules, beside this file (promtool above loads and checks them too).
    assert cfg["rule_files"] == ["prometheus-rules.yml"]


def test_prometheus_and_alertmanager_match_compose(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert _mount_target(compose, "prometheus", PROMETHEUS_YML) == "/etc/prometheus/prometheus.yml"
    assert (
        _mount_target(compose, "prometheus", DEPLOY / "prometheus-rules.yml") == "/etc/prometheus/prometheus-rules.yml"
    )
    assert _mount_target(compose, "alertmanager", ALERTMANAGER_YML) == "/etc/alertmanager/alertmanager.yml"
    assert 8080 in _container_ports(services["gridsentry"])
    assert 9093 in _container_ports(services["alertmanager"])
    assert 9090 in _container_ports(services["prometheus"])


def test_alertmanager_config() -> None:
    if AMTOOL.exists():
        proc = subprocess.run(
            [str(AMTOOL), "check-config", str(ALERTMANAGER_YML)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
    cfg = _load_yaml(ALERTMANAGER_YML)
    receivers = {r["name"]: r for r in cfg["receivers"]}
    assert cfg["route"]["receiver"] in receivers
    # The shipped receiver sends nothing anywhere until a team configures one.
    assert set(receivers[cfg["route"]["receiver"]]) == {"name"}


# --- Grafana provisioning ------------------------------------------------------------------


def test_grafana_provisioning(compose: dict[str, Any]) -> None:
    ds = _load_yaml(GRAFANA_DATASOURCE)
    assert ds["apiVersion"] == 1
    (prom,) = ds["datasources"]
    assert prom["uid"] == "prometheus"
    assert prom["type"] == "prometheus"
    assert prom["url"] == "http://prometheus:9090"

    dash = _load_yaml(GRAFANA_DASHBOARDS)
    (provider,) = dash["providers"]
    assert provider["type"] == "file"
    assert provider["folder"] == "GridSentry"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"

    assert _mount_target(compose, "grafana", GRAFANA_DATASOURCE.parent) == "/etc/grafana/provisioning/datasources"
    assert _mount_target(compose, "grafana", GRAFANA_DASHBOARDS.parent) == "/etc/grafana/provisioning/dashboards"
    assert _mount_target(compose, "grafana", REPO / "dashboards" / "json") == provider["options"]["path"]
    env = compose["services"]["grafana"]["environment"]
    assert str(env["GF_AUTH_ANONYMOUS_ENABLED"]).endswith(":-false}"), "anonymous access must be off by default"


# --- Dockerfile ------------------------------------------------------------------------------


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text(encoding="utf-8")
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for raw in joined.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile() -> None:
    instructions = _dockerfile_instructions()
    args = dict(a.split("=", 1) for k, a in instructions if k == "ARG" and "=" in a)
    froms = [re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], a).split()[0] for k, a in instructions if k == "FROM"]
    assert froms, "no FROM"
    assert all(f.startswith("python:3.11-slim") for f in froms), froms
    final = instructions[max(i for i, (k, _) in enumerate(instructions) if k == "FROM") :]
    users = [a for k, a in final if k == "USER"]
    assert users, "the runtime stage runs as root"
    assert users[-1].split(":")[0] not in {"root", "0"}
    assert any(k == "RUN" and "pip install --no-cache-dir ." in a for k, a in instructions)
    assert ("EXPOSE", "8080") in final
    volumes = [a for k, a in final if k == "VOLUME"]
    assert any("/var/lib/gridsentry" in v for v in volumes)
    cmd = [a for k, a in final if k == "CMD"]
    assert [json.loads(c) for c in cmd] == [["gridsentry", "run", "--config", "/etc/gridsentry/gridsentry.yaml"]]
    (healthcheck,) = [a for k, a in final if k == "HEALTHCHECK"]
    assert "/healthz" in healthcheck


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/healthz" else 503)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


def test_dockerfile_healthcheck_command_works() -> None:
    """Run the HEALTHCHECK's command (python only, no curl in slim) against a local server."""
    (healthcheck,) = [a for k, a in _dockerfile_instructions() if k == "HEALTHCHECK"]
    argv = json.loads(healthcheck.split(" CMD ", 1)[1])
    assert argv[0] == "python"
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        results = {}
        for path in ("/healthz", "/broken"):
            env = {**os.environ, "GRIDSENTRY_HEALTH_URL": base + path}
            proc = subprocess.run([sys.executable, *argv[1:]], env=env, capture_output=True, timeout=30, check=False)
            results[path] = proc.returncode
        assert results == {"/healthz": 0, "/broken": 1}
    finally:
        server.shutdown()
        server.server_close()


def test_dockerignore_keeps_local_state_out_and_sources_in() -> None:
    patterns = {
        ln.strip()
        for ln in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if ln.strip() and not ln.startswith("#")
    }
    assert {".venv", ".git", "data"} <= patterns
    assert any("__pycache__" in p for p in patterns)
    assert any("cache" in p and "__" not in p for p in patterns)
    for needed in ("pyproject.toml", "gridsentry", "collector", "storage", "rules", "alerts", "simulator"):
        assert needed not in patterns, f".dockerignore drops {needed}, which the image build needs"
    assert not {"*", "**"} & patterns


# --- systemd -----------------------------------------------------------------------------------


def test_systemd_unit() -> None:
    parser = configparser.ConfigParser(strict=False, interpolation=None, empty_lines_in_values=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(SYSTEMD_UNIT.read_text(encoding="utf-8"))
    svc = parser["Service"]
    assert svc["User"] == "gridsentry"
    assert svc["ExecStart"] == "/opt/gridsentry/.venv/bin/gridsentry run --config /etc/gridsentry/gridsentry.yaml"
    assert svc["Restart"] == "on-failure"
    assert svc["NoNewPrivileges"] == "true"
    assert svc["ProtectSystem"] == "strict"
    assert "/var/lib/gridsentry" in svc["ReadWritePaths"].split()
    assert svc["PrivateTmp"] == "true"
    assert parser["Install"]["WantedBy"] == "multi-user.target"

    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        return
    # verify insists that ExecStart's program exists; point it at /bin/true and keep the rest.
    with tempfile.TemporaryDirectory() as tmp:
        unit = Path(tmp) / "gridsentry.service"
        unit.write_text(
            SYSTEMD_UNIT.read_text(encoding="utf-8").replace(
                "ExecStart=/opt/gridsentry/.venv/bin/gridsentry ", "ExecStart=/bin/true "
            ),
            encoding="utf-8",
        )
        proc = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "ignoring" not in out and "Unknown" not in out and "Failed" not in out, out


async def test_gridsentry_ingests_through_the_shipped_broker_with_its_account(
    shipped_broker: tuple[int, Path, Path], tmp_path: Path
) -> None:
    """The shipped mosquitto.conf and ACL in use: the collector logs in as `gridsentry`, a device as itself."""
    import asyncio

    import paho.mqtt.client as paho

    from collector.settings import MqttConfig
    from gridsentry.config import Config, DeviceConfig, HttpConfig
    from gridsentry.service import Service

    port, _, _ = shipped_broker
    cfg = Config(
        data_dir=tmp_path / "data",
        http=HttpConfig(port=0),
        mqtt=MqttConfig(port=port, username="gridsentry", password=SENTINELS["broker password"]),  # type: ignore[arg-type]
        devices=[DeviceConfig(id="ev-dc-0001", site="s1", kind="charger_dc")],
    )
    service = Service(cfg)
    await service.start()
    try:
        assert service.collector is not None
        await asyncio.wait_for(service.collector.subscribed.wait(), 10)
        device = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="ev-dc-0001")
        device.username_pw_set("ev-dc-0001", "device-pw")
        device.connect("127.0.0.1", port)
        device.loop_start()
        infos = [
            device.publish(
                "gridsentry/s1/ev-dc-0001/telemetry",
                f'{{"ts": {1_763_880_000 + i}, "seq": {i + 1}, "metrics": {{"gun1_temp_c": 41.5}}}}',
                qos=1,
            )
            for i in range(200)
        ]
        for info in infos:
            await asyncio.to_thread(info.wait_for_publish, 10)
        device.loop_stop()
        device.disconnect()
        deadline = time.monotonic() + 20
        while service.readings_committed["mqtt"] < 200 and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        assert service.readings_committed["mqtt"] == 200
        assert service.collector_stats.connection_failures == 0
    finally:
        await service.stop()
