"""Fault storms and whole-run outages of Zendesk and PagerDuty, end to end through the fakes.

Every case ends the same way: every mail settled, exactly one ticket per ticket-worthy
mail, one incident per dedup_key, and each note, link and comment exactly once.
The storm's fault schedule is seeded; the seed is printed, and shown when a test fails.
"""
from __future__ import annotations

import math
import os
import random
import re
import smtplib
import time
from collections import Counter
from dataclasses import dataclass
from email.utils import formatdate

import pytest

from emergencyd.escalation.records import (
    COMMENT,
    DONE,
    PAGE,
    STEP_DONE,
    SUPPRESSED,
    TICKET,
    TICKET_NOTE,
    RelationKind,
)
from tests.harness import RECIPIENT, make_message

SEED = int(os.environ.get("EMERGENCYD_FAULT_SEED", "20261127"))
FAST_ZENDESK = "requests_per_minute = 60000\n"      # no pacing: the faults decide the timing
CLIENT_TIMEOUT = 3.0                                  # timeout_seconds of both clients in the test config
SLOW = CLIENT_TIMEOUT + 0.5                           # answers after the client gave up, effect applied
RETRY_AFTER = 2                                       # seconds, in 429s; the HTTP-date form gives 2-3 s
IN_FLIGHT = 1.0                                       # a call arriving this soon after a 429 may have been sent before
POLL = 0.4                                            # seconds between `status` polls
SETTLE = 45.0                                         # generous: a stuck mail fails the test, it never hangs it
KIND_TICKET = "ticket"                                # a Mail kind: its own ticket (and page)
ZENDESK_INCIDENT = "incident"                        # the Zendesk ticket type of a report under a problem

# Fault kinds served over the whole module, per fake: the figures behind docs/testing.md's robustness table.
SERVED: dict[str, Counter] = {"zendesk": Counter(), "pagerduty": Counter()}
RETRY_AFTER_FORMS: dict[str, Counter] = {"zendesk": Counter(), "pagerduty": Counter()}   # of the 429s


@dataclass(frozen=True)
class Mail:
    raw: bytes
    sender: str
    subject: str
    message_id: str          # without angle brackets, as `status` shows it
    kind: str                # ticket: its own ticket (and page) | follow_up: a comment | noise: suppressed
    group: str | None        # the incident it belongs to
    parent: str | None = None  # follow-ups: the message_id whose ticket gets the comment


def mail(n: int, kind: str, group: str | None, *, sender: str, subject: str, body: str,
         parent: str | None = None, headers: str = "") -> Mail:
    message_id = f"storm-{n}@{sender.split('@')[1]}"
    raw = make_message(subject=subject, body=f"{body} [case {n}]", sender=sender, message_id=f"<{message_id}>",
                       extra_headers=headers)
    return Mail(raw, sender, subject, message_id, kind, group, parent)


class Scenario:
    """Mails in arrival order: incidents, other tenants' reports, repeats, replies and noise."""

    def __init__(self) -> None:
        self.mails: list[Mail] = []
        self._first_of_sender: dict[tuple[str, str], str] = {}

    def report(self, group: str, sender: str, subject: str, body: str) -> Mail:
        key = (group, sender)
        parent = self._first_of_sender.get(key)
        m = mail(len(self.mails), "follow_up" if parent else KIND_TICKET, group, sender=sender, subject=subject,
                 body=body, parent=parent)
        self._first_of_sender.setdefault(key, m.message_id)
        self.mails.append(m)
        return m

    def reply(self, to: Mail, body: str) -> Mail:
        m = mail(len(self.mails), "follow_up", to.group, sender=to.sender, subject=f"Re: {to.subject}",
                 body=body, parent=to.message_id, headers=f"In-Reply-To: <{to.message_id}>\r\n")
        self.mails.append(m)
        return m

    def noise(self) -> Mail:
        m = mail(len(self.mails), "noise", None, sender="away@tenant9.example", subject="Out of office",
                 body="I am away until Monday.", headers="Auto-Submitted: auto-replied\r\n")
        self.mails.append(m)
        return m


def apps_down(s: Scenario, tenant: int) -> Mail:
    return s.report("apps", f"ops@tenant{tenant}.example", "All our apps are down",
                    "Our apps return 502 for every route.")


