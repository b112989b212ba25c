"""Access tokens for the IMAP session, from the providers' own libraries: google-auth and msal.

Each source fetches a new token each time it is asked (the keeper in oauth2_keeper.py caches it) and is
blocking: the keeper calls it on a thread. A refusal becomes a TokenError whose problem says what a person
must do; its detail is the provider's own error text, which never holds a secret.
"""
from __future__ import annotations

import datetime
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import requests

from emergencyd.daemon.config.reader import Secret
from emergencyd.daemon.ingest.oauth2_settings import GOOGLE_TOKEN_URL, Grant, OAuth2Config, Provider
from emergencyd.escalation.tls import verifying_session

FETCHED = "ok"    # the outcome label of emergencyd_imap_oauth2_token_fetches_total for a fetch that brought a token


class TokenProblem(StrEnum):
    """Why no token came: the outcome label of emergencyd_imap_oauth2_token_fetches_total."""
    GRANT = "grant"              # the grant (refresh token, consent, delegation) revoked or expired; a disabled user
    SCOPE = "scope"              # the client is not allowed the IMAP scope, or no admin consent
    CLIENT = "client"            # the client id, secret or key was refused
    UNREACHABLE = "unreachable"  # no answer, TLS, 5xx, or an answer that is not a token: tried again soon

    @property
    def needs_a_person(self) -> bool:
        return self is not TokenProblem.UNREACHABLE

    @property
    def advice(self) -> str:
        return {
            TokenProblem.GRANT: "the grant was revoked or expired, or the account is disabled: "
                                "renew the refresh token or the delegation (docs/imap.md)",
            TokenProblem.SCOPE: "the client is not allowed the IMAP scope: check the domain-wide delegation "
                                "(Google) or the IMAP permission and its admin consent (Microsoft)",
            TokenProblem.CLIENT: "the client id, secret or key was refused: check them, and whether the secret "
                                 "has expired",
            TokenProblem.UNREACHABLE: "the token endpoint did not answer with a token; trying again",
        }[self]


# RFC 6749 section 5.2 error codes, and the providers' words for a disabled or deleted account.
_PROBLEMS = {"invalid_grant": TokenProblem.GRANT, "interaction_required": TokenProblem.GRANT,
             "invalid_scope": TokenProblem.SCOPE, "unauthorized_client": TokenProblem.SCOPE,
             "access_denied": TokenProblem.SCOPE, "consent_required": TokenProblem.SCOPE,
             "invalid_client": TokenProblem.CLIENT, "invalid_request": TokenProblem.CLIENT,
             "server_error": TokenProblem.UNREACHABLE, "temporarily_unavailable": TokenProblem.UNREACHABLE}


class TokenError(Exception):
    def __init__(self, problem: TokenProblem, detail: str):
        super().__init__(f"{problem}: {detail}")
        self.problem = problem
        self.detail = detail[:300]


@dataclass(frozen=True)
class AccessToken:
    value: Secret
    expires_at: float          # epoch seconds
    fetched_at: float


class TokenSource(Protocol):
    def fetch(self) -> AccessToken: ...


def problem_of(error: dict[str, Any] | None) -> TokenProblem:
    """The problem an RFC 6749 error answer names; an answer without one is the endpoint failing, and a code
    this does not know is taken as one a person must look at."""
    code = str((error or {}).get("error") or "")
    return _PROBLEMS.get(code, TokenProblem.UNREACHABLE if not code else TokenProblem.GRANT)


def describe(error: dict[str, Any]) -> str:
    """'invalid_grant: Token has been expired or revoked.' (Entra ID's trace and correlation ids left out)."""
    text = (str(error.get("error_description") or "").splitlines() or [""])[0]
    return ": ".join(part for part in (str(error.get("error") or ""), text) if part)


def token_source(config: OAuth2Config, username: str) -> TokenSource:
    session = verifying_session(config.ca_file)
    if config.provider is Provider.MICROSOFT:
        return MicrosoftTokens(config, session)
    return GoogleAuthTokens(config, username, session)


def probe_token(config: OAuth2Config, username: str) -> str:
    """What `check-config` says after asking for a token (never the token): TokenError when none came."""
    token = token_source(config, username).fetch()
    return f"a token was issued for {username}, valid for {round(token.expires_at - token.fetched_at)} s"


