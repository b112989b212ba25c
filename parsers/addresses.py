"""The sender and recipients of a message: mail-parser's strict reading
first, a lenient stdlib reading as fallback."""

from __future__ import annotations

import email.utils
from collections.abc import Iterable

import mailparser

from emergencyd.parsers.header_fields import HeaderIndex, decode_value
from emergencyd.parsers.limits import MAX_RECIPIENTS, MAX_SUBJECT_CHARS
from emergencyd.parsers.text import header_text, single_line

Address = tuple[str, str]  # (display name, addr-spec)


def sender_of(headers: HeaderIndex, mail: mailparser.MailParser | None) -> tuple[str | None, str | None]:
    """(addr-spec, display name) of the first From address."""
    addresses = _addresses(headers, mail, "from")
    if not addresses:
        return None, None
    name, addr = addresses[0]
    return addr, _display_name(name, addr)


def recipients_of(headers: HeaderIndex, mail: mailparser.MailParser | None) -> tuple[str, ...]:
    """addr-specs from To and Cc, without case-insensitive duplicates."""
    found = _addresses(headers, mail, "to") + _addresses(headers, mail, "cc")
    unique: dict[str, str] = {}
    for _, addr in found:
        unique.setdefault(addr.lower(), addr)  # first spelling wins
    return tuple(unique.values())[:MAX_RECIPIENTS]


def _addresses(headers: HeaderIndex, mail: mailparser.MailParser | None, name: str) -> list[Address]:
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


def _clean_addresses(pairs: Iterable[tuple[object, object]]) -> list[Address]:
    cleaned = []
    for name, addr in pairs:
        addr = single_line(header_text(str(addr)), MAX_SUBJECT_CHARS)
        if "@" in addr and " " not in addr:
            cleaned.append((str(name), addr))
    return cleaned[: MAX_RECIPIENTS * 2]


def _display_name(name: str, addr: str) -> str | None:
    # mail-parser leaves quoted encoded words alone; senders produce them.
    text = single_line(decode_value(name), MAX_SUBJECT_CHARS).strip("\"' ")
    return text if text and text.lower() != addr.lower() else None
