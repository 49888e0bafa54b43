"""Who may call which HTTP route: bearer tokens, four roles, and an audit trail of every change.

Roles are ordered, each includes the ones before it:
viewer (screens, read alerts) < operator (ack, assign, comment, silence) < engineer (SQL) < admin (config,
users, rules reload). Tokens are random 256-bit strings, so one SHA-256 is enough to store them (no slow hash
is needed against guessing); only the hash is kept in memory, compared with `hmac.compare_digest`, and neither
the token nor its hash is ever logged or echoed.

Every route declares its role with `dependencies=[require("operator")]`; a test walks the app's route list
and fails for any route without such a guard.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fastapi import Depends, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

log = logging.getLogger(__name__)

Role = Literal["viewer", "operator", "engineer", "admin"]
ROLES: tuple[Role, ...] = ("viewer", "operator", "engineer", "admin")
ROLE_RANK: dict[str, int] = {r: i for i, r in enumerate(ROLES)}
PublicArea = Literal["healthz", "metrics", "wall"]

TOKEN_PREFIX = "gst_"  # noqa: S105 - a marker that makes leaked tokens greppable, not a secret
LOCAL_TOKEN_FILE = "local.token"  # noqa: S105 - a file name


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TokenConfig(_Model):
    name: str = Field(min_length=1, description="Who holds the token (person or system); recorded as the actor.")
    role: Role = Field(description="viewer, operator, engineer or admin; each includes the ones before it.")
    sha256: str | None = Field(
        None,
        pattern=r"^[0-9a-f]{64}$",
        description="SHA-256 of the token in hex, as printed by `gridsentry token create` (preferred: no secret in the file).",
    )
    token: SecretStr | None = Field(
        None, description="The token itself; write ${ENV_NAME} so it comes from the environment."
    )
    file: Path | None = Field(None, description="A file whose first line is the token (e.g. a container secret).")

    @model_validator(mode="after")
    def _exactly_one_source(self) -> TokenConfig:
        given = [k for k in ("sha256", "token", "file") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"token {self.name!r}: give exactly one of sha256, token or file (got {given or 'none'})")
        return self


class AuthConfig(_Model):
    tokens: list[TokenConfig] = Field(
        default_factory=list,
        description="API tokens. Create one with `gridsentry token create --role operator --name wang.fang`.",
    )
    public: list[PublicArea] = Field(
        default_factory=list,
        description="Read-only areas open without a token: healthz (/healthz, /readyz), metrics (/metrics), wall (the wall screen). Nothing else ever is.",
    )
    local_token: bool = Field(
        True,
        description="Write an admin token readable only by this user to data_dir/local.token at start-up, so the `gridsentry` CLI on this host can call the API.",
    )


@dataclass(frozen=True)
class Principal:
    name: str
    role: Role

    def may(self, role: Role) -> bool:
        return ROLE_RANK[self.role] >= ROLE_RANK[role]


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


class TokenStore:
    """Hashes of the valid tokens and the areas open without one."""

    def __init__(self, public: Iterable[PublicArea] = ()) -> None:
        self._entries: list[tuple[bytes, Principal]] = []
        self.public: frozenset[str] = frozenset(public)

    def __len__(self) -> int:
        return len(self._entries)

    def add_hash(self, sha256_hex: str, principal: Principal) -> None:
        self._entries.append((bytes.fromhex(sha256_hex), principal))

    def add_token(self, token: str, principal: Principal) -> None:
        self.add_hash(hash_token(token), principal)

    def verify(self, token: str) -> Principal | None:
        digest = hashlib.sha256(token.encode("utf-8")).digest()
        found: Principal | None = None
        for stored, principal in self._entries:  # no early exit: the time taken does not depend on which matched
            if hmac.compare_digest(stored, digest) and found is None:
                found = principal
        return found

    @classmethod
    def from_config(cls, cfg: AuthConfig, base_dir: Path | None = None) -> TokenStore:
        store = cls(cfg.public)
        for t in cfg.tokens:
            principal = Principal(t.name, t.role)
            if t.sha256 is not None:
                store.add_hash(t.sha256, principal)
            elif t.token is not None:
                store.add_token(t.token.get_secret_value(), principal)
            elif t.file is not None:
                path = t.file if t.file.is_absolute() or base_dir is None else base_dir / t.file
                try:
                    first = path.read_text(encoding="utf-8").splitlines()[0].strip()
                except (OSError, IndexError) as exc:
                    raise ValueError(f"auth.tokens {t.name!r}: cannot read a token from {path}: {exc}") from exc
                store.add_token(first, principal)
        return store


def write_local_token(data_dir: Path, store: TokenStore) -> Path:
    """A fresh admin token for the CLI on this host, in a file only this user can read."""
    token = new_token()
    path = data_dir / LOCAL_TOKEN_FILE
    partial = path.with_name(f".{LOCAL_TOKEN_FILE}.{os.getpid()}")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, stat.S_IRUSR | stat.S_IWUSR)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(token + "\n")
    partial.replace(path)
    store.add_token(token, Principal("local-cli", "admin"))
    return path


def read_local_token(data_dir: Path) -> str | None:
    try:
        return (data_dir / LOCAL_TOKEN_FILE).read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


class Guard:
    """The FastAPI dependency behind `require`: 401 without a valid token, 403 for a lower role."""

    def __init__(self, role: Role, public: PublicArea | None = None) -> None:
        self.role = role
        self.public = public

    def __call__(self, request: Request) -> Principal:
        store: TokenStore = request.app.state.tokens
        token = bearer_token(request)
        if token is None:
            if self.public is not None and self.public in store.public:
                anonymous = Principal("anonymous", "viewer")
                request.state.principal = anonymous
                return anonymous
            raise HTTPException(
                401,
                "this route needs an API token: send 'Authorization: Bearer <token>' "
                "(create one with `gridsentry token create --role ROLE`)",
                headers={"WWW-Authenticate": "Bearer"},
            )
        verified = store.verify(token)
        if verified is None:
            raise HTTPException(
                401, "the API token is not valid (unknown or revoked)", headers={"WWW-Authenticate": "Bearer"}
            )
        if not verified.may(self.role):
            raise HTTPException(403, f"{verified.name} has role {verified.role}; this route needs {self.role} or above")
        request.state.principal = verified
        return verified


def require(role: Role, public: PublicArea | None = None) -> Any:
    """`dependencies=[require("operator")]` on a route; `public` names the area that may open it without a token."""
    return Depends(Guard(role, public))


def guard_of(dependencies: Iterable[Any]) -> Guard | None:
    """The Guard among a route's dependencies (for the route-list test and the docs)."""
    for dep in dependencies:
        call: Callable[..., Any] | None = getattr(dep, "call", None) or getattr(dep, "dependency", None)
        if isinstance(call, Guard):
            return call
    return None


def principal_of(request: Request) -> Principal:
    principal: Principal | None = getattr(request.state, "principal", None)
    return principal or Principal("anonymous", "viewer")
