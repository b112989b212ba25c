"""The Zendesk pacer: ticket creates go ahead of waiting comments, the rate stays the rate.

Real threads and the real clock; the assertions are about order and counts, never about timings.
"""
from __future__ import annotations

import threading
import time

import pytest
import requests

from emergencyd.escalation.content import TicketRequest
from emergencyd.escalation.pacing import Lane, Pacer
from emergencyd.escalation.zendesk import lane_of
from tests.harness import PATIENCE_SECONDS, wait_until

FIRST_CALL = "first"      # what the first call records if it is queued


class Takers:
    """Threads that each take one token, and the order in which they got them."""

    def __init__(self, pacer: Pacer):
        self.pacer = pacer
        self.granted: list[str] = []
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def start(self, name: str, lane: Lane) -> None:
        thread = threading.Thread(target=self._take, args=(name, lane), name=name)
        self._threads.append(thread)
        thread.start()

    def _take(self, name: str, lane: Lane) -> None:
        self.pacer.wait(lane)
        with self._lock:
            self.granted.append(name)

    def served(self) -> list[str]:
        with self._lock:
            return list(self.granted)

    def join(self) -> None:
        for thread in self._threads:
            thread.join(PATIENCE_SECONDS)


def test_a_create_that_arrives_last_gets_the_next_token_first():
    pacer = Pacer(per_minute=90, burst=1)      # a token each 2/3 s: four waiters in under 3 s
    pacer.wait()                               # the bucket is empty
    takers = Takers(pacer)
    comments = [f"comment {n}" for n in range(3)]
    for n, name in enumerate(comments):        # one after the other, so that their order is known
        takers.start(name, Lane.OTHER)
        wait_until(lambda: pacer.waiting() + len(takers.served()) == n + 1, f"{name} to queue")
    takers.start("create", Lane.CREATE)
    wait_until(lambda: pacer.waiting(Lane.CREATE) == 1, "the create to queue")
    before = takers.served()                   # normally none: the first token was not due yet
    takers.join()
    assert takers.served() == before + ["create"] + [c for c in comments if c not in before]
    assert pacer.waiting() == 0


def test_waiters_of_one_lane_are_served_in_arrival_order():
    pacer = Pacer(per_minute=600, burst=1)
    pacer.wait()
    takers = Takers(pacer)
    for n in range(5):
        takers.start(f"comment {n}", Lane.OTHER)
        wait_until(lambda: pacer.waiting() + len(takers.served()) == n + 1, f"comment {n} to queue")
    takers.join()
    assert takers.served() == [f"comment {n}" for n in range(5)]


def test_the_lanes_keep_the_rate():
    per_minute, burst = 600, 5
    pacer = Pacer(per_minute=per_minute, burst=burst)
    began = time.monotonic()
    stop = began + 1.0
    granted = []

    def take_until_stop(lane: Lane) -> None:
        while time.monotonic() < stop:
            pacer.wait(lane)
            granted.append(lane)           # list.append is atomic

    threads = [threading.Thread(target=take_until_stop, args=(lane,)) for lane in (Lane.CREATE, Lane.OTHER) * 3]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(PATIENCE_SECONDS)
    elapsed = time.monotonic() - began
    assert burst < len(granted) <= burst + per_minute / 60 * elapsed + 1
    assert set(granted) == {Lane.CREATE, Lane.OTHER}


def test_on_queued_is_called_only_when_the_call_has_to_wait():
    pacer = Pacer(per_minute=120, burst=2)
    calls = []
    pacer.wait(Lane.CREATE, on_queued=lambda: calls.append(FIRST_CALL))
    pacer.wait(Lane.CREATE, on_queued=lambda: calls.append("second"))
    assert calls == []                         # the bucket held two tokens
    pacer.wait(Lane.CREATE, on_queued=lambda: calls.append("third"))
    assert calls == ["third"]


@pytest.mark.parametrize("method, path, lane", [
    ("POST", "/api/v2/tickets.json", Lane.CREATE),
    ("PUT", "/api/v2/tickets/7.json", Lane.OTHER),
    ("GET", "/api/v2/tickets.json", Lane.OTHER),
    ("GET", "/api/v2/tickets/7/comments.json", Lane.OTHER),
    ("POST", "/api/v2/users/create_or_update.json", Lane.OTHER),
])
def test_the_lane_comes_from_the_method_and_the_path(method, path, lane):
    request = requests.Request(method, f"https://acme.zendesk.com{path}?external_id=x").prepare()
    assert lane_of(request) == lane


def ticket(n: int) -> TicketRequest:
    return TicketRequest(external_id=f"emergencyd:<{n}@pacing.example>", subject=f"Ticket {n}", body="Down.",
                         requester_email="tenant@example.net", requester_name=None)


def test_take_now_never_waits_and_says_when_the_next_token_comes():
    """The runner's pace of first mails asks without blocking (daemon/runner.py)."""
    pacer = Pacer(per_minute=1, burst=2)       # a token a minute: none comes back within this test
    assert pacer.seconds_until_token() == 0.0
    assert [pacer.take_now() for _ in range(3)] == [True, True, False]
    assert 50.0 < pacer.seconds_until_token() <= 60.0


def test_take_now_does_not_jump_a_call_waiting_for_a_token():
    pacer = Pacer(per_minute=60, burst=1)      # a token each second
    assert pacer.take_now()
    takers = Takers(pacer)
    takers.start(FIRST_CALL, Lane.OTHER)
    wait_until(lambda: pacer.waiting() == 1, "the call queues for the next token")
    assert not pacer.take_now()                # the coming token is the waiting call's
    takers.join()
    assert takers.served() == [FIRST_CALL]
