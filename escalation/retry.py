"""One error classification for every integration call, and the retry schedule.

Network errors, timeouts, 5xx and 429 are transient: retried with exponential
backoff and jitter, never sooner than the server's Retry-After. Any other 4xx is
permanent and recorded with the response body. The schedule is a timestamp the
store keeps, so it survives restarts; tenacity computes the backoff.
"""
from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass

import httpx2
import requests
import tenacity

# A Retry-After further out than this is treated as this: an emergency must not sit
# for hours because a server said so, and the schedule's own cap still applies.
MAX_RETRY_AFTER_SECONDS = 3600.0


class HttpStatusError(Exception):
    """A non-2xx answer, raised by our response hooks before a client library acts on it."""

    def __init__(self, integration: str, status: int, body: str, retry_after: float | None):
        super().__init__(f"{integration} answered HTTP {status}: {body[:300]}")
        self.integration = integration
        self.status = status
        self.body = body
        self.retry_after = retry_after


class TransientError(Exception):
    """A condition our own code knows will pass (e.g. an incident not yet visible)."""


@dataclass(frozen=True)
class Failure:
    retryable: bool
    reason: str                      # short, for logs, status and metric labels
    status: int | None = None
    retry_after: float | None = None

    @property
    def status_class(self) -> str:
        return f"{self.status // 100}xx" if self.status else "network"


def classify(exc: BaseException) -> Failure:
    """Decide from an exception whether the call may be retried."""
    if isinstance(exc, HttpStatusError):
        return _classify_status(exc)
    if isinstance(exc, TransientError):
        return Failure(True, str(exc))
    network = _network_cause(exc)
    if network is not None:
        return Failure(True, f"network: {type(network).__name__}: {network}"[:300])
    # Unknown errors are retried on the backoff schedule rather than dropped: a
    # page that is still pending shows up in metrics and alerts; a dropped one does not.
    return Failure(True, f"unexpected: {type(exc).__name__}: {exc}"[:300])


def _classify_status(exc: HttpStatusError) -> Failure:
    status = exc.status
    retryable = status == 429 or status == 408 or status >= 500
    reason = f"HTTP {status}" + (f": {exc.body[:500]}" if exc.body else "")
    return Failure(retryable, reason, status=status, retry_after=exc.retry_after)


_NETWORK_ERRORS = (
    requests.ConnectionError, requests.Timeout, httpx2.TransportError, ConnectionError, TimeoutError,
)


def _network_cause(exc: BaseException) -> BaseException | None:
    """Client libraries wrap network errors in their own exceptions; look through the chain."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, _NETWORK_ERRORS):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Retry-After as delay-seconds or as an HTTP-date (RFC 9110 10.2.3); None when absent or bad."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER_SECONDS)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:
        return None
    delay = when.timestamp() - (time.time() if now is None else now)
    return min(max(delay, 0.0), MAX_RETRY_AFTER_SECONDS)


@dataclass(frozen=True)
class RetrySchedule:
    initial_seconds: float
    max_seconds: float
    max_attempts: int

    def next_attempt_at(self, failure: Failure, attempts: int, *, now: float | None = None) -> float | None:
        """When to try again after `attempts` tries, or None when the failure is final."""
        if not failure.retryable or attempts >= self.max_attempts:
            return None
        now = time.time() if now is None else now
        delay = self.backoff_seconds(attempts)
        if failure.retry_after is not None:
            delay = max(delay, failure.retry_after)
        return now + delay

    def backoff_seconds(self, attempts: int) -> float:
        wait = tenacity.wait_exponential_jitter(initial=self.initial_seconds, max=self.max_seconds,
                                                jitter=self.initial_seconds)
        state = tenacity.RetryCallState(retry_object=None, fn=None, args=(), kwargs={})
        state.attempt_number = max(attempts, 1)
        return min(wait(state), self.max_seconds)
