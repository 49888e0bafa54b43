"""Score rule packs against the simulator's ground truth: detection, false alarms, lead time.

The fleet runs offline and faster than real time; every `feed_s` of simulated time the telemetry
due so far becomes one committed-readings batch for the rule engine, exactly as the service
hands it over after COMMIT. No broker, no database: the point is the rules.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import orjson
import pyarrow as pa

from rules.engine import DeviceInfo, RuleEngine, SiteInfo
from rules.loader import LoadedRules
from rules.model import Finding
from simulator.core import FleetSimulator, OutMessage
from simulator.faults import FaultRecord, FaultSpec
from simulator.fleet import METRIC_UNITS, DeviceSpec, SiteSpec
from storage.batch import events_from_columns, readings_from_columns

__all__ = [
    "DETECTED_BY",
    "LEAD_PAIRS",
    "FaultScore",
    "ScenarioResult",
    "messages_to_events",
    "messages_to_readings",
    "run_scenario",
    "score",
]

# Which rules count as detecting each fault kind (any of them firing on the faulty device).
DETECTED_BY: dict[str, tuple[str, ...]] = {
    "dc_connector_overheat": ("dc_gun_temp_forecast", "dc_gun_overtemp_warning", "dc_gun_overtemp_critical"),
    "dc_fan_failure": (
        "dc_module_temp_forecast",
        "dc_module_warm",
        "dc_module_overtemp",
        "dc_cooling_degraded",
    ),
    "insulation_decline": ("dc_insulation_trend", "dc_insulation_low", "dc_insulation_fault"),
    "pv_string_fault": ("pv_string_underperforming", "pv_string_failed"),
    "inverter_overtemp": ("pv_heatsink_forecast", "pv_heatsink_overtemp"),
    "transformer_overload": ("tx_overload_long", "tx_overload", "tx_overload_severe", "tx_top_oil_forecast"),
    "transformer_cooling_loss": (
        "tx_top_oil_forecast",
        "tx_top_oil_above_model",
        "tx_top_oil_alarm",
        "tx_top_oil_critical",
    ),
    "stuck_sensor": (
        "stuck_temperature_dc",
        "stuck_temperature_ac",
        "stuck_temperature_pv",
        "stuck_temperature_tx",
        "dc_meter_stuck",
        "ac_meter_stuck",
    ),
    "device_offline": ("device_offline",),
}

# Slowly developing faults: the trend rule and the hard threshold it forecasts.
LEAD_PAIRS: dict[str, tuple[str, str]] = {
    "dc_connector_overheat": ("dc_gun_temp_forecast", "dc_gun_overtemp_warning"),
    "dc_fan_failure": ("dc_module_temp_forecast", "dc_module_overtemp"),
    "insulation_decline": ("dc_insulation_trend", "dc_insulation_low"),
    "inverter_overtemp": ("pv_heatsink_forecast", "pv_heatsink_overtemp"),
    "transformer_cooling_loss": ("tx_top_oil_forecast", "tx_top_oil_critical"),
}


def device_info(spec: DeviceSpec) -> DeviceInfo:
    return DeviceInfo(
        spec.id,
        spec.site,
        spec.kind,
        spec.tags,
        rated_kw=spec.rated_kw,
        interval_s=spec.interval_s,
        parent=spec.parent,
        model=spec.model,
    )


def messages_to_events(messages: Iterable[OutMessage]) -> pa.Table:
    """Event messages (status and fault codes) to an events batch, as the collector stores them."""
    ts: list[int] = []
    devices: list[str] = []
    kinds: list[str] = []
    codes: list[str] = []
    texts: list[str | None] = []
    for m in messages:
        if m.kind != "event":
            continue
        body = orjson.loads(m.payload)
        ts.append(int(datetime.fromisoformat(body["ts"]).timestamp() * 1_000_000))
        devices.append(m.topic.split("/")[2])
        kinds.append(str(body["kind"]))
        codes.append(str(body["code"]))
        text, detail = body.get("text"), body.get("detail")
        # As the collector stores it: a session event's detail becomes JSON in the text.
        if isinstance(detail, dict):
            text = orjson.dumps({"text": text, **detail} if text is not None else detail).decode()
        texts.append(text)
    return events_from_columns(ts, devices, kinds, codes, texts)


def messages_to_readings(messages: Iterable[OutMessage]) -> pa.Table:
    """Telemetry messages (topic gridsentry/<site>/<device>/telemetry) to a readings batch."""
    ts: list[int] = []
    devices: list[str] = []
    metrics: list[str] = []
    values: list[float] = []
    for m in messages:
        if m.kind != "telemetry":
            continue
        device = m.topic.split("/")[2]
        body = orjson.loads(m.payload)
        when = datetime.fromisoformat(body["ts"])
        us = int(when.timestamp() * 1_000_000)
        for name, value in body["metrics"].items():
            ts.append(us)
            devices.append(device)
            metrics.append(name)
            values.append(float(value))
    return readings_from_columns(ts, devices, metrics, values)


@dataclass
class ScenarioResult:
    findings: list[Finding]
    truth: list[FaultRecord]
    devices: list[DeviceSpec]
    start: datetime
    end: datetime
    readings: int = 0
    ticks: int = 0

    @property
    def device_days(self) -> float:
        return len(self.devices) * (self.end - self.start).total_seconds() / 86400


def run_scenario(
    site: SiteSpec,
    devices: list[DeviceSpec],
    loaded: LoadedRules,
    *,
    start: datetime,
    hours: float,
    faults: Sequence[FaultSpec] = (),
    feed_s: float = 60.0,
    seed: int = 1,
    physics_step_s: float | None = None,
) -> ScenarioResult:
    sim = FleetSimulator(site, devices, seed=seed, start=start, faults=faults, physics_step_s=physics_step_s)
    engine = RuleEngine(loaded.rules + loaded.disabled, METRIC_UNITS, overrides=loaded.overrides)
    engine.set_devices(device_info(d) for d in devices)
    engine.set_sites([SiteInfo(site.id, site.latitude, site.longitude)])
    end = start + timedelta(hours=hours)
    now = start
    findings: list[Finding] = []
    result = ScenarioResult(findings, sim.ground_truth, devices, start, end)
    while now < end:
        now = min(end, now + timedelta(seconds=feed_s))
        messages = sim.step(now)
        batch = messages_to_readings(messages)
        result.readings += batch.num_rows
        result.ticks += 1
        findings += engine.evaluate(batch, now=now, events=messages_to_events(messages))
    return result


@dataclass
class FaultScore:
    record: FaultRecord
    detected_by: str | None = None
    detected_at: datetime | None = None
    trend_at: datetime | None = None
    threshold_at: datetime | None = None
    fired: list[str] = field(default_factory=list)

    @property
    def delay_s(self) -> float | None:
        if self.detected_at is None:
            return None
        return (self.detected_at - self.record.started_at).total_seconds()

    @property
    def lead_s(self) -> float | None:
        """How long before the hard threshold the trend rule fired (positive: earlier)."""
        if self.trend_at is None or self.threshold_at is None:
            return None
        return (self.threshold_at - self.trend_at).total_seconds()


def score(result: ScenarioResult, grace: timedelta = timedelta(minutes=30)) -> list[FaultScore]:
    out: list[FaultScore] = []
    fires = [f for f in result.findings if f.action == "fire"]
    for record in result.truth:
        expected = DETECTED_BY.get(record.kind, ())
        until = (record.ended_at or result.end) + grace
        s = FaultScore(record)
        for f in sorted(fires, key=lambda f: f.ts):
            if f.device_id != record.device_id or not record.started_at <= f.ts <= until:
                continue
            s.fired.append(f.rule_id)
            if f.rule_id in expected and s.detected_at is None:
                s.detected_by, s.detected_at = f.rule_id, f.ts
            pair = LEAD_PAIRS.get(record.kind)
            if pair and f.rule_id == pair[0] and s.trend_at is None:
                s.trend_at = f.ts
            if pair and f.rule_id == pair[1] and s.threshold_at is None:
                s.threshold_at = f.ts
        out.append(s)
    return out
