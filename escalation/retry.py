"""One error classification for every integration call, and the retry schedule.

Network errors, timeouts, 5xx and 429 are transient: retried with exponential
backoff and jitter, never sooner than the server's Retry-After, which also pauses
every other call to that API. A 2xx whose body is not JSON is transient too: it is
not the API's answer. Any other 4xx is
permanent and recorded with the response body. An SMTP relay's 4yz replies are
transient and its 5yz permanent (RFC 5321). The schedule is a timestamp the
store keeps, so it survives restarts; tenacity computes the backoff.
"""
from __future__ import annotations

import email.utils
import json
import smtplib
import threading
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


class MalformedAnswer(Exception):
    """A success status whose body is not the API's JSON: a proxy's error page, a cut-off answer.

    Whether the call took effect is unknown, so it is retried like a lost answer: every step
    looks for its earlier effect before acting again. Taking it as a success would lose a note.
    """

    def __init__(self, integration: str, status: int, body: str):
        super().__init__(f"{integration} answered HTTP {status} with a body that is not JSON: {body[:200]}")


class HeldBack(Exception):
    """A call not made: the service asked for a pause (Retry-After) that has not ended."""

    def __init__(self, integration: str, seconds: float):
        super().__init__(f"{integration} asked for a pause (Retry-After): {seconds:.1f} s left, call not made")
        self.retry_after = seconds


class RetryAfterGate:
    """A service's Retry-After pauses every call to it, not only the step that was told.

    A rate limit is the account's, not the step's: the other steps would only collect more
    429s. A call inside the pause raises HeldBack at once rather than sleeping, so no worker
    thread is tied up, and its step is rescheduled for the end of the pause.
    """

    def __init__(self, integration: str):
        self._integration = integration
        self._until = 0.0                # time.monotonic()
        self._lock = threading.Lock()

    def observe(self, error: HttpStatusError) -> None:
        """429 and 503 may carry a Retry-After; it then holds for the whole service."""
        if error.status in (429, 503) and error.retry_after:
            with self._lock:
                self._until = max(self._until, time.monotonic() + error.retry_after)

    def check(self) -> None:
        with self._lock:
            remaining = self._until - time.monotonic()
        if remaining > 0:
            raise HeldBack(self._integration, remaining)


def require_json(integration: str, status: int, body: str) -> None:
    """Raise MalformedAnswer for a 2xx (other than 204 No Content) whose body is not JSON."""
    if not 200 <= status < 300 or status == 204:
        return
    try:
        json.loads(body)
    except ValueError:
        raise MalformedAnswer(integration, status, body) from None


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
    if isinstance(exc, MalformedAnswer):
        return Failure(True, str(exc)[:300])
    if isinstance(exc, HeldBack):      # counted with the 429 that asked for the pause
        return Failure(True, str(exc), status=429, retry_after=exc.retry_after)
    if isinstance(exc, (smtplib.SMTPResponseException, smtplib.SMTPRecipientsRefused)):
        return _classify_smtp(exc)
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


def _classify_smtp(exc: smtplib.SMTPResponseException | smtplib.SMTPRecipientsRefused) -> Failure:
    """4yz is transient, 5yz permanent; all recipients refused counts as the mildest refusal."""
    message: bytes | str
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        replies = sorted(exc.recipients.values())
        code, message = replies[0] if replies else (0, b"")
    else:
        code, message = exc.smtp_code, exc.smtp_error
    text = message.decode("utf-8", "replace") if isinstance(message, bytes) else str(message)
    if not 400 <= code < 600:     # no reply at all (smtplib's -1): the connection failed
        return Failure(True, f"network: SMTP {type(exc).__name__}: {text}"[:300])
    return Failure(code < 500, f"SMTP {code}: {text}"[:500], status=code)


_NETWORK_ERRORS = (
    requests.ConnectionError, requests.Timeout, httpx2.TransportError, ConnectionError, TimeoutError,
    smtplib.SMTPServerDisconnected,
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
        # No Retrying object: only its wait is asked, which reads the attempt number alone.
        state = tenacity.RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
        state.attempt_number = max(attempts, 1)
        return min(wait(state), self.max_seconds)
