"""Reliability battery B1: a malformed-payload corpus mixed into a valid stream, on real parts.

A deterministic corpus of malformed payloads of many kinds is shuffled (seeded) into 10,000 valid
metrics-map messages, published at QoS 1 to a real mosquitto, and ingested by a running Service.
Every valid reading must be stored exactly once, every malformed message must land in dead_letters
with the right reason (and nothing of it in readings or events, not even the good half of an array),
and the service must stay alive, answering, and bounded in memory.

Memory: the stream goes out in two phases, a warm-up (the first 2,000 valid messages with a tenth of
the corpus, one of each ~1 MB kind among it) and the rest (8,000 valid messages, nine tenths of the
corpus); RSS growth is measured over the second. From a cold start the process grows some 60 MB on
valid messages alone (shared-library pages, DuckDB and Arrow pools, allocator arenas that keep the
high-water mark of the first 1 MB payloads): that is start-up, not what malformed input costs, and
it would swamp the figure this test is after (a leak: growth that keeps coming with more input).
"""

from __future__ import annotations

import asyncio
import json
import pickle
import random
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from collector.payloads import BatchBuilder, DecodeError, TopicTemplate, decode_message
from gridsentry.config import DeviceConfig
from storage.batch import DEAD_LETTER_PAYLOAD_LIMIT
from tests.conftest import MosquittoBroker, api_headers
from tests.integration.test_pipeline import broker_config, start_service, wait_for

pytestmark = pytest.mark.integration

SEED = 20261123
N_VALID = 10_000
READINGS_PER_MESSAGE = 5
METRICS = ("m_power_kw", "m_energy_kwh", "m_temp_c", "m_voltage_v", "m_current_a")  # no rule binds to these
DEVICES = [DeviceConfig(id=f"DC{i:02d}", site="s1", kind="charger_dc") for i in range(1, 6)] + [
    DeviceConfig(id=f"INV{i:02d}", site="s2", kind="pv_inverter") for i in range(1, 6)
]
BASE_MS = 1_795_392_000_000  # 2026-11-23T00:00:00Z
HUGE = 1024 * 1024
RSS_LIMIT_MB = 50
N_WARMUP = 2_000  # valid messages (with a tenth of the corpus) ingested before the RSS baseline

#: The publisher runs in its own process, so that the RSS measured is the service's, not that of paho
#: holding 10,000 outgoing messages (several MB of them 1 MB payloads). QoS 1, every PUBACK awaited.
PUBLISHER = """
import pickle, sys, time
import paho.mqtt.client as paho
port, path = int(sys.argv[1]), sys.argv[2]
with open(path, "rb") as f:
    messages = pickle.load(f)
c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"b1-pub-{time.monotonic_ns()}")
c.max_inflight_messages_set(1000)
c.connect("127.0.0.1", port)
c.loop_start()
infos = [c.publish(t, p, qos=1) for t, p in messages]
for i in infos:
    i.wait_for_publish(20)
    assert i.is_published(), "no PUBACK"
c.loop_stop()
c.disconnect()
"""


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


async def publish_in_subprocess(port: int, messages: list[tuple[str, bytes]], path: Path) -> None:
    path.write_bytes(pickle.dumps(messages))
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", PUBLISHER, str(port), str(path))
    try:
        rc = await asyncio.wait_for(proc.wait(), 60)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError("the publisher did not finish within 60 s") from None
    assert rc == 0, f"the publisher failed with exit code {rc}"


def telemetry(device: DeviceConfig) -> str:
    return f"gridsentry/{device.site}/{device.id}/telemetry"


def events_topic(device: DeviceConfig) -> str:
    return f"gridsentry/{device.site}/{device.id}/events"


def valid_messages(rng: random.Random) -> tuple[list[tuple[str, bytes]], Counter[str]]:
    """N_VALID metrics-map messages, READINGS_PER_MESSAGE readings each, unique (device, ts) and payloads."""
    messages = []
    per_device: Counter[str] = Counter()
    for i in range(N_VALID):
        dev = DEVICES[i % len(DEVICES)]
        doc = {
            "ts": BASE_MS + i * 100 if i % 2 else f"2026-11-23T08:00:{i // 1000:02d}.{i % 1000:03d}+08:00",
            "seq": i // len(DEVICES),  # consecutive per device: no sequence gaps
            "metrics": {m: round(rng.uniform(-50, 500), 3) for m in METRICS},
        }
        messages.append((telemetry(dev), json.dumps(doc).encode()))
        per_device[dev.id] += READINGS_PER_MESSAGE
    return messages, per_device


