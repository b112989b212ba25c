"""A monitoring loop is one incident: one sender's subjects that differ only in numbers, counters,
hex ids, dates or times share a loop key, and a mail of the loop joins the sender's open incident.

The end-to-end run, through the daemon and the fakes, is in tests/e2e/test_dedup.py.
"""
from __future__ import annotations

import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import pytest

from emergencyd.daemon.config.model import load_config
from emergencyd.daemon.store.core import Store
from emergencyd.daemon.store.sqlite import open_sqlite
from emergencyd.escalation.grouping import (
    FIRST,
    INCIDENT,
    REPEAT,
    GroupingFacts,
    GroupingSettings,
    OpenGroup,
    Related,
    fingerprint,
    loop_key,
    relate,
)
from emergencyd.escalation.policy import Verdict, classify
from emergencyd.escalation.records import TICKET, Envelope, PlannedRelation
from emergencyd.parsers.message import parse_message
from emergencyd.parsers.subject import loop_subject
from tests.harness import make_message

ROOT = Path(__file__).resolve().parents[2]
CONFIG = load_config(ROOT / "config.toml", environ={})
GROUPING = GroupingSettings(
    incident_window_seconds=CONFIG.dedup.incident_window_seconds,
    platform_wide_categories=frozenset(CONFIG.dedup.platform_wide_categories),
    sender_limit=CONFIG.dedup.sender_limit, sender_window_seconds=CONFIG.dedup.sender_window_seconds)
# Matches no category rule of the shipped policy: a possible emergency, grouped by its subject.
BODY = "The error rate of checkout-api is above its threshold."


@pytest.mark.parametrize("first, second", [
    ("Alert #1041: checkout-api 5xx above threshold", "Alert #1042: checkout-api 5xx above threshold"),
    ("Alert 99999: disk full", "Alert 100000: disk full"),
    ("Job 3fa9b2c1 failed", "Job 7e0d41aa failed"),
    ("Job 12345678 failed", "Job c0ffee42 failed"),             # an id that happens to be all digits
    ("Pod web-7f9c8d6b5 restarted", "Pod web-0a1b2c3d4 restarted"),
    ("Run 0x7ffe12 crashed", "Run 0x1a2b3c crashed"),
    ("Task 3fa85f64-5717-4562-b3fc-2c963f66afa6 stuck", "Task 9b2e1c0d-0000-4fff-8abc-123456789abc stuck"),
    ("Backup of 2026-11-27 failed", "Backup of 2026-11-28 failed"),
    ("Backup of 27.11.2026 failed", "Backup of 28/11/26 failed"),
    ("Backup of Fri, 27 Nov 2026 failed", "Backup of Sat, 28 Nov 2026 failed"),
    ("Backup of November 27th, 2026 failed", "Backup of December 1st, 2026 failed"),
    ("Check at 10:00 failed", "Check at 10:05:31 UTC failed"),
    ("Check at 9:05 pm CEST failed", "Check at 11:45 am CEST failed"),
    ("Check 2026-11-27T10:00:00Z failed", "Check 2026-11-27T10:05:00+01:00 failed"),
    ("Server 12 down", "Server 13 down"),
    ("Re: [ops] Server 12   DOWN", "Fwd: Server 13 down"),
])
def test_counters_ids_dates_and_times_fold(first, second):
    assert loop_subject(first) == loop_subject(second)


@pytest.mark.parametrize("first, second", [
    ("Server 12 down", "Server 12 slow"),
    ("Database facade failed", "Database decade failed"),   # hex letters without a digit are words
    ("Check at 10:00 isthmus", "Check at 10:00 strait"),
    ("Alert #1041: checkout-api 5xx", "Alert #1041: payments-api 5xx"),
])
def test_words_do_not_fold(first, second):
    assert loop_subject(first) != loop_subject(second)


def test_the_loop_subject_keeps_the_words_and_names_what_was_folded():
    assert loop_subject("Alert #1041 at 10:00:01 UTC on 2026-11-27, request 3fa9b2c1") == \
        "alert <n> at <time> on <date>, request <n>"


def test_the_loop_key_is_the_fingerprint_with_its_subject_folded():
    assert loop_key("unclassified|alert #1041: checkout-api") == "unclassified|alert <n>: checkout-api"
    assert loop_key("apps_not_served") == "apps_not_served"      # platform-wide: the category alone
    assert loop_key(None) is None                               # noise, no incident, or an untrusted sender


def verdict_of(subject: str) -> Verdict:
    parsed = parse_message(make_message(subject=subject, body=BODY))
    return classify(parsed, received_at=datetime.now(timezone.utc), mail_from=None, own_addresses=(),
                    own_hostnames=(), policy=CONFIG.policy)


