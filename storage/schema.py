"""The DuckDB schema, as numbered migrations applied in order at start-up.

A migration never changes once released: a later change is a new number. Each runs in its own
transaction together with the row that records it, so a crash leaves either all of it or none.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import duckdb

log = logging.getLogger(__name__)


# Metrics of the per-kind wide views (one row per device and reading time). A metric not listed
# here is still in v_readings; these views only spare engineers a PIVOT for the common ones.
WIDE_VIEW_METRICS: dict[str, tuple[str, ...]] = {
    "charger_ac": ("power_kw", "energy_kwh", "voltage_v", "current_a", "connector_temp_c"),
    "charger_dc": (
        "gun1_power_kw",
        "gun2_power_kw",
        "gun1_voltage_v",
        "gun2_voltage_v",
        "gun1_current_a",
        "gun2_current_a",
        "gun1_temp_c",
        "gun2_temp_c",
        "gun1_soc_pct",
        "gun2_soc_pct",
        "module_temp_c",
        "cabinet_temp_c",
        "input_power_kw",
        "energy_kwh",
    ),
    "pv_inverter": (
        "ac_power_kw",
        "dc_power_kw",
        "energy_kwh",
        "dc_voltage_v",
        "string1_current_a",
        "string2_current_a",
        "string3_current_a",
        "string4_current_a",
        "string5_current_a",
        "string6_current_a",
        "string7_current_a",
        "string8_current_a",
        "heatsink_temp_c",
        "irradiance_wm2",
        "ambient_temp_c",
    ),
    "box_transformer": (
        "load_kva",
        "load_factor",
        "top_oil_temp_c",
        "hot_spot_temp_c",
        "ambient_temp_c",
        "lv_voltage_v",
        "lv_current_a",
    ),
}


def _wide_view(kind: str, metrics: tuple[str, ...]) -> str:
    columns = ",\n       ".join(f"max(r.value) FILTER (WHERE r.metric = '{m}') AS {m}" for m in metrics)
    names = ", ".join(f"'{m}'" for m in metrics)
    return (
        f"CREATE VIEW v_{kind} AS\n"
        f"SELECT r.ts, r.device_id, d.site,\n       {columns}\n"
        f"FROM readings_all r JOIN devices d USING (device_id)\n"
        f"WHERE d.kind = '{kind}' AND r.metric IN ({names})\n"
        "GROUP BY r.ts, r.device_id, d.site;\n"
    )


_ROLLUP_COLUMNS = """
            device_id  VARCHAR NOT NULL,
            metric     VARCHAR NOT NULL,
            bucket     TIMESTAMPTZ NOT NULL,   -- start of the minute / hour (UTC)
            count      BIGINT NOT NULL,        -- readings folded in (good and substituted quality only)
            min        DOUBLE,
            max        DOUBLE,
            avg        DOUBLE,
            sum        DOUBLE,
            last       DOUBLE,                 -- value of the latest reading in the bucket
            last_ts    TIMESTAMPTZ             -- its time