def fix_blocked(s: Scenario, tenant: int) -> Mail:
    return s.report("fix", f"dev@tenant{tenant}.example", "Cannot deploy emergency fix",
                    "We cannot push an emergency fix because the API is down.")


def breach(s: Scenario) -> Mail:
    return s.report("breach", "ciso@tenant7.example", "Possible security breach",
                    "We think an attacker has compromised our space.")


def database(s: Scenario, n: int) -> Mail:
    return s.report(f"db{n}", f"dba@tenant{20 + n}.example", f"Database {n} unreachable", f"Database {n} is down.")


def outage_scenario() -> list[Mail]:
    """Three incidents, two more tenants of one of them, a repeat and two replies: 8 mails."""
    s = Scenario()
    apps_down(s, 1)
    apps_down(s, 2)
    ciso = breach(s)
    db = database(s, 1)
    apps_down(s, 3)
    apps_down(s, 1)                         # the same tenant again: a comment on their ticket
    s.reply(ciso, "Any news on this?")
    s.reply(db, "Still unreachable from here.")
    return s.mails


def storm_scenario() -> list[Mail]:
    """Seven incidents, several tenants of two of them, repeats, replies and an auto-reply: 23 mails."""
    s = Scenario()
    first = apps_down(s, 1)
    apps_down(s, 2)
    fix = fix_blocked(s, 5)
    ciso = breach(s)
    dbs = [database(s, n) for n in (1, 2, 3)]
    apps_down(s, 3)
    fix_blocked(s, 6)
    database(s, 4)
    apps_down(s, 4)
    apps_down(s, 1)
    s.reply(ciso, "Any news on this?")
    s.reply(dbs[0], "Still unreachable from here.")
    s.noise()
    apps_down(s, 2)
    fix_blocked(s, 5)
    s.reply(first, "Customers are calling us.")
    s.reply(dbs[2], "We see timeouts too.")
    apps_down(s, 5)
    s.reply(fix, "Please hurry.")
    s.reply(ciso, "We rotated our keys.")
    apps_down(s, 3)
    return s.mails


def send_all(daemon, mails: list[Mail]) -> None:
    with smtplib.SMTP("127.0.0.1", daemon.smtp_port, timeout=10) as client:
        for m in mails:
            assert client.sendmail(m.sender, [RECIPIENT], m.raw) == {}


def by_message_id(doc: dict) -> dict[str, dict]:
    return {m["message_id"]: m for m in doc["messages"]}


def ticket_mails(mails: list[Mail]) -> list[Mail]:
    return [m for m in mails if m.kind == KIND_TICKET]


def count_in(texts: list[str], marker: str) -> int:
    return sum(text.count(marker) for text in texts)


