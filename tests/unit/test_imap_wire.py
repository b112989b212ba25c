"""The IMAP wire helpers, on response lines shaped the way aioimaplib hands them over."""
from datetime import datetime, timezone

import pytest

from emergencyd.daemon.ingest.imap_wire import (
    MessageMeta,
    batches,
    exists_of,
    has_exists,
    mailbox_name,
    parse_bodies,
    parse_internaldate,
    parse_metadata,
    parse_search,
    return_path_of,
    uid_set,
    uidvalidity_of,
)

# A Dovecot SELECT answer, as seen from aioimaplib (untagged "* " removed).
SELECT_LINES = [b"FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)", b"3 EXISTS", b"0 RECENT",
                b"OK [UIDVALIDITY 1795772741] UIDs valid", b"OK [UIDNEXT 4] Predicted next UID",
                b"[READ-WRITE] Select completed (0.002 + 0.000 + 0.001 secs)."]


def test_uidvalidity_and_exists_from_select():
    assert uidvalidity_of(SELECT_LINES) == 1795772741
    assert exists_of(SELECT_LINES) == 3
    assert uidvalidity_of([b"Select completed."]) is None


def test_idle_pushes_that_announce_new_mail():
    assert has_exists([b"4 EXISTS"])
    assert has_exists([b"1 EXPUNGE", b"3 EXISTS"])
    assert not has_exists([b"1 EXPUNGE"])
    assert not has_exists([b"2 FETCH (FLAGS (\\Seen))"])


def test_metadata_in_uid_order_without_the_highest_uid_echo():
    lines = [b'2 FETCH (UID 9 RFC822.SIZE 2048 INTERNALDATE "27-Nov-2026 09:40:01 +0000")',
             b'1 FETCH (UID 7 RFC822.SIZE 100 INTERNALDATE " 7-Nov-2026 21:05:00 +0100")',
             b"3 FETCH (FLAGS (\\Seen))",     # an unsolicited flag update is not an answer
             b"Fetch completed (0.001 + 0.000 secs)."]
    metas = parse_metadata(lines, first_uid=1)
    assert [m.uid for m in metas] == [7, 9]
    assert metas[1].size == 2048
    assert metas[1].internaldate == datetime(2026, 11, 27, 9, 40, 1, tzinfo=timezone.utc).timestamp()
    assert metas[0].internaldate == datetime(2026, 11, 7, 20, 5, 0, tzinfo=timezone.utc).timestamp()
    # `UID FETCH 10:*` answers with UID 9 when 9 is the highest: not a new message.
    assert parse_metadata(lines, first_uid=10) == []


def test_search_results_as_aioimaplib_gives_them():
    assert parse_search([b"3 9 4", b"Search completed (0.001 + 0.000 secs)."], first_uid=1) == [3, 4, 9]
    assert parse_search([b"SEARCH 12 13", b"Search completed."], first_uid=13) == [13]
    assert parse_search([b"Search completed (0.001 + 0.000 secs)."], first_uid=1) == []
    assert parse_search([b"7"], first_uid=8) == []      # `UID SEARCH UID 8:*` echoes the highest, 7


def test_bodies_with_uid_before_or_after_the_literal():
    first, second = b"Subject: a\r\n\r\nbody a\r\n", b"Subject: b\r\n\r\nbody b\r\n"
    lines = [b"1 FETCH (UID 5 BODY[] {%d}" % len(first), bytearray(first), b")",
             b"2 FETCH (BODY[] {%d}" % len(second), bytearray(second), b" UID 6)",
             b"Fetch completed."]
    assert parse_bodies(lines) == {5: first, 6: second}


def test_internaldate_that_cannot_be_read():
    assert parse_internaldate("yesterday") is None


def test_uid_sets_compress_runs():
    assert uid_set([3, 1, 2, 7, 9, 10, 10]) == "1:3,7,9:10"
    assert uid_set([42]) == "42"
    with pytest.raises(ValueError):
        uid_set([])


def test_batches_bound_count_and_bytes():
    metas = [MessageMeta(uid, size, None) for uid, size in [(1, 10), (2, 10), (3, 10), (4, 100), (5, 10)]]
    assert [[m.uid for m in b] for b in batches(metas, max_messages=2, max_bytes=1000)] == [[1, 2], [3, 4], [5]]
    # a message bigger than the byte bound still goes, alone
    assert [[m.uid for m in b] for b in batches(metas, max_messages=10, max_bytes=50)] == [[1, 2, 3], [4], [5]]


def test_mailbox_names_are_quoted_and_modified_utf7():
    assert mailbox_name("INBOX") == '"INBOX"'
    assert mailbox_name("Alerts/Processed") == '"Alerts/Processed"'
    assert mailbox_name('a"b\\c') == '"a\\"b\\\\c"'
    assert mailbox_name("R&D") == '"R&-D"'
    assert mailbox_name("Trait\u00e9s") == '"Trait&AOk-s"'          # RFC 3501 5.1.3
    assert mailbox_name("\u53f0\u5317") == '"&U,BTFw-"'              # the RFC's own example


def test_return_path_is_the_envelope_sender():
    raw = b"Return-Path: <bounce+42@tenant.example.net>\r\nFrom: x@example.net\r\n\r\nReturn-Path: <no@body>\r\n"
    assert return_path_of(raw) == "bounce+42@tenant.example.net"
    assert return_path_of(b"Return-Path: <>\r\n\r\n") == ""
    assert return_path_of(b"From: x@example.net\r\n\r\nReturn-Path: <in@body.example>\r\n") == ""
