"""News that a mail has been decided, for the mail that waits on it (see Escalator._wait_for).

A mail must not overtake the mail it replies to, nor earlier mail of a sender that is not storming.
It used to look again every 20 ms: with a backlog, two hundred escalations in flight each ran a
query over the 500 oldest undecided mails fifty times a second, and the store's thread did little
else (py-spy: 88% of its samples in that query during a one-connection burst). Now each waits for
the one mail it found in its way to be decided, and looks again then: as every mail waits for the
latest mail in its way, the waits form a chain, and each decision wakes about one waiter.

Only this process's decisions are announced (every attempt to decide announces its end, success or
not). A waiter whose mail in the way is being decided here waits for that announcement; one whose
mail in the way is not (not started yet, or decided elsewhere) also looks again every RECHECK_SECONDS.
"""
from __future__ import annotations

import asyncio
from collections import OrderedDict

RECHECK_SECONDS = 1.0
_REMEMBERED = 4096   # announcements kept, to answer a waiter that read the mail just before its decision


class DecidedSignals:
    def __init__(self) -> None:
        self._deciding: set[int] = set()
        self._waiting: dict[int, asyncio.Event] = {}
        self._announced_at: OrderedDict[int, int] = OrderedDict()   # pk -> the count when last announced
        self._count = 0

    def mark(self) -> int:
        """Taken before reading which mail is in the way: wait_for() then knows what it may have missed."""
        return self._count

    def deciding(self, pk: int) -> None:
        """An attempt to decide the mail began here: decided() follows, whatever happens."""
        self._deciding.add(pk)

    def decided(self, pk: int) -> None:
        """The mail left 'new', or an attempt to decide it ended: whoever waits on it looks again."""
        self._deciding.discard(pk)
        self._count += 1
        self._announced_at[pk] = self._count
        self._announced_at.move_to_end(pk)
        if len(self._announced_at) > _REMEMBERED:
            self._announced_at.popitem(last=False)
        event = self._waiting.pop(pk, None)
        if event is not None:
            event.set()

    async def wait_for(self, pk: int, mark: int, timeout: float) -> None:
        """Until `pk` is announced, at most `timeout` seconds (RECHECK_SECONDS unless it is being decided
        here); at once when it was announced since `mark`."""
        if self._announced_at.get(pk, 0) > mark:
            return
        event = self._waiting.setdefault(pk, asyncio.Event())
        try:
            await asyncio.wait_for(event.wait(), timeout if pk in self._deciding else min(timeout, RECHECK_SECONDS))
        except asyncio.TimeoutError:
            pass
