"""The support policy as data: noise first, then ordered rules, then the routing table.

classify() is pure: a parsed message and its receipt time in, a Verdict out, with
every rule that fired and the text it matched, so each decision can be explained.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Mapping

from emergencyd.escalation.hours import SupportCalendar, Window
from emergencyd.escalation.rspamd import SpamCheck
from emergencyd.escalation.rules import Rule, RuleHit, RuleMatcher, evaluate_rules
from emergencyd.escalation.trust import (
    TrustPolicy,
    assess,
    page_hold,
    sender_standing,
    spam_to_suppress,
    stranger_demotion,
)
from emergencyd.parsers.auth_results import SenderTrust
from emergencyd.parsers.message import ParsedMessage
from emergencyd.parsers.noise import Noise, detect_noise
from emergencyd.parsers.spam_headers import SpamVerdict
from emergencyd.parsers.subject import descriptive_subject

SEVERITIES = ("P1", "P2", "P3", "P4")
NOT_AN_INCIDENT = "none"           # the routing table's row for questions and requests
URGENCIES = ("high", "low")
ZENDESK_PRIORITIES = ("urgent", "high", "normal", "low")


@dataclass(frozen=True)
class Route:
    urgency: str | None                # high | low | None (no page)
    zendesk_priority: str
    respond_within: timedelta
    update_every: timedelta | None
    working_time: bool                 # count the targets in working hours (P4's "business days")


@dataclass(frozen=True)
class Policy:
    rules: tuple[Rule, ...]
    routing: Mapping[tuple[str, Window], Route]
    calendar: SupportCalendar
    unclassified_severity: str | None = "P1"
    unclassified_category: str = "unclassified"
    noise_gets_ticket: bool = False
    generic_subjects: tuple[str, ...] = ()
    trust: TrustPolicy = TrustPolicy()     # [trust]: whose Authentication-Results count, what a failure does
    spam: SpamCheck = SpamCheck()          # [spam]: rspamd asked directly (escalation/rspamd.py)
    # The rules compiled for matching (escalation/rules.py): built with the policy (once per load), kept by
    # replace() while the rules stay the same.
    matcher: RuleMatcher | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.matcher is None or self.matcher.rules != self.rules:
            object.__setattr__(self, "matcher", RuleMatcher.of(self.rules))

    def route(self, severity: str | None, window: Window) -> Route:
        return self.routing[(severity or NOT_AN_INCIDENT, window)]


@dataclass(frozen=True)
class Verdict:
    suppressed: bool
    reason: str                        # why: the noise evidence, or the deciding rule
    category: str
    severity: str | None
    window: Window
    page: bool
    urgency: str | None
    zendesk_priority: str | None
    respond_by: datetime | None
    update_every: timedelta | None
    ticket: bool
    ticket_subject: str
    working_time: bool = False
    rules: tuple[RuleHit, ...] = field(default_factory=tuple)
    trust: SenderTrust | None = None   # None: [trust] not configured
    page_held: str | None = None       # why the sender's trust held back a page the routing asked for
    tenant: str | None = None          # what the tenant directory says of the sender; None: the directory is empty
    stranger: str | None = None        # why a stranger's unmatched mail gets a ticket and no page
    spam: SpamVerdict | None = None    # the spam filter's say: rspamd asked directly, else the relay's fields
    spam_check: str | None = None      # how asking rspamd went (escalation/rspamd.py CheckOutcome); None: not asked
    released: bool = False             # `emergencyd release`: decided without noise, spam, stranger or trust demotions

    @property
    def untrusted(self) -> bool:
        """DMARC failed, or trust held the page: kept apart from the real sender's mail and incidents."""
        return self.page_held is not None or (self.trust is not None and self.trust.verified is False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "suppressed": self.suppressed, "reason": self.reason, "category": self.category,
            "severity": self.severity, "window": str(self.window), "page": self.page, "urgency": self.urgency,
            "zendesk_priority": self.zendesk_priority,
            "respond_by": self.respond_by.isoformat() if self.respond_by else None,
            "update_every_seconds": int(self.update_every.total_seconds()) if self.update_every else None,
            "ticket": self.ticket, "ticket_subject": self.ticket_subject, "working_time": self.working_time,
            "rules": [{"rule": h.rule, "field": h.field, "matched": h.matched, "category": h.category,
                       "severity": h.severity} for h in self.rules],
            "sender_trust": self.trust.as_dict() if self.trust else None, "page_held": self.page_held,
            "tenant": self.tenant, "stranger": self.stranger, "spam": self.spam.as_dict() if self.spam else None,
            "spam_check": self.spam_check, "released": self.released,
        }

    @classmethod
    def from_dict(cls, stored: Mapping[str, Any]) -> "Verdict":
        """As as_dict() wrote it into the store; a field an older version did not write takes its default."""
        respond_by, every = stored.get("respond_by"), stored.get("update_every_seconds")
        trust, spam = stored.get("sender_trust"), stored.get("spam")
        return cls(
            suppressed=bool(stored.get("suppressed")), reason=stored.get("reason") or "",
            category=stored.get("category") or "", severity=stored.get("severity"),
            window=Window(stored["window"]), page=bool(stored.get("page")), urgency=stored.get("urgency"),
            zendesk_priority=stored.get("zendesk_priority"),
            respond_by=datetime.fromisoformat(respond_by) if respond_by else None,
            update_every=timedelta(seconds=every) if every else None,
            ticket=bool(stored.get("ticket")), ticket_subject=stored.get("ticket_subject") or "",
            working_time=bool(stored.get("working_time")),
            rules=tuple(RuleHit(rule=h["rule"], category=h["category"], severity=h["severity"], field=h["field"],
                                matched=h["matched"]) for h in stored.get("rules") or ()),
            trust=SenderTrust.from_dict(trust) if trust else None, page_held=stored.get("page_held"),
            tenant=stored.get("tenant"), stranger=stored.get("stranger"),
            spam=SpamVerdict.from_dict(spam) if spam else None, spam_check=stored.get("spam_check"),
            released=bool(stored.get("released")))


