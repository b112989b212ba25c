"""[policy] in config.toml -> Policy, with errors that name the key."""
from __future__ import annotations

import ipaddress
import re
from dataclasses import replace
from datetime import date, timedelta
from typing import Any

from emergencyd.escalation.hours import SupportCalendar, Window
from emergencyd.escalation.policy import (
    NOT_AN_INCIDENT,
    SEVERITIES,
    URGENCIES,
    ZENDESK_PRIORITIES,
    Policy,
    Route,
)
from emergencyd.escalation.regex_prefilter import GuardedRegex, guarded
from emergencyd.escalation.rspamd import SpamCheck
from emergencyd.escalation.rules import FIELDS, Rule, phrase_text
from emergencyd.escalation.trust import (
    DEFAULT_TRUSTED_RELAYS,
    StrangerAction,
    TrustPolicy,
)

RULE_KEYS = {"name", "category", "severity", "fields", "phrases", "regexes", "unless", "requires", "description"}
ROUTE_KEYS = {"urgency", "zendesk_priority", "respond_within", "update_every", "working_time"}
POLICY_KEYS = {"timezone", "extra_closures", "unclassified_severity", "unclassified_category",
               "noise_gets_ticket", "generic_subjects", "rules", "routing"}
TRUST_KEYS = {"trusted_authserv_ids", "trusted_relays", "own_received_fields", "verify_dkim",
              "dkim_timeout_seconds", "dkim_dns_server", "tenant_domains", "tenant_addresses", "page_unverified",
              "page_dmarc_fail", "stranger_unclassified", "relay_spam_headers", "directory_from_zendesk",
              "directory_refresh_seconds"}
_DURATION = re.compile(r"^\s*(\d+)\s*(m|min|h|d)\s*$")
_UNITS = {"m": 60, "min": 60, "h": 3600, "d": 86400}


class PolicyError(ValueError):
    """A policy config problem, naming the key."""


def parse_policy(table: dict[str, Any] | None, trust: dict[str, Any] | None = None,
                 spam: dict[str, Any] | None = None) -> Policy:
    """Without a [policy] table every mail is a P1, as the mailing list it replaces behaved.
    `trust` is the [trust] table, `spam` the [spam] one: policy too, reloaded with it."""
    return replace(_parse_policy(table), trust=parse_trust(trust), spam=parse_spam(spam))


def _parse_policy(table: dict[str, Any] | None) -> Policy:
    if table is None:
        return _page_everything()
    _reject_unknown("policy", table, POLICY_KEYS)
    calendar = SupportCalendar(timezone=_str(table, "timezone", "Europe/London", "policy"),
                               extra_closures=frozenset(_dates(table.get("extra_closures", []))))
    return Policy(
        rules=tuple(_rule(i, r) for i, r in enumerate(_list(table, "rules", "policy"))),
        routing=_routing(table.get("routing")),
        calendar=calendar,
        unclassified_severity=_severity(table.get("unclassified_severity", "P1"), "policy.unclassified_severity"),
        unclassified_category=_str(table, "unclassified_category", "unclassified", "policy"),
        noise_gets_ticket=_bool(table, "noise_gets_ticket", False, "policy"),
        generic_subjects=tuple(_strings(table, "generic_subjects", "policy")),
    )


def parse_spam(table: Any) -> SpamCheck:
    """[spam]: rspamd asked directly (escalation/rspamd.py)."""
    if table is None:
        return SpamCheck()
    if not isinstance(table, dict):
        raise PolicyError("spam: expected a table")
    _reject_unknown("spam", table, {"rspamd_url", "timeout_seconds"})
    url, timeout = table.get("rspamd_url", ""), table.get("timeout_seconds", 2.0)
    if not isinstance(url, str) or (url and not url.startswith(("http://", "https://"))):
        raise PolicyError("spam.rspamd_url: expected an http:// or https:// URL, e.g. http://127.0.0.1:11333")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0.05 <= timeout <= 30:
        raise PolicyError("spam.timeout_seconds: expected a number of seconds from 0.05 to 30")
    return SpamCheck(url, float(timeout))


