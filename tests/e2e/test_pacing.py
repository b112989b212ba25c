"""The Zendesk pacer: ticket creates go ahead of waiting comments, the rate stays the rate.

Real threads and the real clock; the assertions are about order and counts, never about timings.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from emergencyd.daemon.config.model import ZendeskConfig
from emergencyd.daemon.config.reader import Secret
from emergencyd.escalation.content import CommentRequest, TicketRequest
from emergencyd.escalation.zendesk import ZendeskDesk
from tests.harness import ZENDESK_EMAIL, ZENDESK_TOKEN, wait_until


def desk_for(zendesk, ca_file, per_minute: int) -> ZendeskDesk:
    return ZendeskDesk(ZendeskConfig(url=zendesk.url, email=ZENDESK_EMAIL, ca_file=ca_file,
                                     token=Secret(ZENDESK_TOKEN), timeout_seconds=5,
                                     requests_per_minute=per_minute))


def ticket(n: int) -> TicketRequest:
    return TicketRequest(external_id=f"emergencyd:<{n}@pacing.example>", subject=f"Ticket {n}", body="Down.",
                         requester_email="tenant@example.net", requester_name=None)


def test_a_ticket_create_tells_when_it_queues_behind_the_pacer(zendesk, ca_file):
    desk = desk_for(zendesk, ca_file, per_minute=600)     # a burst of 20, then 10 a second
    queued = []
    first = desk.create_ticket(ticket(1), on_queued=lambda: queued.append(1))
    assert queued == []                                   # a token was free: it went at once
    # Far more than the bucket holds: 25 wait, 2.5 s of refills, so every token that comes back is taken by a
    # waiting comment and the create below must queue, however slowly this machine gets to it.
    comments = 45
    with ThreadPoolExecutor(comments) as pool:
        adding = [pool.submit(desk.add_comment, CommentRequest(ticket_id=first, body=f"comment {n}",
                                                               author_email=None, author_name=None, marker=f"m{n}"))
                  for n in range(comments)]
        wait_until(lambda: len(zendesk.requests) >= 20, "the bucket to be spent")
        desk.create_ticket(ticket(2), on_queued=lambda: queued.append(2))
    for added in adding:
        added.result()                                    # a comment that failed says why
    assert queued == [2]
    assert len(zendesk.tickets()) == 2 and len(zendesk.comments(first)) == comments + 1
