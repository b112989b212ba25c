"""A thread-safe token bucket: Zendesk allows about 100 ticket updates a minute per account.

Calls wait for a token rather than fail: in a storm, nothing is dropped, it is paced.
"""
from __future__ import annotations

import threading
import time


class Pacer:
    def __init__(self, per_minute: int, *, burst: int | None = None):
        self._rate = per_minute / 60.0
        self._capacity = float(burst if burst is not None else max(1, min(per_minute // 6, 20)))
        self._tokens = self._capacity
        self._updated = time.monotonic()
        self._lock = threading.Lock()

    def wait(self) -> float:
        """Block until a call may go; returns the seconds waited."""
        waited = 0.0
        while True:
            with self._lock:
                now = time.monotonic()
                self._tokens = min(self._capacity, self._tokens + (now - self._updated) * self._rate)
                self._updated = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return waited
                delay = (1 - self._tokens) / self._rate
            time.sleep(delay)
            waited += delay
