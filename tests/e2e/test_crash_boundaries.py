"""kill -9 once at each step boundary of the escalation state machine (escalation/records.py).

For every step, two moments:
  effect   after the step's external effect, before its commit: the fake applies the
           request and holds the answer (`hold`), the daemon is killed while it waits;
  commit   after the step's commit, before the next step's call has any effect: the
           next call is refused with 503 (a refusal never changes a fake's state), the
           daemon is killed once that call was made. After link_page, the last step, the
           kill comes once everything is committed, and the next start must send nothing.
A restarted daemon must end with one ticket, one incident, one link each way, a reply's
comment exactly once, and one fallback alert (PagerDuty down until after the kill).

Boundaries that tests/e2e/test_crash.py already covers are not repeated here:
  ticket/effect     test_killed_after_the_effect_and_before_its_commit[zendesk-...-ticket]
  page/effect       test_killed_between_ticket_and_page
  link_ticket/effect  test_killed_between_page_and_link
  link_page/effect  test_killed_after_the_effect_and_before_its_commit[pagerduty-...-link_page]
fallback_alert is covered at its commit only: the fake relay cannot hold its answer, and
a kill between the relay's 250 and the commit sends the alert again by design (at least
once, escalation/fallback.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pytest

from emergencyd.escalation.records import (
    COMMENT,
    FALLBACK_ALERT,
    LINK_PAGE,
    LINK_TICKET,
    PAGE,
    STEP_ORDER,
    TICKET_NOTE,
    RelationKind,
)
from tests.harness import TICKET_UPDATE, assert_one_of_everything, make_message
from tests.raw_smtp import done_steps

INCIDENT_LOOKUP = r"^/incidents(\?|$)"
INCIDENT_NOTE = r"/incidents/\w+/notes"
ALL_STEPS = ("ticket", "ticket_note", "page", "link_ticket", "link_page")     # of the first mail
COVERED_IN_TEST_CRASH = {("ticket", "effect"), ("page", "effect"), ("link_ticket", "effect"), ("link_page", "effect")}
NOT_COVERED = {("fallback_alert", "effect")}     # see above
# POST/PUT calls of one escalation: ticket, envelope note, page, link note, incident note.
COMPLETE_ESCALATION_CHANGES = 5
FIRST = make_message(message_id="<first@tenant.example>")
REPLY = make_message(subject="Re: Apps down", body="Still down here, any news?", message_id="<reply@tenant.example>",
                     extra_headers="In-Reply-To: <first@tenant.example>\r\n")


@dataclass(frozen=True)
class Boundary:
    step: str
    moment: str                  # effect | commit
    crash: Callable              # (daemon, zendesk, pagerduty[, relay]): gets the daemon to the moment, kills it
    reply: bool = False          # the step belongs to a second, related mail
    relay: bool = False          # the fallback alert is configured, through a fake relay

    @property
    def id(self) -> str:
        return f"{self.step}-after-its-{self.moment}"


def wait_done(daemon, *steps: str, message_id: str = "first@tenant.example") -> None:
    """Until the store has each step committed done (cheaper than `status`, and unlike the log lines
    it holds even when a kill -9 fell between a commit and its log line)."""
    store = daemon.config.parent / "var" / "store.sqlite3"
    daemon.wait_for(lambda: set(steps) <= done_steps(store, message_id), timeout=30, interval=0.05,
                    what=f"{', '.join(steps)} done")


def refuse(fake, path: str, method: str):
    """Refuse every matching call with 503 from now on; returns a wait for the first refused one."""
    fake.inject_status(503, times=None, path=path, method=method)
    return lambda daemon: daemon.wait_for(
        lambda: any(r.fault == "status:503" for r in fake.requests_matching(path, method)), timeout=30,
        what=f"a refused {method} {path}")


def kill_and_restart(daemon, *fakes) -> None:
    daemon.kill9()
    for fake in fakes:
        fake.clear_faults()      # releases holds, ends refusals
    daemon.start()


# --- after the effect, before its commit --------------------------------------------------

def ticket_note_effect(daemon, zendesk, pagerduty):
    pagerduty.hold(path="/v2/enqueue")                   # no link note can run meanwhile
    note = zendesk.hold(path=TICKET_UPDATE, method="PUT")
    daemon.send(FIRST)
    held = note.wait_received(20)
    assert held is not None and b"[emergencyd:envelope:" in held.body, daemon.log_text()
    kill_and_restart(daemon, zendesk, pagerduty)


def comment_effect(daemon, zendesk, pagerduty):
    comment = zendesk.hold(path=TICKET_UPDATE, method="PUT")
    daemon.send(REPLY)
    held = comment.wait_received(20)
    assert held is not None and b"[ref " in held.body, daemon.log_text()
    kill_and_restart(daemon, zendesk, pagerduty)


# --- after the commit, before the next step's call ----------------------------------------

def ticket_commit(daemon, zendesk, pagerduty):
    refused = refuse(zendesk, TICKET_UPDATE, "PUT")      # the envelope note, next
    daemon.send(FIRST)
    refused(daemon)           # the note starts only once the ticket is committed
    kill_and_restart(daemon, zendesk, pagerduty)


def ticket_note_commit(daemon, zendesk, pagerduty):
    page = pagerduty.hold(path="/v2/enqueue")            # the link note waits for the page
    daemon.send(FIRST)
    wait_done(daemon, TICKET_NOTE)
    refused = refuse(zendesk, TICKET_UPDATE, "PUT")      # the link note, next
    page.release()
    refused(daemon)
    kill_and_restart(daemon, zendesk, pagerduty)


def comment_commit(daemon, zendesk, pagerduty):
    refused = refuse(pagerduty, INCIDENT_LOOKUP, "GET")  # the reply's page looks its incident up, next
    daemon.send(REPLY)
    refused(daemon)
    wait_done(daemon, COMMENT, message_id="reply@tenant.example")
    kill_and_restart(daemon, zendesk, pagerduty)


def page_commit(daemon, zendesk, pagerduty):
    refused = refuse(pagerduty, INCIDENT_LOOKUP, "GET")  # both links look the incident up, next
    daemon.send(FIRST)
    refused(daemon)           # the links start only once the page is committed
    kill_and_restart(daemon, zendesk, pagerduty)


def link_ticket_commit(daemon, zendesk, pagerduty):
    refused = refuse(pagerduty, INCIDENT_NOTE, "POST")   # the incident's note, next
    daemon.send(FIRST)
    wait_done(daemon, LINK_TICKET)
    refused(daemon)
    kill_and_restart(daemon, zendesk, pagerduty)


def link_page_commit(daemon, zendesk, pagerduty):
    # The last step: killed once everything is committed, the next start must change nothing.
    daemon.send(FIRST)
    wait_done(daemon, *ALL_STEPS)
    kill_and_restart(daemon, zendesk, pagerduty)


def fallback_alert_commit(daemon, zendesk, pagerduty, relay):
    pagerduty.set_down()      # every call 503: the page is overdue after `after_seconds`
    daemon.send(FIRST)
    relay.wait_for(1, timeout=20)
    wait_done(daemon, FALLBACK_ALERT)
    kill_and_restart(daemon, zendesk, pagerduty)     # PagerDuty is back: the page goes, once


def changes(*fakes) -> int:
    return sum(len([r for r in fake.requests if r.method in ("POST", "PUT")]) for fake in fakes)


BOUNDARIES = [
    Boundary("ticket", "commit", ticket_commit),
    Boundary("ticket_note", "effect", ticket_note_effect),
    Boundary("ticket_note", "commit", ticket_note_commit),
    Boundary("comment", "effect", comment_effect, reply=True),
    Boundary("comment", "commit", comment_commit, reply=True),
    Boundary("page", "commit", page_commit),
    Boundary("link_ticket", "commit", link_ticket_commit),
    Boundary("link_page", "commit", link_page_commit),
    Boundary("fallback_alert", "commit", fallback_alert_commit, relay=True),
]


def test_every_step_has_its_boundaries_covered():
    covered = COVERED_IN_TEST_CRASH | {(b.step, b.moment) for b in BOUNDARIES}
    missing = {(s, m) for s in STEP_ORDER for m in ("effect", "commit")} - covered - NOT_COVERED
    assert not missing, f"steps without a kill -9 test: {sorted(missing)}"


@pytest.fixture
def relay():
    from tests.fakes.smtp_relay import FakeRelay
    with FakeRelay() as fake:
        yield fake


def fallback_config(relay) -> str:
    return (f'[fallback]\nenabled = true\nrelay = "{relay.address}"\nstarttls = false\n'
            'from_address = "emergencyd@example.org"\nto = ["oncall-fallback@example.org"]\nafter_seconds = 1\n')


@pytest.mark.parametrize("boundary", BOUNDARIES, ids=lambda b: b.id)
def test_killed_at_a_step_boundary(request, live_daemon, zendesk, pagerduty, boundary):
    relay = request.getfixturevalue("relay") if boundary.relay else None
    daemon = live_daemon(extra=fallback_config(relay)) if relay else live_daemon()
    if boundary.reply:
        daemon.send(FIRST)
        wait_done(daemon, *ALL_STEPS)
    before = changes(zendesk, pagerduty)
    boundary.crash(daemon, zendesk, pagerduty, *([relay] if relay else []))
    wait_done(daemon, *ALL_STEPS)        # cheaper than polling `status` until settled
    if boundary.reply:
        assert_commented_once(daemon, zendesk, pagerduty)
        return
    assert_one_of_everything(daemon, zendesk, pagerduty)
    if boundary.step == LINK_PAGE:
        assert changes(zendesk, pagerduty) == before + COMPLETE_ESCALATION_CHANGES
    if relay:
        assert len(relay.accepted()) == 1


def assert_commented_once(daemon, zendesk, pagerduty):
    """The first mail's ticket, incident and links once each; the reply's comment once, on that ticket."""
    wait_done(daemon, COMMENT, PAGE, LINK_TICKET, message_id="reply@tenant.example")
    doc = daemon.wait_settled(2, timeout=30)
    assert doc["counts"] == {"done": 2}, doc["counts"]
    first, reply = sorted(doc["messages"], key=lambda m: m["id"])
    [ticket] = zendesk.tickets()
    [incident] = pagerduty.incidents()
    assert first["ticket_id"] == ticket["id"] and incident["dedup_key"] == first["dedup_key"]
    assert reply["relation"] == RelationKind.THREAD and reply["ticket_id"] == ticket["id"]
    comments = [c for c in zendesk.comments(ticket["id"]) if f"[ref {reply['dedup_key']}]" in c["body"]]
    assert len(comments) == 1 and comments[0]["public"]
    notes = [c["body"] for c in zendesk.comments(ticket["id"]) if not c["public"]]
    assert len([n for n in notes if f"[emergencyd:envelope:{first['dedup_key']}]" in n]) == 1
    assert len([n for n in notes if f"[emergencyd:paged:{first['dedup_key']}]" in n]) == 1
    assert len([n for n in incident["notes"] if f"/agent/tickets/{ticket['id']}" in n["content"]]) == 1
