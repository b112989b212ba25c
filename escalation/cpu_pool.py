"""Parsing and classifying, off the event loop: worker processes, decisions first.

The event loop does I/O only. Parsing a 20 KB mail or classifying it costs milliseconds
of pure Python, which on the loop would stall every SMTP session, and on a thread would
still hold the GIL in 5 ms slices. So the work runs in worker processes (pebble's
ProcessPool: a worker that hangs past `timeout_seconds` is killed and replaced, one that
dies is replaced, and neither takes the daemon down).

A new mail's parse and classify go to a worker as one job when nothing from outside the worker
goes into the verdict (no rspamd answer to wait for, no DKIM check of our own): one round
trip instead of two. Each costs the daemon's own process about 0.15 ms of CPU (pebble's
threads, pickling), which SMTP intake then waits for under the GIL.

In front of the workers sits a small priority queue: at most one job per worker is handed
to the pool at a time, and a waiting decision (a new mail's parse and classify) always goes
before a waiting re-parse for a later step. A storm's backlog of step work therefore never
delays a new mail's decision.

The policy lives in the workers (sent once, when each starts). A reload builds a new pool
with the new policy and swaps it in whole: every classification uses the old policy or
the new one, never a mix, and jobs already handed to the old pool finish there.
"""
from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import multiprocessing
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum
from typing import Any, Callable

from pebble import ProcessExpired, ProcessPool

from emergencyd.escalation.decider import classify_arguments
from emergencyd.escalation.dkim_check import needs_dkim_check, trust_with
from emergencyd.escalation.policy import Policy, Verdict, classify
from emergencyd.escalation.records import Envelope
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
    def __init__(self, context: ClassifyContext, *, workers: int, timeout_seconds: float):
        self._workers = workers
        self._timeout = timeout_seconds
        self._waiting: list[tuple[int, int, asyncio.Future]] = []   # (priority, order, slot granted)
        self._order = itertools.count()
        self._free_slots = workers
        self._generation: tuple[ClassifyContext, ProcessPool | InProcessPool] = self._new_pool(context)

    @property
    def policy(self) -> Policy:
        return self._generation[0].policy

    def _new_pool(self, context: ClassifyContext) -> tuple[ClassifyContext, ProcessPool]:
        # spawn, not fork: the daemon has threads (store, integrations) whose locks a fork would copy.
        pool = ProcessPool(max_workers=self._workers, initializer=_start_worker, initargs=(context,),
                           context=multiprocessing.get_context("spawn"))
        return context, pool

    def _schedule(self, fn: Callable, args: tuple, kwargs: dict) -> Future:
        context, pool = self._generation
        try:
            return pool.schedule(fn, args=args, kwargs=kwargs, timeout=self._timeout)
        except OSError as exc:      # the pool starts at its first job: no /dev/shm for its locks, say
            log.error("worker processes unavailable; parsing and classifying on threads instead",
                      extra={"error": str(exc)})
            fallback = InProcessPool(context, self._workers)
            if self._generation[1] is pool:
                self._generation = (context, fallback)
            return fallback.schedule(fn, args=args, kwargs=kwargs, timeout=self._timeout)

    def swap_policy(self, context: ClassifyContext) -> None:
        """A reload: new workers with the new policy; jobs already in the old pool finish there."""
        old = self._generation[1]
        self._generation = self._new_pool(context)
        old.close()

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
            return await asyncio.to_thread(classify_with, self._generation[0], parsed, **kwargs)

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
            future = self._schedule(fn, args, kwargs or {})
            try:
                return await asyncio.wrap_future(future)
            except TimeoutError:
                raise WorkerFailed(f"took longer than {self._timeout:g} s and was stopped") from None
            except ProcessExpired as exc:
                raise WorkerFailed(f"process died ({exc})") from None
        finally:
            self._release_slot()

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

    def close(self) -> None:
        pool = self._generation[1]
        pool.stop()
        pool.join(timeout=5)


class InProcessPool:
    """The fallback when worker processes cannot start: the same calls on threads of this process.
    The loop stays free of the work, though the GIL is shared; a hung call cannot be stopped."""

    def __init__(self, context: ClassifyContext, workers: int):
        self._context = context
        self._threads = ThreadPoolExecutor(workers, thread_name_prefix="cpu")

    def schedule(self, fn: Callable, *, args: tuple, kwargs: dict, timeout: float) -> Future:
        if fn is _classify:
            return self._threads.submit(classify_with, self._context, *args, **kwargs)
        if fn is _parse_and_classify:
            return self._threads.submit(parse_and_classify_with, self._context, *args)
        return self._threads.submit(_ready if fn is _ready else fn, *args, **kwargs)

    def close(self) -> None:
        self._threads.shutdown(wait=False)

    def stop(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)

    def join(self, timeout: float | None = None) -> None:
        return None


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
