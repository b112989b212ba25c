"""No secret in a whole run's output: logs, `status`, metrics, health, the CLI, and the errors.

One daemon holds every kind of secret at once: the Zendesk token, the PagerDuty routing key and
REST token, the IMAP password, the SMTP AUTH users file and the fallback relay's password. The run
goes through the paths where a secret could leak: refused logins both ways, rejected API calls,
an outage that sends the fallback alert, a config error. Then everything it printed is searched
for each secret, and for the encodings a careless log line would use.
"""
import base64
import json
import smtplib
import subprocess
import sys
from urllib.parse import quote

from emergencyd.escalation.records import DONE, FAILED
from tests.fakes.smtp_relay import FakeRelay
from tests.harness import (
    API_TOKEN,
    ROOT,
    ROUTING_KEY,
    ZENDESK_TOKEN,
    imap_table,
    live_env,
    make_message,
    run_cli,
)

SMTP_USER, SMTP_PASSWORD, SMTP_WRONG = "relay", "smtp-pass-4b8c1e", "smtp-wrong-90aa3f"
RELAY_PASSWORD = "relay-pass-e3f7a2"
IMAP_WRONG = "imap-wrong-51c9d0"


def users_file(tmp_path):
    made = subprocess.run([sys.executable, "-m", "emergencyd.daemon.cli", "hash-password", SMTP_USER],
                          input=SMTP_PASSWORD + "\n", cwd=ROOT, capture_output=True, text=True, timeout=30,
                          check=True)
    path = tmp_path / "smtp-users"
    path.write_text(made.stdout)
    return path, made.stdout.split(":", 1)[1].strip()


def fallback_table(relay: FakeRelay, ca_file) -> str:
    return (f'[fallback]\nenabled = true\nrelay = "{relay.address}"\nca_file = "{ca_file}"\n'
            f'username = "emergencyd"\nfrom_address = "emergencyd@example.org"\n'
            f'to = ["oncall@example.org"]\nafter_seconds = 1\n')


def leaked_forms(secret: str) -> list[str]:
    """The secret, and how it would look base64'd (AUTH PLAIN, Basic auth) or URL-quoted."""
    return [secret, base64.b64encode(secret.encode()).decode().rstrip("="), quote(secret, safe="")]


def test_a_whole_run_prints_no_secret(tmp_path, live_daemon, zendesk, pagerduty, dovecot, ca, ca_file):
    users, stored_hash = users_file(tmp_path)
    dovecot.set_login_throttling(False)        # a wrong IMAP password is refused at once
    zendesk.inject_status(401, path=r"/api/v2/tickets\.json", method="POST")   # a refused token, then accepted
    pagerduty.inject_status(400, path="/v2/enqueue")                            # a refused routing key ...
    pagerduty.set_down(True)                                                     # ... then an outage: fallback
    with FakeRelay(ca=ca, username="emergencyd", password=RELAY_PASSWORD) as relay:
        relay.inject_reply("451 4.3.0 Try again later")     # the relay defers once: a retry logs in again
        daemon = live_daemon(smtp=f'auth_users_file = "{users}"',
                             imap=imap_table(dovecot, tmp_path),
                             extra=fallback_table(relay, ca_file),
                             env={**live_env(), "EMERGENCYD_FALLBACK_PASSWORD": RELAY_PASSWORD})
        with smtplib.SMTP("127.0.0.1", daemon.smtp_port, timeout=10) as client:
            try:
                client.login(SMTP_USER, SMTP_WRONG)
            except smtplib.SMTPAuthenticationError as refused:
                assert refused.smtp_code == 535
            client.login(SMTP_USER, SMTP_PASSWORD)
            client.sendmail("tenant@example.net", ["emergency@example.org"], make_message())
        dovecot.deliver(make_message(message_id="<by-imap@example.net>", subject="Database down"))
        relay.wait_for(1, timeout=30)
        pagerduty.set_down(False)
        doc = daemon.wait_settled(2, timeout=40)
    assert {m["state"] for m in doc["messages"]} <= {DONE, FAILED}

    # A config that cannot load says which key, never the value it read.
    bad = tmp_path / "bad.toml"
    bad.write_text(daemon.config.read_text().replace(f'auth_users_file = "{users}"',
                                                     f'auth_users_file = "{tmp_path / "nope"}"'))
    refused = run_cli(bad, "check-config", env=daemon.env, check=False)
    assert refused.returncode != 0
    wrong_imap = tmp_path / "imap-password"
    wrong_imap.write_text(IMAP_WRONG + "\n")      # the next start logs a refused IMAP login
    daemon.stop()
    daemon.start()
    daemon.wait_for(lambda: 'emergencyd_imap_errors_total{kind="login"} 0.0' not in daemon.http_get("/metrics")[1],
                    what="the refused IMAP login")

    assert "login_data is deprecated" not in daemon.log_text()
    output = "\n".join([
        daemon.log_text(), daemon.cli("status").stdout, daemon.cli("status", "--json").stdout,
        daemon.http_get("/metrics")[1], daemon.http_get("/readyz")[1], refused.stdout, refused.stderr,
        daemon.cli("check-config").stdout, daemon.cli("classify", str(write_mail(tmp_path))).stdout,
    ])
    secrets = [ZENDESK_TOKEN, ROUTING_KEY, API_TOKEN, dovecot.password, IMAP_WRONG, SMTP_PASSWORD, SMTP_WRONG,
               stored_hash, RELAY_PASSWORD]
    for secret in secrets:
        for form in leaked_forms(secret):
            assert form not in output, f"a secret leaked: {secret!r} as {form!r}"
    # The search would find a leak: the run did reach each place a secret could be printed.
    for sign in ("smtp authentication failed", "fallback alert sent", "HTTP 401", "HTTP 400", "imap login refused"):
        assert sign in output, sign

    # What went out: every body sent to Zendesk and PagerDuty (the routing key belongs in an event's
    # routing_key field, and nowhere else), the fallback mail, and the store's own bytes.
    outbound = [r.body for r in zendesk.requests] + [
        json.dumps({k: v for k, v in r.json.items() if k != "routing_key"}).encode() if isinstance(r.json, dict)
        else r.body for r in pagerduty.requests]
    outbound += [mail.content for mail in relay.accepted()]
    store = daemon.config.parent / "var" / "store.sqlite3"
    outbound += [path.read_bytes() for path in (store, store.with_name(store.name + "-wal")) if path.exists()]
    assert zendesk.requests and pagerduty.requests and relay.accepted() and store.exists()
    assert any(b"Apps down" in body for body in outbound)      # the search reads what the run sent and kept
    for secret in secrets:
        for form in leaked_forms(secret):
            assert not [body[:80] for body in outbound if form.encode() in body], f"{secret!r} went out as {form!r}"


