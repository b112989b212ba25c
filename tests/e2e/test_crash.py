"""kill -9 at the worst moments: after Zendesk or PagerDuty acted, before we committed it.

The fakes hold the response of the chosen request: its effect is applied, the
daemon is killed while waiting for the answer, and a restarted daemon must
finish with exactly one ticket, one incident, one link each way.
"""
import pytest

from emergencyd.escalation.records import LINK_PAGE, LINK_TICKET, STEP_DONE, TICKET, TICKET_NOTE
from tests.harness import TICKET_UPDATE, assert_one_of_everything, make_message


def crash_while_held(daemon, hold):
    assert hold.wait_received(20) is not None, daemon.log_text()
    daemon.kill9()
    hold.release()
    daemon.start()


@pytest.mark.parametrize("service, path, method, step", [
    ("zendesk", r"/api/v2/tickets\.json", "POST", TICKET),           # Zendesk created the ticket
    ("pagerduty", r"/incidents/\w+/notes", "POST", LINK_PAGE),       # PagerDuty added the note
])
def test_killed_after_the_effect_and_before_its_commit(live_daemon, zendesk, pagerduty, service, path, method,
                                                       step):
    hold = {"zendesk": zendesk, "pagerduty": pagerduty}[service].hold(path=path, method=method)
    daemon = live_daemon()
    daemon.send(make_message())
    crash_while_held(daemon, hold)
    message = assert_one_of_everything(daemon, zendesk, pagerduty)
    assert message["steps"][step]["result"].get("found_existing") is True


def test_killed_between_ticket_and_page(live_daemon, zendesk, pagerduty):
    hold = pagerduty.hold(path="/v2/enqueue")
    daemon = live_daemon()
    daemon.send(make_message())
    crash_while_held(daemon, hold)
    assert_one_of_everything(daemon, zendesk, pagerduty)
    assert len([e for e in pagerduty.events() if e["event_action"] == "trigger"]) == 2   # folded by dedup_key


def test_killed_between_page_and_link(live_daemon, zendesk, pagerduty):
    page_hold = pagerduty.hold(path="/v2/enqueue")
    daemon = live_daemon()
    daemon.send(make_message())
    page_hold.wait_received(20)
    # The ticket and its envelope note are done; hold the next ticket update, the link.
    daemon.wait_for(lambda: daemon.status()["messages"][0]["steps"][TICKET_NOTE]["state"] == STEP_DONE,
                    what="the envelope note")
    link_hold = zendesk.hold(path=TICKET_UPDATE, method="PUT")
    page_hold.release()
    crash_while_held(daemon, link_hold)
    message = assert_one_of_everything(daemon, zendesk, pagerduty)
    assert message["steps"][LINK_TICKET]["result"].get("found_existing") is True


@pytest.mark.parametrize("held", ["zendesk", "pagerduty"])
def test_sigterm_mid_escalation_loses_nothing(live_daemon, zendesk, pagerduty, held):
    fake = zendesk if held == "zendesk" else pagerduty
    hold = fake.hold(path=r"/api/v2/tickets\.json" if held == "zendesk" else "/v2/enqueue", method="POST")
    daemon = live_daemon()
    daemon.send(make_message())
    hold.wait_received(20)
    daemon.proc.send_signal(15)
    hold.release()             # the step in flight finishes and commits before exit
    assert daemon.proc.wait(30) == 0
    daemon.start()
    assert_one_of_everything(daemon, zendesk, pagerduty)


def test_while_draining_new_smtp_connections_are_told_421(live_daemon, zendesk, pagerduty):
    import smtplib
    hold = pagerduty.hold(path="/v2/enqueue")
    daemon = live_daemon()
    daemon.send(make_message())
    hold.wait_received(20)
    daemon.proc.send_signal(15)
    daemon.wait_for(lambda: "shutting down" in daemon.log_text(), what="the shutdown to begin")
    with pytest.raises(smtplib.SMTPConnectError) as refused:
        smtplib.SMTP("127.0.0.1", daemon.smtp_port, timeout=10)
    assert refused.value.smtp_code == 421 and b"4.3.2" in refused.value.smtp_error
    hold.release()
    assert daemon.proc.wait(30) == 0
    daemon.start()
    assert_one_of_everything(daemon, zendesk, pagerduty)


def test_a_step_that_outlives_the_shutdown_deadline_resumes_at_the_next_start(live_daemon, zendesk, pagerduty):
    hold = pagerduty.hold(path="/v2/enqueue")
    daemon = live_daemon(escalation="shutdown_deadline_seconds = 0.5")
    daemon.send(make_message())
    hold.wait_received(20)
    daemon.proc.send_signal(15)
    assert daemon.proc.wait(30) == 0            # exits with the page still unanswered
    assert "shutdown deadline passed" in daemon.log_text()
    hold.release()
    daemon.start()
    assert_one_of_everything(daemon, zendesk, pagerduty)