def test_a_loop_joins_the_senders_open_incident_as_a_repeat():
    verdict = verdict_of("Alert #1042: checkout-api 5xx above threshold")
    assert verdict.severity is not None and verdict.category not in GROUPING.platform_wide_categories
    own_ticket = Related(message_pk=5, severity=verdict.severity, ticket_id=70)
    loop = OpenGroup(group_id=3, dedup_key="emergencyd-loop", problem_pk=5, severity=verdict.severity,
                     sender_member=own_ticket)
    relation = relate(verdict, GroupingFacts(None, None, 1, own_ticket, None, sender_loop=loop), GROUPING)
    assert (relation.kind, relation.parent_pk, relation.group_id) == (REPEAT, 5, 3)
    assert "one loop, one incident" in relation.reason


def test_a_loop_stays_on_its_own_ticket_rather_than_join_another_tenants_incident():
    verdict = verdict_of("Alert #1042: checkout-api 5xx above threshold")
    own_ticket = Related(message_pk=5, severity=verdict.severity, ticket_id=70)
    others = OpenGroup(group_id=4, dedup_key="emergencyd-other", problem_pk=9, severity=verdict.severity,
                       sender_member=None)
    loop = OpenGroup(group_id=3, dedup_key="emergencyd-loop", problem_pk=5, severity=verdict.severity,
                     sender_member=own_ticket)
    relation = relate(verdict, GroupingFacts(None, None, 1, own_ticket, others, sender_loop=loop), GROUPING)
    assert (relation.kind, relation.parent_pk, relation.group_id) == (REPEAT, 5, 3)
    without_loop = relate(verdict, GroupingFacts(None, None, 1, own_ticket, others), GROUPING)
    assert (without_loop.kind, without_loop.group_id) == (INCIDENT, 4)


@pytest.fixture
def store(tmp_path):
    s = open_sqlite(tmp_path / "var" / "store.sqlite3", busy_timeout_ms=200)
    yield s
    s.close()


def decide(store: Store, sender: str, subject: str, n: int, *, trusted: bool = True) -> str:
    """What the escalator does on deciding (escalation/steps.py), with the store's real queries."""
    raw = make_message(subject=subject, body=BODY, sender=sender, message_id=f"<{n}@{sender.split('@')[1]}>")
    envelope = Envelope(source="smtp", mail_from=sender, rcpt_to=("emergency@example.org",), peer="127.0.0.1:5000",
                        helo="mx.example.net", tls=False, received_at=time.time())
    pk = store.ingest(raw, envelope).message_pk
    verdict = verdict_of(subject)
    print_ = fingerprint(verdict, parse_message(raw), GROUPING) if trusted else None
    facts = store.grouping_facts(pk, message_ids=(), ticket_ref=None, sender_key=sender, fingerprint=print_,
                                 received_at=envelope.received_at, settings=GROUPING)
    relation = relate(verdict, facts, GROUPING)
    store.plan(pk, subject=subject, sender=sender, steps=(TICKET,), verdict=verdict,
               relation=PlannedRelation(**asdict(relation), fingerprint=print_, sender_key=sender,
                                        category=verdict.category, severity=verdict.severity))
    return relation.kind


def test_through_the_store_one_senders_loop_is_one_incident_and_another_tenant_stays_apart(store):
    loop = "Alert #{}: checkout-api 5xx above threshold at 10:{:02d}"
    assert [decide(store, "alerts@a.example", loop.format(1041 + n, n), n) for n in range(4)] == \
        [FIRST, REPEAT, REPEAT, REPEAT]
    # Another tenant's loop of the same shape: its own incident, then its own repeats.
    assert [decide(store, "alerts@b.example", loop.format(7001 + n, n), 10 + n) for n in range(2)] == \
        [FIRST, REPEAT]
    # The same subject as one of tenant a's: today's cross-tenant fingerprint makes it another report.
    assert decide(store, "ops@c.example", loop.format(1041, 0), 20) == INCIDENT
    assert len(store.groups()) == 2


def test_an_untrusted_sender_keeps_todays_behaviour(store):
    loop = "Alert #{}: checkout-api 5xx above threshold"
    kinds = [decide(store, "alerts@a.example", loop.format(1041 + n), n, trusted=False) for n in range(3)]
    assert kinds == [FIRST] * 3       # none folds; the escalator then gives each a ticket of its own


def test_the_queries_of_deciding_find_related_mail_through_the_indexes_of_decided_mail(store):
    """Sender, loop key and group are indexed for decided mail only (store migration 14): every query that
    looks them up must still be answered from an index, never by reading every escalation."""
    raw = store._conn._raw
    statements: list[str] = []
    raw.set_trace_callback(statements.append)
    loop = "Alert #{}: checkout-api 5xx above threshold"
    for n in range(3):
        decide(store, "alerts@a.example", loop.format(1041 + n), n)
    decide(store, "ops@c.example", loop.format(1041), 10)
    [group] = store.groups()
    store.group(group["group_id"])
    raw.set_trace_callback(None)
    lookups = {s for s in statements if s.lstrip().upper().startswith("SELECT")
               and any(column in s for column in ("sender_key", "loop_key", "group_id"))}
    assert len(lookups) >= 5      # the sender's recent and latest mail, its loop, the group's members
    for sql in lookups:
        plan = [row[3] for row in raw.execute(f"EXPLAIN QUERY PLAN {sql}")]
        assert not any(step.startswith("SCAN e") for step in plan), (sql, plan)
