"""Rules as data: the pydantic schema of rule packs, and the Finding handed to the alert stage."""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

EventClass = Literal["I", "II", "III"]
RuleKind = Literal[
    "threshold",
    "rate",
    "trend",
    "stuck",
    "offline",
    "data_gap",
    "deviation",
    "expression",
    "invalid",
    "counter",
    "event",
    "session_endings",
]

# Kinds that watch a device as a whole (its reporting), not one metric.
DEVICE_KINDS: frozenset[str] = frozenset({"offline", "data_gap", "event", "session_endings"})
# The pseudo-metric their findings carry, so the fingerprint stays rule|device|metric.
TELEMETRY = "telemetry"

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
    d, rem = divmod(seconds, 86400)
    h, rem = divmod(rem, 3600)
    m, s = divmod(rem, 60)
    if d:
        return f"{d} d {h} h" if h else f"{d} d"
    if h:
        return f"{h} h {m} min" if m else f"{h} h"
    return f"{m} min {s} s" if s else f"{m} min"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Selector(_Model):
    """Which devices a rule applies to. Empty lists mean 'any'; all given lists must match."""

    kinds: list[str] = Field(default_factory=list, description="Device kinds, e.g. charger_dc.")
    sites: list[str] = Field(default_factory=list, description="Site ids.")
    devices: list[str] = Field(default_factory=list, description="Device ids.")
    tags: list[str] = Field(default_factory=list, description="The device must carry every tag listed.")

    def specificity(self) -> int:
        """Overrides apply from the broadest to the most specific: kind < site < tag < device."""
        return (
            (1 if self.kinds else 0) + (2 if self.sites else 0) + (4 if self.tags else 0) + (8 if self.devices else 0)
        )


def _duration_or_none(v: object) -> object:
    return parse_duration(v) if isinstance(v, str | int | float) and not isinstance(v, bool) else v


# Template fields every finding can fill; a template naming anything else is refused at load.
MESSAGE_FIELDS = {
    "device_id": "DC01",
    "site": "demo",
    "metric": "gun1_temp_c",
    "value": 1.0,
    "threshold": 1.0,
    "unit": "°C",
    "for": "1 min",
    "title": "t",
    "forecast": "in about 1 h",
    "slope_per_h": 1.0,
    "slope_per_min": 1.0,
    "peer_median": 1.0,
    "ratio": 1.0,
    "ratio_pct": 1.0,
    "z": 1.0,
    "silence": "1 min",
    "parent": "TX01",
    "asymptote": 1.0,
    "previous": 1.0,
    "code": "Faulted",
    "connector": "gun 1",
}


