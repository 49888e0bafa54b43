"""Helpers shared by the benches: a private mosquitto, `mosquitto_pub -l` publishing, CPU / memory / co-tenant
accounting, percentiles, the commit histogram, versions and table printing.

The benches are run as scripts (`.venv/bin/python bench/NAME.py`), so this module is imported as `_common`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

HZ = os.sysconf("SC_CLK_TCK")
#: `mosquitto_pub -l` at QoS >= 1 (2.0.11) quits after 65,535 messages (message-id wrap): split below it.
MOSQUITTO_PUB_LIMIT = 60_000


@dataclass(frozen=True)
class PubJob:
    topic: str
    file: Path
    count: int


# --- broker ----------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Broker:
    """A private mosquitto on loopback. One fresh broker per measurement: no session leaks between them."""

    def __init__(self, workdir: Path, inflight: int) -> None:
        self.workdir = workdir
        self.inflight = inflight
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            "\n".join(
                [
                    f"listener {self.port} 127.0.0.1",
                    "allow_anonymous true",
                    "persistence false",
                    f"max_inflight_messages {self.inflight}",
                    "max_queued_messages 0",
                    "max_queued_bytes 0",
                    "log_dest stderr",
                    f"log_type {os.environ.get('BENCH_MOSQUITTO_LOG', 'error')}",
                    "",
                ]
            )
        )
        self.log = self.workdir / "mosquitto.log"
        with self.log.open("wb") as log_file:  # a file, not a pipe: a full pipe would stall the broker
            self.proc = subprocess.Popen([mosquitto_bin(), "-c", str(conf)], stderr=log_file)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise HarnessError(f"mosquitto exited at start: {self.log.read_text().strip()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.02)
        raise HarnessError(f"mosquitto did not listen on port {self.port}")

    def cpu_s(self) -> float:
        return pid_cpu_s(self.proc.pid) if self.proc is not None else 0.0

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class HarnessError(RuntimeError):
    """The benchmark itself could not run (a tool is missing, a publisher failed...)."""


def mosquitto_bin() -> str:
    for cand in ("mosquitto", "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        found = shutil.which(cand)
        if found:
            return found
    raise HarnessError("mosquitto is not installed (apt-get install mosquitto mosquitto-clients)")


def tool(name: str) -> str:
    found = shutil.which(name)
    if not found:
        raise HarnessError(f"{name} is not installed (apt-get install mosquitto-clients)")
    return found


# --- CPU and memory accounting ---------------------------------------------------------------------------
def pid_cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / HZ


def machine_busy_s() -> float:
    """CPU seconds the whole machine spent busy (user+nice+system+irq+softirq), from /proc/stat."""
    try:
        f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except OSError:
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq = f[:7]
    return (user + nice + system + irq + softirq) / HZ


def _rusage_s(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def reset_peak_rss() -> None:
    with contextlib.suppress(OSError):  # "5" resets VmHWM (Linux >= 4.0)
        Path("/proc/self/clear_refs").write_text("5")


def _status_mb(key: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def current_rss_mb() -> float:
    return _status_mb("VmRSS:") or 0.0


def peak_rss_mb() -> float:
    peak = _status_mb("VmHWM:")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class Meter:
    """CPU used during a measurement: this process, its waited children, the broker, everyone else."""

    broker: Broker
    wall: float = 0.0
    own: float = 0.0
    children: float = 0.0
    broker_s: float = 0.0
    foreign_cores: float | None = None
    _t: float = 0.0
    _own: float = 0.0
    _ch: float = 0.0
    _br: float = 0.0
    _busy: float = 0.0

    def start(self) -> Meter:
        self._t = time.perf_counter()
        self._own = _rusage_s(resource.RUSAGE_SELF)
        self._ch = _rusage_s(resource.RUSAGE_CHILDREN)
        self._br = self.broker.cpu_s()
        self._busy = machine_busy_s()
        return self

    def stop(self) -> Meter:
        self.wall = time.perf_counter() - self._t
        self.own = _rusage_s(resource.RUSAGE_SELF) - self._own
        self.children = _rusage_s(resource.RUSAGE_CHILDREN) - self._ch
        self.broker_s = self.broker.cpu_s() - self._br
        busy = machine_busy_s() - self._busy
        if busy > 0 and self.wall > 0:
            self.foreign_cores = max(0.0, (busy - self.own - self.children - self.broker_s) / self.wall)
        return self


# --- publishing ------------------------------------------------------------------------------------------
async def publish_all(port: int, jobs: list[PubJob], parallel: int, tag: str) -> float:
    """Publish every job with `mosquitto_pub -l -q 1`, `parallel` processes at a time. Returns seconds."""
    pub = tool("mosquitto_pub")
    sem = asyncio.Semaphore(parallel)
    t0 = time.perf_counter()

    async def one(i: int, job: PubJob) -> None:
        async with sem:
            with job.file.open("rb") as f:
                proc = await asyncio.create_subprocess_exec(
                    pub,
                    *("-h", "127.0.0.1", "-p", str(port), "-q", "1", "-M", "1000", "-l"),
                    *("-t", job.topic, "-i", f"bench-pub-{tag}-{i}"),
                    stdin=f,
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.PIPE,
                )
                _, err = await proc.communicate()
            if proc.returncode != 0:
                raise HarnessError(f"mosquitto_pub for {job.topic} failed ({proc.returncode}): {err.decode().strip()}")

    await asyncio.gather(*(one(i, j) for i, j in enumerate(jobs)))
    return time.perf_counter() - t0


async def wait_until(pred: Any, timeout: float, step: float = 0.005) -> bool:
    deadline = time.perf_counter() + timeout
    while not pred():
        if time.perf_counter() > deadline:
            return False
        await asyncio.sleep(step)
    return True


def versions() -> dict[str, str]:
    out: dict[str, str] = {"python": platform.python_version()}
    for pkg in ("duckdb", "aiomqtt", "paho-mqtt", "polars", "pyarrow", "orjson", "uvicorn", "prometheus-client"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[pkg] = metadata.version(pkg)
    try:
        head = subprocess.run([mosquitto_bin(), "-h"], capture_output=True, text=True, timeout=5).stdout
        out["mosquitto"] = head.splitlines()[0].split("version", 1)[1].strip()
    except (HarnessError, IndexError, OSError, subprocess.SubprocessError):
        out["mosquitto"] = "?"
    return out


def machine() -> dict[str, Any]:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"nproc": os.cpu_count(), "cpu_model": model, "kernel": platform.release()}


def fmt_rate(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b > 0 else "-"


# --- collector settings shared by the benches ----------------------------------------------------------------
def add_collector_args(p: argparse.ArgumentParser, *, protocol_default: str, scrape_default: float) -> None:
    """Broker and collector options every GridSentry bench takes."""
    p.add_argument(
        "--broker-inflight",
        type=int,
        default=1000,
        help="broker max_inflight_messages (default 1000; mosquitto's is 20)",
    )
    p.add_argument(
        "--protocol",
        choices=["default", "auto", "5", "3.1.1"],
        default=protocol_default,
        help=f"collector MQTT protocol (default {protocol_default}; 'default' keeps the collector's own default)",
    )
    p.add_argument(
        "--client",
        choices=["default", "aiomqtt", "paho"],
        default="default",
        help="collector MQTT client library (default: the collector's own default)",
    )
    p.add_argument("--flush-max-messages", type=int, default=2000, help="collector flush_max_messages (default 2000)")
    p.add_argument("--flush-interval-ms", type=int, default=100, help="collector flush_interval_ms (default 100)")
    p.add_argument("--flush-idle-ms", type=int, default=20, help="collector flush_idle_ms (default 20)")
    p.add_argument(
        "--scrape-interval",
        type=float,
        default=scrape_default,
        help=f"GET /metrics every S seconds (0: never; default {scrape_default:g})",
    )
    p.add_argument("--timeout", type=float, default=120.0, help="give up on a measurement after S seconds")


def apply_collector_args(cfg: Any, args: argparse.Namespace) -> None:
    cfg.mqtt.flush_max_messages = args.flush_max_messages
    cfg.mqtt.flush_interval_ms = args.flush_interval_ms
    cfg.mqtt.flush_idle_ms = args.flush_idle_ms
    if args.protocol != "default":
        cfg.mqtt.protocol = args.protocol
    if args.client != "default":
        cfg.mqtt.client = args.client


# --- figures and tables ------------------------------------------------------------------------------------
def iso_us(dt: datetime) -> str:
    """ISO-8601 with microseconds and an explicit UTC offset (what the collector parses fastest)."""
    return f"{dt:%Y-%m-%dT%H:%M:%S}.{dt.microsecond:06d}+00:00"


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of an already sorted sequence; None when empty."""
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return float(sorted_values[k])


