"""The durable store: the only module that knows SQL.

SQLite in WAL mode with synchronous=FULL, so a commit that returned is on disk.
The SQL stays plain (no SQLite-only upserts in the hot paths) so that a PostgreSQL
backend can implement the same interface later.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from emergencyd.daemon.store.errors import StoreError
from emergencyd.daemon.store.grouping import GroupingQueries
from emergencyd.daemon.store.migrations import MIGRATIONS
from emergencyd.daemon.store.thread import StoreThread
from emergencyd.escalation.policy import Verdict
from emergencyd.escalation.records import (
    DONE,
    FAILED,
    FALLBACK_ALERT,
    MAX_DECIDE_ATTEMPTS,
    NEW,
    PAGE,
    PENDING,
    STEP_DONE,
    STEP_FAILED,
    STEP_ORDER,
    STEP_PENDING,
    STUCK,
    SUPPRESSED,
    Envelope,
    EscalationRecord,
    EscalationState,
    FollowUp,
    PlannedRelation,
    RearmOutcome,
    RelationKind,
    ReleaseOutcome,
    StepName,
    StepRecord,
    StepState,
    dedup_key_of,
    identity_of,
)
from emergencyd.parsers.identity import HeaderIdentity, header_identity

log = logging.getLogger("emergencyd.store")

T = TypeVar("T")




@dataclass(frozen=True)
class IngestResult:
    message_pk: int
    identity: str
    duplicate: bool


@dataclass(frozen=True)
class DueWork:
    message_pk: int
    urgent: bool        # its sender's first undecided mail, or a page (or its fallback) due again
    undecided: bool     # new mail, still to be decided (else a pending step is due)


class WriteGate:
    """One writer at a time within the process, ingest first.

    SQLite's own busy handler polls with sleeps and is not fair: in a storm the
    escalation thread's many short transactions could starve ingest into 451s.
    Within one process, writers queue here instead, and ingest goes ahead of the
    escalation bookkeeping. Other processes (`inject`) still meet busy_timeout.
    """

    def __init__(self, timeout_seconds: float):
        self._cond = threading.Condition()
        self._busy = False
        self._priority_waiting = 0
        self._timeout = timeout_seconds

    @contextmanager
    def hold(self, *, priority: bool) -> Iterator[None]:
        with self._cond:
            self._priority_waiting += priority
            try:
                free = self._cond.wait_for(
                    lambda: not self._busy and (priority or not self._priority_waiting), self._timeout)
            finally:
                self._priority_waiting -= priority
            if not free:
                raise sqlite3.OperationalError("database is locked (waited for another writer in this process)")
            self._busy = True
        try:
            yield
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()


class Store(GroupingQueries):
    """Synchronous store. One connection; callers serialise access (AsyncStore does)."""

    def __init__(self, conn: sqlite3.Connection, path: Path, *, gate: WriteGate, priority: bool = False):
        self._conn = conn
        self.path = path
        self._gate = gate
        self._priority = priority

    @classmethod
    def open(cls, path: Path, *, busy_timeout_ms: int = 5000, gate: WriteGate | None = None,
             priority: bool = False) -> "Store":
        path.parent.mkdir(parents=True, exist_ok=True)
        _create_private(path)
        try:
            conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False,
                                   timeout=busy_timeout_ms / 1000)
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            store = cls(conn, path, gate=gate or WriteGate(busy_timeout_ms / 1000), priority=priority)
            store._migrate()
            return store
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot open store {path}: {exc}") from exc

    def close(self) -> None:
        self._conn.close()

    def check_at_start(self) -> None:
        """Refuse to run on a damaged or read-only store, rather than take mail it cannot keep.

        A locked store is not refused: the lock may pass, and meanwhile SMTP answers 451.
        """
        try:
            problems = [row[0] for row in self._conn.execute("PRAGMA quick_check(5)")]
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot open store {self.path}: it is damaged ({exc}); "
                             "move it aside and restore a backup") from exc
        if problems != ["ok"]:
            raise StoreError(f"cannot open store {self.path}: it is damaged ({'; '.join(problems)[:300]}); "
                             "move it aside and restore a backup")
        try:
            self.check_writable()
        except sqlite3.OperationalError as exc:
            if "readonly" in str(exc) or "read-only" in str(exc):
                raise StoreError(f"cannot open store {self.path}: it is read-only ({exc})") from exc

    # -- schema -----------------------------------------------------------------

    def schema_version(self) -> int:
        return self._conn.execute("PRAGMA user_version").fetchone()[0]

    def _migrate(self) -> None:
        current = self.schema_version()
        if current > len(MIGRATIONS):
            raise StoreError(f"store schema version {current} is newer than this emergencyd "
                             f"({len(MIGRATIONS)}); refusing to touch it")
        for version in range(current + 1, len(MIGRATIONS) + 1):
            with self._transaction():
                for statement in _statements(MIGRATIONS[version - 1]):
                    self._conn.execute(statement)
                self._conn.execute(f"PRAGMA user_version = {version}")

    @contextmanager
    def _transaction(self, *, rollback: bool = False) -> Iterator[None]:
        with self._gate.hold(priority=self._priority), _Transaction(self._conn, rollback=rollback):
            yield

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Reads that see one moment of the store (WAL: a read transaction), e.g. `status`'s counts and
        messages, which must agree while the daemon writes."""
        self._conn.execute("BEGIN DEFERRED")
        try:
            yield
        finally:
            self._conn.execute("COMMIT")

    # -- ingest -----------------------------------------------------------------

    def ingest(self, raw: bytes, envelope: Envelope) -> IngestResult:
        """Commit the bytes and envelope durably, once per message identity."""
        return self.ingest_batch([(raw, envelope)])[0]

    def ingest_batch(self, items: list[tuple[bytes, Envelope]]) -> list[IngestResult]:
        """Group commit: several messages in one transaction, so one fsync makes them all durable.
        All or none: on any failure none is stored, and every sender is told to try again."""
        prepared = [(raw, envelope, hashlib.sha256(raw).hexdigest(), header_identity(raw)) for raw, envelope in items]
        try:
            with self._transaction():
                return [self._insert_once(*item) for item in prepared]
        except sqlite3.Error as exc:
            raise StoreError(f"could not commit message: {exc}") from exc

    def _insert_once(self, raw: bytes, envelope: Envelope, sha: str, header: HeaderIdentity) -> IngestResult:
        identity = identity_of(header.message_id, sha)
        now = envelope.received_at or time.time()
        row = self._conn.execute("SELECT id FROM messages WHERE identity = ?", (identity,)).fetchone()
        if row:
            self._conn.execute("UPDATE messages SET deliveries = deliveries + 1, last_delivery_at = ? WHERE id = ?",
                               (now, row[0]))
            return IngestResult(row[0], identity, duplicate=True)
        cur = self._conn.execute(
            "INSERT INTO messages (identity, message_id, sha256, raw, size, source, mail_from, rcpt_to,"
            " peer, helo, tls, received_at, deliveries, last_delivery_at, from_address)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?)",
            (identity, header.message_id, sha, raw, len(raw), envelope.source, envelope.mail_from,
             json.dumps(list(envelope.rcpt_to)), envelope.peer, envelope.helo, int(envelope.tls),
             now, now, header.from_address))
        # fair_key, whose turn the mail is decided in: the From address read at ingest, else the envelope sender.
        self._conn.execute("INSERT INTO escalations (message_pk, dedup_key, state, created_at, updated_at, fair_key)"
                           " VALUES (?, ?, ?, ?, ?, COALESCE(?, LOWER(?), ''))",
                           (cur.lastrowid, dedup_key_of(identity), NEW, now, now, header.from_address,
                            envelope.mail_from))
        assert cur.lastrowid is not None       # an INSERT into a rowid table sets it
        return IngestResult(cur.lastrowid, identity, duplicate=False)

    # -- IMAP intake position -------------------------------------------------------

    def imap_position(self, account: str) -> tuple[int, int] | None:
        """(uidvalidity, last_uid) of the mailbox, or None before its first sync."""
        row = self._conn.execute("SELECT uidvalidity, last_uid FROM imap_mailboxes WHERE account = ?",
                                 (account,)).fetchone()
        return (row[0], row[1]) if row else None

    def imap_positions(self) -> list[dict[str, Any]]:
        rows = self._conn.execute("SELECT account, uidvalidity, last_uid, updated_at FROM imap_mailboxes"
                                  " ORDER BY account").fetchall()
        return [dict(zip(("account", "uidvalidity", "last_uid", "updated_at"), row)) for row in rows]

    def save_imap_position(self, account: str, uidvalidity: int, last_uid: int) -> None:
        try:
            with self._transaction():
                updated = self._conn.execute(
                    "UPDATE imap_mailboxes SET uidvalidity = ?, last_uid = ?, updated_at = ? WHERE account = ?",
                    (uidvalidity, last_uid, time.time(), account)).rowcount
                if not updated:
                    self._conn.execute(
                        "INSERT INTO imap_mailboxes (account, uidvalidity, last_uid, updated_at) VALUES (?, ?, ?, ?)",
                        (account, uidvalidity, last_uid, time.time()))
        except sqlite3.Error as exc:
            raise StoreError(f"could not save the IMAP position: {exc}") from exc

    # -- escalation state machine -------------------------------------------------

    def plan(self, pk: int, *, subject: str, sender: str | None, steps: tuple[str, ...],
             verdict: Verdict | None = None, relation: PlannedRelation | None = None) -> None:
        """Record the parse summary, the verdict, how it relates to other mail, and the steps to take.

        One transaction, applied once: a crash before it leaves the escalation new, to be
        decided again. With no steps to take (suppressed noise without a ticket) it is final.
        """
        now = time.time()
        state = PENDING if steps else SUPPRESSED
        with self._transaction():
            updated = self._conn.execute(
                "UPDATE escalations SET state = ?, subject = ?, sender = ?, verdict = ?, category = ?, severity = ?,"
                " support_window = ?, suppressed_reason = ?, updated_at = ? WHERE message_pk = ? AND state = ?",
                (state, subject, sender, json.dumps(verdict.as_dict() if verdict else {}),
                 verdict.category if verdict else None, verdict.severity if verdict else None,
                 verdict.window if verdict else None, verdict.reason if verdict and verdict.suppressed else None,
                 now, pk, NEW)).rowcount
            if updated and relation is not None:
                dedup_key, received_at = self._conn.execute(
                    "SELECT e.dedup_key, m.received_at FROM escalations e JOIN messages m ON m.id = e.message_pk"
                    " WHERE e.message_pk = ?", (pk,)).fetchone()
                self._record_relation(pk, relation, dedup_key, received_at)
            for name in steps:
                exists = self._conn.execute(
                    "SELECT 1 FROM steps WHERE message_pk = ? AND name = ?", (pk, name)).fetchone()
                if not exists:
                    self._conn.execute(
                        "INSERT INTO steps (message_pk, name, state, attempts, next_attempt_at, result, updated_at)"
                        " VALUES (?, ?, ?, 0, ?, '{}', ?)", (pk, name, STEP_PENDING, now, now))

    def release(self, pk: int) -> ReleaseOutcome:
        """Hand a suppressed or demoted mail back to be decided again, without the demotion: new again,
        with its time of release. Steps already done stay done (a stranger's ticket is not made twice);
        the new decision adds what is missing, a page above all. Only once its steps are finished."""
        with self._transaction():
            row = self._conn.execute("SELECT state, verdict, released_at FROM escalations WHERE message_pk = ?",
                                     (pk,)).fetchone()
            if row is None:
                return ReleaseOutcome.UNKNOWN
            state, verdict, released_at = row[0], _verdict(row[1]), row[2]
            if released_at is not None:
                return ReleaseOutcome.ALREADY
            if verdict is None or not (verdict.suppressed or verdict.page_held or verdict.stranger):
                return ReleaseOutcome.NOT_DEMOTED
            if state not in (SUPPRESSED, DONE, FAILED):
                return ReleaseOutcome.BUSY
            now = time.time()
            self._conn.execute("UPDATE escalations SET state = ?, released_at = ?, updated_at = ? WHERE message_pk = ?",
                               (NEW, now, now, pk))
        return ReleaseOutcome.RELEASED

    def decide_failed(self, pk: int, error: str) -> bool:
        """Count a failed attempt to decide and plan a mail that is still new; True when it is now stuck."""
        with self._transaction():
            self._conn.execute(
                "UPDATE escalations SET decide_failures = decide_failures + 1, decide_error = ?, updated_at = ?,"
                " state = CASE WHEN decide_failures + 1 >= ? THEN ? ELSE state END WHERE message_pk = ? AND state = ?",
                (error[:1000], time.time(), MAX_DECIDE_ATTEMPTS, STUCK, pk, NEW))
            row = self._conn.execute("SELECT state FROM escalations WHERE message_pk = ?", (pk,)).fetchone()
        return row is not None and row[0] == STUCK

    def rearm(self, pk: int) -> RearmOutcome:
        """A stuck mail, new again with its failures forgotten (after its cause was fixed)."""
        with self._transaction():
            row = self._conn.execute("SELECT state FROM escalations WHERE message_pk = ?", (pk,)).fetchone()
            if row is None:
                return RearmOutcome.UNKNOWN
            if row[0] != STUCK:
                return RearmOutcome.NOT_STUCK
            self._conn.execute("UPDATE escalations SET state = ?, decide_failures = 0, updated_at = ?"
                               " WHERE message_pk = ?", (NEW, time.time(), pk))
        return RearmOutcome.REARMED

    def save_directory(self, source: str, fetched_at: float, copy: str) -> None:
        """Keep the last good copy of a tenant directory read from elsewhere (escalation/directory.py)."""
        with self._transaction():
            self._conn.execute("INSERT INTO tenant_directory (source, fetched_at, copy) VALUES (?, ?, ?)"
                               " ON CONFLICT (source) DO UPDATE SET fetched_at = excluded.fetched_at,"
                               " copy = excluded.copy", (source, fetched_at, copy))

    def kept_directory(self, source: str) -> str | None:
        row = self._conn.execute("SELECT copy FROM tenant_directory WHERE source = ?", (source,)).fetchone()
        return row[0] if row else None

    def begin_attempt(self, pk: int, step: str) -> int:
        """Count an attempt before the external call; returns how many came before it.

        A crash mid-call leaves attempts > 0, which tells the next try to look for
        the effect of the previous one before repeating it.
        """
        with self._transaction():
            row = self._conn.execute(
                "SELECT attempts FROM steps WHERE message_pk = ? AND name = ?", (pk, step)).fetchone()
            self._conn.execute("UPDATE steps SET attempts = attempts + 1, updated_at = ?"
                               " WHERE message_pk = ? AND name = ?", (time.time(), pk, step))
        return row[0]

    def defer_step(self, pk: int, step: str, until: float) -> None:
        """A step waiting on another one is due no sooner than that one."""
        with self._transaction():
            self._conn.execute("UPDATE steps SET next_attempt_at = ?, updated_at = ? WHERE message_pk = ? AND name = ?",
                               (until, time.time(), pk, step))

    def complete_step(self, pk: int, step: str, result: dict[str, Any], *, follow_ups: tuple[FollowUp, ...] = (),
                      **escalation: Any) -> None:
        """Commit a step's result, and any escalation fields it settles (ticket_id, paged_at...).
        A comment that carried later follow-ups completes theirs in the same transaction."""
        now = time.time()
        allowed = {"ticket_id", "incident_url", "paged_at"}
        if not set(escalation) <= allowed:
            raise ValueError(f"unknown escalation fields: {set(escalation) - allowed}")
        with self._transaction():
            self._conn.execute(
                "UPDATE steps SET state = ?, result = ?, last_error = NULL, updated_at = ?"
                " WHERE message_pk = ? AND name = ?", (STEP_DONE, json.dumps(result), now, pk, step))
            for column, value in escalation.items():
                self._conn.execute(f"UPDATE escalations SET {column} = ?, updated_at = ? WHERE message_pk = ?",
                                   (value, now, pk))
            self._settle(pk, now)
            self._merge_follow_ups(pk, follow_ups, escalation.get("ticket_id"), now)

    def fail_step(self, pk: int, step: str, *, error: str, next_attempt_at: float | None) -> None:
        """Record a failure: retried at next_attempt_at, or permanent when that is None."""
        now = time.time()
        state = STEP_PENDING if next_attempt_at is not None else STEP_FAILED
        with self._transaction():
            self._conn.execute(
                "UPDATE steps SET state = ?, last_error = ?, next_attempt_at = ?, updated_at = ?"
                " WHERE message_pk = ? AND name = ?",
                (state, error[:2000], next_attempt_at if next_attempt_at is not None else now, now, pk, step))
            self._settle(pk, now)

    def _settle(self, pk: int, now: float) -> None:
        states = {r[0] for r in self._conn.execute("SELECT state FROM steps WHERE message_pk = ?", (pk,))}
        if STEP_PENDING in states:
            return
        final = FAILED if STEP_FAILED in states else DONE
        self._conn.execute("UPDATE escalations SET state = ?, updated_at = ? WHERE message_pk = ?",
                           (final, now, pk))

    # -- reads ------------------------------------------------------------------

    def due(self, now: float, limit: int = 100) -> list[int]:
        """Escalations with work to do now: new ones first (deciding is cheap, and decides who
        is paged), then pending steps whose time has come, oldest first.

        New mail is taken fairly: each sender's oldest first, then the rest in arrival order, so
        that a storm from one sender cannot fill the batch ahead of another's first mail."""
        return [work.message_pk for work in self.due_turns(now, limit)]

    def due_turns(self, now: float, limit: int = 100, *, new_after: int = 0) -> list[DueWork]:
        """due(), each with whether it is urgent for the store's thread: its sender's first new
        mail, or a page (or its fallback) that is due again. The rest is a storm's background.

        new_after leaves out new mail up to that id: the runner asks only for what arrived since
        its last look (a storm's backlog of thousands was read again on every round, 13 ms each).
        Whether a mail is its sender's first is still asked of all undecided mail, through an index."""
        rows = self._conn.execute(
            "SELECT message_pk, 0, CASE WHEN EXISTS (SELECT 1 FROM escalations earlier WHERE earlier.state = ?"
            " AND earlier.fair_key = e.fair_key AND earlier.message_pk < e.message_pk) THEN 2 ELSE 1 END"
            " FROM escalations e WHERE state = ? AND message_pk > ?"
            " UNION ALL SELECT message_pk, 1, CASE WHEN name IN (?, ?) THEN 1 ELSE 2 END"
            " FROM steps WHERE state = ? AND next_attempt_at <= ?"
            " ORDER BY 2, 3, 1 LIMIT ?",
            (NEW, NEW, new_after, PAGE, FALLBACK_ALERT, STEP_PENDING, now, limit)).fetchall()
        work: dict[int, DueWork] = {}
        for pk, stepping, rank in rows:
            work.setdefault(pk, DueWork(pk, urgent=rank == 1, undecided=not stepping))
        return list(work.values())

    def message_sizes(self, pks: list[int]) -> dict[int, int]:
        sizes: dict[int, int] = {}
        for start in range(0, len(pks), 500):   # SQLite's limit on bound parameters
            chunk = pks[start:start + 500]
            sizes.update(self._conn.execute(
                f"SELECT id, size FROM messages WHERE id IN ({','.join('?' * len(chunk))})", chunk).fetchall())
        return sizes

    def next_due_at(self) -> float | None:
        row = self._conn.execute("SELECT MIN(next_attempt_at) FROM steps WHERE state = ?",
                                 (STEP_PENDING,)).fetchone()
        return row[0]

    def raw(self, pk: int) -> bytes:
        return self._conn.execute("SELECT raw FROM messages WHERE id = ?", (pk,)).fetchone()[0]

    def record(self, pk: int) -> EscalationRecord:
        row = self._conn.execute(_RECORD_SQL + " WHERE m.id = ?", (pk,)).fetchone()
        if row is None:
            raise KeyError(pk)
        return self._to_record(row)

    def recent(self, limit: int = 20) -> list[EscalationRecord]:
        rows = self._conn.execute(_RECORD_SQL + " ORDER BY m.id DESC LIMIT ?", (limit,)).fetchall()
        return [self._to_record(r) for r in rows]

    def counts_by_state(self) -> dict[str, int]:
        rows = self._conn.execute("SELECT state, COUNT(*) FROM escalations GROUP BY state").fetchall()
        return {state: count for state, count in rows}

    def oldest_unfinished_received_at(self) -> float | None:
        # An escalation's created_at is its message's received_at (ingest writes both), and reading it
        # does not walk the message's raw bytes: this runs on every round of the runner.
        row = self._conn.execute("SELECT MIN(created_at) FROM escalations WHERE state IN (?, ?)",
                                 (NEW, PENDING)).fetchone()
        return row[0]

    def pages_overdue(self, received_before: float) -> int:
        """Pending escalations with a fallback alert, received before the deadline, whose page is not done."""
        row = self._conn.execute(
            "SELECT COUNT(*) FROM escalations e"
            " JOIN steps f ON f.message_pk = e.message_pk AND f.name = ?"
            " JOIN steps p ON p.message_pk = e.message_pk AND p.name = ?"
            " WHERE e.state = ? AND p.state != ? AND e.created_at <= ?",
            (FALLBACK_ALERT, PAGE, PENDING, STEP_DONE, received_before)).fetchone()
        return row[0]

    def check_writable(self) -> None:
        """A write that is rolled back: proves the store takes writes without changing it."""
        with self._transaction(rollback=True):
            self._conn.execute("UPDATE escalations SET updated_at = updated_at WHERE 0")

    def _to_record(self, row: sqlite3.Row | tuple) -> EscalationRecord:
        (pk, identity, message_id, sha, size, source, mail_from, rcpt_to, peer, helo, tls, received_at,
         deliveries, dedup_key, state, subject, sender, ticket_id, incident_url, paged_at, verdict,
         relation, relation_reason, parent_pk, target_ticket_id, group_id, page_key, fair_key, released_at,
         decide_failures, decide_error) = row
        steps = [StepRecord(name=StepName(n), state=StepState(s), attempts=a, next_attempt_at=t, last_error=e,
                            result=json.loads(r), updated_at=u)
                 for n, s, a, t, e, r, u in self._conn.execute(
                     "SELECT name, state, attempts, next_attempt_at, last_error, result, updated_at"
                     " FROM steps WHERE message_pk = ?", (pk,))]
        steps.sort(key=lambda s: STEP_ORDER.index(s.name) if s.name in STEP_ORDER else len(STEP_ORDER))
        envelope = Envelope(source=source, mail_from=mail_from, rcpt_to=tuple(json.loads(rcpt_to)),
                            peer=peer, helo=helo, tls=bool(tls), received_at=received_at)
        return EscalationRecord(
            message_pk=pk, identity=identity, message_id=message_id, dedup_key=dedup_key,
            state=EscalationState(state),
            envelope=envelope, size=size, sha256=sha, deliveries=deliveries, subject=subject,
            sender=sender, ticket_id=ticket_id, incident_url=incident_url, paged_at=paged_at,
            verdict=_verdict(verdict), steps=tuple(steps), relation=RelationKind(relation) if relation else None,
            relation_reason=relation_reason, parent_pk=parent_pk, target_ticket_id=target_ticket_id,
            group_id=group_id, page_key=page_key, fair_key=fair_key, released_at=released_at,
            decide_failures=decide_failures, decide_error=decide_error)


