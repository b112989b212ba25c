"""Property tests of the parsing layer and the policy on hostile input: any bytes
produce a verdict, never an exception.

Every input goes through the pipeline exactly as the daemon runs it (message
identity for the store, parse_message, classify with the shipped policy,
grouping, then the ticket, note, comment and page texts), and the output is
checked against the bounds the code promises.

Inputs come from three strategies: arbitrary bytes; structured hostile mail
(random headers and encoded words, random MIME trees with broken boundaries,
encodings and charsets, random HTML); and mutations of four realistic seed
messages written below.

Runs are derandomized, so CI sees the same examples every time. The example
counts are bounded to keep this file within about 30 s; set
EMERGENCYD_HYPOTHESIS_EXAMPLES to run more (see EXAMPLES below), e.g.
EMERGENCYD_HYPOTHESIS_EXAMPLES=5000 pytest tests/unit/test_properties.py
"""
from __future__ import annotations

import base64
import json
import os
import quopri
from dataclasses import replace
from datetime import datetime, timezone
from email import policy
from email.parser import BytesHeaderParser
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emergencyd.daemon.config.model import load_config
from emergencyd.escalation import content
from emergencyd.escalation.actions import Actions, StepContext
from emergencyd.escalation.grouping import (
    ALONE,
    FIRST,
    INCIDENT,
    REPEAT,
    STORM,
    THREAD,
    GroupingFacts,
    GroupingSettings,
    OpenGroup,
    Related,
    fingerprint,
    relate,
    ticket_reference,
)
from emergencyd.escalation.hours import Window
from emergencyd.escalation.policy import (
    SEVERITIES,
    URGENCIES,
    ZENDESK_PRIORITIES,
    Verdict,
    classify,
)
from emergencyd.escalation.records import (
    NEW,
    Envelope,
    EscalationRecord,
    dedup_key_of,
    identity_of,
)
from emergencyd.parsers import identity
from emergencyd.parsers.identity import (
    MAX_ENCODED_IDS,
    MAX_IDS,
    MAX_MESSAGE_ID_CHARS,
    encoded_ids,
    message_id_of,
    thread_ids_of,
)
from emergencyd.parsers.limits import (
    MAX_ATTACHMENTS,
    MAX_DEFECT_CHARS,
    MAX_DEFECTS,
    MAX_HEADER_VALUE_CHARS,
    MAX_HEADERS,
    MAX_RAW_HEADER_BYTES,
    MAX_RECIPIENTS,
    MAX_SUBJECT_CHARS,
    MAX_TEXT_CHARS,
)
from emergencyd.parsers.message import ParsedMessage, parse_message
from emergencyd.parsers.noise import NOISE_KINDS, detect_noise
from emergencyd.parsers.subject import (
    MAX_SUBJECT_CHARS as MAX_DESCRIPTIVE_SUBJECT_CHARS,
)
from emergencyd.parsers.subject import descriptive_subject
from emergencyd.parsers.text import (
    decode_bytes,
    decode_rfc2047,
    html_to_text,
    single_line,
)
from tests.harness import make_message

ROOT = Path(__file__).resolve().parents[2]
CONFIG = load_config(ROOT / "config.toml", environ={})
POLICY = CONFIG.policy
# What the daemon passes (daemon/app.py): the SMTP recipients and hostname.
OWN_ADDRESSES = CONFIG.smtp.recipients
OWN_HOSTNAMES = (CONFIG.smtp.hostname,)
GROUPING = GroupingSettings(
    incident_window_seconds=CONFIG.dedup.incident_window_seconds,
    platform_wide_categories=frozenset(CONFIG.dedup.platform_wide_categories),
    sender_limit=CONFIG.dedup.sender_limit, sender_window_seconds=CONFIG.dedup.sender_window_seconds)

# The example counts are bounded so that this file runs in about 30 s on two
# cores, within the suite's time budget. EMERGENCYD_HYPOTHESIS_EXAMPLES runs
# more: it sets the count of the costliest test (hostile MIME generation);
# cheaper tests run a fixed multiple of it.
EXAMPLES = int(os.environ.get("EMERGENCYD_HYPOTHESIS_EXAMPLES", "250"))


