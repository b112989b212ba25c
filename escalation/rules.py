"""The policy's rules against one mail: which fired, in rule order, and the text each matched.

A rule fires when one of its phrases (whole words) or regexes matches one of its fields, none of
its `unless` phrases is in any of them, and, when it has `requires`, one of those is. Matching runs
on normalized text (normalize()): NFKC, casefolded, straight quotes, every whitespace run one space.

Everything a policy looks for is compiled once per load into a RuleMatcher: one automaton over every
phrase (escalation/matcher.py), one RE2 set over every regex (escalation/regex_index.py), and the
table from what was found to the rules it can fire. A mail is then read once per field, and only
the rules something was found for are looked at, in rule order.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from emergencyd.escalation.matcher import PhraseIndex
from emergencyd.escalation.regex_index import RegexIndex
from emergencyd.escalation.regex_prefilter import GuardedRegex
from emergencyd.parsers.message import ParsedMessage
from emergencyd.parsers.text import one_space

if TYPE_CHECKING:
    from emergencyd.escalation.policy import Policy

FIELDS = ("subject", "body", "sender", "headers")
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
class RuleHit:
    rule: str
    category: str
    severity: str | None
    field: str
    matched: str


Positions = tuple[int, ...]   # rules, by their place in the policy


@dataclass(frozen=True)
class RuleMatcher:
    """Built once per policy load, for exactly these rules; each worker process builds its own."""
    rules: tuple[Rule, ...]
    phrases: PhraseIndex
    regexes: RegexIndex
    by_phrase: Mapping[str, Mapping[str, Positions]] = field(repr=False)   # field -> phrase -> rules it fires
    by_regex: Mapping[str, _RegexRules] = field(repr=False)                 # field -> rules with regexes

    @classmethod
    def of(cls, rules: Iterable[Rule]) -> RuleMatcher:
        rules = tuple(rules)
        by_phrase: dict[str, dict[str, list[int]]] = {}
        by_regex: dict[str, dict[GuardedRegex, list[int]]] = {}
        for position, rule in enumerate(rules):
            for name in rule.fields:
                for phrase in rule.phrases:
                    by_phrase.setdefault(name, {}).setdefault(phrase, []).append(position)
                for regex in rule.regexes:
                    by_regex.setdefault(name, {}).setdefault(regex, []).append(position)
        regex_index = RegexIndex.of(regex for rule in rules for regex in rule.regexes)
        return cls(rules, PhraseIndex.of(p for rule in rules for p in rule.every_phrase), regex_index,
                   _frozen(by_phrase), {name: _RegexRules.of(table, regex_index) for name, table in by_regex.items()})

    def __reduce__(self):
        return RuleMatcher.of, (self.rules,)

    def candidates(self, fields: _Fields) -> list[int]:
        """The rules that found something in one of their fields, in rule order; no other can fire."""
        positions: set[int] = set()
        for name, by_phrase in self.by_phrase.items():
            for phrase in fields.found[name]:
                positions.update(by_phrase.get(phrase, ()))
        for name, regex_rules in self.by_regex.items():
            twins_matching = fields.scans[name].twins_matching
            if twins_matching is None:
                positions.update(regex_rules.every)
                continue
            positions.update(regex_rules.untwinned)
            for at in twins_matching:
                positions.update(regex_rules.by_twin.get(at, ()))
        return sorted(positions)


@dataclass(frozen=True)
class _RegexRules:
    """One field's rules with regexes: all of them, those a twin's match (by its place in the RE2 set) can
    fire, and those whose regexes have no twin."""
    every: Positions
    by_twin: Mapping[int, Positions]
    untwinned: Positions

    @classmethod
    def of(cls, by_regex: dict[GuardedRegex, list[int]], index: RegexIndex) -> _RegexRules:
        by_twin: dict[int, list[int]] = {}
        untwinned: list[int] = []
        for regex, positions in by_regex.items():
            at = index.set_index.get(regex)
            (untwinned if at is None else by_twin.setdefault(at, [])).extend(positions)
        every = sorted({position for positions in by_regex.values() for position in positions})
        return cls(tuple(every), {at: tuple(positions) for at, positions in by_twin.items()}, tuple(untwinned))


def _frozen(table: dict[str, dict[Any, list[int]]]) -> dict[str, dict[Any, Positions]]:
    return {name: {key: tuple(positions) for key, positions in keys.items()} for name, keys in table.items()}


def evaluate_rules(parsed: ParsedMessage, policy: Policy) -> list[RuleHit]:
    """Every rule that fired, in rule order: the first one decides."""
    matcher = policy.matcher
    assert matcher is not None                    # a Policy builds its matcher when it is made
    fields = _Fields(parsed, matcher)
    hits = []
    for position in matcher.candidates(fields):
        hit = _first_match(matcher.rules[position], fields)
        if hit is not None:
            hits.append(hit)
    return hits


def _first_match(rule: Rule, fields: _Fields) -> RuleHit | None:
    # Patterns first, vetoes after: the answer is the same, and a veto is rarer than no match.
    for name in rule.fields:
        matched = _first_pattern_in(rule, fields, name)
        if matched is not None:
            break
    else:
        return None
    found = [fields.found[field_name] for field_name in rule.fields]
    if rule.unless and any(in_field and not in_field.isdisjoint(rule.unless) for in_field in found):
        return None
    if rule.requires and not any(in_field and not in_field.isdisjoint(rule.requires) for in_field in found):
        return None
    return RuleHit(rule.name, rule.category, rule.severity, name, matched[:200])


def _first_pattern_in(rule: Rule, fields: _Fields, name: str) -> str | None:
    """The text matched by the rule's first pattern that matches in this field: phrases, then regexes."""
    found = fields.found[name]
    if found and not found.isdisjoint(rule.phrases):
        return next(phrase for phrase in rule.phrases if phrase in found)
    if rule.regexes:
        scan = fields.scans[name]
        for regex in rule.regexes:
            match = scan.search(regex)
            if match:
                return match.group(0)
    return None


