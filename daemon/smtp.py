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
250 is answered only after the bytes and the envelope are committed durably.
"""
from __future__ import annotations

import asyncio
import logging
import ssl
import time
from typing import Awaitable, Callable

from aiosmtpd.smtp import SMTP, Envelope as SmtpEnvelope, Session

from daemon.config import SmtpConfig
from daemon.metrics import Metrics
from daemon.smtp_limits import (
    IDLE_TIMEOUT, PEER_RATE, SENDER_RATE, SESSION_TOO_LONG, SHUTTING_DOWN, TOO_MANY_RECIPIENTS, ConnectionLimits, ExemptNetworks,
    RateLimit, Refusal,
)
from daemon.store import IngestResult, StoreError
from escalation.records import Envelope

log = logging.getLogger("emergencyd.smtp")

Ingest = Callable[[bytes, Envelope], Awaitable[IngestResult]]


class IngestHandler:
    """aiosmtpd handler hooks: check recipients, commit, then answer."""

    def __init__(self, config: SmtpConfig, ingest: Ingest, metrics: Metrics):
        self.recipients = frozenset(config.recipients)   # replaced whole on reload
        self._ingest = ingest
        self._metrics = metrics
        self._max_recipients = config.max_recipients
        self._peer_rate = RateLimit(config.messages_per_ip_per_minute, 60.0)
        self._sender_rate = RateLimit(config.messages_per_sender_per_minute, 60.0)
        self._exempt = ExemptNetworks(config.limit_exempt_networks)
        self.connections = ConnectionLimits(config.max_connections, config.max_connections_per_ip, self._exempt)
        self.accepting = True

    def refuse(self, refusal: Refusal, session: Session, **fields: str) -> str:
        log.info("smtp refused", extra={"reason": refusal.reason, "peer": _peer(session), **fields})
        return counted(self._metrics, refusal)

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
        log.info("message %s", label, extra={"message_pk": result.message_pk, "peer": stored.peer,
                                              "bytes": len(raw)})
        return f"250 2.0.0 OK: queued as {result.message_pk}"


class Smtp(SMTP):
    """aiosmtpd's SMTP with the connection limits, a whole-session deadline, a 421 on timeout,
    and a count of the size refusals that aiosmtpd answers by itself."""

    def __init__(self, handler: IngestHandler, metrics: Metrics, *, session_max_seconds: float, **kwargs):
        super().__init__(handler, **kwargs)
        self._ingest_handler = handler
        self._metrics = metrics
        self._session_max_seconds = session_max_seconds
        self._counted_peer: str | None = None
        self._refusal: Refusal | None = None
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        fresh = self.transport is None          # not the switch to TLS after STARTTLS
        super().connection_made(transport)
        if not fresh:
            return
        peer = _host(self.session)
        self._refusal = self._ingest_handler.connections.admit(peer)
        if self._refusal is None:
            self._counted_peer = peer
            self._deadline = self.loop.call_later(self._session_max_seconds, self._close_with, SESSION_TOO_LONG)

    def connection_lost(self, error: Exception | None) -> None:
        if self._counted_peer is not None:
            self._ingest_handler.connections.release(self._counted_peer)
            self._counted_peer = None
        if self._deadline is not None:
            self._deadline.cancel()
        super().connection_lost(error)

    async def push(self, status: str) -> None:
        if self._refusal is not None and status.startswith("220 "):   # the greeting of a refused connection
            self._close_with(self._refusal)
            return
        if status.startswith("552"):
            self._metrics.rejected.labels("too_large").inc()
        await super().push(status)

    def _timeout_cb(self) -> None:
        self._close_with(IDLE_TIMEOUT)

    def _close_with(self, refusal: Refusal) -> None:
        """Say why, then close: the client's MTA keeps the mail and tries again."""
        if self.transport is None:
            return
        log.info("smtp connection closed", extra={"reason": refusal.reason, "peer": _peer(self.session)})
        self.transport.write(counted(self._metrics, refusal).encode("ascii") + b"\r\n")
        self.transport.close()


class ShuttingDown(asyncio.Protocol):
    """While the daemon drains, a new connection is told to come back later, not refused outright."""

    def __init__(self, metrics: Metrics):
        self._metrics = metrics

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(counted(self._metrics, SHUTTING_DOWN).encode("ascii") + b"\r\n")
        transport.close()


def counted(metrics: Metrics, refusal: Refusal) -> str:
    """Count a refusal in emergencyd_messages_rejected_total; returns its reply."""
    metrics.rejected.labels(refusal.reason).inc()
    return refusal.reply


def _host(session: Session | None) -> str:
    """The client's address without its port: what per-address limits count."""
    peer = session.peer if session is not None else None
    return str(peer[0]) if isinstance(peer, tuple) and peer else str(peer or "")


def _peer(session: Session) -> str:
    peer = session.peer
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer or "")


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

    def factory() -> asyncio.Protocol:
        if not handler.accepting:
            return ShuttingDown(metrics)
        return Smtp(handler, metrics, data_size_limit=config.max_message_bytes, hostname=config.hostname,
                    ident="emergencyd ESMTP", decode_data=False, tls_context=tls_context,
                    require_starttls=config.require_starttls, timeout=config.command_timeout_seconds,
                    session_max_seconds=config.session_max_seconds)
    return await loop.create_server(factory, host=config.listen.host, port=config.listen.port)
