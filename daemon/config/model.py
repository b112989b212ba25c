"""config.toml -> frozen dataclasses, validated with errors that name the key.

Secrets never live in config.toml itself: they come from the environment or from
`*_file` keys (systemd credentials), and are wrapped in `Secret` so that no repr,
log line or traceback can show them.

Typed reading of keys (and ConfigError, Secret, HostPort) lives in daemon/config/reader.py, the reading of
each section in daemon/config/sections.py, daemon/config/fallback.py and daemon/ingest/smtp_settings.py.
"""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emergencyd.daemon.config.fallback import FallbackConfig, read_fallback
from emergencyd.daemon.config.reader import ConfigError, ConfigReader, HostPort, Secret
from emergencyd.daemon.config.store import StoreBackend, describe_dsn
from emergencyd.daemon.ingest.oauth2_settings import ImapAuth, OAuth2Config
from emergencyd.daemon.ingest.smtp_settings import ProxyConfig, SmtpAuthConfig
from emergencyd.escalation.policy import Policy
from emergencyd.escalation.settings import PagerDutyConfig, ZendeskConfig

DRY_RUN_KEY = "dry_run"     # the top-level key: take and decide mail, send nothing


@dataclass(frozen=True)
class SmtpConfig:
    enabled: bool
    listen: HostPort
    recipients: tuple[str, ...]
    max_message_bytes: int
    max_line_bytes: int                 # a DATA line with its CRLF; longer: 554 5.6.0, nothing kept
    hostname: str
    # STARTTLS with this certificate chain and key, when both are set.
    tls_cert_file: Path | None
    tls_key_file: Path | None
    require_starttls: bool
    # Defences (a refused client gets a 4xx and retries: nothing is lost).
    max_connections: int
    max_connections_per_ip: int
    max_recipients: int
    messages_per_ip_per_minute: int          # 0: no limit (Postfix's default too)
    messages_per_sender_per_minute: int      # 0: no limit
    limit_exempt_networks: tuple[str, ...]   # per-address limits skip these (the relay in front)
    command_timeout_seconds: float      # idle between commands (and DATA lines) before 421 4.4.2
    session_max_seconds: float          # a whole connection, so a slow client cannot hold a slot
    auth: SmtpAuthConfig                # AUTH for a relay in front (daemon/ingest/smtp_settings.py)
    proxy: ProxyConfig                  # the PROXY protocol behind a load balancer


@dataclass(frozen=True)
class ImapConfig:
    enabled: bool
    host: str
    port: int
    username: str
    password: Secret | None
    mailbox: str
    processed_mailbox: str
    tls: bool
    ca_file: Path | None
    idle: bool
    # RFC 2177: servers may drop an IDLE after 30 min, and NAT boxes forget quiet
    # connections sooner; renewing every few minutes also proves the link is alive.
    idle_renew_seconds: float
    poll_interval_seconds: float
    command_timeout_seconds: float
    reconnect_initial_seconds: float
    reconnect_max_seconds: float
    # After a refused login, wait this long (doubling up to an hour): providers lock an
    # account that keeps failing, and a wrong password will not fix itself in seconds.
    login_retry_seconds: float
    batch_messages: int
    max_message_bytes: int
    auth: ImapAuth = ImapAuth.PASSWORD
    oauth2: OAuth2Config | None = None       # with auth = "oauth2"

    @property
    def account(self) -> str:
        """Names the mailbox in the store and in logs (never the password)."""
        return f"{self.username}@{self.host}:{self.port}/{self.mailbox}"


@dataclass(frozen=True)
class StoreConfig:
    path: Path                   # the SQLite file
    busy_timeout_ms: int         # how long a write waits for another writer, or for a connection
    backend: StoreBackend = StoreBackend.SQLITE
    dsn: str = ""                # PostgreSQL's, in libpq's form, without a password
    password: Secret | None = None

    @property
    def location(self) -> str:
        """The store for messages: the SQLite file, or the database without its password."""
        if self.backend is StoreBackend.POSTGRESQL:
            return describe_dsn(self.dsn)
        return str(self.path)


@dataclass(frozen=True)
class ReplicaConfig:
    name: str                    # unique among the replicas sharing a store, stable across restarts
    lease_seconds: float         # how long the escalator lease lasts without renewal: the take-over time


@dataclass(frozen=True)
class EscalationConfig:
    # How long the page may wait for the ticket so that it can carry the
    # ticket's link. Past this, or on any Zendesk error, it pages without it.
    ticket_head_start_seconds: float
    retry_initial_seconds: float
    retry_max_seconds: float
    max_attempts: int
    concurrency: int
    poll_interval_seconds: float
    max_in_flight_bytes: int
    # SIGTERM: the steps in flight get this long to finish and commit; the rest resume at next start.
    shutdown_deadline_seconds: float
    # Parsing and classifying run in this many worker processes, never on the event loop;
    # a worker still busy with one mail past the timeout is replaced.
    cpu_workers: int = 2
    cpu_timeout_seconds: float = 60.0
    # While mail is arriving, new senders' mail starts being decided at most this fast, after a burst
    # of this many (daemon/runner.py); 0: no limit.
    first_mails_per_second_while_mail_arrives: float = 50.0
    first_mails_at_once_while_mail_arrives: int = 20


