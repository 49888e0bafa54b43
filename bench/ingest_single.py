"""One reading per MQTT message: GridSentry's message rate against a bare aiomqtt receive loop, drain mode.

What it does, in one run:
1. writes N messages, each carrying one reading `{"ts": "...", "metrics": {"power_kw": 6.93}}`, for D AC chargers
   (one topic per device), one file per device for `mosquitto_pub -l -q 1` (split below its 65,535 limit);
2. **GridSentry** (drain): the real `Service` in this process, devices pre-registered as `charger_ac`; its
   persistent session is created first, every message is queued in a fresh broker while it is away, then it is
   timed from `start()` to the last commit (the measurement of `bench/ingest.py --mode drain`);
3. **bare aiomqtt** (drain, the baseline): an aiomqtt 2.5.1 client with the same QoS 1, persistent session and MQTT
   version as the collector actually used, counting messages only (paho's automatic ack), drains the same stream
   from a fresh broker, timed from connect to the last message;
4. prints messages/s, the ratio to bare aiomqtt and to the 12,000 msg/s goal, and checks that every reading
   was stored exactly once.

Exit code: 0 when stored == published and the goal is met, 1 on loss or a missed goal, 2 on a harness failure.

    .venv/bin/python bench/ingest_single.py                  # 60,000 messages, 500 devices
    .venv/bin/python bench/ingest_single.py --protocol 5 --json single.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import orjson
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

import ingest  # noqa: E402  (bench/ is on sys.path when a bench runs as a script)
from _common import (  # noqa: E402
    MOSQUITTO_PUB_LIMIT,
    Broker,
    Meter,
    PubJob,
    add_collector_args,
    fmt_rate,
    iso_us,
    machine,
    print_table,
    publish_all,
    run_main,
    versions,
)

GOAL_MSGS_PER_S = 12_000  # shared/performance.md: "12k msg/s for unbatched aiomqtt input"
TOPIC_FILTER = "gridsentry/+/+/telemetry"


def generate(out: Path, n: int, d: int, seed: int) -> ingest.Workload:
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    devices = [f"AC{i:04d}" for i in range(d)]
    per_device = [n // d + (1 if i < n % d else 0) for i in range(d)]
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=max(per_device) * 10 + 60)
    jobs: list[PubJob] = []
    total = 0
    for di, dev in enumerate(devices):
        topic = f"gridsentry/{ingest.SITE}/{dev}/telemetry"
        for start in range(0, per_device[di], MOSQUITTO_PUB_LIMIT):
            chunk = min(MOSQUITTO_PUB_LIMIT, per_device[di] - start)
            path = out / f"{dev}.{start // MOSQUITTO_PUB_LIMIT}.jsonl"
            with path.open("wb") as f:
                for k in range(start, start + chunk):
                    ts = base + timedelta(seconds=k * 10, microseconds=di + 1)
                    line = orjson.dumps({"ts": iso_us(ts), "metrics": {"power_kw": round(rng.uniform(0, 7.4), 2)}})
                    f.write(line + b"\n")
                    total += len(line)
            jobs.append(PubJob(topic, path, chunk))
    return ingest.Workload(n, 1, devices, [], jobs, total // max(n, 1), kind="charger_ac")


# --- baseline: a bare aiomqtt receive loop -----------------------------------------------------------------
def bare_client(port: int, protocol: str) -> aiomqtt.Client:
    """The collector's connection settings (QoS 1 persistent session), without its manual ack."""
    kwargs: dict[str, Any] = {}
    if protocol == "5":
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 3600
        kwargs.update(clean_start=False, properties=props, protocol=aiomqtt.ProtocolVersion.V5)
    else:
        kwargs.update(clean_session=False, protocol=aiomqtt.ProtocolVersion.V311)
    return aiomqtt.Client("127.0.0.1", port, identifier="bench-bare-aiomqtt", keepalive=60, timeout=5, **kwargs)


