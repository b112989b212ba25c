"""The store the config names: SQLite's file (the default) or PostgreSQL's database."""
from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

from emergencyd.daemon.config.model import StoreConfig
from emergencyd.daemon.config.store import StoreBackend
from emergencyd.daemon.store.core import Store, WriteGate
from emergencyd.daemon.store.errors import StoreError
from emergencyd.daemon.store.sqlite import open_sqlite

if TYPE_CHECKING:
    from emergencyd.daemon.store.postgres import PostgresSettings


def postgres_settings(config: StoreConfig, *, busy_timeout_ms: int | None = None) -> "PostgresSettings":
    from emergencyd.daemon.store.postgres import PostgresSettings
    timeout_ms = config.busy_timeout_ms if busy_timeout_ms is None else busy_timeout_ms
    return PostgresSettings(dsn=config.dsn, password=config.password.value if config.password else None,
                            wait_seconds=timeout_ms / 1000)


def open_store(config: StoreConfig, *, gate: WriteGate | None = None, priority: bool = False,
               busy_timeout_ms: int | None = None) -> Store:
    """Open (and migrate) the configured store; StoreError when it cannot be used."""
    timeout_ms = config.busy_timeout_ms if busy_timeout_ms is None else busy_timeout_ms
    if config.backend is StoreBackend.POSTGRESQL:
        # Imported here: a SQLite deployment never loads the PostgreSQL driver.
        from emergencyd.daemon.store.postgres import open_postgres
        return open_postgres(postgres_settings(config, busy_timeout_ms=timeout_ms), gate=gate, priority=priority)
    return open_sqlite(config.path, busy_timeout_ms=timeout_ms, gate=gate, priority=priority)


def store_exists(config: StoreConfig) -> bool:
    """Whether there is a store to read yet (a SQLite file is made by the daemon's first start)."""
    return config.backend is StoreBackend.POSTGRESQL or config.path.exists()


def database_errors(config: StoreConfig) -> tuple[type[Exception], ...]:
    """The driver's errors that mean the store could not be read (a damaged file, a lost database)."""
    if config.backend is StoreBackend.POSTGRESQL:
        import psycopg
        return (psycopg.Error,)
    return (sqlite3.DatabaseError,)


def probe_store(config: StoreConfig) -> str:
    """What `check-config` says of the store, without changing it; StoreError when it cannot be used."""
    if config.backend is StoreBackend.POSTGRESQL:
        from emergencyd.daemon.store.postgres import probe_postgres
        return probe_postgres(postgres_settings(config))
    if not config.path.exists():
        return f"store {config.path}: not there yet; the first start creates it"
    return f"store {config.path}"


def copy_into(config: StoreConfig, source: str, target: str) -> dict[str, int]:
    """`store copy --from sqlite:PATH --to postgresql`: the SQLite store into the config's database."""
    kind, _, path = source.partition(":")
    if kind != StoreBackend.SQLITE or not path:
        raise StoreError(f"--from: expected sqlite:PATH, got {source!r}")
    if target != StoreBackend.POSTGRESQL or config.backend is not StoreBackend.POSTGRESQL:
        raise StoreError("--to postgresql copies into the database of the config's [store] (backend = "
                         "\"postgresql\" with its dsn)")
    from emergencyd.daemon.store.copy import copy_sqlite_to_postgres
    return copy_sqlite_to_postgres(Path(path), postgres_settings(config))
