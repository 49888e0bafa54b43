import asyncio
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from alerts.lifecycle import AlertLifecycle, AlertStateError
from rules.model import Finding
from storage.batch import DeadLetter, IngestBatch, dead_letters_table, events_from_columns, readings_from_columns
from storage.schema import MIGRATIONS, migrate
from storage.sql import QueryRejectedError, QueryTimeoutError, run_read_query
from storage.writer import StorageWriter

T0 = 1_800_000_000_000_000


@pytest.fixture
def writer(tmp_path):
    w = StorageWriter(tmp_path / "db" / "gs.duckdb")
    w.start()
    yield w
    w.close()


def test_migrations_are_idempotent(tmp_path):
    con = duckdb.connect(str(tmp_path / "m.duckdb"))
    assert migrate(con) == sorted(m.version for m in MIGRATIONS)
    assert migrate(con) == []
    tables = {r[0] for r in con.execute("select table_name from information_schema.tables").fetchall()}
    assert {
        "devices",
        "metrics",
        "readings",
        "events",
        "alerts",
        "alert_events",
        "dead_letters",
        "v_readings",
    } <= tables


def test_append_commits_readings_events_and_dead_letters(writer):
    batch = IngestBatch(
        readings=readings_from_columns([T0, T0 + 1], ["A", "B"], ["m", "m"], [1.0, 2.0]),
        events=events_from_columns([T0], ["A"], ["status"], ["Charging"], ["gun 1"]),
        dead_letters=dead_letters_table([DeadLetter("mqtt", "t/x", "invalid_json", "bad", b"x" * 10_000)]),
    )
    result = writer.append_sync(batch)
    assert (result.readings, result.events, result.dead_letters) == (2, 1, 1)
    con = writer.reader()
    assert con.execute("select count(*) from readings").fetchone() == (2,)
    assert con.execute("select code from events").fetchone() == ("Charging",)
    assert con.execute("select reason, octet_length(payload) from dead_letters").fetchone() == ("invalid_json", 4096)


def test_failed_write_rolls_back_and_writer_survives(writer):
    def bad(con):
        con.execute("insert into readings values (now(), 'A', 'm', 1, 0)")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        writer.submit(bad).result()
    assert writer.commit_failures == 1
    assert writer.reader().execute("select count(*) from readings").fetchone() == (0,)
    writer.append_sync(IngestBatch(readings=readings_from_columns([T0], ["A"], ["m"], [1.0])))
    assert writer.reader().execute("select count(*) from readings").fetchone() == (1,)


def test_data_survives_reopen(tmp_path):
    path = tmp_path / "gs.duckdb"
    w = StorageWriter(path)
    w.start()
    w.append_sync(IngestBatch(readings=readings_from_columns([T0] * 3, ["A"] * 3, ["m"] * 3, [1.0, 2.0, 3.0])))
    w.close()
    w2 = StorageWriter(path)
    w2.start()
    assert w2.reader().execute("select sum(value) from readings").fetchone() == (6.0,)
    w2.close()


def finding(action="fire", value=95.0):
    return Finding(
        action=action,
        rule_id="gun_hot",
        title="Gun hot",
        device_id="DC01",
        site="demo",
        metric="gun1_temp_c",
        value=value,
        threshold=90,
        unit="°C",
        event_class="I",
        message=f"DC01 gun1 {value} °C",
        runbook="",
        ts=datetime.now(UTC),
    )


def test_alert_lifecycle(writer):
    lc = AlertLifecycle(writer)

    async def go():
        [c] = await lc.apply([finding()])
        assert c.action == "fired"
        [c2] = await lc.apply([finding(value=97)])
        assert c2.action == "refired" and c2.alert_id == c.alert_id
        await lc.acknowledge(c.alert_id, "li.wei", "on my way")
        with pytest.raises(AlertStateError):
            await lc.acknowledge(c.alert_id, "li.wei")
        [c3] = await lc.apply([finding("clear", 80)])
        assert c3.action == "resolved"
        await lc.close(c.alert_id, "li.wei", "contacts replaced")
        with pytest.raises(LookupError):
            await lc.close(999, "x")
        return c.alert_id

    alert_id = asyncio.run(go())
    con = writer.reader()
    row = con.execute(
        "select state, fire_count, value, acknowledged_by, event_class, "
        "date_diff('second', created_at, ack_due), date_diff('second', created_at, restore_due) from alerts"
    ).fetchone()
    assert row == ("closed", 2, 80.0, "li.wei", "I", 300, 12 * 3600)
    actions = [
        r[0]
        for r in con.execute(
            "select action from alert_events where alert_id = ? order by ts, rowid", [alert_id]
        ).fetchall()
    ]
    assert actions == ["fired", "refired", "acknowledged", "resolved", "closed"]


def test_sql_guard(writer):
    writer.append_sync(IngestBatch(readings=readings_from_columns([T0], ["A"], ["m"], [1.0])))
    con = writer.reader()
    assert run_read_query(con, "select count(*) from readings").rows == [(1,)]
    assert run_read_query(con, "describe readings").rows
    for bad in [
        "delete from readings",
        "drop table readings",
        "select 1; select 2",
        "create table x (a int)",
        "attach 'x.db'",
        "copy readings to 'x.csv'",
        "set threads=1",
        "call checkpoint()",
    ]:
        with pytest.raises(QueryRejectedError):
            run_read_query(con, bad)
    res = run_read_query(con, "select * from range(100)", max_rows=10)
    assert len(res.rows) == 10 and res.truncated
    with pytest.raises(QueryTimeoutError):
        run_read_query(con, "select count(*) from range(100000000) a, range(100000) b", timeout_s=0.5)
    assert con.execute("select count(*) from readings").fetchone() == (1,)


