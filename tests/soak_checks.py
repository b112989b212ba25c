"""What a soak run must end with, checked against the store's status and what the fakes received.

Nothing lost: every acknowledged mail is stored once and settled (done, or suppressed
with its reason). Nothing twice: per mail at most one ticket (by external_id) and one
envelope note and link note; per incident one PagerDuty incident and, on it, one note per
ticket; each reply or forward one public comment, on its conversation's ticket.
"""
from __future__ import annotations

from collections import Counter

from emergencyd.escalation.records import DONE, SUPPRESSED
from tests.soak_mail import COMMENTS, NOISE, TICKETED, Mail


def check(mails: list[Mail], acked: set[str], doc: dict, zendesk, pagerduty) -> tuple[dict, list[str]]:
    problems: list[str] = []
    stored = _stored(doc, problems)
    by_key = {m.key: m for m in mails}
    problems += [f"lost: {k} was acknowledged and is not in the store" for k in sorted(acked - stored.keys())]
    problems += [f"never acknowledged: {k}" for k in sorted(by_key.keys() - acked)]
    problems += [f"unknown message in the store: {k}" for k in sorted(stored.keys() - by_key.keys())]
    problems += _states(mails, stored)
    keys = {m.key: stored[m.key]["dedup_key"] for m in mails if m.key in stored}
    tickets = zendesk.tickets()
    incidents = pagerduty.incidents()
    comments = {t["id"]: zendesk.comments(t["id"]) for t in tickets}
    problems += _tickets(mails, keys, stored, tickets)
    problems += _incidents(mails, keys, incidents)
    problems += _notes(mails, keys, tickets, comments, incidents)
    problems += _follow_ups(by_key, keys, tickets, comments)
    duplicates = sum(n - 1 for n in Counter(t["external_id"] for t in tickets).values()) + \
        sum(n - 1 for n in Counter(i["dedup_key"] for i in incidents).values())
    figures = {
        "stored": len(stored),
        "tickets": len(tickets),
        "incidents": len(incidents),
        "comments": sum(1 for cs in comments.values() for c in cs if c["public"]) - len(tickets),
        "suppressed": doc["counts"].get(SUPPRESSED, 0),
        "deliveries_stored": sum(m["deliveries"] for m in stored.values()),
        "duplicates": duplicates,
        "lost": len(acked - stored.keys()),
        "expected_tickets": sum(m.kind in TICKETED for m in mails),
        "expected_incidents": len({m.incident for m in mails if m.kind in TICKETED}),
    }
    return figures, problems


def _stored(doc: dict, problems: list[str]) -> dict[str, dict]:
    """The store's messages by the key the plan uses: Message-ID, else subject."""
    stored: dict[str, dict] = {}
    for message in doc["messages"]:
        key = message["message_id"] or message["subject"]
        if key in stored:
            problems.append(f"stored twice: {key} (ids {stored[key]['id']} and {message['id']})")
        stored[key] = message
    if sum(doc["counts"].values()) != len(doc["messages"]):
        problems.append(f"status listed {len(doc['messages'])} of {sum(doc['counts'].values())} messages")
    return stored


def _states(mails: list[Mail], stored: dict[str, dict]) -> list[str]:
    problems = []
    for mail in mails:
        message = stored.get(mail.key)
        if message is None:
            continue
        want = SUPPRESSED if mail.kind in NOISE else DONE
        if message["state"] != want:
            problems.append(f"{mail.kind} {mail.key}: state {message['state']}, expected {want}; "
                            f"relation {message['relation']}; last error {message['last_error']}; "
                            f"steps { {n: s['state'] for n, s in message['steps'].items()} }")
        elif want == SUPPRESSED and not message["suppressed_reason"]:
            problems.append(f"{mail.key}: suppressed without a reason")
    return problems


