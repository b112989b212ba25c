"""A policy regex's twin in RE2's syntax: the same matches on ASCII text that holds no line break.

Python's `re` backtracks from every position of a 20 KB body, about 0.5 to 1 ms per policy regex;
RE2 (google-re2) runs an automaton over it in about 40 us, and one RE2::Set answers for every regex
of the policy at once. The two dialects differ outside ASCII (RE2's `\\b`, `\\w` and `\\d` are ASCII
only, its case folding is Unicode's simple folding) and in details of syntax (`{,n}`, `[[:alpha:]]`,
`\\Z`). So the user's pattern is never handed to RE2 as written: it is read with the standard library's
own parser (`re._parser`, what re.compile uses) and written out again, node by node, for the only
texts the twin is used on, normalized policy text that is ASCII (whitespace runs are one space there,
so no line breaks):
- each single-character node (a literal, a class, `.`, `\\w`, `\\s`, ...) becomes the explicit set of
  the ASCII characters that Python's own engine matches with it, under the flags in force there, so
  IGNORECASE, `\\s`'s `\\x1c` and everything else about them is Python's answer, not a translation;
- `^`, `\\A` become `\\A`; `$`, `\\Z` become `\\z` (equal without line breaks); `\\b`, `\\B` stay (both
  engines take word characters as [0-9A-Za-z_] in ASCII text);
- groups, alternatives and repeats keep their order and greed.
Look-arounds, back-references, atomic groups and possessive repeats have no RE2 form: such a regex
gets no twin and keeps the literal prefilter (escalation/regex_prefilter.py).

The policy trusts a twin that finds nothing, and takes from one that finds something only where to
start: Python's regex then matches there, and searches the whole text should it not match.
"""
from __future__ import annotations

import re
from re import _compiler as sre_compile  # type: ignore[attr-defined]  # compiles one node, as re.compile does
from re import _constants as sre  # type: ignore[attr-defined]  # the parser's opcodes
from re import _parser as sre_parse  # type: ignore[attr-defined]  # the parser re.compile uses

_ASCII = tuple(chr(code) for code in range(128))
_ONE_CHARACTER = {sre.LITERAL, sre.NOT_LITERAL, sre.ANY, sre.IN}
_STARTS = {sre.AT_BEGINNING, sre.AT_BEGINNING_STRING, sre.AT_BEGINNING_LINE}
_ENDS = {sre.AT_END, sre.AT_END_STRING, sre.AT_END_LINE}
_EDGES = {sre.AT_BOUNDARY: r"\b", sre.AT_NON_BOUNDARY: r"\B"}
RE2_MAX_REPEAT = 1000
_NOTHING = r"[^\x00-\x{10FFFF}]"   # a class no character is in


class Untranslatable(Exception):
    """A construct RE2 has no equivalent for."""


def ascii_twin(regex: re.Pattern[str]) -> str | None:
    """The RE2 pattern matching where `regex` matches in ASCII text without line breaks, or None."""
    try:
        parsed = sre_parse.parse(regex.pattern, regex.flags)
        return _sequence(list(parsed), parsed.state.flags)
    except (Untranslatable, RecursionError, re.error):
        return None


def _sequence(items: list, flags: int) -> str:
    return "".join(_node(op, arg, flags) for op, arg in items)


def _node(op, arg, flags: int) -> str:
    if op in _ONE_CHARACTER:
        return _character_class(op, arg, flags)
    if op is sre.AT:
        if arg in _STARTS:
            return r"\A"
        if arg in _ENDS:
            return r"\z"
        if arg in _EDGES:
            return _EDGES[arg]
        raise Untranslatable(arg)
    if op is sre.SUBPATTERN:
        _group, added, removed, pattern = arg
        return "(?:" + _sequence(list(pattern), (flags | added) & ~removed) + ")"
    if op is sre.BRANCH:
        return "(?:" + "|".join(_sequence(list(branch), flags) for branch in arg[1]) + ")"
    if op in (sre.MAX_REPEAT, sre.MIN_REPEAT):
        low, high, pattern = arg
        if low > RE2_MAX_REPEAT or (high != sre.MAXREPEAT and high > RE2_MAX_REPEAT):
            raise Untranslatable("repeat count")
        bounds = f"{{{low},}}" if high == sre.MAXREPEAT else f"{{{low},{high}}}"
        return "(?:" + _sequence(list(pattern), flags) + ")" + bounds + ("?" if op is sre.MIN_REPEAT else "")
    raise Untranslatable(op)


def _character_class(op, arg, flags: int) -> str:
    """The ASCII characters Python's engine matches with this one-character node, as an RE2 class."""
    key = (op, repr(arg), flags)
    if key not in _CLASSES:
        node = sre_parse.SubPattern(sre_parse.State())
        node.append((op, arg))
        matcher = sre_compile.compile(node, flags)
        codes = [ord(c) for c in _ASCII if matcher.match(c)]
        runs = "".join(_range(first, last) for first, last in _runs(codes))
        _CLASSES[key] = f"[{runs}]" if runs else _NOTHING
    return _CLASSES[key]


_CLASSES: dict[tuple, str] = {}   # the same node under the same flags recurs across a policy's regexes


def _runs(codes: list[int]) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for code in codes:
        if runs and runs[-1][1] == code - 1:
            runs[-1] = (runs[-1][0], code)
        else:
            runs.append((code, code))
    return runs


def _range(first: int, last: int) -> str:
    return rf"\x{{{first:02x}}}" if first == last else rf"\x{{{first:02x}}}-\x{{{last:02x}}}"
