"""SMTP AUTH for a relay in front, and the PROXY protocol behind a load balancer, through the real daemon.

AUTH is checked with smtplib, swaks and a raw socket; PROXY headers (v1 and v2) are written on a raw
socket in front of an SMTP session, as HAProxy's send-proxy and send-proxy-v2 do. A 250 means the
envelope is committed, so the store shows it at once.
"""
from __future__ import annotations

import base64
import smtplib
import subprocess
import sys

import pytest

from emergencyd.daemon.config.model import ConfigError, load_config
from tests.harness import (
    RECIPIENT,
    ROOT,
    log_records,
    make_message,
    require_tool,
    write_config,
)
from tests.raw_smtp import RawSmtp, code, proxy_v1, proxy_v2, stored_envelopes

USER, PASSWORD = "relay", "c0rrect-h0rse-battery"
WRONG = "wr0ng-guess-7d1e"


@pytest.fixture(scope="module")
def users_file(tmp_path_factory):
    """A users file made the way the docs say: `emergencyd hash-password USER`, password on stdin."""
    made = subprocess.run([sys.executable, "-m", "emergencyd.daemon.cli", "hash-password", USER], input=PASSWORD + "\n",
                          cwd=ROOT, capture_output=True, text=True, timeout=30, check=True)
    assert PASSWORD not in made.stdout and made.stdout.startswith(f"{USER}:$scrypt$")
    path = tmp_path_factory.mktemp("auth") / "smtp-users"
    path.write_text("# relays allowed to AUTH\n" + made.stdout)
    return path


@pytest.fixture
def tls_files(ca, tmp_path):
    cert, key = tmp_path / "smtp-cert.pem", tmp_path / "smtp-key.pem"
    ca.write_server_pem(cert, key)
    return f'tls_cert_file = "{cert}"\ntls_key_file = "{key}"'




def envelopes(daemon) -> list[dict]:
    return stored_envelopes(daemon.config.parent / "var" / "store.sqlite3")




def plain(user: str, password: str) -> bytes:
    return b"AUTH PLAIN " + base64.b64encode(f"\0{user}\0{password}".encode()) + b"\r\n"


def assert_no_password_logged(daemon) -> None:
    text = daemon.log_text()
    for secret in (PASSWORD, WRONG):
        assert secret not in text
        assert base64.b64encode(secret.encode()).decode() not in text
        assert base64.b64encode(f"\0{USER}\0{secret}".encode()).decode() not in text


# -- AUTH -----------------------------------------------------------------------------------------

def test_a_relay_authenticates_over_starttls_and_mail_before_auth_gets_530(start_daemon, ca, ca_file, users_file,
                                                                            tls_files):
    daemon = start_daemon(smtp=f'{tls_files}\nauth_users_file = "{users_file}"\nauth_required = true')
    with smtplib.SMTP("127.0.0.1", daemon.smtp_port, timeout=10) as client:
        client.ehlo("relay.example.org")
        code_, reply = client.mail("tenant@example.net")
        assert (code_, reply[:5]) == (530, b"5.7.0")
        client.starttls(context=ca.client_ssl_context())
        client.ehlo("relay.example.org")
        assert set(client.esmtp_features["auth"].split()) == {"PLAIN", "LOGIN"}
        client.user, client.password = USER, WRONG
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            client.auth("PLAIN", client.auth_plain)
        assert (refused.value.smtp_code, refused.value.smtp_error[:5]) == (535, b"5.7.8")
        client.user, client.password = USER, PASSWORD
        assert client.auth("LOGIN", client.auth_login, initial_response_ok=False)[0] == 235
        assert client.sendmail("tenant@example.net", [RECIPIENT], make_message()) == {}
    assert [e["tls"] for e in envelopes(daemon)] == [True]
    assert daemon.metric('emergencyd_smtp_auth_total{result="success"}') == 1
    assert daemon.metric('emergencyd_smtp_auth_total{result="failure"}') == 1
    assert daemon.rejected("auth_required") == 1
    failed = [r for r in log_records(daemon.log_text()) if r["event"] == "smtp authentication failed"]
    assert [(r["user"], r["mechanism"]) for r in failed] == [(USER, "PLAIN")]
    assert_no_password_logged(daemon)

    # The same through swaks, last: without swaks (outside CI) only this part is skipped.
    swaks = require_tool("swaks")
    sent = subprocess.run(
        [swaks, "--server", f"127.0.0.1:{daemon.smtp_port}", "--tls", "--tls-verify", "--tls-ca-path", str(ca_file),
         "--auth", "PLAIN", "--auth-user", USER, "--auth-password", PASSWORD, "--to", RECIPIENT,
         "--from", "ops@tenant.example", "--header", "Subject: API down", "--body", "cf push fails: 503"],
        capture_output=True, text=True, timeout=60)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert "235 2.7.0 Authentication successful" in sent.stdout and "250 2.0.0 OK: queued as" in sent.stdout
    assert [e["tls"] for e in envelopes(daemon)] == [True, True]
    assert daemon.metric('emergencyd_smtp_auth_total{result="success"}') == 2
    assert_no_password_logged(daemon)


