"""Text helpers for the parsing layer, importable from one place.

Each part lives in its own module:
- parsers.cleaning: size bounds and control-character cleaning;
- parsers.charset: charset decoding that never raises, raw header bytes;
- parsers.rfc2047: RFC 2047 encoded words;
- parsers.html_text: HTML to readable text.

Everything here is pure and total: untrusted input may be malformed in any
way, and the worst outcome must be replacement characters or a truncation
marker, never an exception.
"""

from __future__ import annotations

from emergencyd.parsers.charset import (
    Decoded,
    decode_bytes,
    decode_header_bytes,
    from_surrogateescape,
    header_text,
    text_codec,
)
from emergencyd.parsers.cleaning import (
    DEFAULT_TEXT_LIMIT,
    TRUNCATION_MARKER,
    bounded,
    clean_text,
    one_space,
    single_line,
    utf8_safe,
)
from emergencyd.parsers.html_text import MAX_HTML_CHARS, html_to_text
from emergencyd.parsers.rfc2047 import decode_rfc2047

__all__ = [
    "DEFAULT_TEXT_LIMIT",
    "MAX_HTML_CHARS",
    "TRUNCATION_MARKER",
    "Decoded",
    "bounded",
    "clean_text",
    "one_space",
    "decode_bytes",
    "decode_header_bytes",
    "decode_rfc2047",
    "from_surrogateescape",
    "header_text",
    "html_to_text",
    "single_line",
    "text_codec",
    "utf8_safe",
]
