"""HTTPS fakes of Google's and Microsoft's OAuth 2.0 token endpoints, and the introspection endpoint Dovecot asks.

One server plays both providers, answering as their documentation and real exchanges show:
- Google (`/token`): the JWT bearer grant of a service account (the assertion's RS256 signature checked against
  the key this fake made, its `sub` the impersonated mailbox, its scope https://mail.google.com/), and the
  refresh token grant of an installed app. Errors as Google words them: `invalid_grant` "Token has been expired
  or revoked.", `unauthorized_client` for a delegation without the scope.
- Microsoft (`/{tenant}/...`): the tenant's OpenID configuration (msal reads it first), the client credentials
  grant (scope https://outlook.office365.com/.default) and the refresh token grant, which rotates the refresh
  token. Errors as Entra ID words them, with AADSTS codes and `error_codes`.
Tokens it issues live `token_seconds`. `Introspection` (plain HTTP on loopback, as Dovecot's oauth2 passdb is
set up in tests/dovecot.py) says which are active: issued here, unexpired, not revoked, their user not disabled.
"""
from __future__ import annotations

import itertools
import json
import secrets
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.fakes.http import FakeHTTPSServer, RecordedRequest, Response, json_response
from tests.fakes.tls import TestCA

GOOGLE_SCOPE = "https://mail.google.com/"
MICROSOFT_APP_SCOPE = "https://outlook.office365.com/.default"
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"   # an assertion names Google's endpoint, wherever sent
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
CLIENT_ID = "emergencyd-test-client"
CLIENT_SECRET = "client-secret-7f3a9c"
TENANT = "contoso.onmicrosoft.com"
SERVICE_ACCOUNT_EMAIL = "emergencyd@emergencyd-test.iam.gserviceaccount.com"
GOOGLE_REVOKED = {"error": "invalid_grant", "error_description": "Token has been expired or revoked."}
GOOGLE_NO_DELEGATION = {"error": "unauthorized_client", "error_description": (
    "Client is unauthorized to retrieve access tokens using this method, or client not authorized for any of the "
    "scopes requested.")}
MICROSOFT_BAD_SECRET = (7000215, "invalid_client", "AADSTS7000215: Invalid client secret provided. Ensure the secret "
                        "being sent in the request is the client secret value, not the client secret ID.")
MICROSOFT_EXPIRED_GRANT = (700082, "invalid_grant", "AADSTS700082: The refresh token has expired due to inactivity.")
MICROSOFT_DISABLED = (50057, "invalid_grant", "AADSTS50057: The user account is disabled.")


@dataclass
class Issued:
    username: str
    expires_at: float


