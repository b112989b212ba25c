"""Fair turns for deciding: a storm from one sender never holds up another sender's mail.

At most `limit` mails are being decided at once. When a turn frees up it goes, in order:
  1. to a sender that had nothing queued nor being decided when its mail arrived (a new
     sender, or a quiet one), the earliest such first;
  2. otherwise round-robin over the senders with mail queued.
Each sender's mail is decided one at a time and in arrival order, so a sender's reports
keep their order (the first of a loop opens the incident, the later ones join it).

A mail that must wait on other mail in the middle of its turn (escalation/steps.py) steps aside:
its place in the limit goes to the next in line, while its sender's later mail still waits
behind it; it then comes back ahead of everyone queued. Waiting with the turn held instead
could fill the limit with mail waiting on mail that can get no turn.
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
        self._aside: set[str] = set()                       # senders whose mail stepped aside mid-turn
        self._returning: deque[tuple[str, asyncio.Future]] = deque()   # those coming back, first served

    @property
    def waiting(self) -> int:
        return sum(len(q) for q in self._queued.values())

    @asynccontextmanager
    async def turn(self, sender: str) -> AsyncIterator[None]:
        if len(self._holding) < self._limit and not self._busy(sender) and sender not in self._queued:
            self._holding.add(sender)
        else:
            await self._wait(sender)
        try:
            yield
        finally:
            self._holding.discard(sender)
            self._aside.discard(sender)
            self._hand_on()

    @asynccontextmanager
    async def aside(self, sender: str) -> AsyncIterator[None]:
        """Within the sender's turn: free its place while waiting on other mail, and take one back after."""
        self.step_out(sender)
        try:
            yield
        finally:
            await self._come_back(sender)

    def step_out(self, sender: str) -> None:
        """Within the sender's turn: free its place for the rest of the turn, for work that can wait.
        The sender's later mail still waits until the turn ends."""
        self._holding.discard(sender)
        self._aside.add(sender)
        self._hand_on()

    async def _come_back(self, sender: str) -> None:
        if len(self._holding) < self._limit and not self._returning:
            self._take(sender)
            return
        waiter = asyncio.get_running_loop().create_future()
        self._returning.append((sender, waiter))
        try:
            await waiter
        except asyncio.CancelledError:
            if not waiter.done() or waiter.cancelled():   # not granted: the turn's own end lets the next in
                self._returning.remove((sender, waiter))
            raise

    def _take(self, sender: str) -> None:
        self._aside.discard(sender)
        self._holding.add(sender)

    def _busy(self, sender: str) -> bool:
        return sender in self._holding or sender in self._aside

    async def _wait(self, sender: str) -> None:
        waiter = asyncio.get_running_loop().create_future()
        if sender not in self._queued:
            self._queued[sender] = deque()
            # Fresh only when nothing of the sender's is being decided: a loop's next mail is not news.
            (self._rotation if self._busy(sender) else self._fresh).append(sender)
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
        while len(self._holding) < self._limit and self._returning:
            returning, back = self._returning.popleft()
            if not back.done():
                self._take(returning)
                back.set_result(None)
        while len(self._holding) < self._limit:
            sender = self._next_sender()
            if sender is None:
                return
            queue = self._queued[sender]
            waiter = queue.popleft()
            # _next_sender took it out of its line: a sender with mail queued is in exactly one line.
            if not queue:
                del self._queued[sender]
            else:
                self._rotation.append(sender)
            if waiter.done():          # cancelled while queued; its task is unwinding
                continue
            self._take(sender)
            waiter.set_result(None)

    def _next_sender(self) -> str | None:
        for line in (self._fresh, self._rotation):
            for sender in line:
                if not self._busy(sender):
                    line.remove(sender)
                    return sender
        return None