def write_mail(tmp_path):
    path = tmp_path / "mail.eml"
    path.write_bytes(make_message(message_id="<classify@example.net>"))
    return path


def test_oauth2_tokens_and_grants_are_never_printed(tmp_path, start_daemon, identity, oauth_dovecot, ca_file):
    """IMAP with OAuth 2.0 (a Microsoft refresh token, which the provider rotates): tokens that live 3 s, so
    several are fetched; one revoked and replaced at a login; then the grant withdrawn. Neither a token nor a
    refresh token nor the client secret is in the logs, `status`, `check-config`, /metrics or /readyz, as
    itself or inside a SASL string."""
    from emergencyd.daemon.ingest.imap_sasl import initial_response
    from emergencyd.daemon.ingest.oauth2_settings import SaslMechanism
    from tests.fakes.oauth2 import CLIENT_SECRET
    from tests.harness import oauth2_imap
    identity.token_seconds = 3
    imap = oauth2_imap(oauth_dovecot, tmp_path, identity, "microsoft", "refresh_token", ca_file)
    secret_file = tmp_path / "oauth2-client-secret"
    secret_file.write_text(CLIENT_SECRET)
    daemon = start_daemon(imap=imap + f'\nclient_secret_file = "{secret_file}"')
    daemon.wait_for(lambda: len(identity.tokens()) >= 3, timeout=20, what="three tokens")
    identity.revoke_current_tokens()
    oauth_dovecot.restart()
    daemon.wait_for(lambda: "fetching a new one" in daemon.log_text(), what="the revoked token replaced")
    checked = daemon.cli("check-config")
    identity.grant_revoked = True
    daemon.wait_for(lambda: "imap has no access token" in daemon.log_text(), timeout=20, what="the withdrawn grant")
    refused = daemon.cli("check-config", check=False)

    output = "\n".join([
        daemon.log_text(), daemon.cli("status").stdout, daemon.cli("status", "--json").stdout,
        daemon.http_get("/metrics")[1], daemon.http_get("/readyz")[1], checked.stdout, checked.stderr,
        refused.stdout, refused.stderr])
    secrets = [*identity.tokens(), *identity.refresh_tokens, CLIENT_SECRET]
    assert len(identity.refresh_tokens) >= 3              # rotated, and each rotation searched for too
    for secret in secrets:
        forms = leaked_forms(secret) + [initial_response(mechanism, "alerts@example.com", secret)
                                        for mechanism in (SaslMechanism.XOAUTH2, SaslMechanism.OAUTHBEARER)]
        for form in forms:
            assert form not in output, f"a secret leaked: {secret!r} as {form!r}"
    for sign in ("imap fetched an access token", "AADSTS700082", "a token was issued", "refused the access token"):
        assert sign in output, sign
