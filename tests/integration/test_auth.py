"""X1 and friends: every route of the running app is guarded, roles are enforced, changes are audited.

The route list comes from the app itself, so a route added later without `require(...)` fails here.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute
from pydantic import SecretStr

from gridsentry.auth import ROLE_RANK, ROLES, AuthConfig, TokenConfig, guard_of, hash_token, new_token
from gridsentry.config import Config, DeviceConfig
from gridsentry.service import Service

pytestmark = pytest.mark.integration

TOKENS = {role: new_token() for role in ROLES}


def auth_config(public: list[Any] | None = None, extra: list[TokenConfig] | None = None) -> AuthConfig:
    tokens = [TokenConfig(name=f"{role}-person", role=role, token=SecretStr(tok)) for role, tok in TOKENS.items()]
    return AuthConfig(tokens=tokens + (extra or []), public=public or [], local_token=False)


async def start(tmp_path: Path, auth: AuthConfig) -> Service:
    cfg = Config(data_dir=tmp_path / "data", devices=[DeviceConfig(id="DC01", site="s1", kind="charger_dc")])
    cfg.http.port = 0
    cfg.mqtt.enabled = False
    cfg.auth = auth
    service = Service(cfg)
    await service.start()
    return service


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "1", path)


def api_routes(service: Service) -> list[APIRoute]:
    routes = []
    for route in service.app.routes:
        assert isinstance(route, APIRoute), (
            f"{route!r} is not an API route with a guard: use @app.get(..., dependencies=[require(role)])"
        )
        routes.append(route)
    assert len(routes) >= 8
    return routes


async def call(http: httpx.AsyncClient, method: str, path: str, token: str | None) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"} if token is not None else {}
    kwargs: dict[str, Any] = {"headers": headers}
    if method in {"POST", "PUT", "PATCH"}:
        kwargs["json"] = {}
    return await http.request(method, path, **kwargs)


async def test_every_route_needs_the_right_role(tmp_path: Path) -> None:
    service = await start(tmp_path, auth_config())
    try:
        checked = 0
        async with httpx.AsyncClient(base_url=service.http_url, timeout=30) as http:
            for route in api_routes(service):
                guard = guard_of(route.dependant.dependencies)
                assert guard is not None, f"{route.path} has no require(role) guard"
                path = concrete(route.path)
                for method in sorted(route.methods):
                    r = await call(http, method, path, None)
                    assert r.status_code == 401, f"{method} {route.path} without a token answered {r.status_code}"
                    assert r.headers.get("www-authenticate") == "Bearer"
                    r = await call(http, method, path, "gst_not-a-real-token")
                    assert r.status_code == 401, f"{method} {route.path} with a bad token answered {r.status_code}"
                    for role, token in TOKENS.items():
                        r = await call(http, method, path, token)
                        if ROLE_RANK[role] < ROLE_RANK[guard.role]:
                            assert r.status_code == 403, f"{method} {route.path} as {role}: {r.status_code}"
                            assert guard.role in r.json()["detail"]
                        else:
                            assert r.status_code not in (401, 403) and r.status_code < 500, (
                                f"{method} {route.path} as {role}: {r.status_code} {r.text[:200]}"
                            )
                    checked += 1
        assert checked >= 8
        roles = {guard_of(r.dependant.dependencies).role for r in api_routes(service)}  # type: ignore[union-attr]
        assert {"viewer", "operator", "engineer"} <= roles
    finally:
        await service.stop()


async def test_public_areas_open_only_what_is_configured(tmp_path: Path) -> None:
    service = await start(tmp_path, auth_config(public=["healthz", "metrics"]))
    try:
        async with httpx.AsyncClient(base_url=service.http_url) as http:
            assert (await http.get("/healthz")).status_code == 200
            assert (await http.get("/readyz")).status_code in (200, 503)
            assert "gridsentry_" in (await http.get("/metrics")).text
            for path in ("/api/devices", "/api/alerts", "/api/openapi.json"):
                assert (await http.get(path)).status_code == 401, path
            assert (await http.post("/api/sql", json={"query": "select 1"})).status_code == 401
    finally:
        await service.stop()


async def test_changes_are_audited_with_the_actor_and_no_secret(tmp_path: Path) -> None:
    secret_file = tmp_path / "ops.token"
    file_token = new_token()
    secret_file.write_text(file_token + "\n")
    hashed_token = new_token()
    extra = [
        TokenConfig(name="night-desk", role="operator", file=secret_file),
        TokenConfig(name="li.ming", role="engineer", sha256=hash_token(hashed_token)),
    ]
    service = await start(tmp_path, auth_config(extra=extra))
    try:
        async with httpx.AsyncClient(base_url=service.http_url) as http:
            r = await http.post(
                "/api/alerts/999/ack", json={"actor": "zhang.wei"}, headers={"authorization": f"Bearer {file_token}"}
            )
            assert r.status_code == 404
            r = await http.post(
                "/api/sql",
                json={"query": "select count(*) from readings"},
                headers={"authorization": f"Bearer {hashed_token}"},
            )
            assert r.status_code == 200
            r = await http.post("/api/sql", json={"query": "select 1"}, headers={"authorization": "Bearer wrong"})
            assert r.status_code == 401
            assert "wrong" not in r.text
            audit: list[list[Any]] = []
            for _ in range(100):  # audit rows go through the single writer, just after the response
                audit = (
                    await http.post(
                        "/api/sql",
                        json={"query": "select actor, role, action, target, status, detail from audit_log"},
                        headers={"authorization": f"Bearer {TOKENS['admin']}"},
                    )
                ).json()["rows"]
                if len(audit) >= 3:
                    break
                await asyncio.sleep(0.05)
        actors = [(row[0], row[1], row[3], row[4]) for row in audit]
        assert ("night-desk", "operator", "/api/alerts/999/ack", 404) in actors
        assert ("li.ming", "engineer", "/api/sql", 200) in actors
        assert ("anonymous", "viewer", "/api/sql", 401) in actors
        assert any(row[5] == "select count(*) from readings" for row in audit)
        dump = repr(audit)
        for token in (file_token, hashed_token, *TOKENS.values()):
            assert token not in dump
    finally:
        await service.stop()


def test_token_create_prints_a_token_its_hash_accepts() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "gridsentry.cli", "token", "create", "--role", "operator", "--name", "wang.fang"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    token = re.search(r"^(gst_\S+)$", out, re.M)
    digest = re.search(r"sha256: ([0-9a-f]{64})", out)
    assert token and digest
    assert hash_token(token.group(1)) == digest.group(1)
    assert "role: operator" in out and "name: wang.fang" in out


def test_a_token_config_needs_exactly_one_source() -> None:
    with pytest.raises(ValueError, match="exactly one of sha256, token or file"):
        TokenConfig(name="x", role="viewer")
    with pytest.raises(ValueError, match="exactly one"):
        TokenConfig(name="x", role="viewer", sha256="0" * 64, token=SecretStr("y"))
