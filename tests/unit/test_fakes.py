"""The HTTPS fakes, driven only through the real clients the daemon uses.

zenpy (requests) talks to FakeZendesk, the pagerduty package (httpx2) to
FakePagerDuty, both over TLS with a throwaway CA. Raw requests/httpx2 calls are
used only where a client would hide the fault under test (drops, delays, holds).
"""

from __future__ import annotations

import email.utils
import ssl
import threading
import time

import httpx2
import pagerduty
import pytest
import requests
from zenpy import Zenpy
from zenpy.lib.api_objects import Comment, Ticket, User
from zenpy.lib.exception import APIException, RecordNotFoundException, ZenpyException

from tests.fakes.http import http_date
from tests.fakes.pagerduty import FakePagerDuty
from tests.fakes.tls import TestCA
from tests.fakes.zendesk import FakeZendesk

ROUTING_KEY = "0123456789abcdef0123456789abcdef"  # 32 characters, like a real integration key
EXTERNAL_ID = "emergencyd:<CAF1234@mail.example.org>"
ZENDESK_TICKET = "ticket"         # Zendesk's name of a ticket: its JSON object, the search type
ZENDESK_COMMENT = "comment"       # the ticket field holding a new comment
ZENDESK_INCIDENT = "incident"     # a Zendesk ticket type
PAGERDUTY_INCIDENT = "incident"   # the PagerDuty REST type of an incident object


@pytest.fixture(scope="module")
def fake_ca() -> TestCA:
    return TestCA()


@pytest.fixture(scope="module")
def ca_pem(fake_ca, tmp_path_factory):
    return fake_ca.write_ca_pem(tmp_path_factory.mktemp("ca"))


@pytest.fixture
def zd_fake(fake_ca):
    with FakeZendesk(email="bot@example.org", token="zd-token", ca=fake_ca) as fake:
        yield fake
        assert fake.errors == []


@pytest.fixture
def pd_fake(fake_ca):
    with FakePagerDuty(api_token="pd-token", ca=fake_ca) as fake:
        yield fake
        assert fake.errors == []


def make_zenpy(fake: FakeZendesk, ca_pem, token: str | None = None) -> Zenpy:
    """Exactly how the daemon builds its client."""
    session = requests.Session()
    session.trust_env = False  # REQUESTS_CA_BUNDLE would otherwise override verify
    session.verify = str(ca_pem)
    return Zenpy(subdomain="127", domain=f"0.0.1:{fake.port}", email=fake.email,
                 token=token or fake.token, session=session, disable_cache=True)


def new_ticket(external_id: str = EXTERNAL_ID, **fields) -> Ticket:
    return Ticket(
        subject=fields.pop("subject", "Boiler on fire at 3 Acacia Avenue"),
        external_id=external_id,
        priority=fields.pop("priority", "urgent"),
        type=fields.pop("type", "incident"),
        tags=fields.pop("tags", ["emergency", "out-of-hours"]),
        comment=Comment(body="Smoke coming out of the boiler cupboard.", public=False),
        requester=User(email="caller@example.org", name="Caroline Caller"),
        **fields,
    )


@pytest.fixture
def zd(zd_fake, ca_pem):
    return make_zenpy(zd_fake, ca_pem)


def events_client(fake: FakePagerDuty, ca_pem) -> pagerduty.EventsApiV2Client:
    client = pagerduty.EventsApiV2Client(ROUTING_KEY, base_url=fake.url,
                                         verify=ssl.create_default_context(cafile=str(ca_pem)))
    client.sleep_timer, client.sleep_timer_base = 0.01, 1  # its back-off starts at 3 s and doubles otherwise
    return client


def rest_client(fake: FakePagerDuty, ca_pem, **kw) -> pagerduty.RestApiV2Client:
    kw.setdefault("default_from", "oncall@example.com")
    return pagerduty.RestApiV2Client(kw.pop("token", fake.api_token), base_url=fake.url,
                                     verify=ssl.create_default_context(cafile=str(ca_pem)), **kw)


@pytest.fixture
def events(pd_fake, ca_pem):
    with events_client(pd_fake, ca_pem) as client:
        yield client


@pytest.fixture
def rest(pd_fake, ca_pem):
    with rest_client(pd_fake, ca_pem) as client:
        yield client


