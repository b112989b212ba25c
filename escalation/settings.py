"""The settings the integrations take: Zendesk, PagerDuty and the fallback relay, and the types they
hold (a Secret never shows its value; a HostPort). The daemon's config reader builds them from
config.toml; they live here so that the escalation never imports the daemon (docs/architecture.md)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


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
class FallbackConfig:
    enabled: bool
    relay: HostPort | None
    starttls: bool
    ca_file: Path | None          # also trusted for the relay's certificate, on top of the public CAs
    username: str
    password: Secret | None
    from_address: str
    to: tuple[str, ...]
    after_seconds: float          # from receipt: a page not accepted by then gets the fallback mail
    timeout_seconds: float
