"""The rules in one pass (an Aho–Corasick automaton over every phrase) decide exactly as the
per-phrase regexes did. The regex algorithm is kept in tests/regex_matcher.py as the reference: random texts and
random policies must get the same RuleHits, in the same order, from both."""
from __future__ import annotations

import copy
import pickle
import re
import tomllib
from dataclasses import replace
from datetime import datetime, timezone

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from emergencyd.escalation.matcher import PhraseIndex
from emergencyd.escalation.policy import Policy, classify
from emergencyd.escalation.policy_config import parse_policy
from emergencyd.escalation.regex_prefilter import guarded
from emergencyd.escalation.rules import RuleHit, evaluate_rules, normalize
from emergencyd.parsers.message import ParsedMessage
from tests.harness import ROOT
from tests.regex_matcher import regex_evaluate, regex_rules

SHIPPED_TABLE = tomllib.loads((ROOT / "config.toml").read_text())["policy"]
SHIPPED = parse_policy(SHIPPED_TABLE)
AT = datetime(2026, 11, 25, 11, 0, tzinfo=timezone.utc)
FIRST_RULE = "first"       # a rule's name


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def parsed_mail(subject: str = "", body: str = "", sender: str | None = None,
                headers: tuple[tuple[str, str], ...] = ()) -> ParsedMessage:
    return ParsedMessage(message_id=None, sender=sender, sender_name=None, recipients=(), subject=subject,
                         date=None, text=body, attachments=(), defects=(), in_reply_to=(), references=(),
                         auto_submitted=None, precedence=None, content_type="text/plain", headers=headers,
                         raw_headers="")


def policy_table(*rules: dict) -> dict:
    table = copy.deepcopy(SHIPPED_TABLE)
    table["rules"] = [{"category": r["name"], "severity": "P2", **r} for r in rules]
    return table


def both(parsed: ParsedMessage, table: dict) -> tuple[list[RuleHit], list[RuleHit]]:
    """(one pass, reference) over the same mail and policy table."""
    return evaluate_rules(parsed, parse_policy(table)), regex_evaluate(parsed, regex_rules(table))


def one_pass(table: dict, **mail: str) -> list[RuleHit]:
    new, reference = both(parsed_mail(**mail), table)
    assert new == reference
    return new


# ---------------------------------------------------------------------------
# Examples
# ---------------------------------------------------------------------------

DOWN = policy_table({"name": "down", "phrases": ["apps are down"]})


def test_whole_words_only():
    assert one_pass(DOWN, body="apps are downstream") == []
    assert one_pass(DOWN, body="myapps are down") == []
    assert [h.matched for h in one_pass(DOWN, body="(apps are down.)")] == ["apps are down"]
    assert [h.matched for h in one_pass(DOWN, body="apps are downstream, apps are down")] == ["apps are down"]


def test_underscores_digits_and_unicode_letters_are_word_characters():
    for text in ("my_apps are down", "apps are down_", "2apps are down", "apps are down2", "éapps are down",
                 "apps are downé", "apps are downΣ", "ǅapps are down"):
        assert one_pass(DOWN, body=text) == [], text
    for text in ("«apps are down»", "-apps are down-", "apps are down😀", "'apps are down'"):
        assert one_pass(DOWN, body=text), text


def test_case_whitespace_and_width_are_normalized():
    hits = one_pass(DOWN, subject="ＡＰＰＳ\u00a0 are\tDOWN")
    assert [(h.field, h.matched) for h in hits] == [("subject", "apps are down")]


def test_unless_in_any_field_of_the_rule_vetoes_it():
    table = policy_table({"name": "down", "phrases": ["apps are down"], "unless": ["this is a test"]})
    assert one_pass(table, subject="This is a test", body="apps are down") == []
    assert one_pass(table, subject="apps are down", body="this is a test") == []
    assert one_pass(table, subject="apps are down", body="this is a testing day")


