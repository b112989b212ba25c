"""Body text and attachments, read from the MIME tree the stdlib built.

Read here rather than through mail-parser, because mail-parser leaves 7-bit
ISO-2022-JP text undecoded, drops the body of a multipart without boundary
and invents random names for unnamed attachments. The walk is iterative and
bounded in depth and part count; one odd part never loses the others.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import Message

from emergencyd.parsers.header_fields import decode_value, raw_str
from emergencyd.parsers.limits import (
    MAX_ATTACHMENTS,
    MAX_DEPTH,
    MAX_HTML_INPUT_CHARS,
    MAX_SUBJECT_CHARS,
    MAX_TEXT_CHARS,
    MAX_WALKED_PARTS,
)
from emergencyd.parsers.parse_cost import was_cut
from emergencyd.parsers.text import (
    TRUNCATION_MARKER,
    bounded,
    clean_text,
    decode_bytes,
    html_to_text,
    single_line,
)


@dataclass(frozen=True, slots=True)
class Attachment:
    filename: str | None
    content_type: str
    size: int  # decoded bytes, best effort


@dataclass(frozen=True)
class Body:
    text: str
    attachments: tuple[Attachment, ...]
    defects: set[str]


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


def scan_body(msg: Message) -> Body:
    found = _Found()
    for part, embedded in _walk(msg, found.defects):
        try:
            _collect(part, embedded, found)
        except Exception as exc:  # one odd part must not lose the others
            found.defects.add(f"PartError: {type(exc).__name__}")
    return Body(_choose_text(found), tuple(found.attachments[:MAX_ATTACHMENTS]), found.defects)


def bounded_text(text: str) -> str:
    """Body text cleaned and cut to MAX_TEXT_CHARS, marked when cut."""
    truncated = len(text) > 2 * MAX_TEXT_CHARS
    text = clean_text(text[: 2 * MAX_TEXT_CHARS])  # cleaning only shrinks text
    if truncated:
        text = bounded(text, MAX_TEXT_CHARS - len(TRUNCATION_MARKER)) + TRUNCATION_MARKER
    return bounded(text, MAX_TEXT_CHARS, TRUNCATION_MARKER)


# --- Walking the tree -------------------------------------------------------


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
    return any(was_cut(name, raw_str(value)) for name, value in part.raw_items())


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


# --- Body text ----------------------------------------------------------------


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
            return bounded_text(text)
        text = _html_text(html)
        if text.strip():
            return bounded_text(text)
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


# --- Attachments ----------------------------------------------------------------


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
    return single_line(decode_value(str(name)), MAX_SUBJECT_CHARS) or None


def _decoded_size(part: Message) -> int:
    try:
        if part.is_multipart():  # an attached message: its flattened size
            return sum(len(child.as_bytes()) for child in part.get_payload() if isinstance(child, Message))
        payload = part.get_payload(decode=True)
        return len(payload) if isinstance(payload, bytes) else 0
    except Exception:  # best effort: flattening can fail on odd charsets
        return 0