async def bare_aiomqtt(wl: ingest.Workload, args: argparse.Namespace, tmp: Path, protocol: str) -> ingest.Result:
    broker = Broker(tmp / f"broker-bare-{protocol}", args.broker_inflight)
    broker.start()
    try:
        res = ingest.Result("bare aiomqtt", "drain", wl.messages, wl.readings)
        async with bare_client(broker.port, protocol) as c:  # create the persistent session, then leave
            await c.subscribe(TOPIC_FILTER, qos=1)
        res.publish_seconds = await publish_all(broker.port, wl.jobs, args.pub_parallel, "bare")
        meter = Meter(broker).start()
        t0 = time.perf_counter()
        t_first = None
        n = 0

        async def drain() -> None:
            nonlocal n, t_first
            async with bare_client(broker.port, protocol) as c:
                await c.subscribe(TOPIC_FILTER, qos=1)
                async for _msg in c.messages:
                    n += 1
                    if t_first is None:
                        t_first = time.perf_counter()
                    if n >= wl.messages:
                        break

        try:
            await asyncio.wait_for(drain(), args.timeout)
        except TimeoutError:
            res.extra["error"] = f"timed out after {args.timeout:g} s with {n:,} of {wl.messages:,} messages"
        t_end = time.perf_counter()
        meter.stop()
        res.seconds = t_end - t0
        if t_first is not None:
            res.steady_seconds = t_end - t_first
        res.messages_received = n
        res.readings_stored = n
        res.cpu_own_s, res.cpu_children_s, res.cpu_broker_s = meter.own, meter.children, meter.broker_s
        res.foreign_cores = meter.foreign_cores
        res.extra["protocol"] = protocol
        return res
    finally:
        broker.stop()


# --- main --------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--messages", type=int, default=60_000, help="messages of one reading each (default 60,000)")
    p.add_argument("--devices", type=int, default=500, help="devices, pre-registered as charger_ac (default 500)")
    p.add_argument("--pub-parallel", type=int, default=64, help="mosquitto_pub processes at a time (default 64)")
    add_collector_args(p, protocol_default="default", scrape_default=1.0)
    p.add_argument(
        "--baseline-protocol",
        choices=["same", "5", "3.1.1"],
        default="same",
        help="MQTT version of the bare aiomqtt client (default: the one the collector used)",
    )
    p.add_argument("--seed", type=int, default=1, help="random seed of the generated values")
    p.add_argument("--json", type=Path, help="write every figure to this JSON file")
    p.add_argument("--keep", action="store_true", help="keep the temp directory (messages, databases)")
    a = p.parse_args(argv)
    a.profile = None
    if a.messages < 1 or a.devices < 1:
        p.error("--messages and --devices must be >= 1")
    return a


def rate(res: ingest.Result, steady: bool = False) -> float:
    secs = res.steady_seconds if steady else res.seconds
    return res.messages_received / secs if secs else 0.0


