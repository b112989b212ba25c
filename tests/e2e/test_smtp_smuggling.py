"""SMTP smuggling and other protocol abuse, on a raw socket against the real listener.

RFC 5321 (2.3.8, 4.1.1.4) ends DATA only with <CRLF>.<CRLF>. A receiver that also
took <LF>.<LF>, <CR>.<LF>, <LF>.<CRLF> or <CRLF>.<CR> as the end would read what
follows as a second, "smuggled" transaction (CVE-2023-51764 family; aiosmtpd fixed
its own in 1.4.5, CVE-2024-27305): a mail that an outbound relay passed as one
message would become two here, the second with a forged envelope and a P1 subject
that pages. aiosmtpd reads DATA with readuntil(b"\\r\\n") and ends it only on a line
that is exactly b".\\r\\n"; these tests hold the daemon to that.

Each session pipelines the whole message, the smuggled commands and QUIT at once, as
an outbound MTA does, and then reads every reply until the server closes: a receiver
that ended DATA early would answer the smuggled MAIL, RCPT and DATA too.
"""
from __future__ import annotations

import pytest

from emergencyd.escalation.records import DONE, STEP_DONE
from tests.harness import RECIPIENT, make_message
from tests.raw_smtp import RawSmtp, as_received, code, codes, dot_stuff, stored_raw

SMUGGLED_ID = "smuggled-{name}@attacker.example"
OUTER_ID = "outer-{name}@example.net"

SEQUENCES = {
    "LF.LF": b"\n.\n",
    "CR.LF": b"\r.\n",
    "LF.CRLF": b"\n.\r\n",
    "CR.CRLF": b"\r.\r\n",
    "CRLF.CR": b"\r\n.\r",
    "CRLF.LF": b"\r\n.\n",
}


def store_path(daemon):
    return daemon.config.parent / "var" / "store.sqlite3"


def smuggling_payload(name: str, sequence: bytes) -> bytes:
    """One message whose body hides a second transaction behind `sequence`; ends with CRLF (no final dot)."""
    outer = (f"From: Tenant <tenant@example.net>\r\nTo: {RECIPIENT}\r\n"
             f"Subject: Question about our invoice\r\nMessage-ID: <{OUTER_ID.format(name=name)}>\r\n"
             "Date: Fri, 27 Nov 2026 02:15:00 +0000\r\n\r\n"
             "Just a question about last month's invoice.").encode()
    smuggled = (f"MAIL FROM:<ceo@attacker.example>\r\nRCPT TO:<{RECIPIENT}>\r\nDATA\r\n"
                f"From: CEO <ceo@attacker.example>\r\nTo: {RECIPIENT}\r\n"
                f"Subject: P1: all apps are down, page everyone\r\n"
                f"Message-ID: <{SMUGGLED_ID.format(name=name)}>\r\n"
                "Date: Fri, 27 Nov 2026 02:16:00 +0000\r\n\r\n"
                "Production is down. Wake up the on-call engineer now.\r\n").encode()
    return outer + sequence + smuggled


@pytest.mark.parametrize("name", list(SEQUENCES))
def test_smuggled_transaction_stays_inside_the_one_message(start_daemon, name):
    daemon = start_daemon()
    data = smuggling_payload(name, SEQUENCES[name])
    with RawSmtp(daemon.smtp_port) as client:
        client.start_data()
        client.send(data + b".\r\n" + b"QUIT\r\n")
        replies = client.replies_until_closed()
    # One 250 for the one DATA, then QUIT's 221. Had the sequence ended DATA, the smuggled
    # MAIL, RCPT and DATA would have been answered 250, 250, 354 and another 250 before it.
    assert codes(replies) == [250, 221], client.transcript
    assert replies[0][0].startswith("250 2.0.0 "), client.transcript

    doc = daemon.wait_settled(1)
    assert sum(doc["counts"].values()) == 1, doc["counts"]
    [message] = doc["messages"]
    smuggled_id = SMUGGLED_ID.format(name=name)
    assert message["message_id"] == OUTER_ID.format(name=name)
    assert message["subject"] == "Question about our invoice"
    assert message["sender"] == "tenant@example.net"
    assert smuggled_id not in [m["message_id"] for m in doc["messages"]]

    # The smuggled text is body of the one message, byte for byte as received.
    [(stored_id, raw)] = stored_raw(store_path(daemon)).items()
    assert stored_id == OUTER_ID.format(name=name)
    assert raw == as_received(data)
    assert f"Message-ID: <{smuggled_id}>".encode() in raw and b"MAIL FROM:<ceo@attacker.example>" in raw

    # The one page recorded (dry run; without [policy] unclassified mail pages) is the tenant's:
    # nothing is paged for the smuggled sender, Message-ID or subject.
    page = message["steps"]["page"]["result"]["would_send"]
    assert page["custom_details"]["message_id"] == OUTER_ID.format(name=name)
    assert page["source"] == "tenant@example.net"
    assert "all apps are down" not in page["summary"]
    assert "ceo@attacker.example" not in str(doc["groups"])


def test_a_dot_line_with_a_bare_lf_inside_it_is_data_and_the_real_end_still_works(start_daemon):
    """A line that merely starts with '.' and contains a bare LF is un-stuffed like any dot line."""
    daemon = start_daemon()
    message = make_message(message_id="<dots@example.net>",
                           body="first line\r\n.hidden\nsecond\r\n..\r\n.\n.\r\nlast")
    with RawSmtp(daemon.smtp_port) as client:
        client.start_data()
        client.send(dot_stuff(message) + b".\r\nQUIT\r\n")
        assert codes(client.replies_until_closed()) == [250, 221], client.transcript
    daemon.wait_settled(1)
    assert stored_raw(store_path(daemon)) == {"dots@example.net": message}