def assert_final_state(daemon, zendesk, pagerduty, mails: list[Mail]) -> dict[str, dict]:
    """Nothing lost, nothing twice: tickets, envelope notes, comments, pages and both links."""
    doc = wait_settled(daemon, len(mails))
    status = by_message_id(doc)
    assert sum(doc["counts"].values()) == len(mails), doc["counts"]
    for m in mails:
        expected = SUPPRESSED if m.kind == "noise" else DONE
        assert status[m.message_id]["state"] == expected, status[m.message_id]

    # One ticket per ticket-worthy mail, found by its external_id; none for anything else.
    tickets = zendesk.tickets()
    assert len(tickets) == len(ticket_mails(mails)), [t["external_id"] for t in tickets]
    ticket_of: dict[str, dict] = {}
    for m in ticket_mails(mails):
        [ticket] = zendesk.tickets_with_external_id(status[m.message_id]["dedup_key"])
        assert ticket["id"] == status[m.message_id]["ticket_id"]
        ticket_of[m.message_id] = ticket

    # Per incident: one problem ticket, the other tenants' incident tickets under it, one PagerDuty incident.
    incidents = pagerduty.incidents()
    assert not [k for k, n in Counter(i["dedup_key"] for i in incidents).items() if n > 1], "an incident twice"
    groups = {m.group for m in ticket_mails(mails)}
    assert len(incidents) == len(groups)
    incident_of_group = {}
    for group in groups:
        members = [m for m in ticket_mails(mails) if m.group == group]
        # The report decided first opens the incident. Other tenants' reports that arrive together are
        # decided side by side, so that need not be the first to arrive.
        [problem] = [ticket_of[m.message_id] for m in members if ticket_of[m.message_id]["type"] == "problem"]
        for other in (m for m in members if ticket_of[m.message_id] is not problem):
            assert ticket_of[other.message_id]["type"] == ZENDESK_INCIDENT
            assert ticket_of[other.message_id]["problem_id"] == problem["id"]
        keys = {status[m.message_id]["page_key"] for m in members}
        [key] = keys
        [incident] = [i for i in incidents if i["dedup_key"] == key]
        incident_of_group[group] = incident
    # Only reports page: no follow-up triggered anything (a retried trigger folds into its alert).
    paged = {e["payload"]["custom_details"]["message_id"] for e in pagerduty.events()
             if e["event_action"] == "trigger"}
    assert paged == {m.message_id for m in ticket_mails(mails)}

    # Each ticket: its envelope note and its link note exactly once; its incident: a note back, exactly once.
    all_comments = {t["id"]: zendesk.comments(t["id"]) for t in tickets}
    for m in ticket_mails(mails):
        key = status[m.message_id]["dedup_key"]
        notes = [c["body"] for c in all_comments[ticket_of[m.message_id]["id"]] if not c["public"]]
        assert count_in(notes, f"[emergencyd:envelope:{key}]") == 1, (m.message_id, notes)
        assert count_in(notes, f"[emergencyd:paged:{key}]") == 1, (m.message_id, notes)
        pd_notes = [n["content"] for n in incident_of_group[m.group]["notes"]]
        assert count_in(pd_notes, f"[emergencyd:ticket:{key}]") == 1, (m.message_id, pd_notes)
        assert f"/agent/tickets/{ticket_of[m.message_id]['id']}" in "".join(pd_notes)

    # Each follow-up: one public comment, on the ticket of the mail it follows, and on no other ticket.
    for m in mails:
        if m.kind != "follow_up":
            continue
        marker = f"[ref {status[m.message_id]['dedup_key']}]"
        where = {tid: count_in([c["body"] for c in comments if c["public"]], marker)
                 for tid, comments in all_comments.items()}
        assert {tid: n for tid, n in where.items() if n} == {ticket_of[m.parent]["id"]: 1}, m.message_id

    # Noise: nothing sent about it.
    for m in mails:
        if m.kind == "noise":
            assert "ticket_id" not in status[m.message_id] or status[m.message_id]["ticket_id"] is None
    return status


def wait_settled(daemon, count: int) -> dict:
    """As DaemonProcess.wait_settled, polling less often: each poll starts a `status` process,
    and a busy machine delays the daemon's requests, which the Retry-After check must tell apart."""
    def settled():
        doc = daemon.status()
        counts = doc["counts"]
        return doc if sum(counts.values()) >= count and not counts.get("new") and not counts.get("pending") else None
    return daemon.wait_for(settled, SETTLE, interval=POLL, what=f"{count} settled escalations")


def paging_mails_paged(daemon, mails: list[Mail]):
    """Status once every ticket-worthy mail's page step is done; None before."""
    status = by_message_id(daemon.status())
    wanted = [status.get(m.message_id) for m in ticket_mails(mails)]
    if all(s and s["steps"].get(PAGE, {}).get("state") == STEP_DONE for s in wanted):
        return status
    return None


def record_served(zendesk, pagerduty) -> None:
    for name, fake in (("zendesk", zendesk), ("pagerduty", pagerduty)):
        SERVED[name].update(r.fault for r in fake.requests if r.fault)


@pytest.fixture(scope="module", autouse=True)
def report_served_faults():
    yield
    for name, counts in SERVED.items():
        print(f"\nfaults served by the {name} fake: {dict(sorted(counts.items()))}, total {sum(counts.values())}; "
              f"Retry-After forms of its 429s: {dict(sorted(RETRY_AFTER_FORMS[name].items()))}")


# --- whole-run outages ------------------------------------------------------------------------


