"""Payload decoders: MQTT messages in, column lists out (no Python object per reading).

Accepted telemetry shapes (any of them, or a JSON array of them, in one message):
- a `metrics` map:  {"ts": "...", "seq": 17, "metrics": {"power_kw": 6.9, "energy_kwh": 1234.5}}
- a flat object:    {"ts": "...", "power_kw": 6.9, "energy_kwh": 1234.5}
- long readings:    {"device_id": "...", "readings": [{"ts": "...", "metric": "...", "value": 1.0}, ...]}
- one long reading: {"ts": "...", "metric": "power_kw", "value": 6.9}
Events (status and fault codes): {"ts": "...", "kind": "status", "code": "Charging", "text": "gun 1"}.

`ts` is ISO-8601 (with an offset; a naive one is taken as UTC) or epoch seconds, milliseconds or
microseconds (told apart by magnitude). A message without `ts` gets its arrival time.
A string where a number belongs is kept as an event (kind "field"), never dropped.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import repeat
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from collector.mapping import FieldMapper
from storage.batch import (
    TS_TYPE,
    DeadLetter,
    IngestBatch,
    Quality,
    dead_letters_table,
    events_from_columns,
    readings_from_columns,
)

#: Keys of a flat object that are not metrics.
RESERVED_KEYS = frozenset({"ts", "timestamp", "time", "seq", "device_id", "device", "site", "kind", "tags", "unit"})


class DecodeError(ValueError):
    """A message that cannot be turned into readings. `reason` is a short label for counters."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class TopicInfo:
    device_id: str
    site: str | None
    kind: str | None
    channel: str | None


class TopicTemplate:
    """Maps topic levels to fields: `gridsentry/{site}/{device_id}/{channel}`; '+' skips a level."""

    def __init__(self, template: str) -> None:
        self.template = template
        self.levels = template.split("/")
        self._cache: dict[str, TopicInfo | None] = {}

    def match(self, topic: str) -> TopicInfo | None:
        hit = self._cache.get(topic, False)
        if hit is not False:
            return hit  # type: ignore[return-value]
        parts = topic.split("/")
        info: TopicInfo | None = None
        if len(parts) == len(self.levels):
            values: dict[str, str] = {}
            ok = True
            for pat, part in zip(self.levels, parts, strict=True):
                if pat.startswith("{") and pat.endswith("}"):
                    values[pat[1:-1]] = part
                elif pat not in ("+", part):
                    ok = False
                    break
            if ok and values.get("device_id"):
                info = TopicInfo(values["device_id"], values.get("site"), values.get("kind"), values.get("channel"))
        if len(self._cache) < 100_000:
            self._cache[topic] = info
        return info


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


_EXACT = 2**53

#: Timestamps outside [1970, 2200) are not clocks that drifted but values misread (a wrong unit, a
#: counter): they are rejected. Plausible but wrong clocks are stored and flagged by skew checks.
TS_MIN_US = 0
TS_MAX_US = 7_258_118_400_000_000  # 2200-01-01T00:00:00Z


def parse_ts(raw: Any) -> int:
    """Timestamp to microseconds since the epoch (UTC)."""
    if isinstance(raw, str):
        try:
            dt = datetime.fromisoformat(raw)
        except ValueError as exc:
            raise DecodeError("bad_timestamp", f"timestamp {raw!r} is not ISO-8601") from exc
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        try:
            delta = dt - _EPOCH
        except OverflowError as exc:
            raise DecodeError("bad_timestamp", f"timestamp {raw!r} is out of range") from exc
        us = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    elif isinstance(raw, int | float) and not isinstance(raw, bool) and math.isfinite(raw):
        a = abs(raw)
        if a < 1e11:  # seconds (until year 5138)
            us = round(raw * 1_000_000)
        elif a < 1e14:  # milliseconds
            us = round(raw * 1_000)
        else:  # microseconds
            us = int(raw)
    else:
        raise DecodeError("bad_timestamp", f"timestamp {raw!r} is neither ISO-8601 text nor an epoch number")
    if not TS_MIN_US <= us < TS_MAX_US:
        raise DecodeError(
            "bad_timestamp",
            f"timestamp {raw!r} is outside 1970-2200; epoch numbers must be seconds, milliseconds or microseconds",
        )
    return us


