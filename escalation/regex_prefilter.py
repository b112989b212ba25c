"""A policy regex skipped, with the same answer, when a text lacks the literals every match contains.

Python's `re` finds no fast start for a pattern that begins with `\\b` or a group: it tries every
position, about 0.7 ms per regex over a 20 KB body, whether or not the body has any of its words.
Most mail has none of them. So each regex is read once, at load, with the standard library's own
parser (`re._parser`, the one `re.compile` uses), and the literals that any match must contain are
kept: `\\bapi\\b[^.\\n]{0,20}\\b(down|unavailable)` needs "api" and one of "down", "unavailable".
A text without them cannot match, and a substring test answers that in microseconds. When the text
has them the regex runs as before, but from where a match could first begin: a match contains each
needed literal, so it starts at most the pattern's widest match before the first place where the
last of them appears (`search(text, pos)` still sees the text before `pos`, for `\b`, look-behinds
and `^`). The answer never changes; a part of a pattern this reading does not understand only
makes the filter let more through. (No maintained Python library does
this; Rust's regex-syntax and RE2's FilteredRE2 do it for their own dialects, which differ from the
policy's Python regexes on `\\b`, `\\w` and `\\d` outside ASCII.)

Text that is ASCII is answered faster by the regexes' RE2 twins (escalation/regex_index.py): this
filter serves the rest, and regexes RE2 cannot express.

Texts here are normalized (casefolded), and the policy's regexes use IGNORECASE, so literals are
kept in lower case, ASCII only: of the characters IGNORECASE pairs with an ASCII letter, only the
dotless "ı" survives casefolding, and a text containing it always runs the regex.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from re import _constants as sre  # type: ignore[attr-defined]  # the parser's opcodes, as re.compile reads them
from re import _parser as sre_parse  # type: ignore[attr-defined]  # the parser re.compile uses

Needs = tuple[frozenset[str], ...]   # each: at least one of these strings is in every match
_REPEATS = {sre.MAX_REPEAT, sre.MIN_REPEAT, getattr(sre, "POSSESSIVE_REPEAT", sre.MAX_REPEAT)}
_ATOMIC_GROUP = getattr(sre, "ATOMIC_GROUP", None)   # (?>...), Python 3.11+
_UNSAFE_IN_TEXT = "ı"   # matches "i" under IGNORECASE and casefolds to itself


@dataclass(frozen=True)
class GuardedRegex:
    regex: re.Pattern[str]
    needs: Needs
    widest: int = 0      # the most characters one match can span (huge when unbounded)
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Looked up once per rule and field of every mail (escalation/regex_index.py): hash the fields once.
        object.__setattr__(self, "_hash", hash((self.regex, self.needs, self.widest)))

    def __hash__(self) -> int:
        return self._hash

    def __reduce__(self):
        # A str's hash differs from process to process: a worker hashes its copy anew.
        return GuardedRegex, (self.regex, self.needs, self.widest)

    @property
    def pattern(self) -> str:
        return self.regex.pattern

    def search(self, text: str) -> re.Match[str] | None:
        if not self.needs or _UNSAFE_IN_TEXT in text:
            return self.regex.search(text)
        starts = [_first_of(alternatives, text) for alternatives in self.needs]
        if -1 in starts:
            return None
        return self.regex.search(text, max(0, max(starts) - self.widest))


def _first_of(alternatives: frozenset[str], text: str) -> int:
    """Where the first of these literals first appears in text, or -1."""
    found = [at for at in map(text.find, alternatives) if at >= 0]
    return min(found) if found else -1


def guarded(regex: re.Pattern[str]) -> GuardedRegex:
    try:
        parsed = sre_parse.parse(regex.pattern, regex.flags)
        needs, widest = _needs(list(parsed)), parsed.getwidth()[1]
    except Exception:   # a construct this reading does not know: no filter, the regex always runs
        needs, widest = [], 0
    return GuardedRegex(regex, tuple(dict.fromkeys(needs)), widest)


def _needs(items: list) -> list[frozenset[str]]:
    """What every match of this sequence contains: runs of literal characters, and one of the
    alternatives of a group that every match goes through."""
    needs: list[frozenset[str]] = []
    run = ""
    for op, arg in items:
        if op is sre.LITERAL and chr(arg).isascii():
            run += chr(arg).lower()
            continue
        if run:
            needs.append(frozenset({run}))
            run = ""
        if op is sre.SUBPATTERN:
            needs += _needs(list(arg[-1]))       # (group, added flags, removed flags, pattern)
        elif op is _ATOMIC_GROUP:
            needs += _needs(list(arg))
        elif op in _REPEATS and arg[0] >= 1:
            needs += _needs(list(arg[2]))
        elif op is sre.BRANCH:
            needs += _one_of(arg[1])
    if run:
        needs.append(frozenset({run}))
    return needs


def _one_of(branches: list) -> list[frozenset[str]]:
    """A match goes through one branch: it contains one of each branch's most telling literals."""
    chosen: set[str] = set()
    for branch in branches:
        needs = _needs(list(branch))
        if not needs:
            return []
        chosen |= max(needs, key=lambda alternatives: min(map(len, alternatives)))
    return [frozenset(chosen)]
