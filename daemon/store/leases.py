"""Leases: which replica does what only one may do at a time, when several share one database.

A lease is a row: its name (ESCALATOR, the deciding and every external call), its holder (a replica's
name) and when it expires. A replica takes a lease that is free, expired or already its own, and renews
it well before it expires; one that dies stops renewing, and another takes the lease once it has
expired. A replica's name is stable across its restarts, so a restarted one takes its own lease back at
once instead of waiting for it to expire.

The fence makes a lost lease safe. Before each external call (begin_attempt) and each decision (plan),
the store checks, in the same transaction, that the lease is still this replica's for at least the
margin to come (the longest an external call may take). A replica that was cut off from the database
therefore starts nothing once its lease may have passed to another, and a call it did start ends before
the lease can change hands.

A mixin of Store: the same connection, the same transactions; times are epoch seconds of the replicas'
clocks, which NTP keeps within far less than a lease.
"""
from __future__ import annotations

import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from emergencyd.daemon.store.connection import Connection
from emergencyd.daemon.store.errors import LeaseLost

ESCALATOR = "escalator"    # deciding, steps and the IMAP mailbox: one replica at a time


@dataclass(frozen=True)
class Fence:
    lease: str
    holder: str
    margin_seconds: float      # the lease must be ours for at least this long still


@dataclass(frozen=True)
class LeaseHolder:
    holder: str
    expires_at: float
    acquired_at: float


class LeaseQueries:
    _conn: Connection
    _fence: Fence | None = None
    if TYPE_CHECKING:          # Store's, which this is mixed into
        def _transaction(self, *, rollback: bool = False) -> AbstractContextManager[None]: ...

    def hold_lease(self, name: str, holder: str, seconds: float) -> bool:
        """Take or renew the lease if it is free, expired or `holder`'s; whether `holder` has it now."""
        now = time.time()
        with self._transaction():
            row = self._conn.execute(
                "INSERT INTO leases (name, holder, expires_at, acquired_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at,"
                " acquired_at = CASE WHEN leases.holder = excluded.holder THEN leases.acquired_at"
                " ELSE excluded.acquired_at END"
                " WHERE leases.holder = excluded.holder OR leases.expires_at < ?"
                " RETURNING holder", (name, holder, now + seconds, now, now)).fetchone()
        return row is not None

    def give_up_lease(self, name: str, holder: str) -> None:
        """On a clean stop: another replica may take the lease at once."""
        with self._transaction():
            self._conn.execute("DELETE FROM leases WHERE name = ? AND holder = ?", (name, holder))

    def lease_holder(self, name: str) -> LeaseHolder | None:
        row = self._conn.execute("SELECT holder, expires_at, acquired_at FROM leases WHERE name = ?",
                                 (name,)).fetchone()
        return LeaseHolder(*row) if row else None

    def fence_with(self, fence: Fence | None) -> None:
        """From now on, begin_attempt and plan write only while `fence`'s lease is held (None: always)."""
        self._fence = fence

    def _check_fence(self) -> None:
        """Inside a write transaction: raise LeaseLost, writing nothing, unless the fence's lease is ours."""
        fence = self._fence
        if fence is None:
            return
        held = self._conn.execute("SELECT 1 FROM leases WHERE name = ? AND holder = ? AND expires_at > ?",
                                  (fence.lease, fence.holder, time.time() + fence.margin_seconds)).fetchone()
        if held is None:
            raise LeaseLost(f"the {fence.lease} lease is no longer {fence.holder}'s (or ends within "
                            f"{fence.margin_seconds:g} s): another replica may hold it")
