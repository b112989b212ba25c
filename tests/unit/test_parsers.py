"""Tests for the pure parsing layer: parsers.message, parsers.text and
parsers.identity. Fixtures live in tests/fixtures/mail and are hand-written
for these tests."""

from __future__ import annotations

import base64
import logging
import random
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from emergencyd.parsers.identity import (
    MAX_MESSAGE_ID_VALUE_CHARS,
    message_id_of,
    message_ids_in,
    normalize_message_id,
)
from emergencyd.parsers.limits import (
    MAX_HEADER_VALUE_CHARS,
    MAX_HEADERS,
    MAX_RAW_VALUE_CHARS,
    MAX_SUBJECT_CHARS,
    MAX_TEXT_CHARS,
)
from emergencyd.parsers.message import (
    UNPARSEABLE_MARKER,
    Attachment,
    ParsedMessage,
    parse_message,
)
from emergencyd.parsers.text import (
    TRUNCATION_MARKER,
    bounded,
    decode_bytes,
    decode_rfc2047,
    html_to_text,
    one_space,
    single_line,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "mail"
ALL_FIXTURES = sorted(FIXTURES.glob("*.eml"))


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def parsed(name: str) -> ParsedMessage:
    return parse_message(fixture(name))


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


# ---------------------------------------------------------------------------
# Well-formed messages
# ---------------------------------------------------------------------------


def test_plain_text_alert() -> None:
    msg = parsed("plain.eml")

    assert msg.parse_error is None
    assert msg.message_id == "20250603081501.7F1A2B3C4D@mx1.monitor.example.com"
    assert msg.sender == "alerts@monitor.example.com"
    assert msg.sender_name == "Ops Pager"
    assert msg.recipients == (
        "emergency@support.example.org",
        "oncall-lead@example.com",
        "backup-team@example.com",
    )
    assert msg.subject == "URGENT: db-prod-1 is down"
    assert msg.date == utc(2025, 6, 3, 8, 15, 1)
    assert msg.date.utcoffset() == timedelta(0)
    assert msg.text.startswith("PROBLEM: db-prod-1 is DOWN\n\nHost:     db-prod-1")
    assert "Connection refused" in msg.text
    assert msg.attachments == ()
    assert msg.defects == ()
    assert msg.content_type == "text/plain; charset=us-ascii"
    assert msg.auto_submitted is None and msg.precedence is None
    assert msg.in_reply_to == () and msg.references == ()


def test_headers_keep_order_and_are_unfolded() -> None:
    msg = parsed("plain.eml")

    assert [name for name, _ in msg.headers[:3]] == ["Return-Path", "Received", "Received"]
    received = msg.header_values("received")
    assert len(received) == 2
    assert received[0].startswith(
        "from mx1.monitor.example.com (mx1.monitor.example.com [192.0.2.10]) by mail"
    )
    assert "\n" not in received[0] and "\t" not in received[0]
    assert msg.header("RETURN-PATH") == "<alerts@monitor.example.com>"
    assert msg.header("X-Not-There") is None
    assert msg.header_values("X-Not-There") == ()


def test_raw_headers_are_the_header_block() -> None:
    msg = parsed("plain.eml")

    assert msg.raw_headers.startswith("Return-Path: <alerts@monitor.example.com>\nReceived: from mx1")
    assert msg.raw_headers.endswith("Content-Transfer-Encoding: 7bit")
    assert "PROBLEM" not in msg.raw_headers


def test_multipart_alternative_prefers_plain_text_and_normalises_crlf() -> None:
    msg = parsed("alternative.eml")

    assert msg.parse_error is None
    assert msg.sender_name == "Jörg Müller"
    assert msg.text == (
        "Hallo Team,\n\n"
        "der Zahlungsdienst antwortet seit 09:42 nicht mehr (HTTP 503).\n"
        "Bitte sofort prüfen – Kunden können nicht bezahlen.\n\n"
        "Viele Grüße\nJörg Müller"
    )
    assert msg.content_type == 'multipart/alternative; boundary="----=_Part_1_2087348"'
    assert msg.date == utc(2025, 6, 4, 7, 47, 13)


def test_html_only_message_is_converted_to_readable_text() -> None:
    msg = parsed("html_only.eml")
    text = msg.text

    assert text.startswith("Incident INC-4711: Database cluster degraded\n\n")
    assert "Dear customer,\nour monitoring detected replication lag > 300s" in text
    assert "primary cluster & the read replicas" in text
    assert "- Impact: writes delayed\n- Next update: 11:00 CET" in text
    assert "Region | Status\neu-west | degraded" in text
    assert "status page (https://status.example.net/incidents/4711)" in text
    assert "write to noc@example.net." in text  # mailto equal to its text
    assert "Café © Example™" in text
    assert "trackOpen" not in text and "color" not in text
    assert "Incident notification" not in text  # <title>
    assert "<" not in text.replace("> 300s", "")


def test_attachments_names_types_and_sizes() -> None:
    msg = parsed("attachments.eml")

    assert msg.text == "Logs and the crash dump are attached. Screenshot inline."
    assert msg.attachments == (
        Attachment(filename=None, content_type="image/png", size=512),
        Attachment(filename="crash-report.pdf", content_type="application/pdf", size=3007),
        Attachment(filename="übersicht hosts.csv", content_type="text/csv", size=35),  # RFC 2231
        Attachment(filename="Prüfbericht.txt", content_type="text/plain", size=24),  # RFC 2047
    )
    assert "Prüfbericht" not in msg.text  # a text/plain attachment is not body


def test_forwarded_message_supplies_the_text_when_the_outer_has_none() -> None:
    msg = parsed("forwarded.eml")

    assert msg.subject == "Fwd: CRITICAL: storage array offline"
    assert msg.text == "Controller A and B unreachable. All LUNs offline."
    assert [a.content_type for a in msg.attachments] == ["message/rfc822"]
    assert msg.attachments[0].size > 200


# ---------------------------------------------------------------------------
# Encodings
# ---------------------------------------------------------------------------


def test_rfc2047_utf8_subject_and_from() -> None:
    msg = parsed("encoded_headers_utf8.eml")

    assert msg.subject == "Serviço indisponível – produção parada 🚨"
    assert msg.sender == "alvaro@cliente.example.pt"
    assert msg.sender_name == "Álvaro Gonçalves"
    assert msg.header("To") == "Suporte Emergência <emergency@support.example.org>"
    assert msg.text == "O serviço está indisponível desde as 03:00."


def test_rfc2047_latin1_subject_and_from() -> None:
    msg = parsed("encoded_headers_latin1.eml")

    assert msg.subject == "Réseau coupé à Lyon"
    assert msg.sender_name == "René Dupont"
    assert msg.text == "Le réseau est coupé à Lyon depuis 21h50."


def test_windows_1252_body() -> None:
    msg = parsed("windows1252.eml")

    assert msg.text == (
        "The “server room” is at 41°C – the café fridge tripped the breaker.\n"
        "Replacement cost estimate: € 1.200."
    )
    assert msg.defects == ()


def test_iso_2022_jp_subject_name_and_7bit_body() -> None:
    # mail-parser returns this body with its raw escape sequences.
    msg = parsed("iso2022jp.eml")

    assert msg.subject == "障害発生"
    assert msg.sender_name == "山田"
    assert msg.text == "本番サーバーが停止しました。至急対応をお願いします。"
    assert "\x1b" not in msg.text


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        (b"=?utf-8?q?caf=C3?=", "caf\ufffd"),  # truncated multi-byte
        (b"=?utf-8?q?caf=C3?= =?utf-8?q?=A9?=", "café"),  # split across words
        (b"=?x-unknown-charset?q?Alarm?=", "Alarm"),
        (b"=?utf-8?b?!!!?= Alarm", "=?utf-8?b?!!!?= Alarm"),  # kept literally
        (b"=?utf-8?b?w6lsw6h?=", "élè"),  # missing padding
        (b"Re:=?utf-8?q?=C3=A9t=C3=A9?=", "Re:été"),
        (b"caf\xe9 raw 8-bit", "café raw 8-bit"),
        (b"two\n  lines\tand   spaces", "two lines and spaces"),
    ],
)
def test_subject_decoding_is_best_effort(subject: bytes, expected: str) -> None:
    msg = parse_message(b"From: a@example.org\nSubject: " + subject + b"\n\nbody\n")

    assert msg.subject == expected
    assert msg.parse_error is None


