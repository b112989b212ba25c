"""The store: durable settings, one row per message identity, steps committed one by one."""
import asyncio
import sqlite3
import stat
import threading
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emergencyd.daemon.store.errors import StoreError
from emergencyd.daemon.store.migrations import MIGRATIONS
from emergencyd.daemon.store.sqlite import open_sqlite
from emergencyd.daemon.store.thread import (
    BACKGROUND,
    BACKGROUND_SHARE,
    INTAKE_BUSY_SECONDS,
    StoreThread,
    store_priority,
)
from emergencyd.escalation.records import (
    NEW,
    NULL_REVERSE_PATH_TURN,
    TICKET,
    dedup_key_of,
    identity_of,
)
from tests.harness import make_message
from tests.harness import smtp_envelope as envelope


@pytest.fixture
def store(tmp_path):
    s = open_sqlite(tmp_path / "var" / "store.sqlite3", busy_timeout_ms=200)
    yield s
    s.close()


def test_durability_settings_and_private_file(store):
    conn = sqlite3.connect(store._conn.path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 2   # FULL
    assert stat.S_IMODE(store._conn.path.stat().st_mode) == 0o600
    assert store.schema_version() == len(MIGRATIONS)


def test_mail_and_each_attempt_are_fsynced_and_the_bookkeeping_between_rides_on_the_next_fsync(store):
    """Which commits wait for the disk (synchronous = FULL) and which only for the log's next fsync (NORMAL):
    the mail before its 250 and a step's attempt before its call do; a decision and a step's outcome need not,
    since any later FULL commit carries them to the disk (daemon/store/core.py, Store._transaction)."""
    modes, committed = {"current": "FULL"}, []

    def watch(sql: str) -> None:
        if sql.startswith("PRAGMA synchronous = "):
            modes["current"] = sql.rsplit(" ", 1)[1]
        elif sql == "BEGIN IMMEDIATE":
            committed.append(modes["current"])
    store._conn._raw.set_trace_callback(watch)
    pk = store.ingest(make_message(subject="All our apps are down"), envelope()).message_pk
    store.plan(pk, subject="All our apps are down", sender="ops@tenant.example", steps=(TICKET,))
    assert store.begin_attempt(pk, TICKET) == 0
    store.complete_step(pk, TICKET, {"ticket_id": 7}, ticket_id=7)
    store.begin_attempt(pk, TICKET)
    store.fail_step(pk, TICKET, error="timed out", next_attempt_at=0.0)
    second = store.ingest(make_message(subject="Still down"), envelope()).message_pk
    store.decide_failed(second, "parser crashed")
    store.defer_step(pk, TICKET, 0.0)
    assert committed == ["FULL", "NORMAL", "FULL", "NORMAL", "FULL", "NORMAL", "FULL", "NORMAL", "NORMAL"]
    assert store.record(pk).ticket_id == 7


def test_the_write_ahead_log_is_private_and_a_readable_store_is_tightened(tmp_path, caplog):
    path = tmp_path / "loose" / "store.sqlite3"
    first = open_sqlite(path)
    first.ingest(make_message(), envelope())
    wal = path.with_name(path.name + "-wal")
    assert stat.S_IMODE(wal.stat().st_mode) == 0o600
    first.close()
    path.chmod(0o644)
    second = open_sqlite(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "made it private" in caplog.text
    assert second.counts_by_state() == {NEW: 1}
    second.close()


def test_reopening_runs_no_migration_twice(tmp_path, store):
    store.ingest(make_message(), envelope())
    again = open_sqlite(store._conn.path)
    assert again.schema_version() == len(MIGRATIONS)
    assert again.counts_by_state() == {NEW: 1}
    again.close()


def test_a_store_from_a_newer_version_is_refused(tmp_path):
    path = tmp_path / "store.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.close()
    with pytest.raises(StoreError, match="newer than this emergencyd"):
        open_sqlite(path)


def test_a_locked_store_refuses_and_writes_nothing(store):
    locker = sqlite3.connect(store._conn.path, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    with pytest.raises(StoreError, match="could not commit"):
        store.ingest(make_message(), envelope())
    locker.execute("ROLLBACK")
    locker.close()
    assert store.counts_by_state() == {}
    assert store._conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 0
    assert not store.ingest(make_message(), envelope()).duplicate


def test_an_urgent_store_call_goes_ahead_of_the_queue_and_each_priority_keeps_its_order():
    thread = StoreThread("test-store")
    held, ran = threading.Event(), []
    first = thread.submit(held.wait)                    # holds the thread while the queue fills
    token = store_priority.set(BACKGROUND)
    try:
        queued = [thread.submit(lambda n=n: ran.append(n)) for n in ("a", "b")]
    finally:
        store_priority.reset(token)
    queued += [thread.submit(lambda n=n: ran.append(n)) for n in ("urgent 1", "urgent 2")]
    token = store_priority.set(BACKGROUND)
    try:
        queued.append(thread.submit(lambda: ran.append("c")))
    finally:
        store_priority.reset(token)
    held.set()
    for future in [first, *queued]:
        future.result(timeout=10)
    assert ran == ["urgent 1", "urgent 2", "a", "b", "c"]
    thread.shutdown()


async def test_a_store_call_from_the_loop_gets_its_result_or_its_error_and_a_cancelled_one_does_not_run():
    thread = StoreThread("test-store")
    loop = asyncio.get_running_loop()
    assert await thread.submit_to_loop(lambda: 6 * 7, loop) == 42

    def fails():
        raise LookupError("no such message")
    with pytest.raises(LookupError, match="no such message"):
        await thread.submit_to_loop(fails, loop)
    with pytest.raises(RuntimeError, match="StopIteration"):     # an asyncio future cannot carry it as such
        await thread.submit_to_loop(lambda: next(iter(())), loop)

    held, ran = threading.Event(), []
    holding = thread.submit(held.wait)                  # the thread is busy: the next call waits its turn
    given_up = thread.submit_to_loop(lambda: ran.append("given up"), loop)
    given_up.cancel()
    held.set()
    holding.result(timeout=10)
    assert await thread.submit_to_loop(lambda: ran.append("next") or "ran", loop) == "ran"
    assert ran == ["next"]
    thread.shutdown()


def test_while_mail_arrives_background_calls_get_only_their_share_of_the_store_thread():
    now = [1000.0]                                      # the thread's clock, moved by hand
    thread = StoreThread("test-store", clock=lambda: now[0])
    ran = []

    def background(name, takes=0.0):
        def call():
            ran.append(name)
            now[0] += takes
        token = store_priority.set(BACKGROUND)
        try:
            return thread.submit(call)
        finally:
            store_priority.reset(token)

    background("long", takes=1.0).result(timeout=10)   # before any mail: at once
    thread.note_intake()                               # mail arrives
    waiting = background("next")
    thread.submit(lambda: ran.append("urgent")).result(timeout=10)
    assert ran == ["long", "urgent"] and not waiting.done()   # the share after a 1 s call is not yet there
    now[0] += (1 / BACKGROUND_SHARE - 1) * 1.0 - 0.05
    thread.note_intake()
    thread.submit(lambda: ran.append("urgent again")).result(timeout=10)
    assert not waiting.done()
    now[0] += 0.05                                     # its share has come, mail still arriving
    thread.note_intake()
    waiting.result(timeout=10)
    background("another long", takes=1.0).result(timeout=10)
    thread.note_intake()
    last = background("last")
    thread.submit(lambda: None).result(timeout=10)
    assert not last.done()
    now[0] += INTAKE_BUSY_SECONDS + 0.01               # intake quiet: the background goes on at once
    last.result(timeout=10)
    assert ran == ["long", "urgent", "urgent again", "next", "another long", "last"]
    thread.shutdown()


def test_the_store_thread_hands_back_errors_and_runs_its_queue_before_it_stops():
    thread = StoreThread("test-store")
    with pytest.raises(ZeroDivisionError):
        thread.submit(lambda: 1 / 0).result(timeout=10)
    held, ran = threading.Event(), []
    thread.submit(held.wait)
    last = thread.submit(lambda: ran.append("queued before the stop"))
    stopper = threading.Thread(target=thread.shutdown)
    stopper.start()
    held.set()
    stopper.join(timeout=10)
    assert ran == ["queued before the stop"] and last.done()
    with pytest.raises(RuntimeError, match="closed"):
        thread.submit(lambda: None)


# The latest earlier undecided mail of a quiet sender, as one query: the reference for the store's
# look-ups through the indexes (Store.undecided_quiet_sender_before).
def _quiet_sender_before_reference(store, pk: int, fair_key: str) -> int | None:
    from emergencyd.daemon.store.grouping import QUIET_QUEUE, STORM_WINDOW
    return store._conn.execute(
        "WITH early AS (SELECT message_pk, fair_key FROM escalations WHERE state = 'new'"
        " ORDER BY message_pk LIMIT ?)"
        " SELECT MAX(message_pk) FROM early WHERE message_pk < ? AND fair_key != ? AND fair_key IN"
        " (SELECT fair_key FROM early GROUP BY fair_key HAVING COUNT(*) <= ?)",
        (STORM_WINDOW, pk, fair_key, QUIET_QUEUE)).fetchone()[0]


_SENDERS = ["storm@loop.example", "a@one.example", "b@two.example", "c@three.example", "D@Four.example"]


@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(filler=st.integers(0, 520), mails=st.lists(st.tuples(st.sampled_from(_SENDERS), st.booleans()), max_size=40),
       storm_share=st.sampled_from([0.0, 0.5, 0.9]))
def test_the_quiet_sender_in_the_way_is_the_one_the_single_query_finds(tmp_path_factory, filler, mails, storm_share):
    import random
    store = open_sqlite(tmp_path_factory.mktemp("quiet") / "store.sqlite3")
    rng = random.Random(filler)
    # A long backlog first (past the window of the 500 oldest, at times), some of it one sender's storm.
    senders = [_SENDERS[0] if rng.random() < storm_share else f"t{rng.randrange(400)}@many.example"
               for _ in range(filler)] + [sender for sender, _ in mails]
    store.ingest_batch([(make_message(sender=sender, message_id=f"<{n}@q.example>", subject=f"n {n}"),
                         envelope()) for n, sender in enumerate(senders)])
    decided = [filler + i + 1 for i, (_, done) in enumerate(mails) if done] + \
        [n for n in range(1, filler + 1) if rng.random() < 0.2]
    store._conn.begin_write()
    for n in decided:
        store._conn.execute("UPDATE escalations SET state = 'pending' WHERE message_pk = ?", (n,))
    store._conn.commit()
    # Every mail near the end and around the window's edge (the 500th undecided), a stride elsewhere.
    last = len(senders) + 1
    pks = sorted({*range(max(1, last - 60), last + 1), *range(480, min(last, 530) + 1), *range(1, last + 1, 13)})
    for pk in pks:
        for fair_key in {"storm@loop.example", "a@one.example", "d@four.example", "nobody@x.example"}:
            assert store.undecided_quiet_sender_before(pk, fair_key) == \
                _quiet_sender_before_reference(store, pk, fair_key), (pk, fair_key)
    store.close()


def test_the_fair_key_moves_to_the_escalation_and_old_rows_get_it(tmp_path):
    path = tmp_path / "store.sqlite3"
    old = open_sqlite(path)
    first = old.ingest(make_message(sender="Ops <OPS@Tenant.example>"), envelope()).message_pk
    old._conn.execute("UPDATE escalations SET fair_key = '' WHERE message_pk = ?", (first,))
    old._conn.execute("PRAGMA user_version = 7")   # as a store from before migration 8: what came since, undone
    old._conn.execute("ALTER TABLE escalations DROP COLUMN retried_at")
    old._conn.execute("DROP TABLE leases")
    old._conn.execute("ALTER TABLE escalations DROP COLUMN decide_error")
    old._conn.execute("ALTER TABLE escalations DROP COLUMN decide_failures")
    old._conn.execute("DROP TABLE tenant_directory")
    old._conn.execute("ALTER TABLE escalations DROP COLUMN released_at")
    old._conn.execute("DROP INDEX escalations_state_fair_key")
    old._conn.execute("ALTER TABLE escalations DROP COLUMN fair_key")
    old.close()
    store = open_sqlite(path)
    assert store.record(first).fair_key == "ops@tenant.example"
    later = store.ingest(make_message(sender="x@y.example", message_id="<later@y.example>"), envelope()).message_pk
    assert store.record(later).fair_key == "x@y.example"
    store.close()


def test_mail_with_a_null_reverse_path_takes_one_turn_whoever_wrote_it(store):
    """Bounces from a thousand mail systems are one storm. Over SMTP the envelope says so (MAIL FROM:<>);
    over IMAP and `inject` an empty envelope sender only means it is not known, and the Return-Path field
    the delivering server wrote says so."""
    def fair_key(number: int, source: str, mail_from: str, return_path: str | None = None) -> str:
        raw = make_message(sender=f"MAILER-DAEMON@mx{number}.example", message_id=f"<dsn{number}@mx.example>",
                           extra_headers="" if return_path is None else f"Return-Path: {return_path}\r\n")
        pk = store.ingest(raw, replace(envelope(source), mail_from=mail_from)).message_pk
        return store.record(pk).fair_key

    assert fair_key(1, "smtp", "") == fair_key(2, "smtp", "<>") == NULL_REVERSE_PATH_TURN
    assert fair_key(3, "imap", "") == "mailer-daemon@mx3.example"
    assert fair_key(4, "inject", "") == "mailer-daemon@mx4.example"
    assert fair_key(5, "smtp", "postmaster@mx5.example") == "mailer-daemon@mx5.example"
    assert fair_key(6, "imap", "", "<>") == fair_key(7, "inject", "", " < > (bounce)") == NULL_REVERSE_PATH_TURN
    assert fair_key(8, "imap", "list@mx8.example", "<list@mx8.example>") == "mailer-daemon@mx8.example"
    # Over SMTP a Return-Path field came from the sender, not from a server that delivered the mail.
    assert fair_key(9, "smtp", "tenant@mx9.example", "<>") == "mailer-daemon@mx9.example"


def test_the_identity_keys_are_pinned():
    """Zendesk's external_id and PagerDuty's dedup_key of a mail must not change across releases: a
    changed derivation would page and ticket again every mail still being escalated after an upgrade."""
    assert dedup_key_of(identity_of("abc@tenant.example", "f" * 64)) == \
        "emergencyd-18f8b9c8c6c0a38286b793a1b1e669f41842c6cc"
    assert dedup_key_of(identity_of(None, "ab" * 32)) == "emergencyd-7b28e61bc1d292234192478f2c9d3b56c10ca6a3"
