"""Real receivers on loopback for the alert tests: a webhook sink that can be slow, fail or go away, an SMTP
server (aiosmtpd) and a Debian Alertmanager."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller

from alerts.notify.channels import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify
from tests.conftest import free_port


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    signature_ok: bool | None
    status: int


@dataclass
class WebhookSink:
    """Records every POST. `mode`: ok (200), fail (HTTP 500), slow (sleeps `delay` s, then 200); `stop()` refuses."""

    secret: bytes | None = None
    port: int = field(default_factory=free_port)
    mode: str = "ok"
    delay: float = 3.0
    received: list[Received] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length", 0)))
                mode = sink.mode
                if mode == "slow":
                    time.sleep(sink.delay)
                status = 500 if mode == "fail" else 200
                sig = self.headers.get(SIGNATURE_HEADER)
                ok = None
                if sink.secret is not None:
                    ok = sig is not None and verify(sink.secret, self.headers.get(TIMESTAMP_HEADER, ""), raw, sig)
                with sink._lock:
                    sink.received.append(Received(self.path, dict(self.headers), json.loads(raw), ok, status))
                try:
                    self.send_response(status)
                    self.send_header("content-length", "0")
                    self.end_headers()
                except OSError:
                    pass  # the client gave up waiting (slow mode)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def accepted(self, path: str | None = None) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.status == 200 and (path is None or r.path == path)]


class _Mailbox:
    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd hook name
        self.messages.append(envelope)
        return "250 OK"


@dataclass
class SmtpServer:
    port: int = field(default_factory=free_port)
    mailbox: _Mailbox = field(default_factory=_Mailbox)
    _controller: Controller | None = None

    def start(self) -> None:
        self._controller = Controller(self.mailbox, hostname="127.0.0.1", port=self.port)
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()

    def contact(self, to: str) -> str:
        return f"mailto://127.0.0.1:{self.port}/?from=gridsentry@noc.example.com&to={to}"


def alertmanager_binary() -> str:
    for c in ("prometheus-alertmanager", "alertmanager"):
        found = shutil.which(c)
        if found:
            return found
    pytest.fail("Alertmanager is not installed: run `make test` or `apt-get install prometheus-alertmanager`")


@dataclass
class Alertmanager:
    workdir: Path
    receiver_url: str
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "alertmanager.yml").write_text(
            "route:\n"
            "  receiver: sink\n"
            "  group_by: [alertname, device_id]\n"
            "  group_wait: 1s\n"
            "  group_interval: 2s\n"
            "  repeat_interval: 1h\n"
            "  routes:\n"
            "    - matchers: ['alertname=\"GridSentryHeartbeat\"']\n"
            "      receiver: deadman\n"
            "receivers:\n"
            "  - name: sink\n"
            f"    webhook_configs: [{{url: '{self.receiver_url}/am', send_resolved: true}}]\n"
            "  - name: deadman\n"
        )
        self.proc = subprocess.Popen(
            [
                alertmanager_binary(),
                f"--config.file={self.workdir / 'alertmanager.yml'}",
                f"--storage.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--cluster.listen-address=",
                "--log.level=warn",
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(self.workdir / "alertmanager.log", "ab"),  # noqa: SIM115 - the process owns it
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.workdir / "alertmanager.log").read_text()
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        pytest.fail("Alertmanager did not become ready in 20 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def alerts(self) -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = httpx.get(f"{self.url}/api/v2/alerts", timeout=5).json()
        return data


def port_refuses(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return True
    return False