class Rule(_Model):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$", description="Stable id, part of the alert fingerprint.")
    title: str = Field(description="Short title shown on alert lists.")
    applies_to: Selector = Field(default_factory=Selector, description="Which devices the rule watches.")
    metric: list[str] = Field(
        default_factory=list,
        description="Metric name, or a list of them evaluated separately (peers for deviation rules). "
        "Not used by offline / data_gap; derived from the expression for expression rules.",
    )
    kind: RuleKind = Field(
        "threshold",
        description="threshold, rate, trend, stuck, offline, data_gap, deviation, expression, invalid, counter, event, "
        "session_endings.",
    )
    # threshold / expression
    above: float | None = Field(None, description="threshold/expression: fire when the value is above this.")
    below: float | None = Field(None, description="threshold/expression: fire when below this (both: outside a band).")
    hysteresis: float = Field(0.0, ge=0, description="Clear only when the value is back by this much.")
    repeat: int = Field(1, ge=1, description="Consecutive breaching evaluations needed before firing.")
    # rate
    rise_per_min: float | None = Field(None, gt=0, description="rate: fire when rising faster than this per minute.")
    fall_per_min: float | None = Field(None, gt=0, description="rate: fire when falling faster than this per minute.")
    # trend
    limit: float | None = Field(None, description="trend: the level whose crossing is forecast.")
    direction: Literal["rising", "falling"] = Field("rising", description="trend: rising towards or falling to limit.")
    horizon_s: float | None = Field(None, alias="horizon", description="trend: fire when the limit is this close.")
    floor: float | None = Field(
        None,
        description="trend: only forecast when the current value is past this (rising: above; falling: below), "
        "so cold devices never page.",
    )
    noise_factor: float = Field(3.0, ge=0, description="trend: slope must exceed this many standard errors.")
    fit: Literal["linear", "exponential"] = Field(
        "linear",
        description="trend: 'linear' (a straight line) or 'exponential' (a first-order approach to an asymptote "
        "with `time_constant`, the IEC 60076-7 thermal model: the forecast levels off instead of overshooting).",
    )
    time_constant_s: float | None = Field(
        None,
        alias="time_constant",
        description="trend with fit: exponential: the time constant of the approach, e.g. 3h for ONAN top oil.",
    )
    # windows
    window_s: float | None = Field(None, alias="window", description="rate/trend/stuck/deviation: look-back window.")
    min_points: int = Field(4, ge=2, description="Buckets needed in the window before a windowed rule judges.")
    tolerance: float = Field(0.05, ge=0, description="stuck: max - min at or below this counts as not moving.")
    # offline / data_gap
    missed_intervals: float = Field(3.0, gt=0, description="offline/data_gap: silence of this many expected intervals.")
    min_silence_s: float = Field(90.0, ge=0, alias="min_silence", description="offline/data_gap: at least this long.")
    # deviation
    ratio_below: float | None = Field(None, gt=0, description="deviation: fire when value / peer median is below.")
    ratio_above: float | None = Field(None, gt=0, description="deviation: fire when value / peer median is above.")
    min_z: float = Field(3.0, ge=0, description="deviation: robust z-score (median/MAD) must also exceed this.")
    min_peers: int = Field(3, ge=2, description="deviation: peers reporting (including the device) needed.")
    min_peer_median: float = Field(0.0, description="deviation: judge only while the peers' median is above this.")
    normalise: Literal["none", "rated_power"] = Field(
        "none", description="deviation: divide by the device's rated power (kW) before comparing."
    )
    # expression
    expression: str | None = Field(None, description="expression: SQL expression over the device's metrics.")
    when: str | None = Field(
        None,
        description="expression/stuck: SQL condition over the device's metrics (window means); judged only while "
        "it holds, e.g. a meter frozen only counts while the pile delivers power.",
    )
    # invalid
    sentinels: list[float] = Field(
        default_factory=list,
        description="invalid: raw values that mean 'not implemented / no data' (e.g. -32768, 65535 from int16/uint16 "
        "registers); besides these, NaN/inf, readings the collector flagged out of range, and values outside "
        "[below, above] count as invalid.",
    )
    # event
    event_kind: str | None = Field(
        None, description="event: the kind of device event judged (status, fault...), as the collector stores it."
    )
    codes: list[str] = Field(
        default_factory=list,
        description="event: codes that fire the rule (e.g. Faulted, GroundFailure); judged per connector "
        "(the event's text, e.g. 'gun 1').",
    )
    clear_codes: list[str] = Field(
        default_factory=list,
        description="event: codes that clear it (e.g. Available, NoError); empty: any other code of that kind.",
    )
    # session_endings
    sessions: int = Field(
        20,
        ge=2,
        description="session_endings: how many of the device's latest charging sessions are judged; `codes` are "
        "the abnormal stop reasons, `above` the share (0..1) that fires.",
    )
    # counter
    wrap_at: float | None = Field(
        None,
        gt=0,
        description="counter: where the register rolls over, in the metric's unit (uint32 Wh read as kWh: "
        "4294967.296); a drop from above 90 % of it to below 10 % is a wrap, not a regression.",
    )
    name: str | None = Field(None, description="expression: the name the computed value carries (e.g. efficiency).")
    unit: str | None = Field(None, description="Unit shown for the computed value (default: the metric's).")
    # context
    daylight_only: bool = Field(False, description="Judge only while the sun is above 10° at the device's site.")
    for_s: float = Field(0.0, alias="for", description="How long the condition must hold before firing.")
    event_class: EventClass = Field(alias="class", description="Event class: I (urgent), II, III.")
    message: str = Field(
        "{device_id} {metric} is {value:.1f} {unit} (limit {threshold:g} {unit})",
        description="Template: " + ", ".join("{" + k + "}" for k in MESSAGE_FIELDS) + ".",
    )
    runbook: str = Field("", description="What the duty engineer does about it.")
    source: str = Field("", description="Where the threshold comes from (standard, vendor, GridSentry default).")
    enabled: bool = Field(True, description="Set false to ship a rule switched off.")

    @field_validator("metric", mode="before")
    @classmethod
    def _one_or_many(cls, v: object) -> object:
        return [v] if isinstance(v, str) else v

    @field_validator("for_s", "horizon_s", "window_s", "min_silence_s", "time_constant_s", mode="before")
    @classmethod
    def _duration(cls, v: object) -> object:
        return _duration_or_none(v)

    @model_validator(mode="after")
    def _kind_parameters(self) -> Rule:
        k = self.kind
        if k in ("threshold", "expression") and self.above is None and self.below is None:
            raise ValueError(f"a {k} rule needs 'above', 'below' or both (a band)")
        if self.above is not None and self.below is not None and self.below >= self.above:
            raise ValueError(
                f"a band needs below < above (fires outside [below, above]); got below {self.below:g}, "
                f"above {self.above:g}"
            )
        if k == "rate" and (self.rise_per_min is None) == (self.fall_per_min is None):
            raise ValueError("a rate rule needs exactly one of 'rise_per_min' or 'fall_per_min'")
        if k == "trend":
            missing = [n for n, v in (("limit", self.limit), ("horizon", self.horizon_s)) if v is None]
            if missing:
                raise ValueError(f"a trend rule needs {' and '.join(missing)}, e.g. limit: 95, horizon: 1h")
        if self.fit == "exponential":
            if k != "trend":
                raise ValueError(f"fit: exponential is for trend rules; a {k} rule has no fitted curve")
            if not self.time_constant_s:
                raise ValueError(
                    "fit: exponential needs a 'time_constant' longer than 0 s, e.g. time_constant: 3h "
                    "(IEC 60076-7 ONAN top oil: 180 min)"
                )
        if k in ("rate", "trend", "stuck") and self.window_s is None:
            raise ValueError(f"a {k} rule needs a 'window', e.g. window: 30m")
        if self.window_s is not None and self.window_s <= 0:
            raise ValueError("'window' must be longer than 0 s")
        if k == "deviation" and self.ratio_below is None and self.ratio_above is None:
            raise ValueError("a deviation rule needs 'ratio_below' or 'ratio_above', e.g. ratio_below: 0.85")
        if k == "expression":
            if not self.expression or not self.name:
                raise ValueError("an expression rule needs 'expression' and 'name' (what the result is called)")
            self.metric = expression_metrics(self.expression)
        elif k in DEVICE_KINDS:
            self.metric = [TELEMETRY]
        elif not self.metric:
            raise ValueError(f"a {k} rule needs 'metric'")
        if self.when is not None and k not in ("expression", "stuck"):
            raise ValueError(f"'when' is supported on expression and stuck rules, not on a {k} rule")
        if k == "session_endings" and (not self.codes or self.above is None or not 0 <= self.above < 1):
            raise ValueError(
                "a session_endings rule needs 'codes' (abnormal stop reasons) and 'above' as a share 0..1, "
                "e.g. above: 0.2"
            )
        if k == "event" and (not self.event_kind or not self.codes):
            raise ValueError("an event rule needs 'event_kind' and 'codes', e.g. event_kind: status, codes: [Faulted]")
        if self.sentinels and k != "invalid":
            raise ValueError("'sentinels' belong to an invalid rule")
        if self.when is not None:
            expression_metrics(self.when)
        try:
            string.Formatter().parse(self.message)
            self.message.format(**MESSAGE_FIELDS)
        except (KeyError, IndexError) as exc:
            raise ValueError(
                f"message template names {exc} which no finding has; use {', '.join(MESSAGE_FIELDS)}"
            ) from None
        except ValueError as exc:
            raise ValueError(f"message template is malformed: {exc}") from None
        return self

    @property
    def threshold(self) -> float:
        """The level the alert shows: the limit crossed (or forecast); for a band, the upper edge."""
        for v in (self.above, self.below, self.limit, self.rise_per_min, self.fall_per_min):
            if v is not None:
                return v
        if self.kind == "deviation":
            return self.ratio_below if self.ratio_below is not None else self.ratio_above or 0.0
        if self.kind == "event":
            return 0.0
        if self.kind in ("invalid", "counter", "stuck"):
            return self.tolerance if self.kind != "invalid" else 0.0
        return self.missed_intervals

    @property
    def output_metrics(self) -> list[str]:
        """The metric label of each finding: the computed name for expressions, else each metric."""
        return [self.name or "expression"] if self.kind == "expression" else list(self.metric)

    @property
    def input_metrics(self) -> list[str]:
        names = list(self.metric) if self.kind not in DEVICE_KINDS else []
        if self.when:
            names += [m for m in expression_metrics(self.when) if m not in names]
        return names


