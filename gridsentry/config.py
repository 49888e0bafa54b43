"""One validated YAML config for the whole service.

Every key has a default, so `gridsentry demo` needs no file. Secrets never live in the file:
write `${ENV_NAME}` (or `${ENV_NAME:-default}`, or `${file:/path}` for the first line of a secret
file) in any string and it is read from the
environment at load time. Errors name the key path and the line of the file.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from alerts.settings import AlertsConfig
from collector.mapping import FieldRule, unit_conversion
from collector.modbus.settings import ModbusConfig, ModbusDeviceConfig, check_device_maps
from collector.settings import MqttConfig
from gridsentry.auth import AuthConfig
from gridsentry.screens.settings import ScreensConfig
from reports.schedule import ReportsConfig, report_targets
from storage.settings import HistoryConfig
from storage.yamlsource import Loc, dotted_path, load_yaml_with_lines, nearest_line

DeviceKind = Literal["charger_ac", "charger_dc", "pv_inverter", "pv_string", "box_transformer", "meter", "unknown"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HttpConfig(_Model):
    host: str = Field("127.0.0.1", description="Address the HTTP API and /metrics bind to.")
    port: int = Field(8080, ge=0, le=65535, description="TCP port of the HTTP API (0 picks a free one).")


class StorageConfig(_Model):
    path: Path = Field(Path("gridsentry.duckdb"), description="DuckDB file; relative paths are under data_dir.")
    memory_limit: str = Field(
        "512MB",
        description="DuckDB memory limit (its buffer pool; big queries spill to disk). Keeps the whole service near 1 GiB.",
    )
    threads: int = Field(2, ge=1, le=64, description="DuckDB worker threads.")


class RulesConfig(_Model):
    packs: list[Path] = Field(
        default_factory=list,
        description="Rule pack files to load in addition to (or, with builtin_packs: false, instead of) the shipped ones.",
    )
    builtin_packs: bool = Field(True, description="Load the rule packs shipped in rules/packs/.")
    tick_ms: int = Field(500, ge=50, le=60_000, description="How often committed readings are evaluated.")
    bucket_s: float = Field(
        30.0,
        ge=1,
        le=3600,
        description="Width in seconds of the time buckets windowed rules (trend, rate, stuck, deviation, "
        "expression) read; they are judged once per bucket. Wider: less work per device, coarser forecasts.",
    )
    shards: int = Field(
        8,
        ge=1,
        le=256,
        description="Devices are split into this many shards, judged on successive ticks within a bucket, so no "
        "tick carries the whole fleet's windowed work. Raise it for large fleets with short ticks.",
    )


class SiteConfig(_Model):
    id: str = Field(description="Site id as it appears in topics and alerts.")
    name: str | None = Field(None, description="Human name shown on screens.")
    latitude: float | None = Field(None, ge=-90, le=90, description="For sun position (PV day/night).")
    longitude: float | None = Field(None, ge=-180, le=180)
    timezone: str = Field("Asia/Shanghai", description="IANA time zone for reports and standby windows.")


class DeviceConfig(_Model):
    id: str = Field(description="Device id, unique across the fleet (as in its MQTT topic).")
    site: str = Field(description="Site id the device belongs to.")
    kind: DeviceKind = Field(description="Equipment kind: charger_ac, charger_dc, pv_inverter, box_transformer...")
    vendor: str | None = Field(None, description="Manufacturer.")
    model: str | None = Field(None, description="Model; peer comparisons group by it.")
    rated_kw: float | None = Field(None, ge=0, description="Rated power in kW (kVA for transformers).")
    parent: str | None = Field(None, description="Device that feeds this one (topology), e.g. its transformer.")
    expected_interval_s: float = Field(10.0, gt=0, description="How often the device normally reports.")
    commissioned: str | None = Field(None, description="Commissioning date, YYYY-MM-DD.")
    location: str | None = Field(None, description="Where on site, for the engineer sent there.")
    tags: list[str] = Field(default_factory=list, description="Free labels; rules can select by tag.")
    modbus: ModbusDeviceConfig | None = Field(
        None, description="Poll this device over Modbus (host, unit, map or sunspec, interval); see docs/modbus.md."
    )


class MetricConfig(_Model):
    name: str = Field(description="Metric name as it appears in payloads, e.g. gun1_temp_c.")
    unit: str = Field(description="Unit shown to operators: kW, kWh, °C, V, A, %...")
    description: str = Field("", description="What it measures.")
    min: float | None = Field(None, description="Lowest physically possible value; below it is out-of-range.")
    max: float | None = Field(None, description="Highest physically possible value; above it is out-of-range.")


class FieldMapping(_Model):
    metric: str = Field(description="The catalogue metric this payload field becomes, e.g. ac_power_kw.")
    unit: str | None = Field(
        None,
        description="Unit the device sends; converted to the metric's catalogue unit (W->kW, Wh->kWh, °F->°C...).",
    )
    scale: float = Field(1.0, description="Multiply by this after any unit conversion (e.g. a register's 0.1).")
    offset: float = Field(0.0, description="Then add this.")


class MappingConfig(_Model):
    devices: list[str] = Field(default_factory=list, description="Device ids this mapping applies to.")
    kinds: list[DeviceKind] = Field(default_factory=list, description="...or every device of these kinds.")
    sites: list[str] = Field(default_factory=list, description="...limited to these sites.")
    fields: dict[str, FieldMapping] = Field(description="Payload field name -> metric, unit, scale, offset.")


class Config(_Model):
    data_dir: Path = Field(Path("data"), description="Where the database and runtime files live.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log verbosity.")
    unknown_devices: Literal["accept", "reject"] = Field(
        "accept",
        description="accept: store readings of devices missing from the ledger and add them as kind 'unknown'; "
        "reject: send them to dead_letters.",
    )
    http: HttpConfig = Field(default_factory=HttpConfig)
    auth: AuthConfig = Field(
        default_factory=AuthConfig, description="API tokens and roles; what opens without a token."
    )
    mqtt: MqttConfig = Field(default_factory=MqttConfig, description="The MQTT broker to collect from.")
    extra_brokers: list[MqttConfig] = Field(
        default_factory=list,
        description="More MQTT brokers to collect from at the same time (each with its own client_id).",
    )
    storage: StorageConfig = Field(default_factory=StorageConfig)
    modbus: ModbusConfig = Field(
        default_factory=ModbusConfig, description="Modbus collection: map directories, commit pace, map reloads."
    )
    rules: RulesConfig = Field(default_factory=RulesConfig)
    history: HistoryConfig = Field(
        default_factory=HistoryConfig,
        description="History: rollups, Parquet archive, retention per table, engineers' SQL limits, backups.",
    )
    sites: list[SiteConfig] = Field(default_factory=list, description="The sites of the fleet.")
    devices: list[DeviceConfig] = Field(
        default_factory=list, description="The device ledger: every device, its site, kind and topology."
    )
    metrics: list[MetricConfig] = Field(
        default_factory=list, description="Extra or overriding entries for the built-in metric catalogue."
    )
    mappings: list[MappingConfig] = Field(
        default_factory=list,
        description="Per-device field mappings: rename vendor fields, convert units, scale raw values.",
    )
    screens: ScreensConfig = Field(
        default_factory=ScreensConfig,
        description="Monitoring-centre screens: fleet readings on /metrics and the built-in wall screen at /.",
    )
    alerts: AlertsConfig = Field(
        default_factory=AlertsConfig,
        description="Alert lifecycle: SLA policy and standby hours, maintenance windows, escalation, on-call rota, channels.",
    )
    reports: ReportsConfig = Field(
        default_factory=ReportsConfig,
        description="Scheduled reports through the alert channels: monthly report, emergency-dispatch progress and status.",
    )

    @model_validator(mode="after")
    def _check_ledger(self) -> Config:
        seen: set[str] = set()
        for d in self.devices:
            if d.id in seen:
                raise ValueError(f"device id {d.id!r} is listed twice in devices")
            seen.add(d.id)
        for d in self.devices:
            if d.parent is not None and d.parent not in seen:
                raise ValueError(f"device {d.id!r} names parent {d.parent!r}, which is not in devices")
        return self

    @model_validator(mode="after")
    def _check_brokers(self) -> Config:
        seen = set()
        for b in [self.mqtt, *self.extra_brokers]:
            key = (b.host, b.port, b.client_id)
            if key in seen:
                raise ValueError(
                    f"two brokers use client_id {b.client_id!r} on {b.host}:{b.port}: "
                    "the broker would disconnect one for the other; give each its own client_id"
                )
            seen.add(key)
        return self

    @model_validator(mode="after")
    def _check_modbus_maps(self) -> Config:
        polled = [(d.id, d.modbus) for d in self.devices if d.modbus]
        units = {m.name: m.unit for m in metric_catalogue(self).values()} if polled else None
        problems = check_device_maps(polled, self.modbus.map_dirs, units)
        if problems:
            raise ValueError("; ".join(problems))
        for d in self.devices:  # a polled device reports as often as it is polled, unless told otherwise
            if d.modbus is not None and "expected_interval_s" not in d.model_fields_set:
                d.expected_interval_s = d.modbus.interval_s
        return self

    @model_validator(mode="after")
    def _check_reports(self) -> Config:
        report_targets(self.reports, [w.name for w in self.alerts.webhooks], [p.id for p in self.alerts.oncall.people])
        return self

    @property
    def brokers(self) -> list[MqttConfig]:
        return [b for b in [self.mqtt, *self.extra_brokers] if b.enabled]

    @model_validator(mode="after")
    def _check_mappings(self) -> Config:
        known = {d.id for d in self.devices}
        for i, m in enumerate(self.mappings):
            missing = [d for d in m.devices if d not in known]
            if missing:
                raise ValueError(f"mappings[{i}] names devices not in the ledger: {', '.join(missing)}")
        field_rules(self)  # unit conversions and metric names are checked here, not at the first message
        return self

    @property
    def database_path(self) -> Path:
        p = self.storage.path
        return p if p.is_absolute() else self.data_dir / p


BUILTIN_METRICS = Path(__file__).parent / "data" / "metrics.yaml"


def metric_catalogue(cfg: Config) -> dict[str, MetricConfig]:
    """The built-in catalogue with config's entries layered on top."""
    raw = yaml.safe_load(BUILTIN_METRICS.read_text(encoding="utf-8"))
    out = {m["name"]: MetricConfig.model_validate(m) for m in raw}
    for m in cfg.metrics:
        out[m.name] = m
    return out


