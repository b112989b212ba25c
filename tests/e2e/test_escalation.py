"""End to end: mail in over SMTP, ticket and page out through the real clients to the HTTPS fakes.

Assertions are on what the fakes received, never on which of our functions ran.
"""
import time
from email.utils import formatdate

from emergencyd.escalation.records import DONE, FAILED, LINK_TICKET, PAGE, PENDING, STEP_DONE, STEP_PENDING, TICKET
from tests.harness import API_TOKEN, ROUTING_KEY, ZENDESK_TOKEN, make_message


def ticket_of(zendesk, dedup_key):
    [ticket] = zendesk.tickets_with_external_id(dedup_key)
    return ticket


def notes_of(zendesk, ticket_id):
    return [c["body"] for c in zendesk.comments(ticket_id) if not c["public"]]


def test_one_mail_gives_one_ticket_and_one_page_linked_both_ways(live_daemon, zendesk, pagerduty):
    daemon = live_daemon()
    daemon.send(make_message(subject="Apps down", body="All our apps return 502 since 02:10."))
    [message] = daemon.wait_settled(1)["messages"]
    assert message["state"] == DONE, message

    ticket = ticket_of(zendesk, message["dedup_key"])
    assert ticket["id"] == message["ticket_id"]
    assert ticket["subject"] == "Apps down" and "emergency-email" in ticket["tags"]
    assert zendesk.user_by_email("tenant@example.net")["id"] == ticket["requester_id"]
    public = [c for c in zendesk.comments(ticket["id"]) if c["public"]]
    assert "All our apps return 502" in public[0]["body"]

    [incident] = pagerduty.incidents()
    assert incident["dedup_key"] == message["dedup_key"]
    trigger = incident["log"][0]
    agent_url = f"{zendesk.url}/agent/tickets/{ticket['id']}"
    assert trigger["links"][0]["href"] == agent_url
    details = trigger["payload"]["custom_details"]
    assert details["ticket_id"] == ticket["id"] and details["sender"] == "tenant@example.net"
    assert details["subject"] == "Apps down" and details["received_at"]

    notes = notes_of(zendesk, ticket["id"])
    envelope_note = next(n for n in notes if "MAIL FROM: <tenant@example.net>" in n)
    assert "RCPT TO: <emergency@example.org>" in envelope_note and "Message-ID: m1@example.net" in envelope_note
    link_note = next(n for n in notes if "PagerDuty dedup_key" in n)
    assert message["dedup_key"] in link_note and incident["html_url"] in link_note
    assert message["incident_url"] == incident["html_url"]
    # The incident links back to the ticket in a note too.
    assert any(agent_url in n["content"] for n in incident["notes"])


def test_the_same_mail_twice_gives_one_of_each(live_daemon, zendesk, pagerduty):
    daemon = live_daemon()
    daemon.send(make_message())
    daemon.wait_settled(1)
    daemon.send(make_message())          # e.g. the sending MTA retried after a lost 250
    daemon.send(make_message(), recipients=("second@example.org",))
    [message] = daemon.wait_settled(1)["messages"]
    assert message["deliveries"] == 3
    assert len(zendesk.tickets()) == 1
    assert len(pagerduty.incidents()) == 1
    assert len([e for e in pagerduty.events() if e["event_action"] == "trigger"]) == 1


def test_paging_does_not_wait_for_a_zendesk_outage(live_daemon, zendesk, pagerduty):
    zendesk.set_down(True)
    daemon = live_daemon()
    daemon.send(make_message())
    # The page goes out while Zendesk is still down, without a ticket link.
    incident = daemon.wait_for(lambda: pagerduty.incidents(), what="the page")[0]
    assert not incident["log"][0].get("links")
    assert zendesk.tickets() == []
    status = daemon.status()["messages"][0]
    assert status["state"] == PENDING and "HTTP 503" in status["steps"][TICKET]["last_error"]

    zendesk.set_down(False)
    [message] = daemon.wait_settled(1, timeout=30)["messages"]
    ticket = ticket_of(zendesk, message["dedup_key"])
    assert any(message["dedup_key"] in n for n in notes_of(zendesk, ticket["id"]))
    [incident] = pagerduty.incidents()
    assert any(f"/agent/tickets/{ticket['id']}" in n["content"] for n in incident["notes"])
    assert len([e for e in pagerduty.events() if e["event_action"] == "trigger"]) == 1


