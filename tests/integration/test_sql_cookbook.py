"""Every query of the SQL cookbook (docs/sql.md) runs, through the engineers' sandbox, on the demo history."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from gridsentry.config import Config, metric_catalogue
from gridsentry.demo_history import seed_demo_history
from storage.sql import run_read_query
from storage.writer import open_database, restrict_access

pytestmark = pytest.mark.integration

DOC = Path(__file__).resolve().parents[2] / "docs" / "sql.md"
# Queries that answer about faults the demo hub has (its hot connector, its weak PV string, its incidents)
# must find them; the others must at least run and return their columns.
MUST_FIND = {
    "3": "DC02",
    "5": "INV01",
    "8": "I",
    "9": "DC01",
}


def cookbook() -> list[tuple[str, str, str]]:
    text = DOC.read_text(encoding="utf-8").split("## Cookbook", 1)[1]
    found = re.findall(r"^### (\d+)\. (.+?)\n.*?```sql\n(.*?)```", text, flags=re.S | re.M)
    return [(n, title, sql.strip().rstrip(";")) for n, title, sql in found]


def last_afternoon_in_shanghai() -> datetime:
    """The latest 16:00 Asia/Shanghai (08:00 UTC) not in the future.

    The history must end in the afternoon whatever the hour CI runs at: the weak PV string only shows while
    the sun is up, and the fault starts 40 % into the day of history.
    """
    now = datetime.now(UTC)
    end = now.replace(hour=8, minute=0, second=0, microsecond=0)
    return end if end <= now else end - timedelta(days=1)


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cookbook") / "gridsentry.duckdb"
    con = open_database(path)
    seed_demo_history(con, days=1.0, end=last_afternoon_in_shanghai(),
                      metrics=[m.model_dump() for m in metric_catalogue(Config()).values()])  # fmt: skip
    con.close()
    return path


def test_the_cookbook_has_at_least_15_questions():
    queries = cookbook()
    assert len(queries) >= 15
    assert len({n for n, _, _ in queries}) == len(queries)


@pytest.mark.parametrize(("number", "title", "query"), cookbook(), ids=[f"q{n}" for n, _, _ in cookbook()])
def test_cookbook_query_runs_on_demo_history(demo_db: Path, number: str, title: str, query: str):
    con = duckdb.connect(str(demo_db), read_only=True)
    restrict_access(con, [demo_db.parent / "archive"], lock_configuration=True)
    try:
        result = run_read_query(con, query, timeout_s=60, max_rows=10_000)
    finally:
        con.close()
    assert result.columns, title
    if number in MUST_FIND:
        assert any(MUST_FIND[number] in map(str, row) for row in result.rows), (title, result.rows[:5])
    elif number not in ("10", "17", "20"):
        assert result.rows, f"{title}: no rows on the demo history"


def test_seed_demo_then_sql_from_the_command_line(tmp_path: Path):
    run = [sys.executable, "-m", "gridsentry.cli"]
    seeded = subprocess.run(
        [*run, "db", "seed-demo", "--days", "0.25", "--data-dir", str(tmp_path)], capture_output=True, text=True
    )
    assert seeded.returncode == 0, seeded.stderr
    out = subprocess.run(
        [*run, "sql", "--data-dir", str(tmp_path), "-f", "csv", "SELECT kind, count(*) FROM v_readings GROUP BY 1"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert "box_transformer" in out.stdout
    refused = subprocess.run(
        [*run, "sql", "--data-dir", str(tmp_path), "DELETE FROM readings"], capture_output=True, text=True
    )
    assert refused.returncode == 2 and "only read statements" in refused.stderr
    audit = (tmp_path / "sql-audit.jsonl").read_text().splitlines()
    assert len(audit) == 2 and "DELETE FROM readings" in audit[-1] and "QueryRejectedError" in audit[-1]
    parquet = tmp_path / "tx.parquet"
    out = subprocess.run(
        [*run, "sql", "--data-dir", str(tmp_path), "-f", "parquet", "-o", str(parquet), "FROM v_box_transformer"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert duckdb.sql(f"SELECT count(*) FROM '{parquet}'").fetchone()[0] > 0
    prompt = subprocess.run(
        [*run, "sql", "--data-dir", str(tmp_path), "-f", "csv"],
        input="SELECT count(*) AS n\n  FROM devices;\n.quit\n",
        capture_output=True,
        text=True,
        env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    assert prompt.returncode == 0, prompt.stderr
    assert "n\n9\n" in prompt.stdout
    assert (tmp_path / ".gridsentry_sql_history").exists()