# --- Zendesk through zenpy -------------------------------------------------------


def test_zenpy_creates_ticket_with_requester_and_private_comment(zd, zd_fake):
    audit = zd.tickets.create(new_ticket())

    ticket = zd_fake.find_ticket(external_id=EXTERNAL_ID)
    assert audit.ticket.id == ticket["id"] == 1
    assert ticket["priority"] == "urgent" and ticket["type"] == ZENDESK_INCIDENT
    assert ticket["tags"] == ["emergency", "out-of-hours"]
    assert ticket["is_public"] is False
    requester = zd_fake.user_by_email("caller@example.org")
    assert requester["name"] == "Caroline Caller" and ticket["requester_id"] == requester["id"]
    [comment] = zd_fake.comments(ticket["id"])
    assert comment["body"] == "Smoke coming out of the boiler cupboard." and comment["public"] is False

    [create] = zd_fake.requests
    assert (create.method, create.path, create.status) == ("POST", "/api/v2/tickets.json", 201)
    assert create.json[ZENDESK_TICKET]["requester"] == {"email": "caller@example.org", "name": "Caroline Caller"}
    assert create.headers["Authorization"].startswith("Basic ")


def test_zenpy_reuses_existing_requester(zd, zd_fake):
    zd.tickets.create(new_ticket("one"))
    zd.tickets.create(new_ticket("two"))
    first, second = zd_fake.tickets()
    assert first["requester_id"] == second["requester_id"]
    assert [u["email"] for u in zd_fake.users()] == ["bot@example.org", "caller@example.org"]


def test_zenpy_finds_ticket_by_external_id_via_list_and_search(zd, zd_fake):
    zd.tickets.create(new_ticket())
    zd.tickets.create(new_ticket("someone-else"))

    listed = list(zd.tickets(external_id=EXTERNAL_ID))
    searched = list(zd.search(type=ZENDESK_TICKET, external_id=EXTERNAL_ID))

    assert [t.id for t in listed] == [t.id for t in searched] == [1]
    assert listed[0].external_id == EXTERNAL_ID
    assert list(zd.tickets(external_id="never-sent")) == []
    [search] = zd_fake.requests_matching(path=r"/search\.json$")
    assert search.query["query"] == f"type:ticket external_id:{EXTERNAL_ID}"


def test_search_index_lags_like_real_zendesk(fake_ca, ca_pem):
    with FakeZendesk(ca=fake_ca, search_index_delay=60) as fake:
        zd = make_zenpy(fake, ca_pem)
        zd.tickets.create(new_ticket())
        assert list(zd.search(type=ZENDESK_TICKET, external_id=EXTERNAL_ID)) == []
        assert len(list(zd.tickets(external_id=EXTERNAL_ID))) == 1  # the list endpoint is consistent


def test_zenpy_update_adds_internal_comment_and_tags(zd, zd_fake):
    ticket_id = zd.tickets.create(new_ticket()).ticket.id
    ticket = zd.tickets(id=ticket_id)
    ticket.comment = Comment(body="PagerDuty incident PABC123 opened", public=False, author_id=zd_fake.agent_id)
    ticket.tags.append("paged")

    audit = zd.tickets.update(ticket)

    assert audit.ticket.status == "open"  # an agent's update opens a new ticket
    stored = zd_fake.ticket(ticket_id)
    assert stored["tags"] == ["emergency", "out-of-hours", "paged"]
    comments = [(c.body, c.public) for c in zd.tickets.comments(ticket=ticket_id)]
    assert comments == [("Smoke coming out of the boiler cupboard.", False),
                        ("PagerDuty incident PABC123 opened", False)]
    assert zd_fake.comments(ticket_id)[1]["author_id"] == zd_fake.agent_id


def test_zenpy_lazily_fetches_users(zd, zd_fake):
    ticket = zd.tickets(id=zd.tickets.create(new_ticket()).ticket.id)
    assert ticket.requester.email == "caller@example.org"
    assert zd_fake.requests[-1].path == f"/api/v2/users/{ticket.requester_id}.json"


def test_zenpy_unknown_ticket_is_record_not_found(zd, zd_fake):
    with pytest.raises(RecordNotFoundException) as exc:
        zd.tickets(id=999)
    assert exc.value.response.status_code == 404
    assert exc.value.response.json() == {"error": "RecordNotFound", "description": "Not found"}


