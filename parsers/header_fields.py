"""Header fields of a parsed MIME tree as bounded, decoded values: the raw
header block for humans, single-line decoded values, the Content-Type and
the Date (mail-parser's reading first, the stdlib's as fallback)."""

from __future__ import annotations

import email.utils
from collections.abc import Sequence
from datetime import datetime, timezone
from email.message import Message

import mailparser

from emergencyd.parsers.identity import header_block_end
from emergencyd.parsers.limits import (
    MAX_HEADER_VALUE_CHARS,
    MAX_HEADERS,
    MAX_RAW_HEADER_BYTES,
    MAX_RAW_VALUE_CHARS,
    MAX_RECEIVED_HEADERS,
    MAX_REPEATED_HEADERS,
    MAX_SUBJECT_CHARS,
)
from emergencyd.parsers.text import (
    bounded,
    clean_text,
    decode_header_bytes,
    decode_rfc2047,
    header_text,
    single_line,
)


class HeaderIndex:
    """Raw header values of one message, indexed once by lower-cased name
    (repeated linear lookups would be quadratic on header floods)."""

    def __init__(self, msg: Message) -> None:
        self.items = [(str(name), value) for name, value in msg.raw_items()]
        self._by_name: dict[str, list[str]] = {}
        for name, value in self.items:
            self._by_name.setdefault(name.strip().lower(), []).append(raw_str(value))

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


def raw_str(value: object) -> str:
    return value if isinstance(value, str) else str(value)


def raw_header_block(raw: bytes) -> str:
    """The raw header block as text, bounded, for humans and diagnostics."""
    window = raw[: MAX_RAW_HEADER_BYTES + 4]
    end = header_block_end(window)
    block = window[:end] if end is not None else window[:MAX_RAW_HEADER_BYTES]
    return bounded(clean_text(decode_header_bytes(block)).rstrip("\n"), MAX_RAW_HEADER_BYTES)


def decode_value(value: str) -> str:
    """Header value as one readable line: unfolded and RFC 2047 decoded."""
    return decode_rfc2047(header_text(value))


def decode_subject(value: str | None) -> str:
    return single_line(decode_value(value), MAX_SUBJECT_CHARS) if value else ""


def lowered_value(value: str | None) -> str | None:
    return None if value is None else single_line(header_text(value), MAX_SUBJECT_CHARS).lower()


def normalize_content_type(value: str | None) -> str:
    """Full Content-Type value with the type/subtype lower-cased."""
    text = single_line(header_text(value), MAX_SUBJECT_CHARS) if value else ""
    media_type, separator, parameters = text.partition(";")
    media_type = media_type.strip().lower()
    if not media_type:
        return "text/plain"
    return media_type + separator + parameters


def decode_headers(items: Sequence[tuple[str, object]]) -> tuple[tuple[str, str], ...]:
    return tuple(
        (
            single_line(header_text(name), MAX_HEADER_VALUE_CHARS),
            single_line(decode_value(raw_str(value)[:MAX_RAW_VALUE_CHARS]), MAX_HEADER_VALUE_CHARS),
        )
        for name, value in _kept_headers(items)
    )


def _kept_headers(items: Sequence[tuple[str, object]]) -> list[tuple[str, object]]:
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


def parse_date(value: str | None, mail: mailparser.MailParser | None) -> datetime | None:
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
