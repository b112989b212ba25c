"""The store off the event loop: an ingest thread with group commit, and the store's priority thread."""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TypeVar

from emergencyd.daemon.config.model import StoreConfig
from emergencyd.daemon.store.backends import open_store
from emergencyd.daemon.store.core import DueWork, IngestResult, Store, WriteGate
from emergencyd.daemon.store.errors import StoreError
from emergencyd.daemon.store.leases import Fence
from emergencyd.daemon.store.thread import BACKGROUND, StoreThread, store_priority
from emergencyd.escalation.records import Envelope, EscalationRecord, FollowUp

T = TypeVar("T")

# One group commit holds at most this much: a transaction that stays short, and memory bounded.
GROUP_COMMIT_MESSAGES = 64
GROUP_COMMIT_BYTES = 32 * 1024 * 1024

Waiting = tuple[bytes, Envelope, "asyncio.Future[IngestResult]"]   # a mail, and its sender waiting for the commit


class AsyncStore:
    """Runs store calls on dedicated threads, so commits never block the event loop.

    Ingest has a database session and a thread of its own: a mail's 250 waits for its own
    commit, never behind the escalation bookkeeping queued on the other thread. Mail that
    arrives while a commit is under way is committed together in the next one (group
    commit): one fsync for all of them, and each 250 still only after its commit.
    """

    def __init__(self, store: Store, ingest_store: Store):
        self.sync = store
        self._ingest_store = ingest_store
        self._thread = StoreThread("store")
        self._ingest_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-ingest")
        self._to_commit: list[Waiting] = []
        self._committing = False               # a group is on the ingest thread; what arrives meanwhile waits
        # The last group commit's failure, until a commit succeeds: a full disk refuses every commit while a
        # no-op write (check_writable) still passes, and /readyz must say so.
        self._commit_failure: tuple[float, str] | None = None

    @classmethod
    def open(cls, config: StoreConfig) -> "AsyncStore":
        store = open_store(config, gate=WriteGate(config.busy_timeout_ms / 1000))
        try:
            store.check_at_start()
            return cls(store, store.sibling(priority=True))
        except BaseException:
            store.close()
            raise

    @contextmanager
    def in_the_background(self) -> Iterator[None]:
        """The calling task's store calls within, and those of the tasks it starts, as background work."""
        token = store_priority.set(BACKGROUND)
        try:
            yield
        finally:
            store_priority.reset(token)

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await self._thread.submit_to_loop(lambda: fn(*args, **kwargs), asyncio.get_running_loop())

    async def ingest(self, raw: bytes, envelope: Envelope) -> IngestResult:
        self._thread.note_intake()
        committed = asyncio.get_running_loop().create_future()
        self._to_commit.append((raw, envelope, committed))
        if not self._committing:
            self._commit_next(asyncio.get_running_loop())
        return await committed

    def commit_failure(self, within_seconds: float) -> str | None:
        """Why the last commit of mail failed, if it did within `within_seconds` and none succeeded since."""
        if self._commit_failure is None:
            return None
        at, error = self._commit_failure
        age = time.monotonic() - at
        return f"the last commit of mail failed {age:.0f} s ago: {error}" if age <= within_seconds else None

    def intake_busy(self) -> bool:
        """Mail is arriving: background work on the store's thread gets only its share (daemon/store/thread.py)."""
        return self._thread.intake_busy()

    def _commit_next(self, loop: asyncio.AbstractEventLoop) -> None:
        """Hand the waiting mail (one group) to the ingest thread, which answers on the loop when it is committed."""
        group = self._take_group()
        self._committing = True
        self._ingest_executor.submit(self._commit_group, group, loop)

    def _commit_group(self, group: list[Waiting], loop: asyncio.AbstractEventLoop) -> None:
        """On the ingest thread: commit, then answer the group in one call on the loop, with nothing between."""
        outcome: list[IngestResult] | StoreError
        try:
            outcome = self._ingest_store.ingest_batch([(raw, envelope) for raw, envelope, _ in group])
        except Exception as exc:       # every sender of the group is told to try again (451)
            outcome = exc if isinstance(exc, StoreError) else StoreError(f"could not commit message: {exc}")
        try:
            loop.call_soon_threadsafe(self._answer, group, outcome, loop)
        except RuntimeError:           # the loop is closed: no one waits any more
            pass

    def _answer(self, group: list[Waiting], outcome: list[IngestResult] | StoreError,
                loop: asyncio.AbstractEventLoop) -> None:
        """On the loop: each sender of the group gets its answer, and what arrived meanwhile is committed next."""
        if isinstance(outcome, StoreError):
            self._commit_failure = (time.monotonic(), str(outcome))
            for _, _, committed in group:
                if not committed.done():
                    committed.set_exception(outcome)
        else:
            self._commit_failure = None
            for (_, _, committed), result in zip(group, outcome):
                if not committed.done():
                    committed.set_result(result)
        self._committing = False
        if self._to_commit:
            self._commit_next(loop)

    def _take_group(self) -> list[Waiting]:
        """The waiting mail, oldest first, up to GROUP_COMMIT_MESSAGES and GROUP_COMMIT_BYTES (at least one)."""
        size, count = 0, 0
        for raw, _, _ in self._to_commit:
            if count and (count >= GROUP_COMMIT_MESSAGES or size + len(raw) > GROUP_COMMIT_BYTES):
                break
            size, count = size + len(raw), count + 1
        group, self._to_commit = self._to_commit[:count], self._to_commit[count:]
        return group

    async def save_imap_position(self, account: str, uidvalidity: int, last_uid: int) -> None:
        """Part of intake, so it queues with ingest, never behind escalation bookkeeping."""
        await self._on_ingest_thread(self._ingest_store.save_imap_position, account, uidvalidity, last_uid)

    async def _on_ingest_thread(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._ingest_executor, fn, *args)

    # -- leases: on the ingest thread too, so that a backlog of escalation work never delays a renewal ----------

    async def hold_lease(self, name: str, holder: str, seconds: float) -> bool:
        return await self._on_ingest_thread(self._ingest_store.hold_lease, name, holder, seconds)

    async def give_up_lease(self, name: str, holder: str) -> None:
        await self._on_ingest_thread(self._ingest_store.give_up_lease, name, holder)

    def fence_with(self, fence: Fence | None) -> None:
        """Decisions and external calls are written only while `fence`'s lease is held (daemon/store/leases.py)."""
        self.sync.fence_with(fence)

    @property
    def unavailable(self) -> tuple[type[Exception], ...]:
        """What a store call raises when the store is away or busy, or the lease lost: never the mail's fault
        (a row that cannot be written is: it raises the driver's other errors)."""
        return (StoreError, *self.sync.database_unavailable)

    # -- the rest, each on the store's thread at the caller's priority (daemon/store/thread.py) ----------

    async def record(self, pk: int) -> EscalationRecord:
        return await self.call(self.sync.record, pk)

    async def raw(self, pk: int) -> bytes:
        return await self.call(self.sync.raw, pk)

    async def begin_attempt(self, pk: int, step: str) -> int:
        return await self.call(self.sync.begin_attempt, pk, step)

    async def defer_step(self, pk: int, step: str, until: float) -> None:
        await self.call(self.sync.defer_step, pk, step, until)

    async def complete_step(self, pk: int, step: str, result: dict[str, Any], *,
                            follow_ups: tuple[FollowUp, ...] = (), **escalation: Any) -> None:
        await self.call(self.sync.complete_step, pk, step, result, follow_ups=follow_ups, **escalation)

    async def fail_step(self, pk: int, step: str, *, error: str, next_attempt_at: float | None) -> None:
        await self.call(self.sync.fail_step, pk, step, error=error, next_attempt_at=next_attempt_at)

    async def claim_follow_ups(self, pk: int, limit: int) -> tuple[FollowUp, ...]:
        return await self.call(self.sync.claim_follow_ups, pk, limit)

    async def comment_in_the_way(self, pk: int, parent_pk: int | None,
                                 target_ticket_id: int | None) -> tuple[tuple[int, float] | None, int | None]:
        return await self.call(self.sync.comment_in_the_way, pk, parent_pk, target_ticket_id)

    async def group(self, group_id: int) -> dict[str, Any] | None:
        return await self.call(self.sync.group, group_id)

    async def due_turns(self, now: float, limit: int = 100, *, new_after: int = 0) -> list[DueWork]:
        return await self.call(self.sync.due_turns, now, limit, new_after=new_after)

    async def message_sizes(self, pks: list[int]) -> dict[int, int]:
        return await self.call(self.sync.message_sizes, pks)

    async def next_due_at(self) -> float | None:
        return await self.call(self.sync.next_due_at)

    async def decide_failed(self, pk: int, error: str) -> bool:
        return await self.call(self.sync.decide_failed, pk, error)

    async def counts_by_state(self) -> dict[str, int]:
        return await self.call(self.sync.counts_by_state)

    async def oldest_unfinished_received_at(self) -> float | None:
        return await self.call(self.sync.oldest_unfinished_received_at)

    async def pages_overdue(self, received_before: float) -> int:
        return await self.call(self.sync.pages_overdue, received_before)

    async def check_writable(self) -> None:
        await self.call(self.sync.check_writable)

    async def kept_directory(self, source: str) -> str | None:
        return await self.call(self.sync.kept_directory, source)

    async def save_directory(self, source: str, fetched_at: float, copy: str) -> None:
        await self.call(self.sync.save_directory, source, fetched_at, copy)

    async def imap_position(self, account: str) -> tuple[int, int] | None:
        return await self.call(self.sync.imap_position, account)

    def close(self) -> None:
        self._thread.shutdown(wait=True)
        self._ingest_executor.shutdown(wait=True)
        self._ingest_store.close()
        self.sync.close()

