"""HTML to readable plain text, as a mail client would show it.

Bounded in input and output, so a hostile document cannot hold the daemon,
and total: markup html.parser would choke on is escaped first, and a parser
failure falls back to stripping tags.
"""

from __future__ import annotations

import html as html_entities
import re
from html.parser import HTMLParser

from emergencyd.parsers.cleaning import (
    DEFAULT_TEXT_LIMIT,
    TRUNCATION_MARKER,
    bounded,
    clean_text,
)

__all__ = ["MAX_HTML_CHARS", "html_to_text"]

# Invisible characters marketing HTML uses for preheader padding.
_INVISIBLE_CHARS = re.compile("[\u00ad\u034f\u200b-\u200d\u2060\ufeff]")

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
            self._list_item()
        elif tag in _PARAGRAPHS:
            self._block_break(1 if self._nested_list(tag) else 2)
        elif tag in _LINES:
            self._block_break(1)
        if tag in _LISTS:
            self._list_depth += 1
        if tag == "pre":
            self._pre_depth += 1

    def _list_item(self) -> None:
        """A bullet on a new line, indented by the list's nesting."""
        self._block_break(1)
        self._flush_separators()
        indent = "  " * max(0, min(self._list_depth, _MAX_LIST_DEPTH) - 1)
        self._write(indent + "- ")
        self._line_has_text = False  # no space after the bullet

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