def test_wrong_and_unknown_body_charsets_do_not_raise() -> None:
    bad_utf8 = parse_message(
        b"Subject: x\nContent-Type: text/plain; charset=utf-8\n\ncaf\xe9 \xff ok\n"
    )
    unknown = parse_message("Subject: x\nContent-Type: text/plain; charset=x-klingon\n\nnaïve\n".encode())
    refused = parse_message(b"Subject: x\nContent-Type: text/plain; charset=punycode\n\nplain\n")

    assert bad_utf8.text == "caf\ufffd \ufffd ok"
    assert "CharsetDecodeDefect" in bad_utf8.defects
    assert unknown.text == "naïve"
    assert refused.text == "plain"


# ---------------------------------------------------------------------------
# Missing and broken headers
# ---------------------------------------------------------------------------


def test_missing_message_id() -> None:
    msg = parsed("no_message_id.eml")

    assert msg.message_id is None
    assert msg.sender == "pager@alerts.example.com"
    assert msg.sender_name is None
    assert msg.subject == "Disk full on backup-2"
    assert msg.parse_error is None


def test_missing_date() -> None:
    msg = parsed("no_date.eml")

    assert msg.date is None
    assert msg.text == "Printer on fire, again."
    assert msg.parse_error is None


def test_bad_date_is_none_with_a_defect() -> None:
    msg = parsed("bad_date.eml")

    assert msg.date is None
    assert "DateHeaderDefect" in msg.defects
    assert msg.parse_error is None


