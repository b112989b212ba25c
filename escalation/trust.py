"""Sender trust as policy: which Authentication-Results count, and what a failure does to a page.

Pure. The decide step adds what needs the envelope (was the SMTP peer our relay?) and,
when configured, emergencyd's own DKIM check (escalation/dkim_check.py).

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
from dataclasses import dataclass

from parsers.auth_results import DkimCheck, SenderTrust, sender_trust

DEFAULT_TRUSTED_RELAYS = ("127.0.0.0/8", "::1/128")


@dataclass(frozen=True)
class TrustPolicy:
    trusted_authserv_ids: tuple[str, ...] = ()     # our own MTA's; empty: no header is trusted
    trusted_relays: tuple[str, ...] = DEFAULT_TRUSTED_RELAYS   # SMTP peers whose header fields can count
    own_received_fields: int = 0                   # Received fields our MTA writes above its results
    verify_dkim: bool = False
    dkim_timeout_seconds: float = 3.0
    dkim_dns_server: tuple[str, int] | None = None   # (IP address, port); None: the system resolver
    tenant_domains: tuple[str, ...] = ()           # lower-case; subdomains count too
    page_unverified: bool = True
    page_dmarc_fail: bool = False

    @property
    def enabled(self) -> bool:
        return bool(self.trusted_authserv_ids) or self.verify_dkim


def is_tenant(domain: str | None, tenant_domains: tuple[str, ...]) -> bool:
    return bool(domain) and any(domain == t or domain.endswith("." + t) for t in tenant_domains)


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
    return sender_trust(headers, ids, own_received_fields=policy.own_received_fields, dkim=dkim)


def page_hold(trust: SenderTrust | None, policy: TrustPolicy) -> str | None:
    """Why a page the routing table asks for is held back; None: page."""
    if trust is None:
        return None
    tenant = is_tenant(trust.from_domain, policy.tenant_domains)
    if trust.verified is False and tenant and not policy.page_dmarc_fail and trust.dmarc_policy != "none":
        return (f"not paged: DMARC fail for the tenant domain {trust.from_domain}, a likely forgery "
                "([trust] page_dmarc_fail = false)")
    if not policy.page_unverified and not (trust.verified and tenant):
        return "not paged: the sender is not verified as a tenant ([trust] page_unverified = false)"
    return None
