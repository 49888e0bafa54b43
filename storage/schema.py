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
)

LATEST_VERSION = MIGRATIONS[-1].version


def current_version(con: duckdb.DuckDBPyConnection) -> int:
    con.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version INTEGER PRIMARY KEY, name VARCHAR NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
    )
    row = con.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()
    return int(row[0]) if row else 0


def migrate(con: duckdb.DuckDBPyConnection) -> list[int]:
    """Apply every migration newer than the database. Returns the versions applied."""
    have = current_version(con)
    if have > LATEST_VERSION:
        raise RuntimeError(
            f"the database is at schema version {have}, newer than this GridSentry knows ({LATEST_VERSION}): "
            "upgrade GridSentry or point it at another data directory"
        )
    applied = []
    for m in MIGRATIONS:
        if m.version <= have:
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
    return applied