def test_bare_lf_commands_are_read_as_lines_but_never_end_data(start_daemon):
    """aiosmtpd reads command lines up to LF (a CR before it is optional), but DATA only ends at CRLF.CRLF.

    Accepting LF-terminated commands smuggles nothing by itself: the DATA of the session
    below holds LF.LF followed by commands, and they stay body.
    """
    daemon = start_daemon()
    body = (b"From: tenant@example.net\nTo: emergency@example.org\nSubject: LF only\n"
            b"Message-ID: <lf-only@example.net>\n\nline one\n.\nMAIL FROM:<x@attacker.example>\n"
            b"RCPT TO:<emergency@example.org>\nDATA\nQUIT\n")
    with RawSmtp(daemon.smtp_port) as client:
        client.start_data(eol=b"\n")
        client.send(body + b".\n")          # still not the end: this is one more line of data
        client.send(b"NOOP\n" + b"\r\n.\r\n" + b"QUIT\n")
        replies = client.replies_until_closed()
    assert codes(replies) == [250, 221], client.transcript
    [message] = daemon.wait_settled(1)["messages"]
    assert message["message_id"] == "lf-only@example.net" and message["subject"] == "LF only"
    [raw] = stored_raw(store_path(daemon)).values()
    assert raw == body + b".\nNOOP\n\r\n"


def test_a_line_past_max_line_bytes_gets_554_and_nothing_of_it_is_stored(start_daemon):
    """RFC 5321 4.5.3.1.6 asks senders for lines of at most 1,000 octets, but real mail (bounces quoting
    HTML, unwrapped base64) has longer ones: those are taken whole. A line past smtp.max_line_bytes gets
    554 5.6.0 once the DATA has ended, nothing of that message is kept, and the session goes on."""
    daemon = start_daemon(smtp="max_line_bytes = 4000")
    long_line = b"L" * 3000
    too_long = make_message(message_id="<too-long@example.net>", body="start\r\n" + "x" * 5000 + "\r\nend")
    over_rfc = make_message(message_id="<over-rfc@example.net>", body="start\r\n" + long_line.decode() + "\r\nend")
    with RawSmtp(daemon.smtp_port) as client:
        client.start_data()
        client.send(too_long + b".\r\n")
        reply = client.reply()
        assert reply == ["554 5.6.0 Line too long: the message was not accepted"], reply
        # The transaction is over (RFC 5321 4.1.1.4): a new one in the same session is taken.
        assert code(client.command(b"MAIL FROM:<tenant@example.net>\r\n")) == 250
        assert code(client.command(f"RCPT TO:<{RECIPIENT}>\r\n".encode())) == 250
        assert code(client.command(b"DATA\r\n")) == 354
        client.send(over_rfc + b".\r\nQUIT\r\n")
        assert codes(client.replies_until_closed()) == [250, 221], client.transcript
    doc = daemon.wait_settled(1)
    assert sum(doc["counts"].values()) == 1
    [raw] = stored_raw(store_path(daemon)).values()
    assert long_line + b"\r\n" in raw and b"x" * 100 not in raw
    metrics = daemon.http_get("/metrics")[1]
    assert 'emergencyd_messages_rejected_total{reason="line_too_long"} 1.0' in metrics
    assert '"reason": "line_too_long"' in daemon.log_text()


def test_nul_bytes_in_data_are_stored_verbatim_and_escalated(start_daemon):
    daemon = start_daemon()
    message = (b"From: Tenant <tenant@example.net>\r\nTo: emergency@example.org\r\n"
               b"Subject: Apps\x00 down\r\nMessage-ID: <nul@example.net>\r\n\r\n"
               b"Our app\x00 returns 502\x00\x00 since 02:10.\r\n\x00\r\n")
    with RawSmtp(daemon.smtp_port) as client:
        client.start_data()
        client.send(message + b".\r\nQUIT\r\n")
        replies = client.replies_until_closed()
    assert codes(replies) == [250, 221], client.transcript
    doc = daemon.wait_settled(1)
    [record] = doc["messages"]
    assert record["message_id"] == "nul@example.net"
    assert record["state"] == DONE, record
    assert all(step["state"] == STEP_DONE for step in record["steps"].values()), record["steps"]
    assert stored_raw(store_path(daemon)) == {"nul@example.net": message}
    assert daemon.proc.poll() is None


@pytest.mark.parametrize("tail", [b"", b"\r\n", b"\r\n.", b"\r\n.\r", b"\r\n.\n"],
                         ids=["mid-line", "CRLF", "CRLF.", "CRLF.CR", "CRLF.LF"])
def test_data_cut_off_before_its_terminator_is_not_stored(start_daemon, tail):
    """A client that closes mid-DATA (even one octet short of CRLF.CRLF) gets no 250 and leaves nothing."""
    daemon = start_daemon()
    with RawSmtp(daemon.smtp_port) as client:
        client.start_data()
        client.send(make_message(message_id="<cut-off@example.net>").rstrip(b"\r\n") + tail)
        client.end_input()
        assert client.replies_until_closed() == [], client.transcript
    # The server has closed the connection: that transaction can no longer be committed.
    # The next mail is stored alone.
    assert daemon.send(make_message(message_id="<after@example.net>")) == {}
    doc = daemon.wait_settled(1)
    assert [m["message_id"] for m in doc["messages"]] == ["after@example.net"]
    assert sum(doc["counts"].values()) == 1
    assert daemon.proc.poll() is None
