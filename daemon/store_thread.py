"""The store's escalation thread: calls run one at a time, urgent ones first, each priority in order.

A storm queues hundreds of store calls (reads of its mail, plans, step commits, each commit an
fsync). On a plain single-thread executor another tenant's first mail queued behind all of them:
its P1 was decided seconds after its 250. So a storm's work goes in the background: the runner
marks the escalation of every new mail but each sender's first, and every pending step but a
page (or its fallback) due again, as BACKGROUND (`store_priority`, a context variable its task
inherits). Everything else stays URGENT: those first mails and pages, and whatever intake (IMAP's
look-ups) and `status` ask. Urgent
calls go ahead of the background queue; within one priority calls run in the order they came, as
before. The standard library has no executor with priorities, hence this one (a heap and one thread).
"""
from __future__ import annotations

import heapq
import itertools
import queue
import threading
from concurrent.futures import Future
from contextvars import ContextVar
from typing import Any, Callable

URGENT, BACKGROUND = 0, 1
_LAST = 2                      # the stop marker: after everything already queued

store_priority: ContextVar[int] = ContextVar("store_priority", default=URGENT)


class StoreThread:
    def __init__(self, name: str):
        # The calls wait in a heap; the thread is woken once per call through a SimpleQueue, whose
        # blocking get is as cheap as a ThreadPoolExecutor's (a PriorityQueue's Condition is not,
        # and the store's thread serves thousands of calls a second in a backlog).
        self._heap: list[tuple[int, int, Callable[[], Any] | None, Future | None]] = []
        self._lock = threading.Lock()
        self._wake: queue.SimpleQueue = queue.SimpleQueue()
        self._order = itertools.count()
        self._closed = False
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[], Any]) -> Future:
        """Queue `fn` at the caller's store_priority."""
        if self._closed:
            raise RuntimeError("the store is closed")
        future: Future = Future()
        self._put(store_priority.get(), fn, future)
        return future

    def _put(self, priority: int, fn: Callable[[], Any] | None, future: Future | None) -> None:
        with self._lock:
            heapq.heappush(self._heap, (priority, next(self._order), fn, future))
        self._wake.put(None)

    def _work(self) -> None:
        while True:
            self._wake.get()
            with self._lock:
                _, _, fn, future = heapq.heappop(self._heap)
            if fn is None or future is None:
                return
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn()
            except BaseException as exc:   # the caller gets it, as from an executor
                future.set_exception(exc)
            else:
                future.set_result(result)

    def shutdown(self, wait: bool = True) -> None:
        """Run what is queued, then stop."""
        if not self._closed:
            self._closed = True
            self._put(_LAST, None, None)
        if wait:
            self._thread.join()
