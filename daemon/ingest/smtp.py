"""SMTP ingress: aiosmtpd on the daemon's own event loop.

Every failure has its own reply (after GoAlert's smtpsrv):
  550 5.1.1  a recipient we do not serve (never an open relay)
  552 5.3.4  over max_message_bytes (aiosmtpd, at MAIL SIZE= or during DATA)
  451 4.3.0  the store could not commit: the sending MTA keeps the mail and retries
  421 4.3.2  shutting down: in a session, and as the greeting of a new connection
  421 4.7.0  too many connections, in total or from one address (the greeting)
  421 4.4.2  idle past command_timeout_seconds, or connected past session_max_seconds
  451 4.7.1  too many messages a minute from one address or one sender (at MAIL)
  452 4.5.3  too many recipients
  530 5.7.0  MAIL before AUTH when smtp.auth_required (aiosmtpd)
  535 5.7.8  AUTH with a wrong user or password (aiosmtpd), and 421 4.7.0 once an address fails too often
  538 5.7.11 AUTH before STARTTLS from a client that is not on loopback (aiosmtpd)
250 is answered only after the bytes and the envelope are committed durably.

Behind a load balancer (smtp.proxy_protocol), each connection opens with a PROXY header; its source
address is the client for every limit, log line and stored envelope. A peer outside
smtp.proxy_trusted_networks, or a missing or malformed header, is dropped without a reply.
"""
from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import ssl
import time
from typing import Any, cast

from aiosmtpd.proxy_protocol import ProxyData
from aiosmtpd.smtp import MISSING, SMTP, AuthResult, LoginPassword, Session, syntax
from aiosmtpd.smtp import Envelope as SmtpEnvelope

from emergencyd.daemon.config.model import SmtpConfig
from emergencyd.daemon.ingest.intake import Ingest
from emergencyd.daemon.ingest.smtp_address import Address, plain_address
from emergencyd.daemon.ingest.smtp_auth import Authenticator
from emergencyd.daemon.ingest.smtp_data import BodyFault, read_body
from emergencyd.daemon.ingest.smtp_limits import (
    AUTH_THROTTLED,
    IDLE_TIMEOUT,
    LINE_TOO_LONG,
    PEER_RATE,
    PROXY_INVALID,
    PROXY_UNTRUSTED,
    SENDER_RATE,
    SESSION_TOO_LONG,
    SHUTTING_DOWN,
    TOO_MANY_RECIPIENTS,
    ConnectionLimits,
    Networks,
    RateLimit,
    Refusal,
)
from emergencyd.daemon.ops.metrics import Metrics
from emergencyd.daemon.store.errors import StoreError
from emergencyd.escalation.records import Envelope

log = logging.getLogger("emergencyd.smtp")
# aiosmtpd sets its own deprecated Session.login_data after every successful AUTH, and logs a warning
# about it each time: not ours to act on, and noise in the journal.
logging.getLogger("mail.log").addFilter(lambda record: "login_data is deprecated" not in record.getMessage())