class _Fields:
    """One mail's normalized fields, the phrases found in each and its regex scan, each worked out once,
    when first asked (a policy may never name the headers)."""

    def __init__(self, parsed: ParsedMessage, matcher: RuleMatcher) -> None:
        self.texts = _Lazy(lambda name: normalize(_FIELD_SOURCES[name](parsed)))
        self.found = _Lazy(lambda name: matcher.phrases.found_in(self.texts[name]))
        self.scans = _Lazy(lambda name: matcher.regexes.scan(self.texts[name]))


class _Lazy(dict):
    """A dict that works a missing key's value out when first read."""

    def __init__(self, work_out: Callable[[str], Any]) -> None:
        super().__init__()
        self._work_out = work_out

    def __missing__(self, name: str) -> Any:
        value = self[name] = self._work_out(name)
        return value


# Each field's text before normalize(); a rule's `fields` name them.
_FIELD_SOURCES = {
    "subject": lambda parsed: parsed.subject,
    "body": lambda parsed: own_words(parsed.text)[:MAX_BODY_CHARS_FOR_RULES],
    "sender": lambda parsed: parsed.sender or "",
    "headers": lambda parsed: "\n".join(f"{name}: {value}" for name, value in parsed.headers),
}


def normalize(text: str) -> str:
    """Case- and form-insensitive text for matching: NFKC, casefold, straight quotes, one space."""
    text = unicodedata.normalize("NFKC", text).casefold()
    if not text.isascii():       # the quotes table maps only non-ASCII characters; translate() costs 5 us a 2 KB
        text = text.translate(_QUOTES)
    return one_space(text)


_QUOTES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-", "\u2014": "-"})


def phrase_text(phrase: str) -> str:
    """A phrase as it appears in normalized text, where every whitespace run is one space; the matcher
    finds it as whole words (see escalation/matcher.py)."""
    return " ".join(normalize(phrase).split())


def own_words(text: str) -> str:
    """The body without quoted history: lines quoted with '>' and what follows a reply's header."""
    if text.isascii() and ">" not in text and not _may_hold_a_reply_header(text.lower()):
        return "\n".join(text.splitlines())   # every line is the tenant's own: skip the loop over lines
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


def _may_hold_a_reply_header(lowered_ascii: str) -> bool:
    # Every match of _REPLY_HEADER holds one of these; in ASCII text IGNORECASE pairs letters only with their case.
    return "wrote:" in lowered_ascii or "original message" in lowered_ascii
