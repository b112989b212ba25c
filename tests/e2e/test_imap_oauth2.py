"""IMAP with OAuth 2.0, end to end: the real daemon logs in to a real Dovecot with SASL XOAUTH2 or OAUTHBEARER.

The tokens come from HTTPS fakes of Google's and Microsoft's token endpoints (tests/fakes/oauth2.py), reached
through the real google-auth and msal; Dovecot's oauth2 passdb asks the test's introspection endpoint whether
each token is good (tests/dovecot.py). Tokens may be made to live a few seconds, be revoked, or their grant
withdrawn, as the providers do.
"""
from __future__ import annotations

import time

import pytest

from tests.e2e.test_imap import ERRORS, FETCHED, IDLE_ACTIVE, mail, readiness, wait_connected, wait_metric
from tests.harness import oauth2_imap, run_cli

TOKEN_FETCHES = "emergencyd_imap_oauth2_token_fetches_total"
TOKEN_EXPIRY = "emergencyd_imap_oauth2_token_expiry_timestamp_seconds"
GRANTS = [("google", "service_account"), ("google", "refresh_token"), ("microsoft", "client_credentials"),
          ("microsoft", "refresh_token"), ("generic", "refresh_token")]


def xoauth_logins(dovecot) -> list[str]:
    """Dovecot's lines for logins with a token (the test's own client logs in with PLAIN)."""
    return [line for line in dovecot.log_text().splitlines() if "Login: user=<" in line and "method=PLAIN" not in line]


@pytest.mark.parametrize(("provider", "grant"), GRANTS)
def test_each_grant_logs_in_and_the_mail_is_taken(tmp_path, oauth_dovecot, identity, start_daemon, ca_file,
                                                  provider, grant):
    daemon = start_daemon(imap=oauth2_imap(oauth_dovecot, tmp_path, identity, provider, grant, ca_file))
    wait_connected(daemon, idle=True)
    oauth_dovecot.append(mail(f"{provider}-{grant}"))
    [message] = daemon.wait_settled(1)["messages"]
    assert message["source"] == "imap"
    assert daemon.metric(TOKEN_FETCHES, outcome="ok") == 1
    assert daemon.metric(TOKEN_EXPIRY) > time.time() + 3000
    [token] = identity.tokens()
    assert identity.introspection.asked == [token]         # Dovecot checked the very token the fake issued
    [login] = xoauth_logins(oauth_dovecot)
    assert "method=XOAUTH2" in login, login                 # offered first, and what both providers document
    status, checks = readiness(daemon)
    assert status == 200 and checks["imap"] == "ok", checks


def test_oauthbearer_when_asked_for(tmp_path, oauth_dovecot, identity, start_daemon, ca_file):
    daemon = start_daemon(imap=oauth2_imap(oauth_dovecot, tmp_path, identity, "microsoft", "client_credentials",
                                           ca_file, mechanism="oauthbearer"))
    wait_connected(daemon, idle=True)
    oauth_dovecot.append(mail("bearer"))
    daemon.wait_settled(1)
    [login] = xoauth_logins(oauth_dovecot)
    assert "method=OAUTHBEARER" in login, login


def test_a_token_is_renewed_before_it_expires_and_idle_goes_on(tmp_path, oauth_dovecot, identity, start_daemon,
                                                                ca_file):
    """Tokens that live 4 s: each session logs in again with a new one before its token expires, so no
    login meets an expired token, and mail appended throughout is taken by IDLE as before."""
    identity.token_seconds = 4
    daemon = start_daemon(imap=oauth2_imap(oauth_dovecot, tmp_path, identity, "google", "service_account", ca_file))
    wait_connected(daemon, idle=True)
    for n in range(10):
        oauth_dovecot.append(mail(f"renewal-{n}"))
        time.sleep(1.0)
    daemon.wait_settled(10, timeout=30)
    assert daemon.metric(FETCHED) == 10
    assert len(identity.tokens()) >= 3, identity.tokens()            # 10 s of 4 s tokens
    daemon.wait_for(lambda: daemon.metric(TOKEN_FETCHES, outcome="ok") == len(identity.tokens()),
                    what="every token the fake issued counted (a fetch may be under way)")
    assert len(xoauth_logins(oauth_dovecot)) >= 3
    assert "auth failed" not in oauth_dovecot.log_text()          # never an expired token at a login
    assert sum(daemon.metric(ERRORS, kind=kind) for kind in ("login", "token", "token_endpoint",
                                                              "connection_lost")) == 0
    assert [line for line in daemon.log_text().splitlines() if "logging in again with a new access token" in line]
    wait_metric(daemon, IDLE_ACTIVE, 1)