class IngestHandler:
    """aiosmtpd handler hooks: check recipients, commit, then answer."""

    def __init__(self, config: SmtpConfig, ingest: Ingest, metrics: Metrics):
        self.recipients = frozenset(config.recipients)   # replaced whole on reload
        self._ingest = ingest
        self._metrics = metrics
        self._max_recipients = config.max_recipients
        self._peer_rate = RateLimit(config.messages_per_ip_per_minute, 60.0)
        self._sender_rate = RateLimit(config.messages_per_sender_per_minute, 60.0)
        self._exempt = Networks(config.limit_exempt_networks)
        self.connections = ConnectionLimits(config.max_connections, config.max_connections_per_ip, self._exempt)
        self.authenticator = (Authenticator({user: stored.value for user, stored in config.auth.users},
                                            config.auth.failures_per_ip_per_hour)
                              if config.auth.enabled else None)
        self.accepting = True

    def refuse(self, refusal: Refusal, session: Session, **fields: str) -> str:
        log.info("smtp refused", extra={"reason": refusal.reason, "peer": _peer(session), **fields})
        return counted(self._metrics, refusal)

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: SmtpEnvelope, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname          # this hook's duty, by aiosmtpd's contract
        if self.authenticator is None:        # aiosmtpd would offer AUTH that always fails
            return [line for line in responses if not line.startswith("250-AUTH")]
        return responses

    async def handle_AUTH(self, server: Smtp, session: Session, envelope: SmtpEnvelope, args: list[str]) -> Any:
        """Before aiosmtpd reads any credentials: is AUTH offered, and may this address still try?"""
        if self.authenticator is None:
            return "503 5.5.1 Authentication not enabled"
        if self.authenticator.throttled(_host(session)):
            server.close_with(AUTH_THROTTLED)
            return None                       # said and closed
        return MISSING                        # go on: aiosmtpd runs the mechanism

    async def handle_PROXY(self, server: Smtp, session: Session, envelope: SmtpEnvelope,
                           proxy_data: ProxyData) -> bool:
        return server.proxied(proxy_data)

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: SmtpEnvelope,
                          address: str, mail_options: list[str]) -> str:
        peer, sender = _host(session), address.strip().lower()
        # A refusal counts against neither limit: only mail that may go on is counted.
        if peer not in self._exempt and not self._peer_rate.allow(peer, count=False):
            return self.refuse(PEER_RATE, session)
        if not self._sender_rate.allow(sender, count=False):
            return self.refuse(SENDER_RATE, session, mail_from=address[:254])
        self._peer_rate.allow(peer)
        self._sender_rate.allow(sender)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: SmtpEnvelope,
                          address: str, rcpt_options: list[str]) -> str:
        if not self.accepting:
            return counted(self._metrics, SHUTTING_DOWN)
        if len(envelope.rcpt_tos) >= self._max_recipients:
            return self.refuse(TOO_MANY_RECIPIENTS, session)
        if address.strip().lower() not in self.recipients:
            self._metrics.rejected.labels("unknown_recipient").inc()
            log.info("recipient refused", extra={"peer": _peer(session), "rcpt": address[:254]})
            return "550 5.1.1 Recipient address rejected: not an address served here"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: SmtpEnvelope) -> str:
        if not self.accepting:
            return counted(self._metrics, SHUTTING_DOWN)
        raw = envelope.original_content if envelope.original_content is not None else envelope.content
        if raw is None:         # smtp_DATA always sets both; an empty message is b""
            raw = b""
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        stored = Envelope(
            source="smtp", mail_from=envelope.mail_from or "", rcpt_to=tuple(envelope.rcpt_tos),
            peer=_peer(session), helo=session.host_name or "", tls=session.ssl is not None,
            received_at=time.time())
        try:
            result = await self._ingest(raw, stored)
        except StoreError as exc:
            self._metrics.rejected.labels("store_failure").inc()
            log.error("store commit failed; answered 451", extra={"peer": stored.peer, "error": str(exc)})
            return "451 4.3.0 Temporary failure storing the message, try again later"
        label = "duplicate" if result.duplicate else "stored"
        # Logged once the 250 is out (smtp_DATA pushes it in this same step of the task): the sender's wait
        # is the commit's, not a log record's making too.
        server.loop.call_soon(functools.partial(log.info, "message %s", label, extra={
            "message_pk": result.message_pk, "peer": stored.peer, "bytes": len(raw)}))
        return f"250 2.0.0 OK: queued as {result.message_pk}"


