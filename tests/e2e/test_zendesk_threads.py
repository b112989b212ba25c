"""The Zendesk desk called from several threads at once, as the escalator's pool of `concurrency` threads calls
it: through zenpy and the fake, every call's own answer, and no error that belongs to another thread's call."""
from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from emergencyd.escalation.content import CommentRequest, NoteRequest
from tests.e2e.test_pacing import desk_for, ticket

CALLS = 300
THREADS = 16


@pytest.fixture
def threads_switch_often():
    """The GIL handed over every microsecond instead of every 5 ms: interleavings that a busy machine
    makes now and then, made every run."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


def test_comments_and_notes_from_many_threads_at_once_each_succeed_once(zendesk, ca_file, threads_switch_often):
    desk = desk_for(zendesk, ca_file, per_minute=600_000)     # no pacing: the calls overlap as much as they can
    ticket_id = desk.create_ticket(ticket(1))

    def call(n: int) -> None:
        if n % 2:
            desk.add_note(NoteRequest(ticket_id=ticket_id, body=f"note {n}", marker=f"n{n}"))
        else:
            author = f"tenant{n % 5}@example.net" if n % 4 == 0 else None     # some as their senders
            desk.add_comment(CommentRequest(ticket_id=ticket_id, body=f"comment {n}", author_email=author,
                                            author_name=None, marker=f"m{n}"))

    with ThreadPoolExecutor(THREADS) as pool:
        failures = [repr(exc) for exc in (f.exception() for f in [pool.submit(call, n) for n in range(CALLS)]) if exc]
    assert failures == []
    bodies = sorted(c["body"] for c in zendesk.comments(ticket_id))
    assert bodies == sorted(["Down."] + [f"note {n}" if n % 2 else f"comment {n}" for n in range(CALLS)])
