"""The store on SQLite, the default: one file in WAL mode with synchronous=FULL, so a commit that returned is on
disk. Writers take turns with BEGIN IMMEDIATE; PRAGMA user_version counts the migrations applied
(daemon/store/migrations.py).
"""
from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path
from typing import Any, Sequence

from emergencyd.daemon.store.connection import WRITE_PROBE, Connection
from emergencyd.daemon.store.core import Store, WriteGate
from emergencyd.daemon.store.errors import StoreError
from emergencyd.daemon.store.migrations import MIGRATIONS

log = logging.getLogger("emergencyd.store")


def open_sqlite(path: Path, *, busy_timeout_ms: int = 5000, gate: WriteGate | None = None,
                priority: bool = False) -> Store:
    """A Store on the SQLite file at `path`, created private and migrated as needed."""
    return Store(SqliteConnection.open(path, busy_timeout_ms=busy_timeout_ms),
                 gate=gate or WriteGate(busy_timeout_ms / 1000), priority=priority)


class SqliteConnection:
    errors: tuple[type[Exception], ...] = (sqlite3.Error,)
    unavailable: tuple[type[Exception], ...] = (sqlite3.OperationalError,)   # locked, disk I/O

    def __init__(self, conn: sqlite3.Connection, path: Path, busy_timeout_ms: int):
        self._raw = conn
        self._durable = True                 # PRAGMA synchronous = FULL, as opened
        self.path = path
        self.name = str(path)
        self._busy_timeout_ms = busy_timeout_ms

    @classmethod
    def open(cls, path: Path, *, busy_timeout_ms: int) -> "SqliteConnection":
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            _create_private(path)
        except OSError as exc:
            raise StoreError(f"cannot open store {path}: {exc.strerror or exc}") from None
        try:
            conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False,
                                   timeout=busy_timeout_ms / 1000)
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            # PostgreSQL's two-argument GREATEST, so that the store's SQL is one text for both.
            conn.create_function("GREATEST", 2, _greatest, deterministic=True)
            connection = cls(conn, path, busy_timeout_ms)
            connection.migrate()
            return connection
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot open store {path}: {exc}") from exc

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        return self._raw.execute(sql, params)

    def begin_write(self, *, durable: bool = True) -> None:
        if durable != self._durable:
            # WAL with NORMAL: the commit is written to the log without an fsync; the next FULL commit's fsync of
            # the same log, or a checkpoint's, carries it to the disk.
            self._raw.execute("PRAGMA synchronous = FULL" if durable else "PRAGMA synchronous = NORMAL")
            self._durable = durable
        self._raw.execute("BEGIN IMMEDIATE")

    def begin_snapshot(self) -> None:
        self._raw.execute("BEGIN DEFERRED")     # WAL: a read transaction sees one moment

    def commit(self) -> None:
        self._raw.execute("COMMIT")

    def rollback(self) -> None:
        if self._raw.in_transaction:
            try:
                self._raw.execute("ROLLBACK")
            except sqlite3.Error:
                log.warning("store rollback failed", exc_info=True)

    def sibling(self) -> Connection:
        return SqliteConnection.open(self.path, busy_timeout_ms=self._busy_timeout_ms)

    def close(self) -> None:
        self._raw.close()

    def schema_version(self) -> int:
        return self._raw.execute("PRAGMA user_version").fetchone()[0]

    def migrate(self) -> None:
        current = self.schema_version()
        if current > len(MIGRATIONS):
            raise StoreError(f"store schema version {current} is newer than this emergencyd "
                             f"({len(MIGRATIONS)}); refusing to touch it")
        for version in range(current + 1, len(MIGRATIONS) + 1):
            self.begin_write()
            try:
                for statement in _statements(MIGRATIONS[version - 1]):
                    self._raw.execute(statement)
                self._raw.execute(f"PRAGMA user_version = {version}")
                self.commit()
            except BaseException:
                self.rollback()
                raise

    def check_at_start(self) -> None:
        try:
            problems = [row[0] for row in self._raw.execute("PRAGMA quick_check(5)")]
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot open store {self.path}: it is damaged ({exc}); "
                             "move it aside and restore a backup") from exc
        if problems != ["ok"]:
            raise StoreError(f"cannot open store {self.path}: it is damaged ({'; '.join(problems)[:300]}); "
                             "move it aside and restore a backup")
        try:
            self.begin_write()          # a write that is rolled back: the file takes writes
            self._raw.execute(WRITE_PROBE)
        except sqlite3.OperationalError as exc:
            if "readonly" in str(exc) or "read-only" in str(exc):
                raise StoreError(f"cannot open store {self.path}: it is read-only ({exc})") from exc
        finally:
            self.rollback()


def _greatest(a: Any, b: Any) -> Any:
    return a if b is None or (a is not None and a >= b) else b


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


def _create_private(path: Path) -> None:
    """Create the database file 0600 before SQLite does: it holds tenants' mail.

    SQLite gives its -wal and -shm files the database file's mode, so an existing
    store that others can read is tightened too, with a warning saying so.
    """
    if not path.exists():
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
        os.close(fd)
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            mode = file.stat().st_mode & 0o777
        except FileNotFoundError:
            continue
        if mode & 0o077:
            os.chmod(file, mode & 0o700)
            log.warning("store file was readable by others; made it private",
                        extra={"file": str(file), "mode_was": oct(mode)})
