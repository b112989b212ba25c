"""Message identity: a fast, header-only read of Message-ID, and the
normalisation of message ids shared with the full parser so both always
agree on what a message's id is."""

from __future__ import annotations

import re
from dataclasses import dataclass
from email import policy
from email.parser import BytesHeaderParser
from email.utils import getaddresses

from emergencyd.parsers.text import header_text

__all__ = [
    "MAX_MESSAGE_ID_CHARS",
    "HeaderIdentity",
    "header_block_end",
    "header_identity",
    "thread_ids_of",
    "encoded_ids",
    "message_id_of",
    "message_ids_in",
    "normalize_message_id",
    "skip_preamble",
]

MAX_MESSAGE_ID_CHARS = 998  # RFC 5322 line length limit
MAX_IDS = 100
MAX_ENCODED_IDS = 5
MAX_ADDRESS_CHARS = 254  # RFC 5321's path limit
# Only the start of a Message-ID value is searched for the id. The full
# parser reads at most parsers.limits.MAX_RAW_VALUE_CHARS of a value; this
# must not be more, or an id behind a long filler would be found by
# message_id_of (the store's dedup key) and not by parse_message.
MAX_MESSAGE_ID_VALUE_CHARS = 4 * 1024

_LEADING_BLANK_LINES = re.compile(rb"(?:[ \t]*(?:\r\n|\n|\r))+")
_UTF8_BOM = b"\xef\xbb\xbf"
_HEADER_SEPARATORS = (b"\r\n\r\n", b"\n\n", b"\r\r")
_ANGLE_ADDR = re.compile(r"<([^<>]*)>")
# Zendesk's encoded id in notification bodies, e.g. "[7ZVQ3M-J7K4]": a reply that quotes one belongs to its ticket.
_ENCODED_ID = re.compile(r"\[([0-9A-Z]{6}-[0-9A-Z]{4})\]")
_ID_SEPARATORS = re.compile(r"[\s,]+")


def skip_preamble(raw: bytes) -> bytes:
    """Drop what some gateways put before the first header: a UTF-8 byte
    order mark (Windows tools) and blank or whitespace-only lines (seen
    with Exchange). Left in place, the stdlib parser finds no headers at
    all and treats the whole message as body."""
    if raw.startswith(_UTF8_BOM):
        raw = raw[len(_UTF8_BOM):]
    match = _LEADING_BLANK_LINES.match(raw)
    return raw[match.end():] if match else raw


def header_block_end(data: bytes) -> int | None:
    """Offset of the blank line that ends the header block, or None when
    there is none (header-only or truncated message)."""
    end = None
    for separator in _HEADER_SEPARATORS:     # each looked for only before the earliest found so far, not in the body
        found = data.find(separator, 0, len(data) if end is None else end + len(separator) - 1)
        if found >= 0:
            end = found
    return end


def normalize_message_id(value: str | None) -> str | None:
    """The id inside a Message-ID style value, without angle brackets.

    None when empty, longer than 998 characters, or containing whitespace
    or control characters (garbage we must not use as a dedup key). Only
    the first MAX_MESSAGE_ID_VALUE_CHARS of the value count.
    """
    if value is None:
        return None
    text = header_text(value[:MAX_MESSAGE_ID_VALUE_CHARS]).strip()
    match = _ANGLE_ADDR.search(text)
    return _valid_id(match.group(1) if match else text.strip("<>"))


def message_ids_in(value: str, limit: int = MAX_IDS) -> tuple[str, ...]:
    """All message ids in an In-Reply-To / References value, in order,
    deduplicated; the last ``limit`` are kept because the newest ancestors
    matter most for threading."""
    text = header_text(value)
    tokens = _ANGLE_ADDR.findall(text) or _ID_SEPARATORS.split(text)
    ids = (_valid_id(token) for token in tokens)
    unique = tuple(dict.fromkeys(i for i in ids if i))
    return unique[-limit:] if limit > 0 else ()


def _valid_id(candidate: str) -> str | None:
    candidate = candidate.strip()
    if not candidate or len(candidate) > MAX_MESSAGE_ID_CHARS:
        return None
    if not candidate.isprintable() or any(ch.isspace() for ch in candidate):
        return None
    return candidate


@dataclass(frozen=True)
class HeaderIdentity:
    message_id: str | None    # as parse_message finds it: the store's identity of the message
    from_address: str | None  # the first From address, lower-cased: whose mail this is, before parsing
    null_return_path: bool = False   # the first Return-Path field is the null reverse path


def message_id_of(raw: bytes) -> str | None:
    """The Message-ID of a raw message from its header block only.

    Never raises: missing, empty or garbage ids give None. Only the first
    Message-ID header counts, exactly as in ``parse_message``.
    """
    return header_identity(raw).message_id


