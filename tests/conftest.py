"""Shared fixtures: a real mosquitto on loopback, free ports, service configs."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# X3: the suite's secrets are sentinels; at the end no log line, captured output or service log may contain one.
SENTINELS = {
    "broker password": "SENTINEL-mqtt-pw-7f3a9c",
    "API token": "gst_SENTINEL-api-token-5b1e42",
    "webhook token": "SENTINEL-webhook-hmac-91d2",
    "SMTP password": "SENTINEL-smtp-pw-c44f",
}


class _EverythingLogged(logging.Handler):
    """Keeps every formatted log record of the session (with tracebacks) for the sentinel scan."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception:  # a record that cannot be formatted is not our concern here
            self.lines.append(str(record.msg))


_SESSION_LOG = _EverythingLogged()


def pytest_configure(config: pytest.Config) -> None:
    root = logging.getLogger()
    root.addHandler(_SESSION_LOG)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)


def sentinel_leaks(text: str) -> list[str]:
    return [what for what, value in SENTINELS.items() if value in text]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    leaks = [(line, sentinel_leaks(line)) for line in _SESSION_LOG.lines if sentinel_leaks(line)]
    basetemp = session.config._tmp_path_factory.getbasetemp() if hasattr(session.config, "_tmp_path_factory") else None  # type: ignore[attr-defined]
    if basetemp is not None and basetemp.exists():
        for path in basetemp.rglob("*.log"):
            text = path.read_text(encoding="utf-8", errors="replace")
            if sentinel_leaks(text):
                leaks.append((f"{path}", sentinel_leaks(text)))
    if leaks:
        for where, what in leaks[:20]:
            print(f"\nX3: secret ({', '.join(what)}) leaked into: {where[:300]}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


MOSQUITTO_CANDIDATES = ("mosquitto", "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mosquitto_path() -> str:
    for c in MOSQUITTO_CANDIDATES:
        found = shutil.which(c)
        if found:
            return found
    pytest.fail("mosquitto is not installed: run `make test` (it installs it) or `apt-get install mosquitto`")


@dataclass
class MosquittoBroker:
    """A real Debian mosquitto on 127.0.0.1 with persistence in a temp dir."""

    workdir: Path
    port: int = field(default_factory=free_port)
    extra: tuple[str, ...] = ()
    proc: subprocess.Popen[bytes] | None = None

    @property
    def conf(self) -> Path:
        return self.workdir / "mosquitto.conf"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(
            "\n".join(
                [
                    f"listener {self.port} 127.0.0.1",
                    "allow_anonymous true",
                    # Started as root, mosquitto would switch to its own user, which cannot reach a 0700 parent
                    # directory: persistence then fails with only a log line, and a restart loses every session.
                    *([] if os.geteuid() else ["user root"]),
                    "persistence true",
                    f"persistence_location {self.workdir}/",
                    "autosave_interval 1",
                    "max_inflight_messages 1000",
                    "max_queued_messages 0",
                    "log_dest stderr",
                    "log_type error",
                    *self.extra,
                    "",
                ]
            )
        )
        self.proc = subprocess.Popen([mosquitto_path(), "-c", str(self.conf)], stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                pytest.fail(f"mosquitto exited at start: {err}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        pytest.fail(f"mosquitto did not listen on {self.port}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[MosquittoBroker]:
    broker = MosquittoBroker(tmp_path / "mosquitto")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(params=["aiomqtt", "paho"])
def mqtt_client(request: pytest.FixtureRequest) -> str:
    """The collector's MQTT client library: tests that take this fixture run once with each."""
    return str(request.param)


def api_headers(data_dir: Path) -> dict[str, str]:
    """Authorization for the service's API: the admin token it writes for the CLI on this host."""
    token = (data_dir / "local.token").read_text(encoding="utf-8").strip()
    return {"authorization": f"Bearer {token}"}
