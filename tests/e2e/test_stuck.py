"""A poison message: deciding one mail fails every time. It is tried a few times, then stuck (shown,
counted, alerted on), never a loop for ever, and other mail is decided meanwhile; once the cause is
fixed, `emergencyd rearm ID` decides it. The failure is real: the test's own store refuses that one
row's plan (an SQLite trigger), as a damaged row or a bug in planning would."""
from __future__ import annotations

import sqlite3
import time

from emergencyd.escalation.records import DONE, MAX_DECIDE_ATTEMPTS, STUCK
from tests.harness import OUTAGE, make_message


def wait_for(predicate, timeout: float = 20.0, what: str = ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (found := predicate()):
            return found
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout} s: {what}")


def test_a_mail_that_cannot_be_decided_gets_stuck_and_is_decided_once_rearmed(live_daemon, zendesk, pagerduty):
    daemon = live_daemon(policy=True)
    store = daemon.config.parent / "var" / "store.sqlite3"
    with sqlite3.connect(store) as conn:
        conn.execute("CREATE TRIGGER poison BEFORE UPDATE OF state ON escalations"
                     " WHEN NEW.state IN ('pending', 'suppressed')"
                     " AND (SELECT message_id FROM messages WHERE id = NEW.message_pk) = 'poison@tenant.example'"
                     " BEGIN SELECT RAISE(ABORT, 'this row cannot be planned'); END")
    daemon.send(make_message(sender="ops@tenant.example", message_id="<poison@tenant.example>", **OUTAGE))
    daemon.send(make_message(sender="dev@other.example", message_id="<fine@other.example>", subject="Breach",
                             body="We have a serious security breach: someone is in our database."))

    def stuck():
        return next((m for m in daemon.status()["messages"] if m["state"] == STUCK), None)
    poisoned = wait_for(stuck, what="the poisoned mail stuck")
    assert poisoned["message_id"] == "poison@tenant.example"
    assert poisoned["decide_failures"] == MAX_DECIDE_ATTEMPTS
    assert "this row cannot be planned" in poisoned["decide_error"]
    fine = wait_for(lambda: next((m for m in daemon.status()["messages"]
                                  if m["message_id"] == "fine@other.example" and m["state"] == DONE), None),
                    what="the other mail decided and paged meanwhile")
    assert [i["dedup_key"] for i in pagerduty.incidents()] == [fine["page_key"]]
    assert daemon.metric("emergencyd_escalations_stuck") == 1
    assert daemon.metric("emergencyd_escalations_became_stuck_total") == 1
    time.sleep(1.5)   # no further tries: the count stays where it stopped
    assert next(m for m in daemon.status()["messages"] if m["id"] == poisoned["id"])["decide_failures"] == \
        MAX_DECIDE_ATTEMPTS
    assert "emergencyd rearm" in daemon.cli("status").stdout

    refused = daemon.cli("rearm", str(fine["id"]), check=False)
    assert refused.returncode == 1 and "not stuck; nothing changed" in refused.stderr
    with sqlite3.connect(store) as conn:
        conn.execute("DROP TRIGGER poison")                  # the cause, fixed
    daemon.cli("rearm", str(poisoned["id"]))
    done = wait_for(lambda: next((m for m in daemon.status()["messages"]
                                  if m["id"] == poisoned["id"] and m["state"] == DONE), None),
                    what="the rearmed mail decided and paged")
    assert sorted(i["dedup_key"] for i in pagerduty.incidents()) == sorted([fine["page_key"], done["page_key"]])
    assert daemon.metric("emergencyd_escalations_stuck") == 0
