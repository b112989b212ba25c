"""Descriptive ticket subjects, after the support manual's tip: "failure pushing app" becomes
"failure pushing app: invalid mode 0444", from the most specific error line of the body."""
from __future__ import annotations

import re
import unicodedata
from bisect import bisect_right
from functools import lru_cache
from itertools import accumulate

import ahocorasick_rs

MAX_SUBJECT_CHARS = 150
MAX_LINES_EXAMINED = 400
_REPLY_PREFIX = re.compile(r"^\s*((re|fwd?|aw|wg|sv|vs|tr|rif|enc)\s*(\[\d+\])?\s*:\s*|\[[^\]]{1,40}\]\s*)+",
                           re.IGNORECASE)
_ERROR_WORDS = re.compile(
    r"\b(error|errors|failed|failure|fails|failing|exception|invalid|denied|refused|timed? ?out|timeout|"
    r"unavailable|cannot|can't|unable|fatal|panic|crash(ed)?|rejected|forbidden|not found|oom|killed)\b",
    re.IGNORECASE)
# Every match of _ERROR_WORDS holds one of these, in lower case, when the line is ASCII (IGNORECASE pairs
# an ASCII letter only with its case and four non-ASCII letters). Most lines of a log dump hold none:
# a substring test skips them, where the word-bounded search costs about 18 us a line.
_ERROR_STEMS = ("error", "fail", "exception", "invalid", "denied", "refused", "timeout", "time out", "timedout",
                "timed out", "unavailable", "cannot", "can't", "unable", "fatal", "panic", "crash", "rejected",
                "forbidden", "not found", "oom", "killed")
_SPECIFIC = re.compile(r"(\d{3,}|\b\d+\b|['\"`][^'\"`]{2,}['\"`]|\w+=\S+|/\S+|\w+\.\w+|[A-Z_]{4,}|:\s*\S)")


def bare_subject(subject: str) -> str:
    """Without Re:/Fwd:/AW: and [tags], case and whitespace folded: what a human would call the subject."""
    text = _REPLY_PREFIX.sub("", unicodedata.normalize("NFKC", subject))
    return " ".join(text.split()).casefold()


# A monitoring loop varies only its counters, ids and stamps: these fold to placeholders (see loop_subject).
_MONTH = (r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|"
          r"sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)\.?")
_WEEKDAY = r"(?:(?:mon|tue|wed|thu|fri|sat|sun)[a-z]*\.?,?\s+)?"
_DAY = r"\d{1,2}(?:st|nd|rd|th)?"
_ALONE_BEFORE, _ALONE_AFTER = r"(?<![0-9a-z])", r"(?![0-9a-z])"   # "_", "-" and "#" separate, unlike \b
_UUID = re.compile(_ALONE_BEFORE + r"[0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]{12}" + _ALONE_AFTER)
_DATE = re.compile(_ALONE_BEFORE + "(?:" + "|".join((
    r"\d{4}-\d{1,2}-\d{1,2}",                          # 2026-11-27
    r"\d{4}[./]\d{1,2}[./]\d{1,2}",                    # 2026/11/27
    r"\d{1,2}[./-]\d{1,2}[./-]\d{2,4}",                # 27.11.2026, 11/27/26
    rf"{_WEEKDAY}{_DAY}\.?\s*{_MONTH}(?:,?\s+\d{{4}})?",  # Fri, 27 Nov 2026
    rf"{_WEEKDAY}{_MONTH}\s+{_DAY}(?:,?\s+\d{{4}})?",     # November 27th, 2026
)) + r")(?:t(?=\d)|" + _ALONE_AFTER + ")")              # ISO 8601 joins the time with a "T"
_ZONE = r"(?:\s?(?:z|utc|gmt|[+-]\d{2}:?\d{2}|cet|cest|eet|eest|bst|ist|[ecmp][sd]t|jst|aest|aedt|sgt|hkt))?"
_TIME = re.compile(r"(?<![\d:])\d{1,2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:\s?[ap]\.?m\.?)?" + _ZONE + _ALONE_AFTER)
# At least one digit, so that words such as "facade" or "decade" stay words.
_HEX_ID = re.compile("#?" + _ALONE_BEFORE + r"(?:0x[0-9a-f]+|(?=[a-f]*\d)[0-9a-f]{6,})" + _ALONE_AFTER)
_NUMBER = re.compile(r"#?\d+")


