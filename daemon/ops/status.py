"""`emergencyd status`: counts by state and the recent messages, as data or as text."""
from __future__ import annotations

from collections import Counter
from typing import Any

from emergencyd.daemon.store.core import Store
from emergencyd.daemon.store.leases import ESCALATOR
from emergencyd.escalation.content import describe_verdict, iso
from emergencyd.escalation.records import (
    PAGE,
    TICKET,
    EscalationRecord,
    EscalationState,
    RelationKind,
    StepState,
)


def status_document(store: Store, *, limit: int, dry_run: bool, tenant_directory: str = "") -> dict[str, Any]:
    with store.snapshot():   # the counts and the messages of one moment, however busy the daemon is
        counts, recent = store.counts_by_state(), store.recent(limit)
        mailboxes, groups = store.imap_positions(), store.groups(limit)
        lease = store.lease_holder(ESCALATOR)
    return {
        "dry_run": dry_run,
        # Which replica decides and pages (docs/deployment.md), until when unless it renews; None: none yet.
        "escalating": {"replica": lease.holder, "lease_until": iso(lease.expires_at),
                       "since": iso(lease.acquired_at)} if lease else None,
        "tenant_directory": tenant_directory,
        "counts": counts,
        "imap_mailboxes": [{**m, "updated_at": iso(m["updated_at"])} for m in mailboxes],
        "groups": [{**g, "opened_at": iso(g["opened_at"]), "last_report_at": iso(g["last_report_at"])}
                   for g in groups],
        "spam_checks": _spam_checks(recent),
        "messages": [message_document(r) for r in recent],
    }


def _spam_checks(records: list[EscalationRecord]) -> dict[str, int]:
    """How asking rspamd went for the recent mail that was asked: {"answered": 18, "timeout": 2}."""
    outcomes = Counter(r.verdict.spam_check for r in records if r.verdict and r.verdict.spam_check is not None)
    return dict(sorted(outcomes.items()))


def message_document(record: EscalationRecord) -> dict[str, Any]:
    verdict = record.verdict
    return {
        "id": record.message_pk,
        "received_at": iso(record.envelope.received_at),
        "source": record.envelope.source,
        "peer": record.envelope.peer,
        "tls": record.envelope.tls,
        "sender": record.sender,
        "subject": record.subject,
        "message_id": record.message_id,
        "deliveries": record.deliveries,
        "state": record.state,
        "decision": describe_verdict(verdict) if verdict else None,
        "severity": verdict.severity if verdict else None,
        "window": str(verdict.window) if verdict else None,
        "suppressed_reason": verdict.reason if verdict and verdict.suppressed else None,
        "verdict": verdict.as_dict() if verdict else None,
        "relation": record.relation,
        "relation_reason": record.relation_reason,
        "parent_id": record.parent_pk,
        "group_id": record.group_id,
        "ticket_id": record.ticket_id,
        "dedup_key": record.dedup_key,
        "page_key": record.page_key,
        "paged_at": iso(record.paged_at),
        "incident_url": record.incident_url,
        "last_error": record.last_error(),
        "decide_failures": record.decide_failures,
        "decide_error": record.decide_error,
        "steps": {s.name: {"state": s.state, "attempts": s.attempts, "last_error": s.last_error,
                           "next_attempt_at": iso(s.next_attempt_at) if s.state == StepState.PENDING else None,
                           "result": s.result}
                  for s in record.steps},
    }


