"""The store's contract, one set of tests run on each backend: SQLite's file and the suite's own PostgreSQL.

What the engine, intake and the CLI rely on: one row per message identity, steps committed one by one, the
turns of new mail, group commit, and the hand-backs, whatever database is underneath (daemon/store/core.py).
"""
import asyncio
import time

import pytest

from emergencyd.daemon.config.model import StoreConfig
from emergencyd.daemon.config.reader import Secret
from emergencyd.daemon.config.store import StoreBackend
from emergencyd.daemon.store.asynchronous import AsyncStore
from emergencyd.daemon.store.backends import open_store
from emergencyd.daemon.store.errors import StoreError
from emergencyd.escalation.hours import Window
from emergencyd.escalation.policy import Verdict
from emergencyd.escalation.records import (
    COMMENT,
    DONE,
    FAILED,
    FALLBACK_ALERT,
    MAX_DECIDE_ATTEMPTS,
    NEW,
    PAGE,
    PENDING,
    STUCK,
    SUPPRESSED,
    TICKET,
    PlannedRelation,
    RearmOutcome,
    RelationKind,
    ReleaseOutcome,
    dedup_key_of,
)
from tests.harness import make_message
from tests.harness import smtp_envelope as envelope
from tests.postgres import PASSWORD


@pytest.fixture(params=list(StoreBackend))
def store_config(request, tmp_path) -> StoreConfig:
    """A store of the test's own on each backend: a new SQLite file, or a new database on the session's cluster."""
    sqlite = StoreConfig(path=tmp_path / "var" / "store.sqlite3", busy_timeout_ms=2000)
    if request.param is StoreBackend.SQLITE:
        return sqlite
    cluster = request.getfixturevalue("postgres_cluster")
    return StoreConfig(path=sqlite.path, busy_timeout_ms=2000, backend=StoreBackend.POSTGRESQL,
                       dsn=cluster.new_database(), password=Secret(PASSWORD))


@pytest.fixture
def store(store_config):
    s = open_store(store_config)
    yield s
    s.close()


def test_same_message_id_is_stored_once(store):
    first = store.ingest(make_message(), envelope())
    second = store.ingest(make_message(body="resent by another relay"), envelope("imap"))
    assert not first.duplicate and second.duplicate
    assert second.message_pk == first.message_pk
    record = store.record(first.message_pk)
    assert record.deliveries == 2 and record.envelope.source == "smtp"
    assert record.message_id == "m1@example.net"
    assert record.dedup_key == dedup_key_of("mid:m1@example.net")


def test_without_message_id_identity_is_the_exact_bytes(store):
    a = store.ingest(make_message(message_id=None), envelope())
    b = store.ingest(make_message(message_id=None), envelope())
    c = store.ingest(make_message(message_id=None, body="different"), envelope())
    assert b.duplicate and b.message_pk == a.message_pk
    assert not c.duplicate and c.message_pk != a.message_pk
    assert store.record(a.message_pk).identity.startswith("sha256:")


def test_raw_bytes_and_envelope_round_trip(store):
    raw = make_message(body="caf\u00e9 \u2603")
    pk = store.ingest(raw, envelope()).message_pk
    assert store.raw(pk) == raw
    record = store.record(pk)
    assert record.envelope.rcpt_to == ("emergency@example.org",)
    assert record.envelope.helo == "mx.example.net" and record.size == len(raw)


def test_steps_are_committed_one_by_one_until_done(store):
    pk = store.ingest(make_message(), envelope()).message_pk
    assert store.due(time.time()) == [pk]
    store.plan(pk, subject="Apps down", sender="tenant@example.net", steps=(TICKET, PAGE))
    assert store.record(pk).state == PENDING
    assert store.begin_attempt(pk, TICKET) == 0
    store.complete_step(pk, TICKET, {"ticket_id": 7}, ticket_id=7)
    record = store.record(pk)
    assert record.ticket_id == 7 and record.step(TICKET).done and record.state == PENDING
    store.begin_attempt(pk, PAGE)
    store.fail_step(pk, PAGE, error="HTTP 503", next_attempt_at=time.time() + 60)
    assert store.due(time.time()) == []
    assert store.record(pk).step(PAGE).last_error == "HTTP 503"
    assert store.begin_attempt(pk, PAGE) == 1
    store.complete_step(pk, PAGE, {"dedup_key": "k"}, paged_at=time.time())
    assert store.record(pk).state == DONE


def test_a_permanent_failure_settles_as_failed(store):
    pk = store.ingest(make_message(), envelope()).message_pk
    store.plan(pk, subject="s", sender=None, steps=(TICKET,))
    store.fail_step(pk, TICKET, error="HTTP 422: invalid requester", next_attempt_at=None)
    record = store.record(pk)
    assert record.state == FAILED and record.last_error() == "HTTP 422: invalid requester"