def test_date_without_zone_falls_back_to_stdlib_as_utc() -> None:
    msg = parse_message(b"Subject: x\nDate: Fri, 13 Jun 2025 09:00:05\n\nbody\n")

    assert msg.date == utc(2025, 6, 13, 9, 0, 5)


def test_missing_angle_bracket_in_from_still_gives_a_sender() -> None:
    msg = parse_message(b"From: Alice <alice@example.org\nSubject: x\n\nbody\n")

    assert msg.sender == "alice@example.org"
    assert "AddressHeaderDefect" in msg.defects


def test_from_without_address_gives_no_sender() -> None:
    for value in (b"<>", b"just a name", b""):
        msg = parse_message(b"From: " + value + b"\nSubject: x\n\nbody\n")
        assert msg.sender is None and msg.sender_name is None


def test_header_values_are_bounded() -> None:
    raw = b"Subject: " + b"x" * 5000 + b"\nX-Long: " + b"y " * 5000 + b"\n"
    raw += b"".join(b"X-Flood-%d: v\n" % i for i in range(MAX_HEADERS + 100)) + b"\nbody\n"
    msg = parse_message(raw)

    assert len(msg.subject) == MAX_SUBJECT_CHARS
    assert len(msg.header("X-Long")) <= MAX_HEADER_VALUE_CHARS
    assert len(msg.headers) == MAX_HEADERS
    assert msg.text == "body"


# ---------------------------------------------------------------------------
# Broken MIME and failures
# ---------------------------------------------------------------------------


def test_multipart_without_boundary_keeps_its_body_visible() -> None:
    # mail-parser drops this body (and logs a warning); we keep it.
    msg = parsed("missing_boundary.eml")

    assert msg.parse_error is None
    assert "NoBoundaryInMultipartDefect" in msg.defects
    assert "The VPN concentrator rebooted twice." in msg.text


def test_truncated_multipart_keeps_text_and_partial_attachment() -> None:
    msg = parsed("truncated.eml")

    assert msg.parse_error is None
    assert "CloseBoundaryNotFoundDefect" in msg.defects
    assert msg.text == "Core switch logs attached."
    (attachment,) = msg.attachments
    assert attachment.filename == "switch.log.gz"
    assert 0 < attachment.size < 2000


def test_mail_parser_crash_falls_back_with_parse_error() -> None:
    # mail-parser 4.8.0 raises AttributeError on this truncated nesting.
    msg = parsed("truncated_nested.eml")

    assert msg.parse_error is not None
    assert msg.parse_error.startswith("mail-parser failed: AttributeError")
    assert msg.subject == "Sent from a dying phone"
    assert msg.sender == "mobile@example.com"
    assert msg.message_id == "truncated-nested-1@example.com"
    assert msg.date == utc(2025, 6, 12, 13, 0)
    assert msg.text.startswith(UNPARSEABLE_MARKER + "\nFrom: Mobile Client <mobile@example.com>\n")
    assert msg.text.endswith("\n\nElevator 3 stuck with people insid")
    assert {"CloseBoundaryNotFoundDefect", "StartBoundaryNotFoundDefect"} <= set(msg.defects)