"""

HISTORY_SQL = f"""
        CREATE TABLE rollup_1m ({_ROLLUP_COLUMNS});
        CREATE TABLE rollup_1h ({_ROLLUP_COLUMNS});
        -- Partial aggregates of each committed batch, written in the batch's own transaction and
        -- folded into rollup_1m/rollup_1h by the rollup job (storage/rollup.py).
        CREATE TABLE rollup_pending (
            device_id VARCHAR NOT NULL, metric VARCHAR NOT NULL, bucket TIMESTAMPTZ NOT NULL,
            count BIGINT NOT NULL, min DOUBLE, max DOUBLE, sum DOUBLE, last DOUBLE, last_ts TIMESTAMPTZ
        );
        CREATE TABLE archive_files (
            day        DATE NOT NULL,
            path       VARCHAR NOT NULL PRIMARY KEY,   -- relative to the archive directory
            rows       BIGINT NOT NULL,
            bytes      BIGINT NOT NULL,
            min_ts     TIMESTAMPTZ NOT NULL,
            max_ts     TIMESTAMPTZ NOT NULL,
            created_at TIMESTAMPTZ NOT NULL DEFAULT now()
        );
        CREATE TABLE backup_log (
            backup_id  VARCHAR PRIMARY KEY,
            kind       VARCHAR NOT NULL,               -- full | incremental
            parent_id  VARCHAR,
            path       VARCHAR NOT NULL,
            started_at TIMESTAMPTZ NOT NULL,
            seconds    DOUBLE NOT NULL,
            bytes      BIGINT NOT NULL,
            readings   BIGINT NOT NULL
        );
        -- Replaced by storage/archive.py with a read_parquet over the archived day files.
        CREATE VIEW readings_archive AS
            SELECT ts, device_id, metric, value, quality FROM readings WHERE false;
        CREATE VIEW readings_all AS
            SELECT ts, device_id, metric, value, quality FROM readings
            UNION ALL
            SELECT ts, device_id, metric, value, quality FROM readings_archive;
        CREATE OR REPLACE VIEW v_readings AS
            SELECT r.ts, r.device_id, d.site, d.kind, r.metric, r.value, m.unit, r.quality
            FROM readings_all r
            LEFT JOIN devices d USING (device_id)
            LEFT JOIN metrics m ON m.name = r.metric;
        CREATE VIEW v_rollup_1m AS
            SELECT r.bucket, r.device_id, d.site, d.kind, r.metric, m.unit, r.count, r.min, r.max, r.avg, r.last
            FROM rollup_1m r LEFT JOIN devices d USING (device_id) LEFT JOIN metrics m ON m.name = r.metric;
        CREATE VIEW v_rollup_1h AS
            SELECT r.bucket, r.device_id, d.site, d.kind, r.metric, m.unit, r.count, r.min, r.max, r.avg, r.last
            FROM rollup_1h r LEFT JOIN devices d USING (device_id) LEFT JOIN metrics m ON m.name = r.metric;
        CREATE VIEW v_alerts AS
            SELECT a.alert_id, a.event_class, a.state, a.device_id, a.site, d.kind, a.rule_id, a.title, a.message,
                   a.metric, a.value, a.threshold, a.unit, a.fired_at, a.created_at, a.acknowledged_at,
                   a.acknowledged_by, a.assignee, a.resolved_at, a.closed_at, a.ack_due, a.onsite_due, a.restore_due,
                   coalesce(a.resolved_at, a.closed_at) AS restored_at,
                   date_diff('second', a.created_at, a.acknowledged_at) / 60.0 AS minutes_to_ack,
                   date_diff('second', a.created_at, coalesce(a.resolved_at, a.closed_at)) / 3600.0 AS hours_to_restore,
                   a.ack_due IS NOT NULL AND coalesce(a.acknowledged_at, now()) > a.ack_due AS ack_breached,
                   a.restore_due IS NOT NULL
                       AND coalesce(a.resolved_at, a.closed_at, now()) > a.restore_due AS restore_breached,
                   a.state IN ('firing', 'acknowledged') AS is_open
            FROM alerts a LEFT JOIN devices d USING (device_id);
        CREATE VIEW v_device_health AS
            WITH last AS (
                SELECT device_id, max(ts) AS last_seen,
                       count(*) FILTER (WHERE ts > now() - INTERVAL 24 HOUR) AS readings_24h,
                       count(*) FILTER (WHERE ts > now() - INTERVAL 24 HOUR AND quality <> 0) AS bad_quality_24h
                FROM readings GROUP BY device_id
            ), open_alerts AS (
                SELECT device_id, count(*) AS open_alerts,
                       min(event_class) AS worst_open_class
                FROM alerts WHERE state IN ('firing', 'acknowledged') GROUP BY device_id
            )
            SELECT d.device_id, d.site, d.kind, d.model, d.rated_kw, d.expected_interval_s, l.last_seen,
                   date_diff('second', l.last_seen, now()) AS silent_s,
                   CASE
                       WHEN l.last_seen IS NULL THEN 'no recent data'
                       WHEN date_diff('second', l.last_seen, now()) <= 3 * d.expected_interval_s THEN 'online'
                       WHEN date_diff('second', l.last_seen, now()) <= 30 * d.expected_interval_s THEN 'late'
                       ELSE 'offline'
                   END AS status,
                   coalesce(l.readings_24h, 0) AS readings_24h,
                   coalesce(l.bad_quality_24h, 0) AS bad_quality_24h,
                   coalesce(o.open_alerts, 0) AS open_alerts,
                   o.worst_open_class
            FROM devices d LEFT JOIN last l USING (device_id) LEFT JOIN open_alerts o USING (device_id);
        -- Readings stored before this migration get their rollups at the first fold.
        INSERT INTO rollup_pending
            SELECT device_id, metric, time_bucket(INTERVAL 1 MINUTE, ts), count(value), min(value), max(value),
                   sum(value), arg_max(value, ts), max(ts)
            FROM readings WHERE value IS NOT NULL AND isfinite(value) AND quality IN (0, 4) GROUP BY ALL;
        """ + "".join(_wide_view(kind, metrics) for kind, metrics in WIDE_VIEW_METRICS.items())


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "ledger, readings, events, alerts, dead letters",
        """
        CREATE TABLE devices (
            device_id        VARCHAR PRIMARY KEY,
            site             VARCHAR NOT NULL,
            kind             VARCHAR NOT NULL,
            vendor           VARCHAR,
            model            VARCHAR,
            rated_kw         DOUBLE,
            parent_id        VARCHAR,
            expected_interval_s DOUBLE NOT NULL DEFAULT 10,
            commissioned     DATE,
            location         VARCHAR,
            tags             VARCHAR[] NOT NULL DEFAULT [],
            source           VARCHAR NOT NULL DEFAULT 'config',   -- config | auto (first seen in data)
            first_seen       TIMESTAMPTZ,
            updated_at       TIMESTAMPTZ NOT NULL DEFAULT now()
        );
        CREATE TABLE sites (
            site_id    VARCHAR PRIMARY KEY,
            name       VARCHAR,
            latitude   DOUBLE,
            longitude  DOUBLE,
            timezone   VARCHAR
        );
        CREATE TABLE metrics (
            name        VARCHAR PRIMARY KEY,
            unit        VARCHAR NOT NULL,
            description VARCHAR,
            min_value   DOUBLE,
            max_value   DOUBLE
        );
        CREATE TABLE readings (
            ts         TIMESTAMPTZ NOT NULL,
            device_id  VARCHAR NOT NULL,
            metric     VARCHAR NOT NULL,
            value      DOUBLE,
            quality    UTINYINT NOT NULL DEFAULT 0
        );
        CREATE TABLE events (
            ts         TIMESTAMPTZ NOT NULL,
            device_id  VARCHAR NOT NULL,
            kind       VARCHAR NOT NULL,
            code       VARCHAR NOT NULL,
            text       VARCHAR
        );
        CREATE TABLE charging_sessions (
            session_id    VARCHAR PRIMARY KEY,
            device_id     VARCHAR NOT NULL,
            connector     INTEGER NOT NULL,
            started_at    TIMESTAMPTZ NOT NULL,
            stopped_at    TIMESTAMPTZ,
            energy_kwh    DOUBLE,
            stop_reason   VARCHAR
        );
        CREATE SEQUENCE alert_id_seq START 1;
        CREATE TABLE alerts (
            alert_id        BIGINT PRIMARY KEY DEFAULT nextval('alert_id_seq'),
            fingerprint     VARCHAR NOT NULL,
            rule_id         VARCHAR NOT NULL,
            device_id       VARCHAR NOT NULL,
            site            VARCHAR,
            event_class     VARCHAR NOT NULL,      -- I, II, III
            state           VARCHAR NOT NULL,      -- firing, acknowledged, resolved, closed
            title           VARCHAR NOT NULL,
            message         VARCHAR NOT NULL,
            metric          VARCHAR,
            value           DOUBLE,
            threshold       DOUBLE,
            unit            VARCHAR,
            runbook         VARCHAR,
            fired_at        TIMESTAMPTZ NOT NULL,  -- when the condition met its rule (reading time)
            created_at      TIMESTAMPTZ NOT NULL,  -- when GridSentry raised it (SLA clocks start here)
            updated_at      TIMESTAMPTZ NOT NULL,
            last_value_at   TIMESTAMPTZ,
            fire_count      INTEGER NOT NULL DEFAULT 1,
            acknowledged_at TIMESTAMPTZ,
            acknowledged_by VARCHAR,
            assignee        VARCHAR,
            resolved_at     TIMESTAMPTZ,
            closed_at       TIMESTAMPTZ,
            ack_due         TIMESTAMPTZ,
            onsite_due      TIMESTAMPTZ,
            restore_due     TIMESTAMPTZ
        );
        CREATE INDEX alerts_open_fp ON alerts (fingerprint);
        CREATE TABLE alert_events (
            alert_id  BIGINT NOT NULL,
            ts        TIMESTAMPTZ NOT NULL,
            action    VARCHAR NOT NULL,           -- fired, refired, acknowledged, resolved, closed, commented
            actor     VARCHAR NOT NULL,           -- 'gridsentry' or the person who acted
            detail    VARCHAR
        );
        CREATE TABLE notifications (
            notification_id BIGINT PRIMARY KEY,
            alert_id        BIGINT,
            channel         VARCHAR NOT NULL,
            recipient       VARCHAR,
            payload         VARCHAR NOT NULL,
            created_at      TIMESTAMPTZ NOT NULL,
            attempts        INTEGER NOT NULL DEFAULT 0,
            next_try_at     TIMESTAMPTZ,
            sent_at         TIMESTAMPTZ,
            last_error      VARCHAR
        );
        CREATE TABLE dead_letters (
            ts      TIMESTAMPTZ NOT NULL,
            source  VARCHAR NOT NULL,
            topic   VARCHAR,
            reason  VARCHAR NOT NULL,
            detail  VARCHAR,
            payload BLOB
        );
        CREATE TABLE ingest_state (           -- keys of recently committed messages (de-duplication window)
            key      UBIGINT NOT NULL,
            seen_at  TIMESTAMPTZ NOT NULL
        );
        """,
    ),
    Migration(
        2,
        "engineers' views",
        """
        CREATE VIEW v_readings AS
            SELECT r.ts, r.device_id, d.site, d.kind, r.metric, r.value, m.unit, r.quality
            FROM readings r
            LEFT JOIN devices d USING (device_id)
            LEFT JOIN metrics m ON m.name = r.metric;
        CREATE VIEW v_open_alerts AS
            SELECT alert_id, event_class, state, device_id, site, title, message, value, threshold, unit,
                   fired_at, created_at, ack_due, onsite_due, restore_due, acknowledged_by, assignee
            FROM alerts WHERE state IN ('firing', 'acknowledged')
            ORDER BY event_class, created_at;
        CREATE VIEW v_latest AS
            SELECT device_id, metric, arg_max(value, ts) AS value, max(ts) AS ts
            FROM readings GROUP BY device_id, metric;
        """,
    ),
    Migration(5, "history: rollups, archive manifest, backups log, engineers' views", HISTORY_SQL),
    Migration(
        4,
        "alert lifecycle: SLA schedule, escalation, flapping, suppression, outbox delivery state, silences",
        """
        ALTER TABLE alerts ADD COLUMN policy VARCHAR;
        ALTER TABLE alerts ADD COLUMN ack_warn_at TIMESTAMPTZ;
        ALTER TABLE alerts ADD COLUMN onsite_warn_at TIMESTAMPTZ;
        ALTER TABLE alerts ADD COLUMN restore_warn_at TIMESTAMPTZ;
        ALTER TABLE alerts ADD COLUMN escalate_at TIMESTAMPTZ[];
        ALTER TABLE alerts ADD COLUMN escalation_level INTEGER DEFAULT 0;
        -- No DEFAULT []: DuckDB 1.5 cannot replay such an ALTER from the WAL after a crash (null = none yet).
        ALTER TABLE alerts ADD COLUMN sla_marks VARCHAR[];              -- warn:ack, breach:restore...
        ALTER TABLE alerts ADD COLUMN onsite_at TIMESTAMPTZ;
        ALTER TABLE alerts ADD COLUMN onsite_by VARCHAR;
        ALTER TABLE alerts ADD COLUMN flap_count INTEGER DEFAULT 0;
        ALTER TABLE alerts ADD COLUMN flapping BOOLEAN DEFAULT false;
        ALTER TABLE alerts ADD COLUMN suppressed VARCHAR;                       -- why no one is paged
        ALTER TABLE alerts ADD COLUMN forecast VARCHAR;
        CREATE SEQUENCE notification_id_seq START 1;
        ALTER TABLE notifications ADD COLUMN kind VARCHAR;                      -- fired, prewarn, breach, ...
        ALTER TABLE notifications ADD COLUMN idempotency_key VARCHAR;
        ALTER TABLE notifications ADD COLUMN contact INTEGER DEFAULT 0;  -- index into the person's contacts
        ALTER TABLE notifications ADD COLUMN status VARCHAR DEFAULT 'pending';  -- pending, sent, failed
        ALTER TABLE notifications ADD COLUMN fallback_sent BOOLEAN DEFAULT false;
        CREATE INDEX notifications_status ON notifications (status);
        CREATE SEQUENCE silence_id_seq START 1;
        CREATE TABLE silences (
            silence_id  BIGINT PRIMARY KEY DEFAULT nextval('silence_id_seq'),
            created_at  TIMESTAMPTZ NOT NULL,
            created_by  VARCHAR NOT NULL,
            starts_at   TIMESTAMPTZ NOT NULL,
            ends_at     TIMESTAMPTZ NOT NULL,
            device_id   VARCHAR,                  -- null: any
            rule_id     VARCHAR,
            site        VARCHAR,
            comment     VARCHAR NOT NULL,
            expired_by  VARCHAR
        );
        CREATE TABLE maintenance_windows (        -- loaded from the config at start-up
            window_id    VARCHAR PRIMARY KEY,
            starts_at    TIMESTAMPTZ NOT NULL,
            ends_at      TIMESTAMPTZ NOT NULL,
            announced_at TIMESTAMPTZ NOT NULL,
            devices      VARCHAR[] NOT NULL,
            sites        VARCHAR[] NOT NULL,
            reason       VARCHAR
        );
        CREATE VIEW v_alert_sla AS
            SELECT alert_id, event_class, state, device_id, site, title, policy, created_at,
                   acknowledged_at, ack_due, acknowledged_at IS NOT NULL AND acknowledged_at <= ack_due AS ack_in_time,
                   onsite_at, onsite_due, coalesce(resolved_at, closed_at) AS restored_at, restore_due,
                   coalesce(resolved_at, closed_at) <= restore_due AS restored_in_time,
                   escalation_level, sla_marks, suppressed
            FROM alerts;
        """,
    ),
    Migration(
        7,
        "audit log of state-changing API calls and engineers' queries",
        """
        CREATE SEQUENCE audit_id_seq;
        CREATE TABLE audit_log (
            audit_id   BIGINT PRIMARY KEY DEFAULT nextval('audit_id_seq'),
            ts         TIMESTAMPTZ NOT NULL DEFAULT now(),
            actor      VARCHAR NOT NULL,
            role       VARCHAR NOT NULL,
            action     VARCHAR NOT NULL,
            target     VARCHAR NOT NULL,
            status     INTEGER,
            client     VARCHAR,
            duration_s DOUBLE,
            detail     VARCHAR
        );
        """,
    ),
    Migration(
        12,
        "maintenance windows announced at run time, with who announced or cancelled them",
        """
        -- Until now the table only mirrored the config; it becomes the record of every planned window. Its rows
        -- were rewritten from the config at each start, so nothing is lost by recreating it.
        DROP TABLE maintenance_windows;
        CREATE TABLE maintenance_windows (
            window_id     VARCHAR PRIMARY KEY,
            starts_at     TIMESTAMPTZ NOT NULL,
            ends_at       TIMESTAMPTZ NOT NULL,
            announced_at  TIMESTAMPTZ NOT NULL,   -- when the customer was notified (contract notice)
            devices       VARCHAR[] NOT NULL,
            sites         VARCHAR[] NOT NULL,
            reason        VARCHAR,
            source        VARCHAR NOT NULL,       -- config | api
            created_at    TIMESTAMPTZ NOT NULL,
            created_by    VARCHAR NOT NULL,
            cancelled_at  TIMESTAMPTZ,
            cancelled_by  VARCHAR,
            cancel_reason VARCHAR
        );
        """,
    ),
    Migration(
        9,
        "writer commit marker: tells after a fatal error whether the last commit landed",
        """
        -- One row, updated in every write transaction with the writer's sequence number. When DuckDB
        -- invalidates the database during a COMMIT (a checkpoint failing on a full disk after the WAL
        -- was written), the writer reopens it and reads this row: the job is replayed only if its
        -- commit did not land, so nothing acknowledged is lost and nothing is stored twice.
        -- No key: an indexed UPDATE costs more, and there is only ever this one row.
        CREATE TABLE writer_commits (seq UBIGINT NOT NULL);
        INSERT INTO writer_commits VALUES (0);
        """,
    ),
    Migration(
        3,
        "rule state (pending, firing) surviving restarts",
        """
        -- One row per rule x device x metric that is pending (inside its `for`) or firing. Rewritten
        -- by the rules stage through the single writer; read at start-up so a restart neither
        -- re-pages what already fired nor forgets how long a condition has been holding.
        CREATE TABLE rule_state (
            rule_id        VARCHAR NOT NULL,
            device_id      VARCHAR NOT NULL,
            metric         VARCHAR NOT NULL,
            pending_since  TIMESTAMPTZ,
            breaches       BIGINT NOT NULL DEFAULT 0,
            firing         BOOLEAN NOT NULL,
            fired_at       TIMESTAMPTZ,
            updated_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
            PRIMARY KEY (rule_id, device_id, metric)
        );
        """,
    ),
    Migration(
        11,
        "scheduled reports sent (never twice after a restart)",
        """
        -- One row per scheduled report queued into the outbox, written in the same transaction as its
        -- notifications (reports/schedule.py).
        CREATE TABLE report_runs (
            report      VARCHAR NOT NULL,          -- monthly, dispatch-progress, dispatch-status
            period      VARCHAR NOT NULL,          -- 2026-11[/site], <alert id>/<hour>, <site>/<start>/<slot>
            queued_at   TIMESTAMPTZ NOT NULL,
            title       VARCHAR NOT NULL,
            recipients  INTEGER NOT NULL,
            PRIMARY KEY (report, period)
        );
        """,
    ),
)

# Written in the order branches landed; applied in version order.
MIGRATIONS = tuple(sorted(MIGRATIONS, key=lambda m: m.version))
LATEST_VERSION = MIGRATIONS[-1].version


def applied_versions(con: duckdb.DuckDBPyConnection) -> set[int]:
    con.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version INTEGER PRIMARY KEY, name VARCHAR NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
    )
    return {int(r[0]) for r in con.execute("SELECT version FROM schema_migrations").fetchall()}


def current_version(con: duckdb.DuckDBPyConnection) -> int:
    return max(applied_versions(con), default=0)


def migrate(con: duckdb.DuckDBPyConnection) -> list[int]:
    """Apply, in version order, every migration the database has not had yet. Returns the versions applied.

    Applied versions are tracked one by one (not as a high-water mark), so a migration numbered below one
    already applied - work merged from a parallel branch - still runs.
    """
    have = applied_versions(con)
    if have and max(have) > LATEST_VERSION:
        raise RuntimeError(
            f"the database is at schema version {max(have)}, newer than this GridSentry knows ({LATEST_VERSION}): "
            "upgrade GridSentry or point it at another data directory"
        )
    applied = []
    for m in sorted(MIGRATIONS, key=lambda m: m.version):
        if m.version in have:
            continue
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute(m.sql)
            con.execute("INSERT INTO schema_migrations (version, name) VALUES (?, ?)", [m.version, m.name])
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            raise
        log.info("database schema migrated to version %d (%s)", m.version, m.name)
        applied.append(m.version)
    if applied:
        # DuckDB 1.5.5 cannot replay some DDL from its WAL (ALTER TABLE ... ADD COLUMN ... DEFAULT, views over
        # them): a crash before the next checkpoint would leave a database that refuses to open. Checkpointing
        # here moves the schema into the file, so the WAL only ever holds data.
        con.execute("CHECKPOINT")
    return applied
