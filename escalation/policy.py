"""The support policy as data: noise first, then ordered rules, then the routing table.

classify() is pure: a parsed message and its receipt time in, a Verdict out, with
every rule that fired and the text it matched, so each decision can be explained.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Mapping

from escalation.hours import SupportCalendar, Window
from escalation.trust import TrustPolicy, assess, page_hold
from parsers.auth_results import SenderTrust
from parsers.message import ParsedMessage
from parsers.noise import detect_noise
from parsers.subject import descriptive_subject

SEVERITIES = ("P1", "P2", "P3", "P4")
NOT_AN_INCIDENT = "none"           # the routing table's row for questions and requests
FIELDS = ("subject", "body", "sender", "headers")
URGENCIES = ("high", "low")
ZENDESK_PRIORITIES = ("urgent", "high", "normal", "low")
# Rules read the tenant's own words: quoted history and huge bodies add only noise and time.
MAX_BODY_CHARS_FOR_RULES = 20_000


@dataclass(frozen=True)
class Rule:
    name: str
    category: str
    severity: str | None               # None: not an incident
    fields: tuple[str, ...]
    patterns: tuple[re.Pattern[str], ...]
    unless: tuple[re.Pattern[str], ...] = ()      # any of these vetoes the rule
    requires: tuple[re.Pattern[str], ...] = ()    # when given, one of these must be present too
    description: str = ""


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

    def route(self, severity: str | None, window: Window) -> Route:
        return self.routing[(severity or NOT_AN_INCIDENT, window)]


@dataclass(frozen=True)
class RuleHit:
    rule: str
    category: str
    severity: str | None
    field: str
    matched: str


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
        }


def normalize(text: str) -> str:
    """Case- and form-insensitive text for matching: NFKC, casefold, straight quotes, one space."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = text.translate(_QUOTES)
    return re.sub(r"\s+", " ", text)


_QUOTES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-", "\u2014": "-"})


def phrase_pattern(phrase: str) -> re.Pattern[str]:
    """A phrase matches as whole words, with any run of whitespace between them."""
    words = normalize(phrase).split()
    return re.compile(r"(?<!\w)" + r"\s+".join(re.escape(w) for w in words) + r"(?!\w)")


def classify(parsed: ParsedMessage, *, received_at: datetime, mail_from: str | None,
             own_addresses: tuple[str, ...], policy: Policy, own_hostnames: tuple[str, ...] = (),
             trust: SenderTrust | None = None) -> Verdict:
    """`trust` comes from the decide step (envelope and DKIM aware); without it, from the headers alone."""
    window = policy.calendar.window_at(received_at)
    trust = trust or assess(parsed.headers, policy.trust)
    subject = descriptive_subject(parsed.subject, parsed.text, policy.generic_subjects)
    noise = detect_noise(parsed, mail_from=mail_from, own_addresses=own_addresses, own_hostnames=own_hostnames)
    if noise is not None:
        return Verdict(suppressed=True, reason=f"{noise.kind}: {noise.reason}", category=f"noise:{noise.kind}",
                       severity=None, window=window, page=False, urgency=None, zendesk_priority="low",
                       respond_by=None, update_every=None, ticket=policy.noise_gets_ticket, ticket_subject=subject,
                       trust=trust)
    hits = evaluate_rules(parsed, policy.rules)
    if hits:
        decisive = hits[0]
        category, severity = decisive.category, decisive.severity
        reason = f"rule {decisive.rule} matched {decisive.matched!r} in the {decisive.field}"
    else:
        category, severity = policy.unclassified_category, policy.unclassified_severity
        reason = (f"no rule matched: treated as {severity or 'not an incident'} "
                  "(on an emergency address a missed P1 costs more than a false page)")
    route = policy.route(severity, window)
    held = page_hold(trust, policy.trust) if route.urgency is not None else None
    page = route.urgency is not None and held is None
    return Verdict(
        suppressed=False, reason=reason, category=category, severity=severity, window=window,
        page=page, urgency=route.urgency if page else None, zendesk_priority=route.zendesk_priority,
        respond_by=_deadline(policy.calendar, received_at, route.respond_within, route.working_time),
        update_every=route.update_every, ticket=True, ticket_subject=subject, working_time=route.working_time,
        rules=tuple(hits), trust=trust, page_held=held)


def evaluate_rules(parsed: ParsedMessage, rules: tuple[Rule, ...]) -> list[RuleHit]:
    """Every rule that fired, in rule order: the first one decides."""
    texts = _field_texts(parsed)
    hits = []
    for rule in rules:
        hit = _first_match(rule, texts)
        if hit is not None:
            hits.append(hit)
    return hits


def _first_match(rule: Rule, texts: dict[str, str]) -> RuleHit | None:
    scoped = [(name, texts[name]) for name in rule.fields]
    if any(p.search(text) for p in rule.unless for _, text in scoped):
        return None
    if rule.requires and not any(p.search(text) for p in rule.requires for _, text in scoped):
        return None
    for name, text in scoped:
        for pattern in rule.patterns:
            match = pattern.search(text)
            if match:
                return RuleHit(rule.name, rule.category, rule.severity, name, match.group(0)[:200])
    return None


def _field_texts(parsed: ParsedMessage) -> dict[str, str]:
    return {
        "subject": normalize(parsed.subject),
        "body": normalize(own_words(parsed.text)[:MAX_BODY_CHARS_FOR_RULES]),
        "sender": normalize(parsed.sender or ""),
        "headers": normalize("\n".join(f"{name}: {value}" for name, value in parsed.headers)),
    }


def own_words(text: str) -> str:
    """The body without quoted history: lines quoted with '>' and what follows a reply's header."""
    kept = []
    for line in text.splitlines():
        stripped = line.strip()
        if _REPLY_HEADER.match(stripped):
            break
        if not stripped.startswith(">"):
            kept.append(line)
    return "\n".join(kept)


# A forward is kept: what was forwarded is usually the report itself.
_REPLY_HEADER = re.compile(r"^(on .{4,200} wrote:|-+ ?original message ?-+)$", re.IGNORECASE)


def _deadline(calendar: SupportCalendar, start: datetime, within: timedelta, working_time: bool) -> datetime:
    if working_time:
        return calendar.add_working_time(start, within)
    return (start + within).astimezone(calendar.zone)
