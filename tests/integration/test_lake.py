"""Scale-out: two GridSentry instances (two regions) ship into one DuckLake on a local PostgreSQL; one query
sees the whole fleet. PostgreSQL is Debian's, started as a throwaway cluster on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from storage.lake import LakeConfig, init_lake, open_lake
from tests.conftest import free_port

pytestmark = pytest.mark.integration

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def pg_tool(name: str) -> str:
    found = shutil.which(name) or (str(PG_BIN / name) if (PG_BIN / name).exists() else None)
    if found is None:
        pytest.fail(f"PostgreSQL's {name} is not installed: run `make system-deps` (Debian package postgresql)")
    return found


def as_postgres(cmd: list[str]) -> list[str]:
    # initdb and postgres refuse to run as root.
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@pytest.fixture
def postgres() -> Iterator[str]:
    work = Path(tempfile.mkdtemp(prefix="gs-pg-"))
    if os.geteuid() == 0:
        shutil.chown(work, "postgres", "postgres")
    data, port = work / "data", free_port()
    subprocess.run(as_postgres([pg_tool("initdb"), "-D", str(data), "-A", "trust", "-U", "gridsentry"]),
                   check=True, capture_output=True)  # fmt: skip
    subprocess.run(
        as_postgres([pg_tool("pg_ctl"), "-D", str(data), "-l", str(work / "pg.log"), "-w", "-o",
                     f"-c listen_addresses=127.0.0.1 -p {port} -k {work}", "start"]),
        check=True, capture_output=True,
    )  # fmt: skip
    try:
        subprocess.run(
            [pg_tool("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "gridsentry", "lake"],
            check=True,
            capture_output=True,
        )
        yield f"postgres:dbname=lake host=127.0.0.1 port={port} user=gridsentry"
    finally:
        subprocess.run(as_postgres([pg_tool("pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
                       capture_output=True)  # fmt: skip
        shutil.rmtree(work, ignore_errors=True)


INSTANCE = r"""
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
import pyarrow as pa
from storage.batch import READING_SCHEMA, IngestBatch
from storage.lake import LakeConfig, LakeShipper
from storage.writer import StorageWriter

data_dir, region, catalog, lake_data = sys.argv[1:5]
w = StorageWriter(Path(data_dir) / "gridsentry.duckdb", allowed_directories=[Path(data_dir) / "archive"],
                  lock_configuration=True)
w.start()
start = datetime(2026, 11, 1, tzinfo=UTC)
devices = [f"{region.upper()}-DC{d:02d}" for d in range(20)]
for batch in range(10):
    ts = [start + timedelta(minutes=batch * 60 + m) for d in devices for m in range(60)]
    dev = [d for d in devices for m in range(60)]
    table = pa.table({"ts": pa.array(ts, pa.timestamp("us", tz="UTC")), "device_id": dev,
                      "metric": ["gun1_temp_c"] * len(ts), "value": [40.0 + (i % 7) for i in range(len(ts))],
                      "quality": pa.array([0] * len(ts), pa.uint8())}, schema=READING_SCHEMA)
    w.append_sync(IngestBatch(readings=table, source="test"))
w.submit(lambda con: con.execute(
    "INSERT INTO alerts (fingerprint, rule_id, device_id, event_class, state, title, message, fired_at, created_at, "
    "updated_at) VALUES ('f', 'dc.temp', ?, 'I', 'firing', 'hot gun', 'hot', now(), now(), now())", [devices[0]]
)).result()
shipper = LakeShipper(w.reader, LakeConfig(catalog=catalog, data_path=lake_data, region=region, lateness_s=0))
first = shipper.ship_once()
again = shipper.ship_once()  # nothing new: shipping is exactly-once per region
shipper.close()
w.close()
print(first.readings, first.alerts, again.readings)
"""


def test_two_regions_share_one_ducklake_and_one_query_sees_both(postgres: str, tmp_path: Path):
    lake_data = tmp_path / "lake"
    lake_data.mkdir()
    cfg = LakeConfig(catalog=postgres, data_path=str(lake_data) + "/", region="ops")
    init_lake(cfg)  # once, before the instances start
    repo = Path(__file__).resolve().parents[2]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", INSTANCE, str(tmp_path / region), region, postgres, str(lake_data) + "/"],
            cwd=repo,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for region in ("south", "east")
    ]
    deadline = time.monotonic() + 120
    outputs = []
    for p in procs:
        out, err = p.communicate(timeout=max(1, deadline - time.monotonic()))
        assert p.returncode == 0, err
        outputs.append(out.split()[-3:])
    assert outputs == [["12000", "1", "0"], ["12000", "1", "0"]]
    con = open_lake(cfg)
    try:
        per_region = con.execute(
            "SELECT region, count(*), count(DISTINCT device_id), round(avg(value), 3) FROM lake.readings "
            "GROUP BY region ORDER BY region"
        ).fetchall()
        fleet_alerts = con.execute("SELECT region, device_id FROM lake.alerts ORDER BY region").fetchall()
        hottest = con.execute(
            "SELECT r.region, d.kind IS NULL AS unknown_kind, count(*) FROM lake.readings r "
            "LEFT JOIN lake.devices d USING (region, device_id) GROUP BY ALL ORDER BY 1"
        ).fetchall()
        files = con.execute("SELECT count(*) FROM ducklake_list_files('lake', 'readings')").fetchone()
    finally:
        con.close()
    mean = round(sum(40.0 + i % 7 for i in range(1200)) / 1200, 3)  # what each instance stored
    assert per_region == [("east", 12000, 20, mean), ("south", 12000, 20, mean)]
    assert fleet_alerts == [("east", "EAST-DC00"), ("south", "SOUTH-DC00")]
    assert [r[0] for r in hottest] == ["east", "south"]
    assert files is not None and files[0] >= 2, "each region's rows went to Parquet files under the data path"
    assert list(lake_data.rglob("*.parquet"))