def test_requires_one_of_its_phrases_in_one_of_the_fields():
    table = policy_table({"name": "fix", "regexes": [r"\bcannot push\b"], "requires": ["urgent", "hotfix"]})
    assert one_pass(table, body="we cannot push") == []
    assert one_pass(table, body="we cannot push the urgently needed change") == []
    assert [h.matched for h in one_pass(table, subject="Hotfix", body="we cannot push")] == ["cannot push"]


def test_rule_order_field_order_then_pattern_order_decide():
    table = policy_table({"name": FIRST_RULE, "fields": ["body", "subject"], "phrases": ["beta", "alpha"]},
                         {"name": "second", "phrases": ["alpha"]},
                         {"name": "third", "phrases": ["nowhere"]})
    hits = one_pass(table, subject="beta", body="alpha then beta")
    assert [(h.rule, h.field, h.matched) for h in hits] == [(FIRST_RULE, "body", "beta"), ("second", "body", "alpha")]
    hits = one_pass(table, subject="beta", body="alpha")
    assert [(h.rule, h.field, h.matched) for h in hits][0] == (FIRST_RULE, "body", "alpha")


def test_phrases_come_before_regexes_in_a_field():
    table = policy_table({"name": "r", "phrases": ["down"], "regexes": [r"\bup\b"]})
    assert [h.matched for h in one_pass(table, body="up then down")] == ["down"]
    assert [h.matched for h in one_pass(table, body="up then dawn")] == ["up"]


def test_sender_and_headers_fields():
    table = policy_table({"name": "h", "fields": ["headers", "sender"], "phrases": ["x-alert: yes", "bot@ops"]})
    hits = one_pass(table, sender="bot@ops.example", headers=(("X-Alert", "Yes"),))
    assert [(h.field, h.matched) for h in hits] == [("headers", "x-alert: yes")]


def test_the_explanation_quotes_the_normalized_phrase():
    verdict = classify(parsed_mail("Help", "Hi,\n\nALL our  Apps\n are down since 02:10."), received_at=AT,
                       mail_from=None, own_addresses=(), policy=SHIPPED)
    assert verdict.reason == "rule apps-not-served matched 'apps are down' in the body"


def test_the_policy_builds_its_matcher_and_it_survives_pickling():
    matcher = SHIPPED.matcher
    assert matcher.phrases.phrases >= {p for rule in SHIPPED.rules for p in rule.every_phrase}
    assert set(matcher.regexes.regexes) >= {regex for rule in SHIPPED.rules for regex in rule.regexes}
    assert replace(SHIPPED, noise_gets_ticket=True).matcher is matcher
    fewer = replace(SHIPPED, rules=SHIPPED.rules[:1])
    assert fewer.matcher.rules == SHIPPED.rules[:1] and fewer.matcher is not matcher
    assert fewer.matcher.phrases.phrases == frozenset(SHIPPED.rules[0].every_phrase)
    copied = pickle.loads(pickle.dumps(SHIPPED))
    assert copied.matcher is not matcher and copied.matcher.rules == SHIPPED.rules
    mail = parsed_mail("Security breach", "our apps are down, a hotfix cannot be deployed")
    assert evaluate_rules(mail, copied) == evaluate_rules(mail, SHIPPED) != []
    assert Policy(rules=(), routing=SHIPPED.routing, calendar=SHIPPED.calendar).matcher.phrases == PhraseIndex.of(())


# ---------------------------------------------------------------------------
# Properties: the reference and the one pass agree
# ---------------------------------------------------------------------------

SHIPPED_PHRASES = sorted({phrase for rule in SHIPPED_TABLE["rules"]
                          for key in ("phrases", "unless", "requires") for phrase in rule.get(key, [])})
