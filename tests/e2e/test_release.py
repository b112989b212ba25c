"""`emergencyd release ID`: a suppressed or demoted mail, decided again without its demotion, through
the running daemon; what was done stays done (one ticket), the page goes out, and the store says so."""
from __future__ import annotations

from emergencyd.escalation.records import DONE, PAGE, STEP_DONE, SUPPRESSED, TICKET
from tests.harness import NEWSLETTER, OUTAGE, make_message

DIRECTORY = '[trust]\ntenant_domains = ["tenant.gov.example"]\n'
BOUNCE = (b"From: MAILER-DAEMON@mx.tenant.gov.example\r\nTo: emergency@example.org\r\n"
          b"Subject: Undelivered Mail Returned to Sender\r\nMessage-ID: <bounce-1@mx.tenant.gov.example>\r\n"
          b"\r\nThis is the mail system. Your message could not be delivered:\r\n\r\n"
          b"> Hello, all our apps are down since 02:10, users get errors.\r\n")


def test_a_strangers_ticket_released_by_hand_pages_once_and_keeps_its_ticket(live_daemon, zendesk, pagerduty):
    daemon = live_daemon(policy=True, extra=DIRECTORY)
    daemon.send(make_message(sender="someone@personal.example", message_id="<s1@personal.example>", **NEWSLETTER))
    (stranger,) = daemon.wait_settled(1)["messages"]
    assert PAGE not in stranger["steps"] and pagerduty.incidents() == []
    released = daemon.cli("release", str(stranger["id"]))
    assert "released" in released.stdout
    (after,) = daemon.wait_settled(1)["messages"]
    assert after["verdict"]["released"] is True and after["verdict"]["stranger"] is None
    assert after["steps"][PAGE]["state"] == STEP_DONE and after["ticket_id"] == stranger["ticket_id"]
    assert [i["dedup_key"] for i in pagerduty.incidents()] == [after["page_key"]]
    assert len(zendesk.tickets()) == 1
    assert "released by hand" in after["decision"]
    assert daemon.metric("emergencyd_released_total") == 1
    again = daemon.cli("release", str(stranger["id"]), check=False)
    assert again.returncode == 1 and "already released; nothing changed" in again.stderr


def test_suppressed_noise_released_gets_its_ticket_and_page_and_a_paged_mail_has_nothing_to_release(
        live_daemon, zendesk, pagerduty):
    daemon = live_daemon(policy=True)
    daemon.send(BOUNCE, sender="")
    daemon.send(make_message(sender="ops@tenant.gov.example", message_id="<o1@tenant.gov.example>", **OUTAGE))
    messages = {m["message_id"].strip("<>"): m for m in daemon.wait_settled(2)["messages"]}
    bounce, outage = messages["bounce-1@mx.tenant.gov.example"], messages["o1@tenant.gov.example"]
    assert bounce["state"] == SUPPRESSED and bounce["verdict"]["category"] == "noise:bounce"
    refused = daemon.cli("release", str(outage["id"]), check=False)
    assert refused.returncode == 1 and "not demoted; nothing changed" in refused.stderr
    unknown = daemon.cli("release", "999", check=False)
    assert unknown.returncode == 1 and "unknown" in unknown.stderr
    daemon.cli("release", str(bounce["id"]))
    after = {m["message_id"].strip("<>"): m for m in daemon.wait_settled(2)["messages"]}["bounce-1@mx.tenant.gov.example"]
    assert after["state"] == DONE and after["verdict"]["severity"] == "P1"
    assert after["steps"][TICKET]["state"] == STEP_DONE and after["steps"][PAGE]["state"] == STEP_DONE
    assert "released" in zendesk.ticket(after["ticket_id"])["tags"]
    assert sorted(i["dedup_key"] for i in pagerduty.incidents()) == sorted([outage["page_key"], after["page_key"]])