@dataclass
class BatchBuilder:
    """Accumulates decoded messages of one flush as column lists."""

    ts: list[int] = field(default_factory=list)
    device: list[str] = field(default_factory=list)
    metric: list[str] = field(default_factory=list)
    value: list[float | None] = field(default_factory=list)
    quality: list[int] = field(default_factory=list)
    ev_ts: list[int] = field(default_factory=list)
    ev_device: list[str] = field(default_factory=list)
    ev_kind: list[str] = field(default_factory=list)
    ev_code: list[str] = field(default_factory=list)
    ev_text: list[str | None] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    sites: dict[str, str | None] = field(default_factory=dict)  # device -> site, from topics
    messages: int = 0
    # De-duplication bookkeeping: one key per decoded message, and each row's message index.
    keys: list[int | None] = field(default_factory=list)
    r_msg: list[int] = field(default_factory=list)
    e_msg: list[int] = field(default_factory=list)
    current: int = 0
    seqs: list[tuple[str, int]] = field(default_factory=list)  # (device, seq) of messages that carry one

    def __len__(self) -> int:
        return self.messages

    def add_reading(self, ts: int, device: str, metric: str, value: Any) -> None:
        if isinstance(value, bool):
            value = 1.0 if value else 0.0
        if isinstance(value, int | float):
            v = float(value)
            self.r_msg.append(self.current)
            self.ts.append(ts)
            self.device.append(device)
            self.metric.append(metric)
            self.value.append(v)
            self.quality.append(Quality.GOOD if math.isfinite(v) else Quality.SUSPECT)
        elif value is None:
            self.r_msg.append(self.current)
            self.ts.append(ts)
            self.device.append(device)
            self.metric.append(metric)
            self.value.append(None)
            self.quality.append(Quality.SUSPECT)
        else:
            self.add_event(ts, device, "field", metric, str(value)[:500])

    def add_map(self, ts: int, device: str, metrics: dict[str, Any]) -> None:
        """All metrics of one message. The common case, every value a number, takes no per-reading call."""
        values = list(metrics.values())
        # orjson never yields NaN or Inf; integers beyond 2**53 go the slow way (Arrow refuses them as doubles).
        if all(type(v) is float or (type(v) is int and -_EXACT <= v <= _EXACT) for v in values):
            n = len(values)
            self.r_msg.extend(repeat(self.current, n))
            self.ts.extend(repeat(ts, n))
            self.device.extend(repeat(device, n))
            self.metric.extend(metrics)
            self.value.extend(values)
            self.quality.extend(repeat(0, n))
            return
        for name, value in metrics.items():
            self.add_reading(ts, device, name, value)

    def add_event(self, ts: int, device: str, kind: str, code: str, text: str | None) -> None:
        self.e_msg.append(self.current)
        self.ev_ts.append(ts)
        self.ev_device.append(device)
        self.ev_kind.append(kind)
        self.ev_code.append(code)
        self.ev_text.append(text)

    def mark(self) -> tuple[int, int, int]:
        return len(self.ts), len(self.ev_ts), len(self.seqs)

    def rollback(self, mark: tuple[int, int, int]) -> None:
        r, e, q = mark
        del self.seqs[q:]
        for col in (self.ts, self.device, self.metric, self.value, self.quality, self.r_msg):
            del col[r:]
        for ecol in (self.ev_ts, self.ev_device, self.ev_kind, self.ev_code, self.ev_text, self.e_msg):
            del ecol[e:]

    def build(
        self,
        limits: MetricLimits | None = None,
        source: str = "mqtt",
        clock: ClockCheck | None = None,
        mapper: FieldMapper | None = None,
    ) -> IngestBatch:
        readings = readings_from_columns(self.ts, self.device, self.metric, self.value, self.quality)
        if mapper is not None:
            readings = mapper.apply(readings)  # before the range check: limits are in catalogue units
        if limits is not None and readings.num_rows:
            readings = limits.flag_out_of_range(readings)
        if clock is not None and readings.num_rows:
            readings = clock.flag(readings)
        return IngestBatch(
            readings=readings,
            events=events_from_columns(self.ev_ts, self.ev_device, self.ev_kind, self.ev_code, self.ev_text),
            dead_letters=dead_letters_table(self.dead),
            source=source,
            message_keys=pa.array(self.keys, type=pa.uint64()),
            reading_message=pa.array(self.r_msg, type=pa.int32()),
            event_message=pa.array(self.e_msg, type=pa.int32()),
        )


@dataclass(frozen=True)
class ClockCheck:
    """Device clocks that are off: too far ahead is suspect, too old is stale. Both are stored, flagged."""

    max_future_skew_s: float
    stale_after_s: float

    def flag(self, readings: pa.Table, now: datetime | None = None) -> pa.Table:
        now = now or datetime.now(UTC)
        ts = readings["ts"]
        future = pc.greater(ts, pa.scalar(now + timedelta(seconds=self.max_future_skew_s), TS_TYPE))
        stale = pc.less(ts, pa.scalar(now - timedelta(seconds=self.stale_after_s), TS_TYPE))
        quality = readings["quality"]
        good = pc.equal(quality, pa.scalar(Quality.GOOD, pa.uint8()))
        quality = pc.if_else(pc.and_(future, good), pa.scalar(Quality.SUSPECT, pa.uint8()), quality)
        quality = pc.if_else(pc.and_(stale, good), pa.scalar(Quality.STALE, pa.uint8()), quality)
        return readings.set_column(readings.schema.get_field_index("quality"), "quality", quality)