def bounded_settings(max_examples: int) -> settings:
    return settings(derandomize=True, database=None, max_examples=max_examples, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def utf8_encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def single_line_text(text: str) -> bool:
    return "\n" not in text and "\r" not in text and len(text.splitlines()) <= 1


# ---------------------------------------------------------------------------
# The pipeline, as the daemon runs it, and the properties of its output
# ---------------------------------------------------------------------------


def check_identity(raw: bytes) -> str | None:
    """daemon/store/core.py: the message id decides the dedup key."""
    message_id = message_id_of(raw)
    assert message_id is None or isinstance(message_id, str)
    if message_id is not None:
        assert 0 < len(message_id) <= MAX_MESSAGE_ID_CHARS
        assert message_id.isprintable() and not any(ch.isspace() for ch in message_id)
        assert utf8_encodable(message_id)
    assert message_id_of(raw) == message_id
    dedup_key = dedup_key_of(identity_of(message_id, "0" * 64))
    assert len(dedup_key) <= 255
    return message_id


def check_parsed(parsed: ParsedMessage) -> None:
    assert isinstance(parsed, ParsedMessage)
    # The safety net in parse_message answers for any bug below it; reaching it is a bug.
    assert parsed.parse_error is None or not parsed.parse_error.startswith("internal parser error"), \
        parsed.parse_error
    assert isinstance(parsed.subject, str) and len(parsed.subject) <= MAX_SUBJECT_CHARS
    assert single_line_text(parsed.subject)
    assert isinstance(parsed.text, str) and len(parsed.text) <= MAX_TEXT_CHARS
    assert "\r" not in parsed.text and "\x00" not in parsed.text
    assert len(parsed.raw_headers) <= MAX_RAW_HEADER_BYTES
    assert len(parsed.headers) <= MAX_HEADERS
    for name, value in parsed.headers:
        assert len(name) <= MAX_HEADER_VALUE_CHARS and len(value) <= MAX_HEADER_VALUE_CHARS
        assert single_line_text(name) and single_line_text(value)
    assert len(parsed.recipients) <= MAX_RECIPIENTS
    for address in (parsed.sender, *parsed.recipients):
        if address is not None:
            assert "@" in address and " " not in address and len(address) <= MAX_SUBJECT_CHARS
    if parsed.sender_name is not None:
        assert parsed.sender_name and len(parsed.sender_name) <= MAX_SUBJECT_CHARS
    assert len(parsed.attachments) <= MAX_ATTACHMENTS
    for attachment in parsed.attachments:
        assert attachment.size >= 0 and isinstance(attachment.content_type, str)
        assert attachment.filename is None or 0 < len(attachment.filename) <= MAX_SUBJECT_CHARS
    assert len(parsed.defects) <= MAX_DEFECTS and list(parsed.defects) == sorted(parsed.defects)
    assert all(0 < len(defect) <= MAX_DEFECT_CHARS for defect in parsed.defects)
    for ids in (parsed.in_reply_to, parsed.references):
        assert len(ids) <= MAX_IDS and len(set(ids)) == len(ids)
        assert all(0 < len(i) <= MAX_MESSAGE_ID_CHARS and not any(ch.isspace() for ch in i) for i in ids)
    assert parsed.date is None or parsed.date.utcoffset() is not None
    media_type = parsed.content_type.partition(";")[0]
    assert media_type and media_type == media_type.lower()
    # Everything goes into SQLite, JSON and HTTPS bodies as UTF-8.
    strings = [parsed.subject, parsed.text, parsed.raw_headers, parsed.content_type, parsed.message_id or "",
               parsed.sender or "", parsed.sender_name or "", parsed.parse_error or "",
               parsed.auto_submitted or "", parsed.precedence or "", *parsed.recipients, *parsed.defects,
               *parsed.in_reply_to, *parsed.references, *(n + v for n, v in parsed.headers),
               *(a.filename or "" for a in parsed.attachments), *(a.content_type for a in parsed.attachments)]
    assert all(utf8_encodable(s) for s in strings)


def check_verdict(verdict: Verdict, received_at: datetime) -> None:
    assert isinstance(verdict, Verdict)
    assert isinstance(verdict.window, Window)
    assert verdict.reason and verdict.category
    assert verdict.ticket_subject and single_line_text(verdict.ticket_subject)
    assert len(verdict.ticket_subject) <= max(MAX_SUBJECT_CHARS, MAX_DESCRIPTIVE_SUBJECT_CHARS)
    assert verdict.zendesk_priority in ZENDESK_PRIORITIES
    if verdict.suppressed:
        assert verdict.category.removeprefix("noise:") in NOISE_KINDS
        assert verdict.severity is None and not verdict.page and verdict.urgency is None
    else:
        assert verdict.severity in (*SEVERITIES, None)
        assert verdict.ticket
        assert verdict.urgency in (*URGENCIES, None)
        assert verdict.page == (verdict.urgency is not None)
        assert verdict.respond_by is not None and verdict.respond_by >= received_at
        assert all(hit.matched is not None and len(hit.matched) <= 200 for hit in verdict.rules)
        if verdict.rules:
            assert (verdict.category, verdict.severity) == (verdict.rules[0].category, verdict.rules[0].severity)
    stored = json.dumps(verdict.as_dict(), ensure_ascii=False).encode("utf-8")   # stored as JSON
    assert Verdict.from_dict(json.loads(stored)).as_dict() == verdict.as_dict()  # and read back as it was


def record_for(raw: bytes, message_id: str | None, parsed: ParsedMessage, verdict: Verdict, relation_kind: str,
               mail_from: str | None, received_at: datetime) -> EscalationRecord:
    identity = identity_of(message_id, "0" * 64)
    dedup_key = dedup_key_of(identity)
    return EscalationRecord(
        message_pk=2, identity=identity, message_id=message_id, dedup_key=dedup_key, state=NEW,
        envelope=Envelope(source="smtp" if mail_from is not None else "imap", mail_from=mail_from or "",
                          rcpt_to=OWN_ADDRESSES, received_at=received_at.timestamp()),
        size=len(raw), sha256="0" * 64, deliveries=1, subject=parsed.subject,
        sender=parsed.sender, ticket_id=7,
        incident_url=None, paged_at=None, steps=(), verdict=verdict, relation=relation_kind,
        relation_reason="a new incident", parent_pk=1 if relation_kind != FIRST else None, page_key=dedup_key)


def check_grouping(verdict: Verdict, parsed: ParsedMessage) -> list[str]:
    print_ = fingerprint(verdict, parsed, GROUPING)
    assert (print_ is None) == (verdict.suppressed or verdict.severity is None)
    reference = ticket_reference(parsed.subject)
    assert reference is None or reference >= 0
    assert parsed.encoded_ids == encoded_ids(parsed.text) and len(parsed.encoded_ids) <= MAX_ENCODED_IDS
    parent = Related(message_pk=1, severity="P3", ticket_id=7)
    kinds = []
    for facts in (
        GroupingFacts(None, None, 0, None, None),
        GroupingFacts(parent, reference, 0, None, None),
        GroupingFacts(None, None, GROUPING.sender_limit, parent, None),
        GroupingFacts(None, None, 0, None, OpenGroup(3, "emergencyd-x", 1, "P1", None)),
        GroupingFacts(None, None, 0, None, OpenGroup(3, "emergencyd-x", 1, "P1", parent)),
    ):
        relation = relate(verdict, facts, GROUPING)
        assert relation.kind in (FIRST, THREAD, STORM, REPEAT, INCIDENT, ALONE) and relation.reason
        assert not relation.repage or verdict.page
        kinds.append(relation.kind)
    return kinds


def check_content(raw: bytes, message_id: str | None, parsed: ParsedMessage, verdict: Verdict,
                  relation_kinds: list[str], mail_from: str | None, received_at: datetime) -> None:
    for kind in dict.fromkeys(relation_kinds):
        record = record_for(raw, message_id, parsed, verdict, kind, mail_from, received_at)
        ticket = content.ticket_request(record, parsed, problem_id=5)
        assert ticket.subject.strip() and ticket.body.strip()
        assert len(ticket.body) <= content.MAX_COMMENT_CHARS
        note = content.envelope_note(record, parsed, 7)
        assert note.marker in note.body and len(note.body) <= content.MAX_COMMENT_CHARS
        comment = content.follow_up_comment(record, parsed, 7)
        assert comment.body.strip() and len(comment.body) <= content.MAX_COMMENT_CHARS
        assert comment.marker in comment.body
        page = content.page_request(record, parsed, "https://desk.example/7", problem_url="https://desk.example/5",
                                    group={"reports": 2, "tenants": ["a@example.net"]})
        assert page.summary.strip() and len(page.summary) <= content.MAX_SUMMARY_CHARS
        assert page.source and page.severity in content.PAGERDUTY_SEVERITY.values()
        for text in (ticket.subject, ticket.body, note.body, comment.body, page.summary):
            assert utf8_encodable(text)
        json.dumps(page.custom_details, ensure_ascii=False).encode("utf-8")
        assert content.describe_verdict(verdict)
        assert content.ticket_tags(verdict)
        check_what_actions_read(record, parsed)


def check_what_actions_read(record: EscalationRecord, parsed: ParsedMessage) -> None:
    """The escalator fetches a parent's record and the incident group only for the actions said to read
    them (Actions.READS_PARENT, READS_GROUP): every other action gives the same answer without them."""
    actions = Actions(None, None, dry_run=True)
    parent = replace(record, message_pk=1, parent_pk=None, ticket_id=5)
    given = StepContext(record, parsed, 0, parent=parent, group={"reports": 3, "tenants": ["a@example.net"]})
    for step, act in actions.by_step.items():
        answer = act(given)
        if step not in Actions.READS_PARENT:
            assert act(replace(given, parent=None)) == answer, step
        if step not in Actions.READS_GROUP:
            assert act(replace(given, group=None)) == answer, step


def run_pipeline(raw: bytes, mail_from: str | None, received_at: datetime) -> tuple[ParsedMessage, Verdict]:
    message_id = check_identity(raw)
    parsed = parse_message(raw)
    check_parsed(parsed)
    noise = detect_noise(parsed, mail_from=mail_from, own_addresses=OWN_ADDRESSES, own_hostnames=OWN_HOSTNAMES)
    assert noise is None or (noise.kind in NOISE_KINDS and noise.reason)
    verdict = classify(parsed, received_at=received_at, mail_from=mail_from, own_addresses=OWN_ADDRESSES,
                       own_hostnames=OWN_HOSTNAMES, policy=POLICY)
    check_verdict(verdict, received_at)
    assert verdict.suppressed == (noise is not None)
    if noise is not None:
        assert verdict.reason == f"{noise.kind}: {noise.reason}"
    relation_kinds = check_grouping(verdict, parsed)
    check_content(raw, message_id, parsed, verdict, relation_kinds, mail_from, received_at)
    return parsed, verdict


def check_everything(raw: bytes, mail_from: str | None, received_at: datetime) -> None:
    parsed, verdict = run_pipeline(raw, mail_from, received_at)
    # Deterministic: the same bytes parse and classify the same way again.
    again = parse_message(raw)
    assert again == parsed
    assert classify(again, received_at=received_at, mail_from=mail_from, own_addresses=OWN_ADDRESSES,
                    own_hostnames=OWN_HOSTNAMES, policy=POLICY) == verdict


# ---------------------------------------------------------------------------
# Envelope strategies
# ---------------------------------------------------------------------------

# None: IMAP or inject (no envelope); "" and "<>": the null reverse path.
mail_froms = st.one_of(
    st.sampled_from([None, "", "<>", "dev@tenant.gov.example", "MAILER-DAEMON@mx.example.net",
                     "emergency@example.org", "bounce+123@lists.example.com"]),
    st.text(max_size=40),
)
# Unix times from 2020 to 2040, as the daemon stores them.
received_ats = st.floats(min_value=1_577_836_800, max_value=2_208_988_800, allow_nan=False).map(
    lambda ts: datetime.fromtimestamp(ts, timezone.utc))


# ---------------------------------------------------------------------------
# Structured hostile mail
# ---------------------------------------------------------------------------

KNOWN_HEADERS = [
    "From", "To", "Cc", "Subject", "Message-ID", "In-Reply-To", "References", "Date", "Return-Path", "Sender",
    "Reply-To", "MIME-Version", "Content-Type", "Content-Transfer-Encoding", "Content-Disposition",
    "Auto-Submitted", "Precedence", "X-Loop", "Received", "X-Failed-Recipients", "List-Id", "X-Autoreply",
    "X-Autorespond", "Content-Class", "x-amz-sns-message-id", "X-MS-Exchange-Message-Is-Ndr",
    "X-Auto-Response-Suppress", "DKIM-Signature", "message-id", "SUBJECT", "from ",
]
CHARSETS = [
    "utf-8", "UTF-8", "us-ascii", "iso-8859-1", "windows-1252", "x-unknown", "unknown-8bit", "utf-7",
    "iso-2022-jp", "shift_jis", "gb2312", "big5", "koi8-r", "utf-16", "utf-16-le", "utf-32", "iso-8859-8-i",
    "base64", "punycode", "idna", "rot13", "zlib", "hex", "uu_codec", "undefined", "unicode-escape", "foo",
    "", "utf-8*en", '"utf-8"', "x-user-defined", "cp65001", "ebcdic-cp-us", "hz", "a" * 60,
]
ENCODINGS = ["7bit", "8bit", "binary", "base64", "BASE64", " base64 ", "quoted-printable", "Quoted-Printable",
             "x-uuencode", "uuencode", "bogus", ""]
LEAF_TYPES = [
    "text/plain", "text/html", "text/enriched", "application/octet-stream", "application/pdf", "image/png",
    "message/delivery-status", "message/global-delivery-status", "message/disposition-notification",
    "message/feedback-report", "text/rfc822-headers", "application/ms-tnef", "message/partial",
    "message/external-body", "message/rfc822", "multipart/mixed", "text", "text/", "/", "", "TEXT/PLAIN",
    "text/plain/extra", "application/json",
]
MULTIPART_SUBTYPES = ["mixed", "alternative", "related", "report", "signed", "digest", "parallel", "x-foo", ""]
REPORT_TYPES = ["delivery-status", "disposition-notification", "feedback-report", '"delivery-status"', "x", ""]
EOLS = st.sampled_from([b"\r\n"] * 6 + [b"\n"] * 3 + [b"\r"])


def weighted(*choices: tuple[int, st.SearchStrategy]) -> st.SearchStrategy:
    """One of the strategies, picked in proportion to its weight; shrinks towards the first."""
    table = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.integers(0, len(table) - 1).flatmap(lambda i: table[i])


ascii_tokens = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7e, exclude_characters=":"),
                       min_size=1, max_size=20)