def test_an_address_that_keeps_failing_is_told_421_and_closed(start_daemon, users_file):
    """On loopback AUTH needs no STARTTLS (no certificate here); the failures count across connections."""
    daemon = start_daemon(smtp=f'auth_users_file = "{users_file}"\nauth_failures_per_ip_per_hour = 2')
    with RawSmtp(daemon.smtp_port) as first:
        assert any(line.startswith("250-AUTH") for line in first.command(b"EHLO mx.example.net\r\n"))
        assert first.command(plain(USER, WRONG))[-1].startswith("535 5.7.8")
        assert first.command(plain("nobody", PASSWORD))[-1].startswith("535 5.7.8")     # an unknown user too
        assert first.command(plain(USER, PASSWORD)) == ["421 4.7.0 Too many failed authentications, try again later"]
        assert first.replies_until_closed() == []
    with RawSmtp(daemon.smtp_port) as second:                                           # a new connection
        second.command(b"EHLO mx.example.net\r\n")
        assert code(second.command(plain(USER, PASSWORD))) == 421
    assert daemon.rejected("auth_throttled") == 2
    assert daemon.metric('emergencyd_smtp_auth_total{result="failure"}') == 2
    assert daemon.metric('emergencyd_smtp_auth_total{result="success"}') == 0
    assert_no_password_logged(daemon)


def test_auth_is_refused_before_starttls_to_a_client_beyond_loopback(start_daemon, ca, users_file, tls_files):
    """A PROXY header makes the client 198.51.100.20, not loopback: AUTH waits for STARTTLS."""
    daemon = start_daemon(smtp=f'{tls_files}\nauth_users_file = "{users_file}"\nproxy_protocol = true\n'
                               'proxy_trusted_networks = ["127.0.0.1/32"]')
    with RawSmtp(daemon.smtp_port, proxy=proxy_v2("198.51.100.20", 41000)) as client:
        assert code(client.greeting) == 220
        assert not any("AUTH" in line for line in client.command(b"EHLO mx.example.net\r\n"))
        assert client.command(plain(USER, PASSWORD))[-1].startswith("538 5.7.11")
        client.starttls(ca.client_ssl_context())
        assert any(line.startswith("250-AUTH") for line in client.command(b"EHLO mx.example.net\r\n"))
        assert client.command(plain(USER, PASSWORD)) == ["235 2.7.0 Authentication successful"]
        client.start_data()
        assert code(client.command(make_message() + b".\r\n")) == 250
    [message] = envelopes(daemon)
    assert message["tls"] is True
    assert message["peer"] == "198.51.100.20:41000"       # the proxied client, after STARTTLS too
    authenticated = [r for r in log_records(daemon.log_text()) if r["event"] == "smtp authenticated"]
    assert [r["peer"] for r in authenticated] == ["198.51.100.20:41000"]


# -- PROXY ----------------------------------------------------------------------------------------

PROXY_ON = 'proxy_protocol = true\nproxy_trusted_networks = ["127.0.0.1/32"]\n'


