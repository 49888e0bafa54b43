"""Property tests of the MQTT payload decoder (collector/payloads.py).

The contract under test: any bytes in -> either readings/events appended to the builder, or a
DecodeError with a short `reason` and nothing appended (a bad message is rejected as a unit);
never any other exception. Timestamps come out as int microseconds, values as float or None with
a quality flag, and strings where numbers belong as events of kind "field".
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import string
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.payloads import (
    BatchBuilder,
    DecodeError,
    MetricLimits,
    TopicTemplate,
    decode_message,
    parse_ts,
)
from storage.batch import Quality

T = TopicTemplate("gridsentry/{site}/{device_id}/{channel}")
TOPIC = "gridsentry/demo/DC01/telemetry"
EVENTS_TOPIC = "gridsentry/demo/DC01/events"
NOW = 1_800_000_000_000_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ONE_US = timedelta(microseconds=1)
CST = timezone(timedelta(hours=8))

#: What the storage layer can hold and hand back: Arrow/DuckDB timestamps are int64 microseconds,
#: and the service turns them into Python datetimes (years 1..9999) after every commit.
TS_MIN_US = (datetime(1, 1, 1, tzinfo=UTC) - EPOCH) // ONE_US
TS_MAX_US = (datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC) - EPOCH) // ONE_US

REASONS = {"unmatched_topic", "invalid_json", "bad_shape", "bad_timestamp", "bad_event", "no_readings"}

PROPS = settings(max_examples=300, deadline=None)


# --- helpers ---------------------------------------------------------------------------------------


def prefilled() -> BatchBuilder:
    """A builder that already holds readings, events, a field event and a known site."""
    b = BatchBuilder()
    decode_message(
        b,
        "gridsentry/s0/PRE01/telemetry",
        b'{"ts": "2026-11-23T10:00:00+08:00", "metrics": {"a": 1.5, "b": null, "state": "Idle", "c": 1e308}}',
        T.match("gridsentry/s0/PRE01/telemetry"),
        NOW,
    )
    decode_message(
        b,
        "gridsentry/s0/PRE01/events",
        b'{"ts": 1763892000, "kind": "fault", "code": "E42", "text": "over temperature"}',
        T.match("gridsentry/s0/PRE01/events"),
        NOW,
    )
    b.messages = 2
    return b


def snapshot(b: BatchBuilder) -> dict[str, Any]:
    """A copy of the builder's data: every list and dict field (columns, dead letters, sites, and
    whatever bookkeeping lists it grows), plus the message count. Scalar scratch fields that each
    decode overwrites anyway (e.g. the index of the message being decoded) are left out."""
    state: dict[str, Any] = {"messages": b.messages}
    for f in dataclasses.fields(b):
        v = getattr(b, f.name)
        if isinstance(v, list | dict):
            state[f.name] = copy.copy(v)
    assert {"ts", "device", "metric", "value", "quality", "ev_ts", "ev_code", "dead", "sites"} <= state.keys()
    return state


def same(a: list[Any], b: list[Any]) -> bool:
    """List equality where NaN equals NaN (a value column may hold one)."""
    return len(a) == len(b) and all(x == y or (x != x and y != y) for x, y in zip(a, b, strict=True))


def assert_unchanged(before: dict[str, Any], b: BatchBuilder) -> None:
    after = snapshot(b)
    assert after.keys() == before.keys()
    for key, old in before.items():
        if isinstance(old, list):
            assert same(after[key], old), f"builder column {key!r} changed by a rejected message"
        else:
            assert after[key] == old, f"builder {key!r} changed by a rejected message"


def decode_checked(payload: bytes, topic: str = TOPIC) -> tuple[BatchBuilder, DecodeError | None, int, int]:
    """Decode into a prefilled builder and check the contract whatever happens.

    Anything other than DecodeError propagates and fails the test. Returns the builder, the error
    (if any) and the column lengths before the call.
    """
    b = prefilled()
    before = snapshot(b)
    n_r, n_e = len(b.ts), len(b.ev_ts)
    try:
        decode_message(b, topic, payload, T.match(topic), NOW)
    except DecodeError as exc:
        assert exc.reason in REASONS, exc.reason
        assert isinstance(exc.detail, str) and exc.detail
        assert_unchanged(before, b)
        return b, exc, n_r, n_e
    check_appended(b, n_r, n_e, T.match(topic).device_id)  # type: ignore[union-attr]
    return b, None, n_r, n_e


def check_appended(b: BatchBuilder, n_r: int, n_e: int, device: str) -> None:
    """What an accepted message appended is well typed and belongs to the topic's device."""
    cols = (b.ts, b.device, b.metric, b.value, b.quality)
    assert len({len(c) for c in cols}) == 1, "reading columns out of step"
    ev_cols = (b.ev_ts, b.ev_device, b.ev_kind, b.ev_code, b.ev_text)
    assert len({len(c) for c in ev_cols}) == 1, "event columns out of step"
    assert len(b.ts) + len(b.ev_ts) > n_r + n_e, "an accepted message appended nothing"
    for ts, dev, metric, value, quality in zip(*(c[n_r:] for c in cols), strict=True):
        assert type(ts) is int
        assert dev == device
        assert isinstance(metric, str)
        # None, or a number (that it must be a float is test_mixed_values_numbers_nulls_and_strings's job)
        assert value is None or type(value) in (float, int)
        if value is not None and math.isfinite(value):
            assert quality == Quality.GOOD
        else:
            assert quality == Quality.SUSPECT
    for ts, dev, kind, code, text in zip(*(c[n_e:] for c in ev_cols), strict=True):
        assert type(ts) is int
        assert dev == device
        assert isinstance(kind, str) and isinstance(code, str)
        assert text is None or isinstance(text, str)


