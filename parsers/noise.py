"""Recognise mail that must never page anyone: bounces, auto-replies, read
receipts, ARF feedback reports and mail loops. Pure, no I/O, never raising.

``detect_noise`` walks an ordered table of ``(kind, predicate)`` rules, the
way Mailman walks a chain: the first predicate that returns a reason wins.
Each predicate is a small named function that looks at one kind of evidence
and returns a human-readable reason naming that evidence, or None.

The order of the table is the policy:

1. loop: our own address in X-Loop, a Received header "by" one of our own
   hostnames, or a From address that is one of our own addresses.
2. bounce, structural evidence: multipart/report with
   report-type=delivery-status, a message/delivery-status part,
   X-Failed-Recipients, Exchange's X-MS-Exchange-Message-Is-Ndr, an Amazon
   SES bounce notification mailed by SNS. These come before everything else
   (but loops) because many bounces also carry ``Auto-Submitted:
   auto-replied`` (Exim, Exchange).
3. feedback_report: report-type=feedback-report or a message/feedback-report
   part (ARF, RFC 5965), or an SES complaint notification mailed by SNS.
4. read_receipt: report-type=disposition-notification or a
   message/disposition-notification part (MDN, RFC 8098).
5. bounce, heuristic evidence: a MAILER-DAEMON or postmaster sender (as the
   spec says, even when a human writes from postmaster@; the reason says
   so), and a typical bounce subject corroborated by a second, weak signal
   (null reverse path, Auto-Submitted, a text/rfc822-headers part,
   multipart/report, a daemon-like sender name, local part or reverse path).
   These come after the explicit report types so that an ARF report or an
   MDN sent from postmaster@ keeps its precise kind; it is noise either way.
5b. notices that no header marks (parsers.noise_notices): a mail system's
   failure notice, where a system sender or a failure subject agrees with the
   notice's own machine wording, and a mailing list's notice, where a list's
   sender or List-* field agrees with a list server's wording. Never when the
   text opens as a person writes ("we", "our"), and never from an attached
   original alone.
6. read_receipt by subject ("Read:", "Gelesen:", ...) corroborated by
   receipt-style evidence (Content-Class urn:content-classes:mdn, a null
   reverse path, Auto-Submitted, text/rfc822-headers, an Outlook TNEF body,
   "was read on" wording).
7. auto_reply: Auto-Submitted other than "no" (RFC 3834), X-Autoreply /
   X-Autorespond / X-Autoresponse, Precedence auto_reply/bulk/junk/list
   (naming a mailing list when List-Id is present), auto-reply subjects in
   many languages.
8. bounce, last: a null reverse path (``MAIL FROM:<>`` or ``Return-Path: <>``)
   with no other evidence. RFC 3834 auto-replies and RFC 8098 receipts use
   the null reverse path too, so it only means "bounce" once every more
   specific rule has declined.

Decisions, so they are not rediscovered:

* Subjects are matched at their start (after leading punctuation, as in
  "[Automatyczna odpowiedz]"), after decoding, Unicode NFKD normalisation,
  dropping diacritics and case folding. So a subject starting with "Re:",
  "AW:", "Fwd:" etc. never matches a subject rule: it is a human answering
  or forwarding ("Re: Automatic reply: ...", or "Fwd: Undeliverable: ..." -
  a tenant forwarding a bounce may well be reporting an emergency). Header
  rules still apply to such mail.
* The body never makes a message noise by itself: "I'm out of office
  tomorrow but our app is down" in a body is a human. It is read only to
  corroborate a read-receipt subject and for the JSON type of an SES
  notification. A bounce subject is not corroborated by body wording nor
  by an attached message/rfc822: a tenant writing "Delivery failure for all
  outbound mail" with a sample bounce attached is reporting an emergency.
* A From local part of MAILER-DAEMON or postmaster is a bounce by itself,
  as the spec says, even for a human writing from postmaster@ (the reason
  says "a postmaster sender is treated as a bounce").
* X-Auto-Response-Suppress is not evidence. It asks *recipients* not to
  auto-respond; Outlook puts it on ordinary meeting mail and ticket systems
  on ordinary notifications. Real Outlook/Exchange auto-replies also carry
  Auto-Submitted or an "Automatic reply:" subject, which decide.
* X-Precedence and X-Mailer are not evidence.
* ``mail_from`` is authoritative when known: "" (or "<>") is the null
  reverse path. Only when it is None (IMAP, inject) is ``Return-Path: <>``
  (the first Return-Path, the one the final delivery wrote) used instead.
  A caller that stores "" for "unknown" (``inject``) must pass None.
* ``own_hostnames`` must name hosts that only *our* outgoing path uses. The
  MX that delivers mail to us writes "by <mx>" on every message; listing it
  would make every message a loop.
* Should a predicate raise (a bug), it is skipped and the next rule is
  tried; should everything fail, the answer is None: paging for noise is
  the lesser harm than swallowing an emergency.

The rules live by kind: parsers.noise_loops, parsers.noise_bounces,
parsers.noise_reports (ARF, SES complaints, MDN) and
parsers.noise_auto_replies; the evidence they share is derived once per
message in parsers.noise_facts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from emergencyd.parsers.message import ParsedMessage
from emergencyd.parsers.noise_auto_replies import (
    auto_reply_subject,
    auto_submitted_header,
    precedence_header,
    x_autoreply_header,
)
from emergencyd.parsers.noise_bounces import (
    bounce_subject,
    delivery_status_part,
    delivery_status_report,
    exchange_ndr_header,
    failed_recipients_header,
    mailer_daemon_sender,
    null_reverse_path,
    ses_bounce_notification,
)
from emergencyd.parsers.noise_facts import Facts
from emergencyd.parsers.noise_loops import (
    received_by_own_host,
    sent_from_own_address,
    x_loop_names_own_address,
)
from emergencyd.parsers.noise_notices import failure_notice, list_notice
from emergencyd.parsers.noise_reports import (
    disposition_notification,
    feedback_report,
    read_receipt_subject,
    ses_complaint_notification,
)

__all__ = ["NOISE_KINDS", "RULES", "Noise", "detect_noise"]

NOISE_KINDS = ("loop", "bounce", "feedback_report", "read_receipt", "list_notice", "auto_reply")


@dataclass(frozen=True)
class Noise:
    kind: str  # one of NOISE_KINDS
    reason: str  # human-readable, names the evidence


# ---------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------


def detect_noise(
    parsed: ParsedMessage,
    *,
    mail_from: str | None,
    own_addresses: tuple[str, ...],
    own_hostnames: tuple[str, ...] = (),
) -> Noise | None:
    """The first rule of ``RULES`` that recognises ``parsed`` as noise, or
    None for mail a human should see. Never raises."""
    try:
        facts = Facts(parsed, mail_from, own_addresses, own_hostnames)
    except Exception:
        return None
    for kind, predicate in RULES:
        try:
            reason = predicate(facts)
        except Exception:  # a bug in one rule must not silence the others
            continue
        if reason:
            return Noise(kind=kind, reason=reason)
    return None


# ---------------------------------------------------------------------------
# The rule table: order is policy (see the module docstring)
# ---------------------------------------------------------------------------

Predicate = Callable[[Facts], str | None]

RULES: tuple[tuple[str, Predicate], ...] = (
    ("loop", x_loop_names_own_address),
    ("loop", received_by_own_host),
    ("loop", sent_from_own_address),
    ("bounce", delivery_status_report),
    ("bounce", delivery_status_part),
    ("bounce", failed_recipients_header),
    ("bounce", exchange_ndr_header),
    ("bounce", ses_bounce_notification),
    ("feedback_report", feedback_report),
    ("feedback_report", ses_complaint_notification),
    ("read_receipt", disposition_notification),
    ("bounce", mailer_daemon_sender),
    ("bounce", bounce_subject),
    ("bounce", failure_notice),
    ("list_notice", list_notice),
    ("read_receipt", read_receipt_subject),
    ("auto_reply", auto_submitted_header),
    ("auto_reply", x_autoreply_header),
    ("auto_reply", precedence_header),
    ("auto_reply", auto_reply_subject),
    ("bounce", null_reverse_path),
)
