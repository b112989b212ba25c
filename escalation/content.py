"""What the ticket, the notes and the page say. Pure functions: record + parsed mail in, requests out."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

from emergencyd.escalation.policy import Verdict
from emergencyd.escalation.records import EscalationRecord, FollowUp, RelationKind
from emergencyd.escalation.rules import own_words
from emergencyd.parsers.message import ParsedMessage

TICKET_TAG = "emergency-email"
SUPPRESSED_TAG, NOT_AN_INCIDENT_TAG = "suppressed", "not-an-incident"   # the tags of a ticket without severity
# Zendesk's ticket types for an incident: its first ticket is the problem, other tenants' are its incidents.
ZENDESK_PROBLEM = "problem"
ZENDESK_INCIDENT = "incident"
# Zendesk rejects comments above 64 KB; keep well inside it.
MAX_COMMENT_CHARS = 60_000
MAX_SUMMARY_CHARS = 1024


@dataclass(frozen=True)
class TicketRequest:
    external_id: str
    subject: str
    body: str
    requester_email: str | None
    requester_name: str | None
    tags: tuple[str, ...] = (TICKET_TAG,)
    priority: str | None = None
    type: str | None = None          # "problem" opens an incident group; "incident" joins one
    problem_id: int | None = None


@dataclass(frozen=True)
class CommentRequest:
    """A public comment by the sender on an earlier ticket: a reply, a repeat, a storm's excess."""
    ticket_id: int
    body: str
    author_email: str | None
    author_name: str | None
    marker: str


@dataclass(frozen=True)
class NoteRequest:
    """An internal Zendesk comment; `marker` lets a retry see that it was already posted."""
    ticket_id: int
    body: str
    marker: str


@dataclass(frozen=True)
class PageRequest:
    dedup_key: str
    summary: str
    source: str
    severity: str
    custom_details: dict[str, Any] = field(default_factory=dict)
    links: tuple[dict[str, str], ...] = ()


@dataclass(frozen=True)
class Incident:
    """A PagerDuty incident, as the REST API names it."""
    id: str
    html_url: str
    status: str


@dataclass(frozen=True)
class IncidentNoteRequest:
    dedup_key: str
    content: str
    marker: str


def iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")


def requester_of(record: EscalationRecord, parsed: ParsedMessage) -> str | None:
    """The From address, else the envelope sender; None for a null reverse path."""
    return parsed.sender or record.envelope.mail_from or None


def subject_of(parsed: ParsedMessage) -> str:
    return parsed.subject.strip() or "(no subject)"


def ticket_request(record: EscalationRecord, parsed: ParsedMessage, *,
                   problem_id: int | None = None) -> TicketRequest:
    verdict = record.verdict
    subject = (verdict.ticket_subject if verdict else "") or subject_of(parsed)
    body = parsed.text.strip() or "(the message has no text body)"
    if subject != subject_of(parsed):
        body = f"Original subject: {subject_of(parsed)}\n\n{body}"
    warning = trust_warning(verdict)
    if warning:
        body = f"{warning}\n\n{body}"
    return TicketRequest(
        external_id=record.dedup_key,
        subject=subject,
        body=bounded(body, MAX_COMMENT_CHARS),
        requester_email=requester_of(record, parsed),
        requester_name=parsed.sender_name,
        tags=ticket_tags(verdict),
        priority=verdict.zendesk_priority if verdict else None,
        type=_ticket_type(record, problem_id),
        problem_id=problem_id if record.relation == RelationKind.INCIDENT else None,
    )


def _ticket_type(record: EscalationRecord, problem_id: int | None) -> str | None:
    """The first ticket of an incident is its problem; other tenants' tickets are its incidents."""
    if record.relation == RelationKind.FIRST:
        return ZENDESK_PROBLEM
    if record.relation == RelationKind.INCIDENT and problem_id is not None:
        return ZENDESK_INCIDENT
    return None


def follow_up_comment(record: EscalationRecord, parsed: ParsedMessage, ticket_id: int) -> CommentRequest:
    marker = f"[ref {record.dedup_key}]"
    words = own_words(parsed.text).strip() or "(no new text)"
    head = f"{subject_of(parsed)}\n\n" if record.relation != RelationKind.THREAD else ""
    why = f"(by email to the emergency address at {iso(record.envelope.received_at)}; {record.relation_reason})"
    warning = trust_warning(record.verdict)
    head = f"{warning}\n\n{head}" if warning else head
    body = bounded(f"{head}{words}", MAX_COMMENT_CHARS - 400) + f"\n\n{why} {marker}"
    return CommentRequest(ticket_id, body, requester_of(record, parsed), parsed.sender_name, marker)


