"""The durable store: the only place that knows SQL, one text for SQLite and PostgreSQL.

Every commit that returned is on disk (SQLite: WAL with synchronous=FULL; PostgreSQL: its WAL, and a
standby's when it is set up so). The database itself sits behind a Connection (daemon/store/connection.py):
daemon/store/sqlite.py or daemon/store/postgres.py.
"""
from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterator

from emergencyd.daemon.store.connection import WRITE_PROBE, Connection
from emergencyd.daemon.store.errors import StoreBusy, StoreError
from emergencyd.daemon.store.grouping import GroupingQueries
from emergencyd.daemon.store.leases import LeaseQueries
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
    RetryOutcome,
    StepName,
    StepRecord,
    StepState,
    dedup_key_of,
    fair_key_of,
    identity_of,
)
from emergencyd.parsers.identity import HeaderIdentity, header_identity

log = logging.getLogger("emergencyd.store")


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
    escalation bookkeeping. Other processes (`inject`, another replica) meet the
    database's own wait: SQLite's busy_timeout, PostgreSQL's lock queue.
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
                raise StoreBusy("database is locked (waited for another writer in this process)")
            self._busy = True
        try:
            yield
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()


class Store(GroupingQueries, LeaseQueries):
    """Synchronous store on one Connection; callers serialise access (AsyncStore does)."""

    def __init__(self, conn: Connection, *, gate: WriteGate, priority: bool = False):
        self._conn = conn
        self._gate = gate
        self._priority = priority
        # What a failed commit raises: told to the sender as 451, never a crash.
        self._commit_failures: tuple[type[Exception], ...] = (StoreError, *conn.errors)

    @property
    def database_unavailable(self) -> tuple[type[Exception], ...]:
        return self._conn.unavailable

    @property
    def name(self) -> str:
        """The database, for messages: a file's path, or a DSN without its password."""
        return self._conn.name

    def sibling(self, *, priority: bool) -> "Store":
        """A Store on another session of the same database, behind the same write gate (and fence)."""
        store = Store(self._conn.sibling(), gate=self._gate, priority=priority)
        store.fence_with(self._fence)
        return store

    def close(self) -> None:
        self._conn.close()

    def check_at_start(self) -> None:
        """Refuse to run on a damaged or read-only store, rather than take mail it cannot keep.

        A locked store is not refused: the lock may pass, and meanwhile SMTP answers 451.
        """
        self._conn.check_at_start()

    def schema_version(self) -> int:
        return self._conn.schema_version()

    @contextmanager
    def _transaction(self, *, rollback: bool = False, durable: bool = True) -> Iterator[None]:
        """A write transaction. `durable=False`: the bookkeeping of a decision or of a step's outcome, which a
        power loss may undo back to the last durable commit (kill -9 cannot: it is written, not yet fsynced).
        That is safe because the store's log replays in order, so a later durable commit makes every earlier
        one durable too, and what survives is an earlier moment of the store, from which escalation goes on
        as after any crash. Mail is committed durably before its 250, and each external call's attempt
        (begin_attempt) durably before the call, with everything decided before it."""
        with self._gate.hold(priority=self._priority), _Transaction(self._conn, rollback=rollback, durable=durable):
            yield

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Reads that see one moment of the store, e.g. `status`'s counts and messages, which must agree
        while the daemon writes."""
        self._conn.begin_snapshot()
        try:
            yield
        finally:
            self._conn.commit()

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
        except self._commit_failures as exc:
            raise StoreError(f"could not commit message: {exc}") from exc

    def _insert_once(self, raw: bytes, envelope: Envelope, sha: str, header: HeaderIdentity) -> IngestResult:
        identity = identity_of(header.message_id, sha)
        now = envelope.received_at or time.time()
        row = self._conn.execute("SELECT id FROM messages WHERE identity = ?", (identity,)).fetchone()
        if row:
            self._conn.execute("UPDATE messages SET deliveries = deliveries + 1, last_delivery_at = ? WHERE id = ?",
                               (now, row[0]))
            return IngestResult(row[0], identity, duplicate=True)
        pk = self._conn.execute(
            "INSERT INTO messages (identity, message_id, sha256, raw, size, source, mail_from, rcpt_to,"
            " peer, helo, tls, received_at, deliveries, last_delivery_at, from_address)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?) RETURNING id",
            (identity, header.message_id, sha, raw, len(raw), envelope.source, envelope.mail_from,
             json.dumps(list(envelope.rcpt_to)), envelope.peer, envelope.helo, int(envelope.tls),
             now, now, header.from_address)).fetchone()[0]
        self._conn.execute("INSERT INTO escalations (message_pk, dedup_key, state, created_at, updated_at, fair_key)"
                           " VALUES (?, ?, ?, ?, ?, ?)",
                           (pk, dedup_key_of(identity), NEW, now, now, fair_key_of(envelope, header)))
        return IngestResult(pk, identity, duplicate=False)

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
        except self._commit_failures as exc:
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
        with self._transaction(durable=False):
            self._check_fence()
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
        with self._transaction(durable=False):
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

    def retry(self, pk: int) -> RetryOutcome:
        """Hand an escalation's failed steps back to be tried again (`emergencyd retry`), by a running daemon
        or the next to start. Their attempts are kept: the next one looks for what an earlier one did first
        (the ticket by its external_id; the page under its dedup_key), so nothing is made twice."""
        with self._transaction():
            row = self._conn.execute("SELECT state FROM escalations WHERE message_pk = ?", (pk,)).fetchone()
            if row is None:
                return RetryOutcome.UNKNOWN
            now = time.time()
            rearmed = self._conn.execute(
                "UPDATE steps SET state = ?, next_attempt_at = ?, updated_at = ? WHERE message_pk = ? AND state = ?",
                (STEP_PENDING, now, now, pk, STEP_FAILED)).rowcount
            if not rearmed:
                return RetryOutcome.NOT_FAILED
            self._conn.execute("UPDATE escalations SET state = ?, retried_at = ?, updated_at = ? WHERE message_pk = ?",
                               (PENDING, now, now, pk))
        return RetryOutcome.RETRIED

    def failed_since(self, since: float) -> list[int]:
        """Escalations that failed, received since `since` (epoch seconds), oldest first."""
        return [row[0] for row in self._conn.execute(
            "SELECT message_pk FROM escalations WHERE state = ? AND created_at >= ? ORDER BY message_pk",
            (FAILED, since))]

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
            self._check_fence()
            row = self._conn.execute(
                "SELECT attempts FROM steps WHERE message_pk = ? AND name = ?", (pk, step)).fetchone()
            self._conn.execute("UPDATE steps SET attempts = attempts + 1, updated_at = ?"
                               " WHERE message_pk = ? AND name = ?", (time.time(), pk, step))
        return row[0]

    def defer_step(self, pk: int, step: str, until: float) -> None:
        """A step waiting on another one is due no sooner than that one."""
        with self._transaction(durable=False):
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
        with self._transaction(durable=False):
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
        with self._transaction(durable=False):
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
            self._conn.execute(WRITE_PROBE)

    def _to_record(self, row: tuple) -> EscalationRecord:
        (pk, identity, message_id, sha, size, source, mail_from, rcpt_to, peer, helo, tls, received_at,
         deliveries, dedup_key, state, subject, sender, ticket_id, incident_url, paged_at, verdict,
         relation, relation_reason, parent_pk, target_ticket_id, group_id, page_key, fair_key, released_at,
         decide_failures, decide_error, retried_at) = row
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
            decide_failures=decide_failures, decide_error=decide_error, retried_at=retried_at)


_RECORD_SQL = (
    "SELECT m.id, m.identity, m.message_id, m.sha256, m.size, m.source, m.mail_from, m.rcpt_to, m.peer,"
    " m.helo, m.tls, m.received_at, m.deliveries, e.dedup_key, e.state, e.subject, e.sender, e.ticket_id,"
    " e.incident_url, e.paged_at, e.verdict, e.relation, e.relation_reason, e.parent_pk, e.target_ticket_id,"
    " e.group_id, e.page_key, e.fair_key, e.released_at, e.decide_failures, e.decide_error, e.retried_at"
    " FROM messages m JOIN escalations e ON e.message_pk = m.id"
)


# An escalation's record is read again after its decision and after each of its steps; its verdict, written
# once by plan() and immutable, is read from JSON only the first time (about 55 us of the store thread's time).
VERDICTS_KEPT = 1024


@lru_cache(maxsize=VERDICTS_KEPT)
def _verdict(stored: str | None) -> Verdict | None:
    """The verdict column as written by plan(): JSON, '{}' when planned without one, NULL before planning."""
    document = json.loads(stored) if stored else None
    return Verdict.from_dict(document) if document else None


class _Transaction:
    """A write transaction, committed, or rolled back on any error so nothing is half-written."""

    def __init__(self, conn: Connection, *, rollback: bool = False, durable: bool = True):
        self._conn = conn
        self._rollback = rollback
        self._durable = durable

    def __enter__(self) -> None:
        self._conn.begin_write(durable=self._durable)

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None and not self._rollback:
            try:
                self._conn.commit()
                return
            except BaseException:
                self._conn.rollback()
                raise
        self._conn.rollback()
