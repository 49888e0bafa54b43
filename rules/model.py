"""Rules as data: the pydantic schema of rule packs, and the Finding handed to the alert stage."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

EventClass = Literal["I", "II", "III"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|min|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: str | float | int) -> float:
    """'30s', '5m', '2h', '1d' or a number of seconds, to seconds."""
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    m = _DURATION.match(value)
    if not m:
        raise ValueError(f"{value!r} is not a duration; write e.g. 30s, 5m, 2h or 1d")
    return float(m.group(1)) * _UNIT_SECONDS[m.group(2)]


def format_duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    if h:
        return f"{h} h {m} min" if m else f"{h} h"
    return f"{m} min {s} s" if s else f"{m} min"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Selector(_Model):
    """Which devices a rule applies to. Empty lists mean 'any'; all given lists must match."""

    kinds: list[str] = Field(default_factory=list, description="Device kinds, e.g. charger_dc.")
    sites: list[str] = Field(default_factory=list)
    devices: list[str] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list, description="The device must carry every tag listed.")


class Rule(_Model):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$", description="Stable id, part of the alert fingerprint.")
    title: str
    applies_to: Selector = Field(default_factory=Selector)
    metric: list[str] = Field(min_length=1, description="Metric name, or a list of them evaluated separately.")
    kind: Literal["threshold"] = "threshold"
    above: float | None = Field(None, description="Fire when the value is above this.")
    below: float | None = Field(None, description="Fire when the value is below this.")
    for_s: float = Field(0.0, alias="for", description="How long the condition must hold before firing.")
    hysteresis: float = Field(0.0, ge=0, description="Clear only when the value is back by this much.")
    event_class: EventClass = Field(alias="class", description="Event class: I (urgent), II, III.")
    message: str = Field(
        "{device_id} {metric} is {value:.1f} {unit} (limit {threshold:g} {unit})",
        description="Template: {device_id} {site} {metric} {value} {threshold} {unit} {for} {title}.",
    )
    runbook: str = ""
    enabled: bool = True

    @field_validator("metric", mode="before")
    @classmethod
    def _one_or_many(cls, v: object) -> object:
        return [v] if isinstance(v, str) else v

    @field_validator("for_s", mode="before")
    @classmethod
    def _duration(cls, v: object) -> object:
        return parse_duration(v) if isinstance(v, str | int | float) else v

    @model_validator(mode="after")
    def _one_direction(self) -> Rule:
        if (self.above is None) == (self.below is None):
            raise ValueError("a threshold rule needs exactly one of 'above' or 'below'")
        return self

    @property
    def threshold(self) -> float:
        return self.above if self.above is not None else self.below  # type: ignore[return-value]

    @property
    def clear_level(self) -> float:
        return self.threshold - self.hysteresis if self.above is not None else self.threshold + self.hysteresis


class RulePack(_Model):
    pack: str = Field(description="Pack name, e.g. charger_dc.")
    description: str = ""
    rules: list[Rule] = Field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Finding:
    """A rule changed state for one device and metric: it fired, or it cleared."""

    action: Literal["fire", "clear"]
    rule_id: str
    title: str
    device_id: str
    site: str | None
    metric: str
    value: float
    threshold: float
    unit: str
    event_class: EventClass
    message: str
    runbook: str
    ts: datetime  # time of the reading that completed the condition

    @property
    def fingerprint(self) -> str:
        return f"{self.rule_id}|{self.device_id}|{self.metric}"
