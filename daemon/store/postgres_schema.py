"""The PostgreSQL store's schema: versioned migrations, applied once however many replicas start at once.

The tables and columns are the SQLite store's (daemon/store/migrations.py, all of its migrations applied), in
PostgreSQL's types: identities for the keys SQLite numbers by rowid, BYTEA for the raw mail, DOUBLE PRECISION for
the epoch times. A `schema_version` table counts the migrations applied. Every replica takes one transaction-level
advisory lock before it reads that count, so exactly one applies a migration and the others then find it applied;
a database newer than this code is refused, never written to.
"""
from __future__ import annotations

import psycopg

from emergencyd.daemon.store.errors import StoreError
from emergencyd.daemon.store.migrations import DECIDED_MAIL_INDEXES

# pg_advisory_xact_lock's key for migrating: any fixed number that nothing else in the database uses.
SCHEMA_LOCK = 0x656D6572   # "emer"

POSTGRES_MIGRATIONS: tuple[str, ...] = (
    # 1: the SQLite store's schema as of its migration 11.
    """
    CREATE TABLE messages (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        identity TEXT NOT NULL UNIQUE,
        message_id TEXT,
        sha256 TEXT NOT NULL,
        raw BYTEA NOT NULL,
        size INTEGER NOT NULL,
        source TEXT NOT NULL,
        mail_from TEXT NOT NULL,
        rcpt_to TEXT NOT NULL,
        peer TEXT NOT NULL,
        helo TEXT NOT NULL,
        tls INTEGER NOT NULL,
        received_at DOUBLE PRECISION NOT NULL,
        deliveries INTEGER NOT NULL,
        last_delivery_at DOUBLE PRECISION NOT NULL,
        from_address TEXT
    );
    CREATE INDEX messages_message_id ON messages(message_id);
    CREATE TABLE incident_groups (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        fingerprint TEXT NOT NULL,
        dedup_key TEXT NOT NULL,
        problem_pk BIGINT NOT NULL REFERENCES messages(id),
        category TEXT,
        severity TEXT,
        opened_at DOUBLE PRECISION NOT NULL,
        last_report_at DOUBLE PRECISION NOT NULL,
        reports INTEGER NOT NULL
    );
    CREATE INDEX incident_groups_fingerprint ON incident_groups(fingerprint, last_report_at);
    CREATE TABLE escalations (
        message_pk BIGINT PRIMARY KEY REFERENCES messages(id),
        dedup_key TEXT NOT NULL,
        state TEXT NOT NULL,
        subject TEXT,
        sender TEXT,
        ticket_id BIGINT,
        incident_url TEXT,
        paged_at DOUBLE PRECISION,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        verdict TEXT,
        category TEXT,
        severity TEXT,
        support_window TEXT,
        suppressed_reason TEXT,
        group_id BIGINT REFERENCES incident_groups(id),
        relation TEXT,
        relation_reason TEXT,
        parent_pk BIGINT REFERENCES messages(id),
        target_ticket_id BIGINT,
        page_key TEXT,
        sender_key TEXT,
        loop_key TEXT,
        fair_key TEXT NOT NULL DEFAULT '',
        released_at DOUBLE PRECISION,
        decide_failures INTEGER NOT NULL DEFAULT 0,
        decide_error TEXT
    );
    CREATE INDEX escalations_state ON escalations(state);
    CREATE INDEX escalations_sender ON escalations(sender_key, created_at);
    CREATE INDEX escalations_group ON escalations(group_id);
    CREATE INDEX escalations_sender_loop ON escalations(sender_key, loop_key);
    CREATE INDEX escalations_state_fair_key ON escalations(state, fair_key);
    CREATE TABLE steps (
        message_pk BIGINT NOT NULL REFERENCES messages(id),
        name TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        next_attempt_at DOUBLE PRECISION NOT NULL,
        last_error TEXT,
        result TEXT NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (message_pk, name)
    );
    CREATE INDEX steps_due ON steps(state, next_attempt_at);
    CREATE TABLE encoded_ids (
        encoded_id TEXT PRIMARY KEY,
        message_pk BIGINT NOT NULL REFERENCES messages(id)
    );
    CREATE TABLE imap_mailboxes (
        account TEXT PRIMARY KEY,
        uidvalidity BIGINT NOT NULL,
        last_uid BIGINT NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE tenant_directory (
        source TEXT PRIMARY KEY,
        fetched_at DOUBLE PRECISION NOT NULL,
        copy TEXT NOT NULL
    )
    """,
    # 2: the SQLite store's migration 12: leases.
    """
    CREATE TABLE leases (
        name TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL,
        acquired_at DOUBLE PRECISION NOT NULL
    )
    """,
    # 3: the SQLite store's migration 13: when `emergencyd retry` last handed failed steps back.
    """
    ALTER TABLE escalations ADD COLUMN retried_at DOUBLE PRECISION
    """,
    # 4: the SQLite store's migration 14: the indexes of what a decision sets hold decided mail only.
    DECIDED_MAIL_INDEXES,
)


def schema_version(conn: psycopg.Connection) -> int:
    """The migrations applied to this database (0 for an empty one)."""
    exists = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return 0
    row = conn.execute("SELECT version FROM schema_version").fetchone()
    return row[0] if row else 0


def migrate(conn: psycopg.Connection) -> int:
    """Bring the schema to this code's version, once across replicas; the version it is at."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        version = schema_version(conn)
        if version > len(POSTGRES_MIGRATIONS):
            raise StoreError(f"the database's schema is version {version}, newer than this emergencyd's "
                             f"{len(POSTGRES_MIGRATIONS)}: upgrade emergencyd, or point it at another database")
        for script in POSTGRES_MIGRATIONS[version:]:
            conn.execute(script.encode())   # no parameters: several statements in one script
        conn.execute("DELETE FROM schema_version")
        conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (len(POSTGRES_MIGRATIONS),))
    return len(POSTGRES_MIGRATIONS)
