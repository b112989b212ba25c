"""Text helpers for the parsing layer: HTML to readable text, charset
decoding that never raises, and size bounds.

Everything here is pure and total: untrusted input may be malformed in any
way, and the worst outcome must be replacement characters or a truncation
marker, never an exception.
"""

from __future__ import annotations

import binascii
import codecs
import html as html_entities
import re
from html.parser import HTMLParser
from typing import NamedTuple

__all__ = [
    "Decoded",
    "bounded",
    "clean_text",
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

DEFAULT_TEXT_LIMIT = 1024 * 1024  # characters
TRUNCATION_MARKER = "\n[emergencyd: text truncated]"

# ---------------------------------------------------------------------------
# Bounds and cleaning
# ---------------------------------------------------------------------------

# C0 controls except TAB and LF, DEL and C1 controls: they break JSON
# consumers, databases (NUL) and terminals, and carry no readable content.
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# Invisible characters marketing HTML uses for preheader padding.
_INVISIBLE_CHARS = re.compile("[\u00ad\u034f\u200b-\u200d\u2060\ufeff]")
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


# ---------------------------------------------------------------------------
# Charset decoding
# ---------------------------------------------------------------------------


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
    lossy_codec = "cp1252" if unlabelled else codec
    try:
        return Decoded(data.decode(lossy_codec, "replace"), True)
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


# ---------------------------------------------------------------------------
# RFC 2047 encoded words
# ---------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------
# HTML to text
# ---------------------------------------------------------------------------

# Content of these elements is never shown by a mail client. "xml" is
# Outlook's <xml><o:OfficeDocumentSettings> blob in the head.
_HIDDEN = frozenset({"script", "style", "title", "template", "xml"})
# Elements that start and end a paragraph-like block (blank line around).
_PARAGRAPHS = frozenset(
    {"p", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "pre", "table",
     "ul", "ol", "dl", "hr", "address", "figure", "fieldset"}
)
# Elements that only start and end a line.
_LINES = frozenset(
    {"div", "tr", "li", "dt", "dd", "section", "article", "header", "footer",
     "nav", "aside", "main", "form", "center", "caption", "details",
     "summary", "figcaption", "tbody", "thead", "tfoot", "body", "html"}
)
_LISTS = frozenset({"ul", "ol", "dir", "menu"})
_CELLS = frozenset({"td", "th"})
_CELL_SEPARATOR = " | "
_MAX_URL = 2048
_MAX_LIST_DEPTH = 10
_SKIPPED_SCHEMES = ("javascript:", "data:", "cid:", "vbscript:")


class _TextBuilder(HTMLParser):
    """Collects readable text while html.parser walks the document.

    Whitespace is collapsed as a browser would: runs of whitespace become
    one pending space, block boundaries become pending newlines, and only
    the strongest pending separator is written before the next word.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(convert_charrefs=True)
        self._limit = limit
        self._chunks: list[str] = []
        self._size = 0
        self._line_has_text = False
        self._pending_newlines = 0
        self._pending_space = False
        self._pending_separator = ""
        self._hidden_depth = 0
        self._pre_depth = 0
        self._list_depth = 0
        self._link: tuple[str, int] | None = None  # (href, first chunk index)
        self.full = False

    # -- writing ----------------------------------------------------------

    def _write(self, text: str) -> None:
        if self.full or not text:
            return
        self._chunks.append(text)
        self._size += len(text)
        if self._size > self._limit:
            self.full = True

    def _flush_separators(self) -> None:
        if self._pending_newlines and self._chunks:
            self._write("\n" * self._pending_newlines)
            self._line_has_text = False
        elif self._line_has_text and self._pending_separator:
            self._write(self._pending_separator)
        elif self._line_has_text and self._pending_space:
            self._write(" ")
        self._pending_newlines = 0
        self._pending_space = False
        self._pending_separator = ""

    def _write_words(self, data: str) -> None:
        words = data.split()
        if not words:
            self._pending_space = self._pending_space or bool(data)
            return
        if data[0].isspace():
            self._pending_space = True
        for word in words:
            self._flush_separators()
            self._write(word)
            self._line_has_text = True
            self._pending_space = True
        self._pending_space = data[-1].isspace()

    def _write_preformatted(self, data: str) -> None:
        self._flush_separators()
        self._write(data)
        self._line_has_text = not data.endswith("\n")

    def _block_break(self, newlines: int) -> None:
        if self._chunks:
            self._pending_newlines = max(self._pending_newlines, newlines)
        self._pending_space = False
        self._pending_separator = ""

    def _line_break(self) -> None:
        # <br> is an explicit newline: it is written, not merged.
        self._pending_space = False
        self._pending_separator = ""
        if self._pending_newlines:
            self._flush_separators()
        self._write("\n")
        self._line_has_text = False

    # -- links ------------------------------------------------------------

    def _open_link(self, href: str | None) -> None:
        self._close_link()  # anchors cannot nest; a new one closes the last
        url = " ".join((href or "").split())[:_MAX_URL]
        if url and not url.startswith("#") and not url.lower().startswith(_SKIPPED_SCHEMES):
            self._link = (url, len(self._chunks))

    def _close_link(self) -> None:
        if self._link is None:
            return
        url, start = self._link
        self._link = None
        label = " ".join("".join(self._chunks[start:]).split())
        if not label:
            self._flush_separators()
            self._write(url)
            self._line_has_text = True
        elif not _same_target(label, url):
            self._write(f" ({url})")

    # -- HTMLParser callbacks ---------------------------------------------

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "body":
            self._hidden_depth = 0  # an unclosed <title> must not hide the body
        if tag in _HIDDEN:
            self._hidden_depth += 1
            return
        if self._hidden_depth:
            return
        if tag == "br":
            self._line_break()
        elif tag == "a":
            self._open_link(dict(attrs).get("href"))
        elif tag in _CELLS:
            self._pending_separator = _CELL_SEPARATOR
        elif tag == "li":
            self._block_break(1)
            self._flush_separators()
            indent = "  " * max(0, min(self._list_depth, _MAX_LIST_DEPTH) - 1)
            self._write(indent + "- ")
            self._line_has_text = False  # no space after the bullet
        elif tag in _PARAGRAPHS:
            self._block_break(1 if self._nested_list(tag) else 2)
        elif tag in _LINES:
            self._block_break(1)
        if tag in _LISTS:
            self._list_depth += 1
        if tag == "pre":
            self._pre_depth += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in _HIDDEN:
            self._hidden_depth = max(0, self._hidden_depth - 1)
            return
        if self._hidden_depth:
            return
        if tag in _LISTS:
            self._list_depth = max(0, self._list_depth - 1)
        if tag == "a":
            self._close_link()
        elif tag in _PARAGRAPHS:
            self._block_break(1 if self._nested_list(tag) else 2)
        elif tag in _LINES:
            self._block_break(1)
        if tag == "pre":
            self._pre_depth = max(0, self._pre_depth - 1)

    def _nested_list(self, tag: str) -> bool:
        """A list inside a list item continues it line by line."""
        return tag in _LISTS and self._list_depth > 0

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        # <br/>, <hr/>: a start without content; an explicit end would
        # otherwise count twice.
        if tag in _HIDDEN:
            return
        self.handle_starttag(tag, attrs)
        if tag == "a":
            self._close_link()

    def handle_data(self, data: str) -> None:
        if self._hidden_depth or self.full:
            return
        data = _INVISIBLE_CHARS.sub("", data)
        if self._pre_depth:
            self._write_preformatted(data)
        else:
            self._write_words(data)

    def text(self) -> str:
        self._close_link()
        return "".join(self._chunks)


def _same_target(label: str, url: str) -> bool:
    """True when showing the URL next to the label would only repeat it."""
    def bare(value: str) -> str:
        value = value.strip().lower()
        for prefix in ("mailto:", "tel:", "https://", "http://", "www."):
            if value.startswith(prefix):
                value = value[len(prefix):]
        return value.rstrip("/")

    return bare(label) == bare(url)


_BLANK_LINE_RUNS = re.compile(r"\n{3,}")
_TRAILING_SPACES = re.compile(r"[ \t]+\n")
_TAGS = re.compile(r"<[^>]*>")
# Inline images as data: URIs are most of the bulk of big HTML mails and
# carry no text; shrink them before parsing.
_DATA_URIS = re.compile(r"data:[^\s\"'<>)]{64,}", re.IGNORECASE)
# html.parser costs microseconds per tag: bound the markup it sees so a
# hostile document cannot hold the daemon for long. Real mails keep the
# newest text at the top.
MAX_HTML_CHARS = 1024 * 1024
_FEED_CHUNK = 256 * 1024
# A "<" that cannot open markup is text; html.parser would hand each one
# to handle_data separately, so escape them up front (same result, fast).
_LITERAL_LT = re.compile(r"<(?![A-Za-z/!?])")
# html.parser raises AssertionError on a marked section with an unknown
# keyword ("<![foo["); Outlook's "<![if ...]>" and CDATA are fine.
_BAD_MARKED_SECTION = re.compile(
    r"<!\[(?!(?:temp|cdata|ignore|include|rcdata|if|else|endif)(?![\w.-]))", re.IGNORECASE
)


def html_to_text(html: str, limit: int = DEFAULT_TEXT_LIMIT) -> str:
    """Readable plain text from an HTML document, at most ``limit`` chars.

    Block elements become line breaks, <br> a newline, list items "- ",
    links "text (url)" when the URL adds information; script/style/title
    are dropped, entities decoded and whitespace collapsed.
    """
    if not html:
        return ""
    html = _DATA_URIS.sub("data:", html)
    cut = len(html) > MAX_HTML_CHARS
    if cut:  # end before the tag the cut falls into, not inside it
        html = html[:MAX_HTML_CHARS]
        html = html[: html.rfind("<")] if "<" in html else html
    html = _BAD_MARKED_SECTION.sub("&lt;![", _LITERAL_LT.sub("&lt;", html))
    builder = _TextBuilder(limit)
    try:
        _feed(builder, html)
        text = builder.text()
    except Exception:  # safety net: html.parser asserts on some odd markup
        text = builder.text() or _strip_tags(html)
    return _tidy(text, limit, truncated=builder.full or cut)


def _feed(builder: _TextBuilder, html: str) -> None:
    """Feed in chunks so parsing stops once the output is full; the parser
    costs microseconds per tag, too much to finish a huge document for
    text that would be cut anyway."""
    for start in range(0, len(html), _FEED_CHUNK):
        builder.feed(html[start : start + _FEED_CHUNK])
        if builder.full:
            return
    builder.close()


def _strip_tags(html: str) -> str:
    """Last-resort conversion when the HTML parser gives up."""
    return " ".join(html_entities.unescape(_TAGS.sub(" ", html)).split())


def _tidy(text: str, limit: int, truncated: bool) -> str:
    text = clean_text(text)
    text = _TRAILING_SPACES.sub("\n", text)
    text = _BLANK_LINE_RUNS.sub("\n\n", text).rstrip().lstrip("\n")  # keep <pre> indent
    if truncated:
        return bounded((text + TRUNCATION_MARKER).lstrip(), limit, TRUNCATION_MARKER)
    return bounded(text, limit, TRUNCATION_MARKER)
