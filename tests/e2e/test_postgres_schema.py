"""The PostgreSQL store's schema (daemon/store/postgres_schema.py) on the suite's own PostgreSQL."""
from __future__ import annotations

import sqlite3
import threading

import psycopg
import pytest

from emergencyd.daemon.store.errors import StoreError
from emergencyd.daemon.store.postgres_schema import POSTGRES_MIGRATIONS, migrate, schema_version
from emergencyd.daemon.store.sqlite import open_sqlite
from tests.postgres import PASSWORD


def connect(postgres) -> psycopg.Connection:
    return psycopg.connect(postgres.dsn, password=PASSWORD, autocommit=True)


def sqlite_columns(tmp_path) -> dict[str, set[str]]:
    """Each table of a SQLite store with every migration applied, with its columns."""
    open_sqlite(tmp_path / "store.sqlite3").close()
    with sqlite3.connect(tmp_path / "store.sqlite3") as conn:
        tables = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {table: {row[1] for row in conn.execute(f"PRAGMA table_info({table})")} for table in tables}


def postgres_columns(conn: psycopg.Connection) -> dict[str, set[str]]:
    rows = conn.execute("SELECT table_name, column_name FROM information_schema.columns"
                        " WHERE table_schema = 'public' AND table_name <> 'schema_version'").fetchall()
    columns: dict[str, set[str]] = {}
    for table, column in rows:
        columns.setdefault(table, set()).add(column)
    return columns


def test_the_schema_has_the_sqlite_stores_tables_and_columns(postgres, tmp_path):
    with connect(postgres) as conn:
        assert schema_version(conn) == 0
        assert migrate(conn) == len(POSTGRES_MIGRATIONS) == schema_version(conn)
        assert postgres_columns(conn) == sqlite_columns(tmp_path)


def test_replicas_starting_together_migrate_once(postgres):
    results: list[int] = []
    errors: list[BaseException] = []

    def start_replica() -> None:
        try:
            with connect(postgres) as conn:
                results.append(migrate(conn))
        except BaseException as exc:   # reported below, not lost in the thread
            errors.append(exc)
    replicas = [threading.Thread(target=start_replica) for _ in range(4)]
    for replica in replicas:
        replica.start()
    for replica in replicas:
        replica.join(60)
    assert errors == [] and results == [len(POSTGRES_MIGRATIONS)] * 4
    assert postgres.query("SELECT count(*), max(version) FROM schema_version") == f"1|{len(POSTGRES_MIGRATIONS)}"
    with connect(postgres) as conn:
        assert migrate(conn) == len(POSTGRES_MIGRATIONS)   # again: nothing to do, nothing broken


def test_a_newer_database_is_refused_and_left_as_it_was(postgres):
    with connect(postgres) as conn:
        migrate(conn)
        conn.execute("UPDATE schema_version SET version = version + 1")
        with pytest.raises(StoreError, match="newer than this emergencyd"):
            migrate(conn)
        assert schema_version(conn) == len(POSTGRES_MIGRATIONS) + 1
