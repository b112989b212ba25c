"""Wiring: store, escalation, SMTP and HTTP listeners on one event loop; signals; clean shutdown."""
from __future__ import annotations

import asyncio
import logging
import signal
import ssl
import time
from dataclasses import replace

from emergencyd.daemon.config.model import DRY_RUN_KEY, Config, ConfigError, load_config
from emergencyd.daemon.directory_keeper import DirectoryKeeper
from emergencyd.daemon.ingest.imap import CONNECTED, ImapIngress
from emergencyd.daemon.ingest.oauth2_keeper import TokenKeeper, keeper_for
from emergencyd.daemon.ingest.oauth2_tokens import TokenError
from emergencyd.daemon.ingest.smtp import (
    IngestHandler,
    load_certificate,
    start_smtp,
    starttls_context,
)
from emergencyd.daemon.leadership import Leadership
from emergencyd.daemon.ops.certificates import soonest_expiry, tls_files
from emergencyd.daemon.ops.http import start_http
from emergencyd.daemon.ops.loop_lag import watch_loop_lag
from emergencyd.daemon.ops.metrics import Metrics
from emergencyd.daemon.ops.notify import SystemdNotifier
from emergencyd.daemon.ops.status import status_document
from emergencyd.daemon.ops.status_page import MESSAGES_SHOWN, render_page
from emergencyd.daemon.runner import Runner
from emergencyd.daemon.store.asynchronous import AsyncStore
from emergencyd.daemon.store.core import IngestResult
from emergencyd.escalation.cpu_pool import CpuPool
from emergencyd.escalation.directory import (
    DirectoryCopy,
    directory_line,
    with_directory,
)
from emergencyd.escalation.fallback import SmtpRelay
from emergencyd.escalation.grouping import GroupingSettings
from emergencyd.escalation.pacing import Pacer
from emergencyd.escalation.policy import Policy
from emergencyd.escalation.records import NEW, PENDING, Envelope
from emergencyd.escalation.retry import RetrySchedule
from emergencyd.escalation.steps import EscalationSettings, Escalator, classify_context

log = logging.getLogger("emergencyd")

RUNNER_STALL_SECONDS = 60.0
STATUS_INTERVAL_SECONDS = 10.0      # how often systemd's STATUS= is refreshed without a watchdog
IMAP_READY_WAIT_SECONDS = 10.0      # at most this long between the listeners being up and READY=1


def build_integrations(config: Config):
    """None for both in dry_run: nothing can be called by mistake."""
    if config.dry_run:
        return None, None
    from emergencyd.escalation.pagerduty import PagerDutyPager
    from emergencyd.escalation.zendesk import ZendeskDesk
    return ZendeskDesk(config.zendesk), PagerDutyPager(config.pagerduty)


def build_escalator(config: Config, store: AsyncStore, metrics: Metrics) -> Escalator:
    desk, pager = build_integrations(config)
    settings = escalation_settings(config)
    relay = SmtpRelay(config.fallback, helo_name=config.smtp.hostname) \
        if config.fallback.enabled and not config.dry_run else None
    cpu = CpuPool(classify_context(config.policy, settings), workers=config.escalation.cpu_workers,
                  timeout_seconds=config.escalation.cpu_timeout_seconds)
    return Escalator(store, desk, pager, settings, metrics, cpu, relay=relay)


def escalation_settings(config: Config) -> EscalationSettings:
    esc = config.escalation
    return EscalationSettings(
        dry_run=config.dry_run,
        schedule=RetrySchedule(esc.retry_initial_seconds, esc.retry_max_seconds, esc.max_attempts),
        ticket_head_start_seconds=esc.ticket_head_start_seconds,
        concurrency=esc.concurrency,
        grouping=GroupingSettings(
            incident_window_seconds=config.dedup.incident_window_seconds,
            platform_wide_categories=frozenset(config.dedup.platform_wide_categories),
            sender_limit=config.dedup.sender_limit,
            sender_window_seconds=config.dedup.sender_window_seconds),
        max_new_pages_per_minute=config.dedup.max_new_pages_per_minute,
        own_addresses=config.own_addresses,
        own_hostnames=(config.smtp.hostname,),
        fallback_after_seconds=config.fallback.after_seconds if config.fallback.enabled else None,
        # Enough to keep every worker busy while others wait on the store or DNS; few enough that a
        # new sender's mail is never queued behind a long line already handed out.
        decide_concurrency=2 * esc.cpu_workers,
    )


# A mail commit that failed (a full disk) keeps /readyz not ready until one succeeds, or for this long when no
# mail comes to try again: senders retry a 451 within minutes, and the next failure counts again.
COMMIT_FAILURE_SHOWN_SECONDS = 300.0
DRY_RUN_NOTE = "dry run: mail is taken and decided, nothing is sent to Zendesk or PagerDuty (dry_run = true)"


