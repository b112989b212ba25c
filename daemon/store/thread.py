"""The store's escalation thread: calls run one at a time, urgent ones first, each priority in order.

A storm queues hundreds of store calls (reads of its mail, plans, step commits, each commit an
fsync). On a plain single-thread executor another tenant's first mail queued behind all of them:
its P1 was decided seconds after its 250. So a storm's work goes in the background: the runner
marks the escalation of every new mail but each sender's first, and every pending step but a
page (or its fallback) due again, as BACKGROUND (`store_priority`, a context variable its task
inherits); the escalator marks so the plan and steps of mail that can page no one now, once it is
classified (escalation/steps.py). Everything else stays URGENT: those first mails and pages, and whatever intake (IMAP's
look-ups) and `status` ask. Urgent
calls go ahead of the background queue; within one priority calls run in the order they came, as
before. The standard library has no executor with priorities, hence this one (a heap and one thread).

Intake comes first, too. The daemon is one process, and a busy escalation thread holds the GIL
that the SMTP sessions and the ingest commits need: with a storm's background running flat out, a
one-session client's 250 took 4.7 ms instead of 1.6 (bench/smtp_ingest.py --senders one). So while
mail is arriving (a mail came in the last INTAKE_BUSY_SECONDS), background calls get at most
BACKGROUND_SHARE of this thread's time: after one that took d seconds, the next waits
d * (1 / share - 1). Urgent calls never wait, and the background catches up as soon as intake is quiet.
"""
from __future__ import annotations

import asyncio
import heapq
import itertools
import queue
import threading
import time
from concurrent.futures import Future
from contextvars import ContextVar
from typing import Any, Callable, Protocol

URGENT, BACKGROUND = 0, 1
INTAKE_BUSY_SECONDS = 0.1
BACKGROUND_SHARE = 0.05
_LAST = 2                      # the stop marker: after everything already queued

store_priority: ContextVar[int] = ContextVar("store_priority", default=URGENT)


class _Reply(Protocol):
    """Where a call's outcome goes: start() is False when its caller has given up before it ran."""
    def start(self) -> bool: ...
    def settle(self, result: Any, error: BaseException | None) -> None: ...


class _ToFuture:
    def __init__(self, future: Future):
        self._future = future

    def start(self) -> bool:
        return self._future.set_running_or_notify_cancel()

    def settle(self, result: Any, error: BaseException | None) -> None:
        if error is None:
            self._future.set_result(result)
        else:
            self._future.set_exception(error)


class _ToLoop:
    def __init__(self, waiter: asyncio.Future, loop: asyncio.AbstractEventLoop):
        self._waiter = waiter
        self._loop = loop

    def start(self) -> bool:
        return not self._waiter.cancelled()     # read off the loop: at worst a cancelled call still runs

    def settle(self, result: Any, error: BaseException | None) -> None:
        try:
            self._loop.call_soon_threadsafe(_settle, self._waiter, result, error)
        except RuntimeError:                    # the loop is closed: no one waits any more
            pass


def _settle(waiter: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if waiter.done():                           # cancelled meanwhile
        return
    if error is None:
        waiter.set_result(result)
    elif isinstance(error, StopIteration):      # an asyncio future refuses it as an exception
        waiter.set_exception(RuntimeError(f"store call raised {error!r}"))
    else:
        waiter.set_exception(error)


class StoreThread:
    def __init__(self, name: str, *, clock: Callable[[], float] = time.monotonic):
        # The calls wait in a heap; the thread is woken once per call through a SimpleQueue, whose
        # blocking get is as cheap as a ThreadPoolExecutor's (a PriorityQueue's Condition is not,
        # and the store's thread serves thousands of calls a second in a backlog).
        self._heap: list[tuple[int, int, Callable[[], Any] | None, _Reply | None]] = []
        self._lock = threading.Lock()
        self._wake: queue.SimpleQueue = queue.SimpleQueue()
        self._order = itertools.count()
        self._closed = False
        self._clock = clock
        self._intake_at = float("-inf")         # when intake last took a mail
        self._background_from = float("-inf")   # the earliest a background call may start while intake is busy
        self._urgent = threading.Event()        # cuts a background wait short
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[], Any]) -> Future:
        """Queue `fn` at the caller's store_priority; its outcome comes back in a concurrent Future."""
        future: Future = Future()
        self._queue(fn, _ToFuture(future))
        return future

    def submit_to_loop(self, fn: Callable[[], Any], loop: asyncio.AbstractEventLoop) -> asyncio.Future:
        """The same, its outcome set on `loop` in one call_soon_threadsafe: no concurrent Future (each
        makes a Condition) and no chaining callbacks, on the path of every store call of a decision."""
        waiter = loop.create_future()
        self._queue(fn, _ToLoop(waiter, loop))
        return waiter

    def _queue(self, fn: Callable[[], Any], reply: _Reply) -> None:
        if self._closed:
            raise RuntimeError("the store is closed")
        self._put(store_priority.get(), fn, reply)

    def note_intake(self) -> None:
        """A mail arrived: background calls yield to intake for the next INTAKE_BUSY_SECONDS."""
        self._intake_at = self._clock()

    def intake_busy(self) -> bool:
        """A mail arrived within INTAKE_BUSY_SECONDS."""
        return self._clock() - self._intake_at <= INTAKE_BUSY_SECONDS

    def _put(self, priority: int, fn: Callable[[], Any] | None, reply: _Reply | None) -> None:
        with self._lock:
            heapq.heappush(self._heap, (priority, next(self._order), fn, reply))
        if priority != BACKGROUND:
            self._urgent.set()
        self._wake.put(None)

    def _work(self) -> None:
        while True:
            self._wake.get()
            self._yield_to_intake()
            with self._lock:
                priority, _, fn, reply = heapq.heappop(self._heap)
            if fn is None or reply is None:
                return
            if not reply.start():
                continue
            started = self._clock()
            try:
                result = fn()
            except BaseException as exc:   # the caller gets it, as from an executor
                reply.settle(None, exc)
            else:
                reply.settle(result, None)
            if priority == BACKGROUND:
                ended = self._clock()
                self._background_from = ended + (ended - started) * (1 / BACKGROUND_SHARE - 1)

    def _yield_to_intake(self) -> None:
        """Wait while the next call is background, intake is busy and the background had its share."""
        while True:
            self._urgent.clear()
            with self._lock:
                background_next = self._heap[0][0] == BACKGROUND
            now = self._clock()
            if not background_next or now - self._intake_at > INTAKE_BUSY_SECONDS or now >= self._background_from:
                return
            # Woken early by an urgent call; else look again when the share allows, or intake may have stopped.
            self._urgent.wait(min(self._background_from - now, INTAKE_BUSY_SECONDS))

    def shutdown(self, wait: bool = True) -> None:
        """Run what is queued, then stop."""
        if not self._closed:
            self._closed = True
            self._put(_LAST, None, None)
        if wait:
            self._thread.join()