def field_rules(cfg: Config) -> list[FieldRule]:
    """Expand `mappings` into one rule per device and payload field."""
    if not cfg.mappings:
        return []
    catalogue = metric_catalogue(cfg)
    rules: list[FieldRule] = []
    for i, m in enumerate(cfg.mappings):
        targets = [
            d.id
            for d in cfg.devices
            if (not m.devices or d.id in m.devices)
            and (not m.kinds or d.kind in m.kinds)
            and (not m.sites or d.site in m.sites)
        ]
        for name, f in m.fields.items():
            if f.metric not in catalogue:
                raise ValueError(
                    f"mappings[{i}].fields.{name}: metric {f.metric!r} is not in the catalogue; add it under metrics:"
                )
            scale, offset = 1.0, 0.0
            if f.unit is not None:
                try:
                    scale, offset = unit_conversion(f.unit, catalogue[f.metric].unit)
                except ValueError as exc:
                    raise ValueError(f"mappings[{i}].fields.{name}: {exc}") from None
            rules += [FieldRule(d, name, f.metric, scale * f.scale, offset * f.scale + f.offset) for d in targets]
    return rules


# --- loading with line numbers ---------------------------------------------------------------

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")


@dataclass(frozen=True)
class ConfigIssue:
    path: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line is not None else ""
        return f"{where}{self.path}: {self.message}"