SHIPPED_WORDS = sorted({word for phrase in SHIPPED_PHRASES for word in phrase.split()})
PUNCTUATION = list(".,;:!?()[]<>'\"-/@*#&") + ["\u2019", "\u201c", "\u2014", "\u00ab"]
UNICODE_LETTERS = ["é", "ß", "Σ", "ǅ", "İ", "ı", "ſ", "\u212a", "ΐ", "ﬁ", "Ａ", "ｐ", "я", "中", "\u0301", "𝐀", "²", "½"]
WHITESPACE = [" ", "  ", "\n", "\t", "\r\n", "\u00a0", "\u2003", "\u3000", "\x0b"]
OTHER = ["_", "0", "1", "5", "502", "😀", "\x00", "P1", "SEV", "A", "Apps"]


def texts_of(words: list[str], max_pieces: int = 40) -> st.SearchStrategy[str]:
    """Words, mostly a space apart, sometimes glued to punctuation, letters, digits or underscores."""
    token = st.sampled_from(words) | st.sampled_from(PUNCTUATION + UNICODE_LETTERS + OTHER)
    after = st.sampled_from([" "] * 8 + WHITESPACE + PUNCTUATION + UNICODE_LETTERS + OTHER + [""])
    return st.lists(st.tuples(token, after).map("".join), max_size=max_pieces).map("".join)


def mails_of(words: list[str]) -> st.SearchStrategy[ParsedMessage]:
    return st.builds(parsed_mail, subject=texts_of(words, 12), body=texts_of(words),
                     sender=texts_of(words, 6), headers=st.lists(st.tuples(texts_of(words, 3), texts_of(words, 8)),
                                                                 max_size=3).map(tuple))


