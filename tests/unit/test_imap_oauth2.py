"""IMAP OAuth 2.0 without a server: the SASL strings, the challenge, the mechanism, the settings and the
providers' error answers (the logins themselves are in tests/e2e/test_imap_oauth2.py)."""
import base64
import json
from pathlib import Path

import pytest

from emergencyd.daemon.config.model import ConfigError, load_config
from emergencyd.daemon.ingest.imap_sasl import choose_mechanism, describe_challenge, initial_response
from emergencyd.daemon.ingest.oauth2_settings import Grant, ImapAuth, Provider, SaslMechanism
from emergencyd.daemon.ingest.oauth2_tokens import TokenProblem, describe, problem_of

IMAP = "[smtp]\nenabled = false\n[imap]\nenabled = true\nhost = 'imap.example.org'\nusername = 'sos@example.org'\n"
KEY = {"type": "service_account", "client_email": "e@p.iam.gserviceaccount.com", "private_key": "-----BEGIN",
       "token_uri": "https://oauth2.googleapis.com/token"}


def test_xoauth2_and_oauthbearer_strings():
    """Google's and Microsoft's documented XOAUTH2 string; RFC 7628's GS2 header, with ',' and '=' escaped."""
    assert base64.b64decode(initial_response(SaslMechanism.XOAUTH2, "sos@example.org", "ya29.t")) == \
        b"user=sos@example.org\x01auth=Bearer ya29.t\x01\x01"
    assert base64.b64decode(initial_response(SaslMechanism.OAUTHBEARER, "a,b=c@example.org", "t")) == \
        b"n,a=a=2Cb=3Dc@example.org,\x01auth=Bearer t\x01\x01"


@pytest.mark.parametrize(("offered", "wanted", "chosen"), [
    ({"IMAP4rev1", "AUTH=PLAIN", "AUTH=XOAUTH2", "AUTH=OAUTHBEARER"}, SaslMechanism.AUTO, SaslMechanism.XOAUTH2),
    ({"IMAP4rev1", "AUTH=OAUTHBEARER"}, SaslMechanism.AUTO, SaslMechanism.OAUTHBEARER),
    ({"IMAP4rev1", "AUTH=XOAUTH2", "AUTH=OAUTHBEARER"}, SaslMechanism.OAUTHBEARER, SaslMechanism.OAUTHBEARER),
    ({"IMAP4rev1", "AUTH=PLAIN"}, SaslMechanism.AUTO, None),
    ({"IMAP4rev1", "AUTH=XOAUTH2"}, SaslMechanism.OAUTHBEARER, None),
])
def test_the_mechanism_is_one_the_server_offers(offered, wanted, chosen):
    assert choose_mechanism(offered, wanted) is chosen


def test_a_challenge_is_shown_readable():
    gmail = base64.b64encode(b'{"status":"400","schemes":"Bearer","scope":"https://mail.google.com/"}')
    assert describe_challenge(gmail) == "status 400, schemes Bearer, scope https://mail.google.com/"
    assert describe_challenge(b"not base64 !") == "not base64 !"


@pytest.mark.parametrize(("answer", "problem"), [
    ({"error": "invalid_grant", "error_description": "Token has been expired or revoked."}, TokenProblem.GRANT),
    ({"error": "unauthorized_client"}, TokenProblem.SCOPE),
    ({"error": "invalid_scope"}, TokenProblem.SCOPE),
    ({"error": "invalid_client"}, TokenProblem.CLIENT),
    ({"error": "temporarily_unavailable"}, TokenProblem.UNREACHABLE),
    ({}, TokenProblem.UNREACHABLE),
    ({"error": "something_new"}, TokenProblem.GRANT),     # unknown: a person looks, rather than a tight loop
])
def test_the_providers_errors_say_who_must_act(answer, problem):
    assert problem_of(answer) is problem
    assert problem.needs_a_person is (problem is not TokenProblem.UNREACHABLE)


