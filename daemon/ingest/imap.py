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
import time

from emergencyd.daemon.config.model import ImapConfig
from emergencyd.daemon.ingest.imap_failure import NEEDS_A_PERSON
from emergencyd.daemon.ingest.imap_session import (
    FailureKind,
    ImapFailure,
    MailboxSession,
)
from emergencyd.daemon.ingest.intake import Ingest
from emergencyd.daemon.ingest.oauth2_keeper import TokenKeeper
from emergencyd.daemon.ingest.oauth2_tokens import TokenError
from emergencyd.daemon.ops.metrics import Metrics
from emergencyd.daemon.store.asynchronous import AsyncStore
from emergencyd.escalation.retry import RetrySchedule

CONNECTED = "ok"           # the state while connected, as /readyz shows it

log = logging.getLogger("emergencyd.imap")

LOGIN_RETRY_CAP_SECONDS = 3600.0
TOKEN_RETRY_SECONDS = 60.0   # a failed renewal is asked again this often while the session's token lasts
_FAILURE_MESSAGES = {
    FailureKind.LOGIN: "imap login refused; check the username and password",
    FailureKind.TOKEN: "imap has no access token: the provider refused",
    FailureKind.TOKEN_ENDPOINT: "imap has no access token: the token endpoint failed",
}
STABLE_CONNECTION_SECONDS = 60.0


class ImapIngress:
    """Keeps a MailboxSession going until stopped; never raises, never busy-loops."""

    def __init__(self, config: ImapConfig, ingest: Ingest, store: AsyncStore, metrics: Metrics,
                 tokens: TokenKeeper | None = None):
        self.config = config
        self._tokens = tokens             # with [imap] auth = "oauth2": the access tokens, across sessions
        self._ingest = ingest
        self._store = store
        self._metrics = metrics
        self._stopping = asyncio.Event()
        self.state = "connecting"          # for /readyz: CONNECTED while connected, else why not
        self._connected_at: float | None = None
        self.first_attempt_done = asyncio.Event()   # set once the first login has succeeded or failed
        self._reconnect = RetrySchedule(config.reconnect_initial_seconds, config.reconnect_max_seconds, 1 << 30)
        self._login_retry = RetrySchedule(config.login_retry_seconds,
                                          max(LOGIN_RETRY_CAP_SECONDS, config.login_retry_seconds), 1 << 30)

    async def run(self) -> None:
        failures = login_failures = 0
        while not self._stopping.is_set():
            session = MailboxSession(self.config, self._ingest, self._store, self._metrics, self._stopping,
                                     self._tokens)
            self._connected_at = None
            try:
                await self._serve(session)
            except Exception as exc:   # never let intake end: every failure is logged, counted and retried
                self.first_attempt_done.set()
                failure = exc if isinstance(exc, ImapFailure) else _unexpected(exc)
                # A connection that stayed up a while starts the backoff over; one that keeps
                # dropping right after login backs off like one that cannot connect at all.
                stayed_up = self._connected_at is not None and \
                    time.monotonic() - self._connected_at >= STABLE_CONNECTION_SECONDS
                failures = 1 if stayed_up else failures + 1
                slow = failure.kind in NEEDS_A_PERSON
                login_failures = login_failures + 1 if slow else 0
                delay = (self._login_retry.backoff_seconds(login_failures) if slow
                         else self._reconnect.backoff_seconds(failures))
                self._failed(failure, delay)
                await session.close()
                await self._sleep(delay)
                continue
            await session.close()
        self._metrics.imap_connected.set(0)
        self._metrics.imap_idle_active.set(0)

    async def run_again(self) -> None:
        """run() after a stop(): this replica holds the mailbox again (daemon/leadership.py)."""
        self._stopping = asyncio.Event()
        await self.run()

    async def _serve(self, session: MailboxSession) -> None:
        await session.open()
        self.first_attempt_done.set()
        self._connected_at = time.monotonic()
        self.state = CONNECTED
        self._metrics.imap_connected.set(1)
        self._metrics.imap_idle_active.set(int(session.idle))
        log.info("imap connected", extra={"account": self.config.account, "idle": session.idle,
                                          "uidvalidity": session.uidvalidity, "last_uid": session.last_uid})
        await session.sync(catch_up=True)
        while not self._stopping.is_set():
            await session.wait_for_news()
            if time.time() >= session.log_in_again_at and await self._new_token_for(session):
                return     # run() opens the next session at once, with the new token
            if not self._stopping.is_set():
                await session.sync(catch_up=False)

    async def _new_token_for(self, session: MailboxSession) -> bool:
        """Whether a new token is at hand for the next session. Without one, this session goes on while its
        own token lasts (a server may end it then, as Exchange does), and a new one is asked for again."""
        assert self._tokens is not None and session.token is not None
        try:
            await self._tokens.token()
        except TokenError as exc:
            left = session.token.expires_at - time.time()
            session.log_in_again_at = time.time() + min(max(left / 2, 1.0), TOKEN_RETRY_SECONDS)
            log.warning("imap could not renew its access token; the session goes on with the current one",
                        extra={"problem": exc.problem, "error": exc.detail, "expires_in_seconds": round(left)})
            return left <= 0
        log.info("imap logging in again with a new access token", extra={"account": self.config.account})
        return True

    def _failed(self, exc: ImapFailure, retry_in: float) -> None:
        self.state = f"{exc.kind}: {exc.detail}"[:300]
        self._metrics.imap_connected.set(0)
        self._metrics.imap_idle_active.set(0)
        self._metrics.imap_errors.labels(exc.kind).inc()
        message = _FAILURE_MESSAGES.get(exc.kind, "imap disconnected")
        if exc.kind is FailureKind.LOGIN and self._tokens is not None:
            message = "imap refused the access token"
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


def _unexpected(exc: Exception) -> ImapFailure:
    """A bug, not a server problem: keep its traceback in the log, then treat it like any failure."""
    log.error("imap session failed unexpectedly", exc_info=exc)
    return ImapFailure(FailureKind.PROTOCOL, f"{type(exc).__name__}: {exc}")
