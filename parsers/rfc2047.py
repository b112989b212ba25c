"""RFC 2047 encoded words ("=?charset?Q?...?=") decoded best effort, never
raising: lenient where real senders break the rules, literal where a word
cannot be decoded so nothing silently disappears."""

from __future__ import annotations

import binascii
import re

from emergencyd.parsers.charset import decode_bytes, text_codec

__all__ = ["decode_rfc2047"]

# Lenient on purpose: encoded words glued to text or containing spaces are
# common in the wild; "?" can never occur inside the encoded text.
_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?]*)\?=")
_NOT_BASE64 = re.compile(r"[^A-Za-z0-9+/]")


def decode_rfc2047(text: str) -> str:
    """Decode RFC 2047 encoded words, best effort, never raising.

    Adjacent words in one charset are joined before decoding (senders split
    multi-byte characters across words), whitespace between encoded words
    is dropped (RFC 2047 section 6.2), and a word that cannot be decoded is
    kept literally so nothing silently disappears.
    """
    if "=?" not in text:
        return text
    decoder = _WordRunDecoder()
    position = 0
    for match in _ENCODED_WORD.finditer(text):
        decoder.add(text[position : match.start()], match)
        position = match.end()
    decoder.add_text(text[position:])
    return decoder.result()


class _WordRunDecoder:
    """Accumulates decoded bytes of consecutive same-charset words."""

    def __init__(self) -> None:
        self._out: list[str] = []
        self._run = bytearray()
        self._charset: str | None = None
        self._after_word = False

    def add(self, gap: str, match: re.Match[str]) -> None:
        data = _encoded_word_bytes(match.group(2), match.group(3))
        if data is None:
            self.add_text(gap + match.group(0))
            return
        charset = text_codec(match.group(1)) or match.group(1).lower()
        if gap and not (self._after_word and gap.isspace()):
            self.add_text(gap)
        elif charset != self._charset:
            self._flush()
        self._run += data
        self._charset = charset
        self._after_word = True

    def add_text(self, text: str) -> None:
        self._flush()
        self._out.append(text)
        self._after_word = False

    def _flush(self) -> None:
        if self._run:
            self._out.append(decode_bytes(bytes(self._run), self._charset).text)
            self._run.clear()

    def result(self) -> str:
        self._flush()
        return "".join(self._out)


def _encoded_word_bytes(encoding: str, payload: str) -> bytes | None:
    """The bytes an encoded word carries, or None when it is malformed."""
    if not payload.isascii():
        return None
    try:
        if encoding in "qQ":
            return binascii.a2b_qp(payload.encode("ascii"), header=True)
        return _base64_word(payload)
    except (binascii.Error, ValueError):
        return None


def _base64_word(payload: str) -> bytes | None:
    """Decode B-encoding, repairing missing padding like mail clients do."""
    data = payload.rstrip("=").replace(" ", "")
    if _NOT_BASE64.search(data):
        return None
    if len(data) % 4 == 1:
        data = data[:-1]  # a dangling 6-bit group carries no whole byte
    return binascii.a2b_base64(data + "=" * (-len(data) % 4))