def keyed_batch(keys, start=0):
    """One message per key, two readings each."""
    n = len(keys)
    return IngestBatch(
        readings=readings_from_columns(
            [T0 + start + i for i in range(n) for _ in (0, 1)],
            ["A"] * (2 * n),
            ["m1", "m2"] * n,
            [float(i) for i in range(2 * n)],
        ),
        message_keys=pa.array(keys, pa.uint64()),
        reading_message=pa.array([i for i in range(n) for _ in (0, 1)], pa.int32()),
        event_message=pa.array([], pa.int32()),
    )


def test_redelivered_messages_are_dropped_across_restart(tmp_path):
    path = tmp_path / "gs.duckdb"
    w = StorageWriter(path)
    w.start()
    assert w.append_sync(keyed_batch([1, 2, 3])).readings == 6
    r = w.append_sync(keyed_batch([3, 4, 4, None, None]))  # 3 again, 4 twice in one batch, two unkeyed
    assert (r.readings, r.duplicates) == (6, 4)
    w.close()
    w = StorageWriter(path)  # after a restart the window is reloaded from ingest_state
    w.start()
    r = w.append_sync(keyed_batch([1, 4, 5]))
    assert (r.readings, r.duplicates) == (2, 4)
    assert w.reader().execute("select count(*) from readings").fetchone() == (14,)
    w.close()


def test_rolled_back_batch_does_not_poison_the_window(tmp_path):
    w = StorageWriter(tmp_path / "gs.duckdb")
    w.start()
    batch = keyed_batch([7])

    def fail_after_append(con):
        w._append(con, batch, None)
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        w.submit(fail_after_append).result()
    assert w.append_sync(batch).readings == 2  # the retry is stored, not dropped as a duplicate
    w.close()


def test_window_is_bounded(tmp_path):
    w = StorageWriter(tmp_path / "gs.duckdb", dedupe_window=10)
    w.start()
    for k in range(0, 40, 4):
        w.append_sync(keyed_batch([k, k + 1, k + 2, k + 3]))
    assert len(w.dedupe) <= 12
    assert w.append_sync(keyed_batch([0])).readings == 2  # long gone from the window
    w.close()


def test_a_crash_right_after_migrating_leaves_a_database_that_opens(tmp_path):
    """DuckDB 1.5.5 cannot replay some of our DDL from the WAL; migrate() checkpoints so the WAL holds none."""
    import subprocess
    import sys
    import textwrap

    db = tmp_path / "crash.duckdb"
    script = textwrap.dedent(
        f"""
        import os, duckdb
        from storage.schema import migrate
        con = duckdb.connect({str(db)!r})
        migrate(con)
        con.execute("CREATE TABLE after_migrate AS SELECT 1 AS x")  # data in the WAL, as in service
        os._exit(0)  # no close, no checkpoint: like kill -9
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=Path(__file__).parents[2])
    con = duckdb.connect(str(db))
    assert con.execute("SELECT x FROM after_migrate").fetchone() == (1,)
    assert migrate(con) == []


def test_a_write_that_runs_out_of_memory_stops_queries_and_is_retried_once(tmp_path):
    from storage.writer import StorageWriter

    writer = StorageWriter(tmp_path / "oom.duckdb")
    writer.start()
    calls: list[str] = []
    try:
        writer.on_memory_pressure = lambda: calls.append("stop queries") or True

        def flaky(con):
            calls.append("job")
            if calls.count("job") == 1:
                raise duckdb.OutOfMemoryException("could not allocate block")
            con.execute("CREATE TABLE IF NOT EXISTS kept AS SELECT 42 AS x")
            return "committed"

        assert writer.submit(flaky).result(10) == "committed"
        assert calls == ["job", "stop queries", "job"]

        def always(con):
            raise duckdb.OutOfMemoryException("still no memory")

        writer.on_memory_pressure = lambda: False  # nothing to stop: the failure stands
        with pytest.raises(duckdb.OutOfMemoryException):
            writer.submit(always).result(10)
        assert writer.submit(lambda con: con.execute("SELECT x FROM kept").fetchone()).result(10) == (42,)
    finally:
        writer.close()


def test_a_write_that_fails_after_its_commit_landed_is_not_stored_twice(tmp_path):
    """DuckDB can raise after a COMMIT is durable (an automatic checkpoint running out of memory). The writer
    reads its commit marker: a landed commit is kept, not retried, and its keys still drop a redelivery."""
    from storage.writer import StorageWriter

    class FailsAfterCommit:
        def __init__(self, con):
            self.con, self.armed = con, False

        def execute(self, sql, *args):
            result = self.con.execute(sql, *args)
            if self.armed and sql.startswith("UPDATE writer_commits") and sql.endswith("COMMIT"):
                self.armed = False
                raise duckdb.OutOfMemoryException("injected: checkpoint after the commit ran out of memory")
            return result

        def __getattr__(self, name):
            return getattr(self.con, name)

    class Writer(StorageWriter):
        def _open(self):
            self.proxy = FailsAfterCommit(super()._open())
            return self.proxy

    w = Writer(tmp_path / "gs.duckdb")
    w.start()
    try:
        w.on_memory_pressure = lambda: True  # the retry path would run the batch again if it did not check
        w.proxy.armed = True
        assert w.append_sync(keyed_batch([1, 2, 3])).readings == 6
        assert not w.proxy.armed, "the injected failure did not fire"
        again = w.append_sync(keyed_batch([1, 2, 3]))  # the broker redelivers: not acknowledged before
        assert (again.readings, again.duplicates) == (0, 6)
        assert w.reader().execute("select count(*) from readings").fetchone() == (6,)
        assert w.commit_failures == 0
    finally:
        w.close()
