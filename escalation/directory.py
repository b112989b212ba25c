"""The tenant directory from Zendesk: organizations' domain names and the end users who belong to them.

Zendesk is where the support team already keeps its tenants: each tenant an organization, with its
mail domains (`domain_names`) and its people (end users with an `organization_id`). The daemon reads
them in the background ([trust] directory_from_zendesk), keeps the last good copy in the store, and
merges it with the config's own `tenant_domains` and `tenant_addresses`. A decision never waits for
Zendesk: it reads the copy in force, and a Zendesk outage or a restart leaves that copy in force.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from typing import Any, Iterable

from emergencyd.escalation.trust import TrustPolicy, directory_summary

ZENDESK = "zendesk"   # the source's name in the store


@dataclass(frozen=True)
class DirectoryCopy:
    """What Zendesk said, and when: (entry, organization name) pairs, lower-case entries."""
    domains: tuple[tuple[str, str], ...]
    addresses: tuple[tuple[str, str], ...]
    organizations: int
    fetched_at: float

    def to_json(self) -> str:
        return json.dumps({"domains": self.domains, "addresses": self.addresses,
                           "organizations": self.organizations, "fetched_at": self.fetched_at})

    @classmethod
    def from_json(cls, text: str) -> "DirectoryCopy":
        data = json.loads(text)
        return cls(domains=tuple((d, o) for d, o in data["domains"]),
                   addresses=tuple((a, o) for a, o in data["addresses"]),
                   organizations=int(data["organizations"]), fetched_at=float(data["fetched_at"]))

    def same_entries(self, other: "DirectoryCopy | None") -> bool:
        return other is not None and (self.domains, self.addresses) == (other.domains, other.addresses)


def kept_copy(store: Any, trust: TrustPolicy) -> DirectoryCopy | None:
    """The copy of Zendesk's directory kept in a (synchronous) store, when the config reads Zendesk."""
    if not trust.directory_from_zendesk:
        return None
    kept = store.kept_directory(ZENDESK)
    return DirectoryCopy.from_json(kept) if kept else None


def directory_from(organizations: Iterable[Any], users: Iterable[Any], fetched_at: float) -> DirectoryCopy:
    """Zendesk's organizations and end users (zenpy objects, or anything with the same attributes)."""
    names: dict[int, str] = {}
    domains: dict[str, str] = {}
    for org in organizations:
        names[org.id] = org.name or f"organization {org.id}"
        for domain in org.domain_names or ():
            domains.setdefault(domain.strip().lower(), names[org.id])
    addresses: dict[str, str] = {}
    for user in users:
        if user.organization_id in names and user.email and user.role == "end-user":
            addresses.setdefault(user.email.strip().lower(), names[user.organization_id])
    return DirectoryCopy(domains=tuple(sorted(domains.items())), addresses=tuple(sorted(addresses.items())),
                         organizations=len(names), fetched_at=fetched_at)


def with_directory(trust: TrustPolicy, copy: DirectoryCopy | None) -> TrustPolicy:
    """The config's directory, then Zendesk's: the config's entries come first and keep their wording."""
    if copy is None:
        return trust
    domains = tuple(dict.fromkeys((*trust.tenant_domains, *(d for d, _ in copy.domains))))
    addresses = tuple(dict.fromkeys((*trust.tenant_addresses, *(a for a, _ in copy.addresses))))
    configured = set(trust.tenant_domains) | set(trust.tenant_addresses)
    organizations = tuple((entry, org) for entry, org in (*copy.domains, *copy.addresses) if entry not in configured)
    return replace(trust, tenant_domains=domains, tenant_addresses=addresses, tenant_organizations=organizations)


def directory_line(trust: TrustPolicy, copy: DirectoryCopy | None) -> str:
    """The directory in force, in one line: the config's and Zendesk's entries, and how old Zendesk's copy is."""
    line = directory_summary(with_directory(trust, copy))
    if not trust.directory_from_zendesk:
        return line
    if copy is None:
        return f"{line} (Zendesk: not read yet)"
    fetched = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(copy.fetched_at))
    return (f"{line} (Zendesk: {copy.organizations} organization(s), {len(copy.domains)} domain(s), "
            f"{len(copy.addresses)} member address(es), read {fetched})")