any_text = st.text(max_size=60)


def encode_text(text: str, charset: str) -> bytes:
    """Text in the charset it claims when the codec can do that, else UTF-8."""
    try:
        return text.encode(charset.strip('"').split("*")[0] or "utf-8", "replace")
    except (LookupError, UnicodeError, TypeError, ValueError):   # no codec, or not a text codec
        return text.encode("utf-8", "surrogatepass")


@st.composite
def encoded_words(draw) -> bytes:
    charset = draw(st.sampled_from(CHARSETS)).encode("ascii")
    kind = draw(st.sampled_from([b"B", b"b", b"Q", b"q", b"X", b""]))
    text = draw(any_text)
    payload = draw(st.one_of(
        st.just(base64.b64encode(encode_text(text, charset.decode()))),
        st.just(base64.b64encode(encode_text(text, charset.decode())).rstrip(b"=")),
        st.just(quopri.encodestring(encode_text(text, charset.decode()), header=True).replace(b"\n", b"")),
        st.binary(max_size=30).filter(lambda b: b"?" not in b),
        st.sampled_from([b"=E2=82", b"=ZZ", b"====", b"A", b"AB=CD", b"_", b"%%%", b"\xff\xfe"]),
    ))
    word = b"=?" + charset + b"?" + kind + b"?" + payload + b"?="
    return word if draw(st.booleans()) else word[: draw(st.integers(0, len(word)))]


