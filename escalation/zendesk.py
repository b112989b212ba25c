"""Zendesk through zenpy. Synchronous: the runner calls it from a worker thread.

zenpy has no base-URL parameter: the host is "{subdomain}.{domain}", so the URL's
host is split at its first dot (which also reaches a loopback fake as "127" +
"0.0.1:PORT"). Our own response hook turns every non-2xx answer into
HttpStatusError before zenpy's handling, so that zenpy never sleeps on a 429 and
never crashes on an HTTP-date Retry-After: our retry schedule decides.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from urllib.parse import urlsplit

import requests
import requests.adapters
from zenpy import Zenpy
from zenpy.lib.api_objects import Comment, Ticket, User

from emergencyd.escalation.content import CommentRequest, NoteRequest, TicketRequest
from emergencyd.escalation.directory import DirectoryCopy, directory_from
from emergencyd.escalation.pacing import Lane, Pacer
from emergencyd.escalation.retry import (
    HttpStatusError,
    RetryAfterGate,
    parse_retry_after,
    require_json,
)
from emergencyd.escalation.settings import ZendeskConfig
from emergencyd.escalation.tls import verifying_session

# zenpy sends the request from deep inside its own calls, on the calling thread, with no way to
# pass anything down: a thread-local is how create_ticket tells the adapter whom to tell when it queues.
_caller = threading.local()


@contextmanager
def _telling_when_queued(on_queued: Callable[[], None] | None) -> Iterator[None]:
    _caller.on_queued = on_queued
    try:
        yield
    finally:
        _caller.on_queued = None


def lane_of(request: requests.PreparedRequest) -> Lane:
    """A ticket create goes ahead of waiting comments, notes and reads."""
    path = urlsplit(request.url or "").path
    return Lane.CREATE if request.method == "POST" and path.endswith("/api/v2/tickets.json") else Lane.OTHER


def paced(pacer: Pacer, gate: RetryAfterGate):
    """A requests adapter that takes a token before each request, whoever makes it, and makes
    none while Zendesk's last Retry-After lasts."""
    class PacedAdapter(requests.adapters.HTTPAdapter):
        def send(self, request, *args, **kwargs):
            gate.check()
            pacer.wait(lane_of(request), on_queued=getattr(_caller, "on_queued", None))
            gate.check()
            return super().send(request, *args, **kwargs)
    return PacedAdapter()


def raise_for_status(integration: str, gate: RetryAfterGate):
    def hook(response: requests.Response, *args, **kwargs) -> None:
        if response.status_code >= 400:
            error = HttpStatusError(integration, response.status_code, response.text[:2000],
                                    parse_retry_after(response.headers.get("Retry-After")))
            gate.observe(error)
            raise error
        # zenpy hands a non-JSON 200 back as if it were the answer: an update would count as done.
        require_json(integration, response.status_code, response.text)
    return hook


def split_host(url: str) -> tuple[str, str]:
    """'https://acme.zendesk.com' -> ('acme', 'zendesk.com'); keeps a port on the domain."""
    netloc = urlsplit(url).netloc
    subdomain, _, domain = netloc.partition(".")
    return subdomain, domain


class ZendeskDesk:
    def __init__(self, config: ZendeskConfig):
        if config.token is None:
            raise ValueError("a Zendesk token is required")
        session = verifying_session(config.ca_file)
        gate = RetryAfterGate("zendesk")     # Zendesk's rate limit is the account's: one pause for all
        session.hooks["response"].append(raise_for_status("zendesk", gate))
        session.mount("https://", paced(Pacer(config.requests_per_minute), gate))
        subdomain, domain = split_host(config.url)
        self._agent_url_base = config.agent_url_base
        self._user_ids: dict[str, int] = {}
        self._new_client = partial(Zenpy, subdomain=subdomain, domain=domain, email=config.email,
                                   token=config.token.value, session=session,
                                   timeout=config.timeout_seconds, disable_cache=True)
        self._clients = threading.local()

    @property
    def _client(self) -> Zenpy:
        """This thread's zenpy client. zenpy keeps each call's state on its API objects (the object it
        sent, cleaned after the answer), so two threads on one client break each other's calls: a call
        that succeeded raised a TypeError and was made again. The clients share one session: one
        connection pool, one pacer, one Retry-After pause."""
        client = getattr(self._clients, "zenpy", None)
        if client is None:
            client = self._clients.zenpy = self._new_client()
        return client

    def ticket_url(self, ticket_id: int) -> str:
        return f"{self._agent_url_base}{ticket_id}"

    def directory(self) -> DirectoryCopy:
        """The tenant directory as Zendesk keeps it: organizations' domain names, and their end users."""
        return directory_from(self._client.organizations(), self._client.users(role="end-user"), time.time())

    def find_ticket(self, external_id: str) -> int | None:
        """external_id is not unique on Zendesk's side: take the oldest, which is ours."""
        ids = sorted(t.id for t in self._client.tickets(external_id=external_id))
        return ids[0] if ids else None

    def create_ticket(self, request: TicketRequest, *, on_queued: Callable[[], None] | None = None) -> int:
        """on_queued is called, from this thread, if the create has to wait for the pacer's token."""
        requester = None
        if request.requester_email:
            requester = User(email=request.requester_email, name=request.requester_name or request.requester_email)
        ticket = Ticket(subject=request.subject, external_id=request.external_id, tags=list(request.tags),
                        priority=request.priority, requester=requester, type=request.type,
                        problem_id=request.problem_id, comment=Comment(body=request.body, public=True))
        with _telling_when_queued(on_queued):
            audit = self._client.tickets.create(ticket)
        return audit.ticket.id

    def has_comment(self, ticket_id: int, marker: str) -> bool:
        return any(marker in (c.body or "") for c in self._client.tickets.comments(ticket=ticket_id))

    def add_comment(self, request: CommentRequest) -> None:
        """A public comment authored by the sender (created as an end user if Zendesk has none)."""
        comment = Comment(body=request.body, public=True)
        if request.author_email:
            comment.author_id = self._user_id(request.author_email, request.author_name)
        ticket = Ticket(id=request.ticket_id)
        ticket.comment = comment
        self._client.tickets.update(ticket)

    def _user_id(self, email: str, name: str | None) -> int:
        """A storm comments as the same sender hundreds of times: ask Zendesk once per address."""
        key = email.lower()
        user_id = self._user_ids.get(key)
        if user_id is None:     # read once: another thread may clear the cache meanwhile
            user_id = self._client.users.create_or_update(User(email=email, name=name or email)).id
            if len(self._user_ids) > 10_000:
                self._user_ids.clear()
            self._user_ids[key] = user_id
        return user_id

    def add_note(self, note: NoteRequest) -> None:
        ticket = Ticket(id=note.ticket_id)
        ticket.comment = Comment(body=note.body, public=False)
        self._client.tickets.update(ticket)
