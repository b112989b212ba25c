"""A fake Zendesk Support API (the part emergencyd uses), for the real `zenpy` client.

Shapes, status codes and headers follow real recorded exchanges (zenpy's betamax
cassettes): 201 + {"ticket", "audit"} + Location on create, 200 + {"ticket", "audit"}
on update, {"error": "RecordNotFound", "description": "Not found"} for unknown ids,
cursor pagination (meta/links) when `page[size]` is asked for, X-Rate-Limit headers.

How zenpy reaches it (zenpy has no base-URL option; it builds
``https://{subdomain}.{domain}/api/v2``)::

    session = requests.Session()
    session.trust_env = False          # else REQUESTS_CA_BUNDLE overrides verify
    session.verify = str(ca_pem_path)  # TestCA.write_ca_pem(...)
    zd = Zenpy(subdomain="127", domain=f"0.0.1:{fake.port}",
               email=fake.email, token=fake.token, session=session, disable_cache=True)

zenpy accepts `session` together with `email`/`token`: it sets
``session.auth = ("EMAIL/token", TOKEN)`` on the session it is given. It does not mount
its own retrying HTTPAdapter on a session you pass, so connection errors surface at once.

Quirks of zenpy seen against this fake (they hold for real Zendesk too):

* A 200 whose body is not JSON is *returned* as the raw `requests.Response` instead of
  raising (zenpy's HTTPOKResponseHandler); a non-JSON 201 raises ZenpyException
  "Could not handle response".
* zenpy fetches related objects lazily: reading `ticket.requester`, `comment.author`,
  `audit.ticket`... issues GET /users/{id}.json (or /tickets/{id}.json). With
  `disable_cache=True` every such read is a new request.
* A 429 with an integer Retry-After makes zenpy sleep and retry in place (whole
  seconds, no limit unless `ratelimit_budget`); an HTTP-date Retry-After crashes in
  `int()` with ValueError; a 429 without Retry-After raises APIException.

Search is served for ticket queries (`type:ticket`, `external_id:`, `status:`,
`tags:`, `priority:`, `ticket_type:` and free text over subject/description);
anything else answers 400 so an unsupported query fails loudly rather than
matching nothing. Real Zendesk indexes new tickets for search only after a delay;
`search_index_delay` imitates that (0 by default).
"""

from __future__ import annotations

import base64
import copy
import re
import shlex
import time
from collections import deque
from datetime import datetime, timezone
from typing import Any, Callable
from urllib.parse import urlencode

from .http import FakeHTTPSServer, RecordedRequest, Response, json_response
from .tls import TestCA

TICKET_TYPES = (None, "problem", "incident", "question", "task")
PRIORITIES = (None, "urgent", "high", "normal", "low")
STATUSES = ("new", "open", "pending", "hold", "solved", "closed")
STATUS_NEW = "new"                # a ticket no agent has updated yet
COMMENT_FIELD = "comment"         # the ticket field holding a new comment
TICKET_RESULT_TYPE = "ticket"     # the search API's name of a ticket: result_type, type:ticket
PAGE_PARAMS = "page"              # the pagination query parameters: page, page[size], page[after]
VIA_API = {"channel": "api", "source": {"from": {}, "to": {}, "rel": None}}
RATE_LIMIT = 700  # the per-minute figure real accounts report in X-Rate-Limit

NOT_FOUND = {"error": "RecordNotFound", "description": "Not found"}
ERROR_BODIES: dict[int, Any] = {
    400: {"error": "InvalidValue", "description": "Invalid request"},
    401: {"error": "Couldn't authenticate you"},
    403: {
        "error": "Forbidden",
        "description": "You do not have access to this page. Please contact the account owner of this help desk for further help.",
    },
    404: NOT_FOUND,
    409: {"error": "Conflict", "description": "The request conflicted with another request"},
    422: {
        "error": "RecordInvalid",
        "description": "Record validation errors",
        "details": {"base": [{"description": "Record is invalid", "error": "InvalidValue"}]},
    },
    429: {"error": "APIRateLimitExceeded", "description": "Number of allowed API requests per minute exceeded"},
}