@st.composite
def addresses(draw) -> bytes:
    local = draw(st.sampled_from([b"dev", b"MAILER-DAEMON", b"postmaster", b"no-reply", b"emergency", b""]) |
                 ascii_tokens.map(str.encode))
    domain = draw(st.sampled_from([b"tenant.gov.example", b"example.org", b"[127.0.0.1]", b""]) |
                  ascii_tokens.map(str.encode))
    name = draw(st.one_of(st.just(b""), any_text.map(lambda s: s.encode("utf-8", "surrogatepass")),
                          encoded_words(), st.just(b'"Mail Delivery System"')))
    form = draw(st.sampled_from(["angle", "bare", "unclosed", "null", "group"]))
    if form == "angle":
        return name + b" <" + local + b"@" + domain + b">"
    if form == "bare":
        return local + b"@" + domain
    if form == "unclosed":
        return name + b" <" + local + b"@" + domain
    if form == "null":
        return name + b" <>"
    return b"undisclosed:" + local + b"@" + domain + b", <" + local + b">;"


message_ids = st.builds(
    lambda left, right, bracket: (b"<" + left + b"@" + right + b">") if bracket else left + b"@" + right,
    ascii_tokens.map(str.encode), ascii_tokens.map(str.encode), st.booleans())
dates = st.one_of(
    st.datetimes(timezones=st.just(timezone.utc)).map(lambda d: d.strftime("%a, %d %b %Y %H:%M:%S +0000").encode()),
    st.sampled_from([b"Mon, 32 Foo 99999 25:61:61 +9999", b"yesterday", b"Tue, 1 Jul 2003 10:52:37",
                     b"0", b"Thu, 01 Jan 1970 00:00:00 -0000", b"Fri, 31 Dec 9999 23:59:59 -2359"]),
)
value_atoms = weighted(
    (4, any_text.map(lambda s: s.encode("utf-8", "surrogatepass"))),
    (1, st.binary(max_size=40)),
    (3, encoded_words()),
    (3, addresses()),
    (2, message_ids),
    (1, dates),
    (2, st.sampled_from([b";", b",", b"(comment", b"\"", b"\\", b"<>", b"auto-replied", b"auto-generated", b"no",
                         b"bulk", b"list", b"Automatic reply:", b"Undeliverable:", b"Read:", b"Re: Fwd: [#1234]",
                         b"urgent", b"all our apps are down", b"\r\n ", b"\r\n\t", b"\x00"])),
    # Bare line breaks end the header (and often the header block) early.
    (1, st.sampled_from([b"\r", b"\n", b"\r\n", b"\n\n"])),
)


@st.composite
def header_values(draw) -> bytes:
    atoms = draw(st.lists(value_atoms, max_size=5))
    separator = draw(st.sampled_from([b" ", b"", b"\r\n\t", b"; ", b", "]))
    value = separator.join(atoms)
    return draw(st.integers(0, 9).flatmap(lambda n: long_values(value) if n == 0 else st.just(value)))


def long_values(value: bytes) -> st.SearchStrategy:
    """The value repeated, or after a long filler: past the parser's cuts of long values."""
    fillers = st.sampled_from([b"x", b" ", b"(comment) ", b"=?utf-8?q?=C3=A9?= ", b"\r\n ", b"\xff"])
    return st.one_of(
        st.integers(50, 1500).map(lambda n: value * n if value else b"x" * n),
        st.tuples(fillers, st.integers(1000, 20_000)).map(lambda f: f[0] * f[1] + value),
    )


