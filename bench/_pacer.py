"""A paced MQTT load generator (paho-mqtt, QoS 1) that runs in its own process, for `latency.py` and `soak.py`.

It publishes S streams (one per device), each every `interval_s`, spread evenly in time: event j goes out at
`t0 + j * interval_s / S` (stream j mod S), so the offered load is smooth rather than one burst per round.
Each payload is built just before its publish, so a `ts` in it is the publish time. When the process falls
behind its schedule it catches up as fast as it can and reports how late it got.

The process is forked (not spawned) before the consumer under test starts its threads, so nothing is
pickled and nothing is imported again. It connects, waits for `go`, publishes for `duration_s`, waits for every
PUBACK, and puts a `PacerReport` dict on `results`. `published` and `acked` are shared counters the parent
can sample while it runs.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import paho.mqtt.client as paho

#: (stream index, round k, wall-clock time now) -> (payload, readings in it)
PayloadFn = Callable[[int, int, float], tuple[bytes, int]]

_ts_cache: list[Any] = [None, b""]


def iso_ts(now: float) -> bytes:
    """`now` (epoch seconds) as ISO-8601 UTC with microseconds, cheaply: the date part is cached per second."""
    sec = int(now)
    if _ts_cache[0] != sec:
        _ts_cache[0], _ts_cache[1] = sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)).encode()
    return b"%s.%06d+00:00" % (_ts_cache[1], int((now - sec) * 1_000_000))


@dataclass
class PacerReport:
    messages: int = 0
    readings: int = 0
    acked: int = 0
    seconds: float = 0.0  # first publish to last publish
    ack_wait_seconds: float = 0.0
    max_late_s: float = 0.0  # worst lag behind the schedule
    late_events: int = 0  # events published more than 50 ms after their slot
    cpu_s: float = 0.0
    error: str | None = None


@dataclass
class PacerSpec:
    port: int
    client_id: str
    topics: list[str]
    interval_s: float
    duration_s: float
    payload: PayloadFn
    phase: float = 0.0  # fraction of the event spacing to delay this publisher by (several publishers interleave)
    inflight: int = 1000
    max_outstanding: int = 20_000  # published but not yet acknowledged; beyond it the pacer waits (and runs late)


def _run(spec: PacerSpec, go: Any, stop: Any, published: Any, readings: Any, acked: Any, results: Any) -> None:
    rep = PacerReport()
    try:
        _publish(spec, go, stop, published, readings, acked, rep)
    except Exception as exc:  # reported to the parent, which fails the run
        rep.error = f"{type(exc).__name__}: {exc}"
    finally:
        rep.cpu_s = time.process_time()
        results.put(asdict(rep))


def _publish(spec: PacerSpec, go: Any, stop: Any, published: Any, readings: Any, acked: Any, rep: PacerReport) -> None:
    client = paho.Client(
        paho.CallbackAPIVersion.VERSION2, client_id=spec.client_id, protocol=paho.MQTTv311, clean_session=True
    )
    client.max_inflight_messages_set(spec.inflight)
    client.max_queued_messages_set(0)
    n_acked = 0
    lock = threading.Lock()

    def on_publish(_c: Any, _u: Any, _mid: int, _rc: Any, _p: Any) -> None:
        nonlocal n_acked
        with lock:
            n_acked += 1
        acked.value = n_acked

    connected = threading.Event()
    client.on_publish = on_publish
    client.on_connect = lambda *_a: connected.set()
    client.connect("127.0.0.1", spec.port, keepalive=60)
    client.loop_start()
    try:
        if not connected.wait(10):
            raise RuntimeError("could not connect to the broker")
        go.wait()
        s = len(spec.topics)
        dt = spec.interval_s / s
        n_events = max(1, round(spec.duration_s / dt))
        t0 = time.perf_counter() + spec.phase * dt
        wall0 = time.time() - time.perf_counter()  # perf_counter -> wall clock
        j = 0
        n_readings = 0
        first = last = 0.0
        while j < n_events and not stop.is_set():
            now = time.perf_counter()
            due = t0 + j * dt
            if due > now:  # sleep at least 1 ms, then publish everything that fell due (bursts of <= 1 ms)
                time.sleep(min(max(due - now, 0.001), 0.005))
                continue
            if j - n_acked >= spec.max_outstanding:  # paho would reuse message ids past 65,535 queued
                time.sleep(0.001)
                continue
            late = now - due
            if late > 0.05:
                rep.late_events += 1
            rep.max_late_s = max(rep.max_late_s, late)
            i, k = j % s, j // s
            payload, r = spec.payload(i, k, wall0 + time.perf_counter())
            client.publish(spec.topics[i], payload, qos=1)
            if j == 0:
                first = time.perf_counter()
            last = time.perf_counter()
            j += 1
            n_readings += r
            if j % 64 == 0:
                published.value, readings.value = j, n_readings
        published.value, readings.value = j, n_readings
        rep.messages, rep.readings, rep.seconds = j, n_readings, last - first
        t_wait = time.perf_counter()
        deadline = t_wait + 120
        while n_acked < j and time.perf_counter() < deadline:
            time.sleep(0.01)
        rep.ack_wait_seconds = time.perf_counter() - t_wait
        rep.acked = n_acked
        if n_acked < j:
            raise RuntimeError(f"only {n_acked:,} of {j:,} publishes were acknowledged by the broker")
    finally:
        with contextlib.suppress(Exception):
            client.disconnect()
        client.loop_stop()


class Pacer:
    """One or more forked publisher processes sharing a set of streams, started together with `go()`."""

    def __init__(self, specs: list[PacerSpec]) -> None:
        ctx = mp.get_context("fork")
        self._go = ctx.Event()
        self._stop = ctx.Event()
        self._results = ctx.Queue()
        self._published = [ctx.Value("q", 0, lock=False) for _ in specs]
        self._readings = [ctx.Value("q", 0, lock=False) for _ in specs]
        self._acked = [ctx.Value("q", 0, lock=False) for _ in specs]
        self.procs = [
            ctx.Process(
                target=_run,
                args=(spec, self._go, self._stop, self._published[i], self._readings[i], self._acked[i], self._results),
                name=f"bench-pacer-{i}",
                daemon=True,
            )
            for i, spec in enumerate(specs)
        ]
        for p in self.procs:
            p.start()

    def go(self) -> None:
        self._go.set()

    def stop(self) -> None:
        self._stop.set()

    @property
    def published(self) -> int:
        return sum(v.value for v in self._published)

    @property
    def readings(self) -> int:
        return sum(v.value for v in self._readings)

    @property
    def acked(self) -> int:
        return sum(v.value for v in self._acked)

    def alive(self) -> bool:
        return any(p.is_alive() for p in self.procs)

    def results(self, timeout: float) -> list[PacerReport]:
        """Wait for every publisher's report (call from a thread when an event loop must keep running)."""
        out = [PacerReport(**self._results.get(timeout=timeout)) for _ in self.procs]
        for p in self.procs:
            p.join(5)
        return out

    def kill(self) -> None:
        self._go.set()
        self._stop.set()
        for p in self.procs:
            if p.is_alive():
                p.join(5)
            if p.is_alive() and p.pid is not None:
                p.kill()
                p.join()


def split_specs(
    port: int, tag: str, topics: list[str], interval_s: float, duration_s: float, payload: PayloadFn, processes: int
) -> list[PacerSpec]:
    """Streams dealt round-robin over `processes` publishers; their schedules interleave."""
    specs = []
    for p in range(processes):
        idx = list(range(p, len(topics), processes))
        if not idx:
            continue

        def local_payload(i: int, k: int, now: float, _idx: list[int] = idx) -> tuple[bytes, int]:
            return payload(_idx[i], k, now)

        specs.append(
            PacerSpec(
                port,
                f"bench-pacer-{tag}-{p}",
                [topics[i] for i in idx],
                interval_s,
                duration_s,
                local_payload,
                phase=p / processes,
            )
        )
    return specs