def test_rate_limits_are_honoured_in_both_retry_after_forms(live_daemon, zendesk, pagerduty):
    daemon = live_daemon()
    zendesk.inject_status(429, headers={"Retry-After": "1"}, path="/api/v2/tickets.json", method="POST")
    retry_at_wall = int(time.time()) + 2
    retry_at = time.monotonic() + (retry_at_wall - time.time())
    pagerduty.inject_status(429, headers={"Retry-After": formatdate(retry_at_wall, usegmt=True)},
                            path="/v2/enqueue")
    daemon.send(make_message())
    [message] = daemon.wait_settled(1, timeout=30)["messages"]
    assert message["state"] == DONE
    assert message["steps"][TICKET]["attempts"] == 2 and message["steps"][PAGE]["attempts"] == 2
    creates = zendesk.requests_matching(path="/api/v2/tickets.json", method="POST")
    assert creates[1].received_at - creates[0].received_at >= 0.95
    enqueues = pagerduty.requests_matching(path="/v2/enqueue")
    assert enqueues[1].received_at >= retry_at - 0.05     # not before the HTTP-date
    assert len(zendesk.tickets()) == 1 and len(pagerduty.incidents()) == 1


def test_a_permanent_error_is_recorded_with_the_body_and_does_not_block_the_other_side(
        live_daemon, zendesk, pagerduty):
    zendesk.inject_status(422, body={"error": "RecordInvalid", "description": "Requester is suspended"},
                          path="/api/v2/tickets.json", method="POST")
    daemon = live_daemon()
    daemon.send(make_message())
    [message] = daemon.wait_settled(1)["messages"]
    assert message["state"] == FAILED
    assert "HTTP 422" in message["steps"][TICKET]["last_error"]
    assert "Requester is suspended" in message["steps"][TICKET]["last_error"]
    assert message["steps"][PAGE]["state"] == STEP_DONE
    assert len(pagerduty.incidents()) == 1
    assert message["steps"][LINK_TICKET]["last_error"] == "not possible: ticket failed"
    _, metrics = daemon.http_get("/metrics")
    assert ('emergencyd_escalation_steps_total{integration="zendesk",outcome="failed",'
            'status_class="4xx",step="ticket"} 1.0') in metrics


def test_network_faults_and_malformed_answers_are_retried(live_daemon, zendesk, pagerduty):
    zendesk.inject_drop(path="/api/v2/tickets.json", method="POST")
    pagerduty.inject_malformed(path="/v2/enqueue")
    pagerduty.inject_status(502, path="/v2/enqueue")
    daemon = live_daemon()
    daemon.send(make_message())
    [message] = daemon.wait_settled(1, timeout=30)["messages"]
    assert message["state"] == DONE
    assert message["steps"][PAGE]["attempts"] == 3
    assert len(zendesk.tickets()) == 1 and len(pagerduty.incidents()) == 1


def test_metrics_and_health(live_daemon, zendesk, pagerduty):
    daemon = live_daemon()
    daemon.send(make_message())
    daemon.wait_settled(1)
    assert daemon.http_get("/healthz") == (200, "ok\n")
    status, body = daemon.http_get("/readyz")
    assert status == 200 and '"ready": true' in body
    _, metrics = daemon.http_get("/metrics")
    assert 'emergencyd_messages_received_total{source="smtp"} 1.0' in metrics
    assert "emergencyd_page_latency_seconds_count 1.0" in metrics
    assert "emergencyd_escalations_pending 0.0" in metrics
    assert "emergencyd_escalation_oldest_pending_age_seconds 0.0" in metrics
    assert daemon.http_get("/nope")[0] == 404


def test_secrets_never_reach_logs_or_status(live_daemon, zendesk, pagerduty):
    zendesk.inject_status(401, path="/api/v2/tickets.json")
    pagerduty.inject_status(400, path="/v2/enqueue")
    daemon = live_daemon()
    daemon.send(make_message())
    daemon.wait_settled(1)
    output = daemon.log_text() + daemon.cli("status", "--json").stdout + daemon.cli("status").stdout
    output += daemon.http_get("/metrics")[1]
    for secret in (ZENDESK_TOKEN, ROUTING_KEY, API_TOKEN):
        assert secret not in output


