from datetime import UTC, datetime

import pytest

from collector.payloads import BatchBuilder, DecodeError, MetricLimits, TopicTemplate, decode_message, parse_ts
from storage.batch import Quality

T = TopicTemplate("gridsentry/{site}/{device_id}/{channel}")
NOW = 1_800_000_000_000_000


def decode(payload: bytes, topic: str = "gridsentry/demo/DC01/telemetry") -> BatchBuilder:
    b = BatchBuilder()
    decode_message(b, topic, payload, T.match(topic), NOW)
    return b


def test_topic_template():
    info = T.match("gridsentry/demo/DC01/telemetry")
    assert info is not None and (info.site, info.device_id, info.channel) == ("demo", "DC01", "telemetry")
    assert T.match("gridsentry/demo/DC01") is None
    assert T.match("other/demo/DC01/telemetry") is None
    assert TopicTemplate("site/+/{device_id}").match("site/x/D1").device_id == "D1"


def test_metrics_map():
    b = decode(b'{"ts": "2026-11-23T10:00:00+08:00", "seq": 3, "metrics": {"gun1_temp_c": 51.5, "gun1_power_kw": 60}}')
    assert b.metric == ["gun1_temp_c", "gun1_power_kw"]
    assert b.value == [51.5, 60.0]
    assert b.ts[0] == parse_ts("2026-11-23T02:00:00Z")
    assert b.device == ["DC01", "DC01"]


def test_flat_object_and_array_and_long_readings():
    b = decode(b'[{"ts": 1763892000, "power_kw": 6.9, "seq": 1}, {"ts": 1763892001000, "power_kw": 7.0}]')
    assert b.value == [6.9, 7.0]
    assert b.ts == [1763892000_000_000, 1763892001_000_000]
    b = decode(
        b'{"device_id": "x", "readings": [{"ts": "2026-11-23T00:00:00Z", "metric": "a", "value": 1}, {"metric": "b", "value": 2}]}'
    )
    assert b.metric == ["a", "b"]
    assert b.ts[1] == NOW  # no ts on the reading or message: arrival time


def test_events():
    b = decode(
        b'{"ts": "2026-11-23T00:00:00Z", "kind": "status", "code": "Charging", "text": "gun 1"}',
        "gridsentry/demo/DC01/events",
    )
    assert b.ev_code == ["Charging"] and b.ev_kind == ["status"] and b.ev_text == ["gun 1"]
    assert not b.ts


def test_strings_and_nulls_are_kept_not_dropped():
    b = decode(b'{"metrics": {"status": "Charging", "power_kw": null, "door_open": true}}')
    assert b.ev_kind == ["field"] and b.ev_code == ["status"] and b.ev_text == ["Charging"]
    assert b.value == [None, 1.0]
    assert b.quality == [Quality.SUSPECT, Quality.GOOD]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b'{"ts": broken', "invalid_json"),
        (b'"just a string"', "bad_shape"),
        (b'{"ts": "yesterday", "metrics": {"a": 1}}', "bad_timestamp"),
        (b'{"metrics": [1, 2]}', "bad_shape"),
        (b'{"ts": "2026-11-23T00:00:00Z"}', "no_readings"),
        (b'[{"metrics": {"a": 1}}, 5]', "bad_shape"),
    ],
)
def test_bad_payloads_raise_with_reason(payload, reason):
    b = BatchBuilder()
    with pytest.raises(DecodeError) as err:
        decode_message(b, "gridsentry/demo/DC01/telemetry", payload, T.match("gridsentry/demo/DC01/telemetry"), NOW)
    assert err.value.reason == reason
    assert not b.ts  # a bad message adds nothing, not even its good half


def test_unmatched_topic():
    with pytest.raises(DecodeError) as err:
        decode_message(BatchBuilder(), "x/y", b"{}", None, NOW)
    assert err.value.reason == "unmatched_topic"


def test_out_of_range_flagged_not_dropped():
    b = decode(b'{"metrics": {"gun1_temp_c": 900, "gun2_temp_c": 50, "other": 1e9}}')
    batch = b.build(MetricLimits({"gun1_temp_c": (-40, 200), "gun2_temp_c": (-40, 200)}))
    assert batch.readings["quality"].to_pylist() == [Quality.OUT_OF_RANGE, Quality.GOOD, Quality.GOOD]
    assert batch.readings["value"].to_pylist() == [900.0, 50.0, 1e9]


def test_parse_ts_forms():
    base = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp()) * 1_000_000
    assert parse_ts("2026-01-01T00:00:00Z") == base
    assert parse_ts("2026-01-01T00:00:00") == base  # naive = UTC
    assert parse_ts(base / 1e6) == base
    assert parse_ts(base // 1000) == base
    assert parse_ts(base) == base
    with pytest.raises(DecodeError):
        parse_ts(True)
