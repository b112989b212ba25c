"""The [imap.oauth2] settings: where the IMAP session's access tokens come from, read and validated.

Exchange Online takes only OAuth 2.0 for IMAP, and Google Workspace steers IMAP clients to it. A grant is one
of the providers' documented ways for a daemon to get tokens without a person at a browser:
- Google, service_account: a service account with domain-wide delegation, impersonating the mailbox;
- Google, refresh_token: an installed app's refresh token, from a one-time consent;
- Microsoft, client_credentials: an app registration with IMAP.AccessAsApp, allowed on the mailbox;
- Microsoft, refresh_token: a delegated refresh token (IMAP.AccessAsUser.All);
- generic, refresh_token: any RFC 6749 token endpoint.
docs/imap.md walks through each provider's set-up.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from emergencyd.daemon.config.reader import ConfigError, Secret, is_loopback

if TYPE_CHECKING:
    from emergencyd.daemon.config.reader import ConfigReader


class ImapAuth(StrEnum):
    PASSWORD = "password"     # LOGIN with [imap] password_file / EMERGENCYD_IMAP_PASSWORD
    OAUTH2 = "oauth2"         # SASL XOAUTH2 or OAUTHBEARER with an access token from [imap.oauth2]


class Provider(StrEnum):
    GOOGLE = "google"
    MICROSOFT = "microsoft"
    GENERIC = "generic"


class Grant(StrEnum):
    SERVICE_ACCOUNT = "service_account"
    CLIENT_CREDENTIALS = "client_credentials"
    REFRESH_TOKEN = "refresh_token"


class SaslMechanism(StrEnum):
    AUTO = "auto"              # XOAUTH2 when the server offers it (both providers document it), else OAUTHBEARER
    XOAUTH2 = "xoauth2"
    OAUTHBEARER = "oauthbearer"


GRANTS = {
    Provider.GOOGLE: (Grant.SERVICE_ACCOUNT, Grant.REFRESH_TOKEN),
    Provider.MICROSOFT: (Grant.CLIENT_CREDENTIALS, Grant.REFRESH_TOKEN),
    Provider.GENERIC: (Grant.REFRESH_TOKEN,),
}
GOOGLE_TOKEN_URL = "https://oauth2.googleapis.com/token"
GOOGLE_SCOPE = "https://mail.google.com/"
MICROSOFT_AUTHORITY = "https://login.microsoftonline.com"
MICROSOFT_APP_SCOPE = "https://outlook.office365.com/.default"                 # client credentials
MICROSOFT_USER_SCOPE = "https://outlook.office.com/IMAP.AccessAsUser.All"      # a delegated refresh token
SERVICE_ACCOUNT_FIELDS = ("type", "client_email", "private_key", "token_uri")

_SECRETS = {   # key of the file, environment variable
    "client_secret": ("imap.oauth2.client_secret_file", "EMERGENCYD_IMAP_OAUTH2_CLIENT_SECRET"),
    "refresh_token": ("imap.oauth2.refresh_token_file", "EMERGENCYD_IMAP_OAUTH2_REFRESH_TOKEN"),
    "service_account": ("imap.oauth2.service_account_file", "EMERGENCYD_IMAP_OAUTH2_SERVICE_ACCOUNT"),
}


@dataclass(frozen=True)
class OAuth2Config:
    provider: Provider
    grant: Grant
    client_id: str                       # empty for a service account: its key names it
    tenant: str                          # Microsoft's directory (tenant id or domain)
    token_url: str                       # generic: required; Google: instead of the key's or the public one
    authority: str                       # Microsoft's login host (national clouds differ)
    scope: str                           # empty: the provider's IMAP scope
    mechanism: SaslMechanism
    ca_file: Path | None                 # trusted for the token endpoint, on top of the public CAs' bundle
    timeout_seconds: float               # one token request
    client_secret: Secret | None
    refresh_token: Secret | None
    service_account: Secret | None       # the service account's JSON key

    @property
    def scopes(self) -> tuple[str, ...]:
        if self.scope:
            return tuple(self.scope.split())
        if self.provider is Provider.GOOGLE:
            return (GOOGLE_SCOPE,)
        if self.provider is Provider.MICROSOFT:
            return (MICROSOFT_APP_SCOPE,) if self.grant is Grant.CLIENT_CREDENTIALS else (MICROSOFT_USER_SCOPE,)
        return ()

    @property
    def describe(self) -> str:
        """For logs and check-config: the provider and grant, never a secret."""
        who = f", client {self.client_id}" if self.client_id else ""
        return f"{self.provider} {self.grant}{who}"


def read_imap_auth(r: ConfigReader) -> ImapAuth:
    return r.choice("imap.auth", ImapAuth, ImapAuth.PASSWORD.value)


def read_oauth2(r: ConfigReader, *, needed: bool) -> OAuth2Config | None:
    """[imap.oauth2], when imap.auth = "oauth2"; keys there are read (and checked) either way."""
    if needed and not r.string("imap.oauth2.provider", ""):
        raise ConfigError(f"imap.oauth2.provider: required with imap.auth = \"oauth2\"; one of {', '.join(Provider)}")
    provider = r.choice("imap.oauth2.provider", Provider, Provider.GENERIC.value)
    grants = GRANTS[provider]
    grant = r.choice("imap.oauth2.grant", Grant, grants[0].value, allowed=grants)
    secrets = {name: r.secret(file_key, env) for name, (file_key, env) in _SECRETS.items()}
    config = OAuth2Config(
        provider=provider, grant=grant,
        client_id=r.string("imap.oauth2.client_id", ""),
        tenant=r.string("imap.oauth2.tenant", ""),
        token_url=_https_url(r, "imap.oauth2.token_url"),
        authority=_https_url(r, "imap.oauth2.authority") or MICROSOFT_AUTHORITY,
        scope=r.string("imap.oauth2.scope", ""),
        mechanism=r.choice("imap.oauth2.mechanism", SaslMechanism, SaslMechanism.AUTO.value),
        ca_file=r.optional_path("imap.oauth2.ca_file"),
        timeout_seconds=r.number("imap.oauth2.timeout_seconds", 30.0, minimum=0.1),
        client_secret=secrets["client_secret"], refresh_token=secrets["refresh_token"],
        service_account=secrets["service_account"],
    )
    if not needed:
        return None
    _require(config, r.lenient_secrets)
    return config


def _https_url(r: ConfigReader, key: str) -> str:
    url = r.string(key, "").rstrip("/")
    if url:
        parts = urlsplit(url)
        if parts.scheme != "https" and not (parts.scheme == "http" and is_loopback(parts.hostname or "")):
            raise ConfigError(f"{key}: must be an https:// URL (http:// only on loopback), got {url!r}")
    return url


def _require(config: OAuth2Config, lenient_secrets: bool) -> None:
    """What each grant cannot do without; secrets only when they can be read (not for the on-call's tools)."""
    where = f"imap.oauth2 ({config.provider}, {config.grant})"
    if config.grant is not Grant.SERVICE_ACCOUNT and not config.client_id:
        raise ConfigError(f"{where}: client_id is required")
    if config.provider is Provider.MICROSOFT and not config.tenant:
        raise ConfigError(f"{where}: tenant is required (the directory's id or domain, e.g. contoso.onmicrosoft.com)")
    if config.provider is Provider.GENERIC and not config.token_url:
        raise ConfigError(f"{where}: token_url is required")
    if lenient_secrets:
        return
    needs = {Grant.SERVICE_ACCOUNT: "service_account", Grant.CLIENT_CREDENTIALS: "client_secret",
             Grant.REFRESH_TOKEN: "refresh_token"}[config.grant]
    if getattr(config, needs) is None:
        file_key, env = _SECRETS[needs]
        raise ConfigError(f"{where}: {needs} is required ({env} or {file_key})")
    if config.grant is Grant.SERVICE_ACCOUNT:
        _check_service_account_key(config.service_account)


def _check_service_account_key(key: Secret | None) -> None:
    file_key, env = _SECRETS["service_account"]
    try:
        info = json.loads(key.value if key else "")
    except ValueError:
        raise ConfigError(f"{file_key} ({env}): not JSON; expected the service account's key file") from None
    missing = [name for name in SERVICE_ACCOUNT_FIELDS if not isinstance(info, dict) or not info.get(name)]
    if missing or info.get("type") != "service_account":
        raise ConfigError(f"{file_key} ({env}): not a service account key (missing or wrong: "
                          f"{', '.join(missing) or 'type'})")