header_names = weighted(
    (16, st.sampled_from(KNOWN_HEADERS).map(str.encode)),
    (3, ascii_tokens.map(str.encode)),
    (1, st.binary(min_size=0, max_size=12)),
)


def joined(values: st.SearchStrategy, separator: bytes) -> st.SearchStrategy:
    return st.lists(values, min_size=1, max_size=3).map(separator.join)


# Known headers with values of their own kind (hostile within it), so the
# parser's address, id and date paths see plausible input too.
fitting_headers = st.one_of(
    st.tuples(st.sampled_from([b"From", b"To", b"Cc", b"Sender", b"Reply-To"]), joined(addresses(), b", ")),
    st.tuples(st.sampled_from([b"Message-ID", b"In-Reply-To", b"References"]),
              weighted((8, joined(message_ids, b" ")), (1, joined(message_ids, b"\r\n ")),
                       (1, joined(message_ids, b" ").flatmap(long_values)))),
    st.tuples(st.just(b"Date"), dates),
    st.tuples(st.just(b"Subject"), header_values()),
    st.tuples(st.sampled_from([b"Auto-Submitted", b"Precedence", b"X-Autoreply"]),
              st.sampled_from([b"auto-replied", b"auto-generated (vacation)", b"no", b"No", b"bulk", b"list", b"",
                               b"auto_reply", b"yes"])),
    st.tuples(st.sampled_from([b"Return-Path", b"X-Loop", b"X-Failed-Recipients"]), addresses()),
)


@st.composite
def header_lines(draw, max_size: int = 12) -> list[bytes]:
    lines = []
    for name, value in draw(st.lists(weighted((3, fitting_headers), (2, st.tuples(header_names, header_values()))),
                                     max_size=max_size)):
        separator = draw(weighted((12, st.just(b": ")), (1, st.sampled_from([b":", b" : ", b":\t", b""]))))
        lines.append(name + separator + value)
    return lines


HTML_TOKENS = [
    "<html>", "<head>", "<title>", "</title>", "<body>", "</body>", "<p>", "</p>", "<div>", "</div>", "<br>",
    "<br/>", "<a href='https://status.example/1'>", "<a href=\"javascript:alert(1)\">", "<a>", "</a>",
    "<script>", "</script>", "<style>", "</style>", "<xml>", "<o:p>", "<table><tr><td>", "</td><td>",
    "</table>", "<ul><li>", "<ol>", "</li>", "<pre>", "</pre>", "<!-- comment", "-->", "<![CDATA[", "]]>",
    "<![if !supportLists]>", "<![endif]>", "<![foo[", "<!DOCTYPE html>", "<?xml ?>", "&amp;", "&#x1F4A9;",
    "&#0;", "&#xD800;", "&#99999999;", "&nbsp;", "&bogus;", "<", ">", "</", "<img src=data:image/png;base64,"
    + "A" * 100 + ">", "<hr/>", "<h1>", "\u200b", "<blockquote>", "</blockquote>",
]
html_documents = st.lists(st.one_of(st.sampled_from(HTML_TOKENS), any_text), max_size=30).map("".join)


@st.composite
def transfer_encoded(draw, payload: bytes) -> bytes:
    how = draw(st.sampled_from(["raw", "base64", "base64-broken", "qp", "qp-broken", "uu"]))
    if how == "base64":
        return base64.encodebytes(payload)
    if how == "base64-broken":
        data = bytearray(base64.encodebytes(payload))
        for _ in range(draw(st.integers(1, 4))):
            data.insert(draw(st.integers(0, len(data))), draw(st.sampled_from(b"!*=\x00-_ \n")))
        return bytes(data[: draw(st.integers(0, len(data)))])
    if how == "qp":
        return quopri.encodestring(payload)
    if how == "qp-broken":
        return quopri.encodestring(payload) + draw(st.sampled_from([b"=", b"=Z", b"=\r", b"=4"]))
    if how == "uu":
        return b"begin 644 x\n" + draw(st.binary(max_size=40)) + b"\nend\n"
    return payload


@st.composite
def leaf_parts(draw) -> tuple[list[bytes], bytes]:
    content_type = draw(st.sampled_from(LEAF_TYPES) | ascii_tokens)
    charset = draw(st.sampled_from(CHARSETS))
    params = []
    if draw(st.booleans()):
        params.append(b"charset=" + charset.encode())
    if draw(st.integers(0, 3)) == 0:
        params.append(b'name="' + draw(st.one_of(encoded_words(), st.binary(max_size=20))) + b'"')
    if draw(st.integers(0, 5)) == 0:   # RFC 2231 continuations, possibly broken
        params.append(b"filename*0*=utf-8''%E2%82; filename*1*=%AC.txt; filename*5=x")
    if content_type == "text/html" or draw(st.integers(0, 4)) == 0:
        text = draw(html_documents)
    else:
        text = draw(st.text(max_size=300))
    payload = draw(st.one_of(st.just(encode_text(text, charset)), st.binary(max_size=200)))
    headers = []
    if draw(st.integers(0, 5)):
        headers.append(b"Content-Type: " + content_type.encode("utf-8", "surrogatepass") +
                       b"".join(b"; " + p for p in params))
    if draw(st.booleans()):
        headers.append(b"Content-Transfer-Encoding: " + draw(st.sampled_from(ENCODINGS)).encode())
    if draw(st.integers(0, 3)) == 0:
        headers.append(b"Content-Disposition: " + draw(st.sampled_from(
            [b"attachment", b"inline", b'attachment; filename="report.txt"', b"attachment; filename=", b";;"])))
    if draw(st.integers(0, 4)) == 0:
        headers += draw(header_lines(max_size=3))
    return headers, draw(transfer_encoded(payload))


def render(part: tuple[list[bytes], bytes], eol: bytes) -> bytes:
    headers, body = part
    return b"".join(line + eol for line in headers) + eol + body


