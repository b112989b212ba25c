"""The escalation state machine: decide once, then run each due step and commit its result.

Deciding (parse and classify in worker processes, then relate to earlier mail and plan,
in one store transaction) takes fair turns: a storm from one sender never holds up
another sender's mail, and each sender's mail is decided in arrival order. Relating and
planning run one at a time on the store's thread, so two reports of the same incident
can never both open it. Steps then run
concurrently as their prerequisites complete: within the escalation (a note needs
its ticket) and across escalations (a comment needs the ticket it goes on; an
incident ticket needs its problem ticket).

Paging never waits on Zendesk beyond `ticket_head_start_seconds`: the ticket and the
page start together, and the page takes the ticket's link only if it is ready.
Each integration has its own threads and concurrency limit, so a hung Zendesk
cannot starve PagerDuty, nor the other way round.

A page still not accepted at its deadline gets a fallback alert by mail
(escalation/fallback.py), beside the page, which keeps retrying.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, replace
from functools import partial
from typing import Callable, Protocol

from emergencyd.escalation import content, fallback
from emergencyd.escalation.actions import Actions, StepContext
from emergencyd.escalation.cpu_pool import ClassifyContext, CpuPool, Priority
from emergencyd.escalation.decided import DecidedSignals
from emergencyd.escalation.decider import decide_verdict
from emergencyd.escalation.directory import DirectoryCopy
from emergencyd.escalation.fair_turns import FairTurns
from emergencyd.escalation.grouping import (
    ALONE,
    FIRST,
    INCIDENT,
    REPEAT,
    STORM,
    THREAD,
    GroupingSettings,
    Relation,
    fingerprint,
    relate,
    ticket_reference,
)
from emergencyd.escalation.policy import Policy, Verdict
from emergencyd.escalation.ports import Desk, EscalationStore, Pager, Relay
from emergencyd.escalation.records import (
    COMMENT,
    FALLBACK_ALERT,
    GATES,
    LINK_PAGE,
    LINK_TICKET,
    NEW,
    PAGE,
    PENDING,
    PREREQUISITES,
    STEP_FAILED,
    STEP_PENDING,
    TICKET,
    TICKET_NOTE,
    EscalationRecord,
    FallbackOutcome,
    Gate,
    Integration,
    PlannedRelation,
    StepName,
    StepOutcome,
    StepRecord,
    integration_of,
)
from emergencyd.escalation.retry import RetrySchedule
from emergencyd.escalation.retry import classify as classify_failure
from emergencyd.escalation.rspamd import CheckResult, ask_rspamd
from emergencyd.parsers.message import ParsedMessage
from emergencyd.parsers.spam_headers import SpamVerdict

log = logging.getLogger("emergencyd.escalation")

FALLBACK_THREADS = 2
# How soon to look again at a step waiting on another escalation's ticket.
CROSS_WAIT_SECONDS = 0.5
# A mail naming an encoded id waits at most this long for earlier mail of other senders (deciding takes ms).
EARLIER_MAIL_WAIT_SECONDS = 10.0
# A reply decided before the mail it answers would open an incident of its own (a second ticket and page):
# worth a longer wait, which ends anyway once that mail is decided or stuck.
THREAD_PARENT_WAIT_SECONDS = 120.0
# A loop's follow-ups queued behind one comment go in it, up to this many: a readable comment.
MAX_FOLLOW_UPS_PER_COMMENT = 100


class Observer(Protocol):
    def step_finished(self, integration: str, step: str, outcome: StepOutcome, status_class: str) -> None: ...
    def paged(self, seconds_since_receipt: float) -> None: ...
    def decided(self, verdict: Verdict) -> None: ...
    def related(self, kind: str) -> None: ...
    def page_deferred(self) -> None: ...
    def fallback_alert(self, outcome: FallbackOutcome) -> None: ...
    def spam_checked(self, outcome: str) -> None: ...
    failing_since: dict[str, float]


@dataclass(frozen=True)
class EscalationSettings:
    dry_run: bool
    schedule: RetrySchedule
    ticket_head_start_seconds: float
    concurrency: int
    grouping: GroupingSettings
    max_new_pages_per_minute: int = 30
    own_addresses: tuple[str, ...] = ()
    own_hostnames: tuple[str, ...] = ()
    fallback_after_seconds: float | None = None   # None: no fallback alert
    decide_concurrency: int = 4                   # mails being decided at once (parse, classify, plan)


class Escalator:
    def __init__(self, store: EscalationStore, desk: Desk | None, pager: Pager | None, settings: EscalationSettings,
                 observer: Observer, cpu: CpuPool, relay: Relay | None = None, clock: Callable[[], float] = time.time):
        self._cpu = cpu          # parses and classifies off the event loop, with the policy in force
        # The wall clock of due times, the new-page cap and the fallback deadline (a test can move it on).
        self._clock = clock
        self._store = store
        self._settings = settings
        self._observer = observer
        self._actions = Actions(desk, pager, dry_run=settings.dry_run, relay=relay)
        self._turns = FairTurns(settings.decide_concurrency)
        self._decided = DecidedSignals()   # a mail waiting for earlier mail hears when that is decided
        self._ticket_queued: dict[int, asyncio.Event] = {}   # message pk -> its ticket's create waits its turn
        self._comments_done: dict[int, asyncio.Event] = {}   # message pk -> its comment went (or failed)
        self._comments_running: set[int] = set()
        self._new_pages: deque[float] = deque()
        self._limits = {name: asyncio.Semaphore(settings.concurrency) for name in Integration}
        self._threads = {name: ThreadPoolExecutor(FALLBACK_THREADS if name == Integration.FALLBACK
                                                  else settings.concurrency, thread_name_prefix=name)
                         for name in Integration}

    async def read_tenant_directory(self) -> DirectoryCopy:
        """Zendesk's organizations and end users, on the Zendesk threads and through its pacing."""
        if self._actions.desk is None:
            raise RuntimeError("dry run: Zendesk is not called")
        return await asyncio.get_running_loop().run_in_executor(self._threads[Integration.ZENDESK],
                                                                self._actions.desk.directory)

    async def warm(self) -> None:
        await self._cpu.warm()

    @property
    def policy(self) -> Policy:
        return self._cpu.policy

    @policy.setter
    def policy(self, policy: Policy) -> None:
        """A reload swaps the policy whole; each escalation is decided once, when planned."""
        self._cpu.swap_policy(classify_context(policy, self._settings))

    def close(self) -> None:
        for pool in self._threads.values():
            pool.shutdown(wait=True, cancel_futures=True)
        self._cpu.close()

    # -- deciding ------------------------------------------------------------------

    def planned_steps(self, verdict: Verdict, relation: Relation) -> tuple[str, ...]:
        if relation.kind in (THREAD, STORM, REPEAT):
            if relation.repage:
                return (COMMENT, PAGE) + self._fallback_steps(relation)
            if relation.kind != STORM and self._actions.has_rest_api:
                # A follow-up to an incident PagerDuty already resolved opens a new one (page checks first).
                return (COMMENT, PAGE, LINK_TICKET)
            return (COMMENT,)
        steps: tuple[str, ...] = (TICKET, TICKET_NOTE) if verdict.ticket else ()
        if verdict.page:
            steps += (PAGE, LINK_TICKET) if verdict.ticket else (PAGE,)
            if verdict.ticket and self._actions.has_rest_api:
                steps += (LINK_PAGE,)
            steps += self._fallback_steps(relation)
        return steps

    def _fallback_steps(self, relation: Relation) -> tuple[str, ...]:
        """A page of its own gets a fallback alert; a report joining an open incident shares the first one's."""
        if self._settings.fallback_after_seconds is None or relation.kind == INCIDENT:
            return ()
        return (FALLBACK_ALERT,)

    async def decide(self, record: EscalationRecord, parsed: ParsedMessage, spam: SpamVerdict | None = None) -> Verdict:
        """The verdict as `emergencyd classify` gives it too (escalation/decider.py), classified off the loop."""
        return await decide_verdict(record.envelope, parsed, self.policy.trust,
                                    lambda: self._store.raw(record.message_pk), self._cpu.classify,
                                    spam=spam, released=record.released_at is not None)

    async def _decide_and_plan(self, record: EscalationRecord) -> tuple[ParsedMessage, EscalationRecord]:
        """In the sender's turn: parse, the sender's trust (a DKIM check may wait on DNS, bounded),
        classify, then relate and plan in one store transaction. Returns the parse and the record as
        the store has it after the plan."""
        self._decided.deciding(record.message_pk)
        asking = self._ask_spam_filter(record)     # meanwhile: rspamd is never waited on past its timeout
        try:
            await self._wait_for(partial(self._undecided_thread_parent, record), THREAD_PARENT_WAIT_SECONDS,
                                 record, "the mail it replies to")
            async with self._turns.turn(record.fair_key):
                parsed, verdict = await self._parse_and_classify(record, asking is None)
                # Only mail naming a Zendesk encoded id (read with the parse, in the worker) may wait for another
                # sender's earlier mail, from which that id may be learnt; other mail makes no store call for it.
                look = partial(self._undecided_mail_its_ids_may_come_from, record)
                if parsed.encoded_ids and await self._store.call(look) is not None:
                    async with self._turns.aside(record.fair_key):
                        await self._wait_for(look, EARLIER_MAIL_WAIT_SECONDS, record, "earlier mail of another sender")
                if verdict is None:
                    asked = await self._spam_answer(asking)
                    verdict = await self.decide(record, parsed, asked.verdict if asked else None)
                    if asked is not None:
                        verdict = replace(verdict, spam_check=str(asked.outcome))
                urgent = verdict.page and not self._new_page_cap_full()
                if not urgent:   # a plan that can page no one now waits behind those that can, out of the limit
                    self._turns.step_out(record.fair_key)
                with self._urgent_or_background(urgent):
                    relation, planned = await self._store.call(self._plan_and_read, record, parsed, verdict)
                    if relation is not None:
                        self._log_decision(record, verdict, relation)
        finally:
            self._decided.decided(record.message_pk)
            if asking is not None and not asking.done():
                asking.cancel()
        return parsed, planned

    async def _parse_and_classify(self, record: EscalationRecord,
                                  at_once: bool) -> tuple[ParsedMessage, Verdict | None]:
        """The parse and, `at_once` (no spam filter's answer to wait for), the verdict in the same worker round
        trip: one less on a new mail's way to its page. Without it, or when the sender's trust needs our own
        DKIM check, the verdict is None: decide() gives it."""
        raw = await self._store.raw(record.message_pk)
        if at_once:
            return await self._cpu.parse_and_classify(raw, record.envelope, released=record.released_at is not None)
        return await self._cpu.parse(raw, Priority.DECIDE), None

    def _ask_spam_filter(self, record: EscalationRecord) -> asyncio.Task[CheckResult] | None:
        check = self.policy.spam
        if not check.enabled:
            return None

        async def ask() -> CheckResult:
            return await ask_rspamd(await self._store.raw(record.message_pk), check)
        return asyncio.create_task(ask(), name=f"rspamd-{record.message_pk}")

    async def _spam_answer(self, asking: asyncio.Task[CheckResult] | None) -> CheckResult | None:
        if asking is None:
            return None
        result = await asking
        self._observer.spam_checked(result.outcome)
        if result.verdict is None:
            log.warning("decided without rspamd", extra={"outcome": result.outcome, "detail": result.detail})
        return result

    async def _wait_for(self, look: Callable[[], int | None], patience: float, record: EscalationRecord,
                        what: str) -> None:
        """Until `look` (run on the store's thread) finds no undecided mail in the way, at most `patience`
        seconds: a backlog (a burst, a replica taking over) can hold that mail for longer, and then this
        one goes ahead of it anyway. Each look waits for the decision of the mail it found, announced
        when it is taken (escalation/decided.py): waiters form a chain, each woken by the one before."""
        began = time.monotonic()
        while True:
            mark = self._decided.mark()
            in_the_way = await self._store.call(look)
            if in_the_way is None:
                return
            left = began + patience - time.monotonic()
            if left <= 0:
                log.warning("deciding before earlier mail", extra={
                    "message_pk": record.message_pk, "in_the_way": in_the_way, "waited_for": what})
                return
            await self._decided.wait_for(in_the_way, mark, left)

    def _undecided_thread_parent(self, record: EscalationRecord) -> int | None:
        """A reply is decided after the mail it answers, whose ticket it joins: read from its headers."""
        return self._store.sync.undecided_thread_parent(record.message_pk)

    def _undecided_mail_its_ids_may_come_from(self, record: EscalationRecord) -> int | None:
        """For a mail naming a Zendesk encoded id: undecided earlier mail of senders that are not storming,
        from which that id may be learnt (a reply to Zendesk's notification, threaded by its headers)."""
        return self._store.sync.undecided_quiet_sender_before(record.message_pk, record.fair_key)

    def _log_decision(self, record: EscalationRecord, verdict: Verdict, relation: Relation) -> None:
        self._observer.decided(verdict)
        self._observer.related(relation.kind)
        log.info("decided", extra={"message_pk": record.message_pk, "relation": relation.kind,
                                   "decision": content.describe_verdict(verdict), "why": relation.reason})

    def _plan_and_read(self, record: EscalationRecord, parsed: ParsedMessage,
                       verdict: Verdict) -> tuple[Relation | None, EscalationRecord]:
        """On the store's thread: relate and plan, then the record as planned, in one call from the loop."""
        relation = self._relate_and_plan(record, parsed, verdict)
        return relation, self._store.sync.record(record.message_pk)

    def _relate_and_plan(self, record: EscalationRecord, parsed: ParsedMessage, verdict: Verdict) -> Relation | None:
        """On the store's thread, in one go: what is known of related mail, then the plan."""
        store = self._store.sync
        if store.record(record.message_pk).state != NEW:
            return None
        if record.released_at is not None and record.relation is not None:
            return self._plan_released(record, parsed, verdict)
        sender_key = (content.requester_of(record, parsed) or "").lower() or None
        if sender_key and verdict.untrusted:   # forgeries fold among themselves, never the real sender's mail
            sender_key = f"unverified:{sender_key}"
        grouping = self._settings.grouping
        print_ = None if verdict.untrusted else fingerprint(verdict, parsed, grouping)
        if verdict.suppressed:
            relation = Relation(ALONE, "noise")
        else:
            facts = store.grouping_facts(
                record.message_pk, message_ids=tuple(dict.fromkeys(parsed.in_reply_to + parsed.references))[:50],
                ticket_ref=ticket_reference(parsed.subject), sender_key=sender_key, fingerprint=print_,
                received_at=record.envelope.received_at, settings=grouping, encoded_ids=parsed.encoded_ids)
            relation = relate(verdict, facts, grouping)
            if verdict.untrusted and relation.kind == FIRST:   # opens no incident that real reports would join
                relation = Relation(ALONE, "an unverified sender: a ticket of its own, outside incident grouping")
        store.plan(record.message_pk, subject=parsed.subject, sender=content.requester_of(record, parsed),
                   steps=self.planned_steps(verdict, relation), verdict=verdict,
                   relation=PlannedRelation(**asdict(relation), fingerprint=print_, sender_key=sender_key,
                                            category=verdict.category, severity=verdict.severity,
                                            encoded_ids=parsed.encoded_ids))
        return relation

    def _plan_released(self, record: EscalationRecord, parsed: ParsedMessage, verdict: Verdict) -> Relation:
        """A released mail keeps how it relates to other mail (its group, its page key): only its verdict
        and the steps it lacked are new. Steps already done (its ticket) stay done."""
        assert record.relation is not None        # the caller plans released mail only when it had a relation
        relation = Relation(record.relation, f"{record.relation_reason}; released by hand", record.parent_pk,
                            record.target_ticket_id, record.group_id)
        self._store.sync.plan(record.message_pk, subject=parsed.subject, sender=content.requester_of(record, parsed),
                              steps=self.planned_steps(verdict, relation), verdict=verdict)
        return relation

    # -- running ---------------------------------------------------------------------

    async def advance(self, pk: int) -> None:
        """Run the steps of one escalation, each as soon as it is due and its prerequisites are done."""
        record = await self._store.record(pk)
        if record.state == NEW:
            parsed, record = await self._decide_and_plan(record)
        elif record.state == PENDING:
            parsed = await self._cpu.parse(await self._store.raw(pk), Priority.STEP)
        else:
            return                 # finished, or stuck: nothing to run
        # Steps of mail that pages no one now (a ticket, a comment, a page the new-page cap holds) are no
        # one's wait but Zendesk's and the cap's: their store calls go behind other mail's decisions and pages.
        with self._urgent_or_background(record.step(PAGE) is not None and self._page_may_go_now(record)):
            await self._run_steps(record, parsed)

    def _urgent_or_background(self, urgent: bool) -> AbstractContextManager[None]:
        """The calling task's store calls within: at its own priority, or as background work."""
        return nullcontext() if urgent else self._store.in_the_background()

    async def _run_steps(self, record: EscalationRecord, parsed: ParsedMessage) -> None:
        running: dict[str, asyncio.Task[None]] = {}
        while record.state == PENDING:
            for name in await self._ready_steps(record, running):
                running[name] = asyncio.create_task(self._start(record, parsed, name, running))
            if not running:
                return
            done, _ = await asyncio.wait(running.values(), timeout=self._fallback_wake(record, running),
                                         return_when=asyncio.FIRST_COMPLETED)
            for finished in [n for n, task in running.items() if task in done]:
                running.pop(finished).result()
            record = await self._store.record(record.message_pk)

    async def _ready_steps(self, record: EscalationRecord, running: dict[str, asyncio.Task[None]]) -> list[StepName]:
        now = self._clock()
        ready = []
        for step in record.steps:
            if step.state != STEP_PENDING or step.name in running:
                continue
            if Gate.DEADLINE in GATES[step.name]:
                if await self._fallback_due(record, step, now):
                    ready.append(step.name)
                continue
            if step.next_attempt_at > now:
                continue
            if await self._waits_within(record, step.name, running) is None and \
                    await self._waits_across(record, step.name) is None:
                ready.append(step.name)
        return ready

    async def _fallback_due(self, record: EscalationRecord, step: StepRecord, now: float) -> bool:
        """Done as not needed once the page is; otherwise held until its deadline."""
        timing = fallback.timing(record, now=now, after_seconds=self._settings.fallback_after_seconds)
        if timing.not_needed:
            await self._store.complete_step(record.message_pk, FALLBACK_ALERT, {"skipped": timing.not_needed})
            return False
        if timing.wait_until is not None:
            if step.next_attempt_at < timing.wait_until:
                await self._store.defer_step(record.message_pk, FALLBACK_ALERT, timing.wait_until)
            return False
        return True

    def _fallback_wake(self, record: EscalationRecord, running: dict[str, asyncio.Task[None]]) -> float | None:
        """A page call hanging on PagerDuty must not hold the fallback back past its deadline."""
        step = record.step(FALLBACK_ALERT)
        if step is None or step.state != STEP_PENDING or FALLBACK_ALERT in running:
            return None
        return max(step.next_attempt_at - self._clock(), CROSS_WAIT_SECONDS / 10)

    async def _waits_within(self, record: EscalationRecord, name: str,
                            running: dict[str, asyncio.Task[None]]) -> str | None:
        """A step whose prerequisite is not done waits for it, or fails with it."""
        for prerequisite in PREREQUISITES[name]:
            before = record.step(prerequisite)
            if before is None or before.done:
                continue
            if before.state == STEP_FAILED:
                await self._store.fail_step(record.message_pk, name, error=f"not possible: {prerequisite} failed",
                                            next_attempt_at=None)
            elif prerequisite not in running and record.planned(name).next_attempt_at < before.next_attempt_at:
                await self._store.defer_step(record.message_pk, name, before.next_attempt_at)
            return prerequisite
        return None

    async def _waits_across(self, record: EscalationRecord, name: str) -> str | None:
        """What the step's gates hold it for in other escalations (escalation/records.py PLAN)."""
        gates = GATES[name]
        if Gate.EARLIER_COMMENTS in gates and not await self._earlier_comments_done(record):
            return "an earlier comment"
        if Gate.PARENT_TICKET in gates:
            return await self._parent_ticket(record, name)
        return None

    async def _parent_ticket(self, record: EscalationRecord, name: str) -> str | None:
        """A comment needs the ticket it goes on (unless it names a ticket that is not ours); an incident's
        ticket needs its problem ticket."""
        if record.parent_pk is None:
            return None
        if name == COMMENT and record.target_ticket_id is not None:
            return None     # it names a ticket that is not ours: nothing of ours to wait for
        if name != COMMENT and record.relation != INCIDENT:
            return None     # only an incident's ticket joins a problem ticket
        parent = await self._store.record(record.parent_pk)
        parent_ticket = parent.step(TICKET)
        if parent.ticket_id is not None or parent_ticket is None or parent_ticket.done:
            return None
        if parent_ticket.state == STEP_FAILED:
            if name == COMMENT:
                await self._store.fail_step(record.message_pk, name, next_attempt_at=None,
                                            error=f"not possible: the ticket of message {parent.message_pk} failed")
                return "parent ticket"
            return None   # an incident ticket without its problem is still a ticket
        await self._store.defer_step(record.message_pk, name,
                                     max(parent_ticket.next_attempt_at, self._clock() + CROSS_WAIT_SECONDS))
        return "parent ticket"

    async def _earlier_comments_done(self, record: EscalationRecord) -> bool:
        """Wait briefly for the previous comment on the same ticket; defer when it is backing off.

        Each comment waits only on its predecessor's event, so a loop of 500 mails costs
        500 look-ups, not 500 squared. Mail is decided in fair turns, not strictly in arrival
        order, so a comment also waits until every earlier mail is decided: one of them may be
        an earlier comment on the same ticket.
        """
        deadline = time.monotonic() + 2 * CROSS_WAIT_SECONDS
        while True:
            mark = self._decided.mark()
            earlier, undecided = await self._store.comment_in_the_way(record.message_pk, record.parent_pk,
                                                                      record.target_ticket_id)
            if earlier is None and undecided is None:
                return True
            if earlier is None:
                assert undecided is not None
                if time.monotonic() >= deadline:
                    await self._store.defer_step(record.message_pk, COMMENT, self._clock() + CROSS_WAIT_SECONDS)
                    return False
                await self._decided.wait_for(undecided, mark, deadline - time.monotonic())   # deciding takes ms
                continue
            earlier_pk, earlier_due = earlier
            # A predecessor in flight will finish (or fail) and say so: wait for it as long as it takes.
            remaining = None if earlier_pk in self._comments_running else deadline - time.monotonic()
            if (remaining is not None and remaining <= 0) or earlier_due > self._clock() + CROSS_WAIT_SECONDS:
                await self._store.defer_step(record.message_pk, COMMENT,
                                             max(earlier_due, self._clock() + CROSS_WAIT_SECONDS))
                return False
            done = self._comments_done.setdefault(earlier_pk, asyncio.Event())
            try:
                await asyncio.wait_for(done.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    async def _start(self, record: EscalationRecord, parsed: ParsedMessage, name: str,
                     running: dict[str, asyncio.Task[None]]) -> None:
        gates = GATES[name]
        ticket = running.get(TICKET)
        if Gate.TICKET_HEAD_START in gates and ticket is not None:
            await self._ticket_head_start(record.message_pk, ticket)
            record = await self._store.record(record.message_pk)
        if Gate.NEW_PAGE_CAP in gates and not await self._page_allowed(record, name):
            return
        if Gate.DEADLINE in gates:     # the overdue page's latest error goes into the mail
            record = await self._store.record(record.message_pk)
        if Gate.EARLIER_COMMENTS in gates:
            await self._run_comment(record, parsed, name)
            return
        try:
            await self._run_step(record, parsed, name)
        finally:
            if name == TICKET:         # the page's head start is over with the create
                self._ticket_queued.pop(record.message_pk, None)

    async def _run_comment(self, record: EscalationRecord, parsed: ParsedMessage, name: str) -> None:
        """A comment tells the comments after it on the same ticket when it went (their EARLIER_COMMENTS gate)."""
        if (await self._store.record(record.message_pk)).planned(name).done:
            self._comments_done.pop(record.message_pk, asyncio.Event()).set()
            return                     # folded into an earlier follow-up's comment while it waited
        self._comments_running.add(record.message_pk)
        try:
            await self._run_step(record, parsed, name)
        finally:
            self._comments_running.discard(record.message_pk)
            self._comments_done.pop(record.message_pk, asyncio.Event()).set()

    async def _ticket_head_start(self, pk: int, ticket: asyncio.Task[None]) -> None:
        """Give the ticket a head start so the page can carry its link, but only while its create is
        on its way to Zendesk: a create queued behind the pacer or the concurrency limit would hold
        the page for nothing. Then page regardless."""
        queued = self._ticket_queued.setdefault(pk, asyncio.Event())
        waiting = asyncio.create_task(queued.wait())
        try:
            await asyncio.wait({ticket, waiting}, timeout=self._settings.ticket_head_start_seconds,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiting.cancel()
            self._ticket_queued.pop(pk, None)

    def _ticket_queued_signal(self, pk: int) -> Callable[[], None]:
        """For the ticket's thread: tell the page, on the loop, that the create waits its turn."""
        loop = asyncio.get_running_loop()
        event = self._ticket_queued.setdefault(pk, asyncio.Event())

        def queued() -> None:
            loop.call_soon_threadsafe(event.set)
        return queued

    async def _page_allowed(self, record: EscalationRecord, name: str) -> bool:
        """A cap on new incidents per minute guards the on-call engineer from a loop; pages wait, never drop."""
        if self._new_page_cap_exempts(record, name):
            return True
        if not self._new_page_cap_full():
            self._new_pages.append(self._clock())
            return True
        self._observer.page_deferred()
        log.warning("page deferred: new-page cap reached", extra={"message_pk": record.message_pk})
        await self._store.defer_step(record.message_pk, name, self._new_pages[0] + 60)
        return False

    @staticmethod
    def _new_page_cap_exempts(record: EscalationRecord, name: str) -> bool:
        if record.relation == INCIDENT or record.planned(name).attempts:
            return True     # joins an open incident, or was already let through once
        return record.comments_only and not record.pages_on_its_own   # only looks whether its incident was resolved

    def _new_page_cap_full(self) -> bool:
        """As many new incidents paged in the last minute as the cap allows."""
        now = self._clock()
        while self._new_pages and self._new_pages[0] < now - 60:
            self._new_pages.popleft()
        return len(self._new_pages) >= self._settings.max_new_pages_per_minute

    def _page_may_go_now(self, record: EscalationRecord) -> bool:
        return self._new_page_cap_exempts(record, PAGE) or not self._new_page_cap_full()

    async def _run_step(self, record: EscalationRecord, parsed: ParsedMessage, name: str) -> None:
        integration = integration_of(name)
        pk = record.message_pk
        if name == TICKET and self._limits[integration].locked():
            self._ticket_queued_signal(pk)()       # behind the concurrency limit: not on its way yet
        async with self._limits[integration]:
            prior_attempts = await self._store.begin_attempt(pk, name)
            context = await self._context(record, parsed, prior_attempts, name)
            loop = asyncio.get_running_loop()
            began = time.monotonic()
            try:
                result, fields = await loop.run_in_executor(
                    self._threads[integration], self._actions.by_step[name], context)
            except Exception as exc:   # every failure is classified; none escapes the runner
                await self._record_failure(record, name, exc, prior_attempts + 1, time.monotonic() - began)
                return
            seconds = round(time.monotonic() - began, 3)
        await self._store.complete_step(pk, name, result, follow_ups=context.follow_ups, **fields)
        outcome = StepOutcome.DRY_RUN if result.get("dry_run") else StepOutcome.SUCCESS
        self._observer.step_finished(integration, name, outcome, "none" if result.get("dry_run") else "2xx")
        log.info("step done", extra={"message_pk": pk, "message_id": record.message_id, "step": name,
                                     "outcome": outcome, "attempt": prior_attempts + 1, "seconds": seconds,
                                     "dedup_key": record.page_key or record.dedup_key})
        if name == PAGE and not result.get("dry_run") and not result.get("skipped"):
            self._observer.paged(self._clock() - record.envelope.received_at)
        if name == FALLBACK_ALERT and not result.get("skipped"):
            self._observer.fallback_alert(FallbackOutcome.SENT)
            log.warning("fallback alert sent: the page is overdue", extra={
                "message_pk": pk, "dedup_key": record.dedup_key, "to": ",".join(result.get("to", []))})

    async def _context(self, record: EscalationRecord, parsed: ParsedMessage, prior_attempts: int,
                       name: str) -> StepContext:
        parent = await self._store.record(record.parent_pk) \
            if record.parent_pk is not None and name in Actions.READS_PARENT else None
        group = await self._store.group(record.group_id) \
            if record.group_id is not None and name in Actions.READS_GROUP else None
        # Follow-ups queued behind this comment go with it: one Zendesk call, not one each.
        follow_ups = await self._store.claim_follow_ups(record.message_pk, MAX_FOLLOW_UPS_PER_COMMENT) \
            if name == COMMENT else ()
        on_queued = self._ticket_queued_signal(record.message_pk) if name == TICKET else None
        return StepContext(record, parsed, prior_attempts, parent=parent, group=group, follow_ups=follow_ups,
                           on_queued=on_queued,
                           pagerduty_failing_since=self._observer.failing_since.get(Integration.PAGERDUTY))

    async def _record_failure(self, record: EscalationRecord, name: str, exc: Exception, attempts: int,
                              seconds: float) -> None:
        failure = classify_failure(exc)
        next_at = self._settings.schedule.next_attempt_at(failure, attempts, now=self._clock())
        await self._store.fail_step(record.message_pk, name, error=failure.reason, next_attempt_at=next_at)
        outcome = StepOutcome.RETRY if next_at is not None else StepOutcome.FAILED
        self._observer.step_finished(integration_of(name), name, outcome, failure.status_class)
        if name == FALLBACK_ALERT and next_at is None:
            self._observer.fallback_alert(FallbackOutcome.FAILED)
        log.warning("step %s", outcome, extra={
            "message_pk": record.message_pk, "message_id": record.message_id, "step": name, "outcome": outcome,
            "attempt": attempts, "seconds": round(seconds, 3), "error": failure.reason,
            "retry_in": None if next_at is None else round(next_at - self._clock(), 1)})


def classify_context(policy: Policy, settings: EscalationSettings) -> ClassifyContext:
    return ClassifyContext(policy=policy, own_addresses=settings.own_addresses, own_hostnames=settings.own_hostnames)
