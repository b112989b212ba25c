"""The escalation state machine: run each due step, then commit its result.

Steps and what makes each safe to repeat after a crash:
  ticket       look up by external_id before creating, when an attempt came before
  ticket_note  look for its marker among the ticket's comments before posting again
  page         PagerDuty's dedup_key folds a repeated trigger into the open alert
  link_ticket  marker, as ticket_note
  link_page    marker among the incident's notes

Paging never waits on Zendesk beyond `ticket_head_start_seconds`: the ticket and the
page start together, and the page takes the ticket's link only if it is ready.
Each integration has its own threads and concurrency limit, so a hung Zendesk
cannot starve PagerDuty, nor the other way round.
"""
from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timezone
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, Callable, Protocol

from escalation import content
from escalation.records import (
    LINK_PAGE, LINK_TICKET, NEW, PAGE, PAGERDUTY_STEPS, PENDING, STEP_FAILED, STEP_PENDING, TICKET,
    TICKET_NOTE, EscalationRecord,
)
from escalation.policy import Policy, Verdict, classify
from escalation.retry import RetrySchedule, TransientError
from escalation.retry import classify as classify_failure
from parsers.message import ParsedMessage, parse_message

log = logging.getLogger("emergencyd.escalation")

# What each step needs done first.
PREREQUISITES: dict[str, tuple[str, ...]] = {
    TICKET: (), PAGE: (), TICKET_NOTE: (TICKET,), LINK_TICKET: (TICKET, PAGE), LINK_PAGE: (TICKET, PAGE),
}
# PagerDuty shows a triggered incident after a short delay; look it up this many times
# before the ticket's link note goes out with the dedup_key alone.
INCIDENT_LOOKUP_ATTEMPTS = 5

StepResult = tuple[dict[str, Any], dict[str, Any]]   # (step result, escalation fields it settles)


class Observer(Protocol):
    def step_finished(self, integration: str, step: str, outcome: str, status_class: str) -> None: ...
    def paged(self, seconds_since_receipt: float) -> None: ...
    def decided(self, verdict: Verdict) -> None: ...


@dataclass(frozen=True)
class EscalationSettings:
    dry_run: bool
    schedule: RetrySchedule
    ticket_head_start_seconds: float
    concurrency: int
    own_addresses: tuple[str, ...] = ()
    own_hostnames: tuple[str, ...] = ()


def integration_of(step: str) -> str:
    return "pagerduty" if step in PAGERDUTY_STEPS else "zendesk"


