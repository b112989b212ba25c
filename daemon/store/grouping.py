"""The store's queries for deduplication: conversations, incident groups, per-sender counts.

A mixin of Store: the same connection, the same single thread, still the only SQL.
"""
from __future__ import annotations

import json
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from emergencyd.daemon.store.connection import Connection
from emergencyd.escalation.grouping import (
    ALONE,
    FIRST,
    INCIDENT,
    REPEAT,
    STORM,
    THREAD,
    GroupingFacts,
    GroupingSettings,
    OpenGroup,
    Related,
    loop_key,
)
from emergencyd.escalation.records import (
    COMMENT,
    FAILED,
    NEW,
    PENDING,
    STEP_DONE,
    STEP_PENDING,
    STUCK,
    SUPPRESSED,
    TICKET,
    FollowUp,
    PlannedRelation,
)
from emergencyd.parsers.identity import thread_ids_of

# Enough of the raw mail for its header block; a reply's ids are near the top.
HEADER_READ_BYTES = 256 * 1024
MAX_THREAD_IDS = 50
# A sender with more undecided mails than this among the oldest STORM_WINDOW is storming: other
# senders' mail may be decided before its backlog. Anyone else's mail keeps arrival order.
QUIET_QUEUE = 3
STORM_WINDOW = 500
# Relations whose escalation has no ticket of its own: a comment on another one.
COMMENTING = (THREAD, STORM, REPEAT)
MAX_THREAD_HOPS = 20


class GroupingQueries:
    _conn: Connection
    if TYPE_CHECKING:          # Store's, which this is mixed into
        def _transaction(self, *, rollback: bool = False) -> AbstractContextManager[None]: ...
        def _settle(self, pk: int, now: float) -> None: ...

    def grouping_facts(self, pk: int, *, message_ids: tuple[str, ...], ticket_ref: int | None,
                       sender_key: str | None, fingerprint: str | None, received_at: float,
                       settings: GroupingSettings, encoded_ids: tuple[str, ...] = ()) -> GroupingFacts:
        parent = self._thread_parent(pk, message_ids) or self._encoded_parent(encoded_ids)
        referenced = None
        if parent is None and ticket_ref is not None:
            parent = self._escalation_with_ticket(ticket_ref)
            referenced = None if parent else ticket_ref
        return GroupingFacts(
            thread_parent=parent,
            referenced_ticket=referenced,
            sender_recent=self._sender_recent(pk, sender_key, received_at - settings.sender_window_seconds,
                                              received_at),
            sender_latest=self._sender_latest(pk, sender_key),
            open_group=self._open_group(fingerprint, sender_key, received_at - settings.incident_window_seconds,
                                        received_at + settings.incident_window_seconds),
            sender_loop=self._sender_loop(loop_key(fingerprint), sender_key,
                                          received_at - settings.incident_window_seconds,
                                          received_at + settings.incident_window_seconds),
        )

    def _thread_parent(self, pk: int, message_ids: tuple[str, ...]) -> Related | None:
        if not message_ids:
            return None
        marks = ",".join("?" * len(message_ids))
        row = self._conn.execute(
            f"SELECT m.id FROM messages m WHERE m.message_id IN ({marks}) AND m.id < ? ORDER BY m.id DESC LIMIT 1",
            (*message_ids, pk)).fetchone()
        return self._ticket_holder(row[0]) if row else None

    def _encoded_parent(self, encoded_ids: tuple[str, ...]) -> Related | None:
        """Zendesk's encoded id cannot be decoded here; one learnt from an earlier reply can be looked up."""
        for encoded in encoded_ids:
            row = self._conn.execute("SELECT message_pk FROM encoded_ids WHERE encoded_id = ?", (encoded,)).fetchone()
            if row:
                return self._ticket_holder(row[0])
        return None

    def _ticket_holder(self, pk: int) -> Related | None:
        """Follow comments to the escalation whose ticket they went on."""
        for _ in range(MAX_THREAD_HOPS):
            row = self._conn.execute(
                "SELECT relation, parent_pk, severity, ticket_id, state FROM escalations WHERE message_pk = ?",
                (pk,)).fetchone()
            if row is None or row[4] == SUPPRESSED:
                return None
            relation, parent_pk, severity, ticket_id, _ = row
            if relation in COMMENTING and parent_pk is not None:
                pk = parent_pk
                continue
            has_ticket = self._conn.execute(
                "SELECT 1 FROM steps WHERE message_pk = ? AND name = ?", (pk, TICKET)).fetchone()
            return Related(pk, severity, ticket_id) if has_ticket else None
        return None

    def _escalation_with_ticket(self, ticket_id: int) -> Related | None:
        row = self._conn.execute("SELECT message_pk, severity, ticket_id FROM escalations WHERE ticket_id = ?"
                                 " ORDER BY message_pk LIMIT 1", (ticket_id,)).fetchone()
        return Related(*row) if row else None

    def _sender_recent(self, pk: int, sender_key: str | None, since: float, until: float) -> int:
        """Earlier mails from this sender received in the window (replayed mail keeps its own time)."""
        if not sender_key:
            return 0
        return self._conn.execute(
            "SELECT COUNT(*) FROM escalations WHERE sender_key = ? AND created_at BETWEEN ? AND ?"
            " AND message_pk < ? AND state != ?", (sender_key, since, until, pk, SUPPRESSED)).fetchone()[0]

    def _sender_latest(self, pk: int, sender_key: str | None) -> Related | None:
        if not sender_key:
            return None
        row = self._conn.execute(
            "SELECT e.message_pk, e.severity, e.ticket_id FROM escalations e"
            " JOIN steps s ON s.message_pk = e.message_pk AND s.name = ?"
            " WHERE e.sender_key = ? AND e.message_pk < ? ORDER BY e.message_pk DESC LIMIT 1",
            (TICKET, sender_key, pk)).fetchone()
        return Related(*row) if row else None

    def _open_group(self, fingerprint: str | None, sender_key: str | None, since: float,
                    until: float) -> OpenGroup | None:
        if fingerprint is None:
            return None
        row = self._conn.execute(
            "SELECT id, dedup_key, problem_pk, severity FROM incident_groups"
            " WHERE fingerprint = ? AND last_report_at BETWEEN ? AND ? ORDER BY id DESC LIMIT 1",
            (fingerprint, since, until)).fetchone()
        return self._with_sender_member(row, sender_key) if row else None

    def _sender_loop(self, key: str | None, sender_key: str | None, since: float, until: float) -> OpenGroup | None:
        """This sender's open incident that a mail with the same loop key already joined."""
        if key is None or not sender_key:
            return None
        row = self._conn.execute(
            "SELECT g.id, g.dedup_key, g.problem_pk, g.severity FROM escalations e"
            " JOIN incident_groups g ON g.id = e.group_id WHERE e.sender_key = ? AND e.loop_key = ?"
            " AND g.last_report_at BETWEEN ? AND ? ORDER BY g.id DESC LIMIT 1",
            (sender_key, key, since, until)).fetchone()
        return self._with_sender_member(row, sender_key) if row else None

    def _with_sender_member(self, row: tuple, sender_key: str | None) -> OpenGroup:
        """The group, with the mail of this sender that holds their ticket in it."""
        member = self._conn.execute(
            "SELECT message_pk, severity, ticket_id FROM escalations WHERE group_id = ? AND sender_key = ?"
            " AND relation IN (?, ?) ORDER BY message_pk LIMIT 1", (row[0], sender_key, FIRST, INCIDENT)).fetchone()
        return OpenGroup(row[0], row[1], row[2], row[3], Related(*member) if member else None)

    def _record_relation(self, pk: int, relation: PlannedRelation, dedup_key: str, now: float) -> None:
        """Inside plan()'s transaction: open or join an incident group, and remember the relation."""
        group_id = relation.group_id
        page_key = None
        if relation.kind == FIRST and relation.fingerprint:
            group_id = self._conn.execute(
                "INSERT INTO incident_groups (fingerprint, dedup_key, problem_pk, category, severity, opened_at,"
                " last_report_at, reports) VALUES (?, ?, ?, ?, ?, ?, ?, 1) RETURNING id",
                (relation.fingerprint, dedup_key, pk, relation.category, relation.severity, now, now)).fetchone()[0]
            page_key = dedup_key
        elif group_id is not None and relation.kind in (INCIDENT, REPEAT):
            self._conn.execute("UPDATE incident_groups SET last_report_at = GREATEST(last_report_at, ?),"
                               " reports = reports + 1 WHERE id = ?", (now, group_id))
            page_key = self._conn.execute("SELECT dedup_key FROM incident_groups WHERE id = ?",
                                          (group_id,)).fetchone()[0]
        if relation.repage or relation.kind == ALONE:
            page_key = dedup_key
        elif relation.kind == THREAD and relation.parent_pk is not None:
            page_key = self._conn.execute("SELECT page_key FROM escalations WHERE message_pk = ?",
                                          (relation.parent_pk,)).fetchone()[0]
        holder = relation.parent_pk if relation.kind == THREAD else pk
        for encoded in relation.encoded_ids:
            if holder is not None:
                self._conn.execute("INSERT INTO encoded_ids (encoded_id, message_pk) VALUES (?, ?)"
                                   " ON CONFLICT DO NOTHING", (encoded, holder))
        self._conn.execute(
            "UPDATE escalations SET relation = ?, relation_reason = ?, parent_pk = ?, target_ticket_id = ?,"
            " group_id = ?, page_key = ?, sender_key = ?, loop_key = ? WHERE message_pk = ?",
            (relation.kind, relation.reason, relation.parent_pk, relation.target_ticket_id,
             group_id, page_key, relation.sender_key, loop_key(relation.fingerprint), pk))

    def undecided_thread_parent(self, pk: int) -> int | None:
        """An earlier stored mail that this one replies to and that is not decided yet."""
        raw = self._conn.execute("SELECT substr(raw, 1, ?) FROM messages WHERE id = ?",
                                 (HEADER_READ_BYTES, pk)).fetchone()[0]
        ids = thread_ids_of(raw)[-MAX_THREAD_IDS:]
        if not ids:
            return None
        row = self._conn.execute(
            f"SELECT m.id FROM messages m JOIN escalations e ON e.message_pk = m.id WHERE e.state = ?"
            f" AND m.id < ? AND m.message_id IN ({','.join('?' * len(ids))}) LIMIT 1", (NEW, pk, *ids)).fetchone()
        return row[0] if row else None

    def undecided_quiet_sender_before(self, pk: int, fair_key: str) -> int | None:
        """The latest earlier undecided mail of another sender that is not storming (at most QUIET_QUEUE
        undecided mails among the STORM_WINDOW oldest): mail that a mail naming a Zendesk encoded id must
        not overtake, since the id may be learnt from it. The latest, so that waiters wait in a chain,
        each on the one before (escalation/decided.py).

        Asked once or twice for every mail: the latest candidate first, through the indexes, passing
        over a storming sender's mail (each storming sender costs one more look)."""
        window_end = self._storm_window_end()
        below = pk if window_end is None else min(pk, window_end + 1)
        passed = [fair_key]
        while True:
            row = self._conn.execute(
                f"SELECT message_pk, fair_key FROM escalations WHERE state = ? AND message_pk < ?"
                f" AND fair_key NOT IN ({','.join('?' * len(passed))}) ORDER BY message_pk DESC LIMIT 1",
                (NEW, below, *passed)).fetchone()
            if row is None:
                return None
            if self._undecided_in_window(row[1], window_end) <= QUIET_QUEUE:
                return row[0]
            passed.append(row[1])

    def _storm_window_end(self) -> int | None:
        """The last of the STORM_WINDOW oldest undecided mails, or None when there are fewer."""
        row = self._conn.execute("SELECT message_pk FROM escalations WHERE state = ?"
                                 " ORDER BY message_pk LIMIT 1 OFFSET ?", (NEW, STORM_WINDOW - 1)).fetchone()
        return row[0] if row else None

    def _undecided_in_window(self, fair_key: str, window_end: int | None) -> int:
        """How many of the sender's undecided mails are among the oldest (counted up to one past quiet)."""
        return self._conn.execute(
            "SELECT COUNT(*) FROM (SELECT 1 FROM escalations WHERE state = ? AND fair_key = ?"
            " AND message_pk <= ? LIMIT ?) AS early",
            (NEW, fair_key, window_end if window_end is not None else 2 ** 62, QUIET_QUEUE + 1)).fetchone()[0]

    def undecided_before(self, pk: int) -> int | None:
        """The latest earlier mail not decided yet (it may be an earlier comment on the same ticket), or None."""
        return self._conn.execute("SELECT MAX(message_pk) FROM escalations WHERE state = ? AND message_pk < ?",
                                  (NEW, pk)).fetchone()[0]

    def comment_in_the_way(self, pk: int, parent_pk: int | None,
                           target_ticket_id: int | None) -> tuple[tuple[int, float] | None, int | None]:
        """What a comment waits for: an earlier pending comment on the same ticket, else the latest earlier
        mail not decided yet (its plan may add one).

        Undecided mail is read first: mail decided between the two reads (on another task or replica) then
        has its comment found by the second. Read the other way round, its comment was not planned yet for
        the first read and it was no longer undecided for the second: the later comment went first.
        """
        undecided = self.undecided_before(pk)
        earlier = self.earlier_pending_comment(pk, parent_pk, target_ticket_id)
        return earlier, None if earlier is not None else undecided

    def earlier_pending_comment(self, pk: int, parent_pk: int | None,
                                target_ticket_id: int | None) -> tuple[int, float] | None:
        """An earlier mail's comment on the same ticket that is still to go: comments keep arrival order."""
        row = self._conn.execute(
            "SELECT s.message_pk, s.next_attempt_at FROM steps s JOIN escalations e ON e.message_pk = s.message_pk"
            " WHERE s.name = ? AND s.state = ? AND s.message_pk < ?"
            " AND (e.parent_pk = ? OR e.target_ticket_id = ?) ORDER BY s.message_pk LIMIT 1",
            (COMMENT, STEP_PENDING, pk, parent_pk, target_ticket_id)).fetchone()
        return (row[0], row[1]) if row else None

    def claim_follow_ups(self, pk: int, limit: int) -> tuple[FollowUp, ...]:
        """The later comments that go with this one: claimed once, before its first call, and kept in
        its step's result, so that a retry after a crash sends exactly the same comment.

        Only a run of the same sender's comments on the same ticket that has not started on its own:
        another sender's comment in between ends the run, so the ticket keeps the mails' order."""
        with self._transaction():
            claimed = json.loads(self._conn.execute(
                "SELECT result FROM steps WHERE message_pk = ? AND name = ?", (pk, COMMENT)).fetchone()[0])
            if "follow_ups" not in claimed:
                claimed = {"follow_ups": self._queued_follow_ups(pk, limit)}
                self._conn.execute("UPDATE steps SET result = ? WHERE message_pk = ? AND name = ?",
                                   (json.dumps(claimed), pk, COMMENT))
        return tuple(FollowUp(*row) for row in claimed["follow_ups"])

    def _queued_follow_ups(self, pk: int, limit: int) -> list[list[Any]]:
        parent_pk, target, sender = self._conn.execute(
            "SELECT parent_pk, target_ticket_id, sender FROM escalations WHERE message_pk = ?", (pk,)).fetchone()
        # Mail not yet decided may be another sender's comment on this ticket: the run stops before it.
        undecided = self._conn.execute("SELECT MIN(message_pk) FROM escalations WHERE state = ?"
                                       " AND message_pk > ?", (NEW, pk)).fetchone()[0]
        rows = self._conn.execute(
            "SELECT e.message_pk, e.dedup_key, e.subject, m.received_at, e.sender, s.attempts"
            " FROM steps s JOIN escalations e ON e.message_pk = s.message_pk JOIN messages m ON m.id = e.message_pk"
            " WHERE s.name = ? AND s.state = ? AND s.message_pk > ? AND s.message_pk < ?"
            " AND (e.parent_pk = ? OR e.target_ticket_id = ?) ORDER BY s.message_pk LIMIT ?",
            (COMMENT, STEP_PENDING, pk, undecided if undecided is not None else 2**62, parent_pk, target, limit),
        ).fetchall()
        run = []
        for follower_pk, dedup_key, subject, received_at, follower_sender, attempts in rows:
            if follower_sender != sender or attempts:
                break
            run.append([follower_pk, dedup_key, subject, received_at])
        return run

    def _merge_follow_ups(self, lead_pk: int, follow_ups: tuple[FollowUp, ...], ticket_id: int | None,
                          now: float) -> None:
        """Inside the lead comment's completion: each follow-up's own comment step is done with it."""
        result = json.dumps({"ticket_id": ticket_id, "merged_into": lead_pk})
        for follower in follow_ups:
            self._conn.execute(
                "UPDATE steps SET state = ?, result = ?, last_error = NULL, updated_at = ?"
                " WHERE message_pk = ? AND name = ? AND state = ?",
                (STEP_DONE, result, now, follower.message_pk, COMMENT, STEP_PENDING))
            if ticket_id is not None:
                self._conn.execute("UPDATE escalations SET ticket_id = ?, updated_at = ? WHERE message_pk = ?",
                                   (ticket_id, now, follower.message_pk))
            self._settle(follower.message_pk, now)

    def group(self, group_id: int) -> dict[str, Any] | None:
        """What a page or note says about its incident: how many reports, from which tenants."""
        row = self._conn.execute("SELECT dedup_key, reports FROM incident_groups WHERE id = ?", (group_id,)).fetchone()
        if row is None:
            return None
        tenants = [r[0] for r in self._conn.execute(
            "SELECT DISTINCT sender_key FROM escalations WHERE group_id = ? AND sender_key IS NOT NULL"
            " ORDER BY sender_key", (group_id,))]
        return {"group_id": group_id, "dedup_key": row[0], "reports": row[1], "tenants": tenants}

    def groups(self, limit: int = 20) -> list[dict[str, Any]]:
        """Recent incident groups, and every one with mail still unfinished, failed or stuck however old (a
        short --limit must not hide the live incident): the incident, its tickets, its tenants."""
        out = []
        for gid, fingerprint, dedup_key, problem_pk, opened_at, last_at, reports in self._conn.execute(
                "SELECT id, fingerprint, dedup_key, problem_pk, opened_at, last_report_at, reports"
                " FROM incident_groups WHERE id IN (SELECT id FROM incident_groups ORDER BY id DESC LIMIT ?)"
                " OR id IN (SELECT group_id FROM escalations WHERE group_id IS NOT NULL AND state IN (?, ?, ?, ?))"
                " ORDER BY id DESC", (limit, NEW, PENDING, FAILED, STUCK)).fetchall():
            members = self._conn.execute(
                "SELECT message_pk, relation, ticket_id, sender, incident_url FROM escalations WHERE group_id = ?"
                " ORDER BY message_pk", (gid,)).fetchall()
            problem = next((m for m in members if m[0] == problem_pk), None)
            out.append({
                "group_id": gid, "fingerprint": fingerprint, "dedup_key": dedup_key, "reports": reports,
                "opened_at": opened_at, "last_report_at": last_at,
                "incident_url": problem[4] if problem else None,
                "problem_ticket_id": problem[2] if problem else None,
                "incident_ticket_ids": [m[2] for m in members if m[1] == INCIDENT],
                "tenants": sorted({m[3] for m in members if m[3]}),
            })
        return out
