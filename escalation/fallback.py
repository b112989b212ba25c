"""The fallback alert: mail through an SMTP relay when a page is overdue.

When PagerDuty has not accepted a page by received_at + `after_seconds` (or refused
it for good), the team's fallback addresses get one mail. The page itself keeps
retrying on its schedule, so it still goes out exactly once when PagerDuty returns.

Repeats: a relay cannot deduplicate a send, so the mail's Message-ID is derived from
the dedup_key and the step is committed right after the relay's 250. One window stays
open: a crash (kill -9) between the 250 and that commit, or a connection lost after
the final "." but before the 250, sends the mail again on the next attempt, with the
same Message-ID, which lets the recipients' mail systems fold the two. At least once,
never zero times.
"""
from __future__ import annotations

import email.policy
import smtplib
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate

from emergencyd.escalation.content import iso, subject_of
from emergencyd.escalation.records import (
    FALLBACK_ALERT,
    PAGE,
    STEP_FAILED,
    EscalationRecord,
)
from emergencyd.escalation.settings import FallbackConfig
from emergencyd.escalation.tls import ssl_context
from emergencyd.parsers.message import ParsedMessage

SUBJECT_PREFIX = "[emergencyd] PAGE NOT DELIVERED: "
MAX_SUBJECT_CHARS = 200
# Headers on one line (RFC 5322's limit is 998): a folded Message-ID reads back with a space in some parsers.
_UNFOLDED = email.policy.SMTP.clone(max_line_length=998)


@dataclass(frozen=True)
class Timing:
    """What the fallback step should do now: nothing ever (`not_needed`), wait, or send."""
    not_needed: str | None = None
    wait_until: float | None = None


def timing(record: EscalationRecord, *, now: float, after_seconds: float | None) -> Timing:
    """Due at received_at + after_seconds, or at once when the page failed for good.

    Once the page is done the fallback is not needed, even while it is retrying a relay
    failure: it must never hold the escalation open.
    """
    page, fallback = record.step(PAGE), record.step(FALLBACK_ALERT)
    if after_seconds is None:
        return Timing(not_needed="not needed: the fallback is disabled in the config")
    if page is None or page.done:
        when = f" at {iso(record.paged_at)}" if record.paged_at else ""
        tries = f", after {fallback.attempts} failed attempt(s) of its own" if fallback and fallback.attempts else ""
        return Timing(not_needed=f"not needed: the page was done{when}{tries}")
    not_before = record.envelope.received_at + (0.0 if page.state == STEP_FAILED else after_seconds)
    due = max(not_before, fallback.next_attempt_at if fallback and fallback.attempts else not_before)
    return Timing(wait_until=due) if due > now else Timing()


@dataclass(frozen=True)
class FallbackMail:
    message_id: str
    from_address: str
    to: tuple[str, ...]
    subject: str
    body: str

    def to_email(self) -> EmailMessage:
        message = EmailMessage(policy=_UNFOLDED)
        message["From"] = self.from_address
        message["To"] = ", ".join(self.to)
        message["Subject"] = self.subject
        message["Date"] = formatdate(usegmt=True)
        message["Message-ID"] = self.message_id
        # RFC 3834: an automatic message; with X-Loop naming our own address, a copy that comes back to
        # the emergency address is recognised as noise and never pages.
        message["Auto-Submitted"] = "auto-generated"
        message["X-Loop"] = self.from_address
        message.set_content(self.body)
        return message


def message_id_of(dedup_key: str, from_address: str) -> str:
    """Stable across attempts and restarts: mail systems fold copies with the same Message-ID."""
    return f"<{dedup_key}.fallback@{from_address.rpartition('@')[2]}>"


def alert_mail(record: EscalationRecord, parsed: ParsedMessage, config: FallbackConfig, *,
               ticket_url: str | None, pagerduty_failing_since: float | None) -> FallbackMail:
    verdict = record.verdict
    subject = " ".join(((verdict.ticket_subject if verdict else None) or subject_of(parsed)).split())
    severity, category, urgency = (verdict.severity, verdict.category, verdict.urgency) if verdict else (None,) * 3
    page = record.step(PAGE)
    failing = f"PagerDuty calls failing since {iso(pagerduty_failing_since)}; " if pagerduty_failing_since else ""
    state = "failed for good" if page and page.state == STEP_FAILED else "still retrying"
    lines = [
        f"PagerDuty has not accepted the page for this emergency mail within {config.after_seconds:.0f} s of its",
        "receipt. Alert the on-call engineer another way. emergencyd keeps retrying the page, which goes out",
        "once PagerDuty answers.",
        "",
        f"Subject:   {subject}",
        f"Severity:  {severity or '-'} (category {category or '-'}, urgency {urgency or '-'})",
        f"Sender:    {record.sender or record.envelope.mail_from or '-'}",
        f"Received:  {iso(record.envelope.received_at)}",
        f"Why:       {failing}page {state} after {page.attempts if page else 0} attempt(s); "
        f"last error: {(page.last_error if page else None) or 'none recorded'}",
        f"Ticket:    {ticket_url or 'not created yet'}",
        f"dedup_key: {record.dedup_key}",
    ]
    return FallbackMail(
        message_id=message_id_of(record.dedup_key, config.from_address), from_address=config.from_address,
        to=config.to, subject=(SUBJECT_PREFIX + subject)[:MAX_SUBJECT_CHARS], body="\n".join(lines) + "\n")


class SmtpRelay:
    """Sends through the configured relay with the stdlib client; synchronous, run on its own threads."""

    def __init__(self, config: FallbackConfig, *, helo_name: str):
        if config.relay is None:
            raise ValueError("a fallback relay is required")
        self.config = config
        self._helo_name = helo_name

    def send(self, mail: FallbackMail) -> dict[str, str]:
        """The recipients the relay refused (empty when all were taken); raises when none was."""
        config, relay = self.config, self.config.relay
        assert relay is not None                  # checked when the relay was made
        client = smtplib.SMTP(relay.host, relay.port, local_hostname=self._helo_name,
                              timeout=config.timeout_seconds)
        try:
            if config.starttls:
                client.starttls(context=ssl_context(config.ca_file))
            if config.username and config.password is not None:
                client.login(config.username, config.password.value)
            refused = client.send_message(mail.to_email(), config.from_address, list(mail.to))
        finally:
            _quit_quietly(client)
        return {address: f"{code} {text.decode('utf-8', 'replace')}" for address, (code, text) in refused.items()}


def _quit_quietly(client: smtplib.SMTP) -> None:
    """After the relay's 250 nothing may fail the step, or a retry would send the mail twice."""
    try:
        client.quit()
    except (smtplib.SMTPException, OSError):
        client.close()
