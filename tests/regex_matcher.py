"""The reference for escalation/matcher.py: the rules as escalation/policy.py ran them before, one
regex per phrase, searched separately over each field. tests/unit/test_matcher.py checks that the one
pass decides exactly as this did; bench/classify.py times both side by side."""
from __future__ import annotations

import re
from dataclasses import dataclass

from emergencyd.escalation.rules import (
    MAX_BODY_CHARS_FOR_RULES,
    RuleHit,
    normalize,
    own_words,
)
from emergencyd.parsers.message import ParsedMessage


def phrase_pattern(phrase: str) -> re.Pattern[str]:
    """A phrase matches as whole words, with any run of whitespace between them."""
    words = normalize(phrase).split()
    return re.compile(r"(?<!\w)" + r"\s+".join(re.escape(w) for w in words) + r"(?!\w)")


@dataclass(frozen=True)
class RegexRule:
    name: str
    category: str
    severity: str | None
    fields: tuple[str, ...]
    patterns: tuple[re.Pattern[str], ...]
    unless: tuple[re.Pattern[str], ...] = ()
    requires: tuple[re.Pattern[str], ...] = ()


def regex_rules(table: dict) -> tuple[RegexRule, ...]:
    """The [policy] table's rules compiled as before: one regex per phrase, phrases before regexes."""
    rules = []
    for rule in table.get("rules", []):
        patterns = [phrase_pattern(p) for p in rule.get("phrases", [])]
        patterns += [re.compile(r, re.IGNORECASE) for r in rule.get("regexes", [])]
        severity = rule.get("severity")
        rules.append(RegexRule(
            rule["name"], rule["category"], None if severity == "none" else severity,
            tuple(rule.get("fields") or ["subject", "body"]), tuple(patterns),
            tuple(phrase_pattern(p) for p in rule.get("unless", [])),
            tuple(phrase_pattern(p) for p in rule.get("requires", []))))
    return tuple(rules)


def regex_evaluate(parsed: ParsedMessage, rules: tuple[RegexRule, ...]) -> list[RuleHit]:
    texts = _field_texts(parsed)
    hits = []
    for rule in rules:
        hit = _first_match(rule, texts)
        if hit is not None:
            hits.append(hit)
    return hits


def _first_match(rule: RegexRule, texts: dict[str, str]) -> RuleHit | None:
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
