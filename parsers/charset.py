"""Charset decoding that never raises: MIME charset labels to Python codecs,
body and header bytes to text, raw 8-bit header bytes to real text.

Strict decodes are tried before lossy ones, so replacement characters only
appear when no charset fits the bytes.
"""

from __future__ import annotations

import codecs
import re
from typing import NamedTuple

from emergencyd.parsers.cleaning import utf8_safe

__all__ = ["Decoded", "decode_bytes", "decode_header_bytes", "from_surrogateescape", "header_text", "text_codec"]


class Decoded(NamedTuple):
    text: str
    lossy: bool  # True when bytes had to be replaced


# Labels that name no real charset; treat them as "unknown".
_NO_CHARSET = {"", "unknown", "unknown-8bit", "x-unknown", "default", "none", "x-user-defined"}
# MIME labels Python does not know under that name.
_LABEL_ALIASES = {"iso-8859-8-i": "iso8859-8", "iso-8859-6-i": "iso8859-6", "x-sjis": "cp932"}
# Senders label text with a charset but use the vendor superset (as
# browsers assume too); decoding with the superset loses nothing.
_SUPERSETS = {"gb2312": "gb18030", "gbk": "gb18030", "shift_jis": "cp932", "euc_kr": "cp949"}
# Text codecs that are no mail charset; punycode is also quadratic in time.
_REFUSED_CODECS = {"punycode", "idna", "unicode-escape", "raw-unicode-escape", "undefined"}


def text_codec(charset: str | None) -> str | None:
    """The Python codec for a MIME charset label, or None for missing,
    unknown, refused or non-text codecs (``base64``, ``zlib``...)."""
    if not charset:
        return None
    label = str(charset).strip().strip("\"'").strip().lower()
    label = label.split("*", 1)[0]  # RFC 2231 language suffix: utf-8*en
    label = _LABEL_ALIASES.get(label, label)
    if label in _NO_CHARSET or len(label) > 40:
        return None
    try:
        b"".decode(label)  # LookupError for unknown and non-text codecs
        name = codecs.lookup(label).name
    except (LookupError, ValueError, TypeError):
        return None
    if name in _REFUSED_CODECS:
        return None
    return _SUPERSETS.get(name, name)


def decode_bytes(data: bytes, charset: str | None) -> Decoded:
    """Decode body or header bytes without ever raising.

    Strict attempts first: the declared charset, then UTF-8 (the usual
    truth behind a missing or wrong label), then windows-1252 when the
    label is missing or ASCII (8-bit bytes under no usable label are nearly
    always a Western legacy charset). Only then a lossy decode with
    replacement characters.
    """
    codec = text_codec(charset)
    unlabelled = codec in (None, "ascii")
    for candidate in (codec, "utf-8", "cp1252" if unlabelled else None):
        if candidate is None:
            continue
        try:
            return Decoded(data.decode(candidate), False)
        except (UnicodeError, LookupError, ValueError, TypeError):
            continue
    return _lossy_decode(data, "cp1252" if unlabelled else codec)


def _lossy_decode(data: bytes, codec: str | None) -> Decoded:
    """Replacement characters for the bytes ``codec`` cannot decode."""
    try:
        return Decoded(data.decode(codec or "", "replace"), True)   # no codec: LookupError, as an unknown one
    except (UnicodeError, LookupError, ValueError, TypeError):
        return Decoded(data.decode("utf-8", "replace"), True)


def decode_header_bytes(data: bytes) -> str:
    """Decode raw header bytes line by line: UTF-8 where valid (RFC 6532),
    windows-1252 otherwise, so one bad line does not garble the others."""
    return "\n".join(decode_bytes(line, None).text for line in data.split(b"\n"))


def from_surrogateescape(value: str) -> str:
    """Turn text carrying raw 8-bit bytes as surrogates (how the stdlib
    email parser keeps undecodable header bytes) into real text."""
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        pass
    data = value.encode("utf-8", "surrogateescape") if _escapes_only(value) else None
    if data is None:
        return utf8_safe(value)
    return decode_bytes(data, None).text


def _escapes_only(value: str) -> bool:
    """True when every surrogate in ``value`` is a surrogateescape byte."""
    return all(not ("\ud800" <= ch <= "\udc7f" or "\udd00" <= ch <= "\udfff") for ch in value)


_FOLD = re.compile(r"\r?\n(?=[ \t])")
_BARE_LINE_BREAK = re.compile(r"[\r\n]+")


def header_text(value: object) -> str:
    """A raw header value from the stdlib parser as unfolded real text
    (RFC 5322 folding removed, raw 8-bit bytes decoded)."""
    text = from_surrogateescape(value if isinstance(value, str) else str(value))
    return _BARE_LINE_BREAK.sub(" ", _FOLD.sub("", text))