def _tickets(mails: list[Mail], keys: dict[str, str], stored: dict[str, dict], tickets: list[dict]) -> list[str]:
    problems = []
    by_external_id: dict[str, list[int]] = {}
    for ticket in tickets:
        by_external_id.setdefault(ticket["external_id"], []).append(ticket["id"])
    problems += [f"duplicate ticket: external_id {e} on tickets {ids}" for e, ids in by_external_id.items()
                 if len(ids) > 1]
    ticketed = {keys[m.key] for m in mails if m.kind in TICKETED and m.key in keys}
    problems += [f"ticket {ids} for {e}, which should have none" for e, ids in by_external_id.items()
                 if e not in ticketed]
    for mail in mails:
        if mail.kind not in TICKETED or mail.key not in keys:
            continue
        ids = by_external_id.get(keys[mail.key], [])
        if len(ids) != 1 or stored[mail.key]["ticket_id"] != ids[0]:
            problems.append(f"{mail.kind} {mail.key}: tickets {ids}, store says {stored[mail.key]['ticket_id']}")
    return problems


def _incidents(mails: list[Mail], keys: dict[str, str], incidents: list[dict]) -> list[str]:
    problems = []
    counts = Counter(i["dedup_key"] for i in incidents)
    problems += [f"duplicate incident: dedup_key {k} has {n}" for k, n in counts.items() if n > 1]
    for number in sorted({m.incident for m in mails if m.kind in TICKETED}):
        candidates = {keys[m.key] for m in mails if m.kind in TICKETED and m.incident == number and m.key in keys}
        found = [k for k in counts if k in candidates]
        if len(found) != 1:
            problems.append(f"incident {number}: {len(found)} PagerDuty incidents ({found})")
    others = set(counts) - {keys[m.key] for m in mails if m.kind in TICKETED and m.key in keys}
    problems += [f"an incident for {k}, which should not page on its own" for k in sorted(others)]
    return problems


def _notes(mails: list[Mail], keys: dict[str, str], tickets: list[dict], comments: dict[int, list[dict]],
           incidents: list[dict]) -> list[str]:
    """One envelope note and one link note per ticket; one note per ticket on its incident."""
    problems = []
    ticket_of = {t["external_id"]: t["id"] for t in tickets}
    incident_notes = [n["content"] for i in incidents for n in i["notes"]]
    for mail in mails:
        key = keys.get(mail.key)
        if mail.kind not in TICKETED or key not in ticket_of:
            continue
        bodies = [c["body"] for c in comments[ticket_of[key]] if not c["public"]]
        for marker in (f"[emergencyd:envelope:{key}]", f"[emergencyd:paged:{key}]"):
            found = sum(marker in b for b in bodies)
            if found != 1:
                problems.append(f"{mail.key}: {found} notes {marker} on ticket {ticket_of[key]}")
        found = sum(f"[emergencyd:ticket:{key}]" in n for n in incident_notes)
        if found != 1:
            problems.append(f"{mail.key}: {found} incident notes linking ticket {ticket_of[key]}")
    return problems


def _follow_ups(by_key: dict[str, Mail], keys: dict[str, str], tickets: list[dict],
                comments: dict[int, list[dict]]) -> list[str]:
    """Each reply or forward: one public comment, on the ticket of the mail that opened the conversation."""
    problems = []
    ticket_of = {t["external_id"]: t["id"] for t in tickets}
    public = [(tid, c["body"]) for tid, cs in comments.items() for c in cs if c["public"]]
    for mail in by_key.values():
        if mail.kind not in COMMENTS or mail.key not in keys:
            continue
        root = mail
        while root.parent is not None:
            root = by_key[root.parent]
        marker = f"[ref {keys[mail.key]}]"
        on = [tid for tid, body in public if marker in body]
        if on != [ticket_of.get(keys.get(root.key))]:
            problems.append(f"{mail.kind} {mail.key}: comments on tickets {on}, expected one on "
                            f"{ticket_of.get(keys.get(root.key))}")
    return problems
