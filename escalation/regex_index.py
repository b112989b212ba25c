"""Every regex of a policy asked at once, in one pass over a field, when the field's text is ASCII.

Built once per policy load, like the phrase index (escalation/matcher.py): each regex's RE2 twin
(escalation/re2_twin.py) goes into one RE2::Set, which says in one scan of a text which twins match
anywhere in it. A regex whose twin is not among them does not match; one whose twin is gets its
twin's leftmost start, and Python's own regex decides the match from there. Text that is not ASCII,
or holds a line break, and regexes without a twin keep the literal prefilter (GuardedRegex.search).

RE2::Set gives up on a text when its automaton outgrows its memory, and then reports no match at all:
a first pattern that matches at the end of every text (so only a scan that got there reports it)
tells that failure from a real "none", and the scan falls back to the prefilter for every regex.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import re2

from emergencyd.escalation.re2_twin import ascii_twin
from emergencyd.escalation.regex_prefilter import GuardedRegex

_AT_THE_END = 0   # the Set's first pattern, \z: found in every text the Set scanned to its end



def _options() -> Any:
    options = re2.Options()
    options.log_errors = False     # a pattern RE2 refuses only loses its twin; nothing to log
    options.never_capture = True   # only where a match starts is used
    return options


@dataclass(frozen=True)
class RegexIndex:
    regexes: tuple[GuardedRegex, ...]
    twins: Mapping[GuardedRegex, Any] = field(default_factory=dict, compare=False, repr=False)
    set_index: Mapping[GuardedRegex, int] = field(default_factory=dict, compare=False, repr=False)
    twin_set: Any = field(default=None, compare=False, repr=False)   # None when no regex has a twin

    @classmethod
    def of(cls, regexes: Iterable[GuardedRegex]) -> RegexIndex:
        unique = tuple(dict.fromkeys(regexes))
        twin_set = re2.Set.SearchSet(_options())
        twin_set.Add(r"\z")    # "" would do, at twice the cost: it matches at every position
        twins, set_index = {}, {}
        for regex in unique:
            pattern = ascii_twin(regex.regex)
            try:
                compiled = re2.compile(pattern, _options()) if pattern is not None else None
                at = twin_set.Add(pattern) if compiled is not None else None
            except re2.error:    # beyond RE2's limits (its program size): the prefilter serves this regex
                continue
            if compiled is not None and at is not None:
                twins[regex], set_index[regex] = compiled, at
        if not twins:
            return cls(unique)
        twin_set.Compile()
        return cls(unique, twins, set_index, twin_set)

    def __reduce__(self):
        # Sent to the worker processes by pickle: the regexes travel, each side builds its own RE2 objects.
        return RegexIndex.of, (self.regexes,)

    def scan(self, text: str) -> RegexScan:
        if self.twin_set is None or not text.isascii() or "\n" in text:
            return RegexScan(self, text, None)
        matching = self.twin_set.Match(text) or ()
        return RegexScan(self, text, frozenset(matching) if _AT_THE_END in matching else None)


@dataclass(frozen=True)
class RegexScan:
    """One text against the index: `twins_matching` is None when the twins do not answer for it."""
    index: RegexIndex
    text: str
    twins_matching: frozenset[int] | None

    def search(self, regex: GuardedRegex) -> re.Match[str] | None:
        at = self.index.set_index.get(regex) if self.twins_matching is not None else None
        if at is None or self.twins_matching is None:
            return regex.search(self.text)
        if at not in self.twins_matching:
            return None
        found = self.index.twins[regex].search(self.text)
        start = found.start() if found is not None else 0
        return regex.regex.match(self.text, start) or regex.regex.search(self.text)