def test_bounce_report() -> None:
    msg = parsed("bounce.eml")

    assert msg.parse_error is None
    assert msg.content_type == (
        "multipart/report; report-type=delivery-status; "
        'boundary="1A2B3C.1749805205/mx.support.example.org"'
    )
    assert msg.sender == "MAILER-DAEMON@mx.support.example.org"
    assert msg.sender_name == "Mail Delivery System"
    assert msg.auto_submitted == "auto-replied"
    assert msg.header("Return-Path") == "<>"
    assert msg.text.startswith("This is the mail system at host mx.support.example.org.")
    assert "User unknown in virtual mailbox table" in msg.text
    assert "We are looking into the outage now." not in msg.text  # the returned original
    assert [a.content_type for a in msg.attachments] == ["message/delivery-status", "message/rfc822"]
    assert all(a.size > 0 for a in msg.attachments)


def test_auto_reply_threading_and_noise_headers() -> None:
    msg = parsed("reply.eml")

    assert msg.in_reply_to == ("ticket-1234-reply@support.example.org",)
    assert msg.references == (
        "ticket-1234@support.example.org",
        "ticket-1234-update@support.example.org",
        "ticket-1234-reply@support.example.org",
    )
    assert msg.auto_submitted == "auto-replied"
    assert msg.precedence == "bulk"
    assert msg.header("x-autoreply") == "yes"
    assert msg.header("X-Auto-Response-Suppress") == "All"
    assert msg.subject == "Automatic reply: Re: Outage ticket #1234"


def test_header_only_message() -> None:
    msg = parsed("header_only.eml")

    assert msg.parse_error is None
    assert msg.text == ""
    assert msg.subject == "heartbeat 2025-06-14T00:00Z"
    assert msg.attachments == ()


def test_empty_bytes() -> None:
    msg = parsed("empty.eml")

    assert msg.parse_error == "empty message"
    assert msg.text == UNPARSEABLE_MARKER
    assert msg.subject == "" and msg.sender is None and msg.headers == ()
    assert msg.content_type == "text/plain"


def test_binary_garbage_is_flagged_and_shown_raw() -> None:
    msg = parsed("garbage.eml")

    assert msg.parse_error == "no header fields found"
    assert msg.text.startswith(UNPARSEABLE_MARKER + "\n")
    assert msg.text[len(UNPARSEABLE_MARKER) + 1 :] == msg.raw_headers
    assert msg.raw_headers and "\x00" not in msg.raw_headers
    assert msg.subject == "" and msg.sender is None and msg.message_id is None


def test_leading_blank_lines_and_bom_are_skipped() -> None:
    # Seen from Exchange gateways and Windows tools.
    for prefix in (b"\n   \n", b"\xef\xbb\xbf"):
        msg = parse_message(prefix + fixture("plain.eml"))
        assert msg.parse_error is None
        assert msg.subject == "URGENT: db-prod-1 is down"


def test_deeply_nested_multipart_does_not_raise() -> None:
    raw = b"Subject: nested\nContent-Type: multipart/mixed; boundary=b0\n\n" + b"".join(
        b"--b%d\nContent-Type: multipart/mixed; boundary=b%d\n\n" % (i, i + 1) for i in range(3000)
    )
    msg = parse_message(raw)

    assert msg.subject == "nested"
    assert msg.parse_error is not None or msg.defects


def test_non_bytes_input_does_not_raise() -> None:
    assert parse_message(bytearray(fixture("plain.eml"))).subject == "URGENT: db-prod-1 is down"
    assert parse_message(memoryview(fixture("plain.eml"))).subject == "URGENT: db-prod-1 is down"
    wrong_type = parse_message(12345)  # type: ignore[arg-type]
    assert wrong_type.parse_error.startswith("internal parser error: TypeError")


