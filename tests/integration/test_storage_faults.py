"""S1 and S2 (shared/reliability.md §7): a full data disk, a kill during checkpoint, a damaged WAL."""

from __future__ import annotations

import asyncio
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import httpx
import pytest

from gridsentry.config import DeviceConfig
from storage.writer import StorageWriter
from tests.conftest import MosquittoBroker, api_headers
from tests.integration.test_pipeline import broker_config, count, start_service, wait_for
from tests.integration.test_reliability import Publisher

pytestmark = pytest.mark.integration

DEVICES = [DeviceConfig(id=f"DC{i:02d}", site="s1", kind="charger_dc", expected_interval_s=1) for i in range(10)]
RULES = Path(__file__).resolve().parents[2] / "deploy" / "gridsentry-rules.yml"


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 48 MiB tmpfs, mounted for the test (root only; skipped with the reason otherwise)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"S1 needs to mount a small tmpfs, which is not permitted here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(mnt: Path, leave_bytes: int) -> Path:
    ballast = mnt / "ballast"
    free = shutil.disk_usage(mnt).free
    with open(ballast, "wb") as f:
        f.truncate(0)
        chunk = b"\0" * (1 << 20)
        remaining = max(0, free - leave_bytes)
        while remaining > 0:
            f.write(chunk[: min(len(chunk), remaining)])
            remaining -= len(chunk)
    return ballast


async def test_s1_full_disk_degrades_holds_acks_and_recovers_with_nothing_lost(
    small_disk: Path, mosquitto: MosquittoBroker
):
    cfg = broker_config(small_disk, mosquitto.port, *DEVICES)
    cfg.data_dir = small_disk / "data"
    cfg.rules.builtin_packs = False
    service = await start_service(cfg)
    pub = Publisher(mosquitto.port, "s1-pub")
    ballast = None
    try:
        await asyncio.to_thread(pub.stream, 300, 1000)
        await wait_for(lambda: count(service, "select count(*) from readings") >= 3000, 30, "the first readings")
        # Leave almost nothing: the next WAL writes fail with ENOSPC.
        ballast = fill(small_disk, 64 * 1024)
        sent = 300
        deadline = time.monotonic() + 60
        while service.writer.consecutive_failures == 0:
            assert time.monotonic() < deadline, "the disk never filled"
            await asyncio.to_thread(pub.stream, 200, 2000)
            sent += 200
            await asyncio.sleep(0.2)
        async with httpx.AsyncClient(base_url=service.http_url, headers=api_headers(cfg.data_dir)) as http:
            health = (await http.get("/healthz")).json()
            ready = await http.get("/readyz")
            metrics = (await http.get("/metrics")).text
        assert health["status"] == "degraded" and "space" in health["storage_error"].lower()
        assert ready.status_code == 503 and ready.json()["checks"]["storage_writable"] is False
        assert "gridsentry_storage_writable 0.0" in metrics
        stored_while_full = count(service, "select count(*) from readings")
        assert stored_while_full < sent * 10, "some readings are waiting, unacknowledged"
        print(f"S1: disk full after {sent} messages, {stored_while_full} readings stored; {health['storage_error']}")
        # Free the space: the collector's retry commits what it held, the broker redelivers the rest.
        ballast.unlink()
        ballast = None
        await asyncio.to_thread(pub.wait_all)
        expected = sent * 10
        await wait_for(lambda: count(service, "select count(*) from readings") >= expected, 90, "every reading")
        await wait_for(lambda: service.writer.consecutive_failures == 0, 10, "storage writable again")
        stored = count(service, "select count(*) from readings")
        distinct = count(service, "select count(*) from (select distinct device_id, metric, ts from readings)")
        async with httpx.AsyncClient(base_url=service.http_url, headers=api_headers(cfg.data_dir)) as http:
            assert (await http.get("/healthz")).json()["status"] == "ok"
        print(f"S1: after freeing space {stored} of {expected} readings, {stored - distinct} duplicates")
        assert stored == expected and distinct == expected
    finally:
        if ballast is not None:
            ballast.unlink()
        pub.close()
        await service.stop()
    # The database reopens without a replay error.
    w = StorageWriter(cfg.database_path)
    w.start()
    assert not w.wal_quarantines
    w.close()


