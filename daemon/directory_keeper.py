"""Keeps the tenant directory read from Zendesk in force ([trust] directory_from_zendesk).

At start, the copy kept in the store is put in force before any mail is decided; then Zendesk is
read in the background every directory_refresh_seconds, and a new copy is kept and put in force.
A failed read changes nothing: the copy in force stays, the failure is logged and counted, and the
next read comes sooner (RETRY_SECONDS). A decision never waits for Zendesk.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

from emergencyd.daemon.ops.metrics import Metrics
from emergencyd.escalation.directory import ZENDESK, DirectoryCopy

log = logging.getLogger("emergencyd.directory")

RETRY_SECONDS = 60.0


class DirectoryKeeper:
    def __init__(self, store, read: Callable[[], Awaitable[DirectoryCopy]],
                 put_in_force: Callable[[DirectoryCopy], None], metrics: Metrics, *, refresh_seconds: float):
        self._store = store
        self._read = read
        self._put_in_force = put_in_force
        self._metrics = metrics
        self._refresh_seconds = refresh_seconds
        self.copy: DirectoryCopy | None = None

    async def load_kept(self) -> None:
        kept = await self._store.kept_directory(ZENDESK)
        if kept is None:
            log.warning("no copy of the Zendesk tenant directory yet: "
                        "until the first read, only the config's entries count")
            return
        copy = DirectoryCopy.from_json(kept)
        self._use(copy)
        log.info("tenant directory: the kept copy of Zendesk's is in force",
                 extra={"organizations": copy.organizations, "fetched_at": copy.fetched_at})

    async def run(self) -> None:
        while True:
            try:
                fresh = await self._read()
            except Exception as exc:   # Zendesk down, slow, or refusing: the copy in force stays
                self._metrics.directory_refreshes.labels("failed").inc()
                log.warning("could not read the tenant directory from Zendesk; the copy in force stays",
                            extra={"error": f"{type(exc).__name__}: {exc}"[:300]})
                await asyncio.sleep(min(RETRY_SECONDS, self._refresh_seconds))
                continue
            self._metrics.directory_refreshes.labels("ok").inc()
            await self._store.save_directory(ZENDESK, fresh.fetched_at, fresh.to_json())
            if not fresh.same_entries(self.copy):
                log.info("tenant directory read from Zendesk", extra={
                    "organizations": fresh.organizations, "domains": len(fresh.domains),
                    "addresses": len(fresh.addresses)})
                self._use(fresh)
            else:
                self.copy = fresh   # the same entries, read again: only its time changes
            await asyncio.sleep(self._refresh_seconds)

    def _use(self, copy: DirectoryCopy) -> None:
        self.copy = copy
        self._put_in_force(copy)
