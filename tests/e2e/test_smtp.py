"""SMTP ingress through real clients (smtplib, swaks) against the real listener."""
import smtplib
import sqlite3
import subprocess

import pytest
from aiosmtpd.smtp import SMTP
from hypothesis import given, settings
from hypothesis import strategies as st

from emergencyd.daemon.ingest.smtp_address import plain_address
from emergencyd.escalation.records import DONE, PAGE
from tests.harness import RECIPIENT, make_message, require_tool
from tests.raw_smtp import RawSmtp, code


def test_accepted_mail_is_stored_and_shown_in_status(start_daemon):
    daemon = start_daemon()
    assert daemon.send(make_message()) == {}
    doc = daemon.wait_settled(1)
    [message] = doc["messages"]
    assert message["subject"] == "Apps down" and message["sender"] == "tenant@example.net"
    assert message["state"] == DONE and message["dedup_key"].startswith("emergencyd-")
    # dry run: what would be sent is recorded, nothing is called
    page = message["steps"][PAGE]["result"]
    assert page["dry_run"] is True
    assert page["would_send"]["dedup_key"] == message["dedup_key"]
    assert doc["dry_run"] is True


def test_recipients_match_case_insensitively_and_others_get_550(start_daemon):
    daemon = start_daemon()
    with smtplib.SMTP("127.0.0.1", daemon.smtp_port, timeout=10) as client:
        client.ehlo("mx.example.net")
        client.mail("tenant@example.net")
        assert client.rcpt("EMERGENCY@Example.ORG")[0] == 250
        assert client.rcpt("second@example.org")[0] == 250
        code, text = client.rcpt("someone@elsewhere.example")
        assert (code, text[:5]) == (550, b"5.1.1")
        assert client.data(make_message())[0] == 250
    with pytest.raises(smtplib.SMTPRecipientsRefused) as info:
        daemon.send(make_message(message_id="<relay@example.net>"), recipients=("victim@gmail.com",))
    assert info.value.recipients["victim@gmail.com"][0] == 550
    doc = daemon.wait_settled(1)
    assert len(doc["messages"]) == 1
    _, metrics = daemon.http_get("/metrics")
    assert 'emergencyd_messages_rejected_total{reason="unknown_recipient"} 2.0' in metrics


def test_oversize_mail_gets_552_at_mail_size_and_during_data(start_daemon):
    daemon = start_daemon()
    big = make_message(body="x" * 70 + ("\r\n" + "x" * 70) * 3500)
    with smtplib.SMTP("127.0.0.1", daemon.smtp_port, timeout=10) as client:
        client.ehlo("mx.example.net")
        assert client.mail("tenant@example.net", ["SIZE=%d" % len(big)])[0] == 552
        client.rset()
        # A client that does not announce SIZE is stopped during DATA.
        client.mail("tenant@example.net")
        client.rcpt(RECIPIENT)
        code, _ = client.data(big)
        assert code == 552
    assert daemon.status()["messages"] == []


def test_a_store_that_cannot_commit_answers_451_and_writes_nothing(start_daemon):
    daemon = start_daemon()
    store_path = daemon.config.parent / "var" / "store.sqlite3"
    locker = sqlite3.connect(store_path, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(smtplib.SMTPDataError) as info:
            daemon.send(make_message())
        assert info.value.smtp_code == 451 and info.value.smtp_error.startswith(b"4.3.0")
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert daemon.status()["messages"] == []
    # The sending MTA retries, and now it is accepted exactly once.
    assert daemon.send(make_message()) == {}
    assert len(daemon.wait_settled(1)["messages"]) == 1
    _, metrics = daemon.http_get("/metrics")
    assert 'emergencyd_messages_rejected_total{reason="store_failure"} 1.0' in metrics


def test_swaks_delivers_a_message(start_daemon):
    swaks = require_tool("swaks")
    daemon = start_daemon()
    result = subprocess.run(
        [swaks, "--server", f"127.0.0.1:{daemon.smtp_port}", "--to", RECIPIENT, "--from", "ops@tenant.example",
         "--header", "Subject: swaks says the API is down", "--body", "cf push fails: 503 from api",
         "--helo", "mx.tenant.example"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "<-  250 2.0.0 OK: queued as" in result.stdout
    [message] = daemon.wait_settled(1)["messages"]
    assert message["subject"] == "swaks says the API is down"
    assert message["sender"] == "ops@tenant.example"


def test_sigterm_stops_cleanly(start_daemon):
    daemon = start_daemon()
    daemon.send(make_message())
    daemon.wait_settled(1)
    assert daemon.stop() == 0
    assert "stopped" in daemon.log_text()


_ADDRESS_BITS = st.sampled_from([*"ab.@<>() \t\r\n-_+=\"\\[]:;,é\u00a0\u2028", "a@b.example", "x.y@z", "<", ">",
                                 " SIZE=10", "(comment)", "..", "@@", "#!$%&'*/=?^`{|}~"])


@settings(max_examples=1500, deadline=None)
@given(st.lists(_ADDRESS_BITS, max_size=12).map("".join), st.sampled_from([0, 3, 64]))
def test_mail_and_rcpt_addresses_are_read_as_aiosmtpd_reads_them(arg, local_part_limit):
    library = SMTP(handler=object())
    library.local_part_limit = local_part_limit
    try:
        expected = library._getaddr(arg)
    except Exception:    # aiosmtpd's parser trips over some inputs: a malformed address all the same
        expected = (None, None)
    assert plain_address(arg, local_part_limit, library._getaddr) == expected


def test_an_address_that_trips_the_header_parser_is_answered_as_malformed(start_daemon):
    daemon = start_daemon()
    with RawSmtp(daemon.smtp_port) as client:
        assert code(client.command(b"EHLO client.example\r\n")) == 250
        refused = client.command(b'MAIL FROM:"\r\n')          # aiosmtpd alone: 500 Error: (IndexError) ...
        assert refused == ["553 5.1.3 Error: malformed address"]
        assert code(client.command(b"MAIL FROM:<ops@tenant.example> (a comment) SIZE=100\r\n")) == 250
        assert code(client.command(b"RCPT TO:<" + RECIPIENT.encode() + b">\r\n")) == 250