@st.composite
def multipart_parts(draw, children) -> tuple[list[bytes], bytes]:
    eol = draw(EOLS)
    boundary = draw(st.one_of(
        st.sampled_from([b"b1", b"=_NextPart_000_0001", b"----=_Part_1", b"", b" ", b"--", b"a" * 100, b"b1\x00"]),
        st.binary(max_size=12),
    ))
    used = boundary if draw(st.integers(0, 4)) else draw(st.binary(max_size=8))
    quoted = draw(st.booleans())
    subtype = draw(st.sampled_from(MULTIPART_SUBTYPES)).encode()
    content_type = b"multipart/" + subtype
    if draw(st.integers(0, 5)):
        content_type += b"; boundary=" + (b'"' + boundary + b'"' if quoted else boundary)
    if subtype == b"report" or draw(st.integers(0, 5)) == 0:
        content_type += b"; report-type=" + draw(st.sampled_from(REPORT_TYPES)).encode()
    body = draw(st.sampled_from([b"", b"This is a multi-part message in MIME format." + eol]))
    for child in draw(st.lists(children, max_size=4)):
        body += eol + b"--" + used + draw(st.sampled_from([b"", b"  ", b"--"])) + eol + render(child, draw(EOLS))
    if draw(st.integers(0, 3)):
        body += eol + b"--" + used + b"--" + eol
    body += draw(st.sampled_from([b"", b"epilogue" + eol, b"--" + used + eol]))
    return [b"MIME-Version: 1.0", b"Content-Type: " + content_type], body


@st.composite
def attached_messages(draw, children) -> tuple[list[bytes], bytes]:
    inner_headers = draw(header_lines(max_size=4))
    inner = draw(children)
    inner_bytes = render((inner_headers + inner[0], inner[1]), draw(EOLS))
    content_type = draw(st.sampled_from([b"message/rfc822", b"message/global", b"text/rfc822-headers"]))
    return [b"Content-Type: " + content_type], draw(transfer_encoded(inner_bytes))


mime_trees = st.recursive(
    leaf_parts(),
    lambda children: st.one_of(multipart_parts(children), attached_messages(children)),
    max_leaves=6,
)


@st.composite
def hostile_mail(draw) -> bytes:
    headers = [name + b": " + draw(values) for name, values in (
        (b"From", joined(addresses(), b", ")), (b"To", joined(addresses(), b", ")), (b"Subject", header_values()),
        (b"Message-ID", message_ids), (b"Date", dates),
    ) if draw(st.integers(0, 4))]    # each missing now and then
    headers += draw(header_lines())
    mime_headers, body = draw(mime_trees)
    headers = headers + mime_headers
    if draw(st.booleans()):
        headers = draw(st.permutations(headers))
    eol = draw(EOLS)
    preamble = draw(st.sampled_from([b"", b"", b"", b"\xef\xbb\xbf", b"\r\n \r\n", b"From sender Mon Jan 1\n"]))
    return preamble + render((headers, body), eol)


# ---------------------------------------------------------------------------
# Realistic seeds and their mutations
# ---------------------------------------------------------------------------

TENANT_P1 = b"""\
Return-Path: <priya.shah@tenant.gov.example>
Received: from mail.tenant.gov.example (mail.tenant.gov.example [192.0.2.10])
\tby mx.example.org with ESMTPS id 4Xy; Wed, 25 Nov 2026 02:14:07 +0000
From: =?utf-8?q?Priya_Sh=C3=A1h?= <priya.shah@tenant.gov.example>
To: emergency@example.org
Cc: ops@tenant.gov.example
Subject: URGENT: all our apps are down
Date: Wed, 25 Nov 2026 02:14:01 +0000
Message-ID: <CAF3k2x9Q-7vT@mail.tenant.gov.example>
MIME-Version: 1.0
Content-Type: multipart/alternative; boundary="000000000000a1b2c3"

--000000000000a1b2c3
Content-Type: text/plain; charset="UTF-8"
Content-Transfer-Encoding: quoted-printable

Hi,

Every app in our org returns 502 Bad Gateway since 02:10 UTC. We changed =
nothing; the caf=C3=A9 booking service is down for all users.

Priya
--000000000000a1b2c3
Content-Type: text/html; charset="UTF-8"
Content-Transfer-Encoding: quoted-printable

<div dir=3D"ltr"><p>Hi,</p><p>Every app in our org returns <b>502 Bad Gateway<=
/b> since 02:10 UTC.</p><p>Priya</p></div>
--000000000000a1b2c3--
""".replace(b"\n", b"\r\n")

BOUNCE = b"""\
Return-Path: <>
From: Mail Delivery System <MAILER-DAEMON@mx.tenant.gov.example>
To: emergency@example.org
Subject: Undelivered Mail Returned to Sender
Date: Wed, 25 Nov 2026 03:00:00 +0000
Message-ID: <20261125030000.ABC12@mx.tenant.gov.example>
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
\tboundary="ABC12.1764039600/mx.tenant.gov.example"

This is a MIME-encapsulated message.

--ABC12.1764039600/mx.tenant.gov.example
Content-Description: Notification
Content-Type: text/plain; charset=us-ascii

This is the mail system at host mx.tenant.gov.example.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients.

<nobody@tenant.gov.example>: host mail.tenant.gov.example said: 550 5.1.1
    User unknown (in reply to RCPT TO command)

--ABC12.1764039600/mx.tenant.gov.example
Content-Description: Delivery report
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.tenant.gov.example
Arrival-Date: Wed, 25 Nov 2026 02:59:58 +0000

Final-Recipient: rfc822; nobody@tenant.gov.example
Action: failed
Status: 5.1.1
Diagnostic-Code: smtp; 550 5.1.1 User unknown

--ABC12.1764039600/mx.tenant.gov.example
Content-Description: Undelivered Message Headers
Content-Type: text/rfc822-headers

From: emergency@example.org
To: nobody@tenant.gov.example
Subject: Re: URGENT: all our apps are down
Message-ID: <reply-1@emergencyd.localhost>

--ABC12.1764039600/mx.tenant.gov.example--
""".replace(b"\n", b"\r\n")

