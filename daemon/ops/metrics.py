"""Prometheus metrics about emergencyd itself, on a registry of its own.

Every label series is created at zero, so alerts on rates work from the first scrape.
"""
from __future__ import annotations

import time
from importlib.metadata import PackageNotFoundError, version

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)

from emergencyd.daemon.ingest.imap_failure import FailureKind
from emergencyd.daemon.ingest.oauth2_tokens import FETCHED, TokenProblem
from emergencyd.escalation.hours import Window
from emergencyd.escalation.policy import SEVERITIES, Verdict
from emergencyd.escalation.records import (
    STEP_ORDER,
    FallbackOutcome,
    Integration,
    RelationKind,
    StepOutcome,
    integration_of,
)
from emergencyd.escalation.rspamd import CheckOutcome
from emergencyd.parsers.noise import NOISE_KINDS

SOURCES = ("smtp", "imap", "inject")

REJECT_REASONS = ("unknown_recipient", "too_large", "store_failure", "shutting_down", "too_many_connections",
                  "too_many_connections_per_ip", "too_many_recipients", "rate_limited_ip", "rate_limited_sender",
                  "timeout", "session_too_long", "auth_required", "auth_throttled", "proxy_untrusted",
                  "proxy_invalid", "line_too_long")
AUTH_RESULTS = ("success", "failure")
TRUST_RESULTS = ("pass", "fail", "none")
STATUS_CLASSES = ("2xx", "4xx", "5xx", "network")
# Receipt to page: an emergency should page within seconds; a Zendesk or PagerDuty
# outage stretches this into minutes and hours.
PAGE_LATENCY_BUCKETS = (0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900, 3600)
IMAP_ERROR_KINDS = tuple(FailureKind)
TOKEN_FETCH_OUTCOMES = (FETCHED, *TokenProblem)
# The loop should never be held for more than a few milliseconds; 20 ms is already felt by SMTP clients.
LOOP_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
# INTERNALDATE has whole seconds: sub-second buckets would be noise.
PICKUP_LATENCY_BUCKETS = (1, 2, 5, 10, 30, 60, 300, 900, 3600, 21600, 86400)


def build_version() -> str:
    try:
        return version("emergencyd")
    except PackageNotFoundError:
        return "unknown"


# `_created` series double the output and no alert uses them.
disable_created_metrics()


