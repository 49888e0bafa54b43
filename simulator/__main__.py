"""Run the demo fleet against an MQTT broker: ``python -m simulator --help``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence
from dataclasses import replace

from simulator.core import FleetSimulator
from simulator.faults import FAULT_KINDS, parse_fault
from simulator.fleet import demo_fleet, demo_site
from simulator.publisher import MqttFleetPublisher, PublishStats


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m simulator",
        description="Publish the simulated demo fleet (AC/DC chargers, PV inverters, box transformer) over MQTT.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="MQTT broker host (default %(default)s)")
    parser.add_argument("--port", type=int, default=1883, help="MQTT broker port (default %(default)s)")
    parser.add_argument("--speed", type=float, default=1.0, help="simulated seconds per wall second")
    parser.add_argument(
        "--duration", type=float, default=None, help="stop after this many wall-clock seconds (default: Ctrl-C)"
    )
    parser.add_argument("--seed", type=int, default=1, help="random seed; same seed, same fleet history")
    parser.add_argument("--interval", type=float, default=1.0, help="telemetry interval per device, simulated s")
    parser.add_argument("--site", default="demo", help="site id used in topics (default %(default)s)")
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="KIND:DEVICE[:START_S][:k=v,...]",
        help=f"inject a fault (repeatable); kinds: {', '.join(FAULT_KINDS)}. Start defaults to 10 s",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log connection attempts and retries")
    return parser


def _print_stats(stats: PublishStats, simulator: FleetSimulator) -> None:
    print(
        f"published {stats.messages} messages: {stats.telemetry} telemetry ({stats.readings} readings), "
        f"{stats.events} events, {stats.malformed} malformed; reconnects {stats.reconnects}"
    )
    for device_id in sorted(stats.per_device):
        print(f"  {device_id:<8} {stats.per_device[device_id]:>8} readings")
    for record in simulator.ground_truth:
        end = f" until {record.ended_at.isoformat()}" if record.ended_at else ""
        print(f"  fault {record.kind} on {record.device_id} from {record.started_at.isoformat()}{end}: {record.detail}")


async def _run(args: argparse.Namespace, simulator: FleetSimulator) -> int:
    publisher = MqttFleetPublisher(simulator)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        # Not every platform lets asyncio own signals; Ctrl-C then raises KeyboardInterrupt instead.
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    stats = await publisher.run(args.host, args.port, speed=args.speed, duration_s=args.duration, stop=stop)
    _print_stats(stats, simulator)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(levelname)s %(message)s"
    )
    site = replace(demo_site(), id=args.site)
    try:
        faults = [parse_fault(text) for text in args.fault]
        simulator = FleetSimulator(site, demo_fleet(site.id, args.interval), seed=args.seed, faults=faults)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(_run(args, simulator))


if __name__ == "__main__":
    raise SystemExit(main())