def test_zenpy_wrong_token_is_401(zd_fake, ca_pem):
    zd = make_zenpy(zd_fake, ca_pem, token="wrong")
    with pytest.raises(APIException) as exc:
        zd.tickets.create(new_ticket())
    assert exc.value.response.status_code == 401
    assert exc.value.response.json() == {"error": "Couldn't authenticate you"}
    assert zd_fake.tickets() == []


def test_zenpy_invalid_fields_are_422_record_invalid(zd, zd_fake):
    with pytest.raises(APIException) as exc:
        zd.tickets.create(new_ticket(priority="apocalyptic"))
    assert exc.value.response.status_code == 422
    assert exc.value.response.json()["error"] == "RecordInvalid"
    assert zd_fake.tickets() == []


def test_closed_ticket_rejects_updates(zd, zd_fake):
    seeded = zd_fake.seed_ticket(subject="old", external_id="old", status="closed")
    ticket = zd.tickets(id=seeded["id"])
    ticket.comment = Comment(body="late reply", public=False)
    with pytest.raises(APIException) as exc:
        zd.tickets.update(ticket)
    assert exc.value.response.status_code == 422
    assert len(zd_fake.comments(seeded["id"])) == 1


def test_zendesk_rate_limit_headers(zd, zd_fake):
    zd.tickets.create(new_ticket())
    list(zd.tickets(external_id=EXTERNAL_ID))
    response = requests.get(f"{zd_fake.url}/api/v2/users/me.json", auth=(f"{zd_fake.email}/token", zd_fake.token),
                            verify=zd.tickets.session.verify)
    assert response.headers["X-Rate-Limit"] == "700"
    assert int(response.headers["X-Rate-Limit-Remaining"]) == 700 - 3
    assert response.json()["user"]["id"] == zd_fake.agent_id


# --- Zendesk faults through zenpy ------------------------------------------------


def test_zenpy_waits_out_429_with_retry_after_seconds(zd, zd_fake):
    zd_fake.inject_status(429, headers={"Retry-After": "1"}, path=r"^/api/v2/tickets\.json", method="POST")
    started = time.monotonic()
    zd.tickets.create(new_ticket())
    assert time.monotonic() - started >= 1
    assert [(r.fault, r.status) for r in zd_fake.requests] == [("status:429", 429), (None, 201)]
    assert len(zd_fake.tickets()) == 1


def test_zenpy_crashes_on_429_with_http_date(zd, zd_fake):
    zd_fake.inject_status(429, headers={"Retry-After": lambda: http_date(2)})  # dated when sent
    with pytest.raises(ValueError):  # zenpy does int(Retry-After)
        zd.tickets.create(new_ticket())
    assert zd_fake.tickets() == []
    assert zd_fake.requests[0].fault == "status:429"


def test_callable_header_values_are_evaluated_when_sent(zd_fake, ca_pem):
    # So an HTTP-date Retry-After counts from the response, not from when the test set it up.
    zd_fake.inject_status(429, headers={"Retry-After": lambda: http_date(2), "X-Sent-At": lambda: repr(time.monotonic())})
    response = requests.get(f"{zd_fake.url}/api/v2/tickets.json", verify=str(ca_pem))
    assert float(response.headers["X-Sent-At"]) >= zd_fake.requests[0].received_at
    retry_at = email.utils.parsedate_to_datetime(response.headers["Retry-After"]).timestamp()
    assert 0.5 < retry_at - time.time() <= 2


def test_zenpy_raises_on_429_without_retry_after(zd, zd_fake):
    zd_fake.inject_status(429)
    with pytest.raises(APIException) as exc:
        zd.tickets.create(new_ticket())
    assert exc.value.response.status_code == 429
    assert exc.value.response.json()["error"] == "APIRateLimitExceeded"
    assert "Retry-After" not in exc.value.response.headers
    assert zd_fake.tickets() == []


@pytest.mark.parametrize("status", [500, 502, 503])
def test_zenpy_5xx_changes_nothing(zd, zd_fake, status):
    zd_fake.inject_status(status)
    with pytest.raises(APIException) as exc:
        zd.tickets.create(new_ticket())
    assert exc.value.response.status_code == status
    assert zd_fake.tickets() == []
    zd.tickets.create(new_ticket())  # times=1: the next request is served
    assert len(zd_fake.tickets()) == 1


