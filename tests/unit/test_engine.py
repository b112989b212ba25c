"""The escalation engine in this process: the real store, policy and worker processes, an in-memory desk
and pager behind the engine's ports (escalation/ports.py), and a wall clock the test moves on.

The end-to-end tests reach Zendesk and PagerDuty fakes over HTTPS through the real clients; these look at
the engine's own rules, in the order things happen: which call comes before which, what the new-page cap
holds back and lets go a minute later, and what the ticket's head start makes the page wait for.
"""
from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import pytest

from emergencyd.daemon.app import escalation_settings
from emergencyd.daemon.config.model import StoreConfig, load_config
from emergencyd.daemon.store.asynchronous import AsyncStore
from emergencyd.daemon.store.thread import BACKGROUND, URGENT, store_priority
from emergencyd.escalation.content import (
    CommentRequest,
    Incident,
    IncidentNoteRequest,
    NoteRequest,
    PageRequest,
    TicketRequest,
)
from emergencyd.escalation.cpu_pool import CpuPool
from emergencyd.escalation.directory import DirectoryCopy
from emergencyd.escalation.records import Envelope, EscalationState, StepName, StepOutcome, StepState
from emergencyd.escalation.steps import Escalator, classify_context
from tests.harness import RECIPIENT, live_env, make_message, write_config

WAIT_SECONDS = 20.0      # how long a test waits for something that should happen at once: a bound, not a timing
HOLD_FOREVER = 3600.0    # a head start the test would never see end
LINK_NOTE = "[emergencyd:paged:"   # the marker of the ticket's note with the page's dedup_key (content.link_note)
# What MemoryDesk records of each call, and Recorder of a fallback alert.
TICKET_CALL = "ticket"
COMMENT_CALL = "comment"
NOTE_CALL = "note"
FALLBACK_ALERT_EVENT = "fallback_alert"


class Clock:
    """The wall clock, moved on by the test: time.time() plus what the test added."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


class MemoryDesk:
    """The help desk port in memory. A create can be held (`hold`), and can say first that it queues
    behind the pacer (`queues`), as the Zendesk client does when its pacing makes a create wait."""

    def __init__(self, pager: "MemoryPager") -> None:
        self.pager = pager
        self.calls: list[tuple[str, object]] = []
        self.tickets: dict[int, TicketRequest] = {}
        self.pages_when_created: list[int] = []     # how many pages had gone when each ticket was made
        self.link_notes: list[int] = []             # and when each note with the page's link was posted
        self.hold: threading.Event | None = None
        self.queues = False
        self.creating = threading.Event()           # a create has begun

    def ticket_url(self, ticket_id: int) -> str:
        return f"https://desk.example/tickets/{ticket_id}"

    def find_ticket(self, external_id: str) -> int | None:
        return next((i for i, t in self.tickets.items() if t.external_id == external_id), None)

    def create_ticket(self, request: TicketRequest, *, on_queued: Callable[[], None] | None = None) -> int:
        self.creating.set()
        if self.queues and on_queued is not None:
            on_queued()
        if self.hold is not None:
            assert self.hold.wait(WAIT_SECONDS), "the test never let the ticket through"
        ticket_id = len(self.tickets) + 1
        self.tickets[ticket_id] = request
        self.pages_when_created.append(len(self.pager.pages))
        self.calls.append((TICKET_CALL, request.external_id))
        return ticket_id

    def has_comment(self, ticket_id: int, marker: str) -> bool:
        return False

    def add_comment(self, request: CommentRequest) -> None:
        self.calls.append((COMMENT_CALL, request.ticket_id))

    def add_note(self, note: NoteRequest) -> None:
        self.calls.append((NOTE_CALL, note.marker))
        self.link_notes += [len(self.pager.pages)] if note.marker.startswith(LINK_NOTE) else []

    def directory(self) -> DirectoryCopy:
        raise AssertionError("the engine tests never read the tenant directory")


class MemoryPager:
    """The pager port in memory: Events only (no REST token), as with the shipped config."""

    has_rest_api = False

    def __init__(self) -> None:
        self.pages: list[PageRequest] = []

    def trigger(self, page: PageRequest) -> str:
        self.pages.append(page)
        return page.dedup_key

    def find_incident(self, dedup_key: str) -> Incident | None:
        return None

    def has_note(self, incident_id: str, marker: str) -> bool:
        return False

    def add_note(self, incident_id: str, note: IncidentNoteRequest) -> None:
        raise AssertionError("no REST token: no incident notes")


class Recorder:
    """The engine's observer port: what it reports, in order."""

    def __init__(self) -> None:
        self.failing_since: dict[str, float] = {}
        self.events: list[tuple[str, ...]] = []
        self.step_priorities: list[tuple[str, int]] = []   # each finished step, with its store calls' priority
        self.plan_priorities: list[int] = []               # each decision's, as its plan was written

    def step_finished(self, integration: str, step: str, outcome: str, status_class: str) -> None:
        self.events.append(("step", step, outcome))
        self.step_priorities.append((step, store_priority.get()))

    def paged(self, seconds_since_receipt: float) -> None:
        self.events.append(("paged",))

    def decided(self, verdict: object) -> None:
        pass

    def related(self, kind: str) -> None:
        self.events.append(("related", kind))
        self.plan_priorities.append(store_priority.get())

    def page_deferred(self) -> None:
        self.events.append(("page_deferred",))

    def fallback_alert(self, outcome: str) -> None:
        self.events.append((FALLBACK_ALERT_EVENT, outcome))

    def spam_checked(self, outcome: str) -> None:
        pass