class ConfigError(Exception):
    """The config file is missing, not YAML, or does not validate. Carries every problem found."""

    def __init__(self, file: Path | None, issues: list[ConfigIssue]):
        self.file = file
        self.issues = issues
        head = f"{file}: " if file else ""
        super().__init__(head + "; ".join(str(i) for i in issues))


_FILE_REF = re.compile(r"\$\{file:([^}]+)\}")


def _expand_env(value: Any, loc: Loc, missing: list[tuple[Loc, str]], from_env: set[Loc] | None = None) -> Any:
    """Replace ${NAME}, ${NAME:-default} and ${file:/path} (first line of a secret file) in every string."""
    if isinstance(value, dict):
        return {k: _expand_env(v, (*loc, k), missing, from_env) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, (*loc, i), missing, from_env) for i, v in enumerate(value)]
    if isinstance(value, str) and "${" in value:
        if from_env is not None:
            from_env.add(loc)

        def read_file(m: re.Match[str]) -> str:
            path = Path(m.group(1).strip())
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                missing.append((loc, f"cannot read the secret file {path}: {exc.strerror or exc}"))
                return ""
            return lines[0].strip() if lines else ""

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            missing.append((loc, f"environment variable {name} is not set (export it, or write ${{{name}:-default}})"))
            return ""

        return _ENV_REF.sub(sub, _FILE_REF.sub(read_file, value))
    return value


