"""IMAP wire details: reading aioimaplib's response lines, writing UID sets and mailbox names.

Pure functions, no I/O, so each quirk of the protocol is tested on its own.
"""
from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Iterable, Iterator, Sequence

_UIDVALIDITY = re.compile(rb"\[UIDVALIDITY (\d+)\]", re.IGNORECASE)
_EXISTS = re.compile(rb"^(\d+) EXISTS$", re.IGNORECASE)
_FETCH = re.compile(rb"^\d+ FETCH \(", re.IGNORECASE)
_UID = re.compile(rb"\bUID (\d+)", re.IGNORECASE)
_SIZE = re.compile(rb"\bRFC822\.SIZE (\d+)", re.IGNORECASE)
_INTERNALDATE = re.compile(rb'\bINTERNALDATE "([^"]+)"', re.IGNORECASE)
_LITERAL = re.compile(rb"\{(\d+)\}$")


@dataclass(frozen=True)
class MessageMeta:
    """What the server says about a message before we fetch it."""
    uid: int
    size: int
    internaldate: float | None   # unix time the mailbox received it


def uidvalidity_of(lines: Iterable[bytes | bytearray]) -> int | None:
    for line in lines:
        match = _UIDVALIDITY.search(bytes(line))
        if match:
            return int(match.group(1))
    return None


def exists_of(lines: Iterable[bytes | bytearray]) -> int | None:
    """The message count from an `* n EXISTS` line, the last one when there are several."""
    count = None
    for line in lines:
        match = _EXISTS.match(bytes(line).strip())
        if match:
            count = int(match.group(1))
    return count


def parse_metadata(lines: Iterable[bytes | bytearray], *, first_uid: int) -> list[MessageMeta]:
    """UID FETCH (UID RFC822.SIZE INTERNALDATE) lines -> metadata of UIDs >= first_uid, in UID order.

    `UID FETCH n:*` also answers with the highest UID when it is below n (RFC 3501 reads
    `n:*` as a range with the last message), so UIDs below first_uid are dropped here.
    """
    found: dict[int, MessageMeta] = {}
    for raw_line in lines:
        line = bytes(raw_line)
        if not _FETCH.match(line):
            continue
        uid, size = _UID.search(line), _SIZE.search(line)
        if not uid or not size:
            continue   # an unsolicited FLAGS update, not our answer
        date = _INTERNALDATE.search(line)
        meta = MessageMeta(int(uid.group(1)), int(size.group(1)),
                           parse_internaldate(date.group(1).decode("ascii", "replace")) if date else None)
        if meta.uid >= first_uid:
            found[meta.uid] = meta
    return [found[uid] for uid in sorted(found)]


def parse_search(lines: Iterable[bytes | bytearray], *, first_uid: int) -> list[int]:
    """UID SEARCH lines -> the UIDs >= first_uid, in order (see parse_metadata on n:*).

    aioimaplib hands over "* SEARCH 3 4 9" as b"3 4 9"; the tagged "Search completed" is a line too.
    """
    uids: set[int] = set()
    for raw_line in lines:
        words = bytes(raw_line).split()
        if words and words[0].upper() == b"SEARCH":
            words = words[1:]
        if words and all(word.isdigit() for word in words):
            uids.update(int(word) for word in words)
    return sorted(uid for uid in uids if uid >= first_uid)


def parse_bodies(lines: Sequence[bytes | bytearray]) -> dict[int, bytes]:
    """UID FETCH (UID BODY.PEEK[]) lines -> {uid: raw message}.

    aioimaplib gives the line announcing a literal, then the literal, then the rest of the
    FETCH. Servers may put UID before the literal (Dovecot) or after it, so look at both.
    """
    bodies: dict[int, bytes] = {}
    for index, raw_line in enumerate(lines):
        line = bytes(raw_line) if isinstance(raw_line, bytes) else None
        if line is None or not _FETCH.match(line) or not _LITERAL.search(line):
            continue
        if index + 1 >= len(lines):
            continue
        literal = bytes(lines[index + 1])
        uid = _UID.search(line)
        if not uid and index + 2 < len(lines):
            uid = _UID.search(bytes(lines[index + 2]))
        if uid:
            bodies[int(uid.group(1))] = literal
    return bodies


def parse_internaldate(text: str) -> float | None:
    """'27-Nov-2026 09:40:01 +0000' (the day may be space-padded) -> unix time."""
    try:
        return datetime.strptime(text.strip(), "%d-%b-%Y %H:%M:%S %z").timestamp()
    except ValueError:
        return None


def uid_set(uids: Iterable[int]) -> str:
    """[1, 2, 3, 7, 9, 10] -> '1:3,7,9:10': short commands for long runs of UIDs."""
    ordered = sorted(set(uids))
    if not ordered:
        raise ValueError("an empty UID set")
    ranges: list[str] = []
    start = previous = ordered[0]
    for uid in ordered[1:] + [None]:
        if uid is not None and uid == previous + 1:
            previous = uid
            continue
        ranges.append(str(start) if start == previous else f"{start}:{previous}")
        if uid is not None:
            start = previous = uid
    return ",".join(ranges)


def batches(metas: Sequence[MessageMeta], *, max_messages: int, max_bytes: int) -> Iterator[list[MessageMeta]]:
    """Consecutive groups small enough to hold in memory at once (a big message goes alone)."""
    batch: list[MessageMeta] = []
    size = 0
    for meta in metas:
        if batch and (len(batch) >= max_messages or size + meta.size > max_bytes):
            yield batch
            batch, size = [], 0
        batch.append(meta)
        size += meta.size
    if batch:
        yield batch


def mailbox_name(name: str) -> str:
    """A mailbox name as a quoted IMAP string, non-ASCII in modified UTF-7 (RFC 3501 5.1.3)."""
    encoded: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            b64 = base64.b64encode("".join(pending).encode("utf-16-be")).rstrip(b"=").replace(b"/", b",")
            encoded.append("&" + b64.decode("ascii") + "-")
            pending.clear()

    for char in name:
        if 0x20 <= ord(char) <= 0x7E:
            flush()
            encoded.append("&-" if char == "&" else char)
        else:
            pending.append(char)
    flush()
    return '"' + "".join(encoded).replace("\\", "\\\\").replace('"', '\\"') + '"'


def return_path_of(raw: bytes) -> str:
    """The envelope sender the delivering server recorded (Return-Path), or ''."""
    header_end = raw.find(b"\r\n\r\n")
    head = raw[: header_end if header_end >= 0 else 65536]
    match = re.search(rb"^Return-Path:[ \t]*<([^>\r\n]*)>", head, re.IGNORECASE | re.MULTILINE)
    return match.group(1).decode("utf-8", "replace")[:254] if match else ""


def has_exists(push: Iterable[bytes | bytearray]) -> bool:
    """Does an IDLE push announce new mail? (EXPUNGE and FLAGS updates do not.)"""
    return exists_of(push) is not None
