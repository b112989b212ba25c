"""Keep parsing cost near-linear: cut the hostile input shapes whose parse
time grows faster than their size, and tell when a parsed message would make
mail-parser slow. Each cut is reported as a defect by the caller."""

from __future__ import annotations

import re
from email import policy
from email.message import Message

from emergencyd.parsers.header_fields import raw_str
from emergencyd.parsers.limits import (
    LINE_CHECK_BUDGET,
    MAX_EPILOGUE_CHARS_FOR_MAIL_PARSER,
    MAX_HEADER_CHARS_FOR_MAIL_PARSER,
    MAX_HEADERS_FOR_MAIL_PARSER,
    MAX_LINES,
    MAX_MIME_DELIMITERS,
    MAX_PARSED_PARAMETERISED_CHARS,
    MAX_PARSED_PARAMETERS,
    MAX_PARSED_VALUE_CHARS,
    MIN_LINES,
)


class BoundedCompat32(policy.Compat32):
    """compat32 (mail-parser's choice) that cuts each header value as it is
    read, in the top-level block and in every MIME part: the stdlib's
    parameter parsing and RFC 2047 decoding are quadratic in a value's
    length, so one hostile 10 MB header would otherwise take hours."""

    def header_source_parse(self, sourcelines: list[str]) -> tuple[str, str]:
        name, value = super().header_source_parse(sourcelines)
        if not _is_parameterised(name):
            return name, value[:MAX_PARSED_VALUE_CHARS]
        parameters = value[:MAX_PARSED_PARAMETERISED_CHARS].split(";", MAX_PARSED_PARAMETERS + 1)
        return name, ";".join(parameters[: MAX_PARSED_PARAMETERS + 1])


BOUNDED_COMPAT32 = BoundedCompat32()


def _is_parameterised(name: str) -> bool:
    return name.strip().lower() in ("content-type", "content-disposition")


def was_cut(name: str, value: str) -> bool:
    """Whether BoundedCompat32 (probably) cut this value."""
    if _is_parameterised(name):
        return len(value) >= MAX_PARSED_PARAMETERISED_CHARS or value.count(";") >= MAX_PARSED_PARAMETERS
    return len(value) >= MAX_PARSED_VALUE_CHARS


def too_costly_for_mail_parser(msg: Message) -> str | None:
    """A defect name when the message would make mail-parser slow."""
    if len(msg) > MAX_HEADERS_FOR_MAIL_PARSER:
        return "TooManyHeadersDefect"
    if sum(len(raw_str(value)) for _, value in msg.raw_items()) > MAX_HEADER_CHARS_FOR_MAIL_PARSER:
        return "OversizedHeadersDefect"
    if len(msg.epilogue or "") > MAX_EPILOGUE_CHARS_FOR_MAIL_PARSER:
        # It re-parses the epilogue with the unbounded stdlib policy.
        return "OversizedEpilogueDefect"
    return None


def limit_parse_cost(raw: bytes) -> tuple[bytes, tuple[str, ...]]:
    """Cut hostile shapes whose parse time grows faster than their size;
    the defects say that the message was cut."""
    raw, delimiter_defects = _limit_mime_delimiters(raw)
    raw, line_defects = _limit_lines(raw)
    return raw, delimiter_defects + line_defects


_DELIMITER_LINE = re.compile(rb"[\r\n]--")


def _limit_mime_delimiters(raw: bytes) -> tuple[bytes, tuple[str, ...]]:
    """Cut a message with absurdly many MIME delimiter lines where the
    excess starts."""
    for count, match in enumerate(_DELIMITER_LINE.finditer(raw), start=1):
        if count > MAX_MIME_DELIMITERS:
            return raw[: match.start()], ("TooManyMimePartsDefect",)
    return raw, ()


_BOUNDARY_DECLARATION = re.compile(rb"boundary\s*=", re.IGNORECASE)


def _limit_lines(raw: bytes) -> tuple[bytes, tuple[str, ...]]:
    """Cut a message whose line count times possible multipart nesting
    exceeds the parser's budget (e.g. 10 million empty lines)."""
    lines = raw.count(b"\n") + raw.count(b"\r") - raw.count(b"\r\n")
    if lines <= MIN_LINES:
        return raw, ()
    multiparts = sum(1 for _ in _BOUNDARY_DECLARATION.finditer(raw))
    allowed = min(MAX_LINES, max(MIN_LINES, LINE_CHECK_BUDGET // (1 + multiparts)))
    if lines <= allowed:
        return raw, ()
    first_lines = re.compile(rb"(?:[^\r\n]*(?:\r\n|\r|\n)){%d}" % allowed).match(raw)
    return (raw[: first_lines.end()] if first_lines else raw), ("TooManyLinesDefect",)
