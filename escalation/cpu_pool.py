"""Parsing and classifying, off the event loop: worker processes, decisions first.

The event loop does I/O only. Parsing a 20 KB mail or classifying it costs milliseconds
of pure Python, which on the loop would stall every SMTP session, and on a thread would
still hold the GIL in 5 ms slices. So the work runs in worker processes that the loop
speaks to over pipes (escalation/worker_process.py): a worker busy past `timeout_seconds`
is killed and replaced, one that dies is replaced, and neither takes the daemon down.
When no worker can start at all, the same calls run on threads of the daemon's process.

A new mail's parse and classify go to a worker as one job when nothing from outside the worker
goes into the verdict (no rspamd answer to wait for, no DKIM check of our own): one round
trip instead of two.

In front of the workers sits a small priority queue: at most one job per worker is handed
to the pool at a time, and a waiting decision (a new mail's parse and classify) always goes
before a waiting re-parse for a later step. A storm's backlog of step work therefore never
delays a new mail's decision.

The policy lives in the workers (sent once, when each starts). A reload swaps the policy
whole: idle workers with the old one are told to exit (the loop never waits for their
teardown) and new ones start at once; a job already handed to an old worker finishes there,
and that worker is told to exit after it. Every classification uses the old policy or the
new one, never a mix.
"""
from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum
from typing import Any, Callable

from emergencyd.escalation.decider import classify_arguments
from emergencyd.escalation.dkim_check import needs_dkim_check, trust_with
from emergencyd.escalation.policy import Policy, Verdict, classify
from emergencyd.escalation.records import Envelope
from emergencyd.escalation.worker_process import (
    COMMAND,
    WorkerCannotStart,
    WorkerDied,
    WorkerProcess,
    WorkerTimedOut,
)
from emergencyd.parsers.auth_results import SenderTrust
from emergencyd.parsers.message import ParsedMessage, last_resort, parse_message
from emergencyd.parsers.spam_headers import SpamVerdict

log = logging.getLogger("emergencyd.cpu")

_context: ClassifyContext | None = None     # in each worker: set once by _start_worker


class Priority(IntEnum):
    DECIDE = 0       # a new mail's parse and classify: who is paged depends on it
    STEP = 1         # re-reading a decided mail for a later step's content


@dataclass(frozen=True)
class ClassifyContext:
    """What classify() needs besides the mail: sent to each worker once."""
    policy: Policy
    own_addresses: tuple[str, ...]
    own_hostnames: tuple[str, ...]