class Smtp(SMTP):
    """aiosmtpd's SMTP with the connection limits, a whole-session deadline, a 421 on timeout,
    counts of the refusals that aiosmtpd answers by itself, AUTH checked off the event loop,
    and the client's address taken from a trusted PROXY header."""

    def __init__(self, handler: IngestHandler, metrics: Metrics, *, session_max_seconds: float,
                 proxy_trusted: Networks | None, max_line_bytes: int, **kwargs):
        self.line_length_limit = max_line_bytes    # aiosmtpd sizes its reader by it, in __init__
        super().__init__(handler, authenticator=_defer_check, auth_require_tls=True, **kwargs)
        self._ingest_handler = handler
        self._metrics = metrics
        self._session_max_seconds = session_max_seconds
        self._proxy_trusted = proxy_trusted      # None: no PROXY header expected
        self._proxy_data: ProxyData | None = None
        self._counted_peer: str | None = None
        self._refusal: Refusal | None = None
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        fresh = self.transport is None          # not the switch to TLS after STARTTLS
        super().connection_made(transport)
        if not fresh:
            assert self.session is not None        # made by aiosmtpd's connection_made
            self.session.proxy_data = self._proxy_data   # STARTTLS starts a new session: keep the client's address
        elif self._proxy_trusted is None:
            self._admit()
        elif _host(self.session) not in self._proxy_trusted:
            self.close_with(PROXY_UNTRUSTED, error="peer not in smtp.proxy_trusted_networks")
        # else aiosmtpd reads the PROXY header, then calls handle_PROXY -> proxied()

    def proxied(self, proxy_data: ProxyData) -> bool:
        """A valid PROXY header from a trusted load balancer: from now on its source is the client."""
        self._proxy_data = proxy_data
        self._admit()
        return True            # a refusal replaces the greeting, so the client learns why

    def _admit(self) -> None:
        peer = _host(self.session)
        self._refusal = self._ingest_handler.connections.admit(peer)
        if self._refusal is None:
            self._counted_peer = peer
            self._deadline = self.loop.call_later(self._session_max_seconds, self.close_with, SESSION_TOO_LONG)
        if _is_loopback(peer):
            # A password cannot be overheard on loopback: a relay on this host may AUTH without STARTTLS.
            # aiosmtpd takes this at construction, before the client (or its PROXY header) is known.
            self._auth_require_tls = False

    def connection_lost(self, error: Exception | None) -> None:
        header = self.session.proxy_data if self.session is not None else None
        if header is not None and not header:         # aiosmtpd read a header that was not valid PROXY
            log.info("smtp connection closed", extra={"reason": PROXY_INVALID.reason, "peer": _peer(self.session),
                                                       "error": header.error})
            counted(self._metrics, PROXY_INVALID)
        if self._counted_peer is not None:
            self._ingest_handler.connections.release(self._counted_peer)
            self._counted_peer = None
        if self._deadline is not None:
            self._deadline.cancel()
        super().connection_lost(error)

    async def push(self, status: str | bytes) -> None:
        if isinstance(status, str):           # bytes: an AUTH challenge
            if self._refusal is not None and status.startswith("220 "):   # the greeting of a refused connection
                self.close_with(self._refusal)
                return
            if status.startswith("552"):
                self._metrics.rejected.labels("too_large").inc()
            elif status.startswith("530 5.7.0"):
                self._metrics.rejected.labels("auth_required").inc()
            await super().push(status)
        else:
            await super().push(status)

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd's DATA, with its checks and answers, reading the body in pieces (daemon/ingest/smtp_data.py)."""
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        envelope, session = self.envelope, self.session
        assert envelope is not None and session is not None    # aiosmtpd makes both before any command
        if not envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            body = await read_body(self._reader, max_line_bytes=self.line_length_limit, max_bytes=self.data_size_limit)
        except asyncio.CancelledError:     # the client went away mid-DATA
            self._writer.close()
            raise
        if body.fault is BodyFault.LINE_TOO_LONG:
            log.info("smtp refused", extra={"reason": LINE_TOO_LONG.reason, "peer": _peer(self.session),
                                            "max_line_bytes": self.line_length_limit})
            status = counted(self._metrics, LINE_TOO_LONG)
        elif body.fault is BodyFault.TOO_LARGE:
            status = "552 Error: Too much mail data"
        else:
            envelope.content = envelope.original_content = body.content
            status = await self._ingest_handler.handle_DATA(self, session, envelope)
        self._set_post_data_state()
        await self.push(status)

    def _getaddr(self, arg: str) -> Address:
        # Not a public hook: the one place aiosmtpd reads the addresses of MAIL and RCPT
        # (daemon/ingest/smtp_address.py says why, and tests/e2e/test_smtp.py holds it to aiosmtpd's answers).
        return plain_address(arg, self.local_part_limit, super()._getaddr)

    # aiosmtpd's PLAIN and LOGIN read the credentials; _checked then checks them.
    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
        return await self._checked("PLAIN", await super().auth_PLAIN(_, args))

    async def auth_LOGIN(self, _: Any, args: list[str]) -> AuthResult:
        return await self._checked("LOGIN", await super().auth_LOGIN(_, args))

    async def _checked(self, mechanism: str, parsed: AuthResult) -> AuthResult:
        credentials = parsed.auth_data
        if not isinstance(credentials, LoginPassword):   # a malformed exchange, already answered by aiosmtpd
            return parsed
        authenticator = self._ingest_handler.authenticator
        assert authenticator is not None                 # handle_AUTH refuses AUTH without one
        user = credentials.login.decode("utf-8", "replace")[:254]
        fields = {"user": user, "mechanism": mechanism, "peer": _peer(self.session)}   # never the password
        if await authenticator.check(_host(self.session), credentials.login, credentials.password):
            self._metrics.smtp_auth.labels("success").inc()
            log.info("smtp authenticated", extra=fields)
            return AuthResult(success=True, auth_data=user)
        self._metrics.smtp_auth.labels("failure").inc()
        log.info("smtp authentication failed", extra=fields)
        return AuthResult(success=False, handled=False)  # aiosmtpd answers 535 5.7.8

    def _timeout_cb(self) -> None:
        self.close_with(IDLE_TIMEOUT)

    def close_with(self, refusal: Refusal, **fields: str) -> None:
        """Say why (when there is a client to tell), then close: the client's MTA keeps the mail and tries again."""
        if self.transport is None:
            return
        log.info("smtp connection closed", extra={"reason": refusal.reason, "peer": _peer(self.session), **fields})
        reply = counted(self._metrics, refusal)
        transport = cast(asyncio.WriteTransport, self.transport)
        if reply:
            transport.write(reply.encode("ascii") + b"\r\n")
        transport.close()