def classify(parsed: ParsedMessage, *, received_at: datetime, mail_from: str | None,
             own_addresses: tuple[str, ...], policy: Policy, own_hostnames: tuple[str, ...] = (),
             trust: SenderTrust | None = None, spam: SpamVerdict | None = None, released: bool = False) -> Verdict:
    """`trust` comes from the decide step (envelope and DKIM aware); without it, from the headers alone.
    `spam` is rspamd's verdict when it was asked; without it, the relay's fields count when trusted.
    `released`: a human handed the mail back (`emergencyd release`): its rules decide, and nothing demotes it
    (noise, spam, a stranger's unmatched mail, a held page); what was found is still shown."""
    window = policy.calendar.window_at(received_at)
    trust = trust or assess(parsed.headers, policy.trust)
    spam = spam or (trust.relay_spam if trust is not None else None)
    subject = descriptive_subject(parsed.subject, parsed.text, policy.generic_subjects)
    sender = parsed.sender or mail_from or None
    noise = detect_noise(parsed, mail_from=mail_from, own_addresses=own_addresses, own_hostnames=own_hostnames)
    if noise is None and spam is not None and spam_to_suppress(spam, trust, sender, policy.trust):
        noise = Noise(kind="spam", reason=spam.reason)
    if noise is not None and not released:
        return Verdict(suppressed=True, reason=f"{noise.kind}: {noise.reason}", category=f"noise:{noise.kind}",
                       severity=None, window=window, page=False, urgency=None, zendesk_priority="low",
                       respond_by=None, update_every=None, ticket=policy.noise_gets_ticket, ticket_subject=subject,
                       trust=trust, spam=spam)
    hits = evaluate_rules(parsed, policy)
    tenant, stranger = sender_standing(sender, policy.trust), None
    if hits:
        decisive = hits[0]
        category, severity = decisive.category, decisive.severity
        reason = f"rule {decisive.rule} matched {decisive.matched!r} in the {decisive.field}"
    elif not released and (stranger := stranger_demotion(sender, policy.trust)) is not None:
        category, severity = policy.unclassified_category, None
        reason = f"no rule matched, and {sender or 'the sender'} is not in the tenant directory: a ticket, no page"
    else:
        category, severity = policy.unclassified_category, policy.unclassified_severity
        reason = (f"no rule matched: treated as {severity or 'not an incident'} "
                  "(on an emergency address a missed P1 costs more than a false page)")
    route = policy.route(severity, window)
    held = page_hold(trust, policy.trust, sender, spam) if route.urgency is not None and not released else None
    page = route.urgency is not None and held is None
    return Verdict(
        suppressed=False, reason=reason, category=category, severity=severity, window=window,
        page=page, urgency=route.urgency if page else None, zendesk_priority=route.zendesk_priority,
        respond_by=_deadline(policy.calendar, received_at, route.respond_within, route.working_time),
        update_every=route.update_every, ticket=True, ticket_subject=subject, working_time=route.working_time,
        rules=tuple(hits), trust=trust, page_held=held, tenant=tenant, stranger=stranger, spam=spam, released=released)


def _deadline(calendar: SupportCalendar, start: datetime, within: timedelta, working_time: bool) -> datetime:
    if working_time:
        return calendar.add_working_time(start, within)
    return (start + within).astimezone(calendar.zone)
