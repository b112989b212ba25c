"""A recording SMTP relay on loopback, for the fallback alert: aiosmtpd's Controller in a thread.

It records every envelope it accepts (and every DATA it refused), can offer STARTTLS
with the test CA's certificate and require AUTH, and answers the next DATA commands
with injected replies (a 451 to be retried, a 550 to be recorded).
"""
from __future__ import annotations

import email
import email.policy
import threading
import time
from dataclasses import dataclass
from email.message import EmailMessage

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests.fakes.tls import TestCA


@dataclass(frozen=True)
class RelayedMail:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    content: bytes
    tls: bool
    login: str | None

    @property
    def message(self) -> EmailMessage:
        return email.message_from_bytes(self.content, policy=email.policy.default)


class _PortZeroController(Controller):
    """Controller listens on port 0 too: the bound port is read back before the first connection."""

    def _trigger_server(self) -> None:
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


class FakeRelay:
    def __init__(self, *, ca: TestCA | None = None, username: str | None = None, password: str | None = None):
        self._lock = threading.Lock()
        self._accepted: list[RelayedMail] = []
        self._refused: list[str] = []
        self._replies: list[str] = []
        self._credentials = (username, password) if username else None
        kwargs = {}
        if ca is not None:
            kwargs.update(tls_context=ca.server_ssl_context(), require_starttls=True)
        if self._credentials:
            kwargs.update(authenticator=self._authenticate, auth_required=True, auth_require_tls=ca is not None)
        self._controller = _PortZeroController(self, hostname="127.0.0.1", port=0, server_hostname="relay.test",
                                               **kwargs)

    # -- life ------------------------------------------------------------------------------

    def __enter__(self) -> "FakeRelay":
        self._controller.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._controller.stop()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self._controller.port}"

    # -- control and inspection -----------------------------------------------------------

    def inject_reply(self, reply: str, *, times: int = 1) -> None:
        """The next `times` DATA commands get this reply instead of 250 (e.g. "451 4.3.0 try later")."""
        with self._lock:
            self._replies.extend([reply] * times)

    def accepted(self) -> list[RelayedMail]:
        with self._lock:
            return list(self._accepted)

    def refused(self) -> list[str]:
        """The injected replies given so far, in order."""
        with self._lock:
            return list(self._refused)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[RelayedMail]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.accepted()) >= count:
                return self.accepted()
            time.sleep(0.05)
        raise AssertionError(f"the relay took {len(self.accepted())} mail(s), not {count}, in {timeout}s")

    # -- aiosmtpd hooks ---------------------------------------------------------------------

    async def handle_DATA(self, server, session, envelope) -> str:
        with self._lock:
            if self._replies:
                reply = self._replies.pop(0)
                self._refused.append(reply)
                return reply
            login = session.auth_data if isinstance(session.auth_data, str) else None
            self._accepted.append(RelayedMail(envelope.mail_from, tuple(envelope.rcpt_tos), bytes(envelope.content),
                                              tls=session.ssl is not None, login=login))
            return f"250 2.0.0 queued as {len(self._accepted)}"

    def _authenticate(self, server, session, envelope, mechanism, auth_data) -> AuthResult:
        ok = (isinstance(auth_data, LoginPassword) and self._credentials is not None
              and (auth_data.login.decode(), auth_data.password.decode()) == self._credentials)
        return AuthResult(success=ok, handled=False, auth_data=auth_data.login.decode() if ok else None)