def test_mail_parser_warnings_are_silenced(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        parsed("missing_boundary.eml")

    assert not [r for r in caplog.records if r.name.startswith("mailparser") and r.levelno >= logging.WARNING]


# ---------------------------------------------------------------------------
# Size bounds (no timing asserts: these must simply finish)
# ---------------------------------------------------------------------------


def test_ten_megabyte_attachment() -> None:
    payload = random.Random(10).randbytes(7_500_000)
    raw = (
        b"From: a@example.org\nSubject: big\nMIME-Version: 1.0\n"
        b"Content-Type: multipart/mixed; boundary=XX\n\n"
        b"--XX\nContent-Type: text/plain\n\nsee attachment\n"
        b"--XX\nContent-Type: application/octet-stream\n"
        b"Content-Disposition: attachment; filename=core.dump\n"
        b"Content-Transfer-Encoding: base64\n\n" + base64.encodebytes(payload) + b"--XX--\n"
    )
    msg = parse_message(raw)

    assert len(raw) > 10_000_000
    assert msg.text == "see attachment"
    assert msg.attachments == (
        Attachment(filename="core.dump", content_type="application/octet-stream", size=7_500_000),
    )


def test_huge_text_body_is_truncated_with_a_marker() -> None:
    raw = b"Subject: long\n\n" + b"all work and no play\n" * 150_000
    msg = parse_message(raw)

    assert len(msg.text) == MAX_TEXT_CHARS
    assert msg.text.endswith(TRUNCATION_MARKER)
    assert msg.text.startswith("all work and no play\n")


def test_hostile_header_shapes_finish() -> None:
    # Each of these takes minutes to hours with the stdlib/mail-parser alone.
    many_words = b"Subject: " + b"=?utf-8?q?a?= " * 200_000 + b"\n\nbody\n"
    many_params = (
        b"Content-Type: multipart/mixed; boundary=b" + b"; a=b" * 200_000 + b"\n\n--b\n\nhi\n--b--\n"
    )
    for raw in (many_words, many_params):
        msg = parse_message(raw)
        assert "OversizedHeaderDefect" in msg.defects


# ---------------------------------------------------------------------------
# Never raises: random inputs and mutations of the fixtures
# ---------------------------------------------------------------------------

_INSERTIONS = [
    b"\n", b"\r\n", b"\n\n", b"--", b"=?", b"?=", b"=?utf-8?b?", b"<", b">", b":", b"\x00", b"\xff",
    b"boundary=", b"Content-Type: multipart/mixed; boundary=x\n", b"Content-Transfer-Encoding: base64\n",
]


def _mutate(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        choice = rng.random()
        if choice < 0.3 and out:
            out[rng.randrange(len(out))] = rng.randrange(256)  # byte flip
        elif choice < 0.5:
            del out[rng.randrange(len(out) + 1):]  # truncation
        elif choice < 0.75:
            position = rng.randrange(len(out) + 1)
            out[position:position] = rng.choice(_INSERTIONS)
        elif out:
            start = rng.randrange(len(out))
            del out[start : start + rng.randint(1, 300)]
    return bytes(out)


def _assert_well_formed(msg: ParsedMessage) -> None:
    assert isinstance(msg, ParsedMessage)
    assert isinstance(msg.subject, str) and "\n" not in msg.subject
    assert len(msg.subject) <= MAX_SUBJECT_CHARS and len(msg.text) <= MAX_TEXT_CHARS
    assert msg.date is None or msg.date.tzinfo is not None
    assert all(isinstance(a, Attachment) for a in msg.attachments)
    for value in (msg.subject, msg.text, msg.raw_headers, *(v for _, v in msg.headers)):
        value.encode("utf-8")  # no lone surrogates reach JSON/HTTP clients


def test_random_bytes_never_raise() -> None:
    rng = random.Random(20250603)
    for _ in range(300):
        raw = rng.randbytes(rng.randint(0, 2000))
        _assert_well_formed(parse_message(raw))
        message_id_of(raw)


def test_mutated_fixtures_never_raise() -> None:
    rng = random.Random(4711)
    sources = [path.read_bytes() for path in ALL_FIXTURES]
    for _ in range(300):
        raw = _mutate(rng.choice(sources), rng)
        _assert_well_formed(parse_message(raw))
        message_id_of(raw)


# ---------------------------------------------------------------------------
# parsers.identity
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", ALL_FIXTURES, ids=lambda p: p.name)
def test_message_id_of_agrees_with_parse_message(path: Path) -> None:
    raw = path.read_bytes()

    assert message_id_of(raw) == parse_message(raw).message_id


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"Message-ID: <abc@example.org>\n\nbody", "abc@example.org"),
        (b"message-id:   abc@example.org  \r\n\r\n", "abc@example.org"),
        (b"Message-Id:\n <folded@example.org>\n\n", "folded@example.org"),
        (b"Message-ID: <first@x> (comment)\nMessage-ID: <second@x>\n\n", "first@x"),
        (b"Message-ID: <a b@example.org>\n\n", None),
        (b"Message-ID: <>\n\n", None),
        (b"Message-ID:\n\n", None),
        (b"Message-ID: <" + b"a" * 999 + b">\n\n", None),
        (b"Subject: no id\n\nMessage-ID: <in-body@x>\n", None),
        (b"", None),
        (b"\x00\xff\xfe\x80garbage", None),
    ],
)
def test_message_id_of(raw: bytes, expected: str | None) -> None:
    assert message_id_of(raw) == expected


