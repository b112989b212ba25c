"""IMAP ingress: take mail from a mailbox, commit it durably, then move it out.

Per connection (MailboxSession): log in, SELECT, compare UIDVALIDITY with the store,
catch up on everything in the mailbox, then wait with IDLE (or poll) and take what is new.
Each message is fetched with BODY.PEEK[], committed through the same path as SMTP, and
only then moved to the processed mailbox. A crash between commit and move leaves the mail
in the mailbox: the next catch-up fetches it again and identity dedup makes it a no-op.

ImapIngress keeps a session going: reconnects with jittered exponential backoff, waits much
longer after a refused login, and reports every failure as a log line and a metric.
"""
from __future__ import annotations

import asyncio
import logging

from daemon.config import ImapConfig
from daemon.imap_session import ImapFailure, MailboxSession
from daemon.metrics import Metrics
from daemon.smtp import Ingest
from daemon.store import AsyncStore
from escalation.retry import RetrySchedule

log = logging.getLogger("emergencyd.imap")

LOGIN_RETRY_CAP_SECONDS = 3600.0


class ImapIngress:
    """Keeps a MailboxSession going until stopped; never raises, never busy-loops."""

    def __init__(self, config: ImapConfig, ingest: Ingest, store: AsyncStore, metrics: Metrics):
        self.config = config
        self._ingest = ingest
        self._store = store
        self._metrics = metrics
        self._stopping = asyncio.Event()
        self.state = "connecting"          # for /readyz: "ok" while connected
        self._reconnect = RetrySchedule(config.reconnect_initial_seconds, config.reconnect_max_seconds, 1 << 30)
        self._login_retry = RetrySchedule(config.login_retry_seconds,
                                          max(LOGIN_RETRY_CAP_SECONDS, config.login_retry_seconds), 1 << 30)

    async def run(self) -> None:
        failures = 0
        login_failures = 0
        while not self._stopping.is_set():
            session = MailboxSession(self.config, self._ingest, self._store, self._metrics, self._stopping)
            try:
                await self._serve(session)
                failures = login_failures = 0
            except ImapFailure as exc:
                connected = self.state == "ok"
                failures = 1 if connected else failures + 1
                login_failures = login_failures + 1 if exc.kind == "login" else 0
                delay = (self._login_retry.backoff_seconds(login_failures) if exc.kind == "login"
                         else self._reconnect.backoff_seconds(failures))
                self._failed(exc, delay)
                await session.close()
                await self._sleep(delay)
                continue
            except Exception as exc:   # a bug must not end intake: log it, back off, go on
                log.exception("imap session failed unexpectedly")
                failures += 1
                self._failed(ImapFailure("protocol", f"{type(exc).__name__}: {exc}"),
                             self._reconnect.backoff_seconds(failures))
                await session.close()
                await self._sleep(self._reconnect.backoff_seconds(failures))
                continue
            await session.close()
        self._metrics.imap_connected.set(0)
        self._metrics.imap_idle_active.set(0)

    async def _serve(self, session: MailboxSession) -> None:
        await session.open()
        self.state = "ok"
        self._metrics.imap_connected.set(1)
        self._metrics.imap_idle_active.set(int(session.idle))
        log.info("imap connected", extra={"account": self.config.account, "idle": session.idle,
                                          "uidvalidity": session.uidvalidity, "last_uid": session.last_uid})
        await session.sync(catch_up=True)
        while not self._stopping.is_set():
            await session.wait_for_news()
            if not self._stopping.is_set():
                await session.sync(catch_up=False)

    def _failed(self, exc: ImapFailure, retry_in: float) -> None:
        self.state = f"{exc.kind}: {exc.detail}"[:300]
        self._metrics.imap_connected.set(0)
        self._metrics.imap_idle_active.set(0)
        self._metrics.imap_errors.labels(exc.kind).inc()
        message = "imap login refused; check the username and password" if exc.kind == "login" else \
            "imap disconnected"
        log.error(message, extra={"account": self.config.account, "kind": exc.kind, "error": exc.detail,
                                  "retry_in_seconds": round(retry_in, 2)})

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    async def stop(self) -> None:
        """Stop fetching: the message being committed finishes, nothing new is taken."""
        self._stopping.set()