def merged_comment(comment: CommentRequest, followers: tuple[FollowUp, ...]) -> CommentRequest:
    """The first follow-up's comment, and after it the later ones that queued behind it: their
    count, and for each its time, subject and reference, so that a loop does not flood the ticket."""
    if not followers:
        return comment
    lines = [f"- {iso(f.received_at)}  {(f.subject or '(no subject)')[:200]}  [ref {f.dedup_key}]"
             for f in followers]
    tail = (f"\n\n{len(followers)} more mail(s) from the same sender followed, folded into this comment:\n"
            + "\n".join(lines))
    body = bounded(comment.body, MAX_COMMENT_CHARS // 2) + bounded(tail, MAX_COMMENT_CHARS // 2)
    return replace(comment, body=body)


def ticket_tags(verdict: Verdict | None) -> tuple[str, ...]:
    """Zendesk tags are single words: severity, category and window, lower-case."""
    tags = [TICKET_TAG]
    if verdict is None:
        return tuple(tags)
    if verdict.severity:
        tags.append(verdict.severity.lower())
    else:
        tags.append(SUPPRESSED_TAG if verdict.suppressed else NOT_AN_INCIDENT_TAG)
    for value, prefix in ((verdict.category, "category"), (verdict.window, "window")):
        if value:
            tags.append(f"{prefix}-{value.replace(':', '-').replace('_', '-')}")
    verified = verdict.trust.verified if verdict.trust else None
    if verified is not None:
        tags.append("sender-verified" if verified else "unverified-sender")
    if verdict.page_held:
        tags.append("page-held")
    if verdict.spam is not None and verdict.spam.spam:
        tags.append("suspected-spam")
    if verdict.stranger:
        tags.append("unknown-sender")
    if verdict.released:
        tags.append("released")
    return tuple(tags)


def trust_warning(verdict: Verdict | None) -> str | None:
    """The line a responder must see before acting on the mail: its sender may be forged."""
    if verdict is None or verdict.trust is None or verdict.trust.verified is not False:
        return None
    held = f" {verdict.page_held[0].upper()}{verdict.page_held[1:]}." if verdict.page_held else ""
    return f"[emergencyd] UNVERIFIED SENDER: {verdict.trust.reason}. Confirm with the tenant before acting.{held}"


_WINDOW_WORDS = {"in_hours": "in hours", "out_of_hours_waking": "out of hours (waking hours)",
                 "out_of_hours_overnight": "out of hours (overnight)"}


def describe_verdict(verdict: Verdict) -> str:
    """One line a human reads first, e.g.
    'P1 (apps not served), out of hours (overnight): respond by 02:40, update hourly'."""
    window = _WINDOW_WORDS.get(verdict.window, verdict.window)
    category = verdict.category.replace("_", " ").replace("noise:", "")
    if verdict.suppressed:
        return f"Suppressed as {category}, {window}: {verdict.reason}. Not paged."
    head = f"{verdict.severity or 'Not an incident'} ({category}), {window}"
    parts = []
    if verdict.respond_by:
        parts.append(f"respond by {_clock(verdict.respond_by)}")
    if verdict.update_every:
        parts.append(_update_words(int(verdict.update_every.total_seconds()), verdict.working_time))
    paging = f"paged at {verdict.urgency} urgency" if verdict.page else "not paged"
    if verdict.page_held or verdict.stranger:
        paging = verdict.page_held or verdict.stranger or ""
    if verdict.trust is not None and verdict.trust.verified is False:
        paging += "; unverified sender"
    if verdict.released:
        paging += "; released by hand (`emergencyd release`)"
    return f"{head}: {', '.join(parts + [paging])}"


def _clock(when: datetime) -> str:
    """In the policy's time zone, named: beside UTC times (status, logs) a bare 02:40 would be ambiguous."""
    return f"{when:%H:%M %Z} ({when:%a %d %b})".replace("  ", " ")


def _update_words(seconds: int, working_time: bool) -> str:
    if working_time and seconds % (8 * 3600) == 0:
        days = seconds // (8 * 3600)
        return "update every business day" if days == 1 else f"update every {days} business days"
    hours = seconds / 3600
    return "update hourly" if hours == 1 else f"update every {hours:g} hours"


def verdict_lines(verdict: Verdict) -> list[str]:
    """The verdict for the ticket's internal note: the decision, then every rule that fired."""
    lines = [f"emergencyd: {describe_verdict(verdict)}", f"Decided by: {verdict.reason}"]
    for hit in verdict.rules:
        lines.append(f"  rule {hit.rule} ({hit.severity or 'not an incident'}) matched "
                     f"{hit.matched!r} in the {hit.field}")
    if verdict.tenant:
        lines.append(f"Sender: {verdict.tenant}")
    trust = verdict.trust
    if trust:
        lines.append(f"Sender trust: {trust.outcome}: {trust.reason} (spf={trust.spf or '-'}, "
                     f"dkim={trust.dkim or '-'}, dmarc={trust.dmarc or '-'})")
    if verdict.spam:
        lines.append(f"Spam check: {verdict.spam.reason}")
    return lines


def envelope_note(record: EscalationRecord, parsed: ParsedMessage, ticket_id: int) -> NoteRequest:
    env = record.envelope
    lines = verdict_lines(record.verdict) + [""] if record.verdict else []
    lines += [
        f"Received by emergencyd over {env.source.upper()} at {iso(env.received_at)}",
        f"MAIL FROM: <{env.mail_from}>",
        f"RCPT TO: {', '.join(f'<{r}>' for r in env.rcpt_to) or '(none)'}",
        f"Peer: {env.peer or '-'}  HELO: {env.helo or '-'}  TLS: {'yes' if env.tls else 'no'}",
        f"Message-ID: {record.message_id or '(none)'}",
        f"From: {parsed.header('From') or '(none)'}",
        f"Date: {parsed.header('Date') or '(none)'}",
        f"Content-Type: {parsed.content_type}",
        f"Size: {record.size} bytes, sha256 {record.sha256}",
    ]
    if parsed.attachments:
        lines.append("Attachments: " + ", ".join(
            f"{a.filename or '(unnamed)'} ({a.content_type}, {a.size} bytes)" for a in parsed.attachments))
    if parsed.defects:
        lines.append("MIME defects: " + ", ".join(parsed.defects))
    if parsed.parse_error:
        lines.append(f"Could not be parsed: {parsed.parse_error}")
    marker = f"[emergencyd:envelope:{record.dedup_key}]"
    return NoteRequest(ticket_id, bounded("\n".join(lines + ["", marker]), MAX_COMMENT_CHARS), marker)


def link_note(record: EscalationRecord, ticket_id: int, incident_url: str | None) -> NoteRequest:
    marker = f"[emergencyd:paged:{record.dedup_key}]"
    lines = [f"Paged on PagerDuty at {iso(record.paged_at) or 'an unknown time'}.",
             f"PagerDuty dedup_key: {record.page_key or record.dedup_key}"]
    if incident_url:
        lines.append(f"PagerDuty incident: {incident_url}")
    return NoteRequest(ticket_id, "\n".join(lines + ["", marker]), marker)


# PagerDuty maps event severity to urgency when the service uses "urgency based on
# alert severity": critical/error are high urgency, warning/info are low.
PAGERDUTY_SEVERITY = {"high": "critical", "low": "warning"}


def reopened_note(record: EscalationRecord, ticket_id: int, resolved_url: str) -> NoteRequest:
    marker = f"[emergencyd:reopened:{record.dedup_key}]"
    body = (f"PagerDuty had already resolved the incident for this ({resolved_url}). This follow-up, received "
            f"{iso(record.envelope.received_at)}, opened a new incident with dedup_key {record.page_key}.")
    return NoteRequest(ticket_id, f"{body}\n\n{marker}", marker)


def page_request(record: EscalationRecord, parsed: ParsedMessage, ticket_url: str | None, *,
                 problem_url: str | None = None, group: dict[str, Any] | None = None) -> PageRequest:
    sender = requester_of(record, parsed) or "unknown sender"
    verdict = record.verdict
    details: dict[str, Any] = {
        "sender": sender,
        "subject": subject_of(parsed),
        "received_at": iso(record.envelope.received_at),
        "ticket_id": record.ticket_id,
        "message_id": record.message_id,
    }
    if verdict:
        details.update({"decision": describe_verdict(verdict), "severity": verdict.severity,
                        "category": verdict.category, "window": str(verdict.window),
                        "respond_by": verdict.respond_by.isoformat() if verdict.respond_by else None,
                        "rules": [f"{h.rule}: {h.matched}" for h in verdict.rules]})
        if verdict.trust:
            details["sender_trust"] = verdict.trust.reason
    if group:
        details.update({"reports": group["reports"], "tenants": group["tenants"][:50]})
    links: tuple[dict[str, str], ...] = ()
    if problem_url:
        label = "Zendesk problem ticket" if record.relation == RelationKind.INCIDENT \
            else "Zendesk ticket of the conversation"
        links += ({"href": problem_url, "text": label},)
    if ticket_url:
        links += ({"href": ticket_url, "text": f"Zendesk ticket #{record.ticket_id}"},)
    severity = (verdict.severity if verdict else None) or "Emergency"
    subject = (verdict.ticket_subject if verdict else None) or subject_of(parsed)
    urgency = (verdict.urgency if verdict else None) or "high"
    return PageRequest(
        dedup_key=record.page_key or record.dedup_key,
        summary=bounded(f"{severity} email from {sender}: {subject}", MAX_SUMMARY_CHARS),
        source=sender,
        severity=PAGERDUTY_SEVERITY.get(urgency, "critical"),
        custom_details=details,
        links=links,
    )


def incident_note(record: EscalationRecord, ticket_url: str, *,
                  group: dict[str, Any] | None = None) -> IncidentNoteRequest:
    marker = f"[emergencyd:ticket:{record.dedup_key}]"
    kind = "Problem ticket" if record.relation == RelationKind.FIRST else "Zendesk ticket"
    head = f"{kind} #{record.ticket_id}: {ticket_url}"
    if group and record.relation == RelationKind.INCIDENT:
        head = f"Report {group['reports']} of this incident, from {record.sender}. {head}"
    return IncidentNoteRequest(record.page_key or record.dedup_key, f"{head}\n{marker}", marker)


def bounded(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    suffix = "\n[... truncated by emergencyd]"
    return text[: limit - len(suffix)] + suffix