class MetricLimits:
    """Physical ranges from the metric catalogue; values outside are stored flagged OUT_OF_RANGE."""

    def __init__(self, ranges: dict[str, tuple[float | None, float | None]]) -> None:
        names = sorted(ranges)
        self._names = pa.array(names, type=pa.string())
        self._min = pa.array([ranges[n][0] for n in names], type=pa.float64())
        self._max = pa.array([ranges[n][1] for n in names], type=pa.float64())

    def flag_out_of_range(self, readings: pa.Table) -> pa.Table:
        if len(self._names) == 0:
            return readings
        idx = pc.index_in(readings["metric"], value_set=self._names)
        lo = pc.take(self._min, idx)
        hi = pc.take(self._max, idx)
        value = readings["value"]
        outside = pc.or_kleene(pc.less(value, lo), pc.greater(value, hi))
        outside = pc.fill_null(outside, False)
        good = pc.equal(readings["quality"], pa.scalar(Quality.GOOD, pa.uint8()))
        flag = pc.and_(outside, good)
        quality = pc.if_else(flag, pa.scalar(Quality.OUT_OF_RANGE, pa.uint8()), readings["quality"])
        return readings.set_column(readings.schema.get_field_index("quality"), "quality", quality)


def decode_message(builder: BatchBuilder, topic: str, payload: bytes, info: TopicInfo | None, received_us: int) -> None:
    """Decode one message into `builder`. Raises DecodeError; the caller dead-letters it."""
    if info is None:
        raise DecodeError("unmatched_topic", f"topic {topic!r} matches no subscription template")
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise DecodeError("invalid_json", f"payload is not valid JSON: {exc}") from exc
    items = doc if isinstance(doc, list) else [doc]
    # A bad element rejects the message as a unit: remember where it started, cut back on error.
    mark = builder.mark()
    builder.current = len(builder.keys)
    identified = True
    try:
        for item in items:
            if not isinstance(item, dict):
                raise DecodeError(
                    "bad_shape", f"expected a JSON object (or an array of them), got {type(item).__name__}"
                )
            identified &= _decode_object(builder, item, info, received_us)
        if builder.mark()[:2] == mark[:2]:
            raise DecodeError("no_readings", "the message holds no metrics, readings or event code")
    except DecodeError:
        builder.rollback(mark)
        raise
    builder.keys.append(message_key(topic, payload) if identified else None)
    if info.device_id not in builder.sites:
        builder.sites[info.device_id] = info.site


def message_key(topic: str, payload: bytes) -> int:
    """64-bit identity of a message: a broker's redelivery has the same topic and payload."""
    h = hashlib.blake2b(payload, digest_size=8, person=b"gridsentry")
    h.update(topic.encode())
    return int.from_bytes(h.digest(), "little")


def _decode_object(b: BatchBuilder, obj: dict[str, Any], info: TopicInfo, received_us: int) -> bool:
    """Decode one object; True if it carries its own identity (a timestamp or sequence number), so a
    repeat of it is a redelivery, not a new reading that happens to look the same."""
    raw_ts = obj.get("ts", obj.get("timestamp", obj.get("time")))
    seq = obj.get("seq")
    if type(seq) is int:
        b.seqs.append((info.device_id, seq))
    identified = raw_ts is not None or seq is not None
    ts = parse_ts(raw_ts) if raw_ts is not None else received_us
    device = info.device_id
    if info.channel == "events" or ("code" in obj and "metrics" not in obj and "value" not in obj):
        code = obj.get("code")
        if code is None:
            raise DecodeError("bad_event", "an event needs a 'code' (e.g. Charging, Faulted, HighTemperature)")
        text = obj.get("text")
        detail = obj.get("detail")
        if isinstance(detail, dict):
            # Structured events (charging sessions) keep their figures as JSON in `text`.
            text = orjson.dumps({"text": text, **detail} if text is not None else detail).decode()
        elif detail is not None:
            raise DecodeError("bad_event", "an event's 'detail' must be an object of name: value")
        b.add_event(ts, device, str(obj.get("kind", "status")), str(code), None if text is None else str(text))
        return identified
    metrics = obj.get("metrics")
    if isinstance(metrics, dict):
        b.add_map(ts, device, metrics)
        return identified
    if metrics is not None:
        raise DecodeError("bad_shape", "'metrics' must be an object of name: value")
    readings = obj.get("readings")
    if isinstance(readings, list):
        identified = identified or all(isinstance(r, dict) and r.get("ts") is not None for r in readings)
        for r in readings:
            if not isinstance(r, dict) or "metric" not in r or "value" not in r:
                raise DecodeError("bad_shape", "each entry of 'readings' needs 'metric' and 'value'")
            r_ts = r.get("ts")
            b.add_reading(parse_ts(r_ts) if r_ts is not None else ts, device, str(r["metric"]), r["value"])
        return identified
    if "metric" in obj and "value" in obj:
        b.add_reading(ts, device, str(obj["metric"]), obj["value"])
        return identified
    b.add_map(ts, device, {k: v for k, v in obj.items() if k not in RESERVED_KEYS})
    return identified