def test_a_token_revoked_by_the_provider_is_replaced_at_the_next_login(tmp_path, oauth_dovecot, identity,
                                                                       start_daemon, ca_file):
    daemon = start_daemon(imap=oauth2_imap(oauth_dovecot, tmp_path, identity, "microsoft", "client_credentials",
                                           ca_file))
    wait_connected(daemon, idle=True)
    identity.revoke_current_tokens()          # an admin revoked the app's sessions
    oauth_dovecot.restart()                   # the server drops the session: the next login meets the revocation
    oauth_dovecot.append(mail("after-revocation"))
    [message] = daemon.wait_settled(1, timeout=30)["messages"]
    assert message["message_id"] == "after-revocation@after-revocation.example"
    assert daemon.metric(TOKEN_FETCHES, outcome="ok") == 2
    assert daemon.metric(ERRORS, kind="login") == 0 and daemon.metric(ERRORS, kind="token") == 0
    assert [line for line in daemon.log_text().splitlines() if "refused the access token; fetching a new one" in line]
    wait_connected(daemon, idle=True)


@pytest.mark.parametrize(("provider", "grant", "withdrawn", "outcome", "words"), [
    ("google", "refresh_token", "grant_revoked", "grant", "Token has been expired or revoked"),
    ("google", "service_account", "scope_missing", "scope", "unauthorized_client"),
    ("microsoft", "client_credentials", "grant_revoked", "client", "AADSTS7000215"),
    ("microsoft", "refresh_token", "grant_revoked", "grant", "AADSTS700082"),
])
def test_a_withdrawn_grant_is_reported_not_ready_and_not_hammered(tmp_path, oauth_dovecot, identity, start_daemon,
                                                                  ca_file, provider, grant, withdrawn, outcome,
                                                                  words):
    setattr(identity, withdrawn, True)
    imap = oauth2_imap(oauth_dovecot, tmp_path, identity, provider, grant, ca_file, {"login_retry_seconds": 2})
    daemon = start_daemon(imap=imap)
    wait_metric(daemon, ERRORS, lambda v: v >= 1, kind="token")
    watched_from = time.monotonic()
    [line, *_] = [line for line in daemon.log_text().splitlines() if "imap has no access token" in line]
    assert words in line and outcome in line, line                 # the cause, and what to do, on one line
    status, checks = readiness(daemon)
    assert status == 503 and words in checks["imap"], checks
    assert daemon.metric(TOKEN_FETCHES, outcome=outcome) >= 1
    assert daemon.metric(TOKEN_FETCHES, outcome="ok") == 0
    # No hammering: reconnects are 0.2 to 1 s apart here, yet a refused grant is asked again after 2 s, then 4.
    time.sleep(max(0.0, watched_from + 3.5 - time.monotonic()))
    asked = len(identity.requests_matching(method="POST"))
    assert 1 <= asked <= 3, asked
    # Put right by the provider's admin: taken up at the next try, without a restart.
    setattr(identity, withdrawn, False)
    wait_connected(daemon, idle=True)
    status, checks = readiness(daemon)
    assert status == 200 and checks["imap"] == "ok", checks


def test_a_mailbox_that_refuses_a_new_token_is_reported(tmp_path, oauth_dovecot, identity, start_daemon, ca_file):
    """The token endpoint issues tokens, but the server refuses them: the account disabled, or the app not
    allowed on the mailbox. One fresh token is refused: a login failure at the login pace, not a token loop."""
    identity.disabled_users.add("alerts@example.com")       # what Dovecot's introspection now says
    imap = oauth2_imap(oauth_dovecot, tmp_path, identity, "microsoft", "client_credentials", ca_file,
                       {"login_retry_seconds": 5})
    daemon = start_daemon(imap=imap)
    wait_metric(daemon, ERRORS, lambda v: v >= 1, kind="login")
    [line] = [line for line in daemon.log_text().splitlines() if "imap refused the access token" in line]
    assert "mailbox may be disabled" in line and "status 401" in line, line   # Dovecot's challenge, decoded
    status, checks = readiness(daemon)
    assert status == 503 and "refused a new access token" in checks["imap"], checks
    assert daemon.metric(TOKEN_FETCHES, outcome="ok") == 1       # new, so not fetched again at once


