"""The [fallback] section: mail through an SMTP relay when a page is overdue.

Kept apart from daemon/config/model.py, which reads it through `read_fallback`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from emergencyd.daemon.config.reader import ConfigError, is_loopback
from emergencyd.escalation.settings import FallbackConfig

if TYPE_CHECKING:
    from emergencyd.daemon.config.reader import ConfigReader

# A page normally leaves within seconds of receipt. Two minutes is about five failed attempts on the
# default backoff: long enough to ride out a blip, and it leaves most of a P1's 20-minute response time.
DEFAULT_AFTER_SECONDS = 120.0


def read_fallback(r: ConfigReader) -> FallbackConfig:
    enabled = r.boolean("fallback.enabled", False)
    relay = r.host_port("fallback.relay", "") if r.string("fallback.relay", "") else None
    starttls = r.boolean("fallback.starttls", True)
    from_address = r.string("fallback.from_address", "").strip()
    to = tuple(a.strip() for a in r.string_list("fallback.to", []))
    addresses = ([("fallback.from_address", from_address)] if from_address else []) + [("fallback.to", a) for a in to]
    for key, address in addresses:
        if "@" not in address or address.startswith("@") or address.endswith("@"):
            raise ConfigError(f"{key}: {address!r} is not an email address")
    if enabled and not (relay and from_address and to):
        raise ConfigError("fallback: relay, from_address and to are required when fallback.enabled = true")
    if enabled and relay is not None and not starttls and not is_loopback(relay.host):
        raise ConfigError(f"fallback.starttls: false is only allowed for a loopback relay, not {relay.host!r}: "
                          "the relay password and the alert would cross the network in clear")
    username = r.string("fallback.username", "")
    password = r.secret("fallback.password_file", "EMERGENCYD_FALLBACK_PASSWORD")
    if enabled and bool(username) != (password is not None):
        raise ConfigError("fallback: username and a password (EMERGENCYD_FALLBACK_PASSWORD or "
                          "fallback.password_file) go together")
    return FallbackConfig(
        enabled=enabled, relay=relay, starttls=starttls, ca_file=r.optional_path("fallback.ca_file"),
        username=username, password=password, from_address=from_address, to=to,
        after_seconds=r.number("fallback.after_seconds", DEFAULT_AFTER_SECONDS, minimum=1.0),
        timeout_seconds=r.number("fallback.timeout_seconds", 30.0, minimum=0.1),
    )
