"""Which replica escalates: the holder of the escalator lease (daemon/store/leases.py).

Every replica takes mail (SMTP, and the store's identity makes a mail that reached two replicas one
message). One replica at a time decides, runs the steps and holds the IMAP mailbox: the one holding the
escalator lease, so the order of deciding, the storm and thread grouping, the new-page cap and Zendesk's
pacing are one process's, as on a single host. The others keep trying to take the lease, and one does
when the holder stops renewing it (a crash, a lost host, a lost database connection): after
`lease_seconds` at most, or at once after a clean stop, which gives the lease up.

With SQLite there is one replica, which takes its lease at start (its own name: a restart does not wait).
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable, Coroutine

from emergencyd.daemon.ops.metrics import Metrics
from emergencyd.daemon.store.asynchronous import AsyncStore
from emergencyd.daemon.store.leases import ESCALATOR, Fence

log = logging.getLogger("emergencyd.leadership")

RENEWALS_PER_LEASE = 5      # renew this often within a lease: a few lost renewals do not lose it


class Leadership:
    def __init__(self, store: AsyncStore, replica: str, lease_seconds: float, metrics: Metrics):
        self._store = store
        self.replica = replica
        self._lease_seconds = lease_seconds
        self._metrics = metrics
        self.held = asyncio.Event()
        self.lost = asyncio.Event()
        self.lost.set()
        self._held_until = 0.0         # by this replica's clock: the lease's end as last renewed
        self._failures = 0
        # Steps and decisions are written only while the lease is ours for half a lease still: longer
        # than an external call may take (the integrations' timeouts), so a call this replica started
        # ends before another replica can take the lease.
        store.fence_with(Fence(ESCALATOR, replica, lease_seconds / 2))

    @property
    def margin_seconds(self) -> float:
        return self._lease_seconds / 2

    async def run(self) -> None:
        """Take and renew the lease, for ever; note when it is won and lost."""
        while True:
            await self.try_once()
            await asyncio.sleep(self._lease_seconds / RENEWALS_PER_LEASE)

    async def try_once(self) -> None:
        """Take or renew the lease once."""
        asked_at = time.time()
        try:
            ours = await self._store.hold_lease(ESCALATOR, self.replica, self._lease_seconds)
            self._failures = 0
        except Exception as exc:      # the database away: keep the lease as long as it surely lasts
            self._failures += 1
            if self._failures == 1:
                log.warning("could not renew the escalator lease", extra={"error": f"{type(exc).__name__}: {exc}"})
            ours = self.held.is_set() and time.time() < self._held_until - self.margin_seconds
        else:
            if ours:
                self._held_until = asked_at + self._lease_seconds
        self._note(ours)

    def _note(self, ours: bool, *, stopping: bool = False) -> None:
        if ours and not self.held.is_set():
            log.info("escalating: took the escalator lease", extra={"replica": self.replica})
            self.lost.clear()
            self.held.set()
        elif not ours and self.held.is_set():
            if stopping:
                log.info("gave up the escalator lease: stopping", extra={"replica": self.replica})
            else:
                log.warning("no longer escalating: the escalator lease is another replica's or could not be renewed",
                            extra={"replica": self.replica})
            self.held.clear()
            self.lost.set()
        self._metrics.leader.set(1 if ours else 0)

    async def give_up(self) -> None:
        """On a clean stop, after the work in flight: another replica takes over at once."""
        if not self.held.is_set():
            return
        try:
            await self._store.give_up_lease(ESCALATOR, self.replica)
        except Exception:
            log.warning("could not give up the escalator lease; another replica takes it when it expires",
                        exc_info=True)
        self._note(False, stopping=True)

    async def while_held(self, work: Callable[[], Coroutine[Any, Any, None]],
                         stop: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run `work` whenever the lease is ours; `stop` it when the lease is lost (IMAP's mailbox)."""
        while True:
            await self.held.wait()
            task = asyncio.create_task(work())
            lost = asyncio.create_task(self.lost.wait())
            try:
                await asyncio.wait({task, lost}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                lost.cancel()
            if task.done():
                task.result()       # its end (or its error) is the caller's
                return
            await stop()
            await asyncio.gather(task, return_exceptions=True)
