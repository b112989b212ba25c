"""One IMAP connection to the mailbox, from login to logout (see daemon/ingest/imap.py for the whole story).

Each command is bounded in time and raced against a lost connection: aioimaplib would
otherwise wait for an answer that can never come.
"""
from __future__ import annotations

import asyncio
import logging
import re
import ssl
import time
from typing import Any, Awaitable, TypeVar

import aioimaplib

from emergencyd.daemon.config.model import ImapConfig
from emergencyd.daemon.ingest.imap_failure import FailureKind, ImapFailure
from emergencyd.daemon.ingest.imap_sasl import authenticate, choose_mechanism
from emergencyd.daemon.ingest.imap_wire import (
    MessageMeta,
    batches,
    has_exists,
    mailbox_name,
    parse_bodies,
    parse_metadata,
    parse_search,
    return_path_of,
    uid_set,
    uidvalidity_of,
)
from emergencyd.daemon.ingest.intake import Ingest
from emergencyd.daemon.ingest.oauth2_keeper import FetchReason, TokenKeeper
from emergencyd.daemon.ingest.oauth2_settings import SaslMechanism
from emergencyd.daemon.ingest.oauth2_tokens import AccessToken, TokenError
from emergencyd.daemon.ops.metrics import Metrics
from emergencyd.daemon.store.asynchronous import AsyncStore
from emergencyd.daemon.store.errors import StoreError
from emergencyd.escalation.records import Envelope
from emergencyd.escalation.tls import ssl_context

log = logging.getLogger("emergencyd.imap")
T = TypeVar("T")

# An untagged LIST answer as aioimaplib hands it over ("LIST " removed): '(\\HasNoChildren) "/" Processed'
_LIST_ENTRY = re.compile(rb"^(LIST )?\(", re.IGNORECASE)

MAX_BATCH_BYTES = 32 * 1024 * 1024     # memory held by one UID FETCH of bodies
METADATA_SLICE = 200                   # UIDs per metadata FETCH (see _metadata)
SECONDS_PER_MEGABYTE = 1.0             # extra time a big FETCH may take beyond the command timeout


class MailboxSession:
    """One connection to the mailbox, from login to logout."""

    def __init__(self, config: ImapConfig, ingest: Ingest, store: AsyncStore, metrics: Metrics,
                 stopping: asyncio.Event, tokens: TokenKeeper | None = None):
        self.config = config
        self._tokens = tokens          # with [imap] auth = "oauth2"
        self._ingest = ingest
        self._store = store
        self._metrics = metrics
        self._stopping = stopping
        self._lost = asyncio.Event()
        self._client: aioimaplib.IMAP4 | None = None
        self.uidvalidity = 0
        self.last_uid = 0
        self.idle = False
        self.token: AccessToken | None = None   # the access token this session logged in with (OAuth 2.0)
        self.log_in_again_at = float("inf")     # epoch seconds: a new session, with a new token, is due then

    # -- commands, each bounded in time and aware of a lost connection ------------------

    async def _command(self, what: str, call: Awaitable[Any], *, timeout: float | None = None) -> Any:
        timeout = timeout or self.config.command_timeout_seconds
        task = asyncio.ensure_future(call)
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            done, _ = await asyncio.wait({task, lost}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
        if task not in done:
            task.cancel()
            if self._lost.is_set():
                raise ImapFailure(FailureKind.CONNECTION_LOST, f"connection lost during {what}")
            raise ImapFailure(FailureKind.TIMEOUT, f"no answer to {what} within {timeout:g}s")
        try:
            return task.result()
        except (asyncio.TimeoutError, aioimaplib.CommandTimeout):
            raise ImapFailure(FailureKind.TIMEOUT, f"no answer to {what} within {timeout:g}s") from None
        except aioimaplib.AioImapException as exc:
            raise ImapFailure(FailureKind.PROTOCOL, f"{what}: {exc}") from None

    async def _ok(self, what: str, call: Awaitable[Any], *, kind: FailureKind = FailureKind.PROTOCOL,
                  **kwargs: Any) -> Any:
        response = await self._command(what, call, **kwargs)
        if response.result != "OK":
            raise ImapFailure(kind, f"{what} answered {response.result}: {_text(response.lines)}")
        return response

    # -- connect, log in, select ---------------------------------------------------------

    @property
    def _imap(self) -> aioimaplib.IMAP4:
        """The connection, once open() made it."""
        if self._client is None:
            raise ImapFailure(FailureKind.PROTOCOL, "no connection")
        return self._client

    async def open(self) -> None:
        cfg = self.config
        try:
            if cfg.tls:
                client = aioimaplib.IMAP4_SSL(cfg.host, cfg.port, timeout=cfg.command_timeout_seconds,
                                              ssl_context=ssl_context(cfg.ca_file))
            else:
                client = aioimaplib.IMAP4(cfg.host, cfg.port, timeout=cfg.command_timeout_seconds)
        except OSError as exc:
            raise ImapFailure(FailureKind.CONNECT, str(exc)) from None
        client.protocol.conn_lost_cb = lambda exc: self._lost.set()
        self._client = client
        try:
            await self._command("connect", client.wait_hello_from_server())
        except ssl.SSLError as exc:
            raise ImapFailure(FailureKind.TLS, f"{cfg.host}:{cfg.port}: {exc.reason or exc}") from None
        except OSError as exc:
            raise ImapFailure(FailureKind.CONNECT, f"{cfg.host}:{cfg.port}: {exc.strerror or exc}") from None
        if self._tokens is not None:
            await self._log_in_with_a_token(client)
        else:
            assert cfg.password is not None          # the config requires one when IMAP is enabled
            await self._ok("LOGIN", client.login(cfg.username, cfg.password.value), kind=FailureKind.LOGIN)
        await self._ensure_processed_mailbox()
        selected = await self._ok(f"SELECT {cfg.mailbox}", client.select(mailbox_name(cfg.mailbox)),
                                  kind=FailureKind.MAILBOX)
        uidvalidity = uidvalidity_of(selected.lines)
        if uidvalidity is None:
            raise ImapFailure(FailureKind.PROTOCOL, f"SELECT {cfg.mailbox} gave no UIDVALIDITY")
        await self._adopt(uidvalidity)
        self.idle = cfg.idle and client.has_capability("IDLE")

    async def _log_in_with_a_token(self, client: aioimaplib.IMAP4) -> None:
        """SASL with the current token; a refused one that was not new is replaced and tried once more."""
        tokens, cfg = self._tokens, self.config
        assert tokens is not None and cfg.oauth2 is not None
        wanted = cfg.oauth2.mechanism
        mechanism = choose_mechanism(client.protocol.capabilities, wanted)
        if mechanism is None:
            asked = "XOAUTH2 or OAUTHBEARER" if wanted is SaslMechanism.AUTO else wanted.upper()
            offered = " ".join(sorted(client.protocol.capabilities))
            raise ImapFailure(FailureKind.LOGIN, f"the server offers no {asked} login (its capabilities: {offered})")
        token, new = await _token(tokens.token())
        refused = await self._authenticate(client, mechanism, token)
        if refused is not None and not new:     # revoked on the provider's side, say: a new one may do
            log.info("imap refused the access token; fetching a new one", extra={"answer": refused})
            token = await _token(tokens.fresh(FetchReason.REFUSED))
            refused = await self._authenticate(client, mechanism, token)
        if refused is not None:
            raise ImapFailure(FailureKind.LOGIN, f"{mechanism.upper()} refused a new access token ({refused}): the "
                              "mailbox may be disabled, or the app not allowed on it (docs/imap.md)")
        self.token = token
        self.log_in_again_at = tokens.renew_at(token)

    async def _authenticate(self, client: aioimaplib.IMAP4, mechanism: SaslMechanism,
                            token: AccessToken) -> str | None:
        return await self._command(f"AUTHENTICATE {mechanism.upper()}",
                                   authenticate(client, mechanism, self.config.username, token.value.value))

    async def _ensure_processed_mailbox(self) -> None:
        name = mailbox_name(self.config.processed_mailbox)
        listed = await self._ok("LIST", self._imap.list('""', name))
        if any(_LIST_ENTRY.match(bytes(line)) for line in listed.lines):
            return
        created = await self._command(f"CREATE {self.config.processed_mailbox}", self._imap.create(name))
        if created.result != "OK" and b"ALREADYEXISTS" not in b" ".join(map(bytes, created.lines)).upper():
            raise ImapFailure(FailureKind.MAILBOX,
                              f"cannot create {self.config.processed_mailbox}: {_text(created.lines)}")
        log.info("imap created the processed mailbox", extra={"mailbox": self.config.processed_mailbox})

    async def _adopt(self, uidvalidity: int) -> None:
        """Resume from the stored position; after a UIDVALIDITY change, start over (dedup keeps it safe)."""
        position = await self._store.imap_position(self.config.account)
        if position and position[0] == uidvalidity:
            self.uidvalidity, self.last_uid = position
            return
        if position:
            log.warning("imap UIDVALIDITY changed; resyncing the whole mailbox", extra={
                "account": self.config.account, "old": position[0], "new": uidvalidity})
        self.uidvalidity, self.last_uid = uidvalidity, 0
        await self._store.save_imap_position(self.config.account, uidvalidity, 0)

    async def close(self) -> None:
        if self._client is None:
            return
        if not self._lost.is_set():
            try:
                await self._command("LOGOUT", self._client.logout(), timeout=2.0)
            except ImapFailure:
                pass
        transport = self._client.protocol.transport
        if transport is not None:
            transport.close()

    # -- taking mail ------------------------------------------------------------------------

    async def sync(self, *, catch_up: bool) -> None:
        """Take every message above the last UID handled, or, catching up, every message present.

        Present messages at or below the last UID were committed but not moved (a crash, a
        failed MOVE): fetching them again is a no-op for the store, and then they move.
        """
        # A server adds mail that arrived since the last command to this session's view only
        # at the end of the next command (Dovecot: "* n EXISTS" after the tagged answer's
        # data). NOOP first, so the FETCH below sees it; then fetch again until nothing is
        # new, because mail that arrives during a FETCH or a MOVE is announced by that command
        # and would otherwise wait for the next push, or for the IDLE renewal.
        await self._ok("NOOP", self._imap.noop())
        first = 1 if catch_up else self.last_uid + 1
        while metas := await self._metadata(first):
            for batch in batches(metas, max_messages=self.config.batch_messages, max_bytes=MAX_BATCH_BYTES):
                if self._stopping.is_set():
                    return
                await self._take(batch)
            first = max(self.last_uid, metas[-1].uid) + 1
        self._metrics.imap_last_sync.set(time.time())

    async def _metadata(self, first: int) -> list[MessageMeta]:
        """Size and arrival time of every message from UID `first` on.

        SEARCH answers in one line; the FETCH goes by slices, because aioimaplib handles the
        lines of one read recursively and a read of a thousand FETCH lines overflows its stack.
        """
        found = await self._ok("UID SEARCH", self._imap.uid_search("UID", f"{first}:*", charset=None))
        uids = parse_search(found.lines, first_uid=first)
        metas: list[MessageMeta] = []
        for start in range(0, len(uids), METADATA_SLICE):
            response = await self._ok("UID FETCH metadata", self._imap.uid(
                "fetch", uid_set(uids[start:start + METADATA_SLICE]), "(UID RFC822.SIZE INTERNALDATE)"))
            metas += parse_metadata(response.lines, first_uid=first)
        return metas

    async def _take(self, batch: list[MessageMeta]) -> None:
        wanted = [m for m in batch if not self._too_large(m)]
        committed: list[int] = []
        vanished: set[int] = set()    # expunged by another client between the two FETCHes
        if wanted:
            bodies = await self._fetch_bodies(wanted)
            for meta in wanted:
                if self._stopping.is_set():
                    break
                if meta.uid not in bodies:
                    vanished.add(meta.uid)
                    log.warning("imap message vanished before its body was fetched", extra={"uid": meta.uid})
                    continue
                await self._commit(meta, bodies.pop(meta.uid))
                committed.append(meta.uid)
        # Too large ones count as handled: they are left in the mailbox for a human.
        handled = set(committed) | vanished | {m.uid for m in batch if m not in wanted}
        handled_up_to = self.last_uid
        for meta in batch:   # the position only passes a UID when every one before it is handled
            if meta.uid not in handled:
                break
            handled_up_to = max(handled_up_to, meta.uid)
        if handled_up_to > self.last_uid:
            self.last_uid = handled_up_to
            await self._save_position()
        if committed:
            await self._move(committed)

    def _too_large(self, meta: MessageMeta) -> bool:
        if meta.size <= self.config.max_message_bytes:
            return False
        self._metrics.imap_errors.labels(FailureKind.TOO_LARGE).inc()
        log.error("imap message too large; left in the mailbox for a human", extra={
            "uid": meta.uid, "bytes": meta.size, "max_message_bytes": self.config.max_message_bytes})
        return True

    async def _fetch_bodies(self, metas: list[MessageMeta]) -> dict[int, bytes]:
        size = sum(m.size for m in metas)
        timeout = self.config.command_timeout_seconds + SECONDS_PER_MEGABYTE * size / 1_000_000
        response = await self._ok("UID FETCH bodies",
                                  self._imap.uid("fetch", uid_set(m.uid for m in metas), "(UID BODY.PEEK[])"),
                                  timeout=timeout)
        return parse_bodies(response.lines)

    async def _commit(self, meta: MessageMeta, raw: bytes) -> None:
        self._metrics.imap_fetched.inc()
        now = time.time()
        received_at = min(meta.internaldate or now, now)
        envelope = Envelope(source="imap", mail_from=return_path_of(raw), rcpt_to=(self.config.username,),
                            peer=f"{self.config.host}:{self.config.port}", helo="", tls=self.config.tls,
                            received_at=received_at)
        try:
            result = await self._ingest(raw, envelope)
        except StoreError as exc:
            raise ImapFailure(FailureKind.STORE, str(exc)) from None
        if meta.internaldate is not None:
            self._metrics.imap_pickup_latency.observe(max(time.time() - meta.internaldate, 0.0))
        log.info("imap message %s", "duplicate" if result.duplicate else "stored",
                 extra={"uid": meta.uid, "message_pk": result.message_pk, "bytes": len(raw)})

    async def _save_position(self) -> None:
        try:
            await self._store.save_imap_position(self.config.account, self.uidvalidity, self.last_uid)
        except StoreError as exc:
            raise ImapFailure(FailureKind.STORE, str(exc)) from None

    async def _move(self, uids: list[int]) -> None:
        """MOVE when offered; else COPY, \\Deleted and UID EXPUNGE of exactly these UIDs."""
        uids_text, target = uid_set(uids), mailbox_name(self.config.processed_mailbox)
        client = self._imap
        try:
            if client.has_capability("MOVE"):
                await self._ok("UID MOVE", client.uid("move", uids_text, target), kind=FailureKind.MOVE)
                return
            await self._ok("UID COPY", client.uid("copy", uids_text, target), kind=FailureKind.MOVE)
            await self._ok("UID STORE", client.uid("store", uids_text, "+FLAGS.SILENT", r"(\Deleted)"),
                           kind=FailureKind.MOVE)
            if client.has_capability("UIDPLUS"):
                await self._ok("UID EXPUNGE", client.uid("expunge", uids_text), kind=FailureKind.MOVE)
            else:
                await self._ok("EXPUNGE", client.expunge(), kind=FailureKind.MOVE)
        except ImapFailure as exc:
            if exc.kind != FailureKind.MOVE:
                raise
            # Committed already: nothing is lost. They stay, and the next catch-up moves them.
            self._metrics.imap_errors.labels(FailureKind.MOVE).inc()
            log.error("imap could not move handled mail; it stays in the mailbox until the next catch-up",
                      extra={"uids": uids_text, "error": exc.detail})

    # -- waiting for news -----------------------------------------------------------------

    async def wait_for_news(self) -> None:
        """Until new mail may be there: an IDLE push, the IDLE renewal time, or the poll interval."""
        if self.idle:
            try:
                await self._idle_once()
                return
            except ImapFailure as exc:
                if exc.kind != FailureKind.PROTOCOL or self._lost.is_set():
                    raise
                self.idle = False
                self._metrics.imap_idle_active.set(0)
                log.warning("imap IDLE failed; polling instead for this connection", extra={"error": exc.detail})
        await self._pause(min(self.config.poll_interval_seconds, self.seconds_left()))

    def seconds_left(self) -> float:
        """Until a new session is due (its token's renewal), at least a moment; a password session has no end."""
        return max(self.log_in_again_at - time.time(), 0.01)

    async def _idle_once(self) -> None:
        client = self._imap
        renew = min(self.config.idle_renew_seconds, self.seconds_left())
        idle = await self._command("IDLE", client.idle_start(timeout=renew + 60))
        self._metrics.imap_idle_active.set(1)
        try:
            deadline = time.monotonic() + renew
            while not self._stopping.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                push = await self._next_push(remaining)
                if push is None or push == aioimaplib.STOP_WAIT_SERVER_PUSH or has_exists(push):
                    break
        finally:
            if not self._lost.is_set():
                client.idle_done()
        await self._ok("IDLE DONE", idle)

    async def _next_push(self, timeout: float) -> list[bytes] | None:
        """The next IDLE push, or None when the wait ended without one (time, or stopping)."""
        push = asyncio.ensure_future(self._imap.wait_server_push(timeout=timeout))
        return await self._wait(timeout, "idling", push)

    async def _pause(self, seconds: float) -> None:
        await self._wait(seconds, "waiting to poll")

    async def _wait(self, seconds: float, doing: str, news: asyncio.Future | None = None) -> Any:
        """Up to `seconds`, until `news` comes or the daemon stops; a lost connection is raised."""
        lost = asyncio.ensure_future(self._lost.wait())
        waits = {lost, asyncio.ensure_future(self._stopping.wait())} | ({news} if news else set())
        done, pending = await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        if lost in done:
            raise ImapFailure(FailureKind.CONNECTION_LOST, f"connection lost while {doing}")
        if news in done and not news.cancelled() and news.exception() is None:
            return news.result()
        return None


async def _token(fetching: Awaitable[T]) -> T:
    try:
        return await fetching
    except TokenError as exc:
        kind = FailureKind.TOKEN if exc.problem.needs_a_person else FailureKind.TOKEN_ENDPOINT
        raise ImapFailure(kind, f"no access token ({exc.problem}: {exc.detail}); {exc.problem.advice}") from None


def _text(lines: list[Any]) -> str:
    text = " ".join(bytes(line).decode("utf-8", "replace") for line in lines if isinstance(line, (bytes, bytearray)))
    return text[:200]