def test_planning_twice_adds_no_steps(store):
    pk = store.ingest(make_message(), envelope()).message_pk
    store.plan(pk, subject="s", sender=None, steps=(TICKET, PAGE))
    store.begin_attempt(pk, TICKET)
    store.plan(pk, subject="s", sender=None, steps=(TICKET, PAGE))
    assert [s.attempts for s in store.record(pk).steps] == [1, 0]


async def test_mail_arriving_together_is_committed_together_each_once(store_config):
    store = AsyncStore.open(store_config)
    try:
        mails = [make_message(subject=f"Mail {n}", message_id=f"<g{n}@example.net>") for n in range(30)]
        mails.append(mails[7])                     # a second delivery inside the same group
        results = await asyncio.gather(*(store.ingest(raw, envelope()) for raw in mails))
    finally:
        store.close()
    assert [r.duplicate for r in results].count(True) == 1 and results[-1].duplicate
    assert results[-1].message_pk == results[7].message_pk
    assert len({r.message_pk for r in results}) == 30
    reopened = open_store(store_config)
    assert reopened.counts_by_state() == {NEW: 30}
    reopened.close()


def test_each_senders_first_new_mail_and_a_due_page_are_marked_urgent_for_the_store(store):
    def mail(sender, n):
        return store.ingest(make_message(sender=sender, subject=f"Incident {n}", message_id=f"<{n}@x.example>"),
                            envelope()).message_pk
    loop = [mail("alerts@loop.example", n) for n in range(3)]
    other = mail("ops@other.example", 9)
    commenting = mail("ops@third.example", 10)
    store.plan(commenting, subject="Still down", sender="ops@third.example", steps=(COMMENT,))
    paging = mail("ops@fourth.example", 11)
    store.plan(paging, subject="Apps down", sender="ops@fourth.example", steps=(TICKET, PAGE))
    turns = {work.message_pk: work.urgent for work in store.due_turns(time.time())}
    assert turns == {loop[0]: True, other: True, loop[1]: False, loop[2]: False,   # a storm's later mail waits
                     paging: True, commenting: False}                             # a page due again does not
    assert store.due(time.time()) == [loop[0], other, loop[1], loop[2], paging, commenting]
    # Asked only for what arrived since: a loop's next mail is still no sender's first.
    later = [mail("alerts@loop.example", 12), mail("ops@fifth.example", 13)]
    since = [(w.message_pk, w.urgent, w.undecided) for w in store.due_turns(time.time(), new_after=paging)]
    assert since == [(later[1], True, True), (later[0], False, True), (paging, True, False),
                     (commenting, False, False)]



def test_a_suppressed_mail_is_released_once_and_a_stuck_one_rearmed(store):
    pk = store.ingest(make_message(), envelope()).message_pk
    assert store.release(pk) is ReleaseOutcome.NOT_DEMOTED            # new, never decided
    verdict = Verdict(suppressed=True, reason="auto-reply (Auto-Submitted: auto-replied)", category="noise",
                      severity=None, window=Window.IN_HOURS, page=False, urgency=None, zendesk_priority=None,
                      respond_by=None, update_every=None, ticket=False, ticket_subject="Out of office")
    store.plan(pk, subject="Out of office", sender="tenant@example.net", steps=(), verdict=verdict)
    assert store.record(pk).state == SUPPRESSED
    assert store.release(pk) is ReleaseOutcome.RELEASED
    assert store.record(pk).state == NEW and store.record(pk).released_at is not None
    assert store.release(pk) is ReleaseOutcome.ALREADY
    assert store.release(10_000) is ReleaseOutcome.UNKNOWN
    other = store.ingest(make_message(message_id="<stuck@example.net>"), envelope()).message_pk
    assert store.rearm(other) is RearmOutcome.NOT_STUCK
    stuck = [store.decide_failed(other, f"parser crashed {n}") for n in range(MAX_DECIDE_ATTEMPTS)]
    assert stuck == [False] * (MAX_DECIDE_ATTEMPTS - 1) + [True] and store.record(other).state == STUCK
    assert store.record(other).decide_error == f"parser crashed {MAX_DECIDE_ATTEMPTS - 1}"
    assert store.rearm(other) is RearmOutcome.REARMED and store.record(other).state == NEW


