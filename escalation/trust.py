"""Sender trust as policy: which Authentication-Results count, and what a failure does to a page.

Pure. The decide step adds what needs the envelope (was the SMTP peer our relay?) and,
when configured, emergencyd's own DKIM check (escalation/dkim_check.py).

Who writes matters most: the tenant directory (`tenant_domains`, `tenant_addresses`) says whose
mail is a tenant's. A stranger's mail that no rule matches is a ticket, not a page (a leaked
address receives spam, newsletters and list mail); a stranger's mail that a rule matches pages
as the rule says. With an empty directory every sender counts as a tenant.

The paging rule, chosen so that a real P1 is still paged:
- mail that is not verified (no trusted results, none, temperror, an unknown domain) pages
  as the routing table says, unless `page_unverified = false`, which lets only verified mail
  from a tenant domain page;
- mail whose From is a tenant domain and whose DMARC result from our MTA is `fail` is a
  likely forgery of a tenant: it gets a ticket flagged "unverified sender" and pages only
  with `page_dmarc_fail = true`. A tenant domain that publishes `p=none` says that its own
  mail may fail DMARC, so its failures still page.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from enum import StrEnum

from emergencyd.parsers.auth_results import DkimCheck, SenderTrust, sender_trust
from emergencyd.parsers.spam_headers import SpamVerdict

DEFAULT_TRUSTED_RELAYS = ("127.0.0.0/8", "::1/128")


class StrangerAction(StrEnum):
    """[trust] stranger_unclassified: what a non-tenant's mail that no rule matches gets."""
    TICKET = "ticket"      # a ticket tagged unknown-sender, no page
    PAGE = "page"          # as a tenant's: the unclassified severity's routing


