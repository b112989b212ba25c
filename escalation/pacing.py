"""A thread-safe token bucket: Zendesk allows about 100 ticket updates a minute per account.

Calls wait for a token rather than fail: in a storm, nothing is dropped, it is paced. The runner
also asks one, without waiting, whether a new sender's mail may start being decided while mail
is arriving (daemon/runner.py).

Waiting calls queue in lanes. When a token comes free, it goes to the oldest waiter of the
first non-empty lane: in a storm, a new tenant's ticket goes ahead of hundreds of comments
on tickets that already exist. The lanes change the order, never the rate.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from enum import StrEnum


class Lane(StrEnum):
    """Which waiting calls get the next token first, in this order."""
    CREATE = "create"    # a new ticket: a tenant nobody has answered yet
    OTHER = "other"      # comments, notes, reads


LANES: tuple[Lane, ...] = (Lane.CREATE, Lane.OTHER)


class _Waiter:
    """One blocked call: its own condition on the bucket's lock, so a token wakes only the next in line."""
    __slots__ = ("condition",)

    def __init__(self, lock: threading.Lock):
        self.condition = threading.Condition(lock)


class Pacer:
    def __init__(self, per_minute: float, *, burst: int | None = None):
        self._rate = per_minute / 60.0
        self._capacity = float(burst if burst is not None else max(1, min(per_minute // 6, 20)))
        self._tokens = self._capacity
        self._updated = time.monotonic()
        self._lock = threading.Lock()
        self._queues: dict[Lane, deque[_Waiter]] = {lane: deque() for lane in LANES}

    def wait(self, priority: Lane = Lane.OTHER, *, on_queued: Callable[[], None] | None = None) -> float:
        """Block until a call may go; returns the seconds waited.

        on_queued is called, from this thread, when no token is free for this call right now,
        just before it queues.
        """
        began = time.monotonic()
        with self._lock:
            if self._take_at_once():
                return 0.0
        if on_queued is not None:
            on_queued()     # outside the lock: the caller's code must not hold up other calls
        with self._lock:
            self._queue_for_token(priority)
        return time.monotonic() - began

    def take_now(self) -> bool:
        """A token if one is free now and no call waits for one; never blocks."""
        with self._lock:
            return self._take_at_once()

    def seconds_until_token(self) -> float:
        """How long until a token is free, for a caller that will ask take_now() again then."""
        with self._lock:
            self._refill()
            return max((1 - self._tokens) / self._rate, 0.0)

    def waiting(self, lane: Lane | None = None) -> int:
        """How many calls wait for a token, in one lane or in all."""
        with self._lock:
            return sum(len(queue) for name, queue in self._queues.items() if lane in (None, name))

    def _take_at_once(self) -> bool:
        """A token, when one is free and nobody is queued before us (under the lock)."""
        self._refill()
        if self._tokens >= 1 and not self._next_waiter():
            self._tokens -= 1
            return True
        return False

    def _queue_for_token(self, lane: Lane) -> None:
        """Wait in our lane until we are next in line and a token is there (under the lock)."""
        waiter = _Waiter(self._lock)
        queue = self._queues[lane]
        queue.append(waiter)
        try:
            while True:
                self._refill()
                if self._next_waiter() is not waiter:
                    waiter.condition.wait()    # whoever takes the token before us wakes the next in line
                elif self._tokens >= 1:
                    self._tokens -= 1
                    return
                else:
                    waiter.condition.wait((1 - self._tokens) / self._rate)
        finally:   # served, or interrupted: either way out of the line, and the next one times its wait
            queue.remove(waiter)
            self._wake_next()

    def _next_waiter(self) -> _Waiter | None:
        return next((queue[0] for queue in self._queues.values() if queue), None)

    def _wake_next(self) -> None:
        """The next in line now times its own wait for the coming token."""
        following = self._next_waiter()
        if following is not None:
            following.condition.notify()

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(self._capacity, self._tokens + (now - self._updated) * self._rate)
        self._updated = now