def header_identity(raw: bytes) -> HeaderIdentity:
    """Message-ID, From and whether Return-Path is null, from one read of the header block; never raises."""
    values = _first_values(raw)
    return_path = values.get("return-path")
    return HeaderIdentity(_safely(normalize_message_id, values.get("message-id")),
                          _safely(_first_address, values.get("from")),
                          return_path is not None and is_null_path(return_path))


_PATH_COMMENT = re.compile(r"\([^()]*\)")


def is_null_path(value: str) -> bool:
    """A Return-Path field that holds the null reverse path, <> (RFC 5321 4.5.5), or nothing: comments and
    spaces aside."""
    return _PATH_COMMENT.sub("", value).replace(" ", "").strip() in ("<>", "")


def is_null_envelope_sender(mail_from: str) -> bool:
    """MAIL FROM:<> as the SMTP session gave the envelope sender."""
    return mail_from.strip() in ("", "<>")


# A line of the header block that could begin either field: without one there is nothing to read, and
# the header parser's read of the block (the cost, asked of every new mail) is skipped. Lines may end in
# LF, CRLF or a bare CR (old Mac mail), as the parser takes them.
_THREAD_FIELD_LINE = re.compile(rb"(?:^|\r)(?:in-reply-to|references)[ \t]*:", re.IGNORECASE | re.MULTILINE)


def thread_ids_of(raw: bytes) -> tuple[str, ...]:
    """The message ids a reply names (In-Reply-To, then References), from the header block only."""
    if isinstance(raw, (bytes, bytearray)):
        data = skip_preamble(bytes(raw))
        if not _THREAD_FIELD_LINE.search(data, 0, header_block_end(data) or len(data)):
            return ()
    values = _first_values(raw)
    ids = [i for name in ("in-reply-to", "references") for i in (_safely(message_ids_in, values.get(name)) or ())]
    return tuple(dict.fromkeys(ids))


def _first_values(raw: bytes) -> dict[str, str]:
    """The first value of each header field, by lower-cased name; empty for garbage, never raises."""
    try:
        if not isinstance(raw, (bytes, bytearray, memoryview)):
            return {}  # bytes(some_int) would allocate, not convert
        data = skip_preamble(bytes(raw))
        end = header_block_end(data)
        if end is not None and (plain := _plain_first_values(data[:end])) is not None:
            return plain
        headers = BytesHeaderParser(policy=policy.compat32).parsebytes(
            data if end is None else data[:end]
        )
        values: dict[str, str] = {}
        for name, value in headers.raw_items():
            values.setdefault(name.strip().lower(), value)
        return values
    except Exception:  # garbage in, no id out; the caller must not crash
        return {}


# A field as the stdlib's feed parser reads it from a block whose lines all end in CRLF: a name of printable
# characters but the colon, the colon, the rest of its line, and any folded lines after it. A block that is
# such fields alone, one after another, is plain. A name cannot hold a space, so an mbox "From " line is not
# plain, nor a line that is neither a field nor folding, nor folding before any field: the parser reads those.
_NAME, _VALUE = r"[\x21-\x39\x3b-\x7e]+", r"[^\r\n]*(?:\r\n[ \t][^\r\n]*)*"
_PLAIN_BLOCK = re.compile(rf"{_NAME}:{_VALUE}(?:\r\n{_NAME}:{_VALUE})*")
_PLAIN_FIELD = re.compile(rf"^({_NAME}):({_VALUE})", re.MULTILINE)


def _plain_first_values(block: bytes) -> dict[str, str] | None:
    """_first_values of a plain header block without the stdlib's parser; None for any other block.

    Every mail's commit waits for this read (the store's ingest), and the parser took 40 us of a 6 KB mail's
    60. Each value is made as compat32's header_source_parse makes it from the field's lines; a property test
    holds this to the parser's answer (tests/unit/test_properties.py)."""
    text = block.decode("ascii", "surrogateescape")      # as BytesHeaderParser decodes
    if not text.count("\r") == text.count("\n") == text.count("\r\n") or not _PLAIN_BLOCK.fullmatch(text):
        return None
    values: dict[str, str] = {}
    for name, value in _PLAIN_FIELD.findall(text):
        values.setdefault(name.strip().lower(), (value + "\r\n").lstrip(" \t").rstrip("\r\n"))
    return values


def _safely(read, value: str | None):
    if value is None:
        return None
    try:
        return read(value)
    except Exception:
        return None


def _first_address(value: str | None) -> str | None:
    if value is None:
        return None
    pairs = getaddresses([header_text(value[:MAX_MESSAGE_ID_VALUE_CHARS])])
    address = next((addr for _, addr in pairs if "@" in addr), None)
    return address.strip().lower()[:MAX_ADDRESS_CHARS] if address else None


def encoded_ids(text: str) -> tuple[str, ...]:
    """The Zendesk encoded ids a mail's text carries, first seen first, at most MAX_ENCODED_IDS."""
    return tuple(dict.fromkeys(_ENCODED_ID.findall(text)))[:MAX_ENCODED_IDS]
