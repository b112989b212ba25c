"""Noise rules, reports: ARF feedback reports (RFC 5965) and SES complaints,
and read receipts (MDN, RFC 8098) by structure or by a corroborated subject."""

from __future__ import annotations

import re

from emergencyd.parsers.noise_facts import (
    Facts,
    quote,
    ses_notification_type,
    subject_evidence,
    subject_pattern,
)

# ---------------------------------------------------------------------------
# Structural evidence
# ---------------------------------------------------------------------------


def feedback_report(facts: Facts) -> str | None:
    if facts.report_type == "feedback-report":
        return "Content-Type multipart/report; report-type=feedback-report (ARF)"
    if "message/feedback-report" in facts.part_types:
        return "a message/feedback-report part (ARF)"
    return None


def ses_complaint_notification(facts: Facts) -> str | None:
    if ses_notification_type(facts) == "complaint":
        return 'Amazon SES complaint notification via SNS (x-amz-sns-message-id, "notificationType":"Complaint")'
    return None


def disposition_notification(facts: Facts) -> str | None:
    if facts.report_type == "disposition-notification":
        return "Content-Type multipart/report; report-type=disposition-notification (MDN)"
    for part_type in ("message/disposition-notification", "message/global-disposition-notification"):
        if part_type in facts.part_types:
            return f"a {part_type} part (MDN)"
    return None


# ---------------------------------------------------------------------------
# Read receipts by subject
# ---------------------------------------------------------------------------

_RECEIPT_SUBJECT = subject_pattern(
    r"(?:read|gelesen|lu|leído|letto|gelezen|lido|przeczytan[ay]|lest|läst|luettu|přečteno)\s*(?::|$)",
    r"return receipt|read receipt|read notification|lesebestätigung|accusé de (?:réception|lecture)",
    r"confirmación de lectura|conferma di lettura|leesbevestiging",
    r"(?:message )?disposition notification",
    r"開封済み|已读",
)


_RECEIPT_WORDING = re.compile(
    r"\bwas read on\b|\bdisposition: (?:manual|automatic)-action|\boriginal-message-id:|\bwurde am .{0,80} gelesen"
)


def _receipt_evidence(facts: Facts) -> str | None:
    content_class = facts.header("Content-Class")
    if content_class and "mdn" in content_class.lower():
        return f"Content-Class: {quote(content_class)}"
    if facts.null_reverse_path:
        return facts.null_reverse_path
    if facts.auto_submitted:
        return f"Auto-Submitted: {facts.auto_submitted}"
    if "text/rfc822-headers" in facts.part_types:
        return "a text/rfc822-headers part"
    if facts.content_type == "application/ms-tnef" or "application/ms-tnef" in facts.part_types:
        return "an Outlook TNEF (winmail.dat) body"
    if _RECEIPT_WORDING.search(facts.body_sample):
        return "read-notification wording in the body"
    return None


def read_receipt_subject(facts: Facts) -> str | None:
    if not _RECEIPT_SUBJECT.match(facts.subject):
        return None
    evidence = _receipt_evidence(facts)
    if evidence is None:
        return None
    return f"{subject_evidence(facts)} with {evidence}"
