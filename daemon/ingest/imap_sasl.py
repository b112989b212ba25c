"""SASL XOAUTH2 and OAUTHBEARER (RFC 7628) over aioimaplib, with the refusal answered as the mechanisms require.

aioimaplib's own `xoauth2` cannot be used: a server refusing a token first sends a challenge (a JSON error,
base64) and waits for the client's reply before its NO, and aioimaplib sends none, so the login would hang
until its timeout. Here the challenge is answered (an empty line, or OAUTHBEARER's %x01) and kept: Gmail's
names the scope it wanted.
"""
from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import aioimaplib

from emergencyd.daemon.ingest.oauth2_settings import SaslMechanism

# The client's answer to an error challenge: XOAUTH2's is empty, OAUTHBEARER's a single %x01 (RFC 7628 3.2.3).
_ABORT = {SaslMechanism.XOAUTH2: "", SaslMechanism.OAUTHBEARER: base64.b64encode(b"\x01").decode()}
_PREFERENCE = (SaslMechanism.XOAUTH2, SaslMechanism.OAUTHBEARER)   # what Google and Microsoft document first


def choose_mechanism(capabilities: set[str], wanted: SaslMechanism) -> SaslMechanism | None:
    """The mechanism to use among those the server offers (AUTH=...), or None."""
    offered = {c.upper().removeprefix("AUTH=") for c in capabilities if c.upper().startswith("AUTH=")}
    candidates = _PREFERENCE if wanted is SaslMechanism.AUTO else (wanted,)
    return next((m for m in candidates if m.upper() in offered), None)


def initial_response(mechanism: SaslMechanism, user: str, token: str) -> str:
    if mechanism is SaslMechanism.XOAUTH2:
        text = f"user={user}\x01auth=Bearer {token}\x01\x01"
    else:   # RFC 7628's GS2 header names the user too ("a="), with "," and "=" escaped
        escaped = user.replace("=", "=3D").replace(",", "=2C")
        text = f"n,a={escaped},\x01auth=Bearer {token}\x01\x01"
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def describe_challenge(challenge: bytes) -> str:
    """The server's error challenge, readable: '{"status":"401","schemes":"bearer"}' -> 'status 401, schemes
    bearer'. It carries no secret (RFC 7628 3.2.2: status, scope, openid-configuration)."""
    try:
        fields = json.loads(base64.b64decode(challenge.strip(), validate=True))
    except (binascii.Error, ValueError):
        return challenge.decode("ascii", "replace")[:200]
    if not isinstance(fields, dict):
        return str(fields)[:200]
    return ", ".join(f"{key} {value}" for key, value in fields.items())[:200]


class _Authenticate(aioimaplib.Command):
    """AUTHENTICATE that answers the server's continuations: the initial response when the server has no
    SASL-IR (it asks with an empty challenge), and the mechanism's abort after an error challenge."""

    def __init__(self, protocol: Any, mechanism: SaslMechanism, response: str):
        sasl_ir = "SASL-IR" in {c.upper() for c in protocol.capabilities}
        args = (mechanism.upper(), response) if sasl_ir else (mechanism.upper(),)
        super().__init__("AUTHENTICATE", protocol.new_tag(), *args, loop=protocol.loop)
        self._protocol = protocol
        self._mechanism = mechanism
        self._unsent = None if sasl_ir else response
        self.challenge: bytes | None = None

    def append_to_resp(self, line: bytes, result: str = "Pending") -> None:
        if not line.startswith(b"+"):
            super().append_to_resp(line, result)
            return
        if self._unsent is not None:
            response, self._unsent = self._unsent, None
            self._protocol.send(response, scrub=response)
            return
        self.challenge = line[1:].strip()
        self._protocol.send(_ABORT[self._mechanism])


async def authenticate(client: aioimaplib.IMAP4, mechanism: SaslMechanism, user: str, token: str) -> str | None:
    """Log in with the token: None when the server took it, else why not (its challenge, or its NO)."""
    protocol = client.protocol
    response = initial_response(mechanism, user, token)
    command = _Authenticate(protocol, mechanism, response)
    async with protocol.state_condition:        # aioimaplib's own login steps change the state the same way
        answer = await protocol.execute(command, scrub=response)
        if answer.result == "OK":
            protocol.state = aioimaplib.AUTH
        protocol.state_condition.notify_all()
    if answer.result == "OK":
        # The capabilities after login differ (MOVE, UIDPLUS): ask again, as LOGIN's answer would have told.
        await protocol.capability()
        return None
    said = " ".join(bytes(line).decode("utf-8", "replace") for line in answer.lines if isinstance(line, bytes))
    if command.challenge:
        said = f"{describe_challenge(command.challenge)}; {said}".strip("; ")
    return said[:300] or answer.result