def test_the_imap_position_and_the_kept_directory_are_saved_and_replaced(store):
    assert store.imap_position("ops@example.org") is None
    store.save_imap_position("ops@example.org", 7, 10)
    store.save_imap_position("ops@example.org", 7, 12)
    assert store.imap_position("ops@example.org") == (7, 12)
    assert [p["last_uid"] for p in store.imap_positions()] == [12]
    assert store.kept_directory("zendesk") is None
    store.save_directory("zendesk", 1.0, '{"tenants": []}')
    store.save_directory("zendesk", 2.0, '{"tenants": ["a"]}')
    assert store.kept_directory("zendesk") == '{"tenants": ["a"]}'


def test_counts_and_overdue_pages_read_one_moment(store):
    paging = store.ingest(make_message(), envelope()).message_pk
    store.plan(paging, subject="Apps down", sender="tenant@example.net", steps=(TICKET, PAGE, FALLBACK_ALERT))
    store.ingest(make_message(message_id="<second@example.net>"), envelope())
    with store.snapshot():
        assert store.counts_by_state() == {NEW: 1, PENDING: 1}
        assert store.pages_overdue(time.time() + 1) == 1
        assert store.oldest_unfinished_received_at() is not None
    store.check_writable()
    assert store.next_due_at() is not None
    assert [r.message_pk for r in store.recent(1)] == [paging + 1]


def test_a_database_that_cannot_commit_refuses_with_a_store_error(store_config):
    store = open_store(store_config)
    store.close()           # a closed session: the next commit fails, as with a lost database
    with pytest.raises(StoreError, match="could not commit"):
        store.ingest(make_message(), envelope())


def test_a_reply_finds_its_undecided_parent_and_a_quiet_sender_its_turn(store):
    parent = store.ingest(make_message(message_id="<parent@tenant.example>"), envelope()).message_pk
    other = store.ingest(make_message(sender="ops@other.example", message_id="<other@other.example>"),
                         envelope()).message_pk
    answer = store.ingest(make_message(message_id="<answer@tenant.example>", subject="Re: Apps down",
                                       extra_headers="In-Reply-To: <parent@tenant.example>\r\n"), envelope()).message_pk
    assert store.undecided_thread_parent(answer) == parent
    assert store.undecided_quiet_sender_before(answer, "tenant@example.net") == other
    store.plan(parent, subject="Apps down", sender="tenant@example.net", steps=(TICKET,))
    store.plan(other, subject="Apps down", sender="ops@other.example", steps=(TICKET,))
    assert store.undecided_thread_parent(answer) is None
    assert store.undecided_quiet_sender_before(answer, "tenant@example.net") is None
    assert store.undecided_before(answer) is None and store.undecided_before(answer + 1) == answer


def test_a_comment_waits_for_an_earlier_comment_on_its_ticket_or_for_earlier_undecided_mail(store):
    def mail(n: int) -> int:
        return store.ingest(make_message(subject=f"Re: Apps down {n}", message_id=f"<c{n}@tenant.example>"),
                            envelope()).message_pk
    holder, forward, update = mail(0), mail(1), mail(2)
    store.plan(holder, subject="Apps down", sender="ops@tenant.example", steps=(TICKET,),
               relation=PlannedRelation(RelationKind.FIRST, "a new incident"))
    store.plan(update, subject="Update", sender="ops@tenant.example", steps=(COMMENT,),
               relation=PlannedRelation(RelationKind.THREAD, "a reply", parent_pk=holder))
    assert store.comment_in_the_way(update, holder, None) == (None, forward)        # it may become a comment
    store.plan(forward, subject="Fwd", sender="lead@tenant.example", steps=(COMMENT,),
               relation=PlannedRelation(RelationKind.THREAD, "a reply", parent_pk=holder))
    [(earlier, due)] = [store.comment_in_the_way(update, holder, None)[0]]
    assert earlier == forward and due <= time.time()
    assert store.comment_in_the_way(forward, holder, None) == (None, None)


def test_an_unfinished_incident_is_listed_however_short_the_limit(store):
    def incident(n: int) -> int:
        pk = store.ingest(make_message(subject=f"Outage {n}", message_id=f"<outage-{n}@tenant.example>"),
                          envelope()).message_pk
        store.plan(pk, subject=f"Outage {n}", sender="tenant@example.net", steps=(TICKET,),
                   relation=PlannedRelation(RelationKind.FIRST, "a new incident", fingerprint=f"outage-{n}"))
        return pk
    live = incident(1)                                  # still pending: its ticket is not made yet
    for n in (2, 3):
        settled = incident(n)
        store.begin_attempt(settled, TICKET)
        store.complete_step(settled, TICKET, {"ticket_id": n}, ticket_id=n)
    assert [g["fingerprint"] for g in store.groups(limit=1)] == ["outage-3", "outage-1"]
    assert store.record(live).state == PENDING