AUTO_REPLY = b"""\
From: "Jan Kowalski" <jan.kowalski@tenant.gov.example>
To: emergency@example.org
Subject: =?utf-8?q?Automatische_Antwort:_Abwesenheitsnotiz_f=C3=BCr?=
 =?utf-8?b?IEphbiBLb3dhbHNraQ==?=
Date: Wed, 25 Nov 2026 09:01:00 +0100
Message-ID: <AM0PR01MB1234@eurprd01.prod.example.com>
In-Reply-To: <reply-1@emergencyd.localhost>
References: <CAF3k2x9Q-7vT@mail.tenant.gov.example> <reply-1@emergencyd.localhost>
Auto-Submitted: auto-replied
X-Auto-Response-Suppress: All
Content-Type: text/plain; charset="iso-8859-1"
Content-Transfer-Encoding: 8bit

Ich bin bis 30.11. nicht im B\xfcro. In dringenden F\xe4llen wenden Sie sich bitte an ops@tenant.gov.example.
""".replace(b"\n", b"\r\n")

READ_RECEIPT = b"""\
From: Ops Team <ops@tenant.gov.example>
To: emergency@example.org
Subject: Read: URGENT: all our apps are down
Date: Wed, 25 Nov 2026 09:15:00 +0000
Message-ID: <mdn-42@tenant.gov.example>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=disposition-notification;
 boundary="----=_Part_MDN"

------=_Part_MDN
Content-Type: text/plain; charset=utf-8

Your message to ops@tenant.gov.example was read on Wednesday, 25 November 2026 09:15:00 UTC.
------=_Part_MDN
Content-Type: message/disposition-notification

Reporting-UA: tenant.gov.example; Mail Client
Final-Recipient: rfc822; ops@tenant.gov.example
Original-Message-ID: <reply-1@emergencyd.localhost>
Disposition: manual-action/MDN-sent-manually; displayed

------=_Part_MDN--
""".replace(b"\n", b"\r\n")

SEEDS = (TENANT_P1, BOUNCE, AUTO_REPLY, READ_RECEIPT)

INTERESTING = [
    b"\x00", b"\r", b"\n", b"\r\n\r\n", b"\r\n ", b"--", b"=?utf-8?b?", b"=?x-unknown?q?=FF?=", b"?=",
    b"boundary=", b'boundary=""', b"Content-Type: multipart/mixed; boundary=x\r\n",
    b"Content-Transfer-Encoding: base64\r\n", b"Content-Type: message/rfc822\r\n\r\n", b"charset=utf-7",
    b"charset=iso-2022-jp", b"\x1b$B", b"\xff\xfe", b"\xef\xbb\xbf", b"<html><body><script>", b"<![foo[",
    b"Auto-Submitted: no\r\n", b"Message-ID: <a@b>\r\n", b"Message-ID: \r\n", b"From: <>\r\n", b":", b"\t",
    b"=\r\n", b"=XX", b"<", b">", b'"', b";", b"\\", b"(", b"\xc3", b"\xe2\x80\xa8",
]
OP_REPEAT = "repeat"     # the mutation that repeats a slice of the seed in place


@st.composite
def mutated_seeds(draw) -> bytes:
    raw = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["insert", "delete", "replace", OP_REPEAT, "truncate", "flip", "line-endings"]))
        start = draw(st.integers(0, len(raw)))
        end = draw(st.integers(start, min(len(raw), start + 300)))
        fresh = draw(st.one_of(st.sampled_from(INTERESTING), st.binary(min_size=1, max_size=40)))
        if op == "insert":
            raw[start:start] = fresh
        elif op == "delete":
            del raw[start:end]
        elif op == "replace":
            raw[start:end] = fresh
        elif op == OP_REPEAT:
            raw[start:start] = raw[start:end] * draw(st.integers(1, 200))
        elif op == "truncate":
            del raw[start:]
        elif op == "flip" and start < len(raw):
            raw[start] ^= draw(st.integers(1, 255))
        elif op == "line-endings":
            raw = bytearray(bytes(raw).replace(b"\r\n", draw(st.sampled_from([b"\n", b"\r", b"\r\r\n", b"\n\r"]))))
    return bytes(raw)


# ---------------------------------------------------------------------------
# The properties
# ---------------------------------------------------------------------------


def test_the_seeds_are_what_they_claim_to_be() -> None:
    """Unmutated, each seed gets the verdict a human would give it."""
    at = datetime(2026, 11, 25, 2, 15, tzinfo=timezone.utc)
    verdicts = {name: run_pipeline(raw, None, at)[1] for name, raw in
                (("p1", TENANT_P1), ("bounce", BOUNCE), ("auto_reply", AUTO_REPLY), ("receipt", READ_RECEIPT))}
    assert (verdicts["p1"].suppressed, verdicts["p1"].severity, verdicts["p1"].page) == (False, "P1", True)
    assert verdicts["bounce"].category == "noise:bounce"
    assert verdicts["auto_reply"].category == "noise:auto_reply"
    assert verdicts["receipt"].category == "noise:read_receipt"


@bounded_settings(2 * EXAMPLES)
@given(raw=st.binary(max_size=4096), mail_from=mail_froms, received_at=received_ats)
def test_any_bytes_get_a_verdict(raw: bytes, mail_from: str | None, received_at: datetime) -> None:
    check_everything(raw, mail_from, received_at)


@bounded_settings(EXAMPLES)
@given(raw=hostile_mail(), mail_from=mail_froms, received_at=received_ats)
def test_hostile_mail_gets_a_verdict(raw: bytes, mail_from: str | None, received_at: datetime) -> None:
    check_everything(raw, mail_from, received_at)


@bounded_settings(2 * EXAMPLES)
@given(raw=mutated_seeds(), mail_from=mail_froms, received_at=received_ats)
def test_mutated_real_mail_gets_a_verdict(raw: bytes, mail_from: str | None, received_at: datetime) -> None:
    check_everything(raw, mail_from, received_at)


