"""The store on PostgreSQL, for replicas on several hosts sharing one truth (docs/deployment.md).

Connections come from a psycopg pool: a connection lost with the server is dropped and the pool connects again
in the background, so new mail meets 451 while the database is away and 250 again once it is back. The store's
SQL is written with `?`; here it becomes psycopg's `%s`.

Every write transaction takes one transaction-level advisory lock first: writers take turns across all
replicas, as SQLite's writers do within one file, so the store's read-then-write transactions (deciding, a
step's attempt, joining an incident) keep their meaning whatever the number of hosts. A replica that dies
drops its connection and with it the lock; one that hangs inside a transaction is cut off by
idle_in_transaction_session_timeout.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import psycopg
from psycopg_pool import ConnectionPool

from emergencyd.daemon.config.store import describe_dsn
from emergencyd.daemon.store.connection import WRITE_PROBE, Connection
from emergencyd.daemon.store.core import Store, WriteGate
from emergencyd.daemon.store.errors import StoreError
from emergencyd.daemon.store.postgres_schema import POSTGRES_MIGRATIONS, migrate, schema_version

log = logging.getLogger("emergencyd.store")

# pg_advisory_xact_lock's key for writers: fixed, apart from the schema's (postgres_schema.SCHEMA_LOCK).
WRITE_LOCK = 0x656D7772   # "emwr"
# A transaction left open by a hung replica holds the write lock; the server ends it after this long.
IDLE_IN_TRANSACTION_MS = 30_000
POOL_SIZE = 4             # the ingest thread, the store's thread, a status read, and one to spare


@dataclass(frozen=True)
class PostgresSettings:
    dsn: str                       # libpq's, without a password
    password: str | None
    wait_seconds: float            # for a connection, and for another writer's lock
    application_name: str = "emergencyd"


def open_postgres(settings: PostgresSettings, *, gate: WriteGate | None = None, priority: bool = False) -> Store:
    """A Store on the database, migrated as needed."""
    return Store(PostgresConnection.open(settings), gate=gate or WriteGate(settings.wait_seconds), priority=priority)


class PostgresConnection:
    errors: tuple[type[Exception], ...] = (psycopg.Error,)
    unavailable: tuple[type[Exception], ...] = (psycopg.OperationalError,)   # a lost server, a pool timeout

    def __init__(self, pool: ConnectionPool, name: str, *, owns_pool: bool = True):
        self._pool = pool
        self.name = name
        self._owns_pool = owns_pool
        self._held: psycopg.Connection | None = None      # the connection of the open transaction

    @classmethod
    def open(cls, settings: PostgresSettings) -> "PostgresConnection":
        wait_ms = int(settings.wait_seconds * 1000)
        kwargs: dict[str, Any] = {
            "autocommit": True,        # transactions are the store's own BEGIN ... COMMIT
            "connect_timeout": max(1, int(settings.wait_seconds)),
            "application_name": settings.application_name,
            "options": f"-c lock_timeout={wait_ms} -c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_MS}",
        }
        if settings.password is not None:
            kwargs["password"] = settings.password
        name = describe_dsn(settings.dsn)
        pool = ConnectionPool(settings.dsn, kwargs=kwargs, min_size=1, max_size=POOL_SIZE, open=False,
                              timeout=settings.wait_seconds, name="emergencyd-store",
                              reconnect_timeout=float("inf"))
        try:
            pool.open(wait=True, timeout=max(settings.wait_seconds, 1.0))
        except psycopg.Error as exc:
            pool.close()
            raise StoreError(f"cannot reach the database {name}: {_one_line(exc)}") from exc
        connection = cls(pool, name)
        try:
            connection.migrate()
        except BaseException:
            pool.close()
            raise
        return connection

    def sibling(self) -> Connection:
        """Another session on the same pool: its own transactions, the pool's connections."""
        return PostgresConnection(self._pool, self.name, owns_pool=False)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        query = _postgres_sql(sql)
        if self._held is not None:
            return self._held.execute(query, params)
        conn = self._pool.getconn()
        try:
            cursor = conn.execute(query, params)
            return _Fetched(cursor.fetchall() if cursor.description else [], cursor.rowcount)
        finally:
            self._pool.putconn(conn)

    def begin_write(self, *, durable: bool = True) -> None:
        # synchronous_commit off: PostgreSQL's own log is in order too, so the next durable commit flushes it.
        lazy = "" if durable else "; SET LOCAL synchronous_commit = off"
        self._begin(f"BEGIN; SELECT pg_advisory_xact_lock({WRITE_LOCK}){lazy}".encode())

    def begin_snapshot(self) -> None:
        self._begin(b"BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")

    def _begin(self, statement: bytes) -> None:
        if self._held is not None:
            raise StoreError("a transaction is already open on this store session")
        conn = self._pool.getconn()
        try:
            conn.execute(statement)
        except BaseException:
            self._pool.putconn(conn)
            raise
        self._held = conn

    def commit(self) -> None:
        conn = self._held
        if conn is None:
            return
        conn.execute(b"COMMIT")          # on failure the transaction stays held, for rollback() to end
        self._held = None
        self._pool.putconn(conn)

    def rollback(self) -> None:
        conn, self._held = self._held, None
        if conn is None:
            return
        try:
            conn.execute(b"ROLLBACK")
        except psycopg.Error:
            pass                             # a lost connection: the pool drops it
        finally:
            self._pool.putconn(conn)

    def close(self) -> None:
        self.rollback()
        if self._owns_pool:
            self._pool.close()

    def schema_version(self) -> int:
        with self._pool.connection() as conn:
            return schema_version(conn)

    def migrate(self) -> None:
        with self._pool.connection() as conn:
            migrate(conn)

    def check_at_start(self) -> None:
        """The schema is this code's, and the server takes writes (a standby does not)."""
        version = self.schema_version()
        if version != len(POSTGRES_MIGRATIONS):
            raise StoreError(f"the database {self.name} is at schema version {version}, "
                             f"this emergencyd at {len(POSTGRES_MIGRATIONS)}")
        try:
            self.begin_write()
            self.execute(WRITE_PROBE)
        except psycopg.errors.ReadOnlySqlTransaction as exc:
            raise StoreError(f"the database {self.name} is read-only (a standby?): {_one_line(exc)}") from exc
        finally:
            self.rollback()


