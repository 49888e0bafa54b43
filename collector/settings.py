"""Settings of the MQTT collector (validated with pydantic, embedded in the service config)."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TlsConfig(_Model):
    ca_file: Path | None = Field(None, description="CA bundle that signed the broker's certificate.")
    cert_file: Path | None = Field(None, description="Client certificate, for brokers that require one.")
    key_file: Path | None = Field(None, description="Private key of the client certificate.")
    insecure: bool = Field(False, description="Skip host name verification (test brokers only).")

    def ssl_context(self) -> ssl.SSLContext:
        """The client-side TLS context both MQTT collectors use."""
        ctx = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        if self.cert_file:
            ctx.load_cert_chain(str(self.cert_file), str(self.key_file) if self.key_file else None)
        if self.insecure:
            ctx.check_hostname = False
        return ctx


class Subscription(_Model):
    topic: str = Field(description="MQTT topic filter to subscribe to, wildcards allowed.")
    template: str = Field(
        description="How topic levels map to fields: {site}, {device_id}, {kind}, {channel}; '+' skips a level."
    )

    @field_validator("template")
    @classmethod
    def _template_names_device(cls, v: str) -> str:
        if "{device_id}" not in v:
            raise ValueError("the template must contain {device_id}, e.g. gridsentry/{site}/{device_id}/telemetry")
        return v


def _default_subscriptions() -> list[Subscription]:
    return [
        Subscription(topic="gridsentry/+/+/telemetry", template="gridsentry/{site}/{device_id}/{channel}"),
        Subscription(topic="gridsentry/+/+/events", template="gridsentry/{site}/{device_id}/{channel}"),
    ]


class MqttConfig(_Model):
    enabled: bool = Field(True, description="Collect readings from an MQTT broker.")
    host: str = Field("127.0.0.1", description="Broker host name or address.")
    port: int = Field(1883, ge=0, le=65535, description="Broker TCP port.")
    client_id: str = Field(
        "gridsentry-collector",
        description="Stable client id: the broker keeps the session (and what arrives while we are down) under it.",
    )
    username: str | None = Field(None, description="Broker user name.")
    password: SecretStr | None = Field(None, description="Broker password; write ${GRIDSENTRY_MQTT_PASSWORD}.")
    tls: TlsConfig | None = Field(None, description="TLS settings; omit for plain TCP on loopback.")
    protocol: Literal["auto", "5", "3.1.1"] = Field(
        "3.1.1",
        description="MQTT version. 3.1.1 (persistent session via clean_session=false) is the default: paho decodes "
        "MQTT 5 properties on every message, which costs a third of ingest throughput (docs/adr/0005). "
        "5 uses clean_start=false with a session expiry; auto tries 5 and falls back to 3.1.1.",
    )
    client: Literal["aiomqtt", "paho"] = Field(
        "paho",
        description="Which MQTT client library the collector uses. paho (default) runs on its own network thread "
        "and is faster per message, see docs/adr/0007; aiomqtt runs on the event loop.",
    )
    qos: Literal[1] = Field(1, description="Subscription QoS. Only 1 gives at-least-once delivery.")
    session_expiry_s: int = Field(
        86400,
        ge=1,
        description="How long the broker keeps our session and queued messages while we are away.",
    )
    keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keep-alive interval.")
    subscriptions: list[Subscription] = Field(
        default_factory=_default_subscriptions, description="Topic filters and how they map to devices."
    )
    flush_interval_ms: int = Field(
        100,
        ge=5,
        le=10_000,
        description="Commit what has arrived at least this often (keeps the broker flowing).",
    )
    flush_max_messages: int = Field(2000, ge=1, description="Commit as soon as this many messages wait.")
    flush_idle_ms: int = Field(
        20,
        ge=1,
        le=10_000,
        description="Commit when no message has arrived for this long (frees the broker's in-flight window).",
    )
    max_pending_messages: int = Field(
        20_000, ge=1, description="Stop reading from the socket when this many messages await commit."
    )
    stall_timeout_s: float | None = Field(
        None,
        gt=0,
        description="Reconnect when a live connection delivers nothing for this long while devices are due "
        "(a broker that stops delivering releases held messages on reconnect). Default: keepalive_s.",
    )
    sequence_gap_grace_s: float = Field(
        10.0, gt=0, description="How long a missing per-device sequence number may stay missing before it is reported."
    )
    max_future_skew_s: float = Field(
        300.0,
        ge=0,
        description="Readings stamped further ahead of GridSentry's clock are stored as suspect (quality 1).",
    )
    stale_after_s: float = Field(
        7 * 86400.0, gt=0, description="Readings stamped older than this are stored as stale (quality 3)."
    )
    reconnect_min_s: float = Field(0.5, gt=0, description="First reconnect delay after a lost connection.")
    reconnect_max_s: float = Field(30.0, gt=0, description="Reconnect delay cap (exponential backoff).")


__all__ = ["MqttConfig", "Subscription", "TlsConfig"]