def good_doc(rng: random.Random) -> dict[str, object]:
    return {"ts": BASE_MS + rng.randrange(10**9), "metrics": {"a": rng.random(), "b": rng.randrange(100)}}


def malformed_corpus(rng: random.Random) -> list[tuple[str, str, bytes, str]]:
    """(kind, topic, payload, expected reason), many of each kind; deterministic for a given rng."""
    corpus: list[tuple[str, str, bytes, str]] = []

    def add(kind: str, payload: bytes, reason: str, *, events: bool = False) -> None:
        dev = rng.choice(DEVICES)
        corpus.append((kind, events_topic(dev) if events else telemetry(dev), payload, reason))

    for _ in range(60):  # truncated JSON: a valid message cut short (a prefix of an object never closes it)
        whole = json.dumps({**good_doc(rng), "seq": rng.randrange(10**6)}).encode()
        add("truncated_json", whole[: rng.randrange(1, len(whole) - 1)], "invalid_json")
    for _ in range(50):  # binary garbage (starts with a byte that is never valid UTF-8)
        add("binary_garbage", b"\xff" + rng.randbytes(rng.randrange(0, 300)), "invalid_json")
    for _ in range(30):  # invalid UTF-8 inside otherwise valid JSON
        bad = bytes([rng.choice([0x80, 0xC0, 0xC3, 0xED, 0xF5, 0xFE])])
        add("invalid_utf8", b'{"metrics": {"temp' + bad + b'": 1.5}}', "invalid_json")
        add(
            "invalid_utf8",
            b'{"ts": "2026-11-23T00:00:00Z", "kind": "status", "code": "Ch' + bad + b'"}',
            "invalid_json",
        )
    for lit in (b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e400", b"nan", b"inf"):  # not JSON numbers
        for _ in range(4):
            add("non_finite", b'{"metrics": {"a": ' + lit + b', "b": 2}}', "invalid_json")
    for payload in (b"", b" ", b"\n", b"\x00", b"{", b"[", b"}", b'"', b"nul", b"tru", b"{}}", b"[]]", b"1 2"):
        for _ in range(3):
            add("empty_or_junk", payload, "invalid_json")
    for _ in range(3):  # ~1 MB each
        add("huge_garbage", b"\xfe" + rng.randbytes(HUGE), "invalid_json")
        add(
            "huge_array_of_numbers",
            b"[" + b",".join(b"%d" % rng.randrange(10**6) for _ in range(HUGE // 8)) + b"]",
            "bad_shape",
        )
        add("huge_metrics_list", b'{"metrics": [' + b"1.5," * (HUGE // 4) + b"0]}", "bad_shape")
        add(
            "huge_truncated",
            json.dumps({"metrics": {f"m{i}": i for i in range(100_000)}}).encode()[:HUGE],
            "invalid_json",
        )
    for depth in (2, 100, 500, 2000, 5000, 100_000):  # deeply nested arrays (orjson stops at 1024 levels)
        add("deep_nesting", b"[" * depth + b"]" * depth, "invalid_json" if depth > 1024 else "bad_shape")
        add(
            "deep_nesting",
            b'{"metrics": ' + b"[" * depth + b"]" * depth + b"}",
            "invalid_json" if depth > 1024 else "bad_shape",
        )
        add("deep_nesting", b"[" * depth, "invalid_json")
    for payload in (b'"just a string"', b"42", b"-1.5", b"true", b"false", b"null", b"[1, 2, 3]", b'["a"]', b"[null]"):
        for _ in range(3):
            add("wrong_type_top_level", payload, "bad_shape")
    for _ in range(5):
        for metrics in ([1, 2], "power=5", 5, True, [{"a": 1}]):
            add("wrong_type_metrics", json.dumps({"ts": BASE_MS, "metrics": metrics}).encode(), "bad_shape")
        for readings in ([1], [{"metric": "a"}], [{"value": 1}], [None], [{"metric": "a", "value": 1}, "x"]):
            add("wrong_type_readings", json.dumps({"ts": BASE_MS, "readings": readings}).encode(), "bad_shape")
    bad_ts: list[object] = [
        "yesterday", "last tuesday", "", " ", "2026-13-01T00:00:00Z", "2026-02-30T00:00:00Z", "2026-11-23T25:00:00Z",
        "2026-11-23T00:00:00+25:00", "23/11/2026 08:00", "1763892000", "2026-11-23T00:00:00ZZ", "now",
        True, False, [], [BASE_MS], {}, {"$date": BASE_MS},
        1e19, 18446744073709551615, -9223372036854775808, 1e30, -1e300, 1.7976931348623157e308,
        400_000_000_000_000_000, -400_000_000_000_000_000,
        "0001-01-01T00:00:00+08:00", "9999-12-31T23:59:59-08:00",
    ]  # fmt: skip
    for raw in bad_ts:
        for key in ("ts", "timestamp", "time"):
            add("bad_timestamp", json.dumps({key: raw, "metrics": {"a": 1.0}}).encode(), "bad_timestamp")
        add(
            "bad_timestamp",
            json.dumps({"readings": [{"ts": raw, "metric": "a", "value": 1}]}).encode(),
            "bad_timestamp",
        )
    for _ in range(10):  # events without a code
        add(
            "event_without_code",
            json.dumps({"ts": BASE_MS, "kind": "status", "text": "gun 1"}).encode(),
            "bad_event",
            events=True,
        )
        add("event_without_code", json.dumps({"ts": BASE_MS, "code": None}).encode(), "bad_event", events=True)
        add("event_without_code", json.dumps({"code": None, "text": "x"}).encode(), "bad_event")
        add(
            "event_without_code",
            json.dumps([{"ts": BASE_MS, "code": "Charging"}, {"kind": "fault"}]).encode(),
            "bad_event",
            events=True,
        )
    for _ in range(12):  # arrays mixing good and bad objects: the good half must not be stored either
        good = good_doc(rng)
        add("mixed_array", json.dumps([good, 5]).encode(), "bad_shape")
        add("mixed_array", json.dumps([good, {"ts": "soon", "metrics": {"a": 1}}]).encode(), "bad_timestamp")
        add("mixed_array", json.dumps([good, good, {"metrics": [1]}]).encode(), "bad_shape")
        add("mixed_array", json.dumps([good, None, good]).encode(), "bad_shape")
    for payload in (
        b"{}",
        b"[]",
        b"[{}]",
        b"[{}, {}]",
        b'{"ts": "2026-11-23T00:00:00Z", "seq": 3}',
        b'{"metrics": {}}',
    ):
        for _ in range(4):
            add("no_readings", payload, "no_readings")
    return corpus


def local_reason(topic: str, payload: bytes) -> str | None:
    """What the decoder says about a payload, outside the service (None: it accepts it)."""
    t = TopicTemplate("gridsentry/{site}/{device_id}/{channel}")
    try:
        decode_message(BatchBuilder(), topic, payload, t.match(topic), 1_795_392_000_000_000)
    except DecodeError as exc:
        return exc.reason
    return None


async def test_b1_malformed_corpus_mixed_into_valid_stream(tmp_path: Path, mosquitto: MosquittoBroker) -> None:
    rng = random.Random(SEED)
    valid, per_device = valid_messages(rng)
    corpus = malformed_corpus(rng)
    assert len(corpus) >= 500, len(corpus)
    expected_reasons = Counter(reason for _, _, _, reason in corpus)
    # Entries the decoder, called directly, does not reject as labelled (reported if ingest then fails).
    mismatches = [
        (kind, payload[:80], want, got)
        for kind, topic, payload, want in corpus
        if (got := local_reason(topic, payload)) != want
    ]

    # Two phases (see the module docstring), each with its share of the corpus shuffled in.
    first_huge = {kind: i for i, (kind, _, _, _) in reversed(list(enumerate(corpus))) if kind.startswith("huge")}
    in_warmup = {i for i in range(len(corpus)) if i % 10 == 0} | set(first_huge.values())
    warmup, stream = valid[:N_WARMUP], valid[N_WARMUP:]
    for i, (_, topic, payload, _) in enumerate(corpus):
        phase = warmup if i in in_warmup else stream
        phase.insert(rng.randrange(len(phase) + 1), (topic, payload))
    total = len(warmup) + len(stream)

    cfg = broker_config(tmp_path, mosquitto.port, *DEVICES)
    service = await start_service(cfg)
    stats = service.collector_stats

    async def all_acked(n: int, phase: str) -> None:
        try:
            await wait_for(lambda: stats.messages_acked >= n, timeout=20, what=f"{n} messages acked")
        except AssertionError:
            raise AssertionError(
                f"{phase}: only {stats.messages_acked}/{n} messages acked "
                f"(received {stats.messages_received}, connected {stats.connected}, "
                f"connection failures {stats.connection_failures}, rejected {dict(stats.rejected)}); "
                f"corpus entries the decoder does not reject as labelled: {mismatches}"
            ) from None

    try:
        rss_start = rss_mb()
        t0 = time.monotonic()
        await publish_in_subprocess(mosquitto.port, warmup, tmp_path / "warmup.pickle")
        await all_acked(len(warmup), "warm-up")
        rss_before = rss_mb()
        t1 = time.monotonic()
        await publish_in_subprocess(mosquitto.port, stream, tmp_path / "stream.pickle")
        t_published = time.monotonic() - t1
        await all_acked(total, "corpus")
        elapsed = time.monotonic() - t1
        rss_after = rss_mb()

        con = service.writer.reader()
        try:
            db_reasons = Counter(
                dict(con.execute("select reason, count(*) from dead_letters group by reason").fetchall())
            )
            n_dead = con.execute("select count(*) from dead_letters").fetchone()[0]
            longest_dead = con.execute("select max(octet_length(payload)) from dead_letters").fetchone()[0]
            n_readings = con.execute("select count(*) from readings").fetchone()[0]
            n_events = con.execute("select count(*) from events").fetchone()[0]
            stored_per_device = dict(
                con.execute("select device_id, count(*) from readings group by device_id").fetchall()
            )
            dead_rows = Counter(con.execute("select topic, reason, payload from dead_letters").fetchall())
            n_distinct = con.execute(
                "select count(*) from (select distinct device_id, metric, ts from readings)"
            ).fetchone()[0]
        finally:
            con.close()
        async with httpx.AsyncClient(base_url=service.http_url, headers=api_headers(service.cfg.data_dir)) as http:
            health = await http.get("/healthz")

        print()
        print(f"B1 corpus: {len(corpus)} malformed + {N_VALID} valid = {total} messages")
        print(f"B1 malformed kinds: {dict(Counter(kind for kind, _, _, _ in corpus))}")
        print(f"B1 dead letters by reason (db): {dict(sorted(db_reasons.items()))}")
        print(f"B1 rejected by reason (collector): {dict(sorted(stats.rejected.items()))}")
        print(
            f"B1 readings stored: {n_readings} (distinct {n_distinct}), events {n_events}, per device {stored_per_device}"
        )
        print(f"B1 longest dead-letter payload kept: {longest_dead} bytes")
        print(
            f"B1 RSS at start {rss_start:.1f} MB, after warm-up {rss_before:.1f} MB, after corpus {rss_after:.1f} MB: "
            f"growth {rss_after - rss_before:+.1f} MB during the corpus ({rss_after - rss_start:+.1f} MB from start)"
        )
        print(
            f"B1 warm-up of {len(warmup)} messages took {t1 - t0:.2f} s; corpus phase: {len(stream)} messages "
            f"published in {t_published:.2f} s, all acked after {elapsed:.2f} s; {stats.flushes} flushes in all; "
            f"MQTT connects {stats.connects}, connection failures {stats.connection_failures}"
        )

        assert not mismatches, f"corpus entries the decoder does not reject as labelled: {mismatches}"
        # Every valid reading stored exactly once, nothing of a malformed message stored.
        assert n_readings == N_VALID * READINGS_PER_MESSAGE == 50_000
        assert n_distinct == n_readings
        assert stored_per_device == dict(per_device)
        assert n_events == 0
        # Every malformed message dead-lettered once, under the reason the counters show.
        assert n_dead == len(corpus)
        assert db_reasons == expected_reasons
        assert Counter(dict(stats.rejected)) == db_reasons
        assert longest_dead <= DEAD_LETTER_PAYLOAD_LIMIT
        assert dead_rows == Counter((t, r, p[:DEAD_LETTER_PAYLOAD_LIMIT]) for _, t, p, r in corpus)
        # Still alive, on the same MQTT session (no message crashed the reader), and bounded.
        assert health.status_code == 200 and health.json()["status"] == "ok"
        assert stats.connected and stats.connects == 1 and stats.connection_failures == 0
        assert rss_after - rss_before <= RSS_LIMIT_MB, f"RSS grew {rss_after - rss_before:.1f} MB"
    finally:
        await service.stop()