def test_injected_422_has_zendesk_shape(zd, zd_fake):
    zd_fake.inject_status(422, path="tickets")
    with pytest.raises(APIException) as exc:
        zd.tickets.create(new_ticket())
    assert exc.value.response.json()["details"]["base"][0]["error"] == "InvalidValue"


def test_zenpy_drop_is_connection_error_and_changes_nothing(zd, zd_fake):
    zd_fake.inject_drop(method="POST")
    with pytest.raises(requests.ConnectionError):
        zd.tickets.create(new_ticket())
    assert zd_fake.tickets() == []
    assert zd_fake.requests[0].fault == "drop" and zd_fake.requests[0].status is None


def test_zenpy_malformed_responses(zd, zd_fake):
    zd_fake.inject_malformed(method="POST")  # 201 with an HTML body
    with pytest.raises(ZenpyException, match="Could not handle response"):
        zd.tickets.create(new_ticket())
    assert zd_fake.tickets() == []
    assert zd_fake.requests[0].status == 201

    ticket_id = zd.tickets.create(new_ticket()).ticket.id
    zd_fake.inject_malformed(method="GET")  # 200 with HTML: zenpy hands back the raw Response
    result = zd.tickets(id=ticket_id)
    assert isinstance(result, requests.Response) and result.status_code == 200


def test_zendesk_down_answers_503_until_back(zd, zd_fake):
    zd_fake.set_down(True)
    for _ in range(2):
        with pytest.raises(APIException) as exc:
            zd.tickets.create(new_ticket())
        assert exc.value.response.status_code == 503
    assert zd_fake.tickets() == []
    zd_fake.set_down(False)
    zd.tickets.create(new_ticket())
    assert [r.fault for r in zd_fake.requests] == ["down", "down", None]


def test_delay_answers_late_but_applies_state(zd_fake, ca_pem):
    zd = make_zenpy(zd_fake, ca_pem)
    zd_fake.inject_delay(0.3)
    started = time.monotonic()
    zd.tickets.create(new_ticket())
    assert time.monotonic() - started >= 0.3

    zd.tickets.timeout = 0.1  # the client gives up, yet the ticket was created
    zd_fake.inject_delay(0.5)
    with pytest.raises(requests.exceptions.ReadTimeout):
        zd.tickets.create(new_ticket("second"))
    assert [t["external_id"] for t in zd_fake.tickets()] == [EXTERNAL_ID, "second"]


def test_hold_applies_state_and_withholds_response(zd_fake, ca_pem):
    hold = zd_fake.hold(path=r"^/api/v2/tickets\.json$", method="POST")
    outcome = {}

    def create():
        outcome["audit"] = make_zenpy(zd_fake, ca_pem).tickets.create(new_ticket())

    worker = threading.Thread(target=create)
    worker.start()
    held = hold.wait_received(timeout=5)
    assert held is not None and held.fault == "hold"
    assert zd_fake.find_ticket(external_id=EXTERNAL_ID) is not None  # created...
    time.sleep(0.1)
    assert "audit" not in outcome and worker.is_alive()  # ...but the client does not know yet
    hold.release()
    worker.join(5)
    assert outcome["audit"].ticket.id == 1 and held.status == 201


def test_release_after_client_vanished_keeps_server_alive(zd, zd_fake, ca_pem):
    hold = zd_fake.hold(method="POST")
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.post(f"{zd_fake.url}/api/v2/tickets.json", json={ZENDESK_TICKET: {ZENDESK_COMMENT: {"body": "x"}}},
                      auth=(f"{zd_fake.email}/token", zd_fake.token), verify=str(ca_pem), timeout=0.3)
    assert hold.wait_received(1) is not None
    hold.release()
    time.sleep(0.1)
    assert zd.tickets(id=1).id == 1  # the held create was applied, and the server still serves
    assert zd_fake.errors == []


