"""Parse a raw email into a ParsedMessage: pure, bounded, never raising.

The stdlib parser builds the MIME tree (compat32, exactly what
``mailparser.parse_from_bytes`` does internally) and mail-parser analyses
that same tree for what it does well: hardened address parsing, RFC 5322
dates and defect categories. Body text and attachments are read from the
tree here, because mail-parser leaves 7-bit ISO-2022-JP text undecoded,
drops the body of a multipart without boundary and invents random names
for unnamed attachments. Whenever mail-parser fails, the stdlib results
stand in for it and ``parse_error`` says so.

Several stdlib and mail-parser code paths are quadratic or worse in some
input shapes (huge headers, many parameters, deep nesting x many lines);
those shapes are cut before parsing and reported as defects, so any
message up to 64 MiB parses in seconds.
"""

from __future__ import annotations

import email
import email.utils
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email import policy
from email.message import Message
from email.parser import BytesHeaderParser

import mailparser

from parsers.identity import (
    header_block_end,
    message_ids_in,
    normalize_message_id,
    skip_preamble,
)
from parsers.text import (
    TRUNCATION_MARKER,
    bounded,
    clean_text,
    decode_bytes,
    decode_header_bytes,
    decode_rfc2047,
    header_text,
    html_to_text,
    single_line,
)

__all__ = ["Attachment", "ParsedMessage", "UNPARSEABLE_MARKER", "parse_message"]

# mail-parser logs WARNING/ERROR for ordinary defects of untrusted mail
# (an unhandled content type, an undecodable header, echoing the raw
# header). ParsedMessage.defects reports those; keep only its criticals.
logging.getLogger("mailparser").setLevel(logging.CRITICAL)

UNPARSEABLE_MARKER = "[emergencyd: this message could not be parsed; raw headers follow]"

# --- Output bounds -------------------------------------------------------
MAX_TEXT_CHARS = 1024 * 1024
MAX_SUBJECT_CHARS = 998  # RFC 5322 line limit; also names and short values
MAX_HEADER_VALUE_CHARS = 2000
MAX_HEADERS = 1000
# A mail loop piles up Received lines; past this many they are dropped, so the
# headers that follow (X-Loop, X-Failed-Recipients) are still seen.
MAX_RECEIVED_HEADERS = 100
MAX_RAW_HEADER_BYTES = 16 * 1024
MAX_RECIPIENTS = 500
MAX_ATTACHMENTS = 500
MAX_DEFECTS = 50
MAX_DEFECT_CHARS = 100
MAX_ERROR_CHARS = 300
# Header values are cut before our own decoding: nothing downstream shows
# more, and decoding a 10 MB header costs real time.
MAX_RAW_VALUE_CHARS = 16 * 1024
MAX_REPEATED_HEADERS = 20  # occurrences of one header name we read
MAX_HTML_INPUT_CHARS = 2 * 1024 * 1024  # over all HTML parts of a message

# --- Parse-cost bounds ----------------------------------------------------
# Several stdlib and mail-parser code paths grow faster than the input;
# these bounds keep any message up to MAX_MESSAGE_BYTES within seconds.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# Header values are cut as the stdlib parser reads them (_BoundedCompat32).
# Content-Type/-Disposition tighter: every parameter lookup re-parses all
# parameters (~7 µs each, quadratic in length).
MAX_PARSED_VALUE_CHARS = 64 * 1024
MAX_PARSED_PARAMETERISED_CHARS = 2 * 1024
MAX_PARSED_PARAMETERS = 16  # RFC 2231 continuations of a long filename fit
# mail-parser's Received-header analysis costs ~60 µs a header, and it
# decodes every header (quadratic in RFC 2047 words): skip it for header
# floods and rely on the stdlib fallbacks.
MAX_HEADERS_FOR_MAIL_PARSER = 1000
MAX_HEADER_CHARS_FOR_MAIL_PARSER = 256 * 1024
MAX_EPILOGUE_CHARS_FOR_MAIL_PARSER = 64 * 1024
# The stdlib parser and mail-parser cost ~70 µs per MIME part together;
# beyond this many delimiter-like lines the rest of the message is cut.
MAX_MIME_DELIMITERS = 2000
# The stdlib parser tests every line against the boundary of every
# enclosing multipart (~0.2 µs each): bound lines x nesting. Nesting is
# unknown before parsing; the count of boundary declarations bounds it.
MAX_LINES = 1_000_000
MIN_LINES = 20_000
LINE_CHECK_BUDGET = 8_000_000
MAX_WALKED_PARTS = 2 * MAX_MIME_DELIMITERS
MAX_DEPTH = 64
# Header-only salvage of a message too large or too broken to parse.
MAX_HEADER_ONLY_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Attachment:
    filename: str | None
    content_type: str
    size: int  # decoded bytes, best effort