async def amain(args: argparse.Namespace) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="gridsentry-bench-single-"))
    tmp.chmod(0o777)  # mosquitto drops to its own user when started as root
    try:
        wl = generate(tmp / "messages", args.messages, args.devices, args.seed)
        print(f"generated {wl.messages:,} one-reading messages for {len(wl.devices)} devices under {tmp}", flush=True)
        print("[drain] GridSentry ...", flush=True)
        gs = await ingest.gridsentry("drain", wl, args, tmp, None)
        protocol = gs.extra["protocol"] if args.baseline_protocol == "same" else args.baseline_protocol
        print(f"[drain]   {rate(gs):,.0f} msg/s (MQTT {gs.extra['protocol']})", flush=True)
        print(f"[drain] bare aiomqtt (MQTT {protocol}) ...", flush=True)
        bare = await bare_aiomqtt(wl, args, tmp, protocol)
        print(f"[drain]   {rate(bare):,.0f} msg/s", flush=True)

        no_loss = (
            gs.readings_stored == wl.readings
            and gs.extra.get("readings_committed") == wl.readings
            and gs.extra.get("distinct_messages_stored") == wl.messages
            and "error" not in gs.extra
        )
        gs_rate, gs_steady, bare_rate, bare_steady = rate(gs), rate(gs, True), rate(bare), rate(bare, True)
        goal_ok = gs_rate >= GOAL_MSGS_PER_S
        print()
        print(
            f"GridSentry one-reading ingest bench: {wl.messages:,} messages x 1 reading, {len(wl.devices)} devices "
            f"(charger_ac), ~{wl.payload_bytes} B/message, QoS 1, drain mode"
        )
        m, v = machine(), versions()
        print(
            f"machine: {m['nproc']} CPUs ({m['cpu_model']}); python {v['python']}, duckdb {v.get('duckdb')}, "
            f"aiomqtt {v.get('aiomqtt')}, paho-mqtt {v.get('paho-mqtt')}, mosquitto {v.get('mosquitto')}; "
            f"broker max_inflight_messages {args.broker_inflight}"
        )
        print()
        rows = []
        for res in (gs, bare):
            rows.append(
                (
                    res.consumer,
                    res.extra.get("protocol", "?"),
                    fmt_rate(rate(res)),
                    fmt_rate(rate(res, True)),
                    f"{res.seconds:.2f}",
                    f"{res.cpu_own_s:.1f} ({res.cpu_own_s / res.seconds:.2f})" if res.seconds else "-",
                    f"{res.cpu_own_s / max(res.messages_received, 1) * 1e6:.0f}",
                    "-" if res.foreign_cores is None else f"{res.foreign_cores:.2f}",
                )
            )
        print_table(
            ("consumer", "MQTT", "msg/s", "steady msg/s", "seconds", "CPU s (cores)", "µs CPU/msg", "foreign cores"),
            rows,
        )
        print()
        print(
            f"GridSentry / bare aiomqtt: {gs_rate / bare_rate:.3f} (steady {gs_steady / bare_steady:.3f})"
            if bare_rate and bare_steady
            else "GridSentry / bare aiomqtt: -"
        )
        print(f"GridSentry / goal {GOAL_MSGS_PER_S:,} msg/s: {gs_rate / GOAL_MSGS_PER_S:.3f}")
        print(f"bare aiomqtt / goal {GOAL_MSGS_PER_S:,} msg/s: {bare_rate / GOAL_MSGS_PER_S:.3f}")
        e = gs.extra
        print(
            f"GridSentry: stored {gs.readings_stored:,} rows ({e['distinct_messages_stored']:,} distinct); "
            f"{e['flushes']} flushes (mean {e['mean_flush_messages']} msgs); {e['commits']} commits (mean "
            f"{e['commit_seconds_mean']} s, p95 {e['commit_seconds_p95']} s, max {e['commit_seconds_max']} s); "
            f"start() {e['start_seconds']} s; peak RSS {gs.peak_rss_mb} MB; publish {gs.publish_seconds:.1f} s"
        )
        for res in (gs, bare):
            if "error" in res.extra:
                print(f"{res.consumer}: ERROR {res.extra['error']}")
        print()
        print(f"{'PASS' if no_loss else 'FAIL'}  no loss: stored == published ({wl.readings:,}), each message once")
        print(f"{'PASS' if goal_ok else 'FAIL'}  goal: GridSentry >= {GOAL_MSGS_PER_S:,} msg/s ({gs_rate:,.0f})")
        if args.json:
            info = {
                "bench": "ingest_single",
                "when": datetime.now(UTC).isoformat(timespec="seconds"),
                "command": " ".join([Path(sys.executable).name, *sys.argv]),
                "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                "machine": m,
                "versions": v,
                "summary": {
                    "gridsentry_messages_per_s": round(gs_rate, 1),
                    "gridsentry_steady_messages_per_s": round(gs_steady, 1),
                    "bare_aiomqtt_messages_per_s": round(bare_rate, 1),
                    "bare_aiomqtt_steady_messages_per_s": round(bare_steady, 1),
                    "ratio_to_bare_aiomqtt": round(gs_rate / bare_rate, 4) if bare_rate else None,
                    "goal_messages_per_s": GOAL_MSGS_PER_S,
                    "ratio_to_goal": round(gs_rate / GOAL_MSGS_PER_S, 4),
                    "protocol": gs.extra["protocol"],
                    "no_loss": no_loss,
                    "goal_met": goal_ok,
                },
                "runs": [gs.as_dict(1), bare.as_dict(1)],
            }
            args.json.write_text(json.dumps(info, indent=2) + "\n")
            print(f"figures written to {args.json}")
        if "error" in bare.extra:
            return 2
        return 0 if no_loss and goal_ok else 1
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    return run_main(amain, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
