"""How an IMAP session fails: the kinds counted in emergencyd_imap_errors_total, and the exception carrying one."""
from __future__ import annotations

from enum import StrEnum


class FailureKind(StrEnum):
    """What failed, the label of emergencyd_imap_errors_total."""
    CONNECT = "connect"                  # no TCP connection to the server
    TLS = "tls"                          # the TLS handshake failed (certificate, protocol)
    LOGIN = "login"                      # refused credentials: retried at the login pace, not the reconnect one
    TOKEN = "token"                      # no OAuth 2.0 access token: the provider refused (login pace too)
    TOKEN_ENDPOINT = "token_endpoint"    # the token endpoint did not answer with a token (reconnect pace)
    MAILBOX = "mailbox"                  # the mailbox or the processed mailbox cannot be selected or made
    TIMEOUT = "timeout"                  # no answer to a command in time
    CONNECTION_LOST = "connection_lost"  # the server closed the connection
    STORE = "store"                      # our store could not commit: the mail stays in the inbox
    MOVE = "move"                        # a stored mail could not be moved out of the inbox
    TOO_LARGE = "too_large"              # a mail over [imap] max_message_bytes, left in the inbox
    PROTOCOL = "protocol"                # anything else the server or the connection did


# A person must act before these can succeed: retried at the login pace, so as not to hammer the provider.
NEEDS_A_PERSON = frozenset({FailureKind.LOGIN, FailureKind.TOKEN})


class ImapFailure(Exception):
    """A failure of the session, with the kind counted in emergencyd_imap_errors_total."""

    def __init__(self, kind: FailureKind, detail: str):
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail
