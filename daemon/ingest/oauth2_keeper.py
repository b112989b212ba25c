"""The IMAP session's access token: fetched on a thread (never on the event loop), kept until a new one is due.

A new token is due a while before the current one expires: Exchange Online ends a session when its token
expires, so the session logs in again with a new one before that (daemon/ingest/imap.py). A token the server
refuses is replaced at once (revoked on the provider's side, say): `fresh()`.
"""
from __future__ import annotations

import asyncio
import logging
import time
from enum import StrEnum

from emergencyd.daemon.config.model import ImapConfig
from emergencyd.daemon.ingest.oauth2_settings import ImapAuth
from emergencyd.daemon.ingest.oauth2_tokens import FETCHED, AccessToken, TokenError, TokenSource, token_source
from emergencyd.daemon.ops.metrics import Metrics

log = logging.getLogger("emergencyd.imap")

class FetchReason(StrEnum):
    """Why a token is asked for, in the log line."""
    FIRST = "first"          # none yet
    DUE = "due"              # the current one is near its end
    REFUSED = "refused"      # the server refused the current one


RENEW_BEFORE_SECONDS = 300.0   # log in again with a new token this long before the session's token expires
RENEW_FRACTION = 0.2           # or with a fifth of its life left, for tokens that live less than 25 minutes


class TokenKeeper:
    def __init__(self, source: TokenSource, metrics: Metrics, grant: str):
        self._source = source
        self._metrics = metrics
        self._grant = grant            # for logs: provider and grant, never a secret
        self._token: AccessToken | None = None
        self._lock = asyncio.Lock()    # one fetch at a time

    def renew_at(self, token: AccessToken) -> float:
        """When a session that logged in with `token` should log in again with a new one."""
        lifetime = max(token.expires_at - token.fetched_at, 0.0)
        return token.expires_at - min(RENEW_BEFORE_SECONDS, lifetime * RENEW_FRACTION)

    async def token(self) -> tuple[AccessToken, bool]:
        """The current token, or a new one when it is due (or there is none yet); and whether it is new."""
        async with self._lock:
            token = self._token
            if token is not None and time.time() < self.renew_at(token):
                return token, False
            return await self._fetch(FetchReason.DUE if token else FetchReason.FIRST), True

    async def fresh(self, why: FetchReason) -> AccessToken:
        """A new token, whatever the current one's age."""
        async with self._lock:
            return await self._fetch(why)

    async def _fetch(self, why: FetchReason) -> AccessToken:
        try:
            token = await asyncio.to_thread(self._source.fetch)
        except TokenError as exc:
            self._metrics.imap_oauth2_fetches.labels(exc.problem).inc()
            raise
        self._token = token
        self._metrics.imap_oauth2_fetches.labels(FETCHED).inc()
        self._metrics.imap_oauth2_expiry.set(token.expires_at)
        log.info("imap fetched an access token", extra={
            "grant": self._grant, "why": why, "expires_in_seconds": round(token.expires_at - time.time())})
        return token


def keeper_for(config: ImapConfig, metrics: Metrics) -> TokenKeeper | None:
    """The keeper of [imap] auth = "oauth2"; TokenError for a key that does not even parse."""
    if config.auth is not ImapAuth.OAUTH2 or config.oauth2 is None:
        return None
    return TokenKeeper(token_source(config.oauth2, config.username), metrics, config.oauth2.describe)