def test_concurrent_creates_get_distinct_ids(zd_fake, ca_pem):
    def create(n):
        make_zenpy(zd_fake, ca_pem).tickets.create(new_ticket(f"mail-{n}"))

    workers = [threading.Thread(target=create, args=(n,)) for n in range(8)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(10)
    assert sorted(t["id"] for t in zd_fake.tickets()) == list(range(1, 9))
    assert len(zd_fake.requests) == 8


# --- fault bookkeeping -----------------------------------------------------------


def test_fault_filters_counts_and_clear(zd, zd_fake):
    zd_fake.inject_status(503, path=r"/search\.json", times=None)
    zd_fake.inject_status(500, method="PUT", times=2)

    zd.tickets.create(new_ticket())  # POST: neither fault matches
    for _ in range(3):
        with pytest.raises(APIException):
            list(zd.search(type=ZENDESK_TICKET, external_id=EXTERNAL_ID))
    zd_fake.clear_faults()
    assert len(list(zd.search(type=ZENDESK_TICKET, external_id=EXTERNAL_ID))) == 1
    assert [r.fault for r in zd_fake.requests] == [None, "status:503", "status:503", "status:503", None]

    request = zd_fake.requests[0]
    assert request.received_at <= time.monotonic()
    assert request.json[ZENDESK_TICKET]["external_id"] == EXTERNAL_ID and request.body.startswith(b"{")


def test_stopped_fake_refuses_connections(fake_ca, ca_pem):
    fake = FakeZendesk(ca=fake_ca).start()
    zd = make_zenpy(fake, ca_pem)
    zd.tickets.create(new_ticket())
    fake.stop()
    with pytest.raises(requests.ConnectionError):
        zd.tickets.create(new_ticket())


# --- PagerDuty Events API v2 through the pagerduty client ------------------------


def test_trigger_opens_incident_with_links_and_details(events, pd_fake):
    key = events.trigger("Boiler on fire at 3 Acacia Avenue", "emergencyd", dedup_key="mail-1",
                         links=[{"href": "https://example.zendesk.com/agent/tickets/1", "text": "Zendesk #1"}],
                         custom_details={"from": "caller@example.org", "ticket": 1})
    assert key == "mail-1"

    [incident] = pd_fake.incidents()
    assert incident["status"] == "triggered" and incident["incident_key"] == incident["dedup_key"] == "mail-1"
    assert incident["html_url"] == f"https://example.pagerduty.com/incidents/{incident['id']}"
    assert len(incident["id"]) == 7 and incident["id"].startswith("P")
    [entry] = incident["log"]
    assert entry["links"] == [{"href": "https://example.zendesk.com/agent/tickets/1", "text": "Zendesk #1"}]
    assert entry["payload"]["custom_details"] == {"from": "caller@example.org", "ticket": 1}
    assert pd_fake.requests[0].status == 202


def test_same_dedup_key_twice_is_one_incident(events, pd_fake):
    events.trigger("Boiler on fire", "emergencyd", dedup_key="mail-1")
    events.trigger("Boiler on fire (reply)", "emergencyd", dedup_key="mail-1")
    [incident] = pd_fake.incidents()
    assert [e["payload"]["summary"] for e in incident["log"]] == ["Boiler on fire", "Boiler on fire (reply)"]


def test_resolve_then_trigger_is_a_new_incident(events, pd_fake):
    events.trigger("Boiler on fire", "emergencyd", dedup_key="mail-1")
    events.resolve("mail-1")
    events.trigger("Boiler on fire again", "emergencyd", dedup_key="mail-1")
    first, second = pd_fake.incidents()
    assert (first["status"], second["status"]) == ("resolved", "triggered")
    assert first["id"] != second["id"]

    pd_fake.resolve("mail-1")  # a responder resolves it
    assert [i["status"] for i in pd_fake.incidents_with_key("mail-1")] == ["resolved", "resolved"]


def test_trigger_without_dedup_key_gets_one(events, pd_fake):
    key = events.trigger("Boiler on fire", "emergencyd")
    assert len(key) == 32 and pd_fake.incidents()[0]["dedup_key"] == key


@pytest.mark.parametrize("call, error", [
    (lambda c: c.trigger("x" * 1025, "emergencyd"), "'payload.summary' is too long"),
    (lambda c: c.trigger("summary", "emergencyd", dedup_key="k" * 256), "'dedup_key' must be"),
    (lambda c: c.trigger("summary", ""), "'payload.source' is missing"),
    (lambda c: c.trigger("summary", "emergencyd", severity="apocalyptic"), "'payload.severity' is invalid"),
])
def test_invalid_events_are_400(events, pd_fake, call, error):
    with pytest.raises(pagerduty.HttpError) as exc:
        call(events)
    body = exc.value.response.json()
    assert exc.value.response.status_code == 400
    assert body["status"] == "invalid event" and body["message"] == "Event object is invalid"
    assert any(e.startswith(error) for e in body["errors"]), body["errors"]
    assert pd_fake.incidents() == []


def test_routing_key_must_be_32_characters(pd_fake, ca_pem):
    with pagerduty.EventsApiV2Client("short", base_url=pd_fake.url,
                                     verify=ssl.create_default_context(cafile=str(ca_pem))) as client:
        with pytest.raises(pagerduty.HttpError) as exc:
            client.trigger("summary", "emergencyd")
    assert "routing_key" in exc.value.response.json()["errors"][0]


def test_verify_as_a_path_string_works_but_warns(pd_fake, ca_pem):
    with pytest.warns(DeprecationWarning, match="verify=<str>"):
        client = pagerduty.EventsApiV2Client(ROUTING_KEY, base_url=pd_fake.url, verify=str(ca_pem))
    with client:
        assert client.trigger("summary", "emergencyd", dedup_key="k") == "k"


# --- PagerDuty faults through the pagerduty client -------------------------------


def test_events_429_is_retried_and_retry_after_ignored(events, pd_fake):
    pd_fake.inject_status(429, headers={"Retry-After": "30"})
    started = time.monotonic()
    events.trigger("Boiler on fire", "emergencyd", dedup_key="mail-1")
    assert time.monotonic() - started < 5  # it did not wait 30 s
    assert [(r.fault, r.status) for r in pd_fake.requests] == [("status:429", 429), (None, 202)]
    assert pd_fake.requests[0].json["dedup_key"] == "mail-1"
    assert len(pd_fake.incidents()) == 1


def test_events_429_can_be_bounded(events, pd_fake):
    pd_fake.inject_status(429, headers={"Retry-After": http_date(2)}, times=None)
    events.retry[429] = 1  # one retry, then give the 429 back
    with pytest.raises(pagerduty.HttpError) as exc:
        events.trigger("Boiler on fire", "emergencyd", dedup_key="mail-1")
    assert exc.value.response.status_code == 429
    assert exc.value.response.json()["status"] == "throttle event"
    assert len(pd_fake.requests) == 2 and pd_fake.incidents() == []


def test_events_503_is_retried_by_the_client(events, pd_fake):
    pd_fake.inject_status(503, times=2)
    events.trigger("Boiler on fire", "emergencyd", dedup_key="mail-1")
    assert [r.status for r in pd_fake.requests] == [503, 503, 202]
    assert len(pd_fake.incidents()) == 1


def test_events_drop_is_retried_and_drop_changes_nothing(events, pd_fake):
    pd_fake.inject_drop()
    events.trigger("Boiler on fire", "emergencyd", dedup_key="mail-1")
    assert [r.fault for r in pd_fake.requests] == ["drop", None]
    assert len(pd_fake.incidents()) == 1 and len(pd_fake.events()) == 1


def test_events_malformed_202_raises(events, pd_fake):
    pd_fake.inject_malformed()
    with pytest.raises(pagerduty.ServerHttpError, match="invalid JSON"):
        events.trigger("Boiler on fire", "emergencyd", dedup_key="mail-1")
    assert pd_fake.requests[0].status == 202
    assert pd_fake.incidents() == []


def test_events_down_exhausts_client_retries(events, pd_fake):
    pd_fake.set_down(True)
    with pytest.raises(pagerduty.ServerHttpError):
        events.trigger("Boiler on fire", "emergencyd", dedup_key="mail-1")
    assert len(pd_fake.requests) == 7  # 1 + the client's 6 retries for 503
    assert pd_fake.incidents() == []


def test_events_hold_applies_then_withholds(pd_fake, ca_pem):
    hold = pd_fake.hold(path="/v2/enqueue")
    result = {}

    def trigger():
        with events_client(pd_fake, ca_pem) as client:
            result["key"] = client.trigger("Boiler on fire", "emergencyd", dedup_key="mail-1")

    worker = threading.Thread(target=trigger)
    worker.start()
    assert hold.wait_received(5) is not None
    assert len(pd_fake.incidents_with_key("mail-1")) == 1 and "key" not in result
    hold.release()
    worker.join(5)
    assert result["key"] == "mail-1"


def test_delay_through_httpx2_timeout(pd_fake, ca_pem):
    pd_fake.inject_delay(0.5)
    with httpx2.Client(verify=ssl.create_default_context(cafile=str(ca_pem)), timeout=0.1) as client:
        with pytest.raises(httpx2.ReadTimeout):
            client.post(f"{pd_fake.url}/v2/enqueue", json={
                "routing_key": ROUTING_KEY, "event_action": "trigger", "dedup_key": "mail-1",
                "payload": {"summary": "s", "source": "emergencyd", "severity": "critical"}})
    assert len(pd_fake.incidents_with_key("mail-1")) == 1  # applied although the client gave up


# --- PagerDuty REST API v2 through the pagerduty client --------------------------


def test_rest_lists_incidents_by_key_and_posts_note(events, rest, pd_fake):
    events.trigger("Boiler on fire", "emergencyd", dedup_key="mail-1")
    events.trigger("Something else", "emergencyd", dedup_key="mail-2")

    [incident] = rest.list_all("incidents", params={"incident_key": "mail-1"})
    assert incident["incident_key"] == "mail-1" and incident["title"] == "Boiler on fire"
    assert rest.rget(f"/incidents/{incident['id']}")["id"] == incident["id"]

    note = rest.rpost(f"/incidents/{incident['id']}/notes", json={"note": {"content": "Zendesk ticket #1"}})
    assert note["content"] == "Zendesk ticket #1" and note["user"]["summary"] == "oncall@example.com"
    assert [n["content"] for n in rest.rget(f"/incidents/{incident['id']}/notes")] == ["Zendesk ticket #1"]
    assert [n["content"] for n in pd_fake.incident(incident["id"])["notes"]] == ["Zendesk ticket #1"]

    listing = pd_fake.requests_matching(path="^/incidents$", method="GET")[0]
    assert listing.headers["Authorization"] == "Token token=pd-token"
    assert listing.headers["From"] == "oncall@example.com"


def test_rest_list_has_pagination_fields(events, rest, pd_fake):
    for n in range(3):
        events.trigger(f"incident {n}", "emergencyd", dedup_key=f"mail-{n}")
    body = rest.get("/incidents", params={"limit": 2, "total": "true"}).json()
    assert (len(body["incidents"]), body["limit"], body["offset"], body["more"], body["total"]) == (2, 2, 0, True, 3)
    assert len(rest.list_all("incidents")) == 3  # the client pages through


def test_rest_wrong_token_and_missing_from(pd_fake, ca_pem, events):
    events.trigger("Boiler on fire", "emergencyd", dedup_key="mail-1")
    incident_id = pd_fake.incidents()[0]["id"]

    with rest_client(pd_fake, ca_pem, token="wrong") as client:
        with pytest.raises(pagerduty.HttpError) as exc:
            client.rget("/incidents")
    assert exc.value.response.status_code == 401

    with rest_client(pd_fake, ca_pem, default_from=None) as client:
        with pytest.raises(pagerduty.HttpError) as exc:
            client.rpost(f"/incidents/{incident_id}/notes", json={"note": {"content": "x"}})
    assert exc.value.response.status_code == 400
    assert pd_fake.incidents()[0]["notes"] == []


def test_rest_unknown_incident_is_404(rest):
    with pytest.raises(pagerduty.HttpError) as exc:
        rest.rget("/incidents/PNOPE00")
    assert exc.value.response.status_code == 404
    assert exc.value.response.json() == {"error": {"message": "Not Found", "code": 2100}}


def test_rest_create_rejects_duplicate_open_key(rest, pd_fake):
    body = {"incident": {"type": PAGERDUTY_INCIDENT, "title": "Boiler", "incident_key": "mail-1",
                         "service": {"id": "PSERVIC", "type": "service_reference"}}}
    created = rest.rpost("/incidents", json=body)
    assert created["incident_key"] == "mail-1"
    with pytest.raises(pagerduty.HttpError) as exc:
        rest.rpost("/incidents", json=body)
    assert exc.value.response.status_code == 400
    assert len(pd_fake.incidents()) == 1
