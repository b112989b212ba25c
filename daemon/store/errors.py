"""What every store backend raises when it cannot commit or read."""
from __future__ import annotations


class StoreError(RuntimeError):
    """The store could not commit or read; ingest answers 451 on it."""


class StoreBusy(StoreError):
    """Another writer held the store for longer than the wait allowed."""


class LeaseLost(StoreError):
    """This replica no longer holds the lease that a write needs (another took over): nothing was written."""
