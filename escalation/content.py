"""What the ticket, the notes and the page say. Pure functions: record + parsed mail in, requests out."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from escalation.records import EscalationRecord
from parsers.message import ParsedMessage

TICKET_TAG = "emergency-email"
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


def ticket_request(record: EscalationRecord, parsed: ParsedMessage) -> TicketRequest:
    return TicketRequest(
        external_id=record.dedup_key,
        subject=subject_of(parsed),
        body=bounded(parsed.text.strip() or "(the message has no text body)", MAX_COMMENT_CHARS),
        requester_email=requester_of(record, parsed),
        requester_name=parsed.sender_name,
    )


def envelope_note(record: EscalationRecord, parsed: ParsedMessage, ticket_id: int) -> NoteRequest:
    env = record.envelope
    lines = [
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
             f"PagerDuty dedup_key: {record.dedup_key}"]
    if incident_url:
        lines.append(f"PagerDuty incident: {incident_url}")
    return NoteRequest(ticket_id, "\n".join(lines + ["", marker]), marker)


def page_request(record: EscalationRecord, parsed: ParsedMessage, ticket_url: str | None) -> PageRequest:
    sender = requester_of(record, parsed) or "unknown sender"
    details: dict[str, Any] = {
        "sender": sender,
        "subject": subject_of(parsed),
        "received_at": iso(record.envelope.received_at),
        "ticket_id": record.ticket_id,
        "message_id": record.message_id,
    }
    links = ({"href": ticket_url, "text": f"Zendesk ticket #{record.ticket_id}"},) if ticket_url else ()
    return PageRequest(
        dedup_key=record.dedup_key,
        summary=bounded(f"Emergency email from {sender}: {subject_of(parsed)}", MAX_SUMMARY_CHARS),
        source=sender,
        severity="critical",
        custom_details=details,
        links=links,
    )


def incident_note(record: EscalationRecord, ticket_url: str) -> IncidentNoteRequest:
    marker = f"[emergencyd:ticket:{record.dedup_key}]"
    return IncidentNoteRequest(record.dedup_key, f"Zendesk ticket #{record.ticket_id}: {ticket_url}\n{marker}",
                               marker)


def bounded(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    suffix = "\n[... truncated by emergencyd]"
    return text[: limit - len(suffix)] + suffix
