"""The [smtp] settings for AUTH and the PROXY protocol, read and validated for daemon/config/model.py."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from emergencyd.daemon.config.reader import (
    ConfigError,
    Secret,
    is_loopback,
    read_networks,
)
from emergencyd.daemon.ingest.smtp_auth import UsersFileError, load_users

if TYPE_CHECKING:
    from emergencyd.daemon.config.reader import ConfigReader, HostPort

@dataclass(frozen=True)
class SmtpAuthConfig:
    users: tuple[tuple[str, Secret], ...]    # user, scrypt hash; empty: AUTH is not offered
    required: bool                           # MAIL before AUTH gets 530 5.7.0
    failures_per_ip_per_hour: int            # past it, AUTH gets 421 4.7.0 and the connection is closed

    @property
    def enabled(self) -> bool:
        return bool(self.users)


@dataclass(frozen=True)
class ProxyConfig:
    enabled: bool                         # every connection must open with a PROXY v1 or v2 header
    trusted_networks: tuple[str, ...]     # the load balancers; any other peer is dropped
    timeout_seconds: float                # to wait for the header


def read_auth(r: ConfigReader, *, tls: bool, listen: HostPort) -> SmtpAuthConfig:
    path = r.optional_path("smtp.auth_users_file")
    try:
        users = load_users(path) if path is not None else {}
    except UsersFileError as exc:
        raise ConfigError(f"smtp.auth_users_file: {exc}") from None
    required = r.boolean("smtp.auth_required", False)
    if required and not users:
        raise ConfigError("smtp.auth_required: needs smtp.auth_users_file")
    if users and not tls and not is_loopback(listen.host):
        # AUTH is offered only over TLS, or to a loopback client: without a certificate no remote client could log in.
        raise ConfigError("smtp.auth_users_file: AUTH on a non-loopback listener needs STARTTLS "
                          "(smtp.tls_cert_file and smtp.tls_key_file)")
    return SmtpAuthConfig(
        users=tuple((user, Secret(stored)) for user, stored in users.items()),
        required=required,
        failures_per_ip_per_hour=r.integer("smtp.auth_failures_per_ip_per_hour", 10, minimum=1))


def read_proxy(r: ConfigReader) -> ProxyConfig:
    enabled = r.boolean("smtp.proxy_protocol", False)
    trusted = read_networks(r, "smtp.proxy_trusted_networks", [])
    if enabled and not trusted:
        raise ConfigError("smtp.proxy_trusted_networks: name the load balancers' networks when "
                          "smtp.proxy_protocol = true; anyone else could forge a client address")
    # aiosmtpd warns on every connection below 3 s.
    return ProxyConfig(enabled=enabled, trusted_networks=trusted,
                       timeout_seconds=r.number("smtp.proxy_timeout_seconds", 10.0, minimum=3.0))