class GoogleAuthTokens:
    """google-auth's credentials: a service account impersonating the mailbox, or a refresh token. The refresh
    token grant is RFC 6749's, so the generic provider uses the same class with its own token URL."""

    def __init__(self, config: OAuth2Config, username: str, session: requests.Session):
        from google.auth.transport.requests import Request
        from google.oauth2 import credentials, service_account
        self._request = _Timed(Request(session), config.timeout_seconds)
        self._credentials: Any
        if config.grant is Grant.SERVICE_ACCOUNT:
            assert config.service_account is not None        # oauth2_settings requires it
            info = json.loads(config.service_account.value)
            if config.token_url:
                info["token_uri"] = config.token_url
            with _google_errors():
                self._credentials = service_account.Credentials.from_service_account_info(
                    info, scopes=list(config.scopes), subject=username)
        else:
            assert config.refresh_token is not None
            self._credentials = credentials.Credentials(
                None, refresh_token=config.refresh_token.value, client_id=config.client_id,
                client_secret=config.client_secret.value if config.client_secret else None,
                token_uri=config.token_url or GOOGLE_TOKEN_URL,
                scopes=list(config.scopes) or None)

    def fetch(self) -> AccessToken:
        fetched_at = time.time()
        with _google_errors():
            self._credentials.refresh(self._request)
        expiry = self._credentials.expiry   # naive UTC, as google-auth keeps it
        expires_at = expiry.replace(tzinfo=datetime.timezone.utc).timestamp() if expiry else fetched_at + 3600
        return AccessToken(Secret(self._credentials.token), expires_at, fetched_at)


class _Timed:
    """google-auth's transport with a bounded wait (its own default is 120 s)."""

    def __init__(self, request: Any, timeout: float):
        self._request, self._timeout = request, timeout

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("timeout", self._timeout)
        return self._request(*args, **kwargs)


@contextmanager
def _google_errors() -> Iterator[None]:
    from google.auth import exceptions
    try:
        yield
    except exceptions.RefreshError as exc:
        answer = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], dict) else {}
        raise TokenError(problem_of(answer), describe(answer) or str(exc.args[0] if exc.args else exc)) from None
    except exceptions.TransportError as exc:
        raise TokenError(TokenProblem.UNREACHABLE, _first_line(exc)) from None
    except ValueError as exc:    # a key that does not parse
        raise TokenError(TokenProblem.CLIENT, f"the service account key: {_first_line(exc)}") from None


class MicrosoftTokens:
    """msal's confidential client (client credentials) or its refresh token grant. A rotated refresh token is
    kept for the next fetch; a restart starts again from the configured one."""

    def __init__(self, config: OAuth2Config, session: requests.Session):
        self._config = config
        self._session = session
        self._refresh_token = config.refresh_token.value if config.refresh_token else ""

    def fetch(self) -> AccessToken:
        from msal.exceptions import MsalError
        fetched_at = time.time()
        try:
            app = self._app()   # a new one each time: msal would hand back its cached token, not a new one
            if self._config.grant is Grant.CLIENT_CREDENTIALS:
                result = app.acquire_token_for_client(scopes=list(self._config.scopes))
            else:
                result = app.acquire_token_by_refresh_token(self._refresh_token, scopes=list(self._config.scopes))
        except ValueError as exc:    # msal's discovery had a 4xx: no such tenant at that authority
            raise TokenError(TokenProblem.CLIENT, f"the tenant or authority: {_first_line(exc)}") from None
        except (requests.RequestException, MsalError) as exc:    # MsalError: a 5xx from the discovery
            raise TokenError(TokenProblem.UNREACHABLE, _first_line(exc)) from None
        if "access_token" not in result:
            raise TokenError(_microsoft_problem(result), describe(result) or "no access token in the answer")
        self._refresh_token = result.get("refresh_token") or self._refresh_token
        return AccessToken(Secret(result["access_token"]), fetched_at + float(result.get("expires_in", 3600)),
                           fetched_at)

    def _app(self) -> Any:
        import msal
        config = self._config
        authority = f"{config.authority}/{config.tenant}"
        common = dict(authority=authority, http_client=self._session, timeout=config.timeout_seconds,
                      instance_discovery=False)   # the authority is the operator's word, national clouds included
        if config.client_secret is not None:
            return msal.ConfidentialClientApplication(config.client_id, client_credential=config.client_secret.value,
                                                      **common)
        return msal.PublicClientApplication(config.client_id, **common)


# Entra ID's codes for an account that cannot sign in: disabled, deleted, or locked.
_MICROSOFT_ACCOUNT_CODES = {50057, 50034, 50053, 50055, 50173, 700082}


def _microsoft_problem(result: dict[str, Any]) -> TokenProblem:
    if _MICROSOFT_ACCOUNT_CODES & set(result.get("error_codes") or ()):
        return TokenProblem.GRANT
    return problem_of(result)


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]
