"""The runner: finds escalations with due work and advances each, one task per message.

It wakes when ingest commits a message, and otherwise polls the store, which also
picks up what `emergencyd inject` committed from another process and what a
previous process left unfinished (crash recovery is just "due now").
"""
from __future__ import annotations

import asyncio
import contextvars
import logging
import time

from emergencyd.daemon.first_mails import FirstMailLine
from emergencyd.daemon.ops.metrics import Metrics
from emergencyd.daemon.store.asynchronous import AsyncStore
from emergencyd.daemon.store.core import DueWork
from emergencyd.daemon.store.thread import (
    BACKGROUND,
    INTAKE_BUSY_SECONDS,
    store_priority,
)
from emergencyd.escalation.pacing import Pacer
from emergencyd.escalation.records import NEW, PENDING, STUCK
from emergencyd.escalation.steps import Escalator

log = logging.getLogger("emergencyd.runner")

DUE_BATCH = 200
ROUND_SPACING_SECONDS = 0.02   # a first mail starts within this of its commit, however busy the intake
FULL_LOOK_SECONDS = 1.0   # how often a round reads all undecided mail, not only what arrived since the last look
# While mail is arriving, the store's thread gives background work only a small share (store_thread.py):
# more background escalations than this in flight would only wait there, each a task on the event loop.
BACKGROUND_IN_FLIGHT_DURING_INTAKE = 8
# While the store is away, a round fails each poll: the first failure is logged, then one in this many.
FAILED_ROUNDS_LOGGED_EVERY = 100


def _store_context(urgent: bool) -> contextvars.Context:
    """A sender's later mail and pending steps other than a page are background work on the
    store's thread: a storm's queue never holds up another sender's first mail, nor a page's retry
    (daemon/store/thread.py)."""
    context = contextvars.copy_context()
    if not urgent:
        context.run(store_priority.set, BACKGROUND)
    return context