def render_status(document: dict[str, Any]) -> str:
    counts = document["counts"]
    lines = ["emergencyd status" + ("  (dry run: nothing is sent)" if document["dry_run"] else ""),
             "by state: " + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "no messages yet")]
    if document.get("escalating"):
        escalating = document["escalating"]
        lines.append(f"escalating replica: {escalating['replica']} (since {escalating['since']}, "
                     f"lease until {escalating['lease_until']})")
    if document.get("tenant_directory"):
        lines.append(f"tenant directory: {document['tenant_directory']}")
    if document.get("spam_checks"):
        lines.append("rspamd, for the mail below: " + ", ".join(f"{outcome} {count}"
                                                             for outcome, count in document["spam_checks"].items()))
    for mailbox in document["imap_mailboxes"]:
        lines.append(f"imap {mailbox['account']}: uidvalidity {mailbox['uidvalidity']}, last UID handled "
                     f"{mailbox['last_uid']} at {mailbox['updated_at']}")
    lines.append("")
    if document["groups"]:
        lines += ["incidents (deduplicated):"]
        for g in document["groups"]:
            lines.append(f"  #{g['group_id']} {g['fingerprint'][:50]}: {g['reports']} report(s) from "
                         f"{len(g['tenants'])} tenant(s); dedup_key {g['dedup_key']}")
            lines.append(f"      problem ticket {g['problem_ticket_id'] or '-'}; incident tickets "
                         f"{', '.join(str(t) for t in g['incident_ticket_ids'] if t) or '-'}"
                         + (f"; {g['incident_url']}" if g["incident_url"] else ""))
        lines.append("")
    header = (f"{'id':>5}  {'received (UTC)':<20} {'state':<10} {'sev':<4} {'ticket':>8}  {'dedup_key':<51} "
              "subject")
    lines.append(header)
    for m in document["messages"]:
        ticket = str(m["ticket_id"]) if m["ticket_id"] is not None else _dry_or_dash(m)
        lines.append(f"{m['id']:>5}  {(m['received_at'] or '')[:19]:<20} {m['state']:<10} "
                     f"{m['severity'] or '-':<4} {ticket:>8}  {m['dedup_key']:<51} {(m['subject'] or '')[:60]}")
        lines.append(f"{'':>7}from {m['sender'] or '-'}; {_paged(m)}")
        if m["decision"]:
            lines.append(f"{'':>7}{m['decision'][:200]}")
        spam = (m["verdict"] or {}).get("spam")
        if spam:
            lines.append(f"{'':>7}spam check: {spam['reason'][:200]}")
        spam_check = (m["verdict"] or {}).get("spam_check")
        if spam_check not in (None, "answered"):
            lines.append(f"{'':>7}rspamd: {spam_check}: decided without it")
        if m["relation"] not in (None, RelationKind.FIRST, RelationKind.ALONE):
            lines.append(f"{'':>7}{m['relation']}: {(m['relation_reason'] or '')[:150]}"
                         + (f" (message {m['parent_id']})" if m["parent_id"] else ""))
        for name, step in m["steps"].items():      # each integration's own error: both may be failing
            if step["last_error"] and step["state"] != StepState.DONE:
                lines.append(f"{'':>7}{name} {step['state']} after {step['attempts']} attempt(s): "
                             f"{step['last_error'][:200]}")
        if m["state"] == EscalationState.STUCK:
            lines.append(f"{'':>7}stuck after {m['decide_failures']} failed tries to decide it: "
                         f"{(m['decide_error'] or '')[:200]} (`emergencyd rearm {m['id']}` once fixed)")
    return "\n".join(lines)


def _paged(message: dict[str, Any]) -> str:
    """Whether the on-call was paged for it, at a glance: when, or why not (yet)."""
    page = message["steps"].get(PAGE)
    if page is None:
        return "no page"
    if message["paged_at"]:
        return f"paged at {message['paged_at'][11:19]} UTC"
    result = page.get("result") or {}
    if result.get("dry_run"):
        return "page not sent (dry run)"
    if result.get("skipped"):
        return "no page of its own (its incident is paged)"
    return f"page {page['state']}"


def _dry_or_dash(message: dict[str, Any]) -> str:
    ticket_step = message["steps"].get(TICKET, {})
    return "(dry)" if ticket_step.get("result", {}).get("dry_run") else "-"
