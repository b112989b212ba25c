"""config.toml -> frozen dataclasses, validated with errors that name the key.

Secrets never live in config.toml itself: they come from the environment or from
`*_file` keys (systemd credentials), and are wrapped in `Secret` so that no repr,
log line or traceback can show them.
"""
from __future__ import annotations

import ipaddress
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfoNotFoundError

from daemon.config_fallback import FALLBACK_KEYS, FallbackConfig, read_fallback
from escalation.policy import Policy
from escalation.policy_config import PolicyError, parse_policy

if TYPE_CHECKING:
    from daemon.smtp_settings import ProxyConfig, SmtpAuthConfig


class ConfigError(ValueError):
    """A config problem, phrased for the operator: which key, what is wrong."""


@dataclass(frozen=True)
class Secret:
    value: str = field(repr=False)

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


@dataclass(frozen=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


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
    auth: SmtpAuthConfig                # AUTH for a relay in front (daemon/smtp_settings.py)
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

    @property
    def account(self) -> str:
        """Names the mailbox in the store and in logs (never the password)."""
        return f"{self.username}@{self.host}:{self.port}/{self.mailbox}"


@dataclass(frozen=True)
class StoreConfig:
    path: Path
    busy_timeout_ms: int


@dataclass(frozen=True)
class ZendeskConfig:
    url: str
    email: str
    ca_file: Path | None
    token: Secret | None
    timeout_seconds: float
    requests_per_minute: int

    @property
    def agent_url_base(self) -> str:
        return self.url.rstrip("/") + "/agent/tickets/"


@dataclass(frozen=True)
class PagerDutyConfig:
    events_url: str
    api_url: str
    from_email: str
    ca_file: Path | None
    routing_key: Secret | None
    api_token: Secret | None
    timeout_seconds: float


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


@dataclass(frozen=True)
class Config:
    source: Path
    dry_run: bool
    smtp: SmtpConfig
    imap: ImapConfig
    store: StoreConfig
    zendesk: ZendeskConfig
    pagerduty: PagerDutyConfig
    escalation: EscalationConfig
    dedup: DedupConfig
    metrics: MetricsConfig
    policy: Policy
    fallback: FallbackConfig


def load_config(path: str | os.PathLike, environ: dict[str, str] | None = None) -> Config:
    """Read and validate a config file. Raises ConfigError naming the key."""
    path = Path(path)
    environ = dict(os.environ if environ is None else environ)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    reader = _Reader(data, base_dir=path.resolve().parent, environ=environ)
    config = Config(
        source=path.resolve(),
        dry_run=reader.boolean("dry_run", True),
        smtp=_smtp(reader),
        imap=_imap(reader),
        store=_store(reader),
        zendesk=_zendesk(reader),
        pagerduty=_pagerduty(reader),
        escalation=_escalation(reader),
        dedup=_dedup(reader),
        metrics=MetricsConfig(
            listen=reader.host_port("metrics.listen", "127.0.0.1:9464"),
            integration_failing_seconds=reader.number("metrics.integration_failing_seconds", 300.0, minimum=1.0)),
        policy=_policy(data.get("policy"), data.get("trust")),
        fallback=read_fallback(reader),
    )
    reader.reject_unknown_keys()
    if not (config.smtp.enabled or config.imap.enabled):
        raise ConfigError("smtp.enabled and imap.enabled are both false: no way for mail to come in")
    if not config.dry_run:
        _require_credentials(config)
    return config


def _smtp(r: _Reader) -> SmtpConfig:
    recipients = r.string_list("smtp.recipients", [])
    for addr in recipients:
        if "@" not in addr or addr.startswith("@") or addr.endswith("@"):
            raise ConfigError(f"smtp.recipients: {addr!r} is not an email address")
    cert, key = r.optional_path("smtp.tls_cert_file"), r.optional_path("smtp.tls_key_file")
    if (cert is None) != (key is None):
        raise ConfigError("smtp.tls_cert_file and smtp.tls_key_file: set both for STARTTLS, or neither")
    require = r.boolean("smtp.require_starttls", False)
    if require and cert is None:
        raise ConfigError("smtp.require_starttls: needs smtp.tls_cert_file and smtp.tls_key_file")
    from daemon.smtp_settings import read_auth, read_proxy   # it imports this module
    listen = r.host_port("smtp.listen", "127.0.0.1:2525")
    return SmtpConfig(
        enabled=r.boolean("smtp.enabled", True),
        listen=listen,
        recipients=tuple(a.strip().lower() for a in recipients),
        max_message_bytes=r.integer("smtp.max_message_bytes", 25 * 1024 * 1024, minimum=1024),
        # RFC 5321's 1,000 octets is what a sender must keep to; real mail (bounces quoting HTML, unwrapped
        # base64) exceeds it, and refusing it would bounce a tenant's emergency. Postfix accepts such lines too.
        max_line_bytes=r.integer("smtp.max_line_bytes", 64 * 1024, minimum=1001),
        hostname=r.string("smtp.hostname", "emergencyd"),
        tls_cert_file=cert, tls_key_file=key,
        require_starttls=require,
        max_connections=r.integer("smtp.max_connections", 100, minimum=1),
        max_connections_per_ip=r.integer("smtp.max_connections_per_ip", 10, minimum=1),
        max_recipients=r.integer("smtp.max_recipients", 100, minimum=1),
        messages_per_ip_per_minute=r.integer("smtp.messages_per_ip_per_minute", 0, minimum=0),
        messages_per_sender_per_minute=r.integer("smtp.messages_per_sender_per_minute", 0, minimum=0),
        limit_exempt_networks=_networks(r, "smtp.limit_exempt_networks", ["127.0.0.0/8", "::1/128"]),
        command_timeout_seconds=r.number("smtp.command_timeout_seconds", 300.0, minimum=0.1),
        session_max_seconds=r.number("smtp.session_max_seconds", 900.0, minimum=0.1),
        auth=read_auth(r, tls=cert is not None, listen=listen),
        proxy=read_proxy(r),
    )


def _networks(r: _Reader, key: str, default: list[str]) -> tuple[str, ...]:
    values = r.string_list(key, default)
    for value in values:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ConfigError(f"{key}: {value!r} is not an address or network") from None
    return tuple(values)


def _is_loopback(host: str) -> bool:
    """An address on this machine: a name that merely starts with "127." is not one."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _imap(r: _Reader) -> ImapConfig:
    enabled = r.boolean("imap.enabled", False)
    tls = r.boolean("imap.tls", True)
    host = r.string("imap.host", "")
    if enabled and not host:
        raise ConfigError("imap.host: required when imap.enabled = true")
    if enabled and not tls and not _is_loopback(host):
        raise ConfigError(f"imap.tls: false is only allowed for a loopback host, not {host!r}: "
                          "the password and tenants' mail would cross the network in clear")
    mailbox, processed = r.string("imap.mailbox", "INBOX"), r.string("imap.processed_mailbox", "Processed")
    if enabled and (not processed or processed == mailbox):
        raise ConfigError("imap.processed_mailbox: must name a mailbox other than imap.mailbox; "
                          "handled mail is moved there")
    username = r.string("imap.username", "")
    password = r.secret("imap.password_file", "EMERGENCYD_IMAP_PASSWORD")
    if enabled and not (username and password):
        raise ConfigError("imap: username and a password (EMERGENCYD_IMAP_PASSWORD or imap.password_file) "
                          "are required when imap.enabled = true")
    initial = r.number("imap.reconnect_initial_seconds", 1.0, minimum=0.01)
    return ImapConfig(
        enabled=enabled, host=host, port=r.integer("imap.port", 993 if tls else 143, minimum=1),
        username=username, password=password,
        mailbox=mailbox, processed_mailbox=processed,
        tls=tls, ca_file=r.optional_path("imap.ca_file"),
        idle=r.boolean("imap.idle", True),
        idle_renew_seconds=r.number("imap.idle_renew_seconds", 300.0, minimum=1.0),
        poll_interval_seconds=r.number("imap.poll_interval_seconds", 30.0, minimum=0.1),
        command_timeout_seconds=r.number("imap.command_timeout_seconds", 30.0, minimum=0.1),
        reconnect_initial_seconds=initial,
        reconnect_max_seconds=r.number("imap.reconnect_max_seconds", 120.0, minimum=initial),
        login_retry_seconds=r.number("imap.login_retry_seconds", 300.0, minimum=0.1),
        batch_messages=r.integer("imap.batch_messages", 50, minimum=1),
        max_message_bytes=r.integer("imap.max_message_bytes", 25 * 1024 * 1024, minimum=1024),
    )


def _store(r: _Reader) -> StoreConfig:
    return StoreConfig(
        path=r.path("store.path", "var/emergencyd.sqlite3"),
        busy_timeout_ms=r.integer("store.busy_timeout_ms", 5000, minimum=0),
    )


def _zendesk(r: _Reader) -> ZendeskConfig:
    return ZendeskConfig(
        url=r.https_url("zendesk.url", "https://example.zendesk.com"),
        email=r.string("zendesk.email", ""),
        ca_file=r.optional_path("zendesk.ca_file"),
        token=r.secret("zendesk.token_file", "EMERGENCYD_ZENDESK_TOKEN"),
        timeout_seconds=r.number("zendesk.timeout_seconds", 10.0, minimum=0.1),
        requests_per_minute=r.integer("zendesk.requests_per_minute", 90, minimum=1),
    )


def _pagerduty(r: _Reader) -> PagerDutyConfig:
    return PagerDutyConfig(
        events_url=r.https_url("pagerduty.events_url", "https://events.pagerduty.com"),
        api_url=r.https_url("pagerduty.api_url", "https://api.pagerduty.com"),
        from_email=r.string("pagerduty.from_email", ""),
        ca_file=r.optional_path("pagerduty.ca_file"),
        routing_key=r.secret("pagerduty.routing_key_file", "EMERGENCYD_PAGERDUTY_ROUTING_KEY"),
        api_token=r.secret("pagerduty.api_token_file", "EMERGENCYD_PAGERDUTY_API_TOKEN"),
        timeout_seconds=r.number("pagerduty.timeout_seconds", 10.0, minimum=0.1),
    )


def _escalation(r: _Reader) -> EscalationConfig:
    initial = r.number("escalation.retry_initial_seconds", 5.0, minimum=0.01)
    return EscalationConfig(
        ticket_head_start_seconds=r.number("escalation.ticket_head_start_seconds", 2.0, minimum=0.0),
        retry_initial_seconds=initial,
        retry_max_seconds=r.number("escalation.retry_max_seconds", 600.0, minimum=initial),
        max_attempts=r.integer("escalation.max_attempts", 1000, minimum=1),
        concurrency=r.integer("escalation.concurrency", 8, minimum=1),
        poll_interval_seconds=r.number("escalation.poll_interval_seconds", 1.0, minimum=0.01),
        max_in_flight_bytes=r.integer("escalation.max_in_flight_bytes", 64 * 1024 * 1024, minimum=1024),
        shutdown_deadline_seconds=r.number("escalation.shutdown_deadline_seconds", 20.0, minimum=0.1),
    )


def _dedup(r: _Reader) -> DedupConfig:
    return DedupConfig(
        incident_window_seconds=60 * r.number("dedup.incident_window_minutes", 30, minimum=0),
        platform_wide_categories=tuple(r.string_list("dedup.platform_wide_categories",
                                                     ["apps_not_served", "emergency_fix_blocked"])),
        sender_limit=r.integer("dedup.sender_limit", 10, minimum=1),
        sender_window_seconds=60 * r.number("dedup.sender_window_minutes", 10, minimum=0),
        max_new_pages_per_minute=r.integer("dedup.max_new_pages_per_minute", 10, minimum=1),
    )


def _policy(table: Any, trust: Any = None) -> Policy:
    """[policy] and [trust]: both are policy, reloaded together on SIGHUP."""
    try:
        return parse_policy(table, trust)
    except PolicyError as exc:
        raise ConfigError(str(exc)) from None
    except ZoneInfoNotFoundError:
        raise ConfigError(f"policy.timezone: unknown time zone {table.get('timezone')!r}") from None
    except ValueError as exc:   # the calendar refuses impossible settings
        raise ConfigError(f"policy: {exc}") from None


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


_KNOWN_SECTIONS = {
    "smtp": {"enabled", "listen", "recipients", "max_message_bytes", "hostname", "tls_cert_file", "tls_key_file",
             "require_starttls", "max_connections", "max_connections_per_ip", "max_recipients",
             "messages_per_ip_per_minute", "messages_per_sender_per_minute", "limit_exempt_networks",
             "command_timeout_seconds", "session_max_seconds", "max_line_bytes", "auth_users_file", "auth_required",
             "auth_failures_per_ip_per_hour", "proxy_protocol", "proxy_trusted_networks", "proxy_timeout_seconds"},
    "imap": {"enabled", "host", "port", "username", "password_file", "mailbox", "processed_mailbox", "tls",
             "ca_file", "idle", "idle_renew_seconds", "poll_interval_seconds", "command_timeout_seconds",
             "reconnect_initial_seconds", "reconnect_max_seconds", "login_retry_seconds", "batch_messages",
             "max_message_bytes"},
    "store": {"path", "busy_timeout_ms"},
    "zendesk": {"url", "email", "ca_file", "token_file", "timeout_seconds", "requests_per_minute"},
    "pagerduty": {"events_url", "api_url", "from_email", "ca_file", "routing_key_file",
                  "api_token_file", "timeout_seconds"},
    "escalation": {"ticket_head_start_seconds", "retry_initial_seconds", "retry_max_seconds",
                   "max_attempts", "concurrency", "poll_interval_seconds", "max_in_flight_bytes",
                   "shutdown_deadline_seconds"},
    "metrics": {"listen", "integration_failing_seconds"},
    "fallback": FALLBACK_KEYS,
    "dedup": {"incident_window_minutes", "platform_wide_categories", "sender_limit", "sender_window_minutes",
              "max_new_pages_per_minute"},
}
_KNOWN_TOP_LEVEL = {"dry_run", "policy", "trust"}   # [policy] and [trust] check their own keys


class _Reader:
    """Typed access to the parsed TOML by dotted key, with operator-facing errors."""

    def __init__(self, data: dict[str, Any], *, base_dir: Path, environ: dict[str, str]):
        self._data = data
        self._base_dir = base_dir
        self._environ = environ

    def _get(self, key: str, default: Any) -> Any:
        node: Any = self._data
        for part in key.split("."):
            if not isinstance(node, dict):
                raise ConfigError(f"{key}: its parent is not a table")
            if part not in node:
                return default
            node = node[part]
        return node

    def string(self, key: str, default: str) -> str:
        value = self._get(key, default)
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {type(value).__name__}")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self._get(key, default)
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value

    def integer(self, key: str, default: int, *, minimum: int) -> int:
        value = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        if value < minimum:
            raise ConfigError(f"{key}: must be at least {minimum}, got {value}")
        return value

    def number(self, key: str, default: float, *, minimum: float) -> float:
        value = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if value < minimum:
            raise ConfigError(f"{key}: must be at least {minimum}, got {value}")
        return float(value)

    def string_list(self, key: str, default: list[str]) -> list[str]:
        value = self._get(key, default)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key}: expected a list of strings")
        return value

    def host_port(self, key: str, default: str) -> HostPort:
        value = self.string(key, default)
        host, sep, port = value.rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ConfigError(f"{key}: expected HOST:PORT, got {value!r}")
        return HostPort(host, int(port))

    def https_url(self, key: str, default: str) -> str:
        value = self.string(key, default).rstrip("/")
        parts = urlsplit(value)
        if parts.scheme != "https" or not parts.hostname:
            raise ConfigError(f"{key}: expected an https:// URL, got {value!r}")
        return value

    def path(self, key: str, default: str) -> Path:
        return self._resolve(self.string(key, default))

    def optional_path(self, key: str) -> Path | None:
        value = self._get(key, None)
        if value is None:
            return None
        path = self._resolve(self.string(key, ""))
        if not path.is_file():
            raise ConfigError(f"{key}: {path} is not a readable file")
        return path

    def secret(self, file_key: str, env_name: str) -> Secret | None:
        """The environment wins over the file, so an operator can override a credential file."""
        env_value = self._environ.get(env_name, "").strip()
        if env_value:
            return Secret(env_value)
        path = self.optional_path(file_key)
        if path is None:
            return None
        value = path.read_text(encoding="utf-8").strip()
        if not value:
            raise ConfigError(f"{file_key}: {path} is empty")
        return Secret(value)

    def _resolve(self, value: str) -> Path:
        expanded = Path(os.path.expandvars(value)).expanduser()
        return expanded if expanded.is_absolute() else self._base_dir / expanded

    def reject_unknown_keys(self) -> None:
        """A typo in a key must not silently fall back to a default."""
        for key, value in self._data.items():
            if key in _KNOWN_SECTIONS:
                if not isinstance(value, dict):
                    raise ConfigError(f"{key}: expected a table")
                for sub in value:
                    if sub not in _KNOWN_SECTIONS[key]:
                        raise ConfigError(f"{key}.{sub}: unknown key")
            elif key not in _KNOWN_TOP_LEVEL:
                raise ConfigError(f"{key}: unknown key")
