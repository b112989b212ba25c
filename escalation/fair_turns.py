"""Fair turns for deciding: a storm from one sender never holds up another sender's mail.

At most `limit` mails are being decided at once. When a turn frees up it goes, in order:
  1. to a sender that had nothing queued nor being decided when its mail arrived (a new
     sender, or a quiet one), the earliest such first;
  2. otherwise round-robin over the senders with mail queued.
Each sender's mail is decided one at a time and in arrival order, so a sender's reports
keep their order (the first of a loop opens the incident, the later ones join it).
"""
from __future__ import annotations

import asyncio
from collections import deque
from contextlib import asynccontextmanager
from typing import AsyncIterator


class FairTurns:
    def __init__(self, limit: int):
        self._limit = limit
        self._holding: set[str] = set()                     # senders being decided now
        self._queued: dict[str, deque[asyncio.Future]] = {}  # sender -> waiters, in arrival order
        self._fresh: deque[str] = deque()                   # senders whose first queued mail comes first
        self._rotation: deque[str] = deque()                # senders already served, round-robin

    @property
    def waiting(self) -> int:
        return sum(len(q) for q in self._queued.values())

    @asynccontextmanager
    async def turn(self, sender: str) -> AsyncIterator[None]:
        if len(self._holding) < self._limit and sender not in self._holding and sender not in self._queued:
            self._holding.add(sender)
        else:
            await self._wait(sender)
        try:
            yield
        finally:
            self._holding.discard(sender)
            self._hand_on()

    async def _wait(self, sender: str) -> None:
        waiter = asyncio.get_running_loop().create_future()
        if sender not in self._queued:
            self._queued[sender] = deque()
            # Fresh only when nothing of the sender's is being decided: a loop's next mail is not news.
            (self._rotation if sender in self._holding else self._fresh).append(sender)
        self._queued[sender].append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():   # granted as it was cancelled: pass it on
                self._holding.discard(sender)
                self._hand_on()
            else:
                self._forget(sender, waiter)
            raise

    def _forget(self, sender: str, waiter: asyncio.Future) -> None:
        queue = self._queued.get(sender)
        if queue is not None and waiter in queue:
            queue.remove(waiter)
            if not queue:
                self._drop(sender)

    def _drop(self, sender: str) -> None:
        del self._queued[sender]
        for line in (self._fresh, self._rotation):
            if sender in line:
                line.remove(sender)

    def _hand_on(self) -> None:
        while len(self._holding) < self._limit:
            sender = self._next_sender()
            if sender is None:
                return
            queue = self._queued[sender]
            waiter = queue.popleft()
            if not queue:
                self._drop(sender)
            elif sender not in self._rotation:
                self._rotation.append(sender)
            if waiter.done():          # cancelled while queued; its task is unwinding
                continue
            self._holding.add(sender)
            waiter.set_result(None)

    def _next_sender(self) -> str | None:
        for line in (self._fresh, self._rotation):
            for sender in line:
                if sender not in self._holding:
                    line.remove(sender)
                    return sender
        return None
