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
from escalation.matcher import PhraseIndex
from escalation.regex_prefilter import GuardedRegex
from escalation.trust import TrustPolicy, assess, page_hold, sender_standing, stranger_demotion
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
    """Phrases are kept as phrase_text() gives them: the literal they match in normalized text."""
    name: str
    category: str
    severity: str | None               # None: not an incident
    fields: tuple[str, ...]
    phrases: tuple[str, ...] = ()                 # tried before the regexes, in this order
    regexes: tuple[GuardedRegex, ...] = ()        # each skipped when the text lacks its literals
    unless: tuple[str, ...] = ()                  # any of these phrases vetoes the rule
    requires: tuple[str, ...] = ()                # when given, one of these phrases must be present too
    description: str = ""

    @property
    def every_phrase(self) -> tuple[str, ...]:
        return (*self.phrases, *self.unless, *self.requires)


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
    # Every rule's phrases in one automaton: built with the policy (once per load), kept by replace().
    phrase_index: PhraseIndex | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        phrases = [phrase for rule in self.rules for phrase in rule.every_phrase]
        if self.phrase_index is None or not self.phrase_index.covers(phrases):
            object.__setattr__(self, "phrase_index", PhraseIndex.of(phrases))

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
    tenant: str | None = None          # what the tenant directory says of the sender; None: the directory is empty
    stranger: str | None = None        # why a stranger's unmatched mail gets a ticket and no page

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
            "tenant": self.tenant, "stranger": self.stranger,
        }


def normalize(text: str) -> str:
    """Case- and form-insensitive text for matching: NFKC, casefold, straight quotes, one space."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = text.translate(_QUOTES)
    return re.sub(r"\s+", " ", text)


_QUOTES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-", "\u2014": "-"})


def phrase_text(phrase: str) -> str:
    """A phrase as it appears in normalized text, where every whitespace run is one space; the matcher
    finds it as whole words (see escalation/matcher.py)."""
    return " ".join(normalize(phrase).split())


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
    hits = evaluate_rules(parsed, policy)
    sender = parsed.sender or mail_from or None
    tenant, stranger = sender_standing(sender, policy.trust), None
    if hits:
        decisive = hits[0]
        category, severity = decisive.category, decisive.severity
        reason = f"rule {decisive.rule} matched {decisive.matched!r} in the {decisive.field}"
    elif (stranger := stranger_demotion(sender, policy.trust)) is not None:
        category, severity = policy.unclassified_category, None
        reason = f"no rule matched, and {sender or 'the sender'} is not in the tenant directory: a ticket, no page"
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
        rules=tuple(hits), trust=trust, page_held=held, tenant=tenant, stranger=stranger)


def evaluate_rules(parsed: ParsedMessage, policy: Policy) -> list[RuleHit]:
    """Every rule that fired, in rule order: the first one decides."""
    fields = _Fields(parsed, policy.phrase_index)
    hits = []
    for rule in policy.rules:
        hit = _first_match(rule, fields)
        if hit is not None:
            hits.append(hit)
    return hits


def _first_match(rule: Rule, fields: _Fields) -> RuleHit | None:
    if any(fields.has_any(name, rule.unless) for name in rule.fields):
        return None
    if rule.requires and not any(fields.has_any(name, rule.requires) for name in rule.fields):
        return None
    for name in rule.fields:
        matched = _first_pattern_in(rule, fields, name)
        if matched is not None:
            return RuleHit(rule.name, rule.category, rule.severity, name, matched[:200])
    return None


def _first_pattern_in(rule: Rule, fields: _Fields, name: str) -> str | None:
    """The text matched by the rule's first pattern that matches in this field: phrases, then regexes."""
    found = fields.phrases_in(name)
    for phrase in rule.phrases:
        if phrase in found:
            return phrase
    for regex in rule.regexes:
        match = regex.search(fields.text(name))
        if match:
            return match.group(0)
    return None


class _Fields:
    """One mail's normalized fields and the phrases found in each, each worked out once, when first asked."""

    def __init__(self, parsed: ParsedMessage, index: PhraseIndex) -> None:
        self._parsed = parsed
        self._index = index
        self._texts: dict[str, str] = {}
        self._found: dict[str, frozenset[str]] = {}

    def text(self, name: str) -> str:
        if name not in self._texts:
            self._texts[name] = normalize(_FIELD_SOURCES[name](self._parsed))
        return self._texts[name]

    def phrases_in(self, name: str) -> frozenset[str]:
        if name not in self._found:
            self._found[name] = self._index.found_in(self.text(name))
        return self._found[name]

    def has_any(self, name: str, phrases: tuple[str, ...]) -> bool:
        return bool(phrases) and not self.phrases_in(name).isdisjoint(phrases)


# Each field's text before normalize(); a rule's `fields` name them.
_FIELD_SOURCES = {
    "subject": lambda parsed: parsed.subject,
    "body": lambda parsed: own_words(parsed.text)[:MAX_BODY_CHARS_FOR_RULES],
    "sender": lambda parsed: parsed.sender or "",
    "headers": lambda parsed: "\n".join(f"{name}: {value}" for name, value in parsed.headers),
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