def connect_once(settings: PostgresSettings) -> psycopg.Connection:
    """One connection outside the pool, in autocommit, for a command (`check-config`, `store copy`)."""
    kwargs: dict[str, Any] = {"connect_timeout": max(1, int(settings.wait_seconds)), "autocommit": True,
                              "application_name": settings.application_name}
    if settings.password is not None:
        kwargs["password"] = settings.password
    return psycopg.connect(settings.dsn, **kwargs)


def probe_postgres(settings: PostgresSettings) -> str:
    """The database answers, and at which schema version, without changing it (`check-config`)."""
    name = describe_dsn(settings.dsn)
    try:
        with connect_once(settings) as conn:
            version = schema_version(conn)
            read_only = conn.execute("SELECT pg_is_in_recovery()").fetchone()
    except psycopg.Error as exc:
        raise StoreError(f"store {name}: does not answer: {_one_line(exc)}") from exc
    ours = len(POSTGRES_MIGRATIONS)
    if version > ours:
        raise StoreError(f"store {name}: schema version {version} is newer than this emergencyd's {ours}")
    state = {0: "empty; the first start creates the schema", ours: f"schema version {version}"}.get(
        version, f"schema version {version}; the next start migrates it to {ours}")
    standby = "; a read-only standby: point the dsn at the primary" if read_only and read_only[0] else ""
    return f"store {name}: answers, {state}{standby}"


@dataclass
class _Fetched:
    """A statement's rows, read before its connection went back to the pool."""
    rows: list[Any]
    rowcount: int

    def fetchone(self) -> Any:
        return self.rows[0] if self.rows else None

    def fetchall(self) -> list[Any]:
        return self.rows

    def __iter__(self) -> Iterator[Any]:
        return iter(self.rows)


@functools.lru_cache(maxsize=1024)
def _postgres_sql(sql: str) -> bytes:
    """The store's `?` placeholders as psycopg's `%s` (and a literal % doubled)."""
    return sql.replace("%", "%%").replace("?", "%s").encode()


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
