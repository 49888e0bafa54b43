"""Modbus polling throughput: N simulated devices x M points on loopback, GridSentry vs a naive poller.

The devices are pymodbus servers in a separate process (so their CPU is not counted). Two pollers
read the same devices at the same configured interval, one after the other:
- GridSentry's ModbusCollector (planned merged reads, decoding, events, link health; the sink only
  counts the batches it would commit, so storage is not measured here: bench/ingest.py does that);
- the baseline: a bare pymodbus loop reading each point with its own request and keeping the raw
  registers (what a map without request planning costs).
Printed: polls/s and readings/s achieved against the configured rate, requests per poll, poll
jitter p99, and CPU seconds per 1,000 readings, with the GridSentry / baseline ratios.

    .venv/bin/python bench/modbus.py                       # 50 devices x 60 points, 1 s interval, 20 s each
    .venv/bin/python bench/modbus.py --interval 0.25 --seconds 15
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import multiprocessing as mp
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pymodbus.client import AsyncModbusTcpClient

from collector.modbus.collector import ModbusCollector
from collector.modbus.maps import RegisterMap
from collector.modbus.settings import ModbusConfig, ModbusDeviceConfig
from storage.batch import IngestBatch

TYPES = ["uint16", "int16", "int32", "float32", "uint32", "uint16"]


def bench_map(points: int, map_dir: Path) -> Path:
    """A 60-point device: mixed types and byte orders over input and holding registers, one status word."""
    lines = ["name: bench_device", "max_gap: 0", "points:"]
    addr = {3: 0, 4: 0}
    for i in range(points):
        fc = 4 if i % 3 else 3
        typ = TYPES[i % len(TYPES)]
        order = "CDAB" if typ in ("int32", "float32") and i % 2 else "ABCD"
        if i == points - 1:
            lines.append(f"  - {{metric: state, fc: 3, address: {addr[3]}, type: uint16, enum: {{0: 'OFF', 1: RUN}}}}")
            break
        lines.append(
            f"  - {{metric: p{i:02d}_x, fc: {fc}, address: {addr[fc]}, type: {typ}, byte_order: {order}, scale: 0.1}}"
        )
        addr[fc] += 2 if typ in ("int32", "float32", "uint32") else 1
    path = map_dir / "bench_device.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _serve(map_path: str, ports: list[int], ready: Any) -> None:
    logging.disable(logging.CRITICAL)
    from collector.modbus.maps import load_map_file
    from simulator.modbus_server import SimulatedModbusDevice, SimulatedModbusServer

    async def main() -> None:
        register_map = load_map_file(Path(map_path))
        servers = []
        for port in ports:
            device = SimulatedModbusDevice(register_map, lambda metric, t: 1.0 if metric == "state" else 123.4)
            server = SimulatedModbusServer([device], port=port)
            await server.start()
            servers.append(server)
        ready.set()
        await asyncio.Event().wait()

    asyncio.run(main())


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def run_gridsentry(register_map_dir: Path, ports: list[int], interval: float, seconds: float) -> dict[str, Any]:
    readings = 0
    batches = 0

    async def sink(batch: IngestBatch) -> None:
        nonlocal readings, batches
        readings += batch.reading_count
        batches += 1

    devices = [
        (
            f"DEV{i:03d}",
            ModbusDeviceConfig(host="127.0.0.1", port=port, map="bench_device", interval_s=interval, timeout_s=2.0),
        )
        for i, port in enumerate(ports)
    ]
    collector = ModbusCollector(ModbusConfig(map_dirs=[register_map_dir], map_check_interval_s=0), devices, sink)
    stop = asyncio.Event()
    task = asyncio.create_task(collector.run(stop))
    await asyncio.sleep(min(2.0, seconds / 4))  # connect and settle before measuring
    r0, c0, t0 = readings, cpu_seconds(), time.monotonic()
    polls0 = sum(p.health.polls for p in collector.pollers.values())
    req0 = sum(p.health.requests for p in collector.pollers.values())
    for p in collector.pollers.values():
        p.health.jitter_s.clear()
    await asyncio.sleep(seconds)
    r1, c1, t1 = readings, cpu_seconds(), time.monotonic()
    polls = sum(p.health.polls for p in collector.pollers.values()) - polls0
    requests = sum(p.health.requests for p in collector.pollers.values()) - req0
    jitter = sorted(j for p in collector.pollers.values() for j in p.health.jitter_s)
    errors = sum(sum(p.health.errors.values()) for p in collector.pollers.values())
    stop.set()
    await task
    elapsed = t1 - t0
    return {
        "polls_per_s": polls / elapsed,
        "readings_per_s": (r1 - r0) / elapsed,
        "requests_per_poll": requests / max(polls, 1),
        "jitter_p99_s": jitter[int(0.99 * (len(jitter) - 1))] if jitter else float("nan"),
        "cpu_per_1000_readings_s": (c1 - c0) / max(r1 - r0, 1) * 1000,
        "cpu_cores": (c1 - c0) / elapsed,
        "errors": errors,
    }


async def run_baseline(register_map: RegisterMap, ports: list[int], interval: float, seconds: float) -> dict[str, Any]:
    """Each point its own request, raw registers kept: no planning, no decoding."""
    points = [(p.fc, register_map.protocol_address(p), p.register_count) for p in register_map.points]
    counters = {"polls": 0, "readings": 0, "requests": 0}
    measuring = asyncio.Event()

    async def device_loop(port: int, stop: asyncio.Event) -> None:
        client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0)
        await client.connect()
        due = time.monotonic()
        while not stop.is_set():
            values: list[list[int]] = []
            for fc, address, count in points:
                if fc == 3:
                    rr = await client.read_holding_registers(address, count=count, device_id=1)
                else:
                    rr = await client.read_input_registers(address, count=count, device_id=1)
                values.append(rr.registers)
            if measuring.is_set():
                counters["polls"] += 1
                counters["readings"] += len(values)
                counters["requests"] += len(points)
            due += interval
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, due - time.monotonic()))
        client.close()

    stop = asyncio.Event()
    tasks = [asyncio.create_task(device_loop(port, stop)) for port in ports]
    await asyncio.sleep(min(2.0, seconds / 4))
    measuring.set()
    c0, t0 = cpu_seconds(), time.monotonic()
    await asyncio.sleep(seconds)
    c1, t1 = cpu_seconds(), time.monotonic()
    measuring.clear()
    stop.set()
    await asyncio.gather(*tasks)
    elapsed = t1 - t0
    return {
        "polls_per_s": counters["polls"] / elapsed,
        "readings_per_s": counters["readings"] / elapsed,
        "requests_per_poll": counters["requests"] / max(counters["polls"], 1),
        "cpu_per_1000_readings_s": (c1 - c0) / max(counters["readings"], 1) * 1000,
        "cpu_cores": (c1 - c0) / elapsed,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=50)
    ap.add_argument("--points", type=int, default=60)
    ap.add_argument("--interval", type=float, default=1.0, help="configured poll interval per device (s)")
    ap.add_argument("--seconds", type=float, default=20.0, help="measured time per poller")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import tempfile

    from collector.modbus.maps import load_map_file
    from simulator.modbus_server import free_port

    with tempfile.TemporaryDirectory() as tmp:
        map_dir = Path(tmp)
        map_path = bench_map(args.points, map_dir)
        register_map = load_map_file(map_path)
        ports = [free_port() for _ in range(args.devices)]
        ready = mp.Event()
        server = mp.Process(target=_serve, args=(str(map_path), ports, ready), daemon=True)
        server.start()
        if not ready.wait(60):
            print("the simulated devices did not start", file=sys.stderr)
            return 1
        try:
            gs = asyncio.run(run_gridsentry(map_dir, ports, args.interval, args.seconds))
            base = asyncio.run(run_baseline(register_map, ports, args.interval, args.seconds))
        finally:
            server.terminate()
            server.join(10)
    configured_polls = args.devices / args.interval
    configured_readings = configured_polls * args.points
    print(
        f"Modbus bench: {args.devices} devices x {args.points} points on loopback, interval {args.interval:g} s, "
        f"{args.seconds:g} s measured per poller; pid {os.getpid()}, cpus {os.cpu_count()}"
    )
    print(f"configured: {configured_polls:,.1f} polls/s, {configured_readings:,.0f} readings/s")
    rows = [
        ("polls/s", "polls_per_s", "{:,.1f}"),
        ("readings/s", "readings_per_s", "{:,.0f}"),
        ("requests per poll", "requests_per_poll", "{:.1f}"),
        ("CPU s per 1,000 readings", "cpu_per_1000_readings_s", "{:.4f}"),
        ("CPU cores used", "cpu_cores", "{:.2f}"),
    ]
    print(f"{'measure':<26}{'GridSentry':>14}{'baseline':>14}{'GS/baseline':>13}")
    for label, key, fmt in rows:
        ratio = gs[key] / base[key] if base[key] else float("nan")
        print(f"{label:<26}{fmt.format(gs[key]):>14}{fmt.format(base[key]):>14}{ratio:>13.2f}")
    print(
        f"GridSentry achieved {gs['polls_per_s'] / configured_polls:.1%} of the configured poll rate and "
        f"{gs['readings_per_s'] / configured_readings:.1%} of the configured reading rate; "
        f"poll jitter p99 {gs['jitter_p99_s'] * 1000:.1f} ms; request errors {gs['errors']}"
    )
    if args.json:
        args.json.write_text(json.dumps({"gridsentry": gs, "baseline": base, "args": vars(args)}, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
