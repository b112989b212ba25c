"""A soak run: the live daemon takes seeded mail over real SMTP while it is killed -9 and restarted.

Used by tests/e2e/test_soak.py (short, in CI) and bench/soak.py (long). Several client
threads behave as a sending MTA does: a transaction that did not end in 250 (the
connection dropped by the kill, refused while the daemon restarts, a 4xx) is sent
again later, so the daemon may store it twice and must deduplicate it. Some mail is
delivered a second time after its 250. Meanwhile a seeded schedule kills the daemon
at random moments. Once everything is acknowledged and the daemon has settled, the
store and the fakes are checked (tests/soak_checks.py): nothing lost, nothing twice.

What is seeded: the mail and the gaps between kills. Where a kill lands relative to
each transaction and step depends on timing, which is the point.
"""
from __future__ import annotations

import json
import random
import smtplib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.harness import RECIPIENT, DaemonProcess, live_env, run_cli, write_config
from tests.soak_checks import check
from tests.soak_mail import Mail, plan

# Fast Zendesk pacing; no storm folding or new-page cap, so that every incident sent
# must be exactly one PagerDuty incident (both are tested in test_dedup.py).
DEDUP = "[dedup]\nsender_limit = 100000\nmax_new_pages_per_minute = 100000\n"
FAST_ZENDESK = "requests_per_minute = 60000\n"
RESEND_AFTER = (0.2, 1.0)         # seconds before an unacknowledged mail is tried again
SECOND_DELIVERY_AFTER = (0.5, 3.0)
ACKED, RETRY, REFUSED = "250", "retry", "refused"     # how a transaction ended
REPLICA_LEASE_SECONDS = 2         # replicas: a killed escalating one is replaced within this


@dataclass(frozen=True)
class SoakSettings:
    seed: int
    messages: int = 500
    clients: int = 4                 # concurrent SMTP client threads
    rate: float = 25.0               # first deliveries a second, all clients together
    second_deliveries: float = 0.1   # share of acknowledged mail delivered once more
    kill_every: tuple[float, float] = (2.0, 6.0)   # seconds between kills, uniform
    kills_while_sending: int | None = None         # at most this many (None: as many as fit)
    kills_while_draining: int = 1                  # more, once every mail is acknowledged
    settle_timeout: float = 300.0


@dataclass
class SoakResult:
    settings: SoakSettings
    sent: int = 0             # SMTP transactions attempted
    acknowledged: int = 0     # ... answered 250
    resent: int = 0           # transactions that did not end in 250 and were tried again
    second_deliveries: int = 0
    kills: int = 0
    kills_draining: int = 0   # of which after the last 250
    refused: list[str] = field(default_factory=list)   # 5xx answers: nothing valid should get one
    wall_seconds: float = 0.0
    drain_seconds: float = 0.0    # from the last 250 to settled
    figures: dict = field(default_factory=dict)        # from the checks: tickets, incidents, ...
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class Outbox:
    """What the sending MTA still has to deliver, each due at its time; a reply waits for its parent's 250."""

    def __init__(self, mails: list[Mail], settings: SoakSettings, rng: random.Random):
        start = time.monotonic()
        # (due, sequence, mail, is a second delivery): the sequence keeps plan order among equals.
        self._queue = [(start + n / settings.rate, n, mail, False) for n, mail in enumerate(mails)]
        self._seq = len(mails)
        self._rng = rng
        self._settings = settings
        self._lock = threading.Condition()
        self._in_flight = 0
        self.acked: set[str] = set()
        self.refused: set[str] = set()      # 5xx: never sent again, nor are replies to them
        self.last_ack = start
        self.aborted = threading.Event()     # the daemon did not come back: stop sending

    def take(self) -> tuple[Mail, bool] | None:
        """The next delivery that is due (mail, is_second); None once all are done."""
        with self._lock:
            while True:
                if (not self._queue and not self._in_flight) or self.aborted.is_set():
                    return None
                self._drop_replies_to_refused()
                now = time.monotonic()
                ready = [item for item in self._queue if item[0] <= now
                         and (item[2].parent is None or item[2].parent in self.acked)]
                if ready:
                    item = min(ready)
                    self._queue.remove(item)
                    self._in_flight += 1
                    return item[2], item[3]
                self._lock.wait(0.05)

    def done(self, mail: Mail, second: bool, outcome: str) -> None:
        with self._lock:
            self._in_flight -= 1
            now = time.monotonic()
            if outcome == RETRY:
                self._push(now + self._rng.uniform(*RESEND_AFTER), mail, second)
            elif outcome == REFUSED:
                self.refused.add(mail.key)
            elif outcome == ACKED:
                self.last_ack = now
                if not second:
                    self.acked.add(mail.key)
                    if self._rng.random() < self._settings.second_deliveries:
                        self._push(now + self._rng.uniform(*SECOND_DELIVERY_AFTER), mail, True)
            self._lock.notify_all()

    def _drop_replies_to_refused(self) -> None:
        while orphans := [item for item in self._queue if item[2].parent in self.refused]:
            for item in orphans:
                self._queue.remove(item)
                self.refused.add(item[2].key)

    def _push(self, due: float, mail: Mail, second: bool) -> None:
        self._seq += 1
        self._queue.append((due, self._seq, mail, second))