def parse_config(text: str, file: Path | None = None) -> Config:
    """Validate YAML text. Raises ConfigError listing every problem with key path and line."""
    try:
        raw, lines = load_yaml_with_lines(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(file, [ConfigIssue("(yaml)", line, f"not valid YAML: {exc}")]) from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(file, [ConfigIssue("(top level)", 1, "the config must be a mapping of keys")])
    missing: list[tuple[Loc, str]] = []
    from_env: set[Loc] = set()
    expanded = _expand_env(raw, (), missing, from_env)
    issues = [ConfigIssue(dotted_path(loc), nearest_line(lines, loc), message) for loc, message in missing]
    try:
        cfg = Config.model_validate(expanded)
    except ValidationError as exc:
        for err in exc.errors():
            loc = tuple(err["loc"])
            hide = loc in from_env or _looks_secret(loc)
            issues.append(ConfigIssue(dotted_path(loc), nearest_line(lines, loc), _explain(err, hide_input=hide)))
        raise ConfigError(file, issues) from None
    if issues:
        raise ConfigError(file, issues)
    if file is not None and not cfg.data_dir.is_absolute() and "data_dir" in raw:
        cfg.data_dir = (file.parent / cfg.data_dir).resolve()
    return cfg


_SECRET_KEY = re.compile(r"pass|token|secret|sha256|key|credential", re.IGNORECASE)


def _looks_secret(loc: tuple[Any, ...]) -> bool:
    key = next((part for part in reversed(loc) if isinstance(part, str)), "")
    return bool(_SECRET_KEY.search(key)) and key != "tokens"


def _explain(err: Any, *, hide_input: bool = False) -> str:
    msg = str(err["msg"])
    if err["type"] == "extra_forbidden":
        return "unknown key (check its spelling; `deploy/gridsentry.example.yaml` lists every key)"
    if err["type"] == "missing":
        return "required key is missing"
    if hide_input:
        # Values from the environment and secret-looking keys are never echoed: this output goes to logs.
        return f"{msg} (value not shown: it is a secret or comes from the environment)"
    if "input" in err and not isinstance(err["input"], dict | list):
        return f"{msg} (got {err['input']!r})"
    return msg


def load_config(path: Path) -> Config:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(path, [ConfigIssue("(file)", None, f"cannot read the config file: {exc.strerror}")]) from exc
    return parse_config(text, path)


# --- the documented example ------------------------------------------------------------------

_EXAMPLE_ITEMS: dict[str, list[dict[str, Any]]] = {
    "tokens": [
        {
            "name": "duty-desk",
            "role": "operator",
            "sha256": "2708010edb522005d49d2b7c201aed87481f212c56e6c76649d4e064b0fb4ba4",
        },
        {"name": "li.ming", "role": "engineer", "file": "/run/secrets/li.ming.token"},
    ],
    "sites": [
        {"id": "shenzhen-hub-01", "name": "Shenzhen bus depot charging hub", "latitude": 22.54, "longitude": 114.06}
    ],
    "devices": [
        {
            "id": "TX01",
            "site": "shenzhen-hub-01",
            "kind": "box_transformer",
            "vendor": "Example Electric",
            "model": "ZGS11-630/10",
            "rated_kw": 630,
            "expected_interval_s": 10,
            "modbus": {"host": "tx01-rtu.example.net", "unit": 1, "map": "box_transformer_tc", "interval_s": 10},
        },
        {
            "id": "DC01",
            "site": "shenzhen-hub-01",
            "kind": "charger_dc",
            "vendor": "Example Power",
            "model": "DCP-120D",
            "rated_kw": 120,
            "parent": "TX01",
            "tags": ["bus-depot"],
        },
    ],
    "metrics": [{"name": "oil_level_pct", "unit": "%", "description": "Transformer oil level", "min": 0, "max": 100}],
    "extra_brokers": [
        {
            "host": "site2-broker.example.net",
            "port": 8883,
            "client_id": "gridsentry-site2",
            "username": "gridsentry",
            "password": "${SITE2_MQTT_PASSWORD:-}",
            "tls": {"ca_file": "/etc/gridsentry/site2-ca.pem"},
        }
    ],
    "mappings": [
        {
            "kinds": ["pv_inverter"],
            "fields": {
                "W": {"metric": "ac_power_kw", "unit": "W"},
                "WH": {"metric": "energy_kwh", "unit": "Wh"},
                "TmpSnk": {"metric": "heatsink_temp_c", "scale": 0.1},
            },
        }
    ],
    "subscriptions": [
        {"topic": "gridsentry/+/+/telemetry", "template": "gridsentry/{site}/{device_id}/{channel}"},
        {"topic": "gridsentry/+/+/events", "template": "gridsentry/{site}/{device_id}/{channel}"},
    ],
}

_EXAMPLE_VALUES: dict[str, Any] = {"password": "${GRIDSENTRY_MQTT_PASSWORD}", "username": "gridsentry"}


def example_yaml() -> str:
    """Every config key with its description and default, as commented YAML."""
    lines = [
        "# GridSentry configuration: every key, its meaning and its default.",
        "# Generated by `gridsentry config example`; validate yours with `gridsentry config check FILE`.",
        "# Secrets: write ${ENV_NAME} (or ${ENV_NAME:-default}) and export the variable, or ${file:/run/secrets/name}",
        "# to read the first line of a file (container and systemd credentials); never put them here.",
        "",
    ]
    _example_model(Config, lines, 0)
    return "\n".join(lines) + "\n"


def _scalar(v: Any) -> str:
    if isinstance(v, Path):
        v = str(v)
    dumped = yaml.safe_dump(v, default_flow_style=True, allow_unicode=True).strip()
    return dumped.removesuffix("\n...").removesuffix("...").strip()


def _example_model(model: type[BaseModel], lines: list[str], indent: int) -> None:
    pad = "  " * indent
    for name, field in model.model_fields.items():
        key = field.alias or name
        if field.description:
            lines.append(f"{pad}# {field.description}")
        ann = field.annotation
        sub = next(
            (a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)), None
        )
        if name in _EXAMPLE_ITEMS:
            item_model = next(
                (a for a in getattr(ann, "__args__", ()) if isinstance(a, type) and issubclass(a, BaseModel)), None
            )
            if item_model is not None:
                lines.append(f"{pad}# Each entry:")
                for fname, f in item_model.model_fields.items():
                    req = " (required)" if f.is_required() else ""
                    lines.append(f"{pad}#   {f.alias or fname}{req}: {f.description or ''}".rstrip())
            lines.append(f"{pad}{key}:")
            for item in _EXAMPLE_ITEMS[name]:
                first = True
                for k, v in item.items():
                    lead = f"{pad}  {'- ' if first else '  '}{k}:"
                    if isinstance(v, dict):
                        lines.append(lead)
                        lines += [f"{pad}      {sk}: {_scalar(sv)}" for sk, sv in v.items()]
                    else:
                        lines.append(f"{lead} {_scalar(v)}")
                    first = False
        elif sub is not None and get_origin(ann) is list:  # a list of entries without a worked example
            lines.append(f"{pad}# Each entry:")
            for fname, f in sub.model_fields.items():
                req = " (required)" if f.is_required() else ""
                lines.append(f"{pad}#   {f.alias or fname}{req}: {f.description or ''}".rstrip())
            lines.append(f"{pad}{key}: []")
        elif sub is not None and name not in _EXAMPLE_ITEMS:
            lines.append(f"{pad}{key}:")
            _example_model(sub, lines, indent + 1)
        else:
            default = field.get_default(call_default_factory=True)
            value = _EXAMPLE_VALUES.get(name, default)
            if value is None:
                lines.append(f"{pad}# {key}: (not set)")
            else:
                lines.append(f"{pad}{key}: {_scalar(value)}")
        if indent == 0:
            lines.append("")