def check_storable(b: BatchBuilder) -> None:
    """What the decoder accepted turns into a batch (int64 µs timestamps that read back as datetimes).

    A message that fails here fails the whole flush it was decoded into, after the collector accepted it.
    """
    batch = b.build(MetricLimits({"a": (0.0, 10.0), "power_kw": (0.0, 500.0)}))
    assert batch.reading_count == len(b.ts)
    assert batch.event_count == len(b.ev_ts)
    assert all(TS_MIN_US <= t <= TS_MAX_US for t in b.ts + b.ev_ts), "accepted an out-of-range timestamp"
    batch.readings["ts"].to_pylist()
    batch.events["ts"].to_pylist()


# --- strategies ------------------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()  # json.dumps writes NaN/Infinity literals, which orjson must refuse cleanly
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=15,
)

#: Small values for the fields of decoder-shaped objects (deep trees there only cost generation time).
small_json = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=4,
)

#: Keys the decoder looks at, so that generated objects reach every branch, not just "no_readings".
DECODER_KEYS = ("ts", "timestamp", "time", "metrics", "readings", "metric", "value", "code", "kind", "text", "seq")
decoder_objects = st.dictionaries(
    st.sampled_from(DECODER_KEYS) | st.text(max_size=8),
    small_json,
    max_size=5,
)
long_reading = st.fixed_dictionaries(
    {"metric": small_json, "value": small_json}, optional={"ts": small_json, "extra": small_json}
)
shaped_objects = decoder_objects | st.builds(
    lambda obj, rs: {**obj, "readings": rs}, decoder_objects, st.lists(long_reading | small_json, max_size=4)
)
shaped_payloads = shaped_objects | st.lists(shaped_objects, max_size=3)

topics = st.sampled_from([TOPIC, EVENTS_TOPIC, "gridsentry/demo/DC01/status"])