def _imap_tokens(config: Config, metrics: Metrics) -> TokenKeeper | None:
    try:
        return keeper_for(config.imap, metrics)
    except TokenError as exc:
        raise StartupError(f"imap.oauth2: {exc.detail}") from None


class StartupError(RuntimeError):
    """The daemon cannot start; the message says what to fix."""


class Daemon:
    def __init__(self, config: Config):
        self.config = config
        self.metrics = Metrics(replica=config.replica.name)
        self.metrics.dry_run.set(int(config.dry_run))
        self.store = AsyncStore.open(config.store)
        self.leadership = Leadership(self.store, config.replica.name, config.replica.lease_seconds, self.metrics)
        self.escalator = build_escalator(config, self.store, self.metrics)
        self.runner = Runner(self.store, self.escalator, self.metrics,
                             poll_interval=config.escalation.poll_interval_seconds,
                             max_in_flight_bytes=config.escalation.max_in_flight_bytes,
                             page_deadline_seconds=config.fallback.after_seconds if config.fallback.enabled else None,
                             may_escalate=self.leadership.held, first_mails_pace=_first_mails_pace(config))
        self.smtp_handler = IngestHandler(config.smtp, self.ingest, self.metrics)
        tokens = _imap_tokens(config, self.metrics)
        self.imap = ImapIngress(config.imap, self.ingest, self.store, self.metrics, tokens) \
            if config.imap.enabled else None
        self.notifier = SystemdNotifier()
        self._stop = asyncio.Event()
        self._smtp: asyncio.Server | None = None
        self._smtp_tls: ssl.SSLContext | None = None
        self._servers: list[asyncio.Server] = []
        self._background: list[asyncio.Task] = []
        trust = config.policy.trust
        self.directory = DirectoryKeeper(
            self.store, self.escalator.read_tenant_directory, self._put_directory_in_force, self.metrics,
            refresh_seconds=trust.directory_refresh_seconds) if trust.directory_from_zendesk and not config.dry_run \
            else None

    def _with_directory(self, policy: Policy) -> Policy:
        copy = self.directory.copy if self.directory is not None else None
        return replace(policy, trust=with_directory(policy.trust, copy))

    def _put_directory_in_force(self, copy: DirectoryCopy) -> None:
        self.escalator.policy = self._with_directory(self.config.policy)
        self._count_directory()

    def _count_directory(self) -> None:
        trust = self.escalator.policy.trust
        self.metrics.directory_entries.labels("domain").set(len(trust.tenant_domains))
        self.metrics.directory_entries.labels("address").set(len(trust.tenant_addresses))

    async def ingest(self, raw: bytes, envelope: Envelope) -> IngestResult:
        """The one durable path in: SMTP and IMAP come through here."""
        result = await self.store.ingest(raw, envelope)
        counter = self.metrics.duplicates if result.duplicate else self.metrics.received
        counter.labels(envelope.source).inc()
        self.metrics.last_ingest.labels(envelope.source).set(time.time())
        if not result.duplicate:
            self.runner.wake()
        return result

    async def readiness(self) -> dict[str, str]:
        checks = {}
        try:
            await self.store.check_writable()
            failure = self.store.commit_failure(COMMIT_FAILURE_SHOWN_SECONDS)
            checks["store"] = "ok" if failure is None else f"not writable: {failure}"
        except Exception as exc:
            checks["store"] = f"not writable: {exc}"
        if self.config.smtp.enabled:
            checks["smtp"] = "ok" if self._smtp is not None and self._smtp.is_serving() else "not listening"
        if self.imap is not None:     # a standby leaves the mailbox to the escalating replica
            checks["imap"] = self.imap.state if self.leadership.held.is_set() else "ok"
        stalled = time.time() - self.runner.last_loop_at > RUNNER_STALL_SECONDS
        checks["runner"] = "stalled" if stalled else "ok"
        if not self.config.dry_run:
            for integration in ("zendesk", "pagerduty"):
                checks[integration] = self._integration_health(integration)
        self.metrics.checked(checks)
        return checks

    async def status_page(self) -> str:
        """The page at / ([metrics] status_page): the store read on its thread, the checks as /readyz has them."""
        checks = await self.readiness()
        document = await self.store.call(status_document, self.store.sync, limit=MESSAGES_SHOWN,
                                         dry_run=self.config.dry_run)
        return render_page(document, checks, self.readiness_details(), zendesk_url=self.config.zendesk.url,
                           now=time.time())

    def readiness_details(self) -> dict[str, str]:
        """What /readyz shows beside its checks: parts the daemon works without, so never a reason for a 503."""
        details = {"escalating": "this replica" if self.leadership.held.is_set() else
                   "another replica (this one takes mail, and takes over if that one stops)"}
        if self.config.dry_run:
            details["mode"] = DRY_RUN_NOTE
        if self.escalator.policy.spam.enabled:
            details["rspamd"] = self.metrics.spam_check_health()
        return details

    def _integration_health(self, integration: str) -> str:
        since = self.metrics.failing_since.get(integration)
        if since is None or time.time() - since < self.config.metrics.integration_failing_seconds:
            return "ok"
        return (f"failing for {time.time() - since:.0f}s, since "
                f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(since))}")

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        if self.directory is not None:   # in force before any mail is decided
            await self.directory.load_kept()
        elif self.config.policy.trust.directory_from_zendesk:
            log.warning("[trust] directory_from_zendesk: Zendesk is not read in dry run; "
                        "only the config's entries count")
        self._count_directory()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        if self.config.smtp.enabled:
            try:
                self._smtp_tls = starttls_context(self.config.smtp)
            except (OSError, ssl.SSLError) as exc:
                raise StartupError(f"cannot load the SMTP certificate {self.config.smtp.tls_cert_file} and key "
                                   f"{self.config.smtp.tls_key_file}: {exc}") from None
            try:
                self._smtp = await start_smtp(self.config.smtp, self.smtp_handler, self.metrics, self._smtp_tls)
            except OSError as exc:
                raise StartupError(f"cannot listen for SMTP on {self.config.smtp.listen}: {exc.strerror}") from None
            self._servers.append(self._smtp)
        try:
            http = await start_http(self.config.metrics.listen, self.metrics, self.readiness,
                                    self.runner.read_store_gauges, self.readiness_details,
                                    self.status_page if self.config.metrics.status_page else None)
        except OSError as exc:
            for server in self._servers:
                server.close()
            raise StartupError(f"cannot listen for metrics on {self.config.metrics.listen}: {exc.strerror}") from None
        self._servers.append(http)
        await self.leadership.try_once()     # alone on a store, this replica escalates from the start
        tasks = [asyncio.create_task(self.runner.run(), name="runner")]
        # The workers start beside the listeners: READY does not wait for them, a first mail may.
        self._background = [asyncio.create_task(watch_loop_lag(self.metrics.loop_lag), name="loop-lag"),
                            asyncio.create_task(self.escalator.warm(), name="cpu-warm"),
                            asyncio.create_task(self.leadership.run(), name="leadership")]
        if self.directory is not None:
            self._background.append(asyncio.create_task(self.directory.run(), name="directory"))
        if self.imap is not None:
            # The mailbox is the escalating replica's: one replica at a time holds it.
            tasks.append(asyncio.create_task(self.leadership.while_held(self.imap.run_again, self.imap.stop),
                                             name="imap"))
            # READY waits for the first login, but not for long: an unreachable mailbox must
            # not hold up SMTP and escalation (it shows in /readyz and the STATUS= line).
            try:
                if self.leadership.held.is_set():
                    await asyncio.wait_for(self.imap.first_attempt_done.wait(), IMAP_READY_WAIT_SECONDS)
            except asyncio.TimeoutError:
                log.warning("imap not connected yet; ready without it",
                            extra={"waited_seconds": IMAP_READY_WAIT_SECONDS})
        log.info("emergencyd ready", extra={
            "smtp": _bound(self._smtp) if self._smtp else "off", "metrics": _bound(http),
            "imap": self.config.imap.account if self.imap else "off", "dry_run": self.config.dry_run,
            "store": self.config.store.location})
        self._log_tenant_directory()
        self.observe_certificates()
        await self.readiness()   # emergencyd_ready_check has its series from the first scrape
        self.notifier.send(READY=1, STATUS=await self._status_line())
        watchdog = asyncio.create_task(self._report_to_systemd(), name="watchdog")
        await self._stop.wait()
        watchdog.cancel()
        self.notifier.send(STOPPING=1, STATUS="stopping: finishing the steps in flight")
        await self._shutdown(tasks)

    async def _report_to_systemd(self) -> None:
        """WATCHDOG=1 only while the event loop, the runner and the store thread all make progress."""
        interval = self.notifier.watchdog_seconds / 2 if self.notifier.watchdog_seconds else STATUS_INTERVAL_SECONDS
        while True:
            await asyncio.sleep(interval)
            await self.readiness()   # keeps emergencyd_ready_check current between scrapes of /readyz
            self.observe_certificates()
            problem = await self._liveness_problem(timeout=interval)
            if problem:
                log.error("not petting the systemd watchdog", extra={"problem": problem})
                continue
            fields: dict[str, str | int] = {"STATUS": await self._status_line()}
            if self.notifier.watchdog_seconds:
                fields["WATCHDOG"] = 1
            self.notifier.send(**fields)

    def observe_certificates(self) -> None:
        for role, path in tls_files(self.config).items():
            expiry = soonest_expiry(path)
            if expiry is not None:
                self.metrics.tls_expiry.labels(role, str(path)).set(expiry)

    async def _liveness_problem(self, *, timeout: float) -> str | None:
        stall_after = max(RUNNER_STALL_SECONDS, 3 * self.config.escalation.poll_interval_seconds)
        if time.time() - self.runner.last_loop_at > stall_after:
            return "the escalation runner has not looped"
        try:
            await asyncio.wait_for(self.store.counts_by_state(), timeout)
        except asyncio.TimeoutError:
            return "the store thread did not answer"
        except Exception as exc:
            return f"the store failed: {exc}"
        return None

    async def _status_line(self) -> str:
        counts = await self.store.counts_by_state()
        last_page = self.metrics.last_page_at
        parts = [f"{counts.get(NEW, 0) + counts.get(PENDING, 0)} escalations pending",
                 "last page " + (time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(last_page)) if last_page
                                 else "none since start")]
        if self.imap is not None:
            parts.append("imap " + ("connected" if self.imap.state == CONNECTED else "not connected"))
        if self.config.dry_run:
            parts.insert(0, "DRY RUN: nothing is sent")
        return "; ".join(parts)

    def reload(self) -> None:
        """SIGHUP: take the new policy and recipients; a bad file keeps the old ones running."""
        try:
            new = load_config(self.config.source)
        except ConfigError as exc:
            log.error("reload refused; still running the previous config", extra={"error": str(exc)})
            self.metrics.reload_ok.set(0)
            return
        if self._smtp_tls is not None:   # a renewed certificate, for the next STARTTLS
            try:
                load_certificate(self._smtp_tls, self.config.smtp)
            except (OSError, ssl.SSLError) as exc:
                log.error("reload kept the previous SMTP certificate", extra={"error": str(exc)})
        self.escalator.policy = self._with_directory(new.policy)
        self._count_directory()
        self.smtp_handler.recipients = frozenset(new.smtp.recipients)
        needs_restart = [name for name in (DRY_RUN_KEY, "store", "zendesk", "pagerduty", "escalation", "dedup",
                                           "metrics", "imap", "fallback")
                         if getattr(new, name) != getattr(self.config, name)]
        smtp_changed = replace(new.smtp, recipients=()) != replace(self.config.smtp, recipients=())
        needs_restart += ["smtp"] if smtp_changed else []
        self.config = replace(self.config, policy=new.policy, smtp=replace(self.config.smtp,
                                                                            recipients=new.smtp.recipients))
        self.metrics.reload_ok.set(1)
        self.metrics.reload_at.set(time.time())
        log.info("reloaded policy and recipients", extra={
            "rules": len(new.policy.rules), "recipients": len(new.smtp.recipients),
            "changes_needing_restart": ",".join(needs_restart) or "none"})
        self._log_tenant_directory()

    def _log_tenant_directory(self) -> None:
        trust = self.config.policy.trust
        copy = self.directory.copy if self.directory is not None else None
        (log.info if trust.knows_tenants or copy else log.warning)(
            "tenant directory", extra={"directory": directory_line(trust, copy)})

    async def _shutdown(self, tasks: list[asyncio.Task]) -> None:
        log.info("shutting down")
        # Listeners stay open while draining: new SMTP connections are answered 421 4.3.2.
        self.smtp_handler.accepting = False
        deadline_seconds = self.config.escalation.shutdown_deadline_seconds
        deadline = time.monotonic() + deadline_seconds
        if self.imap is not None:
            await self.imap.stop()
        await self.runner.stop(deadline_seconds)
        await self.leadership.give_up()
        # What is still running past the deadline is cut: uncommitted work is redone at the next start.
        await asyncio.wait(tasks, timeout=max(deadline - time.monotonic(), 0.1))
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        for server in self._servers:
            server.close()
        self.escalator.close()
        self.store.close()
        self.notifier.close()
        log.info("stopped")


def _first_mails_pace(config: Config) -> Pacer | None:
    per_second = config.escalation.first_mails_per_second_while_mail_arrives
    if not per_second:
        return None
    return Pacer(per_second * 60, burst=config.escalation.first_mails_at_once_while_mail_arrives)


def _bound(server: asyncio.Server) -> str:
    host, port = server.sockets[0].getsockname()[:2]
    return f"{host}:{port}"


def run_daemon(config: Config) -> None:
    asyncio.run(Daemon(config).run())