def test_zendesk_down_for_the_whole_run_then_back(live_daemon, zendesk, pagerduty):
    mails = outage_scenario()
    zendesk.set_down(True)
    daemon = live_daemon(policy=True, extra_zendesk=FAST_ZENDESK)
    send_all(daemon, mails)

    # Every page goes out while Zendesk is still down: without a ticket link, none waiting on it.
    daemon.wait_for(lambda: paging_mails_paged(daemon, mails), SETTLE, interval=POLL, what="every page")
    # The outage outlasts retries: every incident's first ticket has been tried again. The others wait for
    # it: they go under it as incident tickets.
    def tickets_retried():
        status = by_message_id(daemon.status())
        firsts = [s for s in status.values() if s["relation"] == RelationKind.FIRST]
        return (len(firsts) == len({m.group for m in ticket_mails(mails)})
                and all(s["steps"][TICKET]["attempts"] >= 2 for s in firsts))
    daemon.wait_for(tickets_retried, SETTLE, interval=POLL, what="the tickets to be retried")
    assert zendesk.tickets() == []
    assert zendesk.requests and {r.fault for r in zendesk.requests} == {"down"}
    groups = {m.group for m in ticket_mails(mails)}
    assert len(pagerduty.incidents()) == len(groups)
    assert not [e for e in pagerduty.events() if e.get("links")]

    zendesk.set_down(False)
    assert_final_state(daemon, zendesk, pagerduty, mails)
    record_served(zendesk, pagerduty)


def test_pagerduty_down_for_the_whole_run_then_back(live_daemon, zendesk, pagerduty):
    mails = outage_scenario()
    pagerduty.set_down(True)
    daemon = live_daemon(policy=True, extra_zendesk=FAST_ZENDESK)
    send_all(daemon, mails)

    # Tickets, their envelope notes and the follow-ups' comments all go out while PagerDuty is down.
    def zendesk_side_done():
        status = by_message_id(daemon.status())
        steps = [s["steps"].get(name, {}).get("state") for s in status.values()
                 for name in (TICKET, TICKET_NOTE, COMMENT) if name in s["steps"]]
        return len(status) == len(mails) and steps and set(steps) == {STEP_DONE}
    daemon.wait_for(zendesk_side_done, SETTLE, interval=POLL, what="the Zendesk side")
    assert len(zendesk.tickets()) == len(ticket_mails(mails))
    assert pagerduty.incidents() == [] and pagerduty.events() == []
    assert pagerduty.requests and {r.fault for r in pagerduty.requests} == {"down"}

    pagerduty.set_down(False)
    status = assert_final_state(daemon, zendesk, pagerduty, mails)
    # Once back, each paging mail triggers exactly once, carrying its ticket's link.
    triggers = [e for e in pagerduty.events() if e["event_action"] == "trigger"]
    sent = Counter(e["payload"]["custom_details"]["message_id"] for e in triggers)
    assert sent == Counter(m.message_id for m in ticket_mails(mails))
    for event in triggers:
        ticket_id = status[event["payload"]["custom_details"]["message_id"]]["ticket_id"]
        assert any(link["href"].endswith(f"/agent/tickets/{ticket_id}") for link in event["links"])
    record_served(zendesk, pagerduty)


# --- a seeded storm of faults ----------------------------------------------------------------

# Endpoints the storm hits: (service, method, path regex searched in the request target).
ENDPOINTS = {
    "create ticket": ("zendesk", "POST", r"^/api/v2/tickets\.json$"),
    "update ticket": ("zendesk", "PUT", r"^/api/v2/tickets/\d+\.json$"),      # notes and comments
    "enqueue event": ("pagerduty", "POST", r"^/v2/enqueue$"),
    "find incident": ("pagerduty", "GET", r"^/incidents\?"),
    "add note": ("pagerduty", "POST", r"^/incidents/\w+/notes$"),
}
# Slow answers, on every endpoint that writes: the effect is applied, the client has given up.
SLOW_ON = ("create ticket", "update ticket", "enqueue event", "add note")
RANDOM_KINDS = ("429-seconds", "429-date", "500", "502", "503", "drop", "malformed")
EXTRA_FAULTS_PER_SERVICE = 6