def test_s1_self_alert_rule_fires_when_storage_fails(tmp_path: Path):
    """The shipped rule pages about GridSentry itself when its storage keeps failing (promtool unit test)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed: run `make system-deps` (Debian package prometheus)")
    test = tmp_path / "test.yml"
    test.write_text(
        f"""rule_files: [{RULES}]
evaluation_interval: 15s
tests:
  - interval: 15s
    input_series:
      - series: 'gridsentry_storage_writable{{instance="gs1"}}'
        values: '1 1 0 0 0 0 0 0 1'
    alert_rule_test:
      - eval_time: 30s
        alertname: GridSentryStorageFailing
        exp_alerts: []
      - eval_time: 105s
        alertname: GridSentryStorageFailing
        exp_alerts:
          - exp_labels: {{severity: critical, event_class: "I", instance: gs1}}
            exp_annotations:
              summary: "GridSentry cannot write its database on gs1"
              description: "0 means the last write failed (disk full or I/O error). Readings are held at the MQTT broker and nothing is acknowledged; free space on the data directory and ingest resumes by itself."
      - eval_time: 120s
        alertname: GridSentryStorageFailing
        exp_alerts: []
"""
    )
    r = subprocess.run([promtool, "test", "rules", str(test)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


CHILD = r"""
import os, sys
from pathlib import Path
import duckdb
con = duckdb.connect(sys.argv[1])
con.execute("CREATE TABLE IF NOT EXISTS t (batch INTEGER, i INTEGER, pad VARCHAR)")
batch = 0
while True:
    batch += 1
    con.execute("INSERT INTO t SELECT ?, range, repeat('x', 40) FROM range(2000)", [batch])
    print(batch, flush=True)  # acknowledged: committed
    if batch % 5 == 0:
        con.execute("FORCE CHECKPOINT")
"""


def test_s2_kill_during_checkpoint_loses_nothing(tmp_path: Path):
    db = tmp_path / "k.duckdb"
    rng = random.Random(9)
    acked = 0
    for _ in range(4):
        p = subprocess.Popen([sys.executable, "-c", CHILD, str(db)], stdout=subprocess.PIPE, text=True)
        time.sleep(0.8 + rng.random())
        p.send_signal(signal.SIGKILL)
        out, _ = p.communicate()
        lines = out.split()
        acked = max(acked, int(lines[-1])) if lines else acked
        con = duckdb.connect(str(db))
        batches = con.execute("SELECT count(DISTINCT batch), coalesce(max(batch), 0), count(*) FROM t").fetchone()
        con.close()
        assert batches is not None
        # Every acknowledged batch is there, whole (the child restarts its numbering from 1 each run, so the
        # count of distinct batches can only grow up to the largest acknowledged one).
        assert batches[1] >= acked and batches[2] % 2000 == 0, batches
    assert acked > 5, "checkpoints happened during the run"


def test_s2_damaged_wal_is_quarantined_and_the_service_starts(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    db = tmp_path / "gs.duckdb"
    w = StorageWriter(db)
    w.start()
    w.close()
    script = (
        "import os, sys, duckdb\n"
        "con = duckdb.connect(sys.argv[1])\n"
        "for b in range(40):\n"
        "    con.execute(\"INSERT INTO readings SELECT now(), 'DC01', 'm', range, 0 FROM range(500)\")\n"
        "os._exit(0)\n"  # no checkpoint: everything is in the WAL
    )
    subprocess.run([sys.executable, "-c", script, str(db)], check=True)
    wal = db.with_name(db.name + ".wal")
    data = bytearray(wal.read_bytes())
    offset = len(data) // 2
    for k in range(16):
        data[offset + k] ^= 0xFF
    wal.write_bytes(bytes(data))
    with pytest.raises(duckdb.Error, match="WAL"):
        duckdb.connect(str(db))  # what a plain restart would do, again and again
    w = StorageWriter(db)
    w.start()
    try:
        assert len(w.wal_quarantines) == 1
        q = w.wal_quarantines[0]
        assert q.kept_as.exists() and q.kept_as.name.startswith("gs.duckdb.wal.corrupt-")
        assert 0 < q.salvaged_bytes < len(data)
        con = w.reader()
        salvaged = con.execute("SELECT count(*) FROM readings").fetchone()
        con.close()
        assert salvaged is not None and 0 < salvaged[0] < 40 * 500, "the entries before the damage came back"
        assert any("WAL DAMAGED" in r.message for r in caplog.records)
    finally:
        w.close()
    assert q.kept_as.exists()