@dataclass(frozen=True)
class DedupConfig:
    incident_window_seconds: float
    platform_wide_categories: tuple[str, ...]
    sender_limit: int
    sender_window_seconds: float
    max_new_pages_per_minute: int


@dataclass(frozen=True)
class MetricsConfig:
    listen: HostPort
    # /readyz fails once an integration has failed, with no success since, for this long.
    integration_failing_seconds: float
    # The read-only status page at /: it shows tenants' subjects and addresses, so off unless asked for.
    status_page: bool = False


@dataclass(frozen=True)
class Config:
    source: Path
    dry_run: bool
    smtp: SmtpConfig
    imap: ImapConfig
    store: StoreConfig
    replica: ReplicaConfig
    zendesk: ZendeskConfig
    pagerduty: PagerDutyConfig
    escalation: EscalationConfig
    dedup: DedupConfig
    metrics: MetricsConfig
    policy: Policy
    fallback: FallbackConfig

    @property
    def own_addresses(self) -> tuple[str, ...]:
        """Our own addresses: mail from one of them is a loop. The daemon and `classify` both decide with these."""
        imap_user = (self.imap.username.lower(),) if self.imap.enabled and "@" in self.imap.username else ()
        # The fallback alert's sender: a copy that loops back to the emergency address is noise.
        fallback = (self.fallback.from_address.lower(),) if self.fallback.enabled else ()
        return self.smtp.recipients + imap_user + fallback


def load_config(path: str | os.PathLike, environ: dict[str, str] | None = None, *, for_tools: bool = False) -> Config:
    """Read and validate a config file. Raises ConfigError naming the key.

    for_tools: for the commands that read the store and the policy (status, show, classify, retry...), which
    must work with the daemon stopped and without its credentials: a credential that cannot be read is absent,
    and dry_run = false does not demand them."""
    # Imported here: config_sections imports this module's dataclasses.
    from emergencyd.daemon.config import sections
    path = Path(path)
    environ = dict(os.environ if environ is None else environ)
    data = _read_toml(path)
    if not data:
        raise ConfigError(f"{path}: empty: copy the shipped config.toml and edit it")
    reader = ConfigReader(data, base_dir=path.resolve().parent, environ=environ, lenient_secrets=for_tools)
    config = Config(
        source=path.resolve(),
        dry_run=reader.boolean(DRY_RUN_KEY, True),
        smtp=sections.read_smtp(reader),
        imap=sections.read_imap(reader),
        store=sections.read_store(reader),
        replica=sections.read_replica(reader),
        zendesk=sections.read_zendesk(reader),
        pagerduty=sections.read_pagerduty(reader),
        escalation=sections.read_escalation(reader),
        dedup=sections.read_dedup(reader),
        metrics=sections.read_metrics(reader),
        policy=sections.read_policy(data.get("policy"), data.get("trust"), data.get("spam")),
        fallback=read_fallback(reader),
    )
    # A typo in a key must not silently fall back to a default. [policy], [trust] and [spam] check their own.
    unread = reader.unread_keys(checked_elsewhere=frozenset({"policy", "trust", "spam"}))
    if unread:
        raise ConfigError(f"{unread[0]}: unknown key")
    if not (config.smtp.enabled or config.imap.enabled):
        raise ConfigError("smtp.enabled and imap.enabled are both false: no way for mail to come in")
    if config.smtp.enabled and not config.smtp.recipients:
        raise ConfigError("smtp.recipients: empty: mail to the emergency address would be refused (550)")
    _check_listeners(config)
    if not config.dry_run and not for_tools:
        _require_credentials(config)
    return config


def _check_listeners(config: Config) -> None:
    """SMTP and the metrics cannot share a port: the daemon would stop at start with 'address in use'."""
    smtp, metrics = config.smtp.listen, config.metrics.listen
    if config.smtp.enabled and smtp.port and smtp.port == metrics.port and \
            (smtp.host == metrics.host or "0.0.0.0" in (smtp.host, metrics.host) or "::" in (smtp.host, metrics.host)):
        raise ConfigError(f"metrics.listen: {metrics} clashes with smtp.listen {smtp}: give each its own port")


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); "
                          "save it as UTF-8") from None
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None


def _require_credentials(config: Config) -> None:
    """With dry_run off, a missing credential must stop the daemon, never page silently into nothing."""
    missing = []
    if config.zendesk.token is None:
        missing.append("Zendesk token (EMERGENCYD_ZENDESK_TOKEN or zendesk.token_file)")
    if not config.zendesk.email:
        missing.append("zendesk.email")
    if config.pagerduty.routing_key is None:
        missing.append("PagerDuty routing key (EMERGENCYD_PAGERDUTY_ROUTING_KEY or pagerduty.routing_key_file)")
    if config.pagerduty.api_token is not None and not config.pagerduty.from_email:
        missing.append("pagerduty.from_email (needed with a PagerDuty REST API token)")
    if config.smtp.enabled and not config.smtp.recipients:
        missing.append("smtp.recipients")
    if missing:
        raise ConfigError("dry_run = false but missing: " + "; ".join(missing))

