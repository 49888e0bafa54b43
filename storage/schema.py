"""The DuckDB schema, as numbered migrations applied in order at start-up.

A migration never changes once released: a later change is a new number. Each runs in its own
transaction together with the row that records it, so a crash leaves either all of it or none.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import duckdb

log = logging.getLogger(__name__)


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
)

LATEST_VERSION = max(m.version for m in MIGRATIONS)


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
        # Schema changes go to the data file at once: a crash soon after an upgrade then never depends on
        # replaying DDL from the WAL (DuckDB cannot replay every ALTER, e.g. one with a list default).
        con.execute("CHECKPOINT")
    return applied
