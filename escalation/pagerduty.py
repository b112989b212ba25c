"""PagerDuty through the `pagerduty` package: Events API v2 to page, REST to link.

The package's own retry loop retries 429 without limit and ignores Retry-After.
Our clients turn every non-2xx answer and every network error into an exception
at once, so our retry schedule, which survives restarts, stays in charge.
"""
from __future__ import annotations

from typing import Any

import httpx2
import pagerduty

from emergencyd.escalation.content import Incident, IncidentNoteRequest, PageRequest
from emergencyd.escalation.retry import (
    HttpStatusError,
    RetryAfterGate,
    parse_retry_after,
    require_json,
)
from emergencyd.escalation.settings import PagerDutyConfig
from emergencyd.escalation.tls import ssl_context


class _FailFast:
    """Mixed into the clients: no in-call retries; non-2xx becomes HttpStatusError; no call
    while the API's last Retry-After lasts (`gate`, set per client)."""

    integration = "pagerduty"
    max_network_attempts = 0
    max_http_attempts = 0
    gate: RetryAfterGate

    def request(self, method: str, url: str, **kwargs: Any) -> httpx2.Response:
        self.gate.check()
        return super().request(method, url, **kwargs)  # type: ignore[misc]  # the client class this is mixed into

    def postprocess(self, response: httpx2.Response) -> None:
        if response.status_code >= 300:
            error = HttpStatusError(self.integration, response.status_code, response.text[:2000],
                                    parse_retry_after(response.headers.get("Retry-After")))
            self.gate.observe(error)
            raise error
        # A note posted into a proxy's error page is not posted: never take it as done.
        require_json(self.integration, response.status_code, response.text)


# The library's own request() and postprocess() take more arguments than these overrides pass on; the
# clients call them only as here.
class _EventsClient(_FailFast, pagerduty.EventsApiV2Client):  # type: ignore[misc]
    pass


class _RestClient(_FailFast, pagerduty.RestApiV2Client):  # type: ignore[misc]
    pass


class PagerDutyPager:
    def __init__(self, config: PagerDutyConfig):
        if config.routing_key is None:
            raise ValueError("a PagerDuty routing key is required")
        verify = ssl_context(config.ca_file)
        self._events = _EventsClient(config.routing_key.value, base_url=config.events_url, verify=verify)
        self._events.retry.clear()
        # Events and REST are rate-limited apart: a pause of the REST API must never hold back a page.
        self._events.gate = RetryAfterGate("pagerduty events")
        self._events.timeout = config.timeout_seconds  # type: ignore[assignment]  # httpx takes a float; typed int
        self._rest: _RestClient | None = None
        if config.api_token is not None:
            self._rest = _RestClient(config.api_token.value, default_from=config.from_email,
                                     base_url=config.api_url, verify=verify)
            self._rest.retry.clear()
            self._rest.gate = RetryAfterGate("pagerduty rest")
            self._rest.timeout = config.timeout_seconds  # type: ignore[assignment]

    @property
    def has_rest_api(self) -> bool:
        return self._rest is not None

    def trigger(self, page: PageRequest) -> str:
        return self._events.trigger(
            summary=page.summary, source=page.source, dedup_key=page.dedup_key, severity=page.severity,
            custom_details=page.custom_details, links=list(page.links) or None)

    def find_incident(self, dedup_key: str) -> Incident | None:
        if self._rest is None:
            return None
        response = self._rest.get("/incidents", params={"incident_key": dedup_key, "date_range": "all"})
        incidents = response.json().get("incidents", [])
        if not incidents:
            return None
        newest = incidents[-1]
        return Incident(id=newest["id"], html_url=newest.get("html_url", ""), status=newest.get("status", ""))

    def has_note(self, incident_id: str, marker: str) -> bool:
        assert self._rest is not None
        notes = self._rest.get(f"/incidents/{incident_id}/notes").json().get("notes", [])
        return any(marker in (n.get("content") or "") for n in notes)

    def add_note(self, incident_id: str, note: IncidentNoteRequest) -> None:
        assert self._rest is not None
        self._rest.post(f"/incidents/{incident_id}/notes", json={"note": {"content": note.content}})