def test_unparseable_mail_is_still_escalated_with_a_marker(live_daemon, zendesk, pagerduty):
    daemon = live_daemon()
    # No header field at all: binary noise in short lines, as a broken relay might send.
    noise = bytes(b for b in range(1, 256) if b not in b"\r\n.:")
    daemon.send(b"\r\n".join([noise[:60], noise[60:120], noise[120:180], b"", b"body"]))
    [message] = daemon.wait_settled(1)["messages"]
    [ticket] = zendesk.tickets()
    bodies = " ".join(c["body"] for c in zendesk.comments(ticket["id"]))
    assert "could not be parsed" in bodies
    assert len(pagerduty.incidents()) == 1


def test_a_huge_subject_is_bounded_in_the_page(live_daemon, zendesk, pagerduty):
    daemon = live_daemon()
    daemon.send(make_message(subject="down " * 190))
    daemon.wait_settled(1)
    [incident] = pagerduty.incidents()
    assert len(incident["log"][0]["payload"]["summary"]) <= 1024


def test_a_slow_zendesk_delays_the_page_by_the_head_start_at_most(live_daemon, zendesk, pagerduty):
    zendesk.inject_delay(4.0, path="/api/v2/tickets.json", method="POST")
    daemon = live_daemon()     # ticket_head_start_seconds = 1 in the test config
    daemon.send(make_message())
    incident = daemon.wait_for(lambda: pagerduty.incidents(), what="the page")[0]
    # The page did not wait for the 4-second ticket: no ticket existed when it was sent.
    assert not incident["log"][0].get("links")
    [message] = daemon.wait_settled(1)["messages"]
    assert message["steps"]["page"]["result"]["carried_ticket_link"] is False
    [incident] = pagerduty.incidents()
    assert any(f"/agent/tickets/{message['ticket_id']}" in n["content"] for n in incident["notes"])


def test_a_tight_in_flight_budget_still_escalates_everything_once(start_daemon):
    """With room for one message's bytes at a time, escalations run one after another, all of them."""
    daemon = start_daemon(policy=True, escalation="max_in_flight_bytes = 1024")
    for index in range(8):      # under the page cap of 10 a minute
        daemon.send(make_message(subject=f"Database {index} unreachable", body=f"Database {index} is down.",
                                 sender=f"ops{index}@tenant{index}.example", message_id=f"<budget-{index}@example.net>"))
    doc = daemon.wait_settled(8, timeout=60)
    assert {m["state"] for m in doc["messages"]} == {DONE}
    pages = [m["steps"][PAGE]["result"]["would_send"]["dedup_key"] for m in doc["messages"] if PAGE in m["steps"]]
    assert len(pages) == len(set(pages)) == 8     # eight incidents, one page each
    assert "emergencyd_escalations_in_flight_bytes" in daemon.http_get("/metrics")[1]


def test_a_page_is_not_held_while_its_ticket_waits_for_zendesks_pacer(live_daemon, zendesk, pagerduty):
    # One Zendesk call a minute, and a head start far longer than this test may take: the first
    # mail's ticket takes the only token, so the second mail's ticket waits its turn at the pacer.
    daemon = live_daemon(policy=True, escalation="ticket_head_start_seconds = 600",
                         extra_zendesk="requests_per_minute = 1\n")
    daemon.send(make_message(subject="Database outage", message_id="<first@tenant.example>",
                             body="All our apps are down since 02:10."))
    daemon.wait_for(lambda: zendesk.tickets(), what="the first ticket")
    daemon.send(make_message(subject="Possible security breach", sender="ops@other.example",
                             message_id="<second@other.example>",
                             body="We think one of our apps has been compromised via the platform."))

    def second_paged():
        message = next((m for m in daemon.status()["messages"] if m["message_id"] == "second@other.example"), None)
        page = message and message["steps"].get("page")
        return message if page and page["state"] == STEP_DONE else None
    second = daemon.wait_for(second_paged, timeout=60, what="the second mail's page")
    assert second["steps"][TICKET]["state"] == STEP_PENDING          # still waiting for Zendesk's pace
    assert second["steps"]["page"]["result"]["carried_ticket_link"] is False
    assert [t["subject"] for t in zendesk.tickets()] == ["Database outage"]