class Escalator:
    def __init__(self, store, desk, pager, settings: EscalationSettings, observer: Observer, policy: Policy):
        self.policy = policy     # replaced whole on reload; each escalation is decided once, when planned
        self._store = store
        self._desk = desk
        self._pager = pager
        self._settings = settings
        self._observer = observer
        self._limits = {name: asyncio.Semaphore(settings.concurrency) for name in ("zendesk", "pagerduty")}
        self._threads = {name: ThreadPoolExecutor(settings.concurrency, thread_name_prefix=name)
                         for name in ("zendesk", "pagerduty")}
        self._perform: dict[str, Callable[[EscalationRecord, ParsedMessage, int], StepResult]] = {
            TICKET: self._ticket, TICKET_NOTE: self._ticket_note, PAGE: self._page,
            LINK_TICKET: self._link_ticket, LINK_PAGE: self._link_page,
        }

    def close(self) -> None:
        for pool in self._threads.values():
            pool.shutdown(wait=True, cancel_futures=True)

    def planned_steps(self, verdict: Verdict) -> tuple[str, ...]:
        steps: tuple[str, ...] = (TICKET, TICKET_NOTE) if verdict.ticket else ()
        if verdict.page:
            steps += (PAGE,)
            if verdict.ticket:
                steps += (LINK_TICKET,)
                if self._pager is not None and self._pager.has_rest_api:
                    steps += (LINK_PAGE,)
        return steps

    def decide(self, record: EscalationRecord, parsed: ParsedMessage) -> Verdict:
        """The policy's verdict, from the time the message was received (not its Date header)."""
        env = record.envelope
        return classify(parsed, received_at=datetime.fromtimestamp(env.received_at, timezone.utc),
                        mail_from=env.mail_from if env.source == "smtp" else None,
                        own_addresses=self._settings.own_addresses, own_hostnames=self._settings.own_hostnames,
                        policy=self.policy)

    async def advance(self, pk: int) -> None:
        """Run the steps of one escalation, each as soon as it is due and its prerequisites are done.

        Steps run concurrently: a page in flight does not hold up the ticket's note,
        and a slow ticket holds up the page by the head start at most.
        """
        record = await self._store.record(pk)
        parsed = parse_message(await self._store.raw(pk))
        if record.state == NEW:
            verdict = self.decide(record, parsed)
            await self._store.plan(pk, subject=parsed.subject, sender=content.requester_of(record, parsed),
                                   steps=self.planned_steps(verdict), verdict=verdict.as_dict())
            self._observer.decided(verdict)
            log.info("decided", extra={"message_pk": pk, "decision": content.describe_verdict(verdict.as_dict())})
            record = await self._store.record(pk)
        running: dict[str, asyncio.Task] = {}
        while record.state == PENDING:
            for name in await self._ready_steps(record, running):
                running[name] = asyncio.create_task(self._start(record, parsed, name, running))
            if not running:
                return
            done, _ = await asyncio.wait(running.values(), return_when=asyncio.FIRST_COMPLETED)
            for name in [n for n, task in running.items() if task in done]:
                running.pop(name).result()
            record = await self._store.record(pk)

    async def _ready_steps(self, record: EscalationRecord, running: dict[str, asyncio.Task]) -> list[str]:
        now = time.time()
        ready = []
        for step in record.steps:
            if step.state != STEP_PENDING or step.name in running or step.next_attempt_at > now:
                continue
            if await self._waits_on_prerequisite(record, step.name, running) is None:
                ready.append(step.name)
        return ready

    async def _waits_on_prerequisite(self, record: EscalationRecord, name: str,
                                     running: dict[str, asyncio.Task]) -> str | None:
        """A step whose prerequisite is not done waits for it, or fails with it."""
        for prerequisite in PREREQUISITES[name]:
            before = record.step(prerequisite)
            if before is None or before.done:
                continue
            if before.state == STEP_FAILED:
                await self._store.fail_step(record.message_pk, name, error=f"not possible: {prerequisite} failed",
                                            next_attempt_at=None)
            elif prerequisite not in running and record.step(name).next_attempt_at < before.next_attempt_at:
                await self._store.defer_step(record.message_pk, name, before.next_attempt_at)
            return prerequisite
        return None

    async def _start(self, record: EscalationRecord, parsed: ParsedMessage, name: str,
                     running: dict[str, asyncio.Task]) -> None:
        ticket = running.get(TICKET)
        if name == PAGE and ticket is not None:
            # Give the ticket a head start so the page can carry its link; then page regardless.
            await asyncio.wait({ticket}, timeout=self._settings.ticket_head_start_seconds)
            record = await self._store.record(record.message_pk)
        await self._run_step(record, parsed, name)

    async def _run_step(self, record: EscalationRecord, parsed: ParsedMessage, name: str) -> None:
        integration = integration_of(name)
        pk = record.message_pk
        async with self._limits[integration]:
            prior_attempts = await self._store.begin_attempt(pk, name)
            loop = asyncio.get_running_loop()
            try:
                result, fields = await loop.run_in_executor(
                    self._threads[integration], self._perform[name], record, parsed, prior_attempts)
            except Exception as exc:   # every failure is classified; none escapes the runner
                await self._record_failure(record, name, exc, prior_attempts + 1)
                return
        await self._store.complete_step(pk, name, result, **fields)
        self._observer.step_finished(integration, name, "success", "2xx")
        log.info("step done", extra={"message_pk": pk, "step": name, "attempt": prior_attempts + 1,
                                     "dedup_key": record.dedup_key})
        if name == PAGE and not result.get("dry_run"):
            self._observer.paged(time.time() - record.envelope.received_at)

    async def _record_failure(self, record: EscalationRecord, name: str, exc: Exception, attempts: int) -> None:
        failure = classify_failure(exc)
        next_at = self._settings.schedule.next_attempt_at(failure, attempts)
        await self._store.fail_step(record.message_pk, name, error=failure.reason, next_attempt_at=next_at)
        outcome = "retry" if next_at is not None else "failed"
        self._observer.step_finished(integration_of(name), name, outcome, failure.status_class)
        log.warning("step %s", outcome, extra={
            "message_pk": record.message_pk, "step": name, "attempt": attempts, "error": failure.reason,
            "retry_in": None if next_at is None else round(next_at - time.time(), 1)})

    # -- the steps: synchronous, run on the integration's own threads -------------------

    def _would(self, request: Any) -> StepResult:
        """dry_run: record what would be sent, call nothing."""
        return {"dry_run": True, "would_send": asdict(request)}, {}

    def _ticket(self, record: EscalationRecord, parsed: ParsedMessage, prior_attempts: int) -> StepResult:
        request = content.ticket_request(record, parsed)
        if self._settings.dry_run:
            return self._would(request)
        if prior_attempts:
            existing = self._desk.find_ticket(request.external_id)
            if existing is not None:
                return {"ticket_id": existing, "found_existing": True}, {"ticket_id": existing}
        ticket_id = self._desk.create_ticket(request)
        return {"ticket_id": ticket_id}, {"ticket_id": ticket_id}

    def _ticket_note(self, record: EscalationRecord, parsed: ParsedMessage, prior_attempts: int) -> StepResult:
        note = content.envelope_note(record, parsed, record.ticket_id or 0)
        return self._post_note(note, prior_attempts)

    def _page(self, record: EscalationRecord, parsed: ParsedMessage, prior_attempts: int) -> StepResult:
        ticket_url = self._ticket_url(record)
        request = content.page_request(record, parsed, ticket_url)
        if self._settings.dry_run:
            return self._would(request)
        dedup_key = self._pager.trigger(request)
        return ({"dedup_key": dedup_key, "carried_ticket_link": ticket_url is not None},
                {"paged_at": time.time()})

    def _link_ticket(self, record: EscalationRecord, parsed: ParsedMessage, prior_attempts: int) -> StepResult:
        incident_url = record.incident_url
        if not self._settings.dry_run and incident_url is None and self._pager.has_rest_api:
            incident = self._pager.find_incident(record.dedup_key)
            if incident is None and prior_attempts + 1 < INCIDENT_LOOKUP_ATTEMPTS:
                raise TransientError("the incident is not visible in PagerDuty yet")
            incident_url = incident.html_url if incident else None
        note = content.link_note(record, record.ticket_id or 0, incident_url)
        result, fields = self._post_note(note, prior_attempts)
        return result, ({**fields, "incident_url": incident_url} if incident_url else fields)

    def _link_page(self, record: EscalationRecord, parsed: ParsedMessage, prior_attempts: int) -> StepResult:
        note = content.incident_note(record, self._ticket_url(record) or "")
        if self._settings.dry_run:
            return self._would(note)
        incident = self._pager.find_incident(record.dedup_key)
        if incident is None:
            raise TransientError("the incident is not visible in PagerDuty yet")
        if prior_attempts and self._pager.has_note(incident.id, note.marker):
            return {"incident_id": incident.id, "found_existing": True}, {"incident_url": incident.html_url}
        self._pager.add_note(incident.id, note)
        return {"incident_id": incident.id}, {"incident_url": incident.html_url}

    def _post_note(self, note: content.NoteRequest, prior_attempts: int) -> StepResult:
        if self._settings.dry_run:
            return self._would(note)
        if prior_attempts and self._desk.has_comment(note.ticket_id, note.marker):
            return {"found_existing": True}, {}
        self._desk.add_note(note)
        return {"ticket_id": note.ticket_id}, {}

    def _ticket_url(self, record: EscalationRecord) -> str | None:
        if record.ticket_id is None or self._desk is None:
            return None
        return self._desk.ticket_url(record.ticket_id)
