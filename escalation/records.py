"""The escalation state as it flows between the store, the runner and `status`.

An escalation is a small state machine persisted step by step: each external call
is followed by a commit of its result, so a restart resumes exactly where the
previous process stopped.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from emergencyd.parsers.identity import HeaderIdentity, is_null_envelope_sender

if TYPE_CHECKING:
    from emergencyd.escalation.policy import Verdict


class EscalationState(StrEnum):
    NEW = "new"                # stored, not yet parsed and planned
    PENDING = "pending"        # planned; some steps still to do
    DONE = "done"              # every step done
    FAILED = "failed"          # a step failed permanently; a human must look
    SUPPRESSED = "suppressed"  # noise, recorded with its reason; nothing sent
    STUCK = "stuck"            # deciding it failed MAX_DECIDE_ATTEMPTS times: a human must look (`emergencyd rearm`)


class RelationKind(StrEnum):
    """How a mail relates to earlier mail (relate() below decides)."""
    FIRST = "first"          # opens an incident
    THREAD = "thread"        # a reply, or a mail naming a ticket: a comment on that ticket
    STORM = "storm"          # a sender's mail past sender_limit: a comment on its open ticket
    REPEAT = "repeat"        # the same sender's report of an open incident: a comment
    INCIDENT = "incident"    # another tenant's report of an open incident: its own ticket, the same page
    ALONE = "alone"          # outside incident grouping: not an incident, noise, an unverified sender


class StepState(StrEnum):
    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"


class StepOutcome(StrEnum):
    """How one attempt at a step went (the steps metric's outcome label, the step log lines)."""
    SUCCESS = "success"
    RETRY = "retry"      # failed, tried again later
    FAILED = "failed"    # failed for good
    DRY_RUN = "dry_run"  # dry_run = true: written down, not sent; never counted as a success


class FallbackOutcome(StrEnum):
    """What became of a fallback alert's mail (the fallback metric's label)."""
    SENT = "sent"
    FAILED = "failed"


# The names the code has always used: the enum members themselves (str subclasses, so SQL takes them as is).
NEW, PENDING, DONE, FAILED, SUPPRESSED, STUCK = EscalationState
STEP_PENDING, STEP_DONE, STEP_FAILED = StepState
MAX_DECIDE_ATTEMPTS = 3


class ReleaseOutcome(StrEnum):
    """What `emergencyd release ID` did (daemon/store/core.py Store.release)."""
    RELEASED = "released"            # new again: the daemon decides it again, without the demotion
    UNKNOWN = "unknown"              # no such message
    NOT_DEMOTED = "not demoted"      # its rules already had their way: nothing to release
    ALREADY = "already released"
    BUSY = "still being escalated"   # released once its steps are done, not under them


class RearmOutcome(StrEnum):
    """What `emergencyd rearm ID` did (daemon/store/core.py Store.rearm)."""
    REARMED = "rearmed"              # new again, its failures forgotten: the daemon tries to decide it again
    UNKNOWN = "unknown"
    NOT_STUCK = "not stuck"


class RetryOutcome(StrEnum):
    """What `emergencyd retry ID` did (daemon/store/core.py Store.retry)."""
    RETRIED = "retried"              # its failed steps are due again: the daemon runs them, looking first for
                                     # what an earlier attempt did (no second ticket or page)
    UNKNOWN = "unknown"
    NOT_FAILED = "not failed"


class StepName(StrEnum):
    """The steps of an escalation (escalation/steps.py runs them; STEP_ORDER is how a human reads them)."""
    TICKET = "ticket"                  # create the Zendesk ticket (looked up by external_id on retry)
    TICKET_NOTE = "ticket_note"        # internal note: envelope and header summary
    PAGE = "page"                      # PagerDuty Events v2 trigger
    LINK_TICKET = "link_ticket"        # internal note on the ticket carrying the dedup_key (and incident URL)
    LINK_PAGE = "link_page"            # note on the incident with the ticket URL
    COMMENT = "comment"                # a public comment, by the sender, on the ticket of an earlier mail
    # Mail through the fallback relay when the page is still not accepted at received_at + the deadline.
    # It never replaces the page, which keeps retrying; it is done as "not needed" once the page is done,
    # so it never holds the escalation open. The escalation is DONE when the page is, not when the mail is.
    FALLBACK_ALERT = "fallback_alert"


TICKET, TICKET_NOTE, PAGE, LINK_TICKET, LINK_PAGE, COMMENT, FALLBACK_ALERT = StepName



class Integration(StrEnum):
    """Who a step calls: each has its own threads and concurrency limit (escalation/steps.py)."""
    ZENDESK = "zendesk"
    PAGERDUTY = "pagerduty"
    FALLBACK = "fallback"      # the SMTP relay of the fallback alert


class Gate(StrEnum):
    """What a step waits for besides the steps it needs; escalation/steps.py holds each gate's rule."""
    DEADLINE = "deadline"                    # held until the page is overdue; done as not needed once it is paged
    EARLIER_COMMENTS = "earlier_comments"    # the comments before it on the same ticket go first
    PARENT_TICKET = "parent_ticket"          # the ticket it goes on (a comment) or joins (an incident's) exists
    TICKET_HEAD_START = "ticket_head_start"  # a moment for the ticket's create on its way, so the page links it
    NEW_PAGE_CAP = "new_page_cap"            # at most max_new_pages_per_minute new incidents paged; held, not dropped


@dataclass(frozen=True)
class StepPlan:
    name: StepName
    integration: Integration
    needs: tuple[StepName, ...]          # done first, within the same escalation
    gates: tuple[Gate, ...] = ()


# The plan, one row a step, in the order a human reads them. Which steps a mail gets is the verdict's and
# relation's business (Escalator.planned_steps); a step starts once what it needs is done and its gates open.
PLAN: tuple[StepPlan, ...] = (
    StepPlan(TICKET, Integration.ZENDESK, (), (Gate.PARENT_TICKET,)),
    StepPlan(TICKET_NOTE, Integration.ZENDESK, (TICKET,)),
    StepPlan(COMMENT, Integration.ZENDESK, (), (Gate.EARLIER_COMMENTS, Gate.PARENT_TICKET)),
    StepPlan(PAGE, Integration.PAGERDUTY, (), (Gate.TICKET_HEAD_START, Gate.NEW_PAGE_CAP)),
    StepPlan(FALLBACK_ALERT, Integration.FALLBACK, (), (Gate.DEADLINE,)),   # watches the page, never waits for it
    # A follow-up's note goes on the ticket its comment found, so its link waits for the comment too.
    StepPlan(LINK_TICKET, Integration.ZENDESK, (TICKET, COMMENT, PAGE)),
    StepPlan(LINK_PAGE, Integration.PAGERDUTY, (TICKET, PAGE)),
)
STEP_ORDER = tuple(step.name for step in PLAN)
PREREQUISITES: dict[str, tuple[StepName, ...]] = {step.name: step.needs for step in PLAN}
GATES: dict[str, tuple[Gate, ...]] = {step.name: step.gates for step in PLAN}
_INTEGRATION = {step.name: step.integration for step in PLAN}


def integration_of(step: str) -> Integration:
    return _INTEGRATION[StepName(step)]


def identity_of(message_id: str | None, sha256_hex: str) -> str:
    """What makes two deliveries the same message: its Message-ID, else its exact bytes."""
    return f"mid:{message_id}" if message_id else f"sha256:{sha256_hex}"


def dedup_key_of(identity: str) -> str:
    """Stable key used as Zendesk external_id and PagerDuty dedup_key (<= 255 chars)."""
    return "emergencyd-" + hashlib.sha256(identity.encode("utf-8", "surrogatepass")).hexdigest()[:40]


@dataclass(frozen=True)
class Relation:
    """How a mail relates to earlier mail (escalation/grouping.py relate() decides)."""
    kind: RelationKind
    reason: str
    parent_pk: int | None = None          # whose ticket gets the comment
    target_ticket_id: int | None = None   # a ticket named in the subject that is not ours
    group_id: int | None = None           # the incident group it joins
    repage: bool = False                  # a reply that raised the severity: a page of its own


@dataclass(frozen=True)
class PlannedRelation(Relation):
    """The relation as the store records it with the plan (Store.plan): with what grouping keys it by."""
    fingerprint: str | None = None        # what an incident group is keyed by (escalation/grouping.py)
    sender_key: str | None = None
    category: str | None = None
    severity: str | None = None
    encoded_ids: tuple[str, ...] = ()     # Zendesk encoded ids the mail carries


@dataclass(frozen=True)
class Envelope:
    """What the SMTP session (or the IMAP server, or `inject`) told us besides the bytes."""
    source: str                       # smtp | imap | inject
    mail_from: str
    rcpt_to: tuple[str, ...]
    peer: str = ""
    helo: str = ""
    tls: bool = False
    received_at: float = 0.0          # unix time


# The turn shared by all mail with a null reverse path (escalation/fair_turns.py).
NULL_REVERSE_PATH_TURN = "<>"


def fair_key_of(envelope: Envelope, header: HeaderIdentity) -> str:
    """Whose turn a mail is decided in: its From address, else its envelope sender. Mail with a null
    reverse path (bounces and auto-replies, RFC 5321 4.5.5 and RFC 3834; the policy takes it for noise)
    shares one turn: a mass mailing bounced by a thousand mail systems is one storm, and every tenant's
    mail is decided ahead of it. Over SMTP the envelope says so (a Return-Path field there is the
    sender's own); over IMAP and `inject` an empty envelope sender means unknown, and the Return-Path
    field the delivering server wrote says so: both read as the policy reads them (parsers/noise_facts.py)."""
    if envelope.source == "smtp":
        if is_null_envelope_sender(envelope.mail_from):
            return NULL_REVERSE_PATH_TURN
    elif header.null_return_path:
        return NULL_REVERSE_PATH_TURN
    return header.from_address if header.from_address is not None else envelope.mail_from.lower()


@dataclass(frozen=True)
class FollowUp:
    """A later mail's comment, folded into an earlier comment on the same ticket."""
    message_pk: int
    dedup_key: str
    subject: str | None
    received_at: float


@dataclass(frozen=True)
class StepRecord:
    name: StepName
    state: StepState
    attempts: int
    next_attempt_at: float
    last_error: str | None
    result: dict[str, Any] = field(default_factory=dict)
    updated_at: float = 0.0

    @property
    def done(self) -> bool:
        return self.state == STEP_DONE


@dataclass(frozen=True)
class EscalationRecord:
    message_pk: int
    identity: str
    message_id: str | None
    dedup_key: str
    state: EscalationState
    envelope: Envelope
    size: int
    sha256: str
    deliveries: int
    subject: str | None
    sender: str | None
    ticket_id: int | None
    incident_url: str | None
    paged_at: float | None
    steps: tuple[StepRecord, ...]
    verdict: Verdict | None = None          # as decided when planned (stored as Verdict.as_dict())
    relation: RelationKind | None = None    # how it relates to earlier mail (escalation/grouping.py)
    relation_reason: str | None = None
    parent_pk: int | None = None            # the escalation whose ticket this one comments on or joins
    target_ticket_id: int | None = None     # a ticket named in the subject that is not ours
    group_id: int | None = None
    page_key: str | None = None             # the dedup_key of the incident this mail shares
    fair_key: str = ""                      # whose mail, before parsing: decisions take turns by it
    released_at: float | None = None        # `emergencyd release`: decided again without its demotion
    decide_failures: int = 0                # failed attempts to decide and plan it (STUCK at MAX_DECIDE_ATTEMPTS)
    decide_error: str | None = None         # the last one's error
    retried_at: float | None = None         # `emergencyd retry`: when its failed steps were last handed back

    @property
    def comments_only(self) -> bool:
        return self.relation in (RelationKind.THREAD, RelationKind.STORM, RelationKind.REPEAT)

    @property
    def pages_on_its_own(self) -> bool:
        """Its own incident: a new one, or a reply that raised the conversation's severity."""
        return self.page_key is not None and self.page_key == self.dedup_key

    def step(self, name: str) -> StepRecord | None:
        return next((s for s in self.steps if s.name == name), None)

    def planned(self, name: str) -> StepRecord:
        """A step the plan holds (KeyError if it does not)."""
        step = self.step(name)
        if step is None:
            raise KeyError(f"message {self.message_pk} has no {name} step")
        return step

    def last_error(self) -> str | None:
        errors = [s for s in self.steps if s.last_error and s.state != STEP_DONE]
        return errors[0].last_error if errors else None
