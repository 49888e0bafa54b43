"""The cost of acknowledging QoS 1 messages: paho's `Client.ack` per message against `send_acks` (one run of
PUBACKs per committed batch, collector/paho_client.py), in the same run, on a real mosquitto.

Counts the CPU time of the whole process (the caller's thread and paho's network thread) per acknowledgement.
The broker receives PUBACKs for message ids it never sent and ignores them: the cost measured is the client's.

    .venv/bin/python bench/paho_acks.py                  # 200,000 acks in batches of 2,000
    .venv/bin/python bench/paho_acks.py --acks 500000 --batch 500
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

from _common import Broker, machine, print_table  # noqa: E402

from collector.paho_client import send_acks  # noqa: E402


def measure(client: paho.Client, acks: int, batch: int, batched: bool) -> tuple[float, float]:
    """(µs CPU per ack, wall seconds) until paho's outgoing queue is empty."""
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for start in range(0, acks, batch):
        due = [(1 + i % 65_000, 1) for i in range(start, min(acks, start + batch))]
        if batched:
            send_acks(client, due)
        else:
            for mid, qos in due:
                client.ack(mid, qos)
    while client._out_packet:  # drained: every PUBACK written to the socket
        time.sleep(0.001)
    return (time.process_time() - cpu0) / acks * 1e6, time.perf_counter() - wall0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--acks", type=int, default=200_000, help="acknowledgements per method (default 200,000)")
    p.add_argument("--batch", type=int, default=2_000, help="messages per committed batch (default 2,000)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="gs-acks-") as tmp:
        broker = Broker(Path(tmp), inflight=1000)
        broker.start()
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-acks", manual_ack=True)
        try:
            client.connect("127.0.0.1", broker.port)
            client.loop_start()
            time.sleep(0.3)
            per_message = measure(client, args.acks, args.batch, batched=False)
            batched = measure(client, args.acks, args.batch, batched=True)
        finally:
            client.disconnect()
            client.loop_stop()
            broker.stop()
    m = machine()
    print(f"paho ack cost: {args.acks:,} acks in batches of {args.batch:,}; {m['nproc']} CPUs ({m['cpu_model']})")
    print_table(
        ["method", "µs CPU/ack", "wall s"],
        [
            ["Client.ack per message (baseline)", f"{per_message[0]:.2f}", f"{per_message[1]:.2f}"],
            ["send_acks, one run per batch", f"{batched[0]:.2f}", f"{batched[1]:.2f}"],
        ],
    )
    print(f"send_acks / baseline CPU: {batched[0] / per_message[0]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
