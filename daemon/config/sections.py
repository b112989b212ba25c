"""The sections of config.toml read into daemon/config/model.py's dataclasses, and the keys each may hold.

daemon/config/model.py imports this module inside load_config, since this one imports its dataclasses.
[fallback] and the [smtp] AUTH and PROXY settings have modules of their own (config_fallback, smtp_settings).
"""
from __future__ import annotations

import socket
from typing import Any
from zoneinfo import ZoneInfoNotFoundError

from emergencyd.daemon.config.model import (
    DedupConfig,
    EscalationConfig,
    ImapConfig,
    MetricsConfig,
    PagerDutyConfig,
    ReplicaConfig,
    SmtpConfig,
    StoreConfig,
    ZendeskConfig,
)
from emergencyd.daemon.config.reader import (
    ConfigError,
    ConfigReader,
    is_loopback,
    read_networks,
)
from emergencyd.daemon.config.store import StoreBackend, dsn_fields
from emergencyd.daemon.ingest.oauth2_settings import ImapAuth, read_imap_auth, read_oauth2
from emergencyd.daemon.ingest.smtp_settings import read_auth, read_proxy
from emergencyd.escalation.policy import Policy
from emergencyd.escalation.policy_config import PolicyError, parse_policy


def read_smtp(r: ConfigReader) -> SmtpConfig:
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
        limit_exempt_networks=read_networks(r, "smtp.limit_exempt_networks", ["127.0.0.0/8", "::1/128"]),
        command_timeout_seconds=r.number("smtp.command_timeout_seconds", 300.0, minimum=0.1),
        session_max_seconds=r.number("smtp.session_max_seconds", 900.0, minimum=0.1),
        auth=read_auth(r, tls=cert is not None, listen=listen),
        proxy=read_proxy(r),
    )


def read_imap(r: ConfigReader) -> ImapConfig:
    enabled = r.boolean("imap.enabled", False)
    tls = r.boolean("imap.tls", True)
    host = r.string("imap.host", "")
    if enabled and not host:
        raise ConfigError("imap.host: required when imap.enabled = true")
    if enabled and not tls and not is_loopback(host):
        raise ConfigError(f"imap.tls: false is only allowed for a loopback host, not {host!r}: "
                          "the password and tenants' mail would cross the network in clear")
    mailbox, processed = r.string("imap.mailbox", "INBOX"), r.string("imap.processed_mailbox", "Processed")
    if enabled and (not processed or processed == mailbox):
        raise ConfigError("imap.processed_mailbox: must name a mailbox other than imap.mailbox; "
                          "handled mail is moved there")
    username = r.string("imap.username", "")
    password = r.secret("imap.password_file", "EMERGENCYD_IMAP_PASSWORD")
    auth = read_imap_auth(r)
    oauth2 = read_oauth2(r, needed=enabled and auth is ImapAuth.OAUTH2)
    if enabled and not username:
        raise ConfigError("imap.username: required when imap.enabled = true (the mailbox's login)")
    if enabled and auth is ImapAuth.PASSWORD and not (password or r.lenient_secrets):
        raise ConfigError("imap: a password (EMERGENCYD_IMAP_PASSWORD or imap.password_file) is required "
                          "when imap.enabled = true with imap.auth = \"password\"")
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
        auth=auth, oauth2=oauth2,
    )


def read_store(r: ConfigReader) -> StoreConfig:
    backend = r.choice("store.backend", StoreBackend, StoreBackend.SQLITE)
    dsn = r.string("store.dsn", "")
    password = r.secret("store.password_file", "EMERGENCYD_STORE_PASSWORD")
    if backend is StoreBackend.POSTGRESQL:
        if not dsn:
            raise ConfigError("store.dsn: the postgresql backend needs a dsn, e.g. \"host=db1,db2 dbname=emergencyd "
                              "user=emergencyd target_session_attrs=read-write\"")
        try:
            fields = dsn_fields(dsn)
        except ValueError as exc:
            raise ConfigError(f"store.dsn: not a libpq connection string: {exc}") from None
        if "password" in fields:
            raise ConfigError("store.dsn: holds a password; give it in EMERGENCYD_STORE_PASSWORD or "
                              "store.password_file instead, so that it never sits in the config")
    return StoreConfig(
        path=r.path("store.path", "var/emergencyd.sqlite3"),
        busy_timeout_ms=r.integer("store.busy_timeout_ms", 5000, minimum=0),
        backend=backend, dsn=dsn, password=password,
    )


