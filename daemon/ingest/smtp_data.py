"""The body of a DATA command, read in a few large pieces.

aiosmtpd reads DATA a line at a time, a coroutine step per line: about 90 of them for a 6 KB mail,
a fifth of the event loop's time in a one-sender storm (bench/README.md, "DATA in pieces"). This
reads up to each ".<CRLF>" instead: a line that ends in a dot costs a step, and so does each
line_length_limit bytes without one (the reader's buffer limit, which aiosmtpd sets to it).

The answers are aiosmtpd's: the data ends at <CRLF>.<CRLF> only (RFC 5321 4.1.1.4; a bare LF
before or after the dot does not end it, so no smuggling), a leading dot is removed from every
line (4.5.2), a line longer than line_length_limit (its CRLF counted) or more than data_size_limit
bytes in all is refused once the data has ended, and what was read of a refused message is not kept.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from enum import StrEnum

DOT_LINE_END = b".\r\n"
CRLF = b"\r\n"


class BodyFault(StrEnum):
    LINE_TOO_LONG = "line_too_long"
    TOO_LARGE = "too_large"


@dataclass(frozen=True, slots=True)
class DataBody:
    content: bytes               # unstuffed; empty when refused
    fault: BodyFault | None


async def read_body(reader: asyncio.StreamReader, *, max_line_bytes: int, max_bytes: int | None) -> DataBody:
    """Read from just after the 354 to the end-of-data line, and not a byte further (pipelining)."""
    pieces: list[bytes] = []
    size = 0
    fault: BodyFault | None = None
    line_bytes = 0                       # read so far of the line under way, across pieces
    tail = CRLF                          # the last two bytes read: the data starts at a line's start
    while True:
        try:
            piece = await reader.readuntil(DOT_LINE_END)
        except asyncio.LimitOverrunError as overrun:   # no ".<CRLF>" within the reader's limit: take what is safe
            piece = await reader.readexactly(overrun.consumed)
        ends_data = piece.endswith(DOT_LINE_END) and (piece if len(piece) >= 5 else tail + piece)[-5:-3] == CRLF
        if ends_data:
            piece = piece[:-3]
        longest, line_bytes = _line_lengths(piece, line_bytes, after_cr=tail.endswith(b"\r"), limit=max_line_bytes)
        if max(longest, line_bytes) > max_line_bytes and fault is None:
            fault = BodyFault.LINE_TOO_LONG
        size += len(piece)
        if fault is None and max_bytes and size > max_bytes:
            fault = BodyFault.TOO_LARGE
        if fault is None:
            pieces.append(piece)
        else:
            pieces.clear()                # nothing of a refused message is kept in memory
        if ends_data:
            return DataBody(unstuff(b"".join(pieces)) if fault is None else b"", fault)
        if piece:
            tail = (tail + piece[-2:])[-2:]


def _line_lengths(piece: bytes, carried: int, *, after_cr: bool, limit: int) -> tuple[int, int]:
    """The longest line that ended in `piece` (with its CRLF; 0 when none can be over `limit`), and
    how much is read of the line under way after it. `carried`: what was read of that line before
    `piece`, a final CR included; `after_cr`: that CR may pair with an LF at the start of `piece`."""
    if after_cr:                          # a CRLF split between two pieces
        piece, carried = b"\r" + piece, carried - 1
    if carried + len(piece) + 2 <= limit:  # no line in it can be too long: the usual piece, no split needed
        end = piece.rfind(CRLF)
        return 0, carried + len(piece) if end < 0 else len(piece) - end - 2
    lines = piece.split(CRLF)
    if len(lines) == 1:
        return 0, carried + len(piece)
    return max(carried + len(lines[0]), max(map(len, lines[1:-1]), default=0)) + 2, len(lines[-1])


def unstuff(content: bytes) -> bytes:
    """Remove the dot that the client added to each line starting with one (RFC 5321 4.5.2)."""
    if b"\n." not in content and not content.startswith(b"."):
        return content
    return (CRLF + content).replace(b"\r\n.", CRLF)[2:]
