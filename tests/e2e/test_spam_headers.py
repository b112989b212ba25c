"""The relay's spam filter as a second opinion ([trust] relay_spam_headers): its X-Spam* fields count
only where its Authentication-Results would (above the Received line of the hop from outside), a
sender's own never do, and mail it calls spam gets a ticket tagged suspected-spam and no page unless
it is a verified tenant's. Each decision with its pair: the same words that must still page."""
from __future__ import annotations

from emergencyd.escalation.records import DONE, PAGE, STEP_DONE
from tests.harness import OUTAGE, make_message

FROM_OUTSIDE = "Received: from mail.sender.example (mail.sender.example [192.0.2.7]) by mx.example.org\r\n"
RSPAMD_SPAM = ("X-Spamd-Result: default: True [9.40 / 15.00]; R_SPF_FAIL(1.00)[-all]; FUZZY_DENIED(5.20)[1:abc:1.0];"
               " MIME_GOOD(-0.10)[text/plain]; BAYES_SPAM(3.30)[99.9%]\r\nX-Spam: Yes\r\n")
def test_through_the_daemon_mail_the_relay_calls_spam_is_a_ticket_and_its_pair_pages(live_daemon, zendesk, pagerduty):
    daemon = live_daemon(policy=True, extra='[trust]\nrelay_spam_headers = true\n')
    daemon.send((RSPAMD_SPAM + FROM_OUTSIDE).encode()
                + make_message(sender="win@prizes.example", message_id="<spam@prizes.example>", **OUTAGE))
    daemon.send(("X-Spam: No\r\n" + FROM_OUTSIDE).encode()
                + make_message(sender="ops@tenant.example", message_id="<real@tenant.example>", **OUTAGE))
    messages = {m["sender"]: m for m in daemon.wait_settled(2)["messages"]}
    spam, real = messages["win@prizes.example"], messages["ops@tenant.example"]
    assert spam["state"] == DONE and PAGE not in spam["steps"]
    assert "suspected-spam" in zendesk.ticket(spam["ticket_id"])["tags"]
    assert real["steps"][PAGE]["state"] == STEP_DONE
    assert [i["dedup_key"] for i in pagerduty.incidents()] == [real["page_key"]]
    assert daemon.metric("emergencyd_suspected_spam_total") == 1