def loop_subject(subject: str) -> str:
    """The bare subject with dates, times, ids and numbers as placeholders: what stays the same
    from one mail of a monitoring loop to the next ("Alert #1041 at 10:00" and "Alert #1042 at 10:05").

    Ids and numbers share one placeholder: an 8-digit id that happens to have no letter must not
    split a loop of hex ids, nor a counter passing 99999 (six digits are also hex) a loop of numbers.
    """
    text = bare_subject(subject)
    text = _UUID.sub("<n>", text)
    text = _DATE.sub("<date>", text)
    text = _TIME.sub("<time>", text)
    text = _HEX_ID.sub("<n>", text)
    text = _NUMBER.sub("<n>", text)
    return " ".join(text.split())


def is_generic(subject: str, generic_subjects: tuple[str, ...]) -> bool:
    bare = bare_subject(subject).strip(" .!?:-")
    return not bare or bare in _folded(generic_subjects)


@lru_cache(maxsize=8)   # one policy's list, asked for every mail
def _folded(generic_subjects: tuple[str, ...]) -> frozenset[str]:
    return frozenset(g.casefold().strip(" .!?:-") for g in generic_subjects)


def most_specific_error_line(text: str) -> str | None:
    """The line that best names the failure: error words plus specifics (codes, quotes, paths)."""
    best, best_score = None, 0
    for line in _lines_that_may_name_an_error(text):
        line = line.strip()
        if not 8 <= len(line) <= 200 or line.startswith(">"):
            continue
        errors = _error_word_count(line)
        if not errors:
            continue
        score = 3 * errors + len(_SPECIFIC.findall(line))
        if score > best_score:
            best, best_score = line, score
    return best


def _error_word_count(line: str) -> int:
    if line.isascii():   # IGNORECASE on ASCII is a match of the lowered line, at a third of the cost
        return len(_ERROR_WORDS_LOWER_CASE.findall(line.lower()))
    return len(_ERROR_WORDS.findall(line))


_ERROR_WORDS_LOWER_CASE = re.compile(_ERROR_WORDS.pattern)


def _lines_that_may_name_an_error(text: str) -> list[str]:
    """The examined lines, in order, less ASCII lines that hold no error word's stem. In ASCII text one
    pass of an automaton over the whole text finds the stems (a stem holds no line break, so each lies
    in one line); otherwise each line is tested."""
    # Each with its line break, which the caller's strip() takes off: one split serves both uses.
    lines = text.splitlines(keepends=True)[:MAX_LINES_EXAMINED]
    if not text.isascii():
        return [line for line in lines if not line.isascii() or _holds_a_stem(line.lower())]
    line_ends = list(accumulate(map(len, lines)))
    chosen = dict.fromkeys(bisect_right(line_ends, start)
                           for _, start, _ in _STEM_AUTOMATON.find_matches_as_indexes(text.lower(), overlapping=True))
    return [lines[index] for index in chosen if index < len(lines)]


def _holds_a_stem(lowered: str) -> bool:
    return any(stem in lowered for stem in _ERROR_STEMS)


_STEM_AUTOMATON = ahocorasick_rs.AhoCorasick(_ERROR_STEMS, implementation=ahocorasick_rs.Implementation.DFA)


_GREETING = re.compile(r"^(hi|hello|hey|dear|good (morning|afternoon|evening)|team|all|thanks|thank you)\b.{0,40}$",
                       re.IGNORECASE)


def first_statement(text: str) -> str | None:
    """Without an error line, the first line that says something (not a greeting)."""
    for line in text.splitlines()[:MAX_LINES_EXAMINED]:
        line = line.strip()
        if len(line) >= 12 and not line.startswith(">") and not _GREETING.match(line):
            return line
    return None


def descriptive_subject(subject: str, text: str, generic_subjects: tuple[str, ...]) -> str:
    """The tenant's subject, or for a generic one, it plus the most specific error line."""
    subject = subject.strip()
    if not is_generic(subject, generic_subjects):
        return subject or "(no subject)"
    line = most_specific_error_line(text)
    line = _after_error_prefix(line) if line else first_statement(text)
    if line is None:
        return subject or "(no subject)"
    combined = f"{subject}: {line}" if subject else line
    return combined if len(combined) <= MAX_SUBJECT_CHARS else combined[: MAX_SUBJECT_CHARS - 1] + "\u2026"


_PREFIX = re.compile(r"^.*?\b(error|failed|failure|fatal|exception)\s*:\s*", re.IGNORECASE)


def _after_error_prefix(line: str) -> str:
    """'cf push failed: Error: invalid mode 0444' -> 'invalid mode 0444': the specific part."""
    rest = line
    while True:
        match = _PREFIX.match(rest)
        if not match or len(rest) - match.end() < 8:
            return rest
        rest = rest[match.end():]
