"""Size bounds and control-character cleaning for text from untrusted mail.

Pure and total, like the rest of the parsing layer: the worst outcome is a
replacement character or a truncation marker, never an exception.
"""

from __future__ import annotations

import re

__all__ = ["DEFAULT_TEXT_LIMIT", "TRUNCATION_MARKER", "bounded", "clean_text", "single_line", "utf8_safe"]

DEFAULT_TEXT_LIMIT = 1024 * 1024  # characters
TRUNCATION_MARKER = "\n[emergencyd: text truncated]"

# C0 controls except TAB and LF, DEL and C1 controls: they break JSON
# consumers, databases (NUL) and terminals, and carry no readable content.
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_LINE_ENDINGS = re.compile(r"\r\n?")


def bounded(text: str, limit: int, marker: str = "") -> str:
    """Cut ``text`` to at most ``limit`` characters, ending with ``marker``
    when something was cut so a reader knows content is missing."""
    if limit <= 0:
        return ""
    if len(text) <= limit:
        return text
    if len(marker) >= limit:
        return text[:limit]
    return text[: limit - len(marker)] + marker


def utf8_safe(text: str) -> str:
    """Replace lone surrogates (from surrogateescape or odd codecs) so the
    text can always be encoded as UTF-8 downstream."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")


def clean_text(text: str) -> str:
    """Normalise line endings to LF and drop control characters, keeping
    tabs and newlines."""
    text = _LINE_ENDINGS.sub("\n", utf8_safe(text))
    return _CONTROL_CHARS.sub("", text)


def single_line(text: str, limit: int) -> str:
    """Collapse all whitespace (including newlines) to single spaces, drop
    control characters and bound the result: for subjects, names, header
    values."""
    text = _CONTROL_CHARS.sub(" ", utf8_safe(text))
    return bounded(" ".join(text.split()), limit)


def one_space(text: str) -> str:
    """Every run of whitespace as one space, the ends included: re.sub(r"\\s+", " ", text) at about
    an eighth of the cost on a 20 KB body. str.split() splits on exactly the characters re's \\s
    matches in a str (both ask Py_UNICODE_ISSPACE)."""
    words = text.split()
    if not words:
        return " " if text else ""
    joined = " ".join(words)
    if text[0].isspace():
        joined = " " + joined
    if text[-1].isspace():
        joined += " "
    return joined
