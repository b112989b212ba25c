"""Parse a raw email into a ParsedMessage: pure, bounded, never raising.

The stdlib parser builds the MIME tree (compat32, exactly what
``mailparser.parse_from_bytes`` does internally) and mail-parser analyses
that same tree for what it does well: hardened address parsing, RFC 5322
dates and defect categories. Body text and attachments are read from the
tree (parsers.mime_body), because mail-parser mishandles some of them.
Whenever mail-parser fails, the stdlib results stand in for it and
``parse_error`` says so.

Several stdlib and mail-parser code paths are quadratic or worse in some
input shapes (huge headers, many parameters, deep nesting x many lines);
those shapes are cut before parsing and reported as defects
(parsers.parse_cost), so any message up to 64 MiB parses in seconds.

The pieces: parsers.limits (every bound), parsers.header_fields (decoded
header values, the Date), parsers.addresses (From, To, Cc),
parsers.mime_body (body text, attachments), parsers.parse_cost.
"""

from __future__ import annotations

import email
import logging
from dataclasses import dataclass
from datetime import datetime
from email.message import Message
from email.parser import BytesHeaderParser

import mailparser

from emergencyd.parsers.addresses import recipients_of, sender_of
from emergencyd.parsers.header_fields import (
    HeaderIndex,
    decode_headers,
    decode_subject,
    lowered_value,
    normalize_content_type,
    parse_date,
    raw_header_block,
)
from emergencyd.parsers.identity import (
    encoded_ids,
    header_block_end,
    message_ids_in,
    normalize_message_id,
    skip_preamble,
)
from emergencyd.parsers.limits import (
    MAX_DEFECT_CHARS,
    MAX_DEFECTS,
    MAX_ERROR_CHARS,
    MAX_HEADER_ONLY_BYTES,
    MAX_MESSAGE_BYTES,
)
from emergencyd.parsers.mime_body import Attachment, bounded_text, scan_body
from emergencyd.parsers.parse_cost import (
    BOUNDED_COMPAT32,
    limit_parse_cost,
    too_costly_for_mail_parser,
)
from emergencyd.parsers.text import bounded, single_line

__all__ = ["Attachment", "ParsedMessage", "UNPARSEABLE_MARKER", "parse_message"]

# mail-parser logs WARNING/ERROR for ordinary defects of untrusted mail
# (an unhandled content type, an undecodable header, echoing the raw
# header). ParsedMessage.defects reports those; keep only its criticals.
logging.getLogger("mailparser").setLevel(logging.CRITICAL)

UNPARSEABLE_MARKER = "[emergencyd: this message could not be parsed; raw headers follow]"


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
    encoded_ids: tuple[str, ...] = ()  # Zendesk encoded ids in the text, read here, off the event loop

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
        return last_resort(raw, f"internal parser error: {_describe(exc)}")


def _parse(raw: bytes) -> ParsedMessage:
    raw = skip_preamble(raw)
    raw_headers = raw_header_block(raw)
    if not raw.strip():
        return _unparsed(raw, raw_headers, "empty message")
    if len(raw) > MAX_MESSAGE_BYTES:
        return _unparsed(raw, raw_headers, f"message too large: {len(raw)} bytes")
    raw, defects = limit_parse_cost(raw)
    try:
        msg = email.message_from_bytes(raw, policy=BOUNDED_COMPAT32)
    except Exception as exc:  # RecursionError on deeply nested multiparts
        return _unparsed(raw, raw_headers, f"email parser failed: {_describe(exc)}")

    if len(msg) == 0:  # not a mail: binary garbage, a stray file
        return _unparsed(raw, raw_headers, "no header fields found")

    too_costly = too_costly_for_mail_parser(msg)
    if too_costly:
        mail, error = None, None
        defects += (too_costly,)
    else:
        mail, error = _run_mail_parser(msg)
    body = scan_body(msg)
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
        return BytesHeaderParser(policy=BOUNDED_COMPAT32).parsebytes(block)
    except Exception:  # nothing left to salvage from the headers either
        return Message()


def _failure_text(raw_headers: str, recovered: str) -> str:
    """The marker, the raw headers, then any body text still recovered."""
    text = UNPARSEABLE_MARKER
    if raw_headers:
        text += "\n" + raw_headers
    if recovered:
        text += "\n\n" + recovered
    return bounded_text(text)


def last_resort(raw: object, error: str) -> ParsedMessage:
    """What is known without parsing the body: the raw header block and the reason."""
    try:
        raw_headers = raw_header_block(skip_preamble(_as_bytes(raw)))
    except Exception:
        raw_headers = ""
    text = _failure_text(raw_headers, "")
    return ParsedMessage(
        message_id=None, sender=None, sender_name=None, recipients=(), subject="",
        date=None, text=text, attachments=(),
        defects=(), in_reply_to=(), references=(), auto_submitted=None,
        precedence=None, content_type="text/plain", headers=(),
        raw_headers=raw_headers, parse_error=error, encoded_ids=encoded_ids(text),
    )


# ---------------------------------------------------------------------------
# Assembling the result
# ---------------------------------------------------------------------------


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
    headers = HeaderIndex(msg)
    sender, sender_name = sender_of(headers, mail)
    return ParsedMessage(
        message_id=normalize_message_id(headers.first("message-id")),
        sender=sender,
        sender_name=sender_name,
        recipients=recipients_of(headers, mail),
        subject=decode_subject(headers.first("subject")),
        date=parse_date(headers.first("date"), mail),
        text=text,
        attachments=attachments,
        defects=defects,
        in_reply_to=message_ids_in(headers.joined_tail("in-reply-to")),
        references=message_ids_in(headers.joined_tail("references")),
        auto_submitted=lowered_value(headers.first("auto-submitted")),
        precedence=lowered_value(headers.first("precedence")),
        content_type=normalize_content_type(headers.first("content-type")),
        headers=decode_headers(headers.items),
        raw_headers=raw_headers,
        parse_error=parse_error,
        encoded_ids=encoded_ids(text),
    )


def _defect_names(mail: mailparser.MailParser | None, found: set[str]) -> tuple[str, ...]:
    names = set(found)
    if mail is not None:
        try:
            names.update(str(name) for name in mail.defects_categories)
        except Exception:
            pass
    short = {single_line(name, MAX_DEFECT_CHARS) for name in names}
    return tuple(sorted(name for name in short if name))[:MAX_DEFECTS]
