"""`emergencyd store copy`: a single host's SQLite store into the PostgreSQL database that replicas share.

Every table but the leases, row for row with their ids (COPY, in one transaction): messages keep their ids,
so `emergencyd status`, `release` and `rearm` name them as before, and what was still new or pending is
escalated from the database as it would have been from the file. The database must have the schema and
no mail yet: copying twice, or into a store in use, is refused.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path

import psycopg

from emergencyd.daemon.store.errors import StoreError
from emergencyd.daemon.store.migrations import MIGRATIONS
from emergencyd.daemon.store.postgres import PostgresSettings, connect_once, open_postgres

# In the order their references need; leases are each database's own.
TABLES = ("messages", "incident_groups", "escalations", "steps", "encoded_ids", "imap_mailboxes",
          "tenant_directory")
IDENTITIES = ("messages", "incident_groups")      # their ids come from a sequence in PostgreSQL
BATCH_ROWS = 500


def copy_sqlite_to_postgres(source: Path, target: PostgresSettings) -> dict[str, int]:
    """Copy the store at `source` into the (migrated, empty) database; the rows copied, by table."""
    if not source.is_file():
        raise StoreError(f"no SQLite store at {source}")
    reader = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    try:
        version = reader.execute("PRAGMA user_version").fetchone()[0]
        if version != len(MIGRATIONS):
            raise StoreError(f"the SQLite store {source} is at schema version {version}, this emergencyd's is "
                             f"{len(MIGRATIONS)}: run `emergencyd status` on it with this version first, "
                             "which migrates it")
        open_postgres(target).close()           # creates or migrates the schema
        with connect_once(target) as conn, conn.transaction():
            holds_mail = conn.execute("SELECT EXISTS (SELECT 1 FROM messages)").fetchone()
            if holds_mail and holds_mail[0]:
                raise StoreError("the database already holds mail: copy only into a new one")
            copied = {table: _copy_table(reader, conn, table) for table in TABLES}
            for table in IDENTITIES:
                conn.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"
                             f" GREATEST((SELECT MAX(id) FROM {table}), 1), (SELECT MAX(id) FROM {table}) IS NOT NULL)")
        return copied
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read the SQLite store {source}: {exc}") from exc
    except psycopg.Error as exc:
        raise StoreError(f"cannot copy into the database: {' '.join(str(exc).split())}") from exc
    finally:
        reader.close()


def _copy_table(reader: sqlite3.Connection, conn: psycopg.Connection, table: str) -> int:
    columns = [row[1] for row in reader.execute(f"PRAGMA table_info({table})")]
    names = ", ".join(columns)
    rows = reader.execute(f"SELECT {names} FROM {table} ORDER BY rowid")
    count = 0
    with conn.cursor().copy(f"COPY {table} ({names}) FROM STDIN".encode()) as copy:
        while batch := rows.fetchmany(BATCH_ROWS):
            for row in batch:
                copy.write_row(row)
            count += len(batch)
    return count