def test_message_id_of_never_raises_on_non_bytes() -> None:
    assert message_id_of(None) is None  # type: ignore[arg-type]
    assert message_id_of(10**12) is None  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"Message-ID: " + b"x" * 16_000 + b" 0@0 <0@0>\r\n\r\n", None),
        (b"Message-ID: " + b"(comment) " * 2_000 + b"<0@0>\r\n\r\n", None),
        # A non-UTF-8 byte far into the value must not change how the id decodes.
        ("Message-ID: <\u00e9@x> ".encode() + b"(c) " * 5_000 + b"\xff\r\n\r\n", "\u00e9@x"),
    ],
)
def test_message_id_of_and_parse_message_agree_on_long_values(raw: bytes, expected: str | None) -> None:
    # The parser reads only the start of a long value; the store's id must
    # come from that same start.
    assert message_id_of(raw) == expected
    assert parse_message(raw).message_id == expected
    assert MAX_MESSAGE_ID_VALUE_CHARS <= MAX_RAW_VALUE_CHARS


def test_message_id_helpers() -> None:
    assert normalize_message_id(None) is None
    assert normalize_message_id(" <x@y> ") == "x@y"
    assert message_ids_in("<a@x> <b@x>\n\t<a@x>") == ("a@x", "b@x")
    assert message_ids_in("a@x, b@x") == ("a@x", "b@x")
    assert message_ids_in(" ".join(f"<{i}@x>" for i in range(150)), limit=100)[0] == "50@x"


# ---------------------------------------------------------------------------
# parsers.text
# ---------------------------------------------------------------------------


def test_html_to_text_blocks_breaks_and_whitespace() -> None:
    html = "<div>one\n   two</div><div>three<br>four<br/>five</div><p>six</p>seven"

    assert html_to_text(html) == "one two\nthree\nfour\nfive\n\nsix\n\nseven"


def test_html_to_text_lists_and_nested_lists() -> None:
    html = "<ul><li>alpha</li><li>beta<ul><li>gamma</li></ul></li></ul><ol><li>first</li></ol>"

    assert html_to_text(html) == "- alpha\n- beta\n  - gamma\n\n- first"


def test_html_to_text_links() -> None:
    html = (
        '<a href="https://x.example/a">details</a> '
        '<a href="https://x.example/b">https://x.example/b</a> '
        '<a href="https://x.example/c"><img src="c.png"></a> '
        '<a href="#top">top</a> <a href="javascript:void(0)">js</a>'
    )

    assert html_to_text(html) == (
        "details (https://x.example/a) https://x.example/b https://x.example/c top js"
    )


def test_html_to_text_drops_script_style_and_decodes_entities() -> None:
    html = (
        "<html><head><title>T</title><style>p{x:y}</style></head><body>"
        "<script>var a = '<p>no</p>';</script><p>a &amp; b &lt;c&gt; &eacute; &#x263A; &nbsp;x"
        "</p><xml><o:PixelsPerInch>96</o:PixelsPerInch></xml></body></html>"
    )

    assert html_to_text(html) == "a & b <c> é ☺ x"


def test_html_to_text_preformatted_and_tables() -> None:
    html = "<pre>  a   b\n    c</pre><table><tr><td>k</td><td>v</td></tr><tr><td></td><td>w</td></tr></table>"

    assert html_to_text(html) == "  a   b\n    c\n\nk | v\nw"


def test_html_to_text_survives_broken_markup() -> None:
    broken = (
        "<![if foo[ x ]]> after", "<p>unclosed <b>bold <a href=x>link", "<<<>>>&&&;;", "<title>x", "</p></div>",
    )
    for html in broken:
        assert isinstance(html_to_text(html), str)
    assert html_to_text("<![foo[ x ]]> after").endswith("after")


def test_html_to_text_is_bounded() -> None:
    html = "<p>" + "word " * 100_000 + "</p>"
    text = html_to_text(html, limit=1000)

    assert len(text) == 1000
    assert text.endswith(TRUNCATION_MARKER)