@dataclass(frozen=True, slots=True)
class ParsedMessage:
    message_id: str | None  # no angle brackets
    sender: str | None  # addr-spec from From; None when absent/unparseable
    sender_name: str | None  # display name, decoded
    recipients: tuple[str, ...]  # addr-specs from To and Cc
    subject: str  # decoded, single line, "" when absent
    date: datetime | None  # timezone-aware (UTC)
    text: str  # readable body: text/plain preferred, else HTML as text
    attachments: tuple[Attachment, ...]
    defects: tuple[str, ...]  # sorted defect class names
    in_reply_to: tuple[str, ...]  # message ids, no angle brackets
    references: tuple[str, ...]
    auto_submitted: str | None  # lower-cased, stripped
    precedence: str | None
    content_type: str  # full top-level value, type/subtype lower-cased
    headers: tuple[tuple[str, str], ...]  # (name, decoded value), in order
    raw_headers: str  # the raw header block as text, bounded
    parse_error: str | None = None  # set when it could not be parsed properly

    def header(self, name: str) -> str | None:
        """First value of header ``name`` (case-insensitive), or None."""
        values = self.header_values(name)
        return values[0] if values else None

    def header_values(self, name: str) -> tuple[str, ...]:
        """All values of header ``name`` (case-insensitive), in order."""
        wanted = name.strip().lower()
        return tuple(value for key, value in self.headers if key.lower() == wanted)


# ---------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------


def parse_message(raw: bytes) -> ParsedMessage:
    """Parse raw RFC 5322 bytes. Never raises; see the module docstring."""
    try:
        return _parse(_as_bytes(raw))
    except Exception as exc:  # a bug or exhausted resources below: still answer
        return _last_resort(raw, f"internal parser error: {_describe(exc)}")


def _parse(raw: bytes) -> ParsedMessage:
    raw = skip_preamble(raw)
    raw_headers = _raw_header_block(raw)
    if not raw.strip():
        return _unparsed(raw, raw_headers, "empty message")
    if len(raw) > MAX_MESSAGE_BYTES:
        return _unparsed(raw, raw_headers, f"message too large: {len(raw)} bytes")
    raw, defects = _limit_parse_cost(raw)
    try:
        msg = email.message_from_bytes(raw, policy=_BOUNDED_COMPAT32)
    except Exception as exc:  # RecursionError on deeply nested multiparts
        return _unparsed(raw, raw_headers, f"email parser failed: {_describe(exc)}")

    if len(msg) == 0:  # not a mail: binary garbage, a stray file
        return _unparsed(raw, raw_headers, "no header fields found")

    too_costly = _too_costly_for_mail_parser(msg)
    if too_costly:
        mail, error = None, None
        defects += (too_costly,)
    else:
        mail, error = _run_mail_parser(msg)
    body = _scan_body(msg)
    return _assemble(
        msg,
        mail,
        raw_headers,
        text=body.text if error is None else _failure_text(raw_headers, body.text),
        attachments=body.attachments,
        defects=_defect_names(mail, body.defects | set(defects)),
        parse_error=error,
    )


def _as_bytes(raw: object) -> bytes:
    if raw is None:
        return b""
    if isinstance(raw, str):  # tolerate callers that already decoded
        return raw.encode("utf-8", "surrogateescape")
    if isinstance(raw, (bytes, bytearray, memoryview)):
        return bytes(raw)
    raise TypeError(f"expected bytes, got {type(raw).__name__}")  # bytes(int) allocates