class FakeIdentityProvider(FakeHTTPSServer):
    def __init__(self, ca: TestCA | None = None, *, username: str, token_seconds: float = 3600.0) -> None:
        super().__init__(ca)
        self.username = username
        self.token_seconds = token_seconds
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.issued: dict[str, Issued] = {}           # every access token handed out, in order
        self.revoked_tokens: set[str] = set()
        self.disabled_users: set[str] = set()
        self.refresh_tokens = {"refresh-" + secrets.token_hex(8)}   # valid refresh tokens
        self.grant_revoked = False         # every grant refused as revoked (Google) or expired (Microsoft)
        self.scope_missing = False         # Google: the delegation lacks the scope
        self._serial = itertools.count(1)
        self.introspection: Introspection | None = None     # set by whoever serves it for this provider

    # --- what the test hands the daemon -----------------------------------

    @property
    def refresh_token(self) -> str:
        return sorted(self.refresh_tokens)[0]

    def service_account_key(self) -> str:
        pem = self._key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()).decode()
        return json.dumps({"type": "service_account", "project_id": "emergencyd-test", "private_key_id": "k1",
                           "private_key": pem, "client_email": SERVICE_ACCOUNT_EMAIL, "client_id": "1049",
                           "token_uri": f"{self.url}/token"})

    def tokens(self) -> list[str]:
        with self.state_lock:
            return list(self.issued)

    def revoke_current_tokens(self) -> None:
        with self.state_lock:
            self.revoked_tokens.update(self.issued)

    def is_active(self, token: str) -> str | None:
        """The user a token logs in, while it is good."""
        with self.state_lock:
            issued = self.issued.get(token)
            if issued is None or token in self.revoked_tokens or issued.username in self.disabled_users:
                return None
            return issued.username if time.time() < issued.expires_at else None

    # --- the endpoints -----------------------------------------------------

    def route(self, req: RecordedRequest) -> Response:
        form = {k: v[0] for k, v in parse_qs(req.body.decode(), keep_blank_values=True).items()}
        if req.method == "POST" and req.path == "/token":
            return self._google(form)
        parts = req.path.strip("/").split("/")
        if parts[0] != TENANT:
            return json_response(404, {"error": "not_found"})
        if req.method == "GET" and parts[1:] == ["v2.0", ".well-known", "openid-configuration"]:
            return json_response(200, self._openid_configuration())
        if req.method == "POST" and parts[1:] == ["oauth2", "v2.0", "token"]:
            return self._microsoft(form)
        return json_response(404, {"error": "not_found"})

    def _google(self, form: dict[str, str]) -> Response:
        if form.get("grant_type") == JWT_BEARER:
            public = self._key.public_key()
            try:
                claims = jwt.decode(form.get("assertion", ""), public, algorithms=["RS256"],
                                    audience=GOOGLE_TOKEN_AUDIENCE)
            except jwt.PyJWTError as exc:
                return json_response(400, {"error": "invalid_grant", "error_description": f"Invalid JWT: {exc}"})
            if claims.get("iss") != SERVICE_ACCOUNT_EMAIL:
                return json_response(401, {"error": "invalid_client", "error_description": "The OAuth client was "
                                           "not found."})
            if self.scope_missing or claims.get("scope") != GOOGLE_SCOPE:
                return json_response(401, GOOGLE_NO_DELEGATION)
            if self.grant_revoked or claims.get("sub") in self.disabled_users:
                return json_response(400, {"error": "invalid_grant", "error_description": "Invalid email or User ID"})
            return json_response(200, self._issue(claims["sub"], google=True))
        if form.get("grant_type") == "refresh_token":
            if form.get("client_id") != CLIENT_ID or form.get("client_secret") != CLIENT_SECRET:
                return json_response(401, {"error": "invalid_client", "error_description": "Unauthorized"})
            if self.grant_revoked or form.get("refresh_token") not in self.refresh_tokens:
                return json_response(400, GOOGLE_REVOKED)
            return json_response(200, {**self._issue(self.username, google=True), "scope": GOOGLE_SCOPE})
        return json_response(400, {"error": "unsupported_grant_type", "error_description": "Invalid grant_type: "})

    def _microsoft(self, form: dict[str, str]) -> Response:
        if form.get("client_id") != CLIENT_ID:
            return _entra(400, (700016, "unauthorized_client", f"AADSTS700016: Application with identifier "
                                f"'{form.get('client_id')}' was not found in the directory '{TENANT}'."))
        grant = form.get("grant_type")
        if grant == "client_credentials":
            if form.get("client_secret") != CLIENT_SECRET:
                return _entra(401, MICROSOFT_BAD_SECRET)
            if MICROSOFT_APP_SCOPE not in form.get("scope", "").split():
                return _entra(400, (1002012, "invalid_scope", "AADSTS1002012: The provided value for scope is "
                                    "not valid."))
            if self.grant_revoked:
                return _entra(401, MICROSOFT_BAD_SECRET)
            return json_response(200, {**self._issue(self.username), "ext_expires_in": int(self.token_seconds)})
        if grant == "refresh_token":
            if self.username in self.disabled_users:
                return _entra(400, MICROSOFT_DISABLED)
            if self.grant_revoked or form.get("refresh_token") not in self.refresh_tokens:
                return _entra(400, MICROSOFT_EXPIRED_GRANT)
            rotated = "refresh-" + secrets.token_hex(8)   # Entra ID hands out a new refresh token each time
            self.refresh_tokens.add(rotated)
            return json_response(200, {**self._issue(self.username), "refresh_token": rotated,
                                       "scope": form.get("scope", ""), "ext_expires_in": int(self.token_seconds)})
        return _entra(400, (70003, "unsupported_grant_type", "AADSTS70003: The app requested an unsupported "
                            "grant type."))

    def _issue(self, username: str, *, google: bool = False) -> dict[str, Any]:
        prefix = "ya29." if google else "eyJ0eXAiOiJKV1Qi."
        token = f"{prefix}{next(self._serial)}.{secrets.token_urlsafe(24)}"
        self.issued[token] = Issued(username, time.time() + self.token_seconds)
        return {"access_token": token, "expires_in": int(self.token_seconds), "token_type": "Bearer"}

    def _openid_configuration(self) -> dict[str, Any]:
        base = f"{self.url}/{TENANT}"
        return {"token_endpoint": f"{base}/oauth2/v2.0/token", "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "issuer": f"{self.url}/{TENANT}/v2.0", "token_endpoint_auth_methods_supported":
                ["client_secret_post", "private_key_jwt", "client_secret_basic"],
                "response_types_supported": ["code", "id_token", "code id_token", "id_token token"]}


def _entra(status: int, error: tuple[int, str, str]) -> Response:
    code, name, text = error
    return json_response(status, {"error": name, "error_description": f"{text}\r\nTrace ID: 0\r\nCorrelation ID: 0",
                                  "error_codes": [code], "timestamp": time.strftime("%Y-%m-%d %H:%M:%SZ"),
                                  "trace_id": "0", "correlation_id": "0"})


class Introspection:
    """RFC 7662 token introspection over plain HTTP on loopback, for Dovecot's oauth2 passdb."""

    def __init__(self, provider: FakeIdentityProvider) -> None:
        self.provider = provider
        self.asked: list[str] = []
        introspection = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:   # noqa: N802 - stdlib's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                token = parse_qs(body).get("token", [""])[0]
                introspection.asked.append(token)
                user = provider.is_active(token)
                answer = json.dumps({"active": True, "username": user} if user else {"active": False}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/introspect"

    def start(self) -> Introspection:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