class Soak:
    def __init__(self, settings: SoakSettings, daemons: list[DaemonProcess], zendesk, pagerduty):
        self.settings = settings
        self.daemons = daemons          # replicas on one store; one, on SQLite
        self.daemon = daemons[0]        # the one asked for status (any would do: they share the store)
        self.zendesk = zendesk
        self.pagerduty = pagerduty
        self.mails = plan(settings.seed, settings.messages)
        self.result = SoakResult(settings)
        self._outbox = Outbox(self.mails, settings, random.Random(settings.seed * 7919 + 1))
        self._sending_done = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def run(self) -> SoakResult:
        began = time.monotonic()
        killer = threading.Thread(target=self._killer, name="soak-killer", daemon=True)
        clients = [threading.Thread(target=self._client, args=(n,), name=f"soak-smtp-{n}", daemon=True)
                   for n in range(self.settings.clients)]
        for thread in (killer, *clients):
            thread.start()
        for thread in clients:
            thread.join()
        self._sending_done.set()
        killer.join()
        doc = self._settle()
        self.result.wall_seconds = round(time.monotonic() - began, 1)
        self.result.drain_seconds = round(time.monotonic() - self._outbox.last_ack, 1)
        figures, problems = check(self.mails, self._outbox.acked, doc, self.zendesk, self.pagerduty)
        self.result.figures = figures
        self.result.problems += [f"SMTP refused: {r}" for r in self.result.refused] + problems
        return self.result

    # --- the sending MTA -------------------------------------------------------------

    def _client(self, number: int) -> None:
        client: smtplib.SMTP | None = None
        mx = number % len(self.daemons)   # the MX host this client uses; after a failure, the next one
        while (item := self._outbox.take()) is not None:
            mail, second = item
            client, outcome = self._deliver(client, mail, self.daemons[mx])
            if outcome == RETRY:
                mx = (mx + 1) % len(self.daemons)
            with self._lock:
                self.result.sent += 1
                self.result.acknowledged += outcome == ACKED
                self.result.resent += outcome == RETRY
                self.result.second_deliveries += outcome == ACKED and second
            self._outbox.done(mail, second, outcome)
        if client is not None:
            _quit(client)

    def _deliver(self, client: smtplib.SMTP | None, mail: Mail,
                 daemon: DaemonProcess) -> tuple[smtplib.SMTP | None, str]:
        """One transaction, on the open connection or a new one; the connection is dropped on any error.

        A 5xx is final, as for a real MTA (it would bounce the mail): recorded, never sent again.
        """
        outcome = RETRY
        try:
            if client is None:
                client = smtplib.SMTP("127.0.0.1", daemon.smtp_port, local_hostname="mta.soak.localhost",
                                      timeout=10)
            client.sendmail(mail.mail_from, [RECIPIENT], mail.raw)
            return client, ACKED
        except smtplib.SMTPResponseException as exc:
            if exc.smtp_code >= 500:
                outcome = self._refused(f"{mail.key}: {exc.smtp_code} {exc.smtp_error!r}")
        except smtplib.SMTPRecipientsRefused as exc:
            if next(iter(exc.recipients.values()))[0] >= 500:
                outcome = self._refused(f"{mail.key}: {exc.recipients}")
        except (OSError, smtplib.SMTPException):
            pass      # dropped, refused or reset by a kill: sent again later
        if client is not None:
            _close(client)
        return None, outcome

    def _refused(self, what: str) -> str:
        with self._lock:
            self.result.refused.append(what)
        return REFUSED

    # --- the killer -----------------------------------------------------------------

    def _killer(self) -> None:
        try:
            self._kill_loop()
        except Exception as exc:     # reported as a problem; the run stops sending
            self.result.problems.append(f"the daemon did not come back after a kill: {exc}"[:5000])
            self._outbox.aborted.set()

    def _kill_loop(self) -> None:
        rng = random.Random(self.settings.seed * 104729 + 7)
        while_sending, while_draining = 0, 0
        while while_draining < self.settings.kills_while_draining:
            gap = rng.uniform(*self.settings.kill_every)
            sending = not self._sending_done.is_set()
            cap = self.settings.kills_while_sending
            if sending and cap is not None and while_sending >= cap:
                self._sending_done.wait()
                continue
            if self._sending_done.wait(gap) if sending else self._stop.wait(gap):
                continue      # sending ended during the gap: draw the next gap for the drain
            victim = rng.choice(self.daemons)      # with replicas, one of them, the others running on
            victim.kill9()
            victim.start(timeout=60)
            with self._lock:
                self.result.kills += 1
                self.result.kills_draining += not sending
            if sending:
                while_sending += 1
            else:
                while_draining += 1

    # --- the end ----------------------------------------------------------------------

    def _settle(self) -> dict:
        """The full status once every acknowledged mail is stored and none is new or pending."""
        deadline = time.monotonic() + self.settings.settle_timeout
        while True:
            counts = status(self.daemon, limit=0)["counts"]
            unsettled = counts.get("new", 0) + counts.get("pending", 0)
            settled = sum(counts.values()) >= len(self._outbox.acked) and not unsettled
            if settled or self._outbox.aborted.is_set() or time.monotonic() > deadline:
                return status(self.daemon, limit=10 * len(self.mails) + 100)
            time.sleep(0.5)