def histogram_buckets(registry: Any, name: str) -> list[tuple[float, float]]:
    """Cumulative (upper bound, count) pairs of a Prometheus histogram in `registry`."""
    out: list[tuple[float, float]] = []
    for family in registry.collect():
        if family.name != name:
            continue
        for s in family.samples:
            if s.name == name + "_bucket":
                out.append((float(s.labels["le"]), float(s.value)))
    return sorted(out)


def histogram_quantile(
    q: float, after: list[tuple[float, float]], before: list[tuple[float, float]] | None = None
) -> float | None:
    """Prometheus' histogram_quantile (linear inside a bucket) over `after` - `before` (q in 0..1)."""
    prev = dict(before or [])
    buckets = [(le, c - prev.get(le, 0.0)) for le, c in after]
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lo_bound, lo_count = 0.0, 0.0
    for le, c in buckets:
        if c >= rank:
            if le == float("inf"):
                return lo_bound  # above the highest finite bucket: its bound is all we know
            return lo_bound + (le - lo_bound) * ((rank - lo_count) / (c - lo_count) if c > lo_count else 1.0)
        lo_bound, lo_count = le, c
    return None


def print_table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A plain text table: first column left-aligned, the others right-aligned, a rule under the header."""
    table = [tuple(str(c) for c in head), *(tuple(str(c) for c in r) for r in rows)]
    widths = [max(len(t[i]) for t in table) for i in range(len(head))]
    for i, t in enumerate(table):
        print("  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(t, widths, strict=True))))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def goal_line(name: str, ok: bool, detail: str) -> str:
    return f"{'PASS' if ok else 'FAIL'}  {name}: {detail}"


def run_main(amain: Callable[[argparse.Namespace], Awaitable[int]], args: argparse.Namespace) -> int:
    """Every bench's entry point: quiet logging, harness errors and Ctrl-C exit 2 with a message."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return asyncio.run(amain(args))
    except HarnessError as exc:
        print(f"bench harness error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 2