class ApiError(Exception):
    """Raised inside a route to answer an error."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(status, body)
        self.status, self.body = status, body


def _invalid(field: str, description: str, error: str = "InvalidValue") -> ApiError:
    return ApiError(
        422,
        {
            "error": "RecordInvalid",
            "description": "Record validation errors",
            "details": {field: [{"description": description, "error": error}]},
        },
    )


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _normalize_tags(tags: Any) -> list[str]:
    # Zendesk tags hold no spaces: "a b" becomes two tags. Duplicates collapse.
    out: list[str] = []
    for tag in tags or []:
        for part in str(tag).split():
            if part not in out:
                out.append(part)
    return out


class FakeZendesk(FakeHTTPSServer):
    def __init__(
        self,
        email: str = "agent@example.com",
        token: str = "zendesk-api-token",
        ca: TestCA | None = None,
        search_index_delay: float = 0.0,
    ) -> None:
        super().__init__(ca)
        self.email = email
        self.token = token
        self.search_index_delay = search_index_delay
        self._tickets: dict[int, dict[str, Any]] = {}
        self._indexed_at: dict[int, float] = {}  # monotonic creation time, for search lag
        self._comments: dict[int, list[dict[str, Any]]] = {}
        self._users: dict[int, dict[str, Any]] = {}
        self._organizations: dict[int, dict[str, Any]] = {}
        self._next_organization_id = 360001
        self._next_ticket_id = 1
        self._next_user_id = 10001
        self._next_event_id = 50001  # comments, audits and audit events share one sequence
        self._recent: deque[float] = deque()  # request times, for X-Rate-Limit-Remaining
        self.agent_id = self._add_user(email, "Emergency Agent", role="admin")["id"]
        self._routes: list[tuple[str, re.Pattern[str], Callable[..., Response]]] = [
            ("POST", re.compile(r"/api/v2/tickets\.json"), self._create_ticket),
            ("GET", re.compile(r"/api/v2/tickets\.json"), self._list_tickets),
            ("GET", re.compile(r"/api/v2/tickets/(\d+)\.json"), self._show_ticket),
            ("PUT", re.compile(r"/api/v2/tickets/(\d+)\.json"), self._update_ticket),
            ("GET", re.compile(r"/api/v2/tickets/(\d+)/comments\.json"), self._list_comments),
            ("GET", re.compile(r"/api/v2/search\.json"), self._search),
            ("GET", re.compile(r"/api/v2/users/me\.json"), self._show_me),
            ("POST", re.compile(r"/api/v2/users/create_or_update\.json"), self._create_or_update_user),
            ("GET", re.compile(r"/api/v2/users/show_many\.json"), self._show_many_users),
            ("GET", re.compile(r"/api/v2/users/(\d+)\.json"), self._show_user),
            ("GET", re.compile(r"/api/v2/users\.json"), self._list_users),
            ("GET", re.compile(r"/api/v2/organizations\.json"), self._list_organizations),
        ]

    # --- helpers for tests ---------------------------------------------------

    def tickets(self) -> list[dict[str, Any]]:
        with self.state_lock:
            return [copy.deepcopy(t) for _, t in sorted(self._tickets.items())]

    def ticket(self, ticket_id: int) -> dict[str, Any] | None:
        with self.state_lock:
            return copy.deepcopy(self._tickets.get(ticket_id))

    def comments(self, ticket_id: int) -> list[dict[str, Any]]:
        with self.state_lock:
            return copy.deepcopy(self._comments.get(ticket_id, []))

    def tickets_with_external_id(self, external_id: str) -> list[dict[str, Any]]:
        return [t for t in self.tickets() if t["external_id"] == external_id]

    def find_ticket(self, **fields: Any) -> dict[str, Any] | None:
        """The first ticket whose fields equal all of `fields`, e.g. find_ticket(external_id="x")."""
        for ticket in self.tickets():
            if all(ticket.get(k) == v for k, v in fields.items()):
                return ticket
        return None

    def users(self) -> list[dict[str, Any]]:
        with self.state_lock:
            return [copy.deepcopy(u) for _, u in sorted(self._users.items())]

    def user_by_email(self, email: str) -> dict[str, Any] | None:
        with self.state_lock:
            user = self._find_user(email)
            return copy.deepcopy(user)

    def add_organization(self, name: str, domain_names: list[str]) -> dict[str, Any]:
        """An organization as Zendesk's API shows it (GET /api/v2/organizations.json)."""
        with self.state_lock:
            org_id = self._next_organization_id
            self._next_organization_id += 1
            now = _now()
            organization = {
                "id": org_id, "url": self._link(f"organizations/{org_id}.json"), "name": name,
                "shared_tickets": False, "shared_comments": False, "external_id": None, "created_at": now,
                "updated_at": now, "domain_names": list(domain_names), "details": "", "notes": "",
                "group_id": None, "tags": [], "organization_fields": {},
            }
            self._organizations[org_id] = organization
            return copy.deepcopy(organization)

    def add_end_user(self, email: str, name: str, organization_id: int | None = None) -> dict[str, Any]:
        """An end user, a member of the organization when one is given."""
        with self.state_lock:
            user = self._add_user(email, name, role="end-user")
            user["organization_id"] = organization_id
            return copy.deepcopy(user)

    def seed_ticket(self, **fields: Any) -> dict[str, Any]:
        """Create a ticket directly (no HTTP), e.g. one that existed before the daemon ran.

        Accepts the API's ticket fields; `comment` defaults to a public one from the agent.
        """
        fields.setdefault("comment", {"body": fields.get("description") or "Seeded ticket"})
        with self.state_lock:
            ticket, _ = self._apply_create(fields)
            return copy.deepcopy(ticket)

    def set_ticket_fields(self, ticket_id: int, **fields: Any) -> dict[str, Any]:
        """Change a ticket directly (no HTTP, no audit), e.g. status="closed"."""
        with self.state_lock:
            ticket = self._tickets[ticket_id]
            ticket.update(fields)
            ticket["updated_at"] = _now()
            return copy.deepcopy(ticket)

    # --- HTTP plumbing ------------------------------------------------------------

    def route(self, req: RecordedRequest) -> Response:
        if not self._authorized(req):
            return json_response(401, ERROR_BODIES[401], {"WWW-Authenticate": 'Basic realm="Web Password"'})
        for method, pattern, handler in self._routes:
            match = pattern.fullmatch(req.path)
            if match and method == req.method:
                try:
                    return handler(req, *match.groups())
                except ApiError as err:
                    return json_response(err.status, err.body)
        return json_response(404, {"error": "InvalidEndpoint", "description": "Not found"})

    def common_headers(self, req: RecordedRequest) -> dict[str, str]:
        now = time.monotonic()
        with self.state_lock:
            self._recent.append(now)
            while self._recent and self._recent[0] < now - 60:
                self._recent.popleft()
            remaining = max(0, RATE_LIMIT - len(self._recent))
        return {
            "X-Rate-Limit": str(RATE_LIMIT),
            "X-Rate-Limit-Remaining": str(remaining),
            "X-Zendesk-API-Version": "v2",
        }

    def error_body(self, status: int, req: RecordedRequest) -> Any:
        if status in ERROR_BODIES:
            return ERROR_BODIES[status]
        return {"error": "ServiceUnavailable" if status == 503 else "InternalError",
                "description": "Zendesk is temporarily unavailable" if status >= 500 else "Error"}

    def default_success_status(self, req: RecordedRequest) -> int:
        return 201 if (req.method, req.path) == ("POST", "/api/v2/tickets.json") else 200

    def _authorized(self, req: RecordedRequest) -> bool:
        expected = base64.b64encode(f"{self.email}/token:{self.token}".encode()).decode()
        return req.headers.get("Authorization", "") == f"Basic {expected}"

    def _link(self, path: str) -> str:
        return f"{self.url}/api/v2/{path}"

    # --- tickets -----------------------------------------------------------------

    def _create_ticket(self, req: RecordedRequest) -> Response:
        data = (req.json or {}).get("ticket")
        if not isinstance(data, dict):
            raise ApiError(400, {"error": "InvalidValue", "description": "ticket parameter is missing"})
        ticket, audit = self._apply_create(data, client=req.headers.get("User-Agent"))
        location = self._link(f"tickets/{ticket['id']}.json")
        return json_response(201, {"ticket": ticket, "audit": audit}, {"Location": location})

    def _apply_create(self, data: dict[str, Any], client: str | None = None) -> tuple[dict, dict]:
        comment_in = data.get("comment") or {}
        body = comment_in.get("body") or comment_in.get("html_body") or data.get("description")
        if not body:
            raise _invalid("description", "Description: cannot be blank", "BlankValue")
        self._validate(data)
        requester_id = self._resolve_requester(data)

        now = _now()
        ticket_id = self._next_ticket_id
        ticket = {
            "url": self._link(f"tickets/{ticket_id}.json"),
            "id": ticket_id,
            "external_id": data.get("external_id"),
            "via": VIA_API,
            "created_at": now,
            "updated_at": now,
            "type": data.get("type"),
            "subject": data.get("subject"),
            "raw_subject": data.get("subject"),
            "description": body,
            "priority": data.get("priority"),
            "status": data.get("status") or ("open" if data.get("assignee_id") else STATUS_NEW),
            "recipient": data.get("recipient"),
            "requester_id": requester_id,
            "submitter_id": data.get("submitter_id") or self.agent_id,
            "assignee_id": data.get("assignee_id"),
            "organization_id": None,
            "group_id": data.get("group_id"),
            "collaborator_ids": [],
            "follower_ids": [],
            "email_cc_ids": [],
            "forum_topic_id": None,
            "problem_id": data.get("problem_id"),
            "has_incidents": False,
            "is_public": bool(comment_in.get("public", True)),
            "due_at": data.get("due_at"),
            "tags": _normalize_tags(data.get("tags")),
            "custom_fields": data.get("custom_fields") or [],
            "satisfaction_rating": None,
            "sharing_agreement_ids": [],
            "custom_status_id": 1,
            "fields": data.get("custom_fields") or [],
            "followup_ids": [],
            "ticket_form_id": 1,
            "brand_id": 1,
            "allow_channelback": False,
            "allow_attachments": True,
            "from_messaging_channel": False,
        }
        self._next_ticket_id += 1
        self._tickets[ticket_id] = ticket
        self._indexed_at[ticket_id] = time.monotonic()
        self._comments[ticket_id] = []
        self._link_problem(ticket)

        audit = self._new_audit(ticket_id, comment_in.get("author_id") or self.agent_id, client)
        audit["events"].append(self._add_comment(ticket_id, body, comment_in, audit["id"]))
        for field_name in ("subject", "requester_id", "priority", "type", "status", "tags", "external_id"):
            value = ticket[field_name]
            audit["events"].append({
                "id": self._event_id(),
                "type": "Create",
                "value": " ".join(value) if isinstance(value, list) else (None if value is None else str(value)),
                "field_name": field_name,
            })
        return ticket, audit

    def _update_ticket(self, req: RecordedRequest, ticket_id: str) -> Response:
        ticket = self._tickets.get(int(ticket_id))
        if ticket is None:
            raise ApiError(404, NOT_FOUND)
        data = (req.json or {}).get("ticket")
        if not isinstance(data, dict):
            raise ApiError(400, {"error": "InvalidValue", "description": "ticket parameter is missing"})
        if ticket["status"] == "closed":
            raise _invalid("status", "Status: closed prevents ticket update", "ClosedPreventsUpdate")
        self._validate(data)

        audit = self._new_audit(ticket["id"], (data.get("comment") or {}).get("author_id") or self.agent_id,
                                req.headers.get("User-Agent"))
        comment_in = data.get("comment")
        if comment_in:
            body = comment_in.get("body") or comment_in.get("html_body")
            if not body:
                raise _invalid(COMMENT_FIELD, "Comment: cannot be blank", "BlankValue")
            audit["events"].append(self._add_comment(ticket["id"], body, comment_in, audit["id"]))

        changes = {k: data[k] for k in (
            "subject", "status", "priority", "type", "external_id", "problem_id", "assignee_id",
            "group_id", "requester_id", "due_at", "custom_fields",
        ) if k in data}
        if "tags" in data:
            changes["tags"] = _normalize_tags(data["tags"])
        if "additional_tags" in data or "remove_tags" in data:
            tags = changes.get("tags", ticket["tags"])
            tags = _normalize_tags(tags + _normalize_tags(data.get("additional_tags")))
            removed = set(_normalize_tags(data.get("remove_tags")))
            changes["tags"] = [t for t in tags if t not in removed]
        if ticket["status"] == STATUS_NEW and "status" not in changes:
            changes["status"] = "open"  # an agent's update opens a new ticket
        if "subject" in changes:
            changes["raw_subject"] = changes["subject"]

        for name, value in changes.items():
            previous = ticket.get(name)
            if previous != value:
                ticket[name] = value
                if name != "raw_subject":
                    audit["events"].append({"id": self._event_id(), "type": "Change", "field_name": name,
                                            "value": value, "previous_value": previous})
        self._link_problem(ticket)
        ticket["updated_at"] = _now()
        return json_response(200, {"ticket": ticket, "audit": audit})

    def _show_ticket(self, req: RecordedRequest, ticket_id: str) -> Response:
        ticket = self._tickets.get(int(ticket_id))
        if ticket is None:
            raise ApiError(404, NOT_FOUND)
        return json_response(200, {"ticket": ticket})

    def _list_tickets(self, req: RecordedRequest) -> Response:
        tickets = [t for _, t in sorted(self._tickets.items())]
        if "external_id" in req.query:
            tickets = [t for t in tickets if t["external_id"] == req.query["external_id"]]
        return self._paginate(req, "tickets", tickets)

    def _list_comments(self, req: RecordedRequest, ticket_id: str) -> Response:
        if int(ticket_id) not in self._tickets:
            raise ApiError(404, NOT_FOUND)
        return self._paginate(req, "comments", self._comments[int(ticket_id)])

    def _validate(self, data: dict[str, Any]) -> None:
        if data.get("type") not in TICKET_TYPES:
            raise _invalid("type", f"Type: {data['type']} is not valid")
        if data.get("priority") not in PRIORITIES:
            raise _invalid("priority", f"Priority: {data['priority']} is not valid")
        if "status" in data and data["status"] not in STATUSES:
            raise _invalid("status", f"Status: {data['status']} is not valid")
        problem_id = data.get("problem_id")
        if problem_id is not None:
            problem = self._tickets.get(int(problem_id))
            if problem is None or problem["type"] != "problem":
                raise _invalid("problem_id", "Problem: must be a problem ticket")

    def _link_problem(self, ticket: dict[str, Any]) -> None:
        if ticket.get("problem_id") is not None:
            self._tickets[int(ticket["problem_id"])]["has_incidents"] = True

    def _new_audit(self, ticket_id: int, author_id: int, client: str | None) -> dict[str, Any]:
        return {
            "id": self._event_id(),
            "ticket_id": ticket_id,
            "created_at": _now(),
            "author_id": author_id,
            "metadata": {"system": {"client": client, "ip_address": "127.0.0.1"}, "custom": {}},
            "events": [],
            "via": VIA_API,
        }

    def _add_comment(self, ticket_id: int, body: str, comment_in: dict[str, Any], audit_id: int) -> dict[str, Any]:
        comment = {
            "id": self._event_id(),
            "type": "Comment",
            "author_id": comment_in.get("author_id") or self.agent_id,
            "body": body,
            "html_body": comment_in.get("html_body") or f'<div class="zd-comment" dir="auto"><p dir="auto">{body}</p></div>',
            "plain_body": body,
            "public": bool(comment_in.get("public", True)),
            "attachments": [],
            "audit_id": audit_id,
            "via": VIA_API,
            "created_at": _now(),
            "metadata": {"system": {"ip_address": "127.0.0.1"}, "custom": {}},
        }
        self._comments[ticket_id].append(comment)
        return comment

    def _event_id(self) -> int:
        self._next_event_id += 1
        return self._next_event_id - 1

    # --- search ------------------------------------------------------------------

    def _search(self, req: RecordedRequest) -> Response:
        predicates = self._parse_search(req.query.get("query", ""))
        cutoff = time.monotonic() - self.search_index_delay
        results = [
            {**t, "result_type": TICKET_RESULT_TYPE}
            for tid, t in sorted(self._tickets.items())
            if self._indexed_at[tid] <= cutoff and all(p(t) for p in predicates)
        ]
        return json_response(200, {"results": results, "facets": None, "next_page": None,
                                   "previous_page": None, "count": len(results)})

    @staticmethod
    def _parse_search(query: str) -> list[Callable[[dict[str, Any]], bool]]:
        predicates: list[Callable[[dict[str, Any]], bool]] = []
        try:
            terms = shlex.split(query)
        except ValueError as exc:
            raise ApiError(400, {"error": "InvalidQuery", "description": str(exc)}) from exc
        for term in terms:
            key, sep, value = term.partition(":")
            if not sep:
                text = term.lower()
                predicates.append(lambda t, s=text: s in f"{t['subject']} {t['description']}".lower())
            elif key == "type":
                if value != TICKET_RESULT_TYPE:
                    raise ApiError(400, {"error": "InvalidQuery", "description": f"fake Zendesk searches only tickets, not {value}"})
            elif key in ("external_id", "status", "priority"):
                predicates.append(lambda t, k=key, v=value: str(t[k]) == v)
            elif key == "ticket_type":
                predicates.append(lambda t, v=value: t["type"] == v)
            elif key in ("tags", "tag"):
                predicates.append(lambda t, v=value: v in t["tags"])
            else:
                raise ApiError(400, {"error": "InvalidQuery", "description": f"fake Zendesk does not support '{term}'"})
        return predicates

    # --- users -------------------------------------------------------------------

    def _show_user(self, req: RecordedRequest, user_id: str) -> Response:
        user = self._users.get(int(user_id))
        if user is None:
            raise ApiError(404, NOT_FOUND)
        return json_response(200, {"user": user})

    def _create_or_update_user(self, req: RecordedRequest) -> Response:
        """201 when the user is new, 200 when one with that email exists (Zendesk's create_or_update)."""
        data = (req.json or {}).get("user") or {}
        email = data.get("email")
        if not email:
            raise _invalid("email", "Email: cannot be blank")
        user = self._find_user(email)
        if user is not None:
            return json_response(200, {"user": user})
        name = data.get("name") or email.split("@")[0]
        return json_response(201, {"user": self._add_user(email, name, role="end-user")})

    def _show_me(self, req: RecordedRequest) -> Response:
        return json_response(200, {"user": self._users[self.agent_id]})

    def _list_users(self, req: RecordedRequest) -> Response:
        """GET /api/v2/users.json, filtered by role (role=end-user, or role[]=... for several) as Zendesk does."""
        roles = set(req.query_lists.get("role[]", [])) or set(req.query_lists.get("role", []))
        users = [u for _, u in sorted(self._users.items()) if not roles or u["role"] in roles]
        return self._paginate(req, "users", users)

    def _list_organizations(self, req: RecordedRequest) -> Response:
        return self._paginate(req, "organizations", [o for _, o in sorted(self._organizations.items())])

    def _show_many_users(self, req: RecordedRequest) -> Response:
        ids = [int(i) for i in req.query.get("ids", "").split(",") if i.strip()]
        users = [self._users[i] for i in ids if i in self._users]
        return json_response(200, {"users": users, "next_page": None, "previous_page": None, "count": len(users)})

    def _resolve_requester(self, data: dict[str, Any]) -> int:
        requester = data.get("requester")
        if isinstance(requester, dict) and requester.get("email"):
            user = self._find_user(requester["email"])
            if user is None:  # Zendesk creates the end user on the fly
                name = requester.get("name") or requester["email"].split("@")[0]
                user = self._add_user(requester["email"], name, role="end-user")
            return user["id"]
        if data.get("requester_id") is not None:
            if int(data["requester_id"]) not in self._users:
                raise _invalid("requester", "Requester: is invalid")
            return int(data["requester_id"])
        return self.agent_id

    def _find_user(self, email: str) -> dict[str, Any] | None:
        for user in self._users.values():
            if user["email"].lower() == email.lower():
                return user
        return None

    def _add_user(self, email: str, name: str, role: str) -> dict[str, Any]:
        now = _now()
        user_id = self._next_user_id
        self._next_user_id += 1
        user = {
            "id": user_id, "url": self._link(f"users/{user_id}.json"), "name": name, "email": email,
            "created_at": now, "updated_at": now, "time_zone": "Europe/London",
            "iana_time_zone": "Europe/London", "phone": None, "shared_phone_number": None, "photo": None,
            "locale_id": 1, "locale": "en-US", "organization_id": None, "role": role,
            "verified": role != "end-user", "external_id": None, "tags": [], "alias": None, "active": True,
            "shared": False, "shared_agent": False, "last_login_at": None, "two_factor_auth_enabled": None,
            "signature": None, "details": "", "notes": "", "role_type": None,
            # None, so that zenpy never lazily fetches /custom_roles/{id}.json
            "custom_role_id": None, "moderator": role != "end-user",
            "ticket_restriction": "requested" if role == "end-user" else None,
            "only_private_comments": False, "restricted_agent": role == "end-user", "suspended": False,
            "default_group_id": None, "report_csv": False, "user_fields": {},
        }
        self._users[user_id] = user
        return user

    # --- pagination --------------------------------------------------------------

    def _paginate(self, req: RecordedRequest, key: str, items: list[dict[str, Any]]) -> Response:
        """Cursor pagination if `page[size]` is given (what zenpy asks for), else offset pages."""
        base = f"{self.url}{req.path}"
        others = {k: v for k, v in req.query.items() if not k.startswith(PAGE_PARAMS) and k != "per_page"}
        if "page[size]" in req.query:
            size = min(int(req.query["page[size]"]), 100)
            after = req.query.get("page[after]")
            start = int(base64.b64decode(after)) if after else 0
            page = items[start:start + size]
            cursor = base64.b64encode(str(start + len(page)).encode()).decode()
            before = base64.b64encode(str(start).encode()).decode()
            has_more = start + size < len(items)
            return json_response(200, {
                key: page,
                "meta": {"has_more": has_more, "after_cursor": cursor, "before_cursor": before},
                "links": {
                    "prev": f"{base}?{urlencode({**others, 'page[before]': before, 'page[size]': size})}",
                    "next": f"{base}?{urlencode({**others, 'page[after]': cursor, 'page[size]': size})}",
                },
            })
        per_page = min(int(req.query.get("per_page", 100)), 100)
        number = int(req.query.get("page", 1))
        page = items[(number - 1) * per_page:number * per_page]
        more = number * per_page < len(items)
        return json_response(200, {
            key: page,
            "next_page": f"{base}?{urlencode({**others, 'page': number + 1, 'per_page': per_page})}" if more else None,
            "previous_page": f"{base}?{urlencode({**others, 'page': number - 1, 'per_page': per_page})}" if number > 1 else None,
            "count": len(items),
        })