def test_entra_ids_trace_lines_are_left_out():
    answer = {"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret provided.\r\n"
              "Trace ID: 1\r\nCorrelation ID: 2"}
    assert describe(answer) == "invalid_client: AADSTS7000215: Invalid client secret provided."


def load(tmp_path: Path, oauth2: str, environ: dict[str, str] | None = None):
    path = tmp_path / "config.toml"
    path.write_text(IMAP + "auth = 'oauth2'\n[imap.oauth2]\n" + oauth2)
    return load_config(path, environ=environ or {})


def test_settings_of_each_provider(tmp_path):
    key = json.dumps(KEY)
    google = load(tmp_path, "provider = 'google'\n", {"EMERGENCYD_IMAP_OAUTH2_SERVICE_ACCOUNT": key}).imap
    assert google.auth is ImapAuth.OAUTH2 and google.password is None
    assert (google.oauth2.provider, google.oauth2.grant) == (Provider.GOOGLE, Grant.SERVICE_ACCOUNT)
    assert google.oauth2.scopes == ("https://mail.google.com/",) and key not in repr(google)
    microsoft = load(tmp_path, "provider = 'microsoft'\ntenant = 'contoso.onmicrosoft.com'\nclient_id = 'app'\n",
                     {"EMERGENCYD_IMAP_OAUTH2_CLIENT_SECRET": "s3"}).imap.oauth2
    assert microsoft.grant is Grant.CLIENT_CREDENTIALS
    assert microsoft.scopes == ("https://outlook.office365.com/.default",)
    assert microsoft.authority == "https://login.microsoftonline.com"
    delegated = load(tmp_path, "provider = 'microsoft'\ngrant = 'refresh_token'\ntenant = 't'\nclient_id = 'app'\n",
                     {"EMERGENCYD_IMAP_OAUTH2_REFRESH_TOKEN": "r"}).imap.oauth2
    assert delegated.scopes == ("https://outlook.office.com/IMAP.AccessAsUser.All",)


@pytest.mark.parametrize(("oauth2", "environ", "message"), [
    ("", {}, "imap.oauth2.provider: required with imap.auth = \"oauth2\""),
    ("provider = 'yahoo'\n", {}, "imap.oauth2.provider: expected one of google, microsoft, generic"),
    ("provider = 'google'\ngrant = 'client_credentials'\n", {}, "expected one of service_account, refresh_token"),
    ("provider = 'google'\n", {}, "service_account is required (EMERGENCYD_IMAP_OAUTH2_SERVICE_ACCOUNT"),
    ("provider = 'google'\n", {"EMERGENCYD_IMAP_OAUTH2_SERVICE_ACCOUNT": "{not json"}, "not JSON"),
    ("provider = 'google'\n", {"EMERGENCYD_IMAP_OAUTH2_SERVICE_ACCOUNT": json.dumps({**KEY, "type": "user"})},
     "not a service account key"),
    ("provider = 'microsoft'\nclient_id = 'app'\n", {}, "tenant is required"),
    ("provider = 'microsoft'\ntenant = 't'\n", {}, "client_id is required"),
    ("provider = 'generic'\nclient_id = 'app'\n", {}, "token_url is required"),
    ("provider = 'generic'\nclient_id = 'a'\ntoken_url = 'http://idp.example.org/token'\n", {}, "must be an https://"),
    ("provider = 'microsoft'\ntenant = 't'\nclient_id = 'app'\nmechanism = 'plain'\n",
     {"EMERGENCYD_IMAP_OAUTH2_CLIENT_SECRET": "s"}, "imap.oauth2.mechanism: expected one of auto, xoauth2"),
    ("provider = 'microsoft'\ntenant = 't'\nclient_id = 'app'\nclient_secrte_file = 'x'\n",
     {"EMERGENCYD_IMAP_OAUTH2_CLIENT_SECRET": "s"}, "imap.oauth2.client_secrte_file: unknown key"),
])
def test_settings_errors_name_the_key(tmp_path, oauth2, environ, message):
    with pytest.raises(ConfigError, match=None) as raised:
        load(tmp_path, oauth2, environ)
    assert message in str(raised.value)