class Engine:
    def __init__(self, tmp_path: Path, **settings: object) -> None:
        config = load_config(write_config(tmp_path, dry_run=False, policy=True), environ=live_env())
        self.settings = replace(escalation_settings(config), **settings)   # type: ignore[arg-type]
        self.clock = Clock()
        self.pager = MemoryPager()
        self.desk = MemoryDesk(self.pager)
        self.observer = Recorder()
        self.store = AsyncStore.open(StoreConfig(path=tmp_path / "store.sqlite3", busy_timeout_ms=2000))
        cpu = CpuPool(classify_context(config.policy, self.settings), workers=1, timeout_seconds=60)
        self.escalator = Escalator(self.store, self.desk, self.pager, self.settings, self.observer, cpu,
                                   clock=self.clock)

    async def mail(self, sender: str, subject: str, body: str) -> int:
        raw = make_message(subject=subject, body=body, sender=sender,
                           message_id=f"<{subject.replace(' ', '.')}@{sender.split('@')[1]}>")
        envelope = Envelope(source="smtp", mail_from=sender, rcpt_to=(RECIPIENT,), peer="127.0.0.1:25000",
                            helo="mx.example.net", tls=False, received_at=time.time())
        return (await self.store.ingest(raw, envelope)).message_pk

    async def breach(self, tenant: str) -> int:
        """A P1 of its own: a security breach at one tenant, a new incident each."""
        return await self.mail(f"ops@{tenant}.example", f"Security breach at {tenant}",
                               "We have been hacked: an attacker has access to our production database.")

    def close(self) -> None:
        self.escalator.close()
        self.store.close()


@pytest.fixture
async def engine(tmp_path):
    made: list[Engine] = []

    def make(**settings: object) -> Engine:
        made.append(Engine(tmp_path, **settings))
        return made[-1]
    yield make
    for one in made:
        one.close()


async def until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        assert time.monotonic() < deadline, "the engine did not get there"
        await asyncio.sleep(0.01)


async def test_a_p1_goes_ticket_then_page_with_its_link_then_the_link_note(engine):
    e = engine()
    pk = await e.breach("shop-a")
    await e.escalator.advance(pk)
    record = await e.store.record(pk)
    assert record.state == EscalationState.DONE
    assert {s.name: s.state for s in record.steps} == {
        StepName.TICKET: StepState.DONE, StepName.TICKET_NOTE: StepState.DONE, StepName.PAGE: StepState.DONE,
        StepName.LINK_TICKET: StepState.DONE}
    assert e.desk.pages_when_created == [0]                         # the ticket came first ...
    [page] = e.pager.pages
    assert [link["href"] for link in page.links] == [e.desk.ticket_url(1)]   # ... so the page carries its link
    assert page.dedup_key == record.dedup_key
    assert e.desk.calls[0] == (TICKET_CALL, record.dedup_key)
    assert e.desk.link_notes == [1]                                  # and the link note after the page
    assert [event for event in e.observer.events if event[0] == "step"][-1] == \
        ("step", StepName.LINK_TICKET, StepOutcome.SUCCESS)