class CpuPool:
    def __init__(self, context: ClassifyContext, *, workers: int, timeout_seconds: float,
                 command: tuple[str, ...] = COMMAND):
        self._workers = workers
        self._timeout = timeout_seconds
        self._command = command
        self._waiting: list[tuple[int, int, asyncio.Future]] = []   # (priority, order, slot granted)
        self._order = itertools.count()
        self._free_slots = workers
        self._context = context
        self._generation = 0                 # which policy a worker was started with
        self._idle: list[WorkerProcess] = []
        self._busy: set[WorkerProcess] = set()
        self._ending: list[WorkerProcess] = []   # told to exit (a reload), not reaped yet
        self._warming: asyncio.Task[None] | None = None
        self._threads: InProcessPool | None = None    # when no worker process can start

    @property
    def policy(self) -> Policy:
        return self._context.policy

    def swap_policy(self, context: ClassifyContext) -> None:
        """A reload: later jobs go to workers with the new policy; jobs already handed out finish."""
        self._context = context
        self._generation += 1
        idle, self._idle = self._idle, []
        for worker in idle:
            self._retire(worker)
        if self._threads is not None:
            self._threads.close()
            self._threads = InProcessPool(context, self._workers)
        try:      # the new workers start now, not when the first mail after the reload needs one
            self._warming = asyncio.get_running_loop().create_task(self.warm(), name="cpu-warm-after-reload")
        except RuntimeError:
            pass      # no event loop running (a reload outside the daemon): they start on first use

    async def warm(self) -> None:
        """Start every worker now, so the first mail does not wait for a process to start."""
        await asyncio.gather(*(self._run(Priority.DECIDE, _ready, ()) for _ in range(self._workers)))

    async def parse(self, raw: bytes, priority: Priority) -> ParsedMessage:
        try:
            return await self._run(priority, parse_message, (raw,))
        except WorkerFailed as exc:
            return last_resort(raw, f"the parser {exc}")

    async def classify(self, parsed: ParsedMessage, *, received_at: datetime, mail_from: str | None,
                       trust: SenderTrust | None, spam: SpamVerdict | None = None, released: bool = False) -> Verdict:
        kwargs: dict[str, Any] = {"received_at": received_at, "mail_from": mail_from, "trust": trust, "spam": spam,
                                  "released": released}
        try:
            return await self._run(Priority.DECIDE, _classify, (parsed,), kwargs)
        except WorkerFailed as exc:
            # classify is bounded by design; a worker lost to something else (OOM) must not lose the mail.
            log.error("classifying off the loop failed; classified on a thread instead", extra={"error": str(exc)})
            return await asyncio.to_thread(classify_with, self._context, parsed, **kwargs)

    async def parse_and_classify(self, raw: bytes, envelope: Envelope, *,
                                 released: bool = False) -> tuple[ParsedMessage, Verdict | None]:
        """A new mail's parse and, in the same round trip, its verdict when nothing outside the worker goes
        into it; None when it needs our own DKIM check (DNS, on the loop's threads): then classify() after."""
        try:
            return await self._run(Priority.DECIDE, _parse_and_classify, (raw, envelope, released))
        except WorkerFailed as exc:
            return last_resort(raw, f"the parser {exc}"), None

    async def _run(self, priority: Priority, fn: Callable, args: tuple, kwargs: dict | None = None) -> Any:
        await self._slot(priority)
        try:
            worker = await self._worker()
            if worker is None:
                assert self._threads is not None
                return await asyncio.wrap_future(self._threads.schedule(fn, args=args, kwargs=kwargs or {}))
            self._busy.add(worker)
            try:
                return await worker.call(fn, args, kwargs or {}, self._timeout)
            except WorkerTimedOut:
                raise WorkerFailed(f"took longer than {self._timeout:g} s and was stopped") from None
            except WorkerDied as exc:
                raise WorkerFailed(f"process died ({exc})") from None
            finally:      # after a result, or the job's own exception; a worker lost or killed is not kept
                self._busy.discard(worker)
                self._hand_back(worker)
        finally:
            self._release_slot()

    async def _worker(self) -> WorkerProcess | None:
        """An idle worker with the current policy, a new one, or None: run on threads instead."""
        self._ending = [worker for worker in self._ending if not worker.reaped()]
        while self._idle:
            worker = self._idle.pop()
            if worker.alive():
                return worker
            worker.kill()       # reaped here, never waited for: its pipe may have closed before its exit
            log.warning("a worker process had ended while idle; replaced", extra={"error": worker.end()})
        if self._threads is not None:
            return None
        try:
            return await WorkerProcess.start(_start_worker, (self._context,), generation=self._generation,
                                             timeout=max(self._timeout, 30), command=self._command)
        except WorkerCannotStart as exc:
            log.error("worker processes unavailable; parsing and classifying on threads instead",
                      extra={"error": str(exc)})
            self._threads = self._threads or InProcessPool(self._context, self._workers)
            return None

    def _hand_back(self, worker: WorkerProcess) -> None:
        if not worker.alive():
            return
        if worker.generation == self._generation:
            self._idle.append(worker)
        else:
            self._retire(worker)        # started with the policy before a reload

    def _retire(self, worker: WorkerProcess) -> None:
        """Tell it to exit, without waiting on the loop for its teardown; a later job or close() reaps it."""
        worker.end_input()
        self._ending.append(worker)

    async def _slot(self, priority: Priority) -> None:
        if self._free_slots and not self._waiting:
            self._free_slots -= 1
            return
        granted = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (priority, next(self._order), granted))
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self._release_slot()          # granted just as we were cancelled: pass it on
            raise

    def _release_slot(self) -> None:
        while self._waiting:
            _, _, granted = heapq.heappop(self._waiting)
            if not granted.done():
                granted.set_result(None)
                return
        self._free_slots += 1

    def worker_pids(self) -> list[int]:
        return sorted(worker.pid for worker in (*self._idle, *self._busy))

    def close(self) -> None:
        if self._warming is not None:
            self._warming.cancel()      # a worker it was starting is killed as the task ends
        for worker in self._busy:
            worker.kill()
        ending = [*self._idle, *self._ending]
        for worker in ending:           # all at once: their teardowns overlap
            worker.end_input()
        for worker in ending:
            worker.stop(timeout=5)
        self._busy.clear()
        self._idle.clear()
        self._ending.clear()
        if self._threads is not None:
            self._threads.close()


