"""The port between the store and its database: what Store (daemon/store/core.py) asks of SQLite or PostgreSQL.

The store's SQL is one text for both: `?` placeholders, ON CONFLICT, RETURNING, GREATEST (SQLite gets it as a
function). What differs lives behind this interface: how a write transaction serialises writers (SQLite's
BEGIN IMMEDIATE; PostgreSQL's advisory lock across replicas), how the schema is versioned and migrated, how a
damaged or unreachable database is told apart, and where connections come from (one file; a pool).
"""
from __future__ import annotations

from typing import Any, Iterator, Protocol, Sequence

# A write that changes nothing: inside a transaction that is rolled back, it proves the database takes writes.
WRITE_PROBE = "UPDATE escalations SET updated_at = updated_at WHERE 1 = 0"


class Rows(Protocol):
    """A statement's result, as both drivers' cursors give it."""
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """One database session of the store, used by one thread at a time."""
    # What to call the database in messages: a file's path, or a DSN without its password.
    name: str
    # The driver's errors: a failed statement or a lost database, told to senders as 451.
    errors: tuple[type[Exception], ...]
    # Those of them that mean the database is away or busy (not a statement's or a row's fault).
    unavailable: tuple[type[Exception], ...]

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Rows: ...

    def begin_write(self, *, durable: bool = True) -> None:
        """A transaction that may write; writers anywhere on this database take turns. `durable=False`: its
        commit need not reach the disk before it returns, only before the next durable commit's does."""

    def begin_snapshot(self) -> None:
        """A read-only transaction that sees one moment of the database."""

    def commit(self) -> None: ...

    def rollback(self) -> None:
        """Undo the open transaction, if any; never raises."""

    def schema_version(self) -> int: ...

    def migrate(self) -> None:
        """Bring the schema to this code's version; refuse a newer database (StoreError)."""

    def check_at_start(self) -> None:
        """Refuse a damaged or read-only database (StoreError) rather than take mail it cannot keep."""

    def sibling(self) -> "Connection":
        """Another session on the same database, for another thread (the ingest thread's own)."""

    def close(self) -> None: ...
