"""What each escalation step does: synchronous, run on its integration's own threads.

Each action builds its request from the record (pure, in content.py), checks for
the effect of an earlier attempt when there was one, then makes the call. In dry
run it returns what it would send and calls nothing.

What makes each safe to repeat after a crash:
  ticket       look up by external_id before creating, when an attempt came before
  ticket_note  look for its marker among the ticket's comments before posting again
  comment      the same, with the mail's reference in the comment
  page         PagerDuty's dedup_key folds a repeated trigger into the open alert
  link_ticket  marker, as ticket_note
  link_page    marker among the incident's notes
  fallback_alert  a stable Message-ID derived from the dedup_key, committed right after the
               relay's 250 (at least once: see escalation/fallback.py)
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

from emergencyd.escalation import content, fallback
from emergencyd.escalation.content import Incident
from emergencyd.escalation.ports import Desk, Pager, Relay
from emergencyd.escalation.records import (
    COMMENT,
    FALLBACK_ALERT,
    LINK_PAGE,
    LINK_TICKET,
    PAGE,
    TICKET,
    TICKET_NOTE,
    EscalationRecord,
    FollowUp,
    RelationKind,
)
from emergencyd.escalation.retry import TransientError
from emergencyd.parsers.message import ParsedMessage

# PagerDuty shows a triggered incident after a short delay; look it up this many times
# before the ticket's link note goes out with the dedup_key alone.
INCIDENT_LOOKUP_ATTEMPTS = 5

StepResult = tuple[dict[str, Any], dict[str, Any]]   # (step result, escalation fields it settles)


@dataclass(frozen=True)
class StepContext:
    record: EscalationRecord
    parsed: ParsedMessage
    prior_attempts: int
    parent: EscalationRecord | None = None      # the problem ticket's, or the commented ticket's, escalation
    group: dict[str, Any] | None = None         # the incident group: reports, tenants
    pagerduty_failing_since: float | None = None   # for the fallback alert: since this process saw it fail
    follow_ups: tuple[FollowUp, ...] = ()          # a comment's later follow-ups, folded into it
    on_queued: Callable[[], None] | None = None    # a ticket's create waits for Zendesk's pacer: the page need not


class Actions:
    # What an action reads besides its own record and parse: the escalator fetches the parent's record and the
    # incident group (a store call each) only for these (tests/unit/test_properties.py holds them to it).
    READS_PARENT = frozenset({TICKET, COMMENT, PAGE})
    READS_GROUP = frozenset({PAGE, LINK_PAGE})

    def __init__(self, desk: Desk | None, pager: Pager | None, *, dry_run: bool, relay: Relay | None = None):
        self._desk = desk
        self._pager = pager
        self._relay = relay
        self._dry_run = dry_run
        self.by_step: dict[str, Callable[[StepContext], StepResult]] = {
            TICKET: self.ticket, TICKET_NOTE: self.ticket_note, COMMENT: self.comment, PAGE: self.page,
            LINK_TICKET: self.link_ticket, LINK_PAGE: self.link_page, FALLBACK_ALERT: self.fallback_alert,
        }

    @property
    def desk(self) -> Desk | None:
        """The Zendesk client; None in dry run."""
        return self._desk

    @property
    def _zendesk(self) -> Desk:
        if self._desk is None:       # dry run has no clients, and its actions never reach one
            raise RuntimeError("no Zendesk client in dry run")
        return self._desk

    @property
    def _pagerduty(self) -> Pager:
        if self._pager is None:
            raise RuntimeError("no PagerDuty client in dry run")
        return self._pager

    @property
    def has_rest_api(self) -> bool:
        return self._pager is not None and self._pager.has_rest_api

    def _would(self, request: Any) -> StepResult:
        return {"dry_run": True, "would_send": asdict(request)}, {}

    def ticket(self, ctx: StepContext) -> StepResult:
        problem_id = ctx.parent.ticket_id if ctx.parent is not None else None
        request = content.ticket_request(ctx.record, ctx.parsed, problem_id=problem_id)
        if self._dry_run:
            return self._would(request)
        if ctx.prior_attempts:
            existing = self._zendesk.find_ticket(request.external_id)
            if existing is not None:
                return {"ticket_id": existing, "found_existing": True}, {"ticket_id": existing}
        ticket_id = self._zendesk.create_ticket(request, on_queued=ctx.on_queued)
        result = {"ticket_id": ticket_id, "type": request.type, "problem_id": request.problem_id}
        return result, {"ticket_id": ticket_id}

    def ticket_note(self, ctx: StepContext) -> StepResult:
        return self._post_note(content.envelope_note(ctx.record, ctx.parsed, ctx.record.ticket_id or 0),
                               ctx.prior_attempts)

    def comment(self, ctx: StepContext) -> StepResult:
        ticket_id = ctx.record.target_ticket_id or (ctx.parent.ticket_id if ctx.parent else None) or 0
        request = content.merged_comment(content.follow_up_comment(ctx.record, ctx.parsed, ticket_id), ctx.follow_ups)
        merged = {"follow_ups": [f.message_pk for f in ctx.follow_ups]} if ctx.follow_ups else {}
        if self._dry_run:
            result, _ = self._would(request)
            return {**result, **merged}, {}
        if ctx.prior_attempts and self._zendesk.has_comment(ticket_id, request.marker):
            return {"ticket_id": ticket_id, "found_existing": True, **merged}, {"ticket_id": ticket_id}
        self._zendesk.add_comment(request)
        return {"ticket_id": ticket_id, **merged}, {"ticket_id": ticket_id}

    def page(self, ctx: StepContext) -> StepResult:
        record = ctx.record
        ticket_url = self._ticket_url(record.ticket_id)
        problem_url = self._ticket_url(ctx.parent.ticket_id) if ctx.parent is not None else None
        request = content.page_request(record, ctx.parsed, ticket_url, problem_url=problem_url, group=ctx.group)
        if self._dry_run:
            return self._would(request)
        resolved = self._resolved_incident(record)
        if record.comments_only and not record.pages_on_its_own and resolved is None:
            return {"skipped": "the incident is still open, or there is none: the comment is enough"}, {}
        dedup_key = self._pagerduty.trigger(request)
        result = {"dedup_key": dedup_key, "carried_ticket_link": ticket_url is not None}
        if resolved is not None:
            # Events act only on an open alert: this trigger opened a new incident.
            result.update({"reopened": True, "resolved_incident": resolved.html_url})
        return result, {"paged_at": time.time()}

    def _resolved_incident(self, record: EscalationRecord) -> Incident | None:
        """With a REST token: the incident this follow-up belongs to, when PagerDuty already resolved it."""
        if not self.has_rest_api or record.relation in (RelationKind.FIRST, RelationKind.ALONE) or not record.page_key:
            return None
        incident = self._pagerduty.find_incident(record.page_key)
        return incident if incident is not None and incident.status == "resolved" else None

    def link_ticket(self, ctx: StepContext) -> StepResult:
        record = ctx.record
        page_step = record.step(PAGE)
        page = page_step.result if page_step else {}
        if page.get("skipped"):
            return {"skipped": "nothing was paged"}, {}
        if page.get("reopened"):
            return self._post_note(content.reopened_note(record, record.ticket_id or 0, page["resolved_incident"]),
                                   ctx.prior_attempts)
        incident_url = record.incident_url
        if not self._dry_run and incident_url is None and self.has_rest_api:
            incident = self._pagerduty.find_incident(record.page_key or record.dedup_key)
            if incident is None and ctx.prior_attempts + 1 < INCIDENT_LOOKUP_ATTEMPTS:
                raise TransientError("the incident is not visible in PagerDuty yet")
            incident_url = incident.html_url if incident else None
        result, fields = self._post_note(content.link_note(record, record.ticket_id or 0, incident_url),
                                         ctx.prior_attempts)
        return result, ({**fields, "incident_url": incident_url} if incident_url else fields)

    def link_page(self, ctx: StepContext) -> StepResult:
        record = ctx.record
        note = content.incident_note(record, self._ticket_url(record.ticket_id) or "", group=ctx.group)
        if self._dry_run:
            return self._would(note)
        incident = self._pagerduty.find_incident(record.page_key or record.dedup_key)
        if incident is None:
            raise TransientError("the incident is not visible in PagerDuty yet")
        if ctx.prior_attempts and self._pagerduty.has_note(incident.id, note.marker):
            return {"incident_id": incident.id, "found_existing": True}, {"incident_url": incident.html_url}
        self._pagerduty.add_note(incident.id, note)
        return {"incident_id": incident.id}, {"incident_url": incident.html_url}

    def fallback_alert(self, ctx: StepContext) -> StepResult:
        if self._relay is None:     # dry run, or the relay was taken out of the config since planning
            return {"skipped": "no fallback relay configured"}, {}
        mail = fallback.alert_mail(ctx.record, ctx.parsed, self._relay.config,
                                   ticket_url=self._ticket_url(ctx.record.ticket_id),
                                   pagerduty_failing_since=ctx.pagerduty_failing_since)
        refused = self._relay.send(mail)
        return {"message_id": mail.message_id, "to": list(mail.to), "refused": refused,
                "attempt": ctx.prior_attempts + 1}, {}

    def _post_note(self, note: content.NoteRequest, prior_attempts: int) -> StepResult:
        if self._dry_run:
            return self._would(note)
        if prior_attempts and self._zendesk.has_comment(note.ticket_id, note.marker):
            return {"found_existing": True}, {}
        self._zendesk.add_note(note)
        return {"ticket_id": note.ticket_id}, {}

    def _ticket_url(self, ticket_id: int | None) -> str | None:
        if ticket_id is None or self._desk is None:
            return None
        return self._zendesk.ticket_url(ticket_id)
