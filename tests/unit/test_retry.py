"""The one retry classification, table-driven over status codes and error kinds."""
import email.utils

import httpx2
import pytest
import requests

from emergencyd.escalation.retry import (
    MAX_RETRY_AFTER_SECONDS,
    Failure,
    HttpStatusError,
    RetrySchedule,
    TransientError,
    classify,
    parse_retry_after,
)

RETRIED = [408, 429, 500, 502, 503, 504, 599]
PERMANENT = [400, 401, 403, 404, 409, 413, 422]
MISSING_KEY = "incident"     # the key of an unexpected KeyError


@pytest.mark.parametrize("status", RETRIED)
def test_transient_statuses_are_retried(status):
    failure = classify(HttpStatusError("zendesk", status, "busy", None))
    assert failure.retryable and failure.status == status


@pytest.mark.parametrize("status", PERMANENT)
def test_other_client_errors_are_permanent_and_keep_the_body(status):
    failure = classify(HttpStatusError("pagerduty", status, '{"error":"Invalid routing key"}', None))
    assert not failure.retryable
    assert "Invalid routing key" in failure.reason and failure.status_class == "4xx"


@pytest.mark.parametrize("exc", [
    requests.ConnectionError("refused"), requests.Timeout("slow"), httpx2.ConnectError("refused"),
    httpx2.ReadTimeout("slow"), ConnectionResetError(), TimeoutError(),
])
def test_network_errors_are_retried(exc):
    failure = classify(exc)
    assert failure.retryable and failure.reason.startswith("network:") and failure.status_class == "network"


def test_wrapped_network_errors_are_found_through_the_chain():
    try:
        try:
            raise httpx2.ConnectError("refused")
        except httpx2.ConnectError as inner:
            raise RuntimeError("client gave up") from inner
    except RuntimeError as outer:
        assert classify(outer).reason.startswith("network: ConnectError")


def test_unknown_errors_stay_on_the_schedule_and_are_named():
    failure = classify(KeyError(MISSING_KEY))
    assert failure.retryable and "KeyError" in failure.reason
    assert classify(TransientError("incident not visible yet")).retryable


def test_retry_after_in_seconds_and_as_http_date():
    now = 1_800_000_000.0
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(email.utils.formatdate(now + 42, usegmt=True), now=now) == pytest.approx(42)
    assert parse_retry_after(email.utils.formatdate(now - 10, usegmt=True), now=now) == 0.0
    assert parse_retry_after("999999999") == MAX_RETRY_AFTER_SECONDS
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None and parse_retry_after("") is None


def test_schedule_backs_off_and_honours_retry_after():
    schedule = RetrySchedule(initial_seconds=1, max_seconds=60, max_attempts=5)
    transient = Failure(True, "HTTP 503", status=503)
    delays = [schedule.next_attempt_at(transient, n, now=0.0) for n in range(1, 5)]
    assert all(d is not None and 1 <= d <= 60 for d in delays)
    assert delays[-1] > delays[0]
    rate_limited = Failure(True, "HTTP 429", status=429, retry_after=30)
    assert schedule.next_attempt_at(rate_limited, 1, now=0.0) >= 30


def test_schedule_stops_at_permanent_failures_and_at_max_attempts():
    schedule = RetrySchedule(initial_seconds=1, max_seconds=60, max_attempts=3)
    assert schedule.next_attempt_at(Failure(False, "HTTP 400", status=400), 1) is None
    assert schedule.next_attempt_at(Failure(True, "HTTP 503", status=503), 3) is None
