"""Shared fixtures: a real mosquitto on loopback, free ports, service configs."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

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