def test_check_config_asks_for_a_token_unless_offline(tmp_path, identity, ca_file, oauth_dovecot):
    from tests.harness import write_config
    config = write_config(tmp_path, dry_run=True, imap=oauth2_imap(oauth_dovecot, tmp_path, identity, "google",
                                                                   "service_account", ca_file))
    checked = run_cli(config, "check-config")
    assert "imap OAuth 2.0 (google service_account): a token was issued for alerts@example.com" in checked.stdout
    [token] = identity.tokens()
    assert token not in checked.stdout + checked.stderr
    offline = run_cli(config, "check-config", "--offline")
    assert "no token asked for (--offline)" in offline.stdout and len(identity.tokens()) == 1
    identity.scope_missing = True
    refused = run_cli(config, "check-config", check=False)
    assert refused.returncode == 1
    assert "no access token (scope: unauthorized_client" in refused.stderr and "delegation" in refused.stderr


def test_a_server_without_sasl_ir_is_sent_the_token_when_it_asks(tmp_path, oauth_dovecot, identity, start_daemon,
                                                                  ca_file):
    """Without SASL-IR the token may not ride on the AUTHENTICATE line: it goes when the server asks ("+ ")."""
    oauth_dovecot.leave_out_capability("SASL-IR")
    assert "SASL-IR" not in oauth_dovecot.capabilities()
    daemon = start_daemon(imap=oauth2_imap(oauth_dovecot, tmp_path, identity, "google", "refresh_token", ca_file))
    wait_connected(daemon, idle=True)
    oauth_dovecot.append(mail("no-sasl-ir"))
    daemon.wait_settled(1)
    [login] = xoauth_logins(oauth_dovecot)
    assert "method=XOAUTH2" in login, login


def test_a_token_endpoint_outage_leaves_the_session_up_while_its_token_lasts(tmp_path, oauth_dovecot, identity,
                                                                             start_daemon, ca_file):
    """The renewal fails (the provider down): the logged-in session goes on and takes mail; once its token has
    expired it ends, and without a token the mailbox is not ready; when the provider is back, it logs in again."""
    identity.token_seconds = 6
    daemon = start_daemon(imap=oauth2_imap(oauth_dovecot, tmp_path, identity, "microsoft", "client_credentials",
                                           ca_file))
    wait_connected(daemon, idle=True)
    identity.set_down(True)                                  # 503 to everything
    daemon.wait_for(lambda: "could not renew its access token" in daemon.log_text(), timeout=15,
                    what="a failed renewal")
    assert daemon.metric("emergencyd_imap_connected") == 1
    oauth_dovecot.append(mail("during-outage"))              # the session still takes mail
    daemon.wait_settled(1, timeout=15)
    wait_metric(daemon, ERRORS, lambda v: v >= 1, kind="token_endpoint", timeout=20)   # the token has run out
    status, checks = readiness(daemon)
    assert status == 503 and "token endpoint" in checks["imap"], checks
    assert daemon.metric(TOKEN_FETCHES, outcome="unreachable") >= 1
    identity.set_down(False)
    wait_connected(daemon, idle=True)
    oauth_dovecot.append(mail("after-outage"))
    daemon.wait_settled(2, timeout=15)


def test_check_config_names_a_tenant_that_is_not_there(tmp_path, identity, ca_file, oauth_dovecot):
    from tests.harness import write_config
    imap = oauth2_imap(oauth_dovecot, tmp_path, identity, "microsoft", "client_credentials", ca_file)
    config = write_config(tmp_path, dry_run=True, imap=imap.replace('tenant = "contoso', 'tenant = "typo-contoso'))
    refused = run_cli(config, "check-config", check=False)
    assert refused.returncode == 1
    assert "no access token (client: the tenant or authority: Unable to get authority configuration for " \
        f"{identity.url}/typo-contoso.onmicrosoft.com" in refused.stderr