PROPERTY = settings(derandomize=True, database=None, max_examples=250, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SHIPPED_REGEX_RULES = regex_rules(SHIPPED_TABLE)


@PROPERTY
@given(mails_of(SHIPPED_WORDS + SHIPPED_PHRASES))
def test_the_shipped_policy_decides_as_the_regexes_did(mail):
    assert evaluate_rules(mail, SHIPPED) == regex_evaluate(mail, SHIPPED_REGEX_RULES)


# Few words, so that phrases, vetoes and requirements often meet in one text.
SMALL_WORDS = ["down", "apps", "up", "ab", "a_b", "x-y", "don't", "don’t", "é", "p1", "Ǆ", "ﬁx", "a.b", "-", "'"]
SMALL_PHRASE = st.lists(st.sampled_from(SMALL_WORDS), min_size=1, max_size=3).map(" ".join) | \
    st.lists(st.sampled_from(SMALL_WORDS), min_size=1, max_size=3).map("\t".join)
# Regexes of the shapes policies use (words, alternatives, bounded gaps, anchors, look-arounds), so
# that each regex's literal prefilter (escalation/regex_prefilter.py) is checked against the plain search.
REGEX_ATOM = st.sampled_from([re.escape(w) for w in SMALL_WORDS] + ["I", "K", "S", "ı", "ſ", "\\x27"]) | \
    st.sampled_from([r"\b", r"\s+", r"\s*", r"[^.\n]{0,10}", r"\d", r"^", r"$", r".", r"\w+", r"(?!\w)", r"(?<=\s)",
                     r"(?-i:A)", r"\W*"])
REGEX_GROUP = st.tuples(st.sampled_from(["(", "(?:", "(?>"]),
                        st.lists(st.lists(REGEX_ATOM, min_size=1, max_size=3).map("".join), min_size=1, max_size=3),
                        st.sampled_from(["", "?", "+", "{1,2}", "*", "{0,1}", "++"])).map(
    lambda g: g[0] + "|".join(g[1]) + ")" + g[2])
REGEX = st.lists(REGEX_ATOM | REGEX_GROUP, min_size=1, max_size=6).map("".join)
RULES = st.lists(st.fixed_dictionaries({
    "fields": st.lists(st.sampled_from(["subject", "body", "sender", "headers"]), min_size=1, max_size=4, unique=True),
    "phrases": st.lists(SMALL_PHRASE, min_size=1, max_size=4),
    "regexes": st.lists(REGEX, max_size=2),
    "unless": st.lists(SMALL_PHRASE, max_size=2),
    "requires": st.lists(SMALL_PHRASE, max_size=2),
}), min_size=1, max_size=5)


@PROPERTY
@given(st.data())
def test_random_policies_decide_as_the_regexes_did(data):
    rules = data.draw(RULES)
    phrases = [phrase for rule in rules for key in ("phrases", "unless", "requires") for phrase in rule[key]]
    mail = data.draw(mails_of(SMALL_WORDS + phrases + ["api down", "Api  is DOWN", "cve-2026-1234"]))
    table = policy_table(*({"name": f"rule-{i}", **rule} for i, rule in enumerate(rules)))
    new, reference = both(mail, table)
    assert new == reference


def test_a_regex_needs_the_literals_every_match_contains():
    needs = guarded(re.compile(r"\bapi\b[^.\n]{0,20}\b(down|unavailable|not responding)\b", re.IGNORECASE)).needs
    assert needs == (frozenset({"api"}), frozenset({"down", "unavailable", "not responding"}))
    optional = guarded(re.compile(r"\b(all\s+)?(apps?|sites?)\s+down", re.IGNORECASE)).needs
    assert optional == (frozenset({"app", "site"}), frozenset({"down"}))
    assert guarded(re.compile(r"(a|\w)+x?", re.IGNORECASE)).needs == ()     # nothing every match must hold
    assert guarded(re.compile(r"(?>api\s+)down", re.IGNORECASE)).needs == (frozenset({"api"}), frozenset({"down"}))


@PROPERTY
@given(REGEX, texts_of(SMALL_WORDS + ["api down", "Api  is DOWN", "cve-2026-1234", "ı", "I"]))
@example("fI", "fı")          # IGNORECASE pairs "i" with the dotless "ı", which casefolding keeps
@example("AB", "AB")          # an upper-case literal is found in casefolded text
@example("ſ", "S")            # a non-ASCII literal may match an ASCII letter: no filter on it
def test_a_guarded_regex_finds_what_the_plain_search_finds(pattern, text):
    regex = re.compile(pattern, re.IGNORECASE)
    text = normalize(text)
    found, expected = guarded(regex).search(text), regex.search(text)
    assert (found and (found.span(), found.group(0))) == (expected and (expected.span(), expected.group(0)))


def _own_words_reference(text: str) -> str:
    """own_words as a loop over every line, without the shortcut for a body with nothing quoted."""
    from emergencyd.escalation.rules import _REPLY_HEADER
    kept = []
    for line in text.splitlines():
        if _REPLY_HEADER.match(line.strip()):
            break
        if not line.strip().startswith(">"):
            kept.append(line)
    return "\n".join(kept)


_REPLY_PIECES = ["On Mon, 1 Dec 2026, Dev wrote:", "ON 1 DEC 2026 A B WROTE:", "-----Original Message-----",
                 "-- ORIGINAL MESSAGE --", "> quoted", "  > quoted", "wrote:", "orıgınal message", "-- orıgınal meſſage --",
                 "on a day somebody wrote:", "text", "more text", "", " ", "é"]


@PROPERTY
@given(st.tuples(st.lists(st.sampled_from(_REPLY_PIECES), max_size=8),
                 st.sampled_from(["\n", "\r\n", "\x85", "\x0c"])).map(lambda t: t[1].join(t[0])))
@example("text\n-- orıgınal meſſage --\nhistory")   # IGNORECASE's non-ASCII pairs: the loop must run
def test_own_words_is_the_loop_over_every_line(text):
    from emergencyd.escalation.rules import own_words
    assert own_words(text) == _own_words_reference(text)


# ---------------------------------------------------------------------------
# RE2 twins (escalation/re2_twin.py): on ASCII text, what Python's regex finds
# ---------------------------------------------------------------------------

TWIN_ATOM = st.sampled_from([re.escape(w) for w in SMALL_WORDS if w.isascii()] + ["I", "K", "S", "\\x27", "a", "b"]) | \
    st.sampled_from([r"\b", r"\B", r"\s+", r"\s*", r"\S", r"[^.\n]{0,10}", r"\d", r"\D", r"^", r"$", r"\A", r"\Z", r".",
                     r"\w+", r"\W*", r"(?-i:A)", r"(?s:.)", r"[a-c_]", r"[^\W\d]", r"[\s\d]", r"x{,2}", r"[[:a]]",
                     r"\x1c", r"\t", r"(?i:B)", r"(|a)", r"(a*)*", r"(?:)"])
TWIN_GROUP = st.tuples(st.sampled_from(["(", "(?:", "(?i:", "(?-i:"]),
                       st.lists(st.lists(TWIN_ATOM, min_size=1, max_size=3).map("".join), min_size=1, max_size=3),
                       st.sampled_from(["", "?", "+", "{1,2}", "*", "{0,1}", "*?", "+?", "{2,}", "??"])).map(
    lambda g: g[0] + "|".join(g[1]) + ")" + g[2])
TWIN_REGEX = st.lists(TWIN_ATOM | TWIN_GROUP, min_size=1, max_size=6).map("".join)
ASCII_WORDS = [w for w in SMALL_WORDS if w.isascii()] + ["api down", "Api  is DOWN", "cve-2026-1234", "I", "B_a"]


def ascii_texts() -> st.SearchStrategy[str]:
    return texts_of(ASCII_WORDS).map(lambda text: text.encode("ascii", "ignore").decode())


def _scan_search(pattern: str, text: str):
    import warnings

    from emergencyd.escalation.regex_index import RegexIndex
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)    # "[[:a]]" is a possible nested set to Python
        regex = re.compile(pattern, re.IGNORECASE)
        index = RegexIndex.of([guarded(regex)])           # which parses it again, twice
    scan = index.scan(text)
    return regex, index, scan, scan.search(index.regexes[0])