def status(daemon: DaemonProcess, *, limit: int) -> dict:
    return json.loads(run_cli(daemon.config, "status", "--json", "--limit", str(limit), env=daemon.env).stdout)


def start_live_daemon(workdir: Path, zendesk, pagerduty, ca_file: Path, *, replica: str | None = None,
                      postgres: tuple[str, str] | None = None) -> DaemonProcess:
    """A live daemon on SQLite, or replica `replica` on the PostgreSQL database (dsn, password) `postgres`."""
    workdir.mkdir(parents=True, exist_ok=True)
    store, env, extra = "", live_env(), DEDUP
    if postgres is not None:
        store = f'backend = "postgresql"\ndsn = "{postgres[0]}"\n'
        env["EMERGENCYD_STORE_PASSWORD"] = postgres[1]
        extra += f'[replica]\nname = "{replica}"\nlease_seconds = {REPLICA_LEASE_SECONDS}\n'
    config = write_config(workdir, dry_run=False, zendesk_url=zendesk.url, pagerduty_url=pagerduty.url,
                          ca_file=ca_file, policy=True, extra=extra, extra_zendesk=FAST_ZENDESK,
                          busy_timeout_ms=5000, store=store)
    daemon = DaemonProcess(config=config, env=env, log_path=workdir / "daemon.log")
    return daemon.start(timeout=60)


def run_soak(settings: SoakSettings, workdir: Path, zendesk, pagerduty, ca_file: Path, *,
             postgres: tuple[str, str] | None = None, replicas: int = 1) -> SoakResult:
    """One run against fresh fakes, on SQLite or on `replicas` replicas of the PostgreSQL database (dsn,
    password) `postgres`; every daemon is stopped whatever happens."""
    daemons: list[DaemonProcess] = []
    try:
        if postgres is None:
            daemons.append(start_live_daemon(workdir, zendesk, pagerduty, ca_file))
        else:
            for n in range(replicas):
                name = f"replica-{n}"
                daemons.append(start_live_daemon(workdir / name, zendesk, pagerduty, ca_file, replica=name,
                                                 postgres=postgres))
        return Soak(settings, daemons, zendesk, pagerduty).run()
    finally:
        for daemon in daemons:
            if daemon.proc is not None and daemon.proc.poll() is None:
                daemon.proc.kill()
                daemon.proc.wait(10)


def _quit(client: smtplib.SMTP) -> None:
    try:
        client.quit()
    except (OSError, smtplib.SMTPException):
        _close(client)


def _close(client: smtplib.SMTP) -> None:
    try:
        client.close()
    except OSError:
        pass