@dataclass(frozen=True)
class PlannedFault:
    endpoint: str
    kind: str
    times: int

    @property
    def service(self) -> str:
        return ENDPOINTS[self.endpoint][0]

    @property
    def label(self) -> str:
        """What the fakes record for it."""
        if self.kind.startswith("429"):
            return "status:429"
        return {"slow": f"delay:{SLOW:g}", "drop": "drop", "malformed": "malformed"}.get(
            self.kind, f"status:{self.kind}")


def rate_limit_scope(path: str) -> str:
    """What one Retry-After pauses: Zendesk's limit is the account's; PagerDuty limits its Events
    API and its REST API apart (and a REST pause must never hold back a page)."""
    if path.startswith("/api/v2/"):
        return "zendesk"
    return "pagerduty events" if path.startswith("/v2/") else "pagerduty rest"


@dataclass
class RetryAfterLog:
    """Each 429 served: its scope, its form, when it was answered and when its Retry-After ends,
    both on the fakes' monotonic clock."""
    entries: list[tuple[str, str, float, float]]

    def seconds(self, scope: str, value: int):
        def header() -> str:
            now = time.monotonic()
            self.entries.append((scope, "seconds", now, now + value))
            return str(value)
        return header

    def date(self, scope: str, at_least: int):
        def header() -> str:
            wall = math.floor(time.time()) + at_least + 1     # whole seconds: at least `at_least` from now
            now = time.monotonic()
            self.entries.append((scope, "date", now, now + (wall - time.time())))
            return formatdate(wall, usegmt=True)
        return header


def baseline_requests(mails: list[Mail]) -> dict[str, int]:
    """Requests each endpoint gets at least, faults or not: one success per effect."""
    tickets = len(ticket_mails(mails))
    follow_ups = sum(1 for m in mails if m.kind == "follow_up")
    return {"create ticket": tickets, "update ticket": 2 * tickets + follow_ups,
            "enqueue event": tickets, "find incident": 2 * tickets, "add note": tickets}