class InProcessPool:
    """The fallback when worker processes cannot start: the same calls on threads of this process.
    The loop stays free of the work, though the GIL is shared; a hung call cannot be stopped."""

    def __init__(self, context: ClassifyContext, workers: int):
        self._context = context
        self._threads = ThreadPoolExecutor(workers, thread_name_prefix="cpu")

    def schedule(self, fn: Callable, *, args: tuple, kwargs: dict) -> Future:
        if fn is _classify:
            return self._threads.submit(classify_with, self._context, *args, **kwargs)
        if fn is _parse_and_classify:
            return self._threads.submit(parse_and_classify_with, self._context, *args)
        return self._threads.submit(fn, *args, **kwargs)

    def close(self) -> None:
        self._threads.shutdown(wait=False)


class WorkerFailed(RuntimeError):
    """A worker hung past the timeout or died: the job's answer is lost, the pool goes on."""


def classify_with(context: ClassifyContext, parsed: ParsedMessage, *, received_at: datetime,
                  mail_from: str | None, trust: SenderTrust | None, spam: SpamVerdict | None = None,
                  released: bool = False) -> Verdict:
    return classify(parsed, received_at=received_at, mail_from=mail_from, trust=trust, spam=spam, released=released,
                    own_addresses=context.own_addresses, own_hostnames=context.own_hostnames,
                    policy=context.policy)


def parse_and_classify_with(context: ClassifyContext, raw: bytes, envelope: Envelope,
                            released: bool) -> tuple[ParsedMessage, Verdict | None]:
    """The parse, and the verdict decide_verdict (escalation/decider.py) would give when the sender's trust
    needs no DKIM check: the same trust and the same classify arguments, without the spam filter's answer
    (the caller asks rspamd, when configured, and classifies after)."""
    parsed = parse_message(raw)
    trust_policy = context.policy.trust
    if needs_dkim_check(parsed, trust_policy):
        return parsed, None
    trust = trust_with(envelope, parsed, trust_policy, dkim=None)
    return parsed, classify_with(context, parsed, **classify_arguments(envelope, trust, released=released))


# -- in the worker processes -------------------------------------------------------------

def _start_worker(context: ClassifyContext) -> None:
    global _context
    _context = context
    # The bank holidays load on first use (about 0.1 s): here, not in the first decision that needs them.
    context.policy.calendar.holiday_name(datetime.now(context.policy.calendar.zone).date())


def _ready() -> bool:
    return _context is not None


def _parse_and_classify(raw: bytes, envelope: Envelope, released: bool) -> tuple[ParsedMessage, Verdict | None]:
    assert _context is not None, "worker started without its policy"
    return parse_and_classify_with(_context, raw, envelope, released)


def _classify(parsed: ParsedMessage, **kwargs: Any) -> Verdict:
    assert _context is not None, "worker started without its policy"
    return classify_with(_context, parsed, **kwargs)
