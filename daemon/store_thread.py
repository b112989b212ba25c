"""The store's escalation thread: calls run one at a time, urgent ones first, each priority in order.

A storm queues hundreds of store calls (reads of its mail, plans, step commits, each commit an
fsync). On a plain single-thread executor another tenant's first mail queued behind all of them:
its P1 was decided seconds after its 250. The runner marks the escalation of each sender's first
queued mail as urgent (`store_priority`, a context variable its task inherits); that task's calls
go ahead of the queue, so the mail is decided, planned and paged without waiting for the storm's
bookkeeping. Within one priority calls run in the order they came, as before. The standard
library has no executor with priorities, hence this one (a queue.PriorityQueue and one thread).
"""
from __future__ import annotations

import itertools
import queue
import threading
from concurrent.futures import Future
from contextvars import ContextVar
from typing import Any, Callable

URGENT, NORMAL = 0, 1
_LAST = 2                      # the stop marker: after everything already queued

store_priority: ContextVar[int] = ContextVar("store_priority", default=NORMAL)


class StoreThread:
    def __init__(self, name: str):
        self._queue: queue.PriorityQueue = queue.PriorityQueue()
        self._order = itertools.count()
        self._closed = False
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[], Any]) -> Future:
        """Queue `fn` at the caller's store_priority."""
        if self._closed:
            raise RuntimeError("the store is closed")
        future: Future = Future()
        self._queue.put((store_priority.get(), next(self._order), fn, future))
        return future

    def _work(self) -> None:
        while True:
            _, _, fn, future = self._queue.get()
            if fn is None:
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
            self._queue.put((_LAST, next(self._order), None, None))
        if wait:
            self._thread.join()