def fault_schedule(rng: random.Random, mails: list[Mail]) -> list[PlannedFault]:
    """A slow answer on each writing endpoint, every kind on each service, then random ones.

    No endpoint gets more faulty answers than half the requests it gets at least, so every
    planned fault is served whatever the timing, and the test can insist that it was.
    """
    budget = {name: n // 2 for name, n in baseline_requests(mails).items()}
    plan = [PlannedFault(endpoint, "slow", 1) for endpoint in SLOW_ON]
    for endpoint in SLOW_ON:
        budget[endpoint] -= 1
    for service in ("zendesk", "pagerduty"):
        endpoints = [name for name, (svc, _, _) in ENDPOINTS.items() if svc == service]
        kinds = list(RANDOM_KINDS) + [rng.choice(RANDOM_KINDS) for _ in range(EXTRA_FAULTS_PER_SERVICE)]
        for kind in kinds:
            candidates = [e for e in endpoints if budget[e] > 0]
            if not candidates:
                break               # the extras only: every kind comes first
            endpoint = rng.choice(candidates)
            times = min(budget[endpoint], rng.choice((1, 1, 2, 3)))    # a burst: concurrent calls all get it
            budget[endpoint] -= times
            plan.append(PlannedFault(endpoint, kind, times))
    rng.shuffle(plan)
    return plan


def inject(plan: list[PlannedFault], fakes: dict, retry_after: RetryAfterLog) -> None:
    for fault in plan:
        service, method, path = ENDPOINTS[fault.endpoint]
        fake = fakes[service]
        where = {"times": fault.times, "path": path, "method": method}
        scope = rate_limit_scope({"create ticket": "/api/v2/", "update ticket": "/api/v2/",
                                  "enqueue event": "/v2/"}.get(fault.endpoint, "/incidents"))
        if fault.kind == "429-seconds":
            fake.inject_status(429, headers={"Retry-After": retry_after.seconds(scope, RETRY_AFTER)}, **where)
        elif fault.kind == "429-date":
            fake.inject_status(429, headers={"Retry-After": retry_after.date(scope, RETRY_AFTER)}, **where)
        elif fault.kind.isdigit():
            fake.inject_status(int(fault.kind), **where)
        elif fault.kind == "slow":
            fake.inject_delay(SLOW, **where)
        elif fault.kind == "drop":
            fake.inject_drop(**where)
        else:
            fake.inject_malformed(**where)


# The markers our notes and comments carry, so that a retry can be told from other steps' calls.
MARKER = re.compile(rb"\[(?:emergencyd:[a-z]+:|ref )emergencyd-[0-9a-f]{40}\]")


def call_identity(request) -> str | None:
    """What a call acts on: the ticket's external_id, the paging mail, or a note's marker."""
    if request.path == "/api/v2/tickets.json":       # a create, or a retry's look-up by external_id
        return request.query.get("external_id") or ((request.json or {}).get("ticket") or {}).get("external_id")
    if request.path == "/v2/enqueue":
        return ((request.json or {}).get("payload") or {}).get("custom_details", {}).get("message_id")
    found = MARKER.search(request.body)
    return found.group().decode() if found else None


def retries_inside_a_pause(fake, log: RetryAfterLog) -> list[str]:
    """A call told 429 coming again, for the same ticket, page or note, before its Retry-After ended.

    Load cannot excuse this one: the next attempt's time is computed from the Retry-After."""
    found = []
    told = [r for r in fake.requests if r.fault == "status:429" and call_identity(r)]
    for r in told:
        # Its own entry was answered just after it arrived; of any near it, take the shortest pause.
        answered_at, until = min(((a, u) for scope, _, a, u in log.entries
                                  if scope == rate_limit_scope(r.path) and r.received_at <= a < r.received_at + 1),
                                 key=lambda e: e[1])
        again = [x for x in fake.requests if x.received_at > answered_at and call_identity(x) == call_identity(r)]
        if again and again[0].received_at < until:
            found.append(f"{r.method} {r.path} again at +{again[0].received_at - answered_at:.3f}s of a "
                         f"{until - answered_at:.2f}s Retry-After")
    return found


def calls_inside_a_pause(fake, log: RetryAfterLog) -> list[str]:
    """Any call to the paused API (Zendesk; PagerDuty's Events or REST API) inside a Retry-After.

    A call sent before the client had read the 429 is not the client ignoring it: calls arriving
    within IN_FLIGHT of the answer count as already on their way (on an overloaded 2-core machine,
    up to 0.7 s was seen between a call passing the pause and reaching the fake). A client that
    ignored the pause would carry on with the other steps' calls all through it.
    """
    found = []
    for scope, form, answered_at, until in log.entries:
        early = [r for r in fake.requests if rate_limit_scope(r.path) == scope
                 and answered_at + IN_FLIGHT < r.received_at < until]
        found += [f"{r.method} {r.path} at +{r.received_at - answered_at:.3f}s of a "
                  f"{until - answered_at:.2f}s Retry-After ({form}, {scope})" for r in early]
    return found


def test_a_seeded_storm_of_faults_from_both_services(live_daemon, zendesk, pagerduty):
    print(f"fault storm seed: {SEED} (set EMERGENCYD_FAULT_SEED to replay another)")
    mails = storm_scenario()
    plan = fault_schedule(random.Random(SEED), mails)
    retry_after = RetryAfterLog([])
    inject(plan, {"zendesk": zendesk, "pagerduty": pagerduty}, retry_after)
    daemon = live_daemon(policy=True, extra_zendesk=FAST_ZENDESK)
    send_all(daemon, mails)

    assert_final_state(daemon, zendesk, pagerduty, mails)
    record_served(zendesk, pagerduty)
    for scope, form, _, _ in retry_after.entries:
        RETRY_AFTER_FORMS[scope.split()[0]][form] += 1

    for service, fake in (("zendesk", zendesk), ("pagerduty", pagerduty)):
        # Every planned fault was served: the storm really happened.
        planned = Counter()
        for fault in plan:
            if fault.service == service:
                planned[fault.label] += fault.times
        served = Counter(r.fault for r in fake.requests if r.fault)
        assert served == planned, (SEED, service, served, planned)
        assert not fake.errors, fake.errors
        # Both forms of Retry-After were served, and no call came inside a pause.
        forms = {form for scope, form, _, _ in retry_after.entries if scope.startswith(service)}
        assert forms == {"seconds", "date"}, (SEED, service, retry_after.entries)
        assert not retries_inside_a_pause(fake, retry_after), (SEED, service)
        assert not calls_inside_a_pause(fake, retry_after), (SEED, service)