@dataclass(frozen=True)
class TrustPolicy:
    trusted_authserv_ids: tuple[str, ...] = ()     # our own MTA's; empty: no header is trusted
    trusted_relays: tuple[str, ...] = DEFAULT_TRUSTED_RELAYS   # SMTP peers whose header fields can count
    own_received_fields: int = 0                   # Received fields our MTA writes above its results
    verify_dkim: bool = False
    dkim_timeout_seconds: float = 3.0
    dkim_dns_server: tuple[str, int] | None = None   # (IP address, port); None: the system resolver
    tenant_domains: tuple[str, ...] = ()           # lower-case; subdomains count too
    tenant_addresses: tuple[str, ...] = ()         # lower-case addresses of tenants outside those domains
    page_unverified: bool = True
    page_dmarc_fail: bool = False
    stranger_unclassified: StrangerAction = StrangerAction.TICKET
    relay_spam_headers: bool = False               # the relay's X-Spam* fields count (parsers/spam_headers.py)
    directory_from_zendesk: bool = False           # Zendesk's organizations and end users join the directory
    directory_refresh_seconds: float = 3600.0
    # Entries read from Zendesk, with their organization's name: (domain or address, organization).
    tenant_organizations: tuple[tuple[str, str], ...] = ()
    # The directory as the look-ups read it: a directory of thousands is asked three times per mail.
    _address_set: frozenset[str] = field(init=False, repr=False, compare=False)
    _domain_rank: dict[str, int] = field(init=False, repr=False, compare=False)
    _organization_of: dict[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_address_set", frozenset(self.tenant_addresses))
        ranks: dict[str, int] = {}
        for rank, domain in enumerate(self.tenant_domains):
            ranks.setdefault(domain, rank)
        object.__setattr__(self, "_domain_rank", ranks)
        object.__setattr__(self, "_organization_of", dict(self.tenant_organizations))

    @property
    def enabled(self) -> bool:
        return bool(self.trusted_authserv_ids) or self.verify_dkim or self.relay_spam_headers

    @property
    def knows_tenants(self) -> bool:
        """An empty directory: every sender is treated as a tenant, as before there was one."""
        return bool(self.tenant_domains or self.tenant_addresses)


def tenant_domain_of(domain: str | None, policy: TrustPolicy) -> str | None:
    """The tenant domain this domain is, or is a subdomain of (the first listed, when several are):
    one of its label-aligned suffixes, looked up, instead of a scan of the list."""
    if not domain:
        return None
    ranks = policy._domain_rank
    suffixes = [domain[i + 1:] for i, c in enumerate(domain) if c == "."] + [domain]
    listed = [(ranks[s], s) for s in suffixes if s in ranks]
    return min(listed)[1] if listed else None


def tenant_of(address: str | None, policy: TrustPolicy) -> str | None:
    """Why this From address counts as a tenant's (the directory entry it matched), or None."""
    address = (address or "").strip().lower()
    if not address:
        return None
    if address in policy._address_set:
        return f"the tenant address {address}{_organization(address, policy)}"
    domain = tenant_domain_of(address.rpartition("@")[2], policy)
    return f"the tenant domain {domain}{_organization(domain, policy)}" if domain else None


def _organization(entry: str, policy: TrustPolicy) -> str:
    organization = policy._organization_of.get(entry)
    return f", organization {organization} in Zendesk" if organization else ""


def directory_summary(policy: TrustPolicy) -> str:
    """The tenant directory in one line, for the start-up log, check-config and status."""
    if not policy.knows_tenants:
        return ("empty: every sender counts as a tenant, so anyone's mail that no rule matches pages "
                "(set [trust] tenant_domains or tenant_addresses)")
    stranger = ("a ticket, no page" if policy.stranger_unclassified is StrangerAction.TICKET
                else "a page, as a tenant's")
    return (f"{len(policy.tenant_domains)} domain(s), {len(policy.tenant_addresses)} address(es); "
            f"a stranger's mail that no rule matches gets {stranger}")


def sender_standing(sender: str | None, policy: TrustPolicy) -> str | None:
    """What the tenant directory says of the sender, for humans; None while the directory is empty."""
    if not policy.knows_tenants:
        return None
    why = tenant_of(sender, policy)
    return f"a tenant ({why})" if why else f"not a tenant ({sender or 'no From address'} is not in the directory)"


def stranger_demotion(sender: str | None, policy: TrustPolicy) -> str | None:
    """Why a stranger's mail that no rule matched gets a ticket and no page; None: it pages as the
    routing says (a tenant's, any mail while the directory is empty, or stranger_unclassified = "page")."""
    if not policy.knows_tenants or policy.stranger_unclassified is not StrangerAction.TICKET:
        return None
    if tenant_of(sender, policy) is not None:
        return None
    return (f"not paged: {sender or 'a sender without a From address'} is not a tenant and no rule matched "
            '([trust] stranger_unclassified = "ticket")')


def verified_tenant(trust: SenderTrust | None, policy: TrustPolicy, sender: str | None) -> bool:
    """DMARC or aligned DKIM passed, and the From address is in the tenant directory."""
    return trust is not None and bool(trust.verified) and tenant_of(sender, policy) is not None


def spam_to_suppress(spam: SpamVerdict | None, trust: SenderTrust | None, sender: str | None,
                     policy: TrustPolicy) -> bool:
    """rspamd's reject suppresses the mail as spam (it stays in the store), unless a verified tenant's."""
    return spam is not None and spam.action == "reject" and not verified_tenant(trust, policy, sender)


def peer_trusted(source: str, peer: str, trusted_relays: tuple[str, ...]) -> bool:
    """Header fields count for mail from our relay over SMTP, from the mailbox (its provider stamped
    it) and from `inject` (the operator's file); an SMTP client elsewhere could have written them all."""
    if source != "smtp":
        return True
    host = peer.rsplit(":", 1)[0]         # the envelope's peer is "address:port"
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(net, strict=False) for net in trusted_relays)


def assess(headers: tuple[tuple[str, str], ...], policy: TrustPolicy, *, headers_count: bool = True,
           dkim: DkimCheck | None = None) -> SenderTrust | None:
    """The sender's trust, or None when trust is not configured."""
    if not policy.enabled:
        return None
    ids = policy.trusted_authserv_ids if headers_count else ()
    return sender_trust(headers, ids, own_received_fields=policy.own_received_fields, dkim=dkim,
                        spam_headers=policy.relay_spam_headers and headers_count)


def page_hold(trust: SenderTrust | None, policy: TrustPolicy, sender: str | None,
              spam: SpamVerdict | None = None) -> str | None:
    """Why a page the routing table asks for is held back; None: page. `sender` is the From address:
    a tenant is one by the whole directory, its domains and its addresses. `spam`: the spam filter's say."""
    if spam is not None and spam.spam and not verified_tenant(trust, policy, sender):
        return f"not paged: suspected spam, {spam.reason} (a verified tenant's mail would page)"
    if trust is None:
        return None
    tenant = tenant_of(sender, policy)
    if trust.verified is False and tenant and not policy.page_dmarc_fail and trust.dmarc_policy != "none":
        return f"not paged: DMARC fail for {tenant}, a likely forgery ([trust] page_dmarc_fail = false)"
    if not policy.page_unverified and not (trust.verified and tenant):
        return "not paged: the sender is not verified as a tenant ([trust] page_unverified = false)"
    return None