#: Timestamps of the well-formed messages: 2001-01-01 .. 2100-01-01, in microseconds.
TS_LO = (datetime(2001, 1, 1, tzinfo=UTC) - EPOCH) // ONE_US
TS_HI = (datetime(2100, 1, 1, tzinfo=UTC) - EPOCH) // ONE_US
OFFSETS = [UTC, CST, timezone(timedelta(hours=-5)), timezone(timedelta(hours=5, minutes=30))]


@st.composite
def timestamps(draw: st.DrawFn) -> tuple[Any, int]:
    """A JSON timestamp in one of the accepted forms, and the microseconds it must decode to."""
    us = draw(st.integers(TS_LO, TS_HI))
    form = draw(
        st.sampled_from(["iso", "iso_z", "iso_naive", "iso_ms", "epoch_s", "epoch_s_ms", "epoch_ms", "epoch_us"])
    )
    dt = EPOCH + us * ONE_US
    if form == "iso":
        return dt.astimezone(draw(st.sampled_from(OFFSETS))).isoformat(), us
    if form == "iso_z":
        return dt.isoformat(timespec="seconds").replace("+00:00", "Z"), us // 1_000_000 * 1_000_000
    if form == "iso_naive":
        return dt.replace(tzinfo=None).isoformat(), us
    if form == "iso_ms":
        return dt.astimezone(CST).isoformat(timespec="milliseconds"), us // 1000 * 1000
    if form == "epoch_s":
        return us // 1_000_000, us // 1_000_000 * 1_000_000
    if form == "epoch_s_ms":  # float seconds with millisecond precision, e.g. 1763892000.123
        return (us // 1000) / 1000, us // 1000 * 1000
    if form == "epoch_ms":
        return us // 1000, us // 1000 * 1000
    return us, us


metric_names = st.text(min_size=1, max_size=24)
finite_floats = st.floats(allow_nan=False, allow_infinity=False)
level = st.text(alphabet=string.ascii_letters + string.digits + "-_.:", min_size=1, max_size=12)


# --- 1. any bytes ----------------------------------------------------------------------------------


@PROPS
@given(payload=st.binary(max_size=300), topic=topics)
def test_arbitrary_bytes_raise_only_decode_error_and_change_nothing(payload: bytes, topic: str) -> None:
    decode_checked(payload, topic)


@PROPS
@given(
    prefix=st.sampled_from([b"", b"{", b"[", b'{"metrics": {', b'{"ts": ', b'[{"metrics": {"a": 1}}, ']),
    body=st.binary(max_size=100),
)
def test_json_looking_garbage(prefix: bytes, body: bytes) -> None:
    decode_checked(prefix + body)


def test_unmatched_topic_changes_nothing() -> None:
    b = prefilled()
    before = snapshot(b)
    with pytest.raises(DecodeError) as err:
        decode_message(b, "x/y", b'{"metrics": {"a": 1}}', None, NOW)
    assert err.value.reason == "unmatched_topic"
    assert_unchanged(before, b)


# --- 2. any JSON value -----------------------------------------------------------------------------


@PROPS
@given(doc=json_values, topic=topics, ascii_only=st.booleans())
def test_arbitrary_json_raises_only_decode_error_and_changes_nothing(doc: Any, topic: str, ascii_only: bool) -> None:
    b, err, _, _ = decode_checked(json.dumps(doc, ensure_ascii=ascii_only).encode(), topic)
    if err is None:
        check_storable(b)


@PROPS
@given(doc=shaped_payloads, topic=topics)
def test_decoder_shaped_json_raises_only_decode_error_and_changes_nothing(doc: Any, topic: str) -> None:
    """Objects built from the keys the decoder looks at (ts, metrics, readings, code...) with any values."""
    b, err, _, _ = decode_checked(json.dumps(doc).encode(), topic)
    if err is None:
        check_storable(b)


@pytest.mark.parametrize(
    "payload",
    [
        b'{"metrics": {"a": NaN}}',
        b'{"metrics": {"a": Infinity}}',
        b'{"metrics": {"a": -Infinity}}',
        b'{"metrics": {"a": 1e400}}',
        b'{"ts": NaN, "metrics": {"a": 1}}',
        b'{"metrics": {"a": "\\ud800"}}',  # a lone surrogate
        b'{"metrics": {"a": 1}}\xff',
        b'{"metrics": {"\xff\xfe": 1}}',  # invalid UTF-8
        b"[" * 5000 + b"]" * 5000,  # deeper than any parser's limit
        b'{"a":' * 3000 + b"1" + b"}" * 3000,
        b"",
        b"\x00",
        b"null",
        b"[]",
        b"{}",
        b'[{"metrics": {"a": 1}}, {"ts": "yesterday", "metrics": {"b": 2}}]',
        b'[{"metrics": {"a": 1}}, {"code": null}]',
    ],
)
def test_crafted_payloads_are_rejected_as_a_unit(payload: bytes) -> None:
    _, err, _, _ = decode_checked(payload)
    assert err is not None


def test_nan_literal_is_invalid_json() -> None:
    _, err, _, _ = decode_checked(b'{"metrics": {"a": NaN}}')
    assert err is not None and err.reason == "invalid_json"


# --- 3. well-formed messages decode exactly --------------------------------------------------------


@PROPS
@given(
    metrics=st.dictionaries(metric_names, finite_floats, min_size=1, max_size=8),
    ts=timestamps(),
    site=level,
    device=level,
    seq=st.none() | st.integers(0, 2**31),
    as_array=st.booleans(),
)
def test_metrics_map_decodes_to_exactly_the_generated_readings(
    metrics: dict[str, float], ts: tuple[Any, int], site: str, device: str, seq: int | None, as_array: bool
) -> None:
    raw_ts, want_us = ts
    doc: dict[str, Any] = {"ts": raw_ts, "metrics": metrics}
    if seq is not None:
        doc["seq"] = seq
    payload = json.dumps([doc] if as_array else doc).encode()
    topic = f"gridsentry/{site}/{device}/telemetry"
    b = BatchBuilder()
    decode_message(b, topic, payload, T.match(topic), NOW)
    assert list(zip(b.metric, b.value, strict=True)) == list(metrics.items())
    assert all(type(v) in (int, float) for v in b.value)
    assert b.ts == [want_us] * len(metrics), (raw_ts, want_us)
    assert b.device == [device] * len(metrics)
    assert b.quality == [Quality.GOOD] * len(metrics)
    assert not b.ev_ts
    assert b.sites == {device: site}


@PROPS
@given(
    metrics=st.dictionaries(
        metric_names, finite_floats | st.integers(-(2**53), 2**53) | st.booleans() | st.none() | st.text(max_size=10)
    ),
    n_messages=st.integers(1, 3),
)
def test_mixed_values_numbers_nulls_and_strings(metrics: dict[str, Any], n_messages: int) -> None:
    """Numbers -> GOOD, null -> None SUSPECT, bool -> 0/1, text -> a "field" event: none dropped."""
    b = BatchBuilder()
    payload = json.dumps({"ts": 1763892000, "metrics": metrics}).encode()
    numeric = {k: v for k, v in metrics.items() if not isinstance(v, str)}
    text = {k: v for k, v in metrics.items() if isinstance(v, str)}
    for _ in range(n_messages):
        try:
            decode_message(b, TOPIC, payload, T.match(TOPIC), NOW)
        except DecodeError as exc:
            assert not metrics and exc.reason == "no_readings"
            return
    want = [(k, None if v is None else float(v)) for k, v in numeric.items()] * n_messages
    assert list(zip(b.metric, b.value, strict=True)) == want
    # Numbers stay as the JSON gave them (int within 2**53, or float) until Arrow makes them float64.
    assert all(v is None or type(v) in (int, float) for v in b.value)
    assert b.quality == [Quality.SUSPECT if v is None else Quality.GOOD for _, v in want]
    assert list(zip(b.ev_kind, b.ev_code, b.ev_text, strict=True)) == [("field", k, v) for k, v in text.items()] * (
        n_messages
    )


# --- 4. build(): one row per reading, OUT_OF_RANGE exactly outside the limits ----------------------

LIMIT_NAMES = ["temp_c", "power_kw", "soc_pct", "volt_v"]
bounds = st.none() | st.floats(-1e6, 1e6, allow_nan=False)
reading_values = (
    st.none() | st.floats(-2e6, 2e6) | st.integers(-(10**6), 10**6) | st.sampled_from([math.nan, math.inf, -math.inf])
)


@PROPS
@given(
    ranges=st.dictionaries(st.sampled_from(LIMIT_NAMES), st.tuples(bounds, bounds)),
    messages=st.lists(
        st.dictionaries(st.sampled_from([*LIMIT_NAMES, "other"]), reading_values, min_size=1, max_size=5),
        max_size=12,
    ),
)
def test_build_keeps_every_reading_and_flags_exactly_the_out_of_range(
    ranges: dict[str, tuple[float | None, float | None]], messages: list[dict[str, Any]]
) -> None:
    b = BatchBuilder()
    for i, metrics in enumerate(messages):
        # orjson refuses NaN/Infinity in JSON, so non-finite values go in through the builder directly.
        if all(v is None or math.isfinite(v) for v in metrics.values()):
            payload = json.dumps({"ts": 1763892000 + i, "metrics": metrics}).encode()
            decode_message(b, TOPIC, payload, T.match(TOPIC), NOW)
        else:
            for name, value in metrics.items():
                b.add_reading(1763892000_000_000 + i, "DC01", name, value)
    added = sum(len(m) for m in messages)
    assert len(b.ts) == added
    batch = b.build(MetricLimits(ranges))
    assert batch.reading_count == added
    assert batch.readings["ts"].cast("int64").to_pylist() == b.ts
    assert batch.readings["metric"].to_pylist() == b.metric
    assert same(batch.readings["value"].to_pylist(), b.value)
    want = []
    for metric, value, quality in zip(b.metric, b.value, b.quality, strict=True):
        lo, hi = ranges.get(metric, (None, None))
        outside = value is not None and ((lo is not None and value < lo) or (hi is not None and value > hi))
        want.append(Quality.OUT_OF_RANGE if quality == Quality.GOOD and outside else quality)
    assert batch.readings["quality"].to_pylist() == want


# --- 5. parse_ts -----------------------------------------------------------------------------------


@PROPS
@given(dt=st.datetimes(datetime(1970, 1, 2), datetime(2199, 12, 31), timezones=st.sampled_from([UTC, CST])))
def test_parse_ts_round_trips_aware_datetimes(dt: datetime) -> None:
    """1970-2199: the decoder may refuse implausible years, but not these."""
    want = (dt - EPOCH) // ONE_US
    assert parse_ts(dt.isoformat()) == want
    assert parse_ts(dt.astimezone(UTC).isoformat().replace("+00:00", "Z")) == want
    assert parse_ts(dt.isoformat(timespec="milliseconds")) == want // 1000 * 1000


@PROPS
@given(us=st.integers(TS_LO, TS_HI))
def test_parse_ts_epoch_forms(us: int) -> None:
    assert parse_ts(us) == us
    assert parse_ts(us // 1000) == us // 1000 * 1000
    assert parse_ts(us // 1_000_000) == us // 1_000_000 * 1_000_000
    assert parse_ts((us // 1000) / 1000) == us // 1000 * 1000


@PROPS
@given(raw=json_values)
def test_parse_ts_returns_int_or_raises_bad_timestamp(raw: Any) -> None:
    try:
        got = parse_ts(raw)
    except DecodeError as exc:
        assert exc.reason == "bad_timestamp"
    else:
        assert type(got) is int
        assert TS_MIN_US <= got <= TS_MAX_US, f"{raw!r} -> {got}: not storable"


@PROPS
@given(
    raw=st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.datetimes(timezones=st.sampled_from([UTC, CST, None])).map(datetime.isoformat)
)
def test_parse_ts_accepts_only_storable_timestamps(raw: Any) -> None:
    try:
        got = parse_ts(raw)
    except DecodeError as exc:
        assert exc.reason == "bad_timestamp"
    else:
        assert type(got) is int
        assert TS_MIN_US <= got <= TS_MAX_US, f"{raw!r} -> {got}: not storable"


# --- 6. what the decoder accepts, storage can hold -------------------------------------------------


@PROPS
@given(
    ts=st.integers(-(2**80), 2**80) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30),
    where=st.sampled_from(["message", "reading"]),
)
def test_accepted_timestamps_fit_in_storage(ts: Any, where: str) -> None:
    """A timestamp the decoder accepts must become a batch the storage layer (int64 µs, years 1..9999) holds.

    Otherwise one message fails `build()` for the whole flush it sits in, after it was accepted.
    """
    if where == "message":
        doc: dict[str, Any] = {"ts": ts, "metrics": {"a": 1.0}}
    else:
        doc = {"readings": [{"ts": ts, "metric": "a", "value": 1.0}]}
    b, err, _, _ = decode_checked(json.dumps(doc).encode())
    if err is None:
        assert all(TS_MIN_US <= t <= TS_MAX_US for t in b.ts), f"accepted out-of-range ts {b.ts[-1]} from {ts!r}"
        batch = b.build(MetricLimits({"a": (0.0, 10.0)}))
        assert batch.reading_count == len(b.ts)
        batch.readings["ts"].to_pylist()


@pytest.mark.parametrize(
    "payload",
    [
        b'{"ts": 1e19, "metrics": {"a": 1}}',  # > int64 microseconds
        b'{"ts": 18446744073709551615, "metrics": {"a": 1}}',
        b'{"ts": -1e300, "metrics": {"a": 1}}',
        b'{"readings": [{"ts": 1e30, "metric": "a", "value": 1}]}',
        b'{"ts": 400000000000000000, "metrics": {"a": 1}}',  # year 14645
    ],
)
def test_out_of_range_epoch_timestamps_are_rejected_not_stored(payload: bytes) -> None:
    """Regression (found by these tests, fixed in 419b1db): these used to decode, and then make
    `BatchBuilder.build()` fail for the whole flush (the collector task died on it)."""
    b = prefilled()
    before = snapshot(b)
    with pytest.raises(DecodeError) as err:
        decode_message(b, TOPIC, payload, T.match(TOPIC), NOW)
    assert err.value.reason == "bad_timestamp"
    assert_unchanged(before, b)
    b.build(MetricLimits({}))


@pytest.mark.parametrize("number", [2**53 + 1, 2**63 - 1, 2**64 - 1, -(2**63)])
@pytest.mark.parametrize("shape", ["metrics_map", "flat"])
def test_big_integer_values_are_stored_as_floats(number: int, shape: str) -> None:
    """Regression (fixed in 419b1db): integers beyond 2**53 are valid JSON numbers; they must become floats,
    not make `build()` raise ArrowInvalid for the whole flush (the columnar fast path of 159f21d kept ints)."""
    if shape == "metrics_map":
        payload = b'{"ts": 1763892000, "metrics": {"a": %d, "b": 1}}' % number
    else:
        payload = b'{"ts": 1763892000, "a": %d, "b": 1}' % number
    b = BatchBuilder()
    decode_message(b, TOPIC, payload, T.match(TOPIC), NOW)
    assert b.value == [float(number), 1.0]
    check_storable(b)
    assert b.build().readings["value"].to_pylist() == [float(number), 1.0]