def _describe(exc: BaseException) -> str:
    return bounded(single_line(f"{type(exc).__name__}: {exc}", MAX_ERROR_CHARS), MAX_ERROR_CHARS)


def _run_mail_parser(msg: Message) -> tuple[mailparser.MailParser | None, str | None]:
    """mail-parser over the tree we already built (parse_from_bytes would
    parse the bytes a second time). It raises on some broken MIME, e.g.
    AttributeError for a multipart whose start boundary never appears."""
    try:
        return mailparser.MailParser(msg), None
    except Exception as exc:
        return None, f"mail-parser failed: {_describe(exc)}"


def _too_costly_for_mail_parser(msg: Message) -> str | None:
    """A defect name when the message would make mail-parser slow."""
    if len(msg) > MAX_HEADERS_FOR_MAIL_PARSER:
        return "TooManyHeadersDefect"
    if sum(len(_raw_str(value)) for _, value in msg.raw_items()) > MAX_HEADER_CHARS_FOR_MAIL_PARSER:
        return "OversizedHeadersDefect"
    if len(msg.epilogue or "") > MAX_EPILOGUE_CHARS_FOR_MAIL_PARSER:
        # It re-parses the epilogue with the unbounded stdlib policy.
        return "OversizedEpilogueDefect"
    return None


# ---------------------------------------------------------------------------
# Parse-cost bounds
# ---------------------------------------------------------------------------


class _BoundedCompat32(policy.Compat32):
    """compat32 (mail-parser's choice) that cuts each header value as it is
    read, in the top-level block and in every MIME part: the stdlib's
    parameter parsing and RFC 2047 decoding are quadratic in a value's
    length, so one hostile 10 MB header would otherwise take hours."""

    def header_source_parse(self, sourcelines: list[str]) -> tuple[str, str]:
        name, value = super().header_source_parse(sourcelines)
        if not _is_parameterised(name):
            return name, value[:MAX_PARSED_VALUE_CHARS]
        parameters = value[:MAX_PARSED_PARAMETERISED_CHARS].split(";", MAX_PARSED_PARAMETERS + 1)
        return name, ";".join(parameters[: MAX_PARSED_PARAMETERS + 1])


_BOUNDED_COMPAT32 = _BoundedCompat32()


def _is_parameterised(name: str) -> bool:
    return name.strip().lower() in ("content-type", "content-disposition")


def _was_cut(name: str, value: str) -> bool:
    """Whether _BoundedCompat32 (probably) cut this value."""
    if _is_parameterised(name):
        return len(value) >= MAX_PARSED_PARAMETERISED_CHARS or value.count(";") >= MAX_PARSED_PARAMETERS
    return len(value) >= MAX_PARSED_VALUE_CHARS


def _limit_parse_cost(raw: bytes) -> tuple[bytes, tuple[str, ...]]:
    """Cut hostile shapes whose parse time grows faster than their size;
    the defects say that the message was cut."""
    raw, delimiter_defects = _limit_mime_delimiters(raw)
    raw, line_defects = _limit_lines(raw)
    return raw, delimiter_defects + line_defects


_DELIMITER_LINE = re.compile(rb"[\r\n]--")


def _limit_mime_delimiters(raw: bytes) -> tuple[bytes, tuple[str, ...]]:
    """Cut a message with absurdly many MIME delimiter lines where the
    excess starts."""
    for count, match in enumerate(_DELIMITER_LINE.finditer(raw), start=1):
        if count > MAX_MIME_DELIMITERS:
            return raw[: match.start()], ("TooManyMimePartsDefect",)
    return raw, ()


_BOUNDARY_DECLARATION = re.compile(rb"boundary\s*=", re.IGNORECASE)