def expression_metrics(text: str) -> list[str]:
    """Parse a SQL expression with Polars and return the metric names it reads, or raise ValueError."""
    try:
        expr = pl.sql_expr(text)
        names = expr.meta.root_names()
    except Exception as exc:  # polars raises several error types for bad SQL
        raise ValueError(f"expression {text!r} is not valid: {str(exc).splitlines()[0]}") from None
    if not names:
        raise ValueError(f"expression {text!r} reads no metric")
    try:
        # A dry run on one row of numbers catches type errors (text in arithmetic...) at load time.
        pl.DataFrame({n: [1.0] for n in names}).select(expr.cast(pl.Float64))
    except Exception as exc:
        raise ValueError(f"expression {text!r} cannot be computed on numbers: {str(exc).splitlines()[0]}") from None
    return list(dict.fromkeys(names))


class Override(_Model):
    """Changes to shipped rules for some devices: a site's hotter climate, one model's lower limit..."""

    rules: list[str] = Field(min_length=1, description="Rule ids the override changes.")
    applies_to: Selector = Field(default_factory=Selector, description="Devices it changes the rules for.")
    set: dict[str, Any] = Field(description="Rule fields and their new values, e.g. {above: 85, for: 2m}.")

    @field_validator("rules", mode="before")
    @classmethod
    def _one_or_many(cls, v: object) -> object:
        return [v] if isinstance(v, str) else v

    @field_validator("set")
    @classmethod
    def _settable(cls, v: dict[str, Any]) -> dict[str, Any]:
        fixed = {"id", "kind", "metric", "expression", "name"}
        bad = sorted(set(v) & fixed)
        if bad:
            raise ValueError(f"an override cannot change {', '.join(bad)}; write a new rule instead")
        known = {f.alias or n for n, f in Rule.model_fields.items()} | set(Rule.model_fields)
        unknown = sorted(set(v) - known)
        if unknown:
            raise ValueError(f"unknown rule field(s) {', '.join(unknown)}")
        return v


class RulePack(_Model):
    pack: str = Field(description="Pack name, e.g. charger_dc.")
    description: str = Field("", description="What the pack watches.")
    rules: list[Rule] = Field(default_factory=list, description="The rules.")
    overrides: list[Override] = Field(default_factory=list, description="Changes to rules for some devices.")


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
    # Trend rules: seconds until the forecast crossing, and the forecast in words.
    seconds_to_limit: float | None = None
    forecast: str | None = None
    # Set when the device's parent (its transformer, gateway) explains this finding, e.g. both offline.
    caused_by: str | None = None
    rule_kind: str = "threshold"

    @property
    def fingerprint(self) -> str:
        return f"{self.rule_id}|{self.device_id}|{self.metric}"