def parse_trust(table: Any) -> TrustPolicy:
    if table is None:
        return TrustPolicy()
    if not isinstance(table, dict):
        raise PolicyError("trust: expected a table")
    _reject_unknown("trust", table, TRUST_KEYS)
    received, timeout = table.get("own_received_fields", 0), table.get("dkim_timeout_seconds", 3.0)
    if isinstance(received, bool) or not isinstance(received, int) or not 0 <= received <= 10:
        raise PolicyError("trust.own_received_fields: expected an integer from 0 to 10")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0.1 <= timeout <= 30:
        raise PolicyError("trust.dkim_timeout_seconds: expected a number of seconds from 0.1 to 30")
    refresh = table.get("directory_refresh_seconds", 3600.0)
    if isinstance(refresh, bool) or not isinstance(refresh, (int, float)) or not 1 <= refresh <= 86400:
        raise PolicyError("trust.directory_refresh_seconds: expected a number of seconds from 1 to 86400")
    policy = TrustPolicy(
        trusted_authserv_ids=tuple(i.strip().lower() for i in _strings(table, "trusted_authserv_ids", "trust")),
        trusted_relays=_relays(table), own_received_fields=received,
        verify_dkim=_bool(table, "verify_dkim", False, "trust"), dkim_timeout_seconds=float(timeout),
        dkim_dns_server=_dns_server(table.get("dkim_dns_server")),
        tenant_domains=tuple(d.strip().strip(".").lower() for d in _strings(table, "tenant_domains", "trust")),
        tenant_addresses=_addresses(table),
        page_unverified=_bool(table, "page_unverified", True, "trust"),
        page_dmarc_fail=_bool(table, "page_dmarc_fail", False, "trust"),
        stranger_unclassified=_stranger_action(table.get("stranger_unclassified", StrangerAction.TICKET.value)),
        relay_spam_headers=_bool(table, "relay_spam_headers", False, "trust"),
        directory_from_zendesk=_bool(table, "directory_from_zendesk", False, "trust"),
        directory_refresh_seconds=float(refresh))
    knows = policy.knows_tenants or policy.directory_from_zendesk
    if not policy.page_unverified and not (knows and (policy.trusted_authserv_ids or policy.verify_dkim)):
        raise PolicyError("trust.page_unverified: false would page no one; it needs tenant_domains or "
                          "tenant_addresses, and trusted_authserv_ids or verify_dkim")
    if policy.verify_dkim:
        _require_dkimpy()
    return policy


def _relays(table: dict) -> tuple[str, ...]:
    relays = tuple(_strings(table, "trusted_relays", "trust")) if "trusted_relays" in table \
        else DEFAULT_TRUSTED_RELAYS
    for relay in relays:
        try:
            ipaddress.ip_network(relay, strict=False)
        except ValueError:
            raise PolicyError(f"trust.trusted_relays: {relay!r} is not an address or network") from None
    return relays


def _dns_server(value: Any) -> tuple[str, int] | None:
    """HOST:PORT of the resolver for DKIM keys; HOST is an address, since naming it would need a resolver."""
    if value is None:
        return None
    host, sep, port = value.rpartition(":") if isinstance(value, str) else ("", "", "")
    bracketed = host.startswith("[") and host.endswith("]")
    try:
        address = ipaddress.ip_address(host[1:-1] if bracketed else host)
    except ValueError:
        address = None
    if address is not None and address.version == 6 and not bracketed:
        address = None                    # "::1:53" could be an address without a port
    if not sep or address is None or not port.isdigit() or not 0 < int(port) <= 65535:
        raise PolicyError(f"trust.dkim_dns_server: expected HOST:PORT with an IP address, such as "
                          f"\"127.0.0.1:53\" or \"[::1]:53\", got {value!r}")
    return str(address), int(port)


def _require_dkimpy() -> None:
    try:
        import dkim  # noqa: F401
    except ImportError:
        raise PolicyError("trust.verify_dkim: needs dkimpy (pip install 'emergencyd[dkim]')") from None


def _page_everything() -> Policy:
    page = Route("high", "urgent", timedelta(minutes=20), timedelta(hours=1), working_time=False)
    routing = {(severity, window): page for severity in (*SEVERITIES, NOT_AN_INCIDENT) for window in Window}
    return Policy(rules=(), routing=routing, calendar=SupportCalendar())


def _addresses(table: dict) -> tuple[str, ...]:
    addresses = tuple(a.strip().lower() for a in _strings(table, "tenant_addresses", "trust"))
    for address in addresses:
        local, at, domain = address.rpartition("@")
        if not (local and at and domain):
            raise PolicyError(f"trust.tenant_addresses: {address!r} is not an address (local@domain)")
    return addresses


def _stranger_action(value: Any) -> StrangerAction:
    try:
        return StrangerAction(value)
    except ValueError:
        raise PolicyError("trust.stranger_unclassified: expected one of "
                          + ", ".join(f'"{a.value}"' for a in StrangerAction)) from None


def _rule(index: int, table: Any) -> Rule:
    where = f"policy.rules[{index}]"
    if not isinstance(table, dict):
        raise PolicyError(f"{where}: expected a table")
    _reject_unknown(where, table, RULE_KEYS)
    name = _str(table, "name", None, where)
    where = f"policy.rules[{index}] ({name})"
    fields = _strings(table, "fields", where) or ["subject", "body"]
    for f in fields:
        if f not in FIELDS:
            raise PolicyError(f"{where}.fields: {f!r} is not one of {', '.join(FIELDS)}")
    phrases = _phrases(table, "phrases", where)
    regexes = tuple(_regex(r, f"{where}.regexes") for r in _strings(table, "regexes", where))
    if not phrases and not regexes:
        raise PolicyError(f"{where}: needs at least one of phrases or regexes")
    return Rule(name=name, category=_str(table, "category", None, where),
                severity=_severity(table.get("severity"), f"{where}.severity"), fields=tuple(fields),
                phrases=phrases, regexes=regexes, unless=_phrases(table, "unless", where),
                requires=_phrases(table, "requires", where), description=_str(table, "description", "", where))