def _limit_lines(raw: bytes) -> tuple[bytes, tuple[str, ...]]:
    """Cut a message whose line count times possible multipart nesting
    exceeds the parser's budget (e.g. 10 million empty lines)."""
    lines = raw.count(b"\n") + raw.count(b"\r") - raw.count(b"\r\n")
    if lines <= MIN_LINES:
        return raw, ()
    multiparts = sum(1 for _ in _BOUNDARY_DECLARATION.finditer(raw))
    allowed = min(MAX_LINES, max(MIN_LINES, LINE_CHECK_BUDGET // (1 + multiparts)))
    if lines <= allowed:
        return raw, ()
    first_lines = re.compile(rb"(?:[^\r\n]*(?:\r\n|\r|\n)){%d}" % allowed).match(raw)
    return (raw[: first_lines.end()] if first_lines else raw), ("TooManyLinesDefect",)


# ---------------------------------------------------------------------------
# Failure paths
# ---------------------------------------------------------------------------


def _unparsed(raw: bytes, raw_headers: str, error: str) -> ParsedMessage:
    """A message that cannot be parsed as a whole: read what the header
    block still gives and show the raw headers to the human."""
    msg = _headers_only(raw)
    return _assemble(
        msg,
        None,
        raw_headers,
        text=_failure_text(raw_headers, ""),
        attachments=(),
        defects=_defect_names(None, {type(d).__name__ for d in msg.defects}),
        parse_error=error,
    )


def _headers_only(raw: bytes) -> Message:
    end = header_block_end(raw)
    block = (raw if end is None else raw[:end])[:MAX_HEADER_ONLY_BYTES]
    try:
        return BytesHeaderParser(policy=_BOUNDED_COMPAT32).parsebytes(block)
    except Exception:  # nothing left to salvage from the headers either
        return Message()


def _failure_text(raw_headers: str, recovered: str) -> str:
    """The marker, the raw headers, then any body text still recovered."""
    text = UNPARSEABLE_MARKER
    if raw_headers:
        text += "\n" + raw_headers
    if recovered:
        text += "\n\n" + recovered
    return _bounded_text(text)


def _last_resort(raw: object, error: str) -> ParsedMessage:
    try:
        raw_headers = _raw_header_block(skip_preamble(_as_bytes(raw)))
    except Exception:
        raw_headers = ""
    return ParsedMessage(
        message_id=None, sender=None, sender_name=None, recipients=(), subject="",
        date=None, text=_failure_text(raw_headers, ""), attachments=(),
        defects=(), in_reply_to=(), references=(), auto_submitted=None,
        precedence=None, content_type="text/plain", headers=(),
        raw_headers=raw_headers, parse_error=error,
    )


def _raw_header_block(raw: bytes) -> str:
    """The raw header block as text, bounded, for humans and diagnostics."""
    window = raw[: MAX_RAW_HEADER_BYTES + 4]
    end = header_block_end(window)
    block = window[:end] if end is not None else window[:MAX_RAW_HEADER_BYTES]
    return bounded(clean_text(decode_header_bytes(block)).rstrip("\n"), MAX_RAW_HEADER_BYTES)


# ---------------------------------------------------------------------------
# Assembling the result from headers
# ---------------------------------------------------------------------------


class _Headers:
    """Raw header values of one message, indexed once by lower-cased name
    (repeated linear lookups would be quadratic on header floods)."""

    def __init__(self, msg: Message) -> None:
        self.items = [(str(name), value) for name, value in msg.raw_items()]
        self._by_name: dict[str, list[str]] = {}
        for name, value in self.items:
            self._by_name.setdefault(name.strip().lower(), []).append(_raw_str(value))

    def first(self, name: str) -> str | None:
        values = self._by_name.get(name)
        return values[0][:MAX_RAW_VALUE_CHARS] if values else None

    def all(self, name: str) -> list[str]:
        values = self._by_name.get(name, [])[:MAX_REPEATED_HEADERS]
        return [value[:MAX_RAW_VALUE_CHARS] for value in values]

    def joined_tail(self, name: str) -> str:
        # References grow oldest to newest: keep the end of a huge value.
        values = self._by_name.get(name, [])[-MAX_REPEATED_HEADERS:]
        return " ".join(value[-MAX_RAW_VALUE_CHARS:] for value in values)[-MAX_RAW_VALUE_CHARS:]


def _raw_str(value: object) -> str:
    return value if isinstance(value, str) else str(value)


def _assemble(
    msg: Message,
    mail: mailparser.MailParser | None,
    raw_headers: str,
    *,
    text: str,
    attachments: tuple[Attachment, ...],
    defects: tuple[str, ...],
    parse_error: str | None,
) -> ParsedMessage:
    headers = _Headers(msg)
    sender, sender_name = _sender(headers, mail)
    return ParsedMessage(
        message_id=normalize_message_id(headers.first("message-id")),
        sender=sender,
        sender_name=sender_name,
        recipients=_recipients(headers, mail),
        subject=_subject(headers.first("subject")),
        date=_date(headers.first("date"), mail),
        text=text,
        attachments=attachments,
        defects=defects,
        in_reply_to=message_ids_in(headers.joined_tail("in-reply-to")),
        references=message_ids_in(headers.joined_tail("references")),
        auto_submitted=_lowered(headers.first("auto-submitted")),
        precedence=_lowered(headers.first("precedence")),
        content_type=_content_type(headers.first("content-type")),
        headers=_decoded_headers(headers.items),
        raw_headers=raw_headers,
        parse_error=parse_error,
    )


def _decoded(value: str) -> str:
    """Header value as one readable line: unfolded and RFC 2047 decoded."""
    return decode_rfc2047(header_text(value))


def _subject(value: str | None) -> str:
    return single_line(_decoded(value), MAX_SUBJECT_CHARS) if value else ""


def _lowered(value: str | None) -> str | None:
    return None if value is None else single_line(header_text(value), MAX_SUBJECT_CHARS).lower()


def _content_type(value: str | None) -> str:
    """Full Content-Type value with the type/subtype lower-cased."""
    text = single_line(header_text(value), MAX_SUBJECT_CHARS) if value else ""
    media_type, separator, parameters = text.partition(";")
    media_type = media_type.strip().lower()
    if not media_type:
        return "text/plain"
    return media_type + separator + parameters


def _decoded_headers(items: list[tuple[str, object]]) -> tuple[tuple[str, str], ...]:
    return tuple(
        (
            single_line(header_text(name), MAX_HEADER_VALUE_CHARS),
            single_line(_decoded(_raw_str(value)[:MAX_RAW_VALUE_CHARS]), MAX_HEADER_VALUE_CHARS),
        )
        for name, value in _kept_headers(items)
    )


def _kept_headers(items: list[tuple[str, object]]) -> list[tuple[str, object]]:
    kept, received = [], 0
    for name, value in items:
        if str(name).strip().lower() == "received":
            received += 1
            if received > MAX_RECEIVED_HEADERS:
                continue
        kept.append((name, value))
        if len(kept) == MAX_HEADERS:
            break
    return kept


# ---------------------------------------------------------------------------
# Addresses and date: mail-parser first, the stdlib as fallback
# ---------------------------------------------------------------------------

Address = tuple[str, str]  # (display name, addr-spec)


def _sender(headers: _Headers, mail: mailparser.MailParser | None) -> tuple[str | None, str | None]:
    addresses = _addresses(headers, mail, "from")
    if not addresses:
        return None, None
    name, addr = addresses[0]
    return addr, _display_name(name, addr)


def _recipients(headers: _Headers, mail: mailparser.MailParser | None) -> tuple[str, ...]:
    found = _addresses(headers, mail, "to") + _addresses(headers, mail, "cc")
    unique: dict[str, str] = {}
    for _, addr in found:
        unique.setdefault(addr.lower(), addr)  # first spelling wins
    return tuple(unique.values())[:MAX_RECIPIENTS]


def _addresses(headers: _Headers, mail: mailparser.MailParser | None, name: str) -> list[Address]:
    """Addresses of one header: mail-parser's strict reading, else a
    lenient stdlib reading (e.g. a missing ">"), which is fine for a
    ticket's requester but must not be used for authentication."""
    values = headers.all(name)
    if not values:
        return []
    return _mail_parser_addresses(mail, name) or _stdlib_addresses(values[:1] if name == "from" else values)


def _mail_parser_addresses(mail: mailparser.MailParser | None, name: str) -> list[Address]:
    if mail is None:
        return []
    try:
        pairs = getattr(mail, name + "_")  # "from_", "to_", "cc_" avoid the keyword
    except Exception:
        return []
    if not isinstance(pairs, list):  # headers it does not know come back as str
        return []
    return _clean_addresses(
        pair for pair in pairs if isinstance(pair, tuple) and len(pair) == 2
    )


def _stdlib_addresses(values: list[str]) -> list[Address]:
    try:
        pairs = email.utils.getaddresses([header_text(v) for v in values])
    except Exception:
        return []
    return _clean_addresses(pairs)


def _clean_addresses(pairs: object) -> list[Address]:
    cleaned = []
    for name, addr in pairs:  # type: ignore[attr-defined]
        addr = single_line(header_text(str(addr)), MAX_SUBJECT_CHARS)
        if "@" in addr and " " not in addr:
            cleaned.append((str(name), addr))
    return cleaned[: MAX_RECIPIENTS * 2]


def _display_name(name: str, addr: str) -> str | None:
    # mail-parser leaves quoted encoded words alone; senders produce them.
    text = single_line(_decoded(name), MAX_SUBJECT_CHARS).strip("\"' ")
    return text if text and text.lower() != addr.lower() else None


def _date(value: str | None, mail: mailparser.MailParser | None) -> datetime | None:
    parsed = getattr(mail, "date", None) if mail is not None else None
    if not isinstance(parsed, datetime):
        parsed = _stdlib_date(value)
    if parsed is not None and parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)  # "-0000": UTC, origin unknown
    return parsed


def _stdlib_date(value: str | None) -> datetime | None:
    """Lenient fallback: mail-parser rejects e.g. a missing zone."""
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(single_line(header_text(value), 200))
    except Exception:
        return None


def _defect_names(mail: mailparser.MailParser | None, found: set[str]) -> tuple[str, ...]:
    names = set(found)
    if mail is not None:
        try:
            names.update(str(name) for name in mail.defects_categories)
        except Exception:
            pass
    short = {single_line(name, MAX_DEFECT_CHARS) for name in names}
    return tuple(sorted(name for name in short if name))[:MAX_DEFECTS]


# ---------------------------------------------------------------------------
# Body text and attachments
# ---------------------------------------------------------------------------


@dataclass
class _Found:
    """What walking the MIME tree found. Text inside an attached message
    (message/rfc822) is kept apart: it is only used when the outer message
    has no text of its own, as with a forward-as-attachment."""

    plain: list[str] = field(default_factory=list)
    html: list[str] = field(default_factory=list)
    embedded_plain: list[str] = field(default_factory=list)
    embedded_html: list[str] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    defects: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class _Body:
    text: str
    attachments: tuple[Attachment, ...]
    defects: set[str]


def _scan_body(msg: Message) -> _Body:
    found = _Found()
    for part, embedded in _walk(msg, found.defects):
        try:
            _collect(part, embedded, found)
        except Exception as exc:  # one odd part must not lose the others
            found.defects.add(f"PartError: {type(exc).__name__}")
    return _Body(_choose_text(found), tuple(found.attachments[:MAX_ATTACHMENTS]), found.defects)


def _walk(root: Message, defects: set[str]) -> Iterator[tuple[Message, bool]]:
    """Depth-first, document order, iterative (no recursion limit), bounded
    in depth and part count. Yields (part, inside_attached_message)."""
    stack: list[tuple[Message, bool, int]] = [(root, False, 0)]
    visited = 0
    while stack:
        part, embedded, depth = stack.pop()
        visited += 1
        if visited > MAX_WALKED_PARTS:
            defects.add("TooManyPartsDefect")
            return
        defects.update(type(defect).__name__ for defect in getattr(part, "defects", ()))
        if _has_cut_header(part):
            defects.add("OversizedHeaderDefect")
        yield part, embedded
        children = _children(part)
        if children and depth >= MAX_DEPTH:
            defects.add("TooDeeplyNestedDefect")
            continue
        inner = embedded or part.get_content_maintype() == "message"
        stack.extend((child, inner, depth + 1) for child in reversed(children))


def _has_cut_header(part: Message) -> bool:
    return any(_was_cut(name, _raw_str(value)) for name, value in part.raw_items())


def _children(part: Message) -> list[Message]:
    """Sub-parts worth descending into: multipart bodies and attached
    messages; not the header blocks of message/delivery-status."""
    if not part.is_multipart():
        return []
    content_type = part.get_content_type()
    if content_type.startswith("message/") and content_type not in ("message/rfc822", "message/global"):
        return []
    payload = part.get_payload()
    return [child for child in payload if isinstance(child, Message)] if isinstance(payload, list) else []


def _collect(part: Message, embedded: bool, found: _Found) -> None:
    content_type = part.get_content_type()
    if part.is_multipart():
        if content_type.startswith("message/") and not embedded:
            found.attachments.append(_attachment(part, content_type))
        return
    if part.get_content_maintype() == "multipart":
        # No usable boundary: the stdlib keeps the body as one string. Show
        # it as text rather than lose it (mail-parser drops it).
        _text_list(found, "text/plain", embedded).append(_part_text(part, found.defects))
    elif _is_body_text(part, content_type):
        _text_list(found, content_type, embedded).append(_part_text(part, found.defects))
    elif not embedded:
        found.attachments.append(_attachment(part, content_type))


def _text_list(found: _Found, content_type: str, embedded: bool) -> list[str]:
    if content_type == "text/html":
        return found.embedded_html if embedded else found.html
    return found.embedded_plain if embedded else found.plain


def _is_body_text(part: Message, content_type: str) -> bool:
    return (
        content_type in ("text/plain", "text/html")
        and part.get_content_disposition() != "attachment"
        and _filename(part) is None
    )


def _part_text(part: Message, defects: set[str]) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    decoded = decode_bytes(payload, part.get_content_charset())
    if decoded.lossy:
        defects.add("CharsetDecodeDefect")
    return decoded.text


def _choose_text(found: _Found) -> str:
    """text/plain preferred, HTML converted otherwise; the outer message
    first, then attached messages."""
    for plain, html in ((found.plain, found.html), (found.embedded_plain, found.embedded_html)):
        text = _join(plain)
        if text.strip():
            return _bounded_text(text)
        text = _html_text(html)
        if text.strip():
            return _bounded_text(text)
    return ""


def _html_text(documents: list[str]) -> str:
    """Convert HTML parts in order within one shared input budget: each
    conversion costs ~0.5 s per MiB, and a message may carry many."""
    texts, budget = [], MAX_HTML_INPUT_CHARS
    for document in documents:
        if budget <= 0:
            break
        texts.append(html_to_text(document[:budget], MAX_TEXT_CHARS))
        budget -= len(document)
    return _join(texts)


def _join(texts: list[str]) -> str:
    return "\n\n".join(text.strip("\r\n") for text in texts if text.strip())


def _bounded_text(text: str) -> str:
    truncated = len(text) > 2 * MAX_TEXT_CHARS
    text = clean_text(text[: 2 * MAX_TEXT_CHARS])  # cleaning only shrinks text
    if truncated:
        text = bounded(text, MAX_TEXT_CHARS - len(TRUNCATION_MARKER)) + TRUNCATION_MARKER
    return bounded(text, MAX_TEXT_CHARS, TRUNCATION_MARKER)


def _attachment(part: Message, content_type: str) -> Attachment:
    return Attachment(filename=_filename(part), content_type=content_type, size=_decoded_size(part))


def _filename(part: Message) -> str | None:
    """Filename from Content-Disposition or Content-Type name (RFC 2231 by
    the stdlib, RFC 2047 here, since many clients still use it)."""
    try:
        name = part.get_filename()
    except Exception:
        return None
    if not name:
        return None
    return single_line(_decoded(str(name)), MAX_SUBJECT_CHARS) or None


def _decoded_size(part: Message) -> int:
    try:
        if part.is_multipart():  # an attached message: its flattened size
            return sum(len(child.as_bytes()) for child in part.get_payload())
        payload = part.get_payload(decode=True)
        return len(payload) if isinstance(payload, bytes) else 0
    except Exception:  # best effort: flattening can fail on odd charsets
        return 0