@PROPERTY
@given(TWIN_REGEX, ascii_texts())
@example(r"\B", "")                     # Python's \B does not match empty text; RE2's does: the check catches it
@example(r"x{,2}b", "xxb")              # {,n} is a repeat to Python and literal text to RE2
@example(r"[[:a]]", "a]")               # a class of "[", ":" and "a", then "]", not a POSIX class
@example(r"\s", "\x1c")                 # Python's \s holds the ASCII separators RE2's lacks
@example(r"a$", "a")
def test_a_regex_twin_finds_what_the_plain_search_finds(pattern, text):
    text = normalize(text)
    regex, index, scan, found = _scan_search(pattern, text)
    expected = regex.search(text)
    assert (found and (found.span(), found.group(0))) == (expected and (expected.span(), expected.group(0)))


def test_every_shipped_regex_has_a_twin_and_ascii_text_is_answered_by_the_set():
    assert set(SHIPPED.matcher.regexes.twins) == set(SHIPPED.matcher.regexes.regexes) != set()
    scan = SHIPPED.matcher.regexes.scan(normalize("Our production apps are down since 02:10"))
    assert scan.twins_matching is not None and len(scan.twins_matching) >= 2   # \z and the apps-down regex
    assert SHIPPED.matcher.regexes.scan(normalize("Unsere Apps sind ausgefallen: à")).twins_matching is None
    regex, index, scan, found = _scan_search(r"(?<=a)b", "ab")
    assert index.twins == {} and found.span() == (1, 2)      # a look-behind has no twin: the prefilter serves


def test_a_twin_reads_python_s_own_answer_for_each_character():
    from emergencyd.escalation.re2_twin import ascii_twin
    assert ascii_twin(re.compile(r"\s", re.IGNORECASE)) == r"[\x{09}-\x{0d}\x{1c}-\x{20}]"
    assert ascii_twin(re.compile(r"k$", re.IGNORECASE)) == r"[\x{4b}\x{6b}]\z"
    assert ascii_twin(re.compile(r"x{,2}")) == r"(?:[\x{78}]){0,2}"
    assert ascii_twin(re.compile(r"a++")) is None and ascii_twin(re.compile(r"a{0,1001}")) is None