class Metrics:
    def __init__(self, replica: str = "") -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.received = Counter("emergencyd_messages_received_total",
                                "Messages committed to the store, by source.", ["source"], registry=r)
        self.duplicates = Counter("emergencyd_messages_duplicate_total",
                                  "Deliveries of a message that was already stored.", ["source"], registry=r)
        self.last_ingest = Gauge("emergencyd_last_ingest_timestamp_seconds",
                                 "Unix time a message was last committed, by source (0: none since start).",
                                 ["source"], registry=r)
        self.rejected = Counter("emergencyd_messages_rejected_total",
                                "Messages or recipients refused at ingest, by reason.", ["reason"], registry=r)
        self.steps = Counter("emergencyd_escalation_steps_total",
                             "Escalation step attempts, by integration, step, outcome and HTTP status class.",
                             ["integration", "step", "outcome", "status_class"], registry=r)
        self.page_latency = Histogram("emergencyd_page_latency_seconds",
                                      "Seconds from receipt of a message to PagerDuty accepting its page.",
                                      buckets=PAGE_LATENCY_BUCKETS, registry=r)
        self.last_page = Gauge("emergencyd_last_page_timestamp_seconds",
                               "Unix time of the last page PagerDuty accepted.", registry=r)
        self.loop_lag = Histogram("emergencyd_event_loop_lag_seconds",
                                  "How late the event loop ran a timer it should have run on time.",
                                  buckets=LOOP_LAG_BUCKETS, registry=r)
        self.pending = Gauge("emergencyd_escalations_pending",
                             "Escalations with steps still to do.", registry=r)
        self.stuck = Gauge("emergencyd_escalations_stuck",
                           "Mail that could not be decided after a few tries, waiting for `emergencyd rearm`.",
                           registry=r)
        self.stuck_total = Counter("emergencyd_escalations_became_stuck_total",
                                   "Mail that became stuck: deciding it failed every time.", registry=r)
        self.in_flight = Gauge("emergencyd_escalations_in_flight",
                               "Escalations being worked on now (each holds its parsed message).", registry=r)
        self.in_flight_bytes = Gauge("emergencyd_escalations_in_flight_bytes",
                                     "Raw size of the messages of the escalations in flight.", registry=r)
        self.first_mails_paced = Counter(
            "emergencyd_first_mails_paced_total",
            "New senders' mail whose decision waited for the pace of first mails while mail was arriving"
            " ([escalation] first_mails_per_second_while_mail_arrives).", registry=r)
        self.oldest_pending_age = Gauge("emergencyd_escalation_oldest_pending_age_seconds",
                                        "Age of the oldest unfinished escalation, 0 when none.", registry=r)
        self.verdicts = Counter("emergencyd_verdicts_total",
                                "Policy decisions on non-noise mail, by severity ('none': not an incident) and window.",
                                ["severity", "window"], registry=r)
        self.suppressed = Counter("emergencyd_messages_suppressed_total",
                                  "Mail recognised as noise and never paged, by kind.", ["kind"], registry=r)
        self.relations = Counter("emergencyd_relations_total",
                                 "How each decided mail relates to earlier mail (first, incident, thread, repeat,"
                                 " storm, alone).", ["relation"], registry=r)
        self.fallback_alerts = Counter("emergencyd_fallback_alerts_total",
                                       "Fallback alert mails for overdue pages: accepted by the relay (sent), or"
                                       " refused for good (failed).", ["outcome"], registry=r)
        self.page_overdue = Gauge("emergencyd_escalations_page_overdue",
                                  "Escalations still pending whose page is past the fallback deadline and not"
                                  " accepted by PagerDuty (0 without [fallback]).", registry=r)
        self.pages_deferred = Counter("emergencyd_pages_deferred_total",
                                      "New pages held back by the per-minute cap (they go out later).", registry=r)
        self.sender_trust = Counter("emergencyd_sender_trust_total",
                                    "Sender trust of decided mail with [trust] configured: pass (verified), fail "
                                    "(DMARC failed), none (cannot tell).", ["result"], registry=r)
        self.pages_held = Counter("emergencyd_pages_held_total",
                                  "Pages the routing asked for that [trust] held back (unverified sender).",
                                  registry=r)
        self.strangers_ticketed = Counter(
            "emergencyd_stranger_mail_ticketed_total",
            "Mail from senders outside the tenant directory that no rule matched: a ticket, no page.", registry=r)
        self.directory_refreshes = Counter(
            "emergencyd_directory_refreshes_total",
            "Reads of the tenant directory from Zendesk ([trust] directory_from_zendesk), by outcome (ok, failed).",
            ["outcome"], registry=r)
        self.directory_entries = Gauge(
            "emergencyd_directory_entries",
            "Entries of the tenant directory in force (config and Zendesk), by kind (domain, address).",
            ["kind"], registry=r)
        self.released = Counter(
            "emergencyd_released_total",
            "Suppressed or demoted mail handed back by `emergencyd release` and decided again without its demotion.",
            registry=r)
        self.suspected_spam = Counter(
            "emergencyd_suspected_spam_total",
            "Decided mail that the spam filter (rspamd asked, or the relay's fields) called spam, not suppressed.",
            registry=r)
        self.spam_checks = Counter("emergencyd_spam_checks_total",
                                   "rspamd asked ([spam] rspamd_url), by outcome: answered, timeout, unreachable, "
                                   "garbled. Without an answer the mail is decided without it.", ["outcome"],
                                   registry=r)
        self.imap_connected = Gauge("emergencyd_imap_connected",
                                    "1 while logged in to the IMAP mailbox, else 0.", registry=r)
        self.imap_idle_active = Gauge("emergencyd_imap_idle_active",
                                      "1 while new mail is awaited with IDLE, 0 when polling or disconnected.",
                                      registry=r)
        self.imap_last_sync = Gauge("emergencyd_imap_last_sync_timestamp_seconds",
                                    "Unix time the mailbox was last fully caught up.", registry=r)
        self.imap_fetched = Counter("emergencyd_imap_messages_fetched_total",
                                    "Messages fetched from the IMAP mailbox (before deduplication).", registry=r)
        self.imap_errors = Counter("emergencyd_imap_errors_total",
                                   "IMAP failures, by kind.", ["kind"], registry=r)
        self.imap_pickup_latency = Histogram("emergencyd_imap_pickup_latency_seconds",
                                             "Seconds from the IMAP server's INTERNALDATE to the durable commit.",
                                             buckets=PICKUP_LATENCY_BUCKETS, registry=r)
        self.imap_oauth2_fetches = Counter(
            "emergencyd_imap_oauth2_token_fetches_total",
            "OAuth 2.0 access tokens asked for the IMAP login ([imap] auth = \"oauth2\"), by outcome: ok, or why "
            "none came: grant, scope, client (a person must act), unreachable.", ["outcome"], registry=r)
        self.imap_oauth2_expiry = Gauge(
            "emergencyd_imap_oauth2_token_expiry_timestamp_seconds",
            "Unix time the IMAP session's current access token expires (0: none yet).", registry=r)
        self.integration_last_success = Gauge(
            "emergencyd_integration_last_success_timestamp_seconds",
            "Unix time of the last successful call to each integration (0: none since start).", ["integration"],
            registry=r)
        self.integration_failing_since = Gauge(
            "emergencyd_integration_failing_since_timestamp_seconds",
            "Unix time of the first failure since the last success, 0 while the integration works.",
            ["integration"], registry=r)
        self.ready = Gauge("emergencyd_ready_check", "1 while a readiness check passes, 0 while it fails.",
                           ["check"], registry=r)
        self.smtp_auth = Counter("emergencyd_smtp_auth_total",
                                 "SMTP AUTH attempts whose credentials were checked, by result.", ["result"],
                                 registry=r)
        self.tls_expiry = Gauge("emergencyd_tls_certificate_expiry_timestamp_seconds",
                                "Unix time the first certificate in each TLS file in use expires.",
                                ["role", "file"], registry=r)
        self.failing_since: dict[str, float] = {}
        self._spam_last: tuple[str, float] | None = None       # the last rspamd check's outcome, and when
        self._spam_failing_since: float | None = None
        self.last_page_at = 0.0
        self.reload_ok = Gauge("emergencyd_config_last_reload_successful",
                               "1 if the config in force was read without error (at start, or by the last SIGHUP); 0 "
                               "if the last SIGHUP's file was refused and the previous config keeps running.",
                               registry=r)
        self.reload_at = Gauge("emergencyd_config_last_reload_success_timestamp_seconds",
                               "Unix time the config in force was read (the start, or the last good SIGHUP).",
                               registry=r)
        self.reload_ok.set(1)
        self.reload_at.set(time.time())
        # The process's own CPU, memory, file descriptors and start time (process_*), and Python's (python_info).
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.dry_run = Gauge("emergencyd_dry_run",
                             "1 while dry_run = true: mail is taken and decided, but nothing is sent to Zendesk or "
                             "PagerDuty (an alert: a test setting carried into production pages no one).", registry=r)
        self.leader = Gauge("emergencyd_escalator_lease_held",
                            "1 while this replica holds the escalator lease: it decides, runs the steps and holds "
                            "the IMAP mailbox; 0 while another replica does (docs/deployment.md).", registry=r)
        self.info = Info("emergencyd_build", "Build information, and this replica's name ([replica] name).",
                         registry=r)
        self.info.info({"version": build_version(), "replica": replica})
        self._precreate()

    def _precreate(self) -> None:
        for relation in RelationKind:
            self.relations.labels(relation)
        for result in TRUST_RESULTS:
            self.sender_trust.labels(result)
        for severity in (*SEVERITIES, "none"):
            for window in Window:
                self.verdicts.labels(severity, window.value)
        for kind in (*NOISE_KINDS, "spam"):          # spam: rspamd's reject ([spam] rspamd_url)
            self.suppressed.labels(kind)
        for check in CheckOutcome:
            self.spam_checks.labels(check.value)
        for source in SOURCES:
            self.received.labels(source)
            self.last_ingest.labels(source)
            self.duplicates.labels(source)
        for integration in Integration:
            self.integration_last_success.labels(integration)
            self.integration_failing_since.labels(integration)
        for kind in IMAP_ERROR_KINDS:
            self.imap_errors.labels(kind)
        for outcome in TOKEN_FETCH_OUTCOMES:
            self.imap_oauth2_fetches.labels(outcome)
        for reason in REJECT_REASONS:
            self.rejected.labels(reason)
        for fallback_outcome in FallbackOutcome:
            self.fallback_alerts.labels(fallback_outcome)
        for result in AUTH_RESULTS:
            self.smtp_auth.labels(result)
        for step in STEP_ORDER:
            integration = integration_of(step)
            self.steps.labels(integration, step, StepOutcome.SUCCESS, "2xx")
            self.steps.labels(integration, step, StepOutcome.DRY_RUN, "none")
            for outcome in (StepOutcome.RETRY, StepOutcome.FAILED):
                for status_class in STATUS_CLASSES[1:]:
                    self.steps.labels(integration, step, outcome, status_class)

    # -- the escalation observer --------------------------------------------------

    def step_finished(self, integration: str, step: str, outcome: StepOutcome, status_class: str) -> None:
        self.steps.labels(integration, step, outcome, status_class).inc()
        if outcome == StepOutcome.DRY_RUN:     # nothing was sent: no sign of the integration's health either way
            return
        now = time.time()
        if outcome == StepOutcome.SUCCESS:
            self.failing_since.pop(integration, None)
            self.integration_last_success.labels(integration).set(now)
            self.integration_failing_since.labels(integration).set(0)
        elif integration not in self.failing_since:
            self.failing_since[integration] = now
            self.integration_failing_since.labels(integration).set(now)

    def checked(self, checks: dict[str, str]) -> None:
        for check, result in checks.items():
            self.ready.labels(check).set(int(result == "ok"))

    def decided(self, verdict: Verdict) -> None:
        if verdict.released:
            self.released.inc()
        if verdict.trust is not None:
            self.sender_trust.labels(verdict.trust.outcome).inc()
        if verdict.page_held:
            self.pages_held.inc()
        if verdict.stranger:
            self.strangers_ticketed.inc()
        if verdict.spam is not None and verdict.spam.spam and not verdict.suppressed:
            self.suspected_spam.inc()
        if verdict.suppressed:
            self.suppressed.labels(verdict.category.removeprefix("noise:")).inc()
        else:
            self.verdicts.labels(verdict.severity or "none", verdict.window.value).inc()

    def related(self, kind: str) -> None:
        self.relations.labels(kind).inc()

    def spam_checked(self, outcome: str) -> None:
        self.spam_checks.labels(outcome).inc()
        now = time.time()
        self._spam_last = (outcome, now)
        if outcome == "answered":
            self._spam_failing_since = None
        elif self._spam_failing_since is None:
            self._spam_failing_since = now

    def spam_check_health(self) -> str:
        """rspamd as the last checks found it, in words: "ok (...)" or since when it has not answered."""
        if self._spam_last is None:
            return "not asked yet"
        outcome, at = self._spam_last
        ago = f"{time.time() - at:.0f}s ago"
        if self._spam_failing_since is None:
            return f"ok (answered {ago})"
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self._spam_failing_since))
        return f"{outcome} since {since} (last check {ago}): mail is decided without it"

    def page_deferred(self) -> None:
        self.pages_deferred.inc()

    def fallback_alert(self, outcome: FallbackOutcome) -> None:
        self.fallback_alerts.labels(outcome).inc()

    def paged(self, seconds_since_receipt: float) -> None:
        self.page_latency.observe(max(seconds_since_receipt, 0.0))
        self.last_page_at = time.time()
        self.last_page.set(self.last_page_at)
