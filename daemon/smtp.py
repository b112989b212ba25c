"""SMTP ingress: aiosmtpd on the daemon's own event loop.

Every failure has its own reply (after GoAlert's smtpsrv):
  550 5.1.1  a recipient we do not serve (never an open relay)
  552 5.3.4  over max_message_bytes (aiosmtpd, at MAIL SIZE= or during DATA)
  451 4.3.0  the store could not commit: the sending MTA keeps the mail and retries
  421 4.3.2  shutting down: in a session, and as the greeting of a new connection
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
        self.accepting = True

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: SmtpEnvelope,
                          address: str, rcpt_options: list[str]) -> str:
        if not self.accepting:
            self._metrics.rejected.labels("shutting_down").inc()
            return "421 4.3.2 Service shutting down, try again later"
        if address.strip().lower() not in self.recipients:
            self._metrics.rejected.labels("unknown_recipient").inc()
            log.info("recipient refused", extra={"peer": _peer(session), "rcpt": address[:254]})
            return "550 5.1.1 Recipient address rejected: not an address served here"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: SmtpEnvelope) -> str:
        if not self.accepting:
            self._metrics.rejected.labels("shutting_down").inc()
            return "421 4.3.2 Service shutting down, try again later"
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
    """Counts the size refusals that aiosmtpd answers by itself."""

    def __init__(self, handler: IngestHandler, metrics: Metrics, **kwargs):
        super().__init__(handler, **kwargs)
        self._metrics = metrics

    async def push(self, status: str) -> None:
        if status.startswith("552"):
            self._metrics.rejected.labels("too_large").inc()
        await super().push(status)


class ShuttingDown(asyncio.Protocol):
    """While the daemon drains, a new connection is told to come back later, not refused outright."""

    def __init__(self, metrics: Metrics):
        self._metrics = metrics

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._metrics.rejected.labels("shutting_down").inc()
        transport.write(b"421 4.3.2 Service shutting down, try again later\r\n")
        transport.close()


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
                    require_starttls=config.require_starttls)
    return await loop.create_server(factory, host=config.listen.host, port=config.listen.port)
