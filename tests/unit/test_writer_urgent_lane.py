"""The writer's urgent lane: an alert transition is not held up by ingest batches queued before it."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from storage.writer import StorageWriter


def test_urgent_jobs_run_before_queued_normal_jobs_and_close_runs_everything(tmp_path: Path) -> None:
    w = StorageWriter(tmp_path / "db.duckdb")
    w.start()
    release, busy = threading.Event(), threading.Event()
    order: list[str] = []

    def blocker(_con: Any) -> None:
        busy.set()
        release.wait(10)
        order.append("blocker")

    def job(name: str) -> Any:
        return lambda _con: order.append(name)

    try:
        first = w.submit(blocker)
        assert busy.wait(10)  # the writer is inside a long transaction (a big batch, a checkpoint)
        normal = [w.submit(job(f"ingest {i}")) for i in range(3)]
        urgent = [w.submit(job("alert 1"), urgent=True), w.submit(job("alert 2"), urgent=True)]
        last = w.submit(job("ingest 3"))
        release.set()
        for f in [first, *normal, *urgent, last]:
            f.result(10)
    finally:
        w.close()
    assert order == ["blocker", "alert 1", "alert 2", "ingest 0", "ingest 1", "ingest 2", "ingest 3"]


def test_close_runs_what_was_submitted_before_it(tmp_path: Path) -> None:
    w = StorageWriter(tmp_path / "db.duckdb")
    w.start()
    done = [w.submit(lambda con, i=i: con.execute("SELECT ?", [i]).fetchone()) for i in range(5)]
    w.close()
    assert [f.result(1) for f in done] == [(i,) for i in range(5)]