def test_per_address_limits_and_exemptions_apply_to_the_proxied_source(start_daemon):
    daemon = start_daemon(smtp=PROXY_ON + "max_connections_per_ip = 1\nmessages_per_ip_per_minute = 1\n"
                                          'limit_exempt_networks = ["203.0.113.0/24"]')
    held = RawSmtp(daemon.smtp_port, proxy=proxy_v1("198.51.100.7", 40001))
    assert code(held.greeting) == 220
    with RawSmtp(daemon.smtp_port, proxy=proxy_v2("198.51.100.7", 40002)) as same_source:
        assert same_source.greeting == ["421 4.7.0 Too many connections from your address, try again later"]
    with RawSmtp(daemon.smtp_port, proxy=proxy_v2("198.51.100.8", 40003)) as other_source:   # its own count
        assert code(other_source.greeting) == 220
        other_source.start_data(sender="a@tenant.example")
        assert code(other_source.command(make_message(message_id="<p1@tenant.example>") + b".\r\n")) == 250
        assert other_source.command(b"MAIL FROM:<b@tenant.example>\r\n")[-1].startswith("451 4.7.1")
    exempt = [RawSmtp(daemon.smtp_port, proxy=proxy_v1("203.0.113.5", 40010 + i)) for i in range(2)]
    for index, client in enumerate(exempt):                  # two connections, two messages: no limit
        assert code(client.greeting) == 220
        client.start_data(sender=f"relay{index}@tenant.example")
        assert code(client.command(make_message(message_id=f"<e{index}@tenant.example>") + b".\r\n")) == 250
        client.close()
    held.close()
    peers = sorted(e["peer"] for e in envelopes(daemon))
    assert peers == ["198.51.100.8:40003", "203.0.113.5:40010", "203.0.113.5:40011"]
    assert daemon.rejected("too_many_connections_per_ip") == 1 and daemon.rejected("rate_limited_ip") == 1
    refusals = {(r.get("reason"), r.get("peer")) for r in log_records(daemon.log_text())}
    assert ("too_many_connections_per_ip", "198.51.100.7:40002") in refusals
    assert ("rate_limited_ip", "198.51.100.8:40003") in refusals


def test_a_missing_or_malformed_header_or_an_untrusted_peer_is_dropped(start_daemon):
    daemon = start_daemon(smtp=PROXY_ON)
    for bad in (b"EHLO mx.example.net\r\n",                               # no header at all
                b"PROXY TCP4 198.51.100.7 not-an-address 40001 25\r\n",    # v1, malformed
                proxy_v2("198.51.100.7", 40001, version_command=0x11)):    # v2, version 1: not a thing
        with RawSmtp(daemon.smtp_port, proxy=bad) as client:
            assert client.greeting == [] and client.replies_until_closed() == []
    # 127.0.0.2 is no trusted balancer. It sends nothing: a header left unread would turn the close into a reset.
    with RawSmtp(daemon.smtp_port, source="127.0.0.2") as client:
        assert client.greeting == []
    with RawSmtp(daemon.smtp_port, proxy=proxy_v1("198.51.100.7", 40001)) as client:   # the real thing still works
        assert code(client.greeting) == 220
    daemon.wait_for(lambda: daemon.rejected("proxy_invalid") == 3, what="three invalid headers counted")
    assert daemon.rejected("proxy_untrusted") == 1
    dropped = [r for r in log_records(daemon.log_text()) if r["event"] == "smtp connection closed"]
    assert [r["reason"] for r in dropped].count("proxy_invalid") == 3
    assert [r["peer"].split(":")[0] for r in dropped if r["reason"] == "proxy_untrusted"] == ["127.0.0.2"]


# -- config ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("smtp, error", [
    ("auth_required = true", "smtp.auth_required: needs smtp.auth_users_file"),
    ("proxy_protocol = true", "smtp.proxy_trusted_networks: name the load balancers"),
    ('proxy_protocol = true\nproxy_trusted_networks = ["lb.example"]', "'lb.example' is not an address"),
    ('listen = "0.0.0.0:25"\nauth_users_file = "USERS"', "AUTH on a non-loopback listener needs STARTTLS"),
    ('auth_users_file = "BAD"', "line 2: expected USER:$scrypt$"),
])
def test_auth_and_proxy_settings_are_validated(tmp_path, users_file, smtp, error):
    bad = tmp_path / "bad-users"
    bad.write_text(f"{users_file.read_text().splitlines()[1]}\nops:plaintext-password\n")
    smtp = smtp.replace("USERS", str(users_file)).replace("BAD", str(bad))
    config = write_config(tmp_path, dry_run=True, smtp=smtp)
    if smtp.startswith("listen"):        # the test config's own listen line comes first: replace it
        config.write_text(config.read_text().replace('listen = "127.0.0.1:0"\n', "", 1))
    with pytest.raises(ConfigError) as refused:
        load_config(config)
    assert error in str(refused.value)
    stored_hash = users_file.read_text().splitlines()[1].split(":", 1)[1]
    assert "plaintext-password" not in str(refused.value) and stored_hash not in str(refused.value)
