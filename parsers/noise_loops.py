"""Noise rules, loops: mail that already passed through us or that we sent."""

from __future__ import annotations

import re

from emergencyd.parsers.noise_facts import Facts

_ADDRESS = re.compile(r"[^\s<>()\"',;:@\[\]]+@[A-Za-z0-9.\-\[\]:]+")


def x_loop_names_own_address(facts: Facts) -> str | None:
    if not facts.own_addresses:
        return None
    for value in facts.headers("X-Loop"):
        candidates = {m.lower() for m in _ADDRESS.findall(value)} | {value.strip().strip("<>").lower()}
        for address in sorted(candidates & facts.own_addresses):
            return f"X-Loop names {address}"
    return None


_RECEIVED_BY = re.compile(r"(?:^|[\s;)])by\s+\[?([A-Za-z0-9][A-Za-z0-9.\-:_]*)", re.IGNORECASE)


def received_by_own_host(facts: Facts) -> str | None:
    if not facts.own_hostnames:
        return None
    for value in facts.headers("Received"):
        for host in _RECEIVED_BY.findall(value):
            host = host.lower().rstrip(".]")
            if host in facts.own_hostnames:
                return f"Received header 'by {host}': the message already passed through us"
    return None


def sent_from_own_address(facts: Facts) -> str | None:
    if facts.sender and facts.sender in facts.own_addresses:
        return f"From is our own address {facts.sender}"
    return None
