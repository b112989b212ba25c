"""The ports of the escalation engine: what it needs of the store, the help desk, the pager and the
fallback relay, and nothing more. The daemon plugs in the real ones (daemon/store/asynchronous.py AsyncStore,
escalation/zendesk.py, escalation/pagerduty.py, escalation/fallback.py SmtpRelay); an engine test can
plug in its own. Typed so that renaming a store method fails `make lint` (mypy), not a long end-to-end run.
"""
from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Callable, Protocol, TypeVar

if TYPE_CHECKING:
    from emergencyd.escalation.content import (
        CommentRequest,
        Incident,
        IncidentNoteRequest,
        NoteRequest,
        PageRequest,
        TicketRequest,
    )
    from emergencyd.escalation.directory import DirectoryCopy
    from emergencyd.escalation.fallback import FallbackMail
    from emergencyd.escalation.grouping import GroupingFacts, GroupingSettings
    from emergencyd.escalation.policy import Verdict
    from emergencyd.escalation.records import EscalationRecord, FollowUp, PlannedRelation
    from emergencyd.escalation.settings import FallbackConfig

T = TypeVar("T")


class PlanningStore(Protocol):
    """The synchronous store, as the engine's deciding code uses it on the store's thread: read what is
    known of related mail and write the plan in one go, with no other store call in between."""

    def record(self, pk: int) -> EscalationRecord: ...

    def plan(self, pk: int, *, subject: str, sender: str | None, steps: tuple[str, ...],
             verdict: Verdict | None = None, relation: PlannedRelation | None = None) -> None: ...

    def grouping_facts(self, pk: int, *, message_ids: tuple[str, ...], ticket_ref: int | None,
                       sender_key: str | None, fingerprint: str | None, received_at: float,
                       settings: GroupingSettings, encoded_ids: tuple[str, ...] = ()) -> GroupingFacts: ...

    def undecided_thread_parent(self, pk: int) -> int | None: ...

    def undecided_quiet_sender_before(self, pk: int, fair_key: str) -> int | None: ...


class EscalationStore(Protocol):
    """The store as the engine awaits it: each call runs on the store's thread, in order."""

    @property
    def sync(self) -> PlanningStore: ...

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T: ...

    async def record(self, pk: int) -> EscalationRecord: ...

    async def raw(self, pk: int) -> bytes: ...

    async def begin_attempt(self, pk: int, step: str) -> int: ...

    async def defer_step(self, pk: int, step: str, until: float) -> None: ...

    async def complete_step(self, pk: int, step: str, result: dict[str, Any], *,
                            follow_ups: tuple[FollowUp, ...] = (), **escalation: Any) -> None: ...

    async def fail_step(self, pk: int, step: str, *, error: str, next_attempt_at: float | None) -> None: ...

    async def claim_follow_ups(self, pk: int, limit: int) -> tuple[FollowUp, ...]: ...

    async def comment_in_the_way(self, pk: int, parent_pk: int | None,
                                 target_ticket_id: int | None) -> tuple[tuple[int, float] | None, int | None]: ...

    async def group(self, group_id: int) -> dict[str, Any] | None: ...

    def in_the_background(self) -> AbstractContextManager[None]:
        """Within it, the calling task's store calls (and those of the tasks it starts) wait behind
        urgent ones, and yield to intake: for an escalation that pages nothing."""


class Desk(Protocol):
    """The help desk (Zendesk). Synchronous: the engine runs each call on the desk's own threads."""

    def ticket_url(self, ticket_id: int) -> str: ...

    def find_ticket(self, external_id: str) -> int | None: ...

    def create_ticket(self, request: TicketRequest, *, on_queued: Callable[[], None] | None = None) -> int: ...

    def has_comment(self, ticket_id: int, marker: str) -> bool: ...

    def add_comment(self, request: CommentRequest) -> None: ...

    def add_note(self, note: NoteRequest) -> None: ...

    def directory(self) -> DirectoryCopy:
        """The tenants as the desk knows them (organizations and their end users)."""
        ...


class Pager(Protocol):
    """The pager (PagerDuty): Events API v2 to page, the REST API (when a token is set) to read and note."""

    def trigger(self, page: PageRequest) -> str: ...

    @property
    def has_rest_api(self) -> bool: ...

    def find_incident(self, dedup_key: str) -> Incident | None: ...

    def has_note(self, incident_id: str, marker: str) -> bool: ...

    def add_note(self, incident_id: str, note: IncidentNoteRequest) -> None: ...


class Relay(Protocol):
    """The fallback relay: a mail to the on-call when a page is overdue."""

    @property
    def config(self) -> FallbackConfig: ...

    def send(self, mail: FallbackMail) -> dict[str, str]: ...