def _phrases(table: dict, key: str, where: str) -> tuple[str, ...]:
    """As the literal each matches in normalized text; the policy's automaton finds them all at once."""
    return tuple(phrase_text(p) for p in _strings(table, key, where))


def _routing(table: Any) -> dict[tuple[str, Window], Route]:
    if not isinstance(table, dict):
        raise PolicyError("policy.routing: expected a table of severities")
    routing = {}
    for severity in (*SEVERITIES, NOT_AN_INCIDENT):
        row = table.get(severity)
        if not isinstance(row, dict):
            raise PolicyError(f"policy.routing.{severity}: missing")
        for window in Window:
            where = f"policy.routing.{severity}.{window}"
            if window.value not in row:
                raise PolicyError(f"{where}: missing")
            routing[(severity, window)] = _route(row[window.value], where)
    extra = set(table) - {*SEVERITIES, NOT_AN_INCIDENT}
    if extra:
        raise PolicyError(f"policy.routing.{sorted(extra)[0]}: unknown severity")
    return routing


def _route(table: Any, where: str) -> Route:
    if not isinstance(table, dict):
        raise PolicyError(f"{where}: expected a table")
    _reject_unknown(where, table, ROUTE_KEYS)
    urgency = table.get("urgency", "none")
    if urgency not in (*URGENCIES, "none"):
        raise PolicyError(f"{where}.urgency: expected high, low or none, got {urgency!r}")
    priority = _str(table, "zendesk_priority", None, where)
    if priority not in ZENDESK_PRIORITIES:
        raise PolicyError(f"{where}.zendesk_priority: expected one of {', '.join(ZENDESK_PRIORITIES)}")
    update = table.get("update_every")
    return Route(urgency=None if urgency == "none" else urgency, zendesk_priority=priority,
                 respond_within=_duration(table.get("respond_within"), f"{where}.respond_within"),
                 update_every=None if update is None else _duration(update, f"{where}.update_every"),
                 working_time=_bool(table, "working_time", False, where))


def _duration(value: Any, where: str) -> timedelta:
    match = _DURATION.match(value) if isinstance(value, str) else None
    if not match:
        raise PolicyError(f"{where}: expected a duration like '20m', '2h' or '1d', got {value!r}")
    return timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])


def _severity(value: Any, where: str) -> str | None:
    if value in SEVERITIES:
        return value
    if value == NOT_AN_INCIDENT:
        return None
    raise PolicyError(f"{where}: expected P1, P2, P3, P4 or 'none', got {value!r}")


def _regex(value: str, where: str) -> GuardedRegex:
    try:
        # Text is normalised (casefolded) before matching; IGNORECASE keeps hand-written classes honest.
        return guarded(re.compile(value, re.IGNORECASE))
    except re.error as exc:
        raise PolicyError(f"{where}: {value!r} is not a valid regex: {exc}") from None


def _dates(values: Any) -> list[date]:
    if not isinstance(values, list):
        raise PolicyError("policy.extra_closures: expected a list of dates")
    out = []
    for value in values:
        if isinstance(value, date):
            out.append(value)
        elif isinstance(value, str):
            try:
                out.append(date.fromisoformat(value))
            except ValueError:
                raise PolicyError(f"policy.extra_closures: {value!r} is not a YYYY-MM-DD date") from None
        else:
            raise PolicyError(f"policy.extra_closures: {value!r} is not a date")
    return out


def _str(table: dict, key: str, default: str | None, where: str) -> str:
    value = table.get(key, default)
    if not isinstance(value, str) or (default is None and not value):
        raise PolicyError(f"{where}.{key}: expected a non-empty string")
    return value


def _bool(table: dict, key: str, default: bool, where: str) -> bool:
    value = table.get(key, default)
    if not isinstance(value, bool):
        raise PolicyError(f"{where}.{key}: expected true or false")
    return value


def _list(table: dict, key: str, where: str) -> list:
    value = table.get(key, [])
    if not isinstance(value, list):
        raise PolicyError(f"{where}.{key}: expected a list")
    return value


def _strings(table: dict, key: str, where: str) -> list[str]:
    value = _list(table, key, where)
    if not all(isinstance(v, str) and v.strip() for v in value):
        raise PolicyError(f"{where}.{key}: expected a list of non-empty strings")
    return value


def _reject_unknown(where: str, table: dict, known: set[str]) -> None:
    for key in table:
        if key not in known:
            raise PolicyError(f"{where}.{key}: unknown key")