def _defer_check(server: SMTP, session: Session, envelope: SmtpEnvelope, mechanism: str,
                 credentials: Any) -> AuthResult:
    """aiosmtpd's authenticator is synchronous, and scrypt takes tens of milliseconds: hand the parsed
    credentials back to Smtp._checked, which checks them in a worker thread."""
    return AuthResult(success=False, handled=False, auth_data=credentials)


class ShuttingDown(asyncio.Protocol):
    """While the daemon drains, a new connection is told to come back later, not refused outright."""

    def __init__(self, metrics: Metrics):
        self._metrics = metrics

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        stream = cast(asyncio.WriteTransport, transport)
        stream.write(counted(self._metrics, SHUTTING_DOWN).encode("ascii") + b"\r\n")
        stream.close()


def counted(metrics: Metrics, refusal: Refusal) -> str:
    """Count a refusal in emergencyd_messages_rejected_total; returns its reply."""
    metrics.rejected.labels(refusal.reason).inc()
    return refusal.reply


def _address(session: Session | None) -> tuple[str, str | None]:
    """The client's host and port: the PROXY header's source when a trusted load balancer sent one."""
    proxied = session.proxy_data if session is not None else None
    if proxied and isinstance(proxied.src_addr, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return str(proxied.src_addr), str(proxied.src_port)
    peer = session.peer if session is not None else None
    if isinstance(peer, tuple) and peer:
        return str(peer[0]), (str(peer[1]) if len(peer) >= 2 else None)
    return str(peer or ""), None


def _host(session: Session | None) -> str:
    """The client's address without its port: what per-address limits count."""
    return _address(session)[0]


def _peer(session: Session | None) -> str:
    host, port = _address(session)
    return host if port is None else f"{host}:{port}"


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def starttls_context(config: SmtpConfig) -> ssl.SSLContext | None:
    """The server side of STARTTLS; load_certificate() again on reload picks up a renewed certificate."""
    if config.tls_cert_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    load_certificate(context, config)
    return context


def load_certificate(context: ssl.SSLContext, config: SmtpConfig) -> None:
    context.load_cert_chain(str(config.tls_cert_file), str(config.tls_key_file))


async def start_smtp(config: SmtpConfig, handler: IngestHandler, metrics: Metrics,
                     tls_context: ssl.SSLContext | None) -> asyncio.Server:
    loop = asyncio.get_running_loop()

    proxy_trusted = Networks(config.proxy.trusted_networks) if config.proxy.enabled else None

    def factory() -> asyncio.Protocol:
        if not handler.accepting:
            return ShuttingDown(metrics)
        return Smtp(handler, metrics, data_size_limit=config.max_message_bytes, hostname=config.hostname,
                    ident="emergencyd ESMTP", decode_data=False, tls_context=tls_context,
                    require_starttls=config.require_starttls, timeout=config.command_timeout_seconds,
                    session_max_seconds=config.session_max_seconds, auth_required=config.auth.required,
                    proxy_protocol_timeout=config.proxy.timeout_seconds if proxy_trusted else None,
                    proxy_trusted=proxy_trusted, max_line_bytes=config.max_line_bytes)
    return await loop.create_server(factory, host=config.listen.host, port=config.listen.port)