def read_replica(r: ConfigReader) -> ReplicaConfig:
    name = r.string("replica.name", "") or socket.gethostname()
    if not name.strip() or len(name) > 200:
        raise ConfigError(f"replica.name: expected a short name, got {name!r}")
    return ReplicaConfig(name=name, lease_seconds=r.number("replica.lease_seconds", 20.0, minimum=1.0))


def read_zendesk(r: ConfigReader) -> ZendeskConfig:
    return ZendeskConfig(
        url=r.https_url("zendesk.url", "https://example.zendesk.com"),
        email=r.string("zendesk.email", ""),
        ca_file=r.optional_path("zendesk.ca_file"),
        token=r.secret("zendesk.token_file", "EMERGENCYD_ZENDESK_TOKEN"),
        timeout_seconds=r.number("zendesk.timeout_seconds", 10.0, minimum=0.1),
        requests_per_minute=r.integer("zendesk.requests_per_minute", 90, minimum=1),
    )


def read_pagerduty(r: ConfigReader) -> PagerDutyConfig:
    return PagerDutyConfig(
        events_url=r.https_url("pagerduty.events_url", "https://events.pagerduty.com"),
        api_url=r.https_url("pagerduty.api_url", "https://api.pagerduty.com"),
        from_email=r.string("pagerduty.from_email", ""),
        ca_file=r.optional_path("pagerduty.ca_file"),
        routing_key=r.secret("pagerduty.routing_key_file", "EMERGENCYD_PAGERDUTY_ROUTING_KEY"),
        api_token=r.secret("pagerduty.api_token_file", "EMERGENCYD_PAGERDUTY_API_TOKEN"),
        timeout_seconds=r.number("pagerduty.timeout_seconds", 10.0, minimum=0.1),
    )


def read_escalation(r: ConfigReader) -> EscalationConfig:
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
        cpu_workers=r.integer("escalation.cpu_workers", 2, minimum=1),
        cpu_timeout_seconds=r.number("escalation.cpu_timeout_seconds", 60.0, minimum=1.0),
        first_mails_per_second_while_mail_arrives=r.number(
            "escalation.first_mails_per_second_while_mail_arrives", 50.0, minimum=0.0),
        first_mails_at_once_while_mail_arrives=r.integer(
            "escalation.first_mails_at_once_while_mail_arrives", 20, minimum=1),
    )


def read_dedup(r: ConfigReader) -> DedupConfig:
    return DedupConfig(
        incident_window_seconds=60 * r.number("dedup.incident_window_minutes", 30, minimum=0),
        platform_wide_categories=tuple(r.string_list("dedup.platform_wide_categories",
                                                     ["apps_not_served", "emergency_fix_blocked"])),
        sender_limit=r.integer("dedup.sender_limit", 10, minimum=1),
        sender_window_seconds=60 * r.number("dedup.sender_window_minutes", 10, minimum=0),
        max_new_pages_per_minute=r.integer("dedup.max_new_pages_per_minute", 10, minimum=1),
    )


def read_metrics(r: ConfigReader) -> MetricsConfig:
    return MetricsConfig(
        listen=r.host_port("metrics.listen", "127.0.0.1:9464"),
        integration_failing_seconds=r.number("metrics.integration_failing_seconds", 300.0, minimum=1.0),
        status_page=r.boolean("metrics.status_page", False))


def read_policy(table: Any, trust: Any = None, spam: Any = None) -> Policy:
    """[policy], [trust] and [spam]: all policy, reloaded together on SIGHUP."""
    try:
        return parse_policy(table, trust, spam)
    except PolicyError as exc:
        raise ConfigError(str(exc)) from None
    except ZoneInfoNotFoundError:
        raise ConfigError(f"policy.timezone: unknown time zone {table.get('timezone')!r}") from None
    except ValueError as exc:   # the calendar refuses impossible settings
        raise ConfigError(f"policy: {exc}") from None
