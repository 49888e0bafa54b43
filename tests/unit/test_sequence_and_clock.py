from datetime import UTC, datetime, timedelta

from collector.payloads import ClockCheck
from collector.sequence import SequenceTracker
from storage.batch import Quality, readings_from_columns


def test_gap_reported_after_grace_with_range():
    t = SequenceTracker(grace_s=5)
    t.observe([("DC01", 1), ("DC01", 2), ("DC01", 10), ("AC01", 7)], now=0)
    assert t.expired(now=4) == []
    [gap] = t.expired(now=5)
    assert (gap.device_id, gap.first, gap.last, gap.size) == ("DC01", 3, 9, 7)
    assert gap.describe() == "messages 3-9 never arrived (7 messages)"
    assert t.gaps_reported == 1 and t.messages_missing == 7
    assert t.expired(now=100) == []  # reported once


def test_late_messages_close_or_split_gaps():
    t = SequenceTracker(grace_s=5)
    t.observe([("D", 1), ("D", 5)], now=0)  # 2-4 missing
    t.observe([("D", 3)], now=1)  # arrives late: 2 and 4 still missing
    gaps = t.expired(now=10)
    assert [(g.first, g.last) for g in gaps] == [(2, 2), (4, 4)]
    t.observe([("D", 6), ("D", 8), ("D", 7)], now=20)  # out of order within the grace: no gap
    assert t.expired(now=30) == []


def test_device_restart_and_repeats_are_not_gaps():
    t = SequenceTracker(grace_s=1)
    t.observe([("D", 5000), ("D", 5001), ("D", 1), ("D", 2), ("D", 2)], now=0)
    assert t.expired(now=10) == [] and t.restarts == 1


def test_clock_check_flags_future_and_stale_but_keeps_rows():
    now = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    us = lambda dt: int(dt.timestamp() * 1_000_000)  # noqa: E731
    ts = [us(now), us(now + timedelta(minutes=10)), us(now - timedelta(days=30)), us(now + timedelta(minutes=10))]
    readings = readings_from_columns(ts, ["D"] * 4, ["m"] * 4, [1.0] * 4, [0, 0, 0, Quality.OUT_OF_RANGE])
    flagged = ClockCheck(max_future_skew_s=300, stale_after_s=7 * 86400).flag(readings, now)
    assert flagged["quality"].to_pylist() == [Quality.GOOD, Quality.SUSPECT, Quality.STALE, Quality.OUT_OF_RANGE]
    assert flagged.num_rows == 4
