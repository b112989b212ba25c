"""STARTTLS on the SMTP listener, through real clients (smtplib, swaks), and the certificate's expiry metric."""
from __future__ import annotations

import smtplib
import subprocess

import pytest
from cryptography import x509

from tests.harness import RECIPIENT, make_message, require_tool


@pytest.fixture
def tls_files(ca, tmp_path):
    cert, key = tmp_path / "smtp-cert.pem", tmp_path / "smtp-key.pem"
    ca.write_server_pem(cert, key)
    return cert, key


def smtp_tls(cert, key, *, require: bool = False) -> str:
    return f'tls_cert_file = "{cert}"\ntls_key_file = "{key}"\nrequire_starttls = {str(require).lower()}'


def test_starttls_is_offered_and_the_envelope_records_it(start_daemon, ca, tls_files):
    daemon = start_daemon(smtp=smtp_tls(*tls_files))
    with smtplib.SMTP("127.0.0.1", daemon.smtp_port, timeout=10) as client:
        client.ehlo("mx.example.net")
        assert client.has_extn("starttls")
        client.starttls(context=ca.client_ssl_context())
        client.ehlo("mx.example.net")
        client.sendmail("tenant@example.net", [RECIPIENT], make_message())
    [message] = daemon.wait_settled(1)["messages"]
    assert message["tls"] is True


def test_required_starttls_refuses_mail_in_clear(start_daemon, ca, tls_files):
    daemon = start_daemon(smtp=smtp_tls(*tls_files, require=True))
    with smtplib.SMTP("127.0.0.1", daemon.smtp_port, timeout=10) as client:
        client.ehlo("mx.example.net")
        code, reply = client.mail("tenant@example.net")
        assert code == 530 and b"STARTTLS" in reply
    with smtplib.SMTP("127.0.0.1", daemon.smtp_port, timeout=10) as client:
        client.starttls(context=ca.client_ssl_context())
        assert client.sendmail("tenant@example.net", [RECIPIENT], make_message()) == {}
    assert daemon.wait_settled(1)["messages"][0]["tls"] is True


def test_swaks_delivers_over_starttls(start_daemon, tls_files, ca, tmp_path):
    swaks = require_tool("swaks")
    daemon = start_daemon(smtp=smtp_tls(*tls_files, require=True))
    ca_file = ca.write_ca_pem(tmp_path)
    result = subprocess.run(
        [swaks, "--server", f"127.0.0.1:{daemon.smtp_port}", "--tls", "--tls-verify", "--tls-ca-path", str(ca_file),
         "--to", RECIPIENT, "--from", "ops@tenant.example", "--header", "Subject: API down over TLS",
         "--body", "cf push fails: 503 from api"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "250 2.0.0 OK: queued as" in result.stdout
    assert daemon.wait_settled(1)["messages"][0]["tls"] is True


def test_certificate_expiry_is_a_metric(start_daemon, tls_files):
    daemon = start_daemon(smtp=smtp_tls(*tls_files))
    cert_path = tls_files[0]
    not_after = min(c.not_valid_after_utc.timestamp()
                    for c in x509.load_pem_x509_certificates(cert_path.read_bytes()))
    metrics = daemon.http_get("/metrics")[1]
    line = next(line for line in metrics.splitlines()
                if line.startswith('emergencyd_tls_certificate_expiry_timestamp_seconds{') and
                'role="smtp_certificate"' in line)
    assert float(line.rsplit(" ", 1)[1]) == not_after
    assert f'file="{cert_path}"' in line


def test_a_key_that_does_not_match_stops_the_start_with_a_clear_error(start_daemon, ca, tls_files, tmp_path):
    from tests.fakes.tls import TestCA
    other_cert, other_key = tmp_path / "other-cert.pem", tmp_path / "other-key.pem"
    TestCA().write_server_pem(other_cert, other_key)
    with pytest.raises(RuntimeError) as failed:
        start_daemon(smtp=smtp_tls(tls_files[0], other_key))
    assert "cannot load the SMTP certificate" in str(failed.value)
