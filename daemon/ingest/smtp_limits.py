"""SMTP defences that need memory across sessions: concurrent connections and message rates.

A refused client is told to come back later (4xx): its MTA keeps the mail and retries,
so a limit delays mail and never loses it.
"""
from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict, deque
from dataclasses import dataclass


@dataclass(frozen=True)
class Refusal:
    reason: str      # the label of emergencyd_messages_rejected_total
    reply: str       # the SMTP reply


SHUTTING_DOWN = Refusal("shutting_down", "421 4.3.2 Service shutting down, try again later")
TOO_MANY_CONNECTIONS = Refusal("too_many_connections", "421 4.7.0 Too many connections, try again later")
TOO_MANY_FROM_PEER = Refusal("too_many_connections_per_ip",
                             "421 4.7.0 Too many connections from your address, try again later")
PEER_RATE = Refusal("rate_limited_ip", "451 4.7.1 Too many messages from your address, try again later")
LINE_TOO_LONG = Refusal("line_too_long", "554 5.6.0 Line too long: the message was not accepted")
TOO_MANY_RECIPIENTS = Refusal("too_many_recipients", "452 4.5.3 Too many recipients")
IDLE_TIMEOUT = Refusal("timeout", "421 4.4.2 Timeout waiting for the client, closing connection")
SESSION_TOO_LONG = Refusal("session_too_long", "421 4.4.2 Session too long, closing connection")
SENDER_RATE = Refusal("rate_limited_sender", "451 4.7.1 Too many messages from this sender, try again later")
AUTH_THROTTLED = Refusal("auth_throttled", "421 4.7.0 Too many failed authentications, try again later")
# A peer that may not speak PROXY, or spoke it badly, is dropped without a reply: it is not a client.
PROXY_UNTRUSTED = Refusal("proxy_untrusted", "")
PROXY_INVALID = Refusal("proxy_invalid", "")


class Networks:
    """A set of networks: the relay in front, which the per-address limits skip because it sends
    everyone's mail from one address; the load balancers trusted to speak PROXY."""

    def __init__(self, networks: tuple[str, ...] | list[str]):
        self._networks = [ipaddress.ip_network(n, strict=False) for n in networks]

    def __contains__(self, peer: str) -> bool:
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        return any(address in network for network in self._networks)


class ConnectionLimits:
    def __init__(self, total: int, per_peer: int, exempt: Networks | None = None):
        self._total = total
        self._per_peer = per_peer
        self._exempt = exempt or Networks(())
        self._open: dict[str, int] = {}

    def admit(self, peer: str) -> Refusal | None:
        """Count a new connection, or say why it is refused (a refused one is not counted)."""
        if sum(self._open.values()) >= self._total:
            return TOO_MANY_CONNECTIONS
        if self._open.get(peer, 0) >= self._per_peer and peer not in self._exempt:
            return TOO_MANY_FROM_PEER
        self._open[peer] = self._open.get(peer, 0) + 1
        return None

    def release(self, peer: str) -> None:
        left = self._open.get(peer, 0) - 1
        if left > 0:
            self._open[peer] = left
        else:
            self._open.pop(peer, None)


class RateLimit:
    """At most `limit` events per key in any `window_seconds` (0: no limit); remembers at most `max_keys` keys."""

    def __init__(self, limit: int, window_seconds: float, max_keys: int = 10_000):
        self._limit = limit
        self._window = window_seconds
        self._max_keys = max_keys
        self._events: OrderedDict[str, deque[float]] = OrderedDict()

    def allow(self, key: str, now: float | None = None, *, count: bool = True) -> bool:
        """Is an event for key within the limit? Counted only when allowed and `count` is set."""
        if not self._limit:
            return True
        now = time.monotonic() if now is None else now
        events = self._events.pop(key, None) or deque()
        while events and events[0] <= now - self._window:
            events.popleft()
        allowed = len(events) < self._limit
        if allowed and count:
            events.append(now)
        self._events[key] = events          # most recently seen last
        while len(self._events) > self._max_keys:
            self._events.popitem(last=False)
        return allowed
