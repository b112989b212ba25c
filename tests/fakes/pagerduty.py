"""A fake PagerDuty: the Events API v2 and the REST API v2 on one HTTPS server.

Status codes and shapes follow PagerDuty's OpenAPI specs (PagerDuty/api-schema):
Events: 202 {"status": "success", "message": "Event processed", "dedup_key": ...};
400 {"status": "invalid event", "message": "Event object is invalid", "errors": [...]}.
REST: {"incidents": [...], "limit", "offset", "more", "total"} lists,
{"error": {"message", "code", "errors"}} errors, 201 for POST /incidents and 200 for
POST /incidents/{id}/notes (the spec says 200 there, not 201).
The exact texts in `errors` are approximations.

How the real `pagerduty` client (7.2.0, httpx2) reaches it: both clients take
`base_url`, which must be https, and pass other keyword arguments to
`httpx2.Client`. Give `verify` an SSLContext (a path string still works but is
deprecated in httpx2 and warns)::

    events = pagerduty.EventsApiV2Client(routing_key, base_url=fake.url,
                                         verify=ca.client_ssl_context())
    rest = pagerduty.RestApiV2Client(fake.api_token, default_from="oncall@example.com",
                                     base_url=fake.url, verify=ca.client_ssl_context())

Alert model: events act on the open alert with the same (service, dedup_key). A
trigger on an open one is appended to its incident's log; resolve closes it; a
trigger after a resolve opens a new incident. Acknowledge/resolve without an open
alert are accepted (202) and change nothing, as on the real service.
"""

from __future__ import annotations

import copy
import random
import re
import string
import uuid
from datetime import datetime, timezone
from typing import Any, Iterable

from .http import FakeHTTPSServer, RecordedRequest, Response, json_response
from .tls import TestCA

EVENT_ACTIONS = ("trigger", "acknowledge", "resolve")
SEVERITIES = ("critical", "error", "warning", "info")
MAX_SUMMARY = 1024
MAX_DEDUP_KEY = 255
MAX_EVENT_BYTES = 512 * 1024
EVENTS_SUCCESS = "success"   # the Events API's status of an accepted event
INCIDENT_TYPE = "incident"   # the REST API's type of an incident object

REST_NOT_FOUND = {"error": {"message": "Not Found", "code": 2100}}
REST_UNAUTHORIZED = {"error": {"message": "Authentication failed", "code": 2006}}


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _invalid_input(*errors: str) -> Response:
    return json_response(400, {"error": {"message": "Invalid Input Provided", "code": 2001, "errors": list(errors)}})


def _invalid_event(*errors: str) -> Response:
    return json_response(400, {"status": "invalid event", "message": "Event object is invalid", "errors": list(errors)})