def test_bounded_and_single_line() -> None:
    assert bounded("abcdef", 10) == "abcdef"
    assert bounded("abcdef", 4) == "abcd"
    assert bounded("abcdefghij", 6, "..") == "abcd.."
    assert single_line(" a\r\n\tb\x00c  ", 100) == "a b c"
    assert single_line("x" * 50, 10) == "x" * 10


def test_decode_helpers() -> None:
    assert decode_rfc2047("=?ISO-8859-1?Q?R=E9union?= =?ISO-8859-1?Q?_urgente?=") == "Réunion urgente"
    assert decode_rfc2047("plain =? text") == "plain =? text"
    assert decode_bytes(b"caf\xe9", None) == ("café", False)
    assert decode_bytes(b"\xff\xfe", "iso-2022-jp").lossy


def test_headers_after_a_received_flood_are_still_seen():
    received = "".join(f"Received: from relay{n}.example by relay{n + 1}.example; Fri, 27 Nov 2026 02:00:00 +0000\r\n"
                       for n in range(300))
    raw = (received + "X-Loop: emergency@example.org\r\nX-Failed-Recipients: gone@example.net\r\n"
           "From: a@example.net\r\nSubject: loop\r\n\r\nbody\r\n").encode()
    parsed = parse_message(raw)
    assert parsed.header("X-Loop") == "emergency@example.org"
    assert parsed.header("X-Failed-Recipients") == "gone@example.net"
    assert len(parsed.header_values("Received")) == 100


# most_specific_error_line skips a line without any error word's stem; the reference scores every line.
def _error_line_reference(text: str) -> str | None:
    from emergencyd.parsers.subject import _ERROR_WORDS, _SPECIFIC, MAX_LINES_EXAMINED
    best, best_score = None, 0
    for line in text.splitlines()[:MAX_LINES_EXAMINED]:
        line = line.strip()
        if not 8 <= len(line) <= 200 or line.startswith(">"):
            continue
        errors = len(_ERROR_WORDS.findall(line))
        if errors:
            score = 3 * errors + len(_SPECIFIC.findall(line))
            if score > best_score:
                best, best_score = line, score
    return best


_LINE_WORDS = ["ERROR", "Errors", "failed", "FAILURE", "timed out", "Time out", "timeout", "TimedOut", "timed",
               "out", "response_time:0.5", "can't", "CANNOT",
               "not found", "OOM", "killed", "crashed", "panic", "unavailable", "502", "status=500", "/api/v1",
               "'quoted text'", "KILLED", "ſtatus", "İnvalid", "ınvalid", "\u212ailled", "request", "GET", "ok",
               "app", "deploy", "retrying", "x=1", "all good", "Refused", "DENIED", "forbidden", "fatal"]


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(st.tuples(st.lists(st.lists(st.sampled_from(_LINE_WORDS), max_size=12).map(" ".join), max_size=40),
                 st.sampled_from(["\n", "\r\n", "\r", "\x0b", "\x1c", "\x85", "\n\n"])).map(lambda t: t[1].join(t[0])))
@example("the service is unavailable now")        # a stem that is the whole word
@example("fine line\n" * 399 + "error: last examined line\nerror: failed 502 at /api, the first line not examined")
@example("the call TimedOut after 30 s")          # timed? ?out, without the space
@example("a request for an ınvalid token")        # IGNORECASE matches "i" with the dotless "ı"
@example("worker \u212ailled by the kernel")        # and "k" with the Kelvin sign
def test_the_error_line_is_the_one_every_line_scored_would_give(text):
    from emergencyd.parsers.subject import most_specific_error_line
    assert most_specific_error_line(text) == _error_line_reference(text)


# Every character str.isspace() knows, and the near misses (zero-width space, BOM, NEL is one).
_SPACES = [" ", "\t", "\n", "\r", "\x0b", "\x0c", "\x1c", "\x1f", "\x85", "\xa0", "\u1680", "\u2000", "\u2028",
           "\u2029", "\u202f", "\u3000", "\u200b", "\ufeff", "\u180e"]


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(st.lists(st.sampled_from(_SPACES) | st.text(max_size=3), max_size=30).map("".join))
@example("")
@example("   ")
@example(" a ")
@example("\u2028a\x85")
def test_one_space_is_the_whitespace_regex(text):
    import re
    assert one_space(text) == re.sub(r"\s+", " ", text)