@bounded_settings(EXAMPLES)
@given(raw=st.one_of(mutated_seeds(), hostile_mail(),
                     st.tuples(st.sampled_from([b"In-Reply-To", b"references", b"REFERENCES ", b"X-References",
                                                b"in-reply-to\t"]),
                               st.sampled_from([b": <a@b.example>", b":\r\n <a@b.example> <c@d>", b":<x@y>"]),
                               st.sampled_from([b"", b"\r\n", b"\r\n\r\n", b"\xef\xbb\xbf\r\n"]),
                               st.binary(max_size=300), st.sampled_from([b"\r\n", b"\n", b"\r"]))
                     .map(lambda parts: (parts[2] + b"Subject: s\r\n" + parts[0] + parts[1] + b"\r\n\r\n"
                                         + parts[3]).replace(b"\r\n", parts[4]))))
def test_the_look_for_thread_fields_before_parsing_changes_no_answer(raw: bytes) -> None:
    """thread_ids_of skips the header parser when no line of the header block could begin In-Reply-To or
    References: its answer is the parser's own, whatever the mail."""
    values = identity._first_values(raw)
    expected = tuple(dict.fromkeys(i for name in ("in-reply-to", "references")
                                   for i in (identity._safely(identity.message_ids_in, values.get(name)) or ())))
    assert thread_ids_of(raw) == expected


HEADER_LINES = st.one_of(
    st.tuples(st.sampled_from(["From", "Message-ID", "message-id", "X-A.b_c", "Return-Path", "To", "N\x7e", "!"]),
              st.sampled_from([":", ": ", ":\t", " :", ":  "]),
              st.text(st.characters(codec="latin-1", exclude_characters="\r\n"), max_size=30))
    .map(lambda parts: "".join(parts)),
    st.sampled_from([" folded", "\tfolded", " ", "\t", ":no name", "From someone", "From: a@b", "no colon",
                     "Na me: space in the name", "", "\x00: nul", "X:\x80\xff", "Subject: =?utf-8?q?caf=C3=A9?="]),
)


def compat32_first_values(block: bytes) -> dict[str, str]:
    """What _first_values gave before its plain path: the stdlib's parser, field by field."""
    values: dict[str, str] = {}
    for name, value in BytesHeaderParser(policy=policy.compat32).parsebytes(block).raw_items():
        values.setdefault(name.strip().lower(), value)
    return values


@bounded_settings(4 * EXAMPLES)
@given(lines=st.lists(HEADER_LINES, min_size=1, max_size=8),
       endings=st.lists(st.sampled_from(["\r\n"] * 6 + ["\n", "\r"]), min_size=8, max_size=8))
def test_a_plain_header_block_reads_as_the_stdlib_parser_reads_it(lines: list[str], endings: list[str]) -> None:
    """The store's read of the header block skips the stdlib's parser for a plain block (parsers/identity.py):
    same values, for every block it takes; any other block is left to the parser."""
    block = "".join(line + ending for line, ending in zip(lines, endings))[:-len(endings[len(lines) - 1])]
    raw = block.encode("latin-1")
    plain = identity._plain_first_values(raw)
    if plain is not None:
        assert plain == compat32_first_values(raw)
    mail = raw + b"\r\n\r\nbody\r\n"
    data = identity.skip_preamble(mail)     # as _first_values reads it
    end = identity.header_block_end(data)
    assert identity._first_values(mail) == compat32_first_values(data if end is None else data[:end])


def test_the_plain_read_takes_ordinary_mail() -> None:
    block = make_message(subject="URGENT: all our apps are down", sender="noc@tenant.example",
                         extra_headers="Received: from mx.tenant.example\r\n\tby mx.ours.example\r\n"
                         ).split(b"\r\n\r\n")[0]
    assert identity._plain_first_values(block) == compat32_first_values(block) != {}


@bounded_settings(EXAMPLES)
@given(raw=st.one_of(mutated_seeds(), hostile_mail()))
def test_the_store_and_the_parser_agree_on_the_message_id(raw: bytes) -> None:
    """The store dedups on message_id_of; tickets and threading use parse_message's id."""
    assert message_id_of(raw) == parse_message(raw).message_id


@bounded_settings(4 * EXAMPLES)
@given(text=st.one_of(st.text(max_size=200), st.lists(st.one_of(encoded_words(), st.binary(max_size=20)),
                                                      max_size=6).map(lambda ws: b" ".join(ws).decode("latin-1"))))
def test_encoded_words_decode_to_text(text: str) -> None:
    decoded = decode_rfc2047(text)
    assert isinstance(decoded, str)
    assert decode_rfc2047(text) == decoded


@bounded_settings(4 * EXAMPLES)
@given(data=st.binary(max_size=200), charset=st.one_of(st.none(), st.sampled_from(CHARSETS), st.text(max_size=20)))
def test_any_bytes_decode_in_any_charset(data: bytes, charset: str | None) -> None:
    decoded = decode_bytes(data, charset)
    assert isinstance(decoded.text, str) and isinstance(decoded.lossy, bool)
    assert decode_bytes(data, charset) == decoded


@bounded_settings(4 * EXAMPLES)
@given(document=html_documents, limit=st.integers(0, 400))
def test_html_becomes_bounded_text(document: str, limit: int) -> None:
    text = html_to_text(document, limit)
    assert isinstance(text, str) and len(text) <= limit
    assert "\r" not in text and "\x00" not in text


@bounded_settings(4 * EXAMPLES)
@given(subject=st.text(max_size=300).map(lambda s: single_line(s, MAX_SUBJECT_CHARS)),
       text=st.text(max_size=2000),
       generic=st.lists(st.text(max_size=10), max_size=3).map(tuple))
def test_descriptive_subjects_are_one_bounded_line(subject: str, text: str, generic: tuple[str, ...]) -> None:
    result = descriptive_subject(subject, text, generic or POLICY.generic_subjects)
    assert result.strip() and single_line_text(result)
    assert len(result) <= max(len(subject.strip()), MAX_DESCRIPTIVE_SUBJECT_CHARS)