class FakePagerDuty(FakeHTTPSServer):
    def __init__(
        self,
        api_token: str = "pagerduty-rest-token",
        routing_keys: Iterable[str] | None = None,
        ca: TestCA | None = None,
        subdomain: str = "example",
    ) -> None:
        """routing_keys: integration keys that exist; None accepts any 32-character key."""
        super().__init__(ca)
        self.api_token = api_token
        self.routing_keys = set(routing_keys) if routing_keys is not None else None
        self.subdomain = subdomain
        self._ids = random.Random(0x9D)  # deterministic, real-looking ids
        self._issued: set[str] = set()
        self._events: list[dict[str, Any]] = []
        self._incidents: dict[str, dict[str, Any]] = {}  # id -> internal record, in creation order
        self._open: dict[tuple[str, str], str] = {}  # (service id, dedup_key) -> incident id
        self._services: dict[str, dict[str, Any]] = {}  # routing key -> service reference
        self._next_number = 1

    # --- helpers for tests ---------------------------------------------------

    def incidents(self) -> list[dict[str, Any]]:
        """Every incident: the REST representation plus dedup_key, routing_key, log and notes."""
        with self.state_lock:
            return [self._describe(rec) for rec in self._incidents.values()]

    def incident(self, incident_id: str) -> dict[str, Any] | None:
        with self.state_lock:
            rec = self._incidents.get(incident_id)
            return self._describe(rec) if rec else None

    def incidents_with_key(self, dedup_key: str) -> list[dict[str, Any]]:
        return [i for i in self.incidents() if i["dedup_key"] == dedup_key]

    def events(self) -> list[dict[str, Any]]:
        """Accepted events, in order, each with the dedup_key used and its incident id (or None)."""
        with self.state_lock:
            return copy.deepcopy(self._events)

    def resolve(self, dedup_key: str) -> dict[str, Any] | None:
        """Resolve the open incident with this key, as a responder would. Returns it, if any."""
        return self._change_status(dedup_key, "resolved")

    def acknowledge(self, dedup_key: str) -> dict[str, Any] | None:
        return self._change_status(dedup_key, "acknowledged")

    def _change_status(self, dedup_key: str, status: str) -> dict[str, Any] | None:
        with self.state_lock:
            for (_, key), incident_id in list(self._open.items()):
                if key == dedup_key:
                    rec = self._incidents[incident_id]
                    self._set_status(rec, status)
                    return self._describe(rec)
        return None

    # --- HTTP plumbing ------------------------------------------------------------

    def route(self, req: RecordedRequest) -> Response:
        if req.path.startswith("/v2/"):
            return self._route_events(req)
        return self._route_rest(req)

    def common_headers(self, req: RecordedRequest) -> dict[str, str]:
        return {"X-Request-Id": uuid.uuid4().hex}

    def error_body(self, status: int, req: RecordedRequest) -> Any:
        if req.path.startswith("/v2/"):
            if status == 429:
                return {"status": "throttle event", "message": "Requests for this service are arriving too quickly.  Please retry later."}
            if status == 400:
                return {"status": "invalid event", "message": "Event object is invalid", "errors": ["Invalid event"]}
            return {"status": "error", "message": "Internal server error", "errors": []}
        known = {
            400: {"error": {"message": "Invalid Input Provided", "code": 2001, "errors": ["Invalid input"]}},
            401: REST_UNAUTHORIZED,
            403: {"error": {"message": "Access Denied", "code": 2010}},
            404: REST_NOT_FOUND,
            429: {"error": {"message": "Rate Limit Exceeded", "code": 2020}},
        }
        return known.get(status, {"error": {"message": "Internal Server Error", "code": 2000}})

    def default_success_status(self, req: RecordedRequest) -> int:
        if req.path.startswith("/v2/"):
            return 202
        return 201 if (req.method, req.path) == ("POST", "/incidents") else 200

    # --- Events API v2 -----------------------------------------------------------

    def _route_events(self, req: RecordedRequest) -> Response:
        if req.method != "POST" or req.path not in ("/v2/enqueue", "/v2/change/enqueue"):
            return json_response(404, {"status": "Not Found", "message": "Not Found"})
        if not isinstance(req.json, dict):
            return json_response(400, {"status": "Unrecognized object", "message": "Event object format is unrecognized",
                                       "errors": ["JSON parse error"]})
        if len(req.body) > MAX_EVENT_BYTES:
            return _invalid_event("Event object is larger than 512 KB")
        if req.path == "/v2/change/enqueue":
            return self._change_event(req.json)
        errors = self._validate_event(req.json)
        if errors:
            return _invalid_event(*errors)

        event = req.json
        dedup_key = event.get("dedup_key") or uuid.uuid4().hex
        service = self._service_for(event["routing_key"])
        incident_id = self._apply_event(service, event, dedup_key)
        self._events.append({**copy.deepcopy(event), "dedup_key": dedup_key, "incident_id": incident_id,
                             "received_at": _now()})
        return json_response(202, {"status": EVENTS_SUCCESS, "message": "Event processed", "dedup_key": dedup_key})

    def _validate_event(self, event: dict[str, Any]) -> list[str]:
        errors = []
        routing_key = event.get("routing_key")
        if not routing_key:
            errors.append("'routing_key' is missing or blank")
        elif not isinstance(routing_key, str) or len(routing_key) != 32:
            errors.append("Length of 'routing_key' is incorrect (should be 32 characters)")
        elif self.routing_keys is not None and routing_key not in self.routing_keys:
            errors.append("Invalid routing key")
        action = event.get("event_action")
        if action not in EVENT_ACTIONS:
            errors.append("'event_action' is missing or invalid (must be trigger, acknowledge or resolve)")
        dedup_key = event.get("dedup_key")
        if dedup_key is not None and (not isinstance(dedup_key, str) or len(dedup_key) > MAX_DEDUP_KEY):
            errors.append(f"'dedup_key' must be a string of at most {MAX_DEDUP_KEY} characters")
        if action in ("acknowledge", "resolve") and not dedup_key:
            errors.append("'dedup_key' is missing or blank")
        if action == "trigger":
            payload = event.get("payload")
            if not isinstance(payload, dict):
                errors.append("'payload' is missing or blank")
            else:
                for name in ("summary", "source", "severity"):
                    if not payload.get(name):
                        errors.append(f"'payload.{name}' is missing or blank")
                if payload.get("severity") and payload["severity"] not in SEVERITIES:
                    errors.append("'payload.severity' is invalid (must be one of critical, error, warning, info)")
                if isinstance(payload.get("summary"), str) and len(payload["summary"]) > MAX_SUMMARY:
                    errors.append(f"'payload.summary' is too long (maximum is {MAX_SUMMARY} characters)")
                if "custom_details" in payload and not isinstance(payload["custom_details"], (dict, str)):
                    errors.append("'payload.custom_details' must be an object")
            for name in ("links", "images"):
                if name in event and not isinstance(event[name], list):
                    errors.append(f"'{name}' must be an array")
        return errors

    def _apply_event(self, service: dict[str, Any], event: dict[str, Any], dedup_key: str) -> str | None:
        key = (service["id"], dedup_key)
        incident_id = self._open.get(key)
        entry = {
            "event_action": event["event_action"],
            "dedup_key": dedup_key,
            "payload": copy.deepcopy(event.get("payload")),
            "links": copy.deepcopy(event.get("links", [])),
            "images": copy.deepcopy(event.get("images", [])),
            "client": event.get("client"),
            "client_url": event.get("client_url"),
            "received_at": _now(),
        }
        action = event["event_action"]
        if action == "trigger":
            if incident_id is None:
                incident_id = self._new_incident(service, dedup_key, event["payload"]["summary"],
                                                 urgency="high", via="events")
            self._incidents[incident_id]["log"].append(entry)  # same alert: no new alert or incident
            return incident_id
        if incident_id is None:
            return None  # nothing open under this key: accepted, no effect
        rec = self._incidents[incident_id]
        rec["log"].append(entry)
        self._set_status(rec, "acknowledged" if action == "acknowledge" else "resolved")
        return incident_id

    def _change_event(self, event: dict[str, Any]) -> Response:
        payload = event.get("payload")
        if not event.get("routing_key") or not isinstance(payload, dict) or not payload.get("summary"):
            return _invalid_event("'routing_key' and 'payload.summary' are required")
        self._events.append({**copy.deepcopy(event), "event_action": "change", "incident_id": None,
                             "received_at": _now()})
        return json_response(202, {"status": EVENTS_SUCCESS, "message": "Change event processed"})

    # --- REST API v2 -------------------------------------------------------------

    def _route_rest(self, req: RecordedRequest) -> Response:
        if req.headers.get("Authorization", "") != f"Token token={self.api_token}":
            return json_response(401, REST_UNAUTHORIZED)
        if req.method in ("POST", "PUT", "PATCH", "DELETE") and not req.headers.get("From"):
            return _invalid_input("You must specify a user's email address in the \"From\" header to perform this action")

        if req.path == "/incidents":
            if req.method == "GET":
                return self._list_incidents(req)
            if req.method == "POST":
                return self._create_incident(req)
        match = re.fullmatch(r"/incidents/(\w+)(/notes)?", req.path)
        if match:
            rec = self._incidents.get(match.group(1))
            if rec is None:
                return json_response(404, REST_NOT_FOUND)
            if match.group(2) is None and req.method == "GET":
                return json_response(200, {"incident": self._rest_incident(rec)})
            if match.group(2) and req.method == "GET":
                return json_response(200, {"notes": rec["notes"]})
            if match.group(2) and req.method == "POST":
                return self._add_note(req, rec)
        return json_response(404, REST_NOT_FOUND)

    def _list_incidents(self, req: RecordedRequest) -> Response:
        records = list(self._incidents.values())
        if "incident_key" in req.query:
            records = [r for r in records if r["dedup_key"] == req.query["incident_key"]]
        statuses = req.query_lists.get("statuses[]")
        if statuses:
            records = [r for r in records if r["status"] in statuses]
        service_ids = req.query_lists.get("service_ids[]")
        if service_ids:
            records = [r for r in records if r["service"]["id"] in service_ids]
        try:
            limit = min(int(req.query.get("limit", 25)), 100)
            offset = int(req.query.get("offset", 0))
        except ValueError:
            return _invalid_input("limit and offset must be integers")
        page = records[offset:offset + limit]
        return json_response(200, {
            "incidents": [self._rest_incident(r) for r in page],
            "limit": limit,
            "offset": offset,
            "more": offset + limit < len(records),
            "total": len(records) if req.query.get("total") == "true" else None,
        })

    def _create_incident(self, req: RecordedRequest) -> Response:
        data = (req.json or {}).get("incident")
        if not isinstance(data, dict) or data.get("type") != INCIDENT_TYPE or not data.get("title"):
            return _invalid_input("Incident type must be 'incident' and title is required")
        service_id = (data.get("service") or {}).get("id")
        if not service_id:
            return _invalid_input("Service is required")
        service = self._service_by_id(service_id)
        key = data.get("incident_key") or uuid.uuid4().hex
        if (service["id"], key) in self._open:
            return _invalid_input("Open incident with matching dedup key already exists on this service")
        incident_id = self._new_incident(service, key, data["title"], urgency=data.get("urgency", "high"), via="rest")
        self._incidents[incident_id]["body"] = data.get("body")
        return json_response(201, {"incident": self._rest_incident(self._incidents[incident_id])})

    def _add_note(self, req: RecordedRequest, rec: dict[str, Any]) -> Response:
        note_in = (req.json or {}).get("note")
        if not isinstance(note_in, dict) or not note_in.get("content"):
            return _invalid_input("Note content can't be blank")
        now = _now()
        author = req.headers.get("From")
        note = {
            "id": self._new_id(),
            "user": {"id": "PUSER01", "type": "user_reference", "summary": author,
                     "self": f"{self.url}/users/PUSER01", "html_url": self._html("users/PUSER01")},
            "channel": {"summary": "The PagerDuty website or APIs"},
            "content": note_in["content"],
            "created_at": now,
            "updated_at": now,
        }
        rec["notes"].append(note)
        return json_response(200, {"note": note})

    # --- model -------------------------------------------------------------------

    def _new_id(self) -> str:
        while True:
            candidate = "P" + "".join(self._ids.choices(string.ascii_uppercase + string.digits, k=6))
            if candidate not in self._issued:
                self._issued.add(candidate)
                return candidate

    def _html(self, path: str) -> str:
        return f"https://{self.subdomain}.pagerduty.com/{path}"

    def _service_for(self, routing_key: str) -> dict[str, Any]:
        if routing_key not in self._services:
            service_id = self._new_id()
            self._services[routing_key] = {
                "id": service_id, "type": "service_reference", "summary": f"Service {service_id}",
                "self": f"{self.url}/services/{service_id}", "html_url": self._html(f"service-directory/{service_id}"),
            }
        return self._services[routing_key]

    def _service_by_id(self, service_id: str) -> dict[str, Any]:
        for service in self._services.values():
            if service["id"] == service_id:
                return service
        service = {"id": service_id, "type": "service_reference", "summary": f"Service {service_id}",
                   "self": f"{self.url}/services/{service_id}", "html_url": self._html(f"service-directory/{service_id}")}
        self._services[f"rest:{service_id}"] = service
        return service

    def _new_incident(self, service: dict[str, Any], dedup_key: str, title: str, urgency: str, via: str) -> str:
        incident_id = self._new_id()
        now = _now()
        self._incidents[incident_id] = {
            "id": incident_id,
            "number": self._next_number,
            "title": title,
            "status": "triggered",
            "dedup_key": dedup_key,
            "service": service,
            "routing_key": next((k for k, s in self._services.items() if s is service and not k.startswith("rest:")), None),
            "urgency": urgency,
            "created_at": now,
            "updated_at": now,
            "last_status_change_at": now,
            "resolved_at": None,
            "first_log_entry_id": "Q" + "".join(self._ids.choices(string.ascii_uppercase + string.digits, k=13)),
            "created_via": via,
            "log": [],
            "notes": [],
        }
        self._next_number += 1
        self._open[(service["id"], dedup_key)] = incident_id
        return incident_id

    def _set_status(self, rec: dict[str, Any], status: str) -> None:
        if rec["status"] == status:
            return
        now = _now()
        rec["status"] = status
        rec["updated_at"] = rec["last_status_change_at"] = now
        if status == "resolved":
            rec["resolved_at"] = now
            self._open.pop((rec["service"]["id"], rec["dedup_key"]), None)

    def _rest_incident(self, rec: dict[str, Any]) -> dict[str, Any]:
        incident_id = rec["id"]
        resolved = rec["status"] == "resolved"
        alerts = 1 if rec["created_via"] == "events" else 0  # REST-made incidents have no alert
        log_id = rec["first_log_entry_id"]
        return {
            "id": incident_id,
            "type": INCIDENT_TYPE,
            "summary": f"[#{rec['number']}] {rec['title']}",
            "self": f"{self.url}/incidents/{incident_id}",
            "html_url": self._html(f"incidents/{incident_id}"),
            "incident_number": rec["number"],
            "title": rec["title"],
            "created_at": rec["created_at"],
            "updated_at": rec["updated_at"],
            "status": rec["status"],
            "incident_key": rec["dedup_key"],
            "service": copy.deepcopy(rec["service"]),
            "assignments": [],
            "assigned_via": "escalation_policy",
            "last_status_change_at": rec["last_status_change_at"],
            "resolved_at": rec["resolved_at"],
            "first_trigger_log_entry": {
                "id": log_id, "type": "trigger_log_entry_reference", "summary": "Triggered through the API",
                "self": f"{self.url}/log_entries/{log_id}?incident_id={incident_id}",
                "html_url": self._html(f"incidents/{incident_id}/log_entries/{log_id}"),
            },
            "alert_counts": {"all": alerts, "triggered": 0 if resolved else alerts, "resolved": alerts if resolved else 0},
            "is_mergeable": True,
            "incident_type": {"name": "incident_default"},
            "escalation_policy": None,
            "teams": [],
            "pending_actions": [],
            "acknowledgements": [],
            "alert_grouping": None,
            "last_status_change_by": copy.deepcopy(rec["service"]),
            "priority": None,
            "resolve_reason": None,
            "conference_bridge": None,
            "incidents_responders": [],
            "responder_requests": [],
            "urgency": rec["urgency"],
        }

    def _describe(self, rec: dict[str, Any]) -> dict[str, Any]:
        return {
            **self._rest_incident(rec),
            "dedup_key": rec["dedup_key"],
            "routing_key": rec["routing_key"],
            "log": copy.deepcopy(rec["log"]),
            "notes": copy.deepcopy(rec["notes"]),
        }