class Runner:
    def __init__(self, store: AsyncStore, escalator: Escalator, metrics: Metrics, *, poll_interval: float,
                 max_in_flight_bytes: int = 64 * 1024 * 1024, page_deadline_seconds: float | None = None,
                 may_escalate: asyncio.Event | None = None, first_mails_pace: Pacer | None = None):
        self._store = store
        self._escalator = escalator
        self._metrics = metrics
        self._poll_interval = poll_interval
        self._wake = asyncio.Event()
        self._in_flight: dict[int, asyncio.Task[None]] = {}
        # Each escalation in flight holds its parsed message: a backlog of big mail must
        # wait its turn instead of being held in memory all at once.
        self._max_in_flight_bytes = max_in_flight_bytes
        self._in_flight_bytes: dict[int, int] = {}
        self._page_deadline_seconds = page_deadline_seconds   # the fallback's; None without [fallback]
        self._stopping = False
        self.last_loop_at = 0.0   # proof of life for health checks and the watchdog
        self._round_at = float("-inf")
        # Undecided mail up to this id is in flight or was: a round asks only for newer mail, and
        # reads it all again every FULL_LOOK_SECONDS (mail another process committed late, say).
        self._new_after = 0
        self._full_look_at = float("-inf")
        self._background: set[int] = set()   # escalations in flight as background work
        self._held_back = False               # background work was left for when intake is quiet
        # While mail is arriving, new senders' mail starts at this pace (None: at once); what waits, waits here.
        self._first_mails = FirstMailLine(first_mails_pace, metrics.first_mails_paced)
        self._failed_rounds = 0
        # Set while this replica holds the escalator lease (daemon/leadership.py); None: always.
        self._may_escalate = may_escalate

    def wake(self) -> None:
        self._wake.set()

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    async def run(self) -> None:
        while not self._stopping:
            await self._wait_for_the_lease()
            if self._stopping:
                break
            self.last_loop_at = time.time()
            self._round_at = time.monotonic()
            try:
                started = await self._start_due()
                self._update_gauges()
                await self._sleep(started)
                self._failed_rounds = 0
            except Exception:   # a store hiccup (a lost database) must not kill the runner: it tries again
                self._failed_rounds += 1
                if self._failed_rounds == 1 or self._failed_rounds % FAILED_ROUNDS_LOGGED_EVERY == 0:
                    log.exception("runner round failed", extra={"rounds_failed_in_a_row": self._failed_rounds})
                await asyncio.sleep(self._poll_interval)

    async def _wait_for_the_lease(self) -> None:
        """While another replica escalates, start nothing; once this one does, look at everything."""
        if self._may_escalate is None or self._may_escalate.is_set():
            return
        while not self._may_escalate.is_set() and not self._stopping:
            self.last_loop_at = time.time()        # waiting, and alive: the watchdog must not restart a standby
            try:
                await asyncio.wait_for(self._may_escalate.wait(), self._poll_interval)
            except asyncio.TimeoutError:
                pass
        self._full_look_at = float("-inf")
        self._new_after = 0
        self._first_mails.forget()

    async def _start_due(self) -> int:
        started = 0
        full_look = time.monotonic() - self._full_look_at >= FULL_LOOK_SECONDS or (
            self._held_back and not self._store.intake_busy())   # what was held back, now that intake is quiet
        if full_look:
            self._full_look_at = time.monotonic()
        # Escalations in flight (waiting on Zendesk's pace, say) may still be due: ask for
        # enough that they cannot crowd out the rest.
        limit = DUE_BATCH + len(self._in_flight)
        found = await self._store.due_turns(time.time(), limit, new_after=0 if full_look else self._new_after)
        due = [work for work in found
               if work.message_pk not in self._in_flight and work.message_pk not in self._first_mails]
        # A look at new mail only must not start a storm's later mail before its earlier mail held back.
        due, held_back = self._while_intake_busy(due, behind_held_back=self._held_back and not full_look)
        # Held back mail past the mark is found again by full looks, until one finds less than it asked for.
        self._held_back = bool(held_back) or (self._held_back and (not full_look or len(found) >= limit))
        sizes = await self._store.message_sizes([work.message_pk for work in due]) if due else {}
        for work in due:
            pk = work.message_pk
            held = sum(self._in_flight_bytes.values())
            if self._in_flight and held + sizes.get(pk, 0) > self._max_in_flight_bytes:
                return started   # in order: the rest start as those in flight finish, and are asked for again
            self._in_flight_bytes[pk] = sizes.get(pk, 0)
            if not work.urgent:
                self._background.add(pk)
            self._in_flight[pk] = asyncio.create_task(self._advance(pk), name=f"escalation-{pk}",
                                                      context=_store_context(work.urgent))
            started += 1
        if len(found) < limit:   # every undecided mail past the mark was seen, and is in flight or held back
            self._new_after = max([self._new_after, *(w.message_pk for w in found if w.undecided)])
        return started

    def _while_intake_busy(self, due: list[DueWork], *,
                           behind_held_back: bool) -> tuple[list[DueWork], list[DueWork]]:
        """What to start now, and the background work held back while mail is arriving. Behind mail already
        held back, background work waits too, so that a full look starts the backlog in its order. New
        senders' mail starts at its pace meanwhile, the line of it first (daemon/first_mails.py)."""
        if not self._store.intake_busy():
            return self._first_mails.release() + due, []
        room = 0 if behind_held_back else max(BACKGROUND_IN_FLIGHT_DURING_INTAKE - len(self._background), 0)
        start = self._first_mails.turns_come()
        held_back = []
        for work in due:
            if work.urgent and work.undecided:
                if self._first_mails.admit(work):
                    start.append(work)
            elif work.urgent or room:
                room -= not work.urgent
                start.append(work)
            else:
                held_back.append(work)
        return start, held_back

    async def _advance(self, pk: int) -> None:
        try:
            await self._escalator.advance(pk)
        except asyncio.CancelledError:
            raise
        except self._store.unavailable as exc:   # the store away or the lease lost: tried again, never stuck
            log.warning("escalation round stopped by the store", extra={
                "message_pk": pk, "error": f"{type(exc).__name__}: {exc}"[:300]})
            self._full_look_at = float("-inf")
        except Exception as exc:
            log.exception("escalation round failed", extra={"message_pk": pk})
            await self._count_failure(pk, exc)
            self._full_look_at = float("-inf")   # it may still be undecided: the next round finds it
        finally:
            self._in_flight.pop(pk, None)
            self._in_flight_bytes.pop(pk, None)
            self._background.discard(pk)
            self._wake.set()   # its next steps may be due at once

    async def _count_failure(self, pk: int, exc: Exception) -> None:
        """A mail that could not be decided is tried again, a few times: then it is stuck, not a loop for ever."""
        try:
            if await self._store.decide_failed(pk, f"{type(exc).__name__}: {exc}"):
                self._metrics.stuck_total.inc()
                log.error("escalation stuck: deciding it failed every time; `emergencyd rearm ID` once fixed",
                          extra={"message_pk": pk, "error": f"{type(exc).__name__}: {exc}"[:300]})
        except Exception:   # the store itself failing: the next round tries again
            log.exception("could not count a failed escalation round", extra={"message_pk": pk})

    def _update_gauges(self) -> None:
        self._metrics.in_flight.set(len(self._in_flight))
        self._metrics.in_flight_bytes.set(sum(self._in_flight_bytes.values()))

    async def read_store_gauges(self) -> None:
        """The backlog gauges, read from the store when Prometheus scrapes (daemon/ops/http.py): exact
        whenever they are seen, and never a cost to the rounds of a burst."""
        counts = await self._store.counts_by_state()
        self._metrics.pending.set(counts.get(PENDING, 0) + counts.get(NEW, 0))
        self._metrics.stuck.set(counts.get(STUCK, 0))
        oldest = await self._store.oldest_unfinished_received_at()
        self._metrics.oldest_pending_age.set(0 if oldest is None else max(time.time() - oldest, 0))
        if self._page_deadline_seconds is not None:
            self._metrics.page_overdue.set(await self._store.pages_overdue(time.time() - self._page_deadline_seconds))

    async def _sleep(self, started: int) -> None:
        # Rounds at most every ROUND_SPACING_SECONDS: in a burst every ingest wakes the runner, and a
        # round reads the whole backlog; mail that came meanwhile starts in the next round, together.
        await asyncio.sleep(max(0.0, self._round_at + ROUND_SPACING_SECONDS - time.monotonic()))
        timeout = self._poll_interval
        next_due = await self._store.next_due_at()
        # A step that is due but whose escalation is already in flight is that task's
        # business: waiting for it is the wake event's job, not a busy loop's.
        if next_due is not None and (started or next_due > time.time()):
            timeout = min(timeout, max(next_due - time.time(), 0.01))
        if self._held_back:       # look again soon: intake may be quiet by then
            timeout = min(timeout, INTAKE_BUSY_SECONDS)
        if self._first_mails:     # again at the next token, or when intake is quiet
            timeout = min(timeout, INTAKE_BUSY_SECONDS, max(self._first_mails.seconds_until_turn(), 0.001))
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        self._wake.clear()

    async def stop(self, deadline_seconds: float) -> None:
        """Stop starting work; let steps in flight finish and commit, up to the deadline."""
        self._stopping = True
        self._wake.set()
        tasks = list(self._in_flight.values())
        if not tasks:
            return
        done, pending = await asyncio.wait(tasks, timeout=deadline_seconds)
        for task in pending:
            task.cancel()
        if pending:
            log.warning("shutdown deadline passed; unfinished steps resume at next start",
                        extra={"unfinished": len(pending)})