_RECORD_SQL = (
    "SELECT m.id, m.identity, m.message_id, m.sha256, m.size, m.source, m.mail_from, m.rcpt_to, m.peer,"
    " m.helo, m.tls, m.received_at, m.deliveries, e.dedup_key, e.state, e.subject, e.sender, e.ticket_id,"
    " e.incident_url, e.paged_at, e.verdict, e.relation, e.relation_reason, e.parent_pk, e.target_ticket_id,"
    " e.group_id, e.page_key, e.fair_key, e.released_at, e.decide_failures, e.decide_error"
    " FROM messages m JOIN escalations e ON e.message_pk = m.id"
)


def _verdict(stored: str | None) -> Verdict | None:
    """The verdict column as written by plan(): JSON, '{}' when planned without one, NULL before planning."""
    document = json.loads(stored) if stored else None
    return Verdict.from_dict(document) if document else None


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any error so nothing is half-written."""

    def __init__(self, conn: sqlite3.Connection, *, rollback: bool = False):
        self._conn = conn
        self._rollback = rollback

    def __enter__(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None and not self._rollback:
            try:
                self._conn.execute("COMMIT")
                return
            except sqlite3.Error:
                self._rollback_quietly()
                raise
        self._rollback_quietly()

    def _rollback_quietly(self) -> None:
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")


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


# One group commit holds at most this much: a transaction that stays short, and memory bounded.
GROUP_COMMIT_MESSAGES = 64
GROUP_COMMIT_BYTES = 32 * 1024 * 1024


class AsyncStore:
    """Runs store calls on dedicated threads, so commits never block the event loop.

    Ingest has a connection and a thread of its own: a mail's 250 waits for its own
    commit, never behind the escalation bookkeeping queued on the other thread. Mail that
    arrives while a commit is under way is committed together in the next one (group
    commit): one fsync for all of them, and each 250 still only after its commit.
    """

    def __init__(self, store: Store, ingest_store: Store):
        self.sync = store
        self._ingest_store = ingest_store
        self._thread = StoreThread("store")
        self._ingest_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-ingest")
        self._to_commit: list[tuple[bytes, Envelope, asyncio.Future]] = []
        self._committer: asyncio.Task | None = None

    @classmethod
    def open(cls, path: Path, *, busy_timeout_ms: int) -> "AsyncStore":
        gate = WriteGate(busy_timeout_ms / 1000)
        store = Store.open(path, busy_timeout_ms=busy_timeout_ms, gate=gate)
        try:
            store.check_at_start()
        except StoreError:
            store.close()
            raise
        return cls(store, Store.open(path, busy_timeout_ms=busy_timeout_ms, gate=gate, priority=True))

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.wrap_future(self._thread.submit(lambda: fn(*args, **kwargs)))

    async def ingest(self, raw: bytes, envelope: Envelope) -> IngestResult:
        self._thread.note_intake()
        committed = asyncio.get_running_loop().create_future()
        self._to_commit.append((raw, envelope, committed))
        if self._committer is None or self._committer.done():
            # The ingest thread starts on this mail now, not a turn of the loop later when the task runs.
            self._committer = asyncio.create_task(self._commit_waiting(self._commit_next()), name="group-commit")
        return await committed

    def intake_busy(self) -> bool:
        """Mail is arriving: background work on the store's thread gets only its share (daemon/store/thread.py)."""
        return self._thread.intake_busy()

    def _commit_next(self) -> tuple[list[tuple[bytes, Envelope, asyncio.Future]], asyncio.Future]:
        """Hand the waiting mail (one group) to the ingest thread."""
        group = self._take_group()
        batch = [(raw, envelope) for raw, envelope, _ in group]
        return group, asyncio.get_running_loop().run_in_executor(
            self._ingest_executor, self._ingest_store.ingest_batch, batch)

    async def _commit_waiting(self, first: tuple[list[tuple[bytes, Envelope, asyncio.Future]], asyncio.Future]) -> None:
        """Answer each group's senders, then commit what arrived meanwhile, until none waits."""
        group, committing = first
        while True:
            try:
                results = await committing
            except Exception as exc:       # every sender of the group is told to try again (451)
                error = exc if isinstance(exc, StoreError) else StoreError(f"could not commit message: {exc}")
                for _, _, committed in group:
                    if not committed.done():
                        committed.set_exception(error)
            else:
                for (_, _, committed), result in zip(group, results):
                    if not committed.done():
                        committed.set_result(result)
            if not self._to_commit:
                return
            group, committing = self._commit_next()

    def _take_group(self) -> list[tuple[bytes, Envelope, asyncio.Future]]:
        """The waiting mail, oldest first, up to GROUP_COMMIT_MESSAGES and GROUP_COMMIT_BYTES (at least one)."""
        size, count = 0, 0
        for raw, _, _ in self._to_commit:
            if count and (count >= GROUP_COMMIT_MESSAGES or size + len(raw) > GROUP_COMMIT_BYTES):
                break
            size, count = size + len(raw), count + 1
        group, self._to_commit = self._to_commit[:count], self._to_commit[count:]
        return group

    async def save_imap_position(self, account: str, uidvalidity: int, last_uid: int) -> None:
        """Part of intake, so it queues with ingest, never behind escalation bookkeeping."""
        await self._on_ingest_thread(self._ingest_store.save_imap_position, account, uidvalidity, last_uid)

    async def _on_ingest_thread(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._ingest_executor, fn, *args)

    # -- the rest, each on the store's thread at the caller's priority (daemon/store/thread.py) ----------

    async def record(self, pk: int) -> EscalationRecord:
        return await self.call(self.sync.record, pk)

    async def raw(self, pk: int) -> bytes:
        return await self.call(self.sync.raw, pk)

    async def begin_attempt(self, pk: int, step: str) -> int:
        return await self.call(self.sync.begin_attempt, pk, step)

    async def defer_step(self, pk: int, step: str, until: float) -> None:
        await self.call(self.sync.defer_step, pk, step, until)

    async def complete_step(self, pk: int, step: str, result: dict[str, Any], *,
                            follow_ups: tuple[FollowUp, ...] = (), **escalation: Any) -> None:
        await self.call(self.sync.complete_step, pk, step, result, follow_ups=follow_ups, **escalation)

    async def fail_step(self, pk: int, step: str, *, error: str, next_attempt_at: float | None) -> None:
        await self.call(self.sync.fail_step, pk, step, error=error, next_attempt_at=next_attempt_at)

    async def claim_follow_ups(self, pk: int, limit: int) -> tuple[FollowUp, ...]:
        return await self.call(self.sync.claim_follow_ups, pk, limit)

    async def earlier_pending_comment(self, pk: int, parent_pk: int | None,
                                      target_ticket_id: int | None) -> tuple[int, float] | None:
        return await self.call(self.sync.earlier_pending_comment, pk, parent_pk, target_ticket_id)

    async def group(self, group_id: int) -> dict[str, Any] | None:
        return await self.call(self.sync.group, group_id)

    async def undecided_before(self, pk: int) -> int | None:
        return await self.call(self.sync.undecided_before, pk)

    async def due_turns(self, now: float, limit: int = 100, *, new_after: int = 0) -> list[DueWork]:
        return await self.call(self.sync.due_turns, now, limit, new_after=new_after)

    async def message_sizes(self, pks: list[int]) -> dict[int, int]:
        return await self.call(self.sync.message_sizes, pks)

    async def next_due_at(self) -> float | None:
        return await self.call(self.sync.next_due_at)

    async def decide_failed(self, pk: int, error: str) -> bool:
        return await self.call(self.sync.decide_failed, pk, error)

    async def counts_by_state(self) -> dict[str, int]:
        return await self.call(self.sync.counts_by_state)

    async def oldest_unfinished_received_at(self) -> float | None:
        return await self.call(self.sync.oldest_unfinished_received_at)

    async def pages_overdue(self, received_before: float) -> int:
        return await self.call(self.sync.pages_overdue, received_before)

    async def check_writable(self) -> None:
        await self.call(self.sync.check_writable)

    async def kept_directory(self, source: str) -> str | None:
        return await self.call(self.sync.kept_directory, source)

    async def save_directory(self, source: str, fetched_at: float, copy: str) -> None:
        await self.call(self.sync.save_directory, source, fetched_at, copy)

    async def imap_position(self, account: str) -> tuple[int, int] | None:
        return await self.call(self.sync.imap_position, account)

    def close(self) -> None:
        self._thread.shutdown(wait=True)
        self._ingest_executor.shutdown(wait=True)
        self.sync.close()
        self._ingest_store.close()
