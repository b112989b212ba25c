"""SMTP defences through real clients: each breach gets its precise 4xx reply, a log line and a metric."""
from __future__ import annotations

import smtplib
import socket
import time

import pytest

from emergencyd.daemon.ingest.smtp_limits import ConnectionLimits, RateLimit
from tests.harness import RECIPIENT, log_records, make_message

# The tests connect from 127.0.0.1, which the shipped config exempts from per-address limits.
NO_EXEMPTION = "limit_exempt_networks = []"




def greeting(port: int) -> tuple[socket.socket, bytes]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return sock, sock.recv(1024)


def test_connections_per_address_and_in_total(start_daemon):
    daemon = start_daemon(smtp="max_connections = 3\nmax_connections_per_ip = 2\n" + NO_EXEMPTION)
    first, hello = greeting(daemon.smtp_port)
    second, _ = greeting(daemon.smtp_port)
    assert hello.startswith(b"220 ")
    third, refused = greeting(daemon.smtp_port)
    assert refused.startswith(b"421 4.7.0 Too many connections from your address")
    assert third.recv(1024) == b""                                    # and closed
    first.close()
    daemon.wait_for(lambda: greeting(daemon.smtp_port)[1].startswith(b"220 "), what="a slot to free up")
    assert daemon.rejected("too_many_connections_per_ip") == 1
    # Log lines are written by a thread of their own: the line may follow the counter by a moment.
    daemon.wait_for(lambda: any(r.get("reason") == "too_many_connections_per_ip"
                                for r in log_records(daemon.log_text())), what="the refusal's log line")
    second.close()


def test_total_connection_limit(start_daemon):
    daemon = start_daemon(smtp="max_connections = 2\nmax_connections_per_ip = 10")
    held = [greeting(daemon.smtp_port)[0] for _ in range(2)]
    with pytest.raises(smtplib.SMTPConnectError) as refused:
        smtplib.SMTP("127.0.0.1", daemon.smtp_port, timeout=10)
    assert refused.value.smtp_code == 421 and b"4.7.0 Too many connections" in refused.value.smtp_error
    assert daemon.rejected("too_many_connections") == 1
    for sock in held:
        sock.close()


def test_too_many_recipients_get_452(start_daemon):
    daemon = start_daemon(smtp="max_recipients = 2")
    with smtplib.SMTP("127.0.0.1", daemon.smtp_port, timeout=10) as client:
        client.ehlo("mx.example.net")
        client.mail("tenant@example.net")
        assert client.rcpt(RECIPIENT)[0] == 250
        assert client.rcpt("second@example.org")[0] == 250
        code, reply = client.rcpt(RECIPIENT)
        assert (code, reply[:5]) == (452, b"4.5.3")
        code, _ = client.data(make_message())
        assert code == 250                                           # the two accepted ones still get it
    assert daemon.rejected("too_many_recipients") == 1


def test_message_rates_per_address_and_per_sender(start_daemon):
    daemon = start_daemon(smtp="messages_per_ip_per_minute = 4\nmessages_per_sender_per_minute = 2\n" + NO_EXEMPTION)
    with smtplib.SMTP("127.0.0.1", daemon.smtp_port, timeout=10) as client:
        client.ehlo("mx.example.net")
        codes = []
        for index, sender in enumerate(["a@tenant.example", "a@tenant.example", "A@tenant.example", "b@tenant.example",
                                        "c@tenant.example", "d@tenant.example"]):
            code, reply = client.mail(sender)
            codes.append((code, reply[:5]))
            client.rset()
    assert codes == [(250, b"2.1.0"), (250, b"2.1.0"), (451, b"4.7.1"),     # a third from the same sender
                     (250, b"2.1.0"), (250, b"2.1.0"), (451, b"4.7.1")]     # a fifth from the address
    assert daemon.rejected("rate_limited_sender") == 1 and daemon.rejected("rate_limited_ip") == 1


def test_an_idle_client_is_told_421_and_closed(start_daemon):
    daemon = start_daemon(smtp="command_timeout_seconds = 0.5")
    sock, hello = greeting(daemon.smtp_port)
    assert hello.startswith(b"220 ")
    sock.settimeout(15)
    assert sock.recv(1024).startswith(b"421 4.4.2 Timeout")
    assert sock.recv(1024) == b""
    daemon.wait_for(lambda: daemon.rejected("timeout") == 1, what="the timeout to be counted")


def test_a_slow_client_cannot_hold_a_slot_past_the_session_limit(start_daemon):
    daemon = start_daemon(smtp="session_max_seconds = 1\ncommand_timeout_seconds = 30")
    sock, _ = greeting(daemon.smtp_port)
    sock.settimeout(15)
    replies = b""
    deadline = time.monotonic() + 15
    while b"421" not in replies and time.monotonic() < deadline:   # busy, never idle: a NOOP every 0.2 s
        sock.sendall(b"NOOP\r\n")
        time.sleep(0.2)
        replies += sock.recv(4096)
    assert b"421 4.4.2 Session too long" in replies
    assert daemon.rejected("session_too_long") == 1


def test_limits_keep_memory_bounded_and_forget_old_events():
    rate = RateLimit(limit=2, window_seconds=60, max_keys=3)
    assert rate.allow("a", now=0) and rate.allow("a", now=1) and not rate.allow("a", now=2)
    assert rate.allow("a", now=61)                      # the first event has left the window
    for key in "bcde":
        rate.allow(key, now=70)
    assert len(rate._events) == 3                       # the oldest keys are forgotten
    limits = ConnectionLimits(total=2, per_peer=1)
    assert limits.admit("10.0.0.1") is None and limits.admit("10.0.0.1").reason == "too_many_connections_per_ip"
    assert limits.admit("10.0.0.2") is None and limits.admit("10.0.0.3").reason == "too_many_connections"
    limits.release("10.0.0.1")
    assert limits.admit("10.0.0.3") is None


def test_the_relay_in_front_is_exempt_from_per_address_limits(start_daemon):
    """Behind Postfix every mail comes from 127.0.0.1: the per-address limits must not throttle it."""
    daemon = start_daemon(smtp="max_connections_per_ip = 1\nmessages_per_ip_per_minute = 1")
    held, _ = greeting(daemon.smtp_port)
    with smtplib.SMTP("127.0.0.1", daemon.smtp_port, timeout=10) as client:   # a second connection
        for index in range(3):                                               # and three messages
            client.sendmail(f"ops{index}@tenant.example", [RECIPIENT],
                            make_message(message_id=f"<relay-{index}@tenant.example>"))
    held.close()
    assert len(daemon.wait_settled(3)["messages"]) == 3