async def test_the_plan_and_steps_of_mail_that_pages_nothing_are_background_work(engine):
    """A ticket without a page is no one's wait but Zendesk's: once classified, its plan's and its steps'
    store calls go behind other mail's decisions and pages on the store's thread (daemon/store/thread.py)."""
    e = engine()
    question = await e.mail("billing@shop-a.example", "Question about an invoice",
                            "Could you send us last month's invoice again?")
    await e.escalator.advance(question)
    assert store_priority.get() == URGENT                          # only within the escalation's steps
    breach = await e.breach("shop-b")
    await e.escalator.advance(breach)
    asked, paged = await e.store.record(question), await e.store.record(breach)
    assert asked.state == paged.state == EscalationState.DONE
    assert asked.step(StepName.PAGE) is None and paged.step(StepName.PAGE) is not None
    ticket_only = [p for _, p in e.observer.step_priorities[:len(asked.steps)]]
    paging = [p for _, p in e.observer.step_priorities[len(asked.steps):]]
    assert ticket_only == [BACKGROUND] * len(asked.steps), e.observer.step_priorities
    assert paging == [URGENT] * len(paged.steps), e.observer.step_priorities
    assert e.observer.plan_priorities == [BACKGROUND, URGENT]
    calls = list(e.desk.calls)
    await e.escalator.advance(question)                            # a finished escalation: nothing to run
    assert e.desk.calls == calls and len(e.pager.pages) == 1


async def test_the_new_page_cap_holds_a_page_a_minute_and_never_its_ticket(engine):
    e = engine(max_new_pages_per_minute=2)
    pks = [await e.breach(tenant) for tenant in ("shop-a", "shop-b", "shop-c")]
    for pk in pks:
        await e.escalator.advance(pk)
    assert len(e.pager.pages) == 2 and len(e.desk.tickets) == 3     # two pages; every ticket
    held = await e.store.record(pks[2])
    page = held.planned(StepName.PAGE)
    assert held.state == EscalationState.PENDING and page.state == StepState.PENDING and page.attempts == 0
    assert 0 < page.next_attempt_at - e.clock() <= 60              # held until the first page is a minute old
    assert e.observer.events.count(("page_deferred",)) == 1
    # The third P1 was classified with the cap already full: its page could not go, so nor was its plan,
    # nor its steps, anyone's wait (the cap lets the page go again when the first is a minute old).
    assert e.observer.plan_priorities == [URGENT, URGENT, BACKGROUND]
    assert e.observer.step_priorities[-2:] == [(StepName.TICKET, BACKGROUND), (StepName.TICKET_NOTE, BACKGROUND)]

    await e.escalator.advance(pks[2])                                # still within the minute: still held
    assert len(e.pager.pages) == 2

    e.clock.advance(61)
    await e.escalator.advance(pks[2])
    assert len(e.pager.pages) == 3 and e.pager.pages[2].dedup_key == held.dedup_key
    assert (await e.store.record(pks[2])).state == EscalationState.DONE
    assert e.observer.events.count(("page_deferred",)) == 1          # pages wait, never drop


async def test_a_ticket_queued_behind_the_pacer_does_not_hold_the_page(engine):
    e = engine(ticket_head_start_seconds=HOLD_FOREVER)
    e.desk.hold, e.desk.queues = threading.Event(), True
    pk = await e.breach("shop-a")
    advancing = asyncio.create_task(e.escalator.advance(pk))
    await until(lambda: len(e.pager.pages) == 1)                    # paged while the ticket still waits
    assert e.desk.tickets == {} and e.pager.pages[0].links == ()
    e.desk.hold.set()
    await asyncio.wait_for(advancing, WAIT_SECONDS)
    assert e.desk.pages_when_created == [1]
    assert (await e.store.record(pk)).state == EscalationState.DONE


async def test_a_ticket_on_its_way_holds_the_page_for_its_link(engine):
    e = engine(ticket_head_start_seconds=HOLD_FOREVER)
    e.desk.hold = threading.Event()
    pk = await e.breach("shop-a")
    advancing = asyncio.create_task(e.escalator.advance(pk))
    await until(e.desk.creating.is_set)                              # the create is on its way to the desk
    await asyncio.sleep(0.3)        # a page that did not wait would go now (this can only hide a fault, never fake one)
    assert e.pager.pages == []
    e.desk.hold.set()
    await asyncio.wait_for(advancing, WAIT_SECONDS)
    assert e.desk.pages_when_created == [0]
    assert [link["href"] for link in e.pager.pages[0].links] == [e.desk.ticket_url(1)]


async def test_past_its_head_start_the_page_goes_without_the_ticket(engine):
    e = engine(ticket_head_start_seconds=0.2)
    e.desk.hold = threading.Event()
    pk = await e.breach("shop-a")
    advancing = asyncio.create_task(e.escalator.advance(pk))
    await until(lambda: len(e.pager.pages) == 1)                    # the head start ran out: paged regardless
    assert e.desk.tickets == {} and e.pager.pages[0].links == ()
    e.desk.hold.set()
    await asyncio.wait_for(advancing, WAIT_SECONDS)
    record = await e.store.record(pk)
    assert record.state == EscalationState.DONE and record.ticket_id == 1
    assert e.desk.link_notes == [1], "the ticket still gets the page's link note once it exists"
