"""The tenant directory from Zendesk ([trust] directory_from_zendesk): organizations' domain names and
their end users, read through zenpy from the Zendesk fake, refreshed, kept in the store, and still in
force after a restart while Zendesk is down. Each decision with its pair."""
from __future__ import annotations

import time

from emergencyd.escalation.records import PAGE, STEP_DONE
from tests.harness import NEWSLETTER, make_message

FROM_ZENDESK = '[trust]\ndirectory_from_zendesk = true\ndirectory_refresh_seconds = 1\n'
REFRESH_FAILED = "failed"      # the outcome label of a directory refresh that failed


def wait_for(predicate, timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout} s: {what}")


def test_the_directory_is_read_from_zendesk_refreshed_and_kept_across_a_restart_with_zendesk_down(
        live_daemon, zendesk, pagerduty):
    acme = zendesk.add_organization("Acme Hosting", ["acme.example"])
    zendesk.add_end_user("boss@personal.example", "Boss", organization_id=acme["id"])
    zendesk.add_end_user("drifter@elsewhere.example", "Drifter")            # no organization: a stranger
    daemon = live_daemon(policy=True, extra=FROM_ZENDESK)
    wait_for(lambda: "Zendesk: 1 organization(s)" in daemon.cli("status").stdout, what="the first fetch")
    mails = {"dev@ops.acme.example": "<d@acme>", "boss@personal.example": "<b@personal>",
             "drifter@elsewhere.example": "<x@elsewhere>"}
    for sender, message_id in mails.items():
        daemon.send(make_message(sender=sender, message_id=message_id, **NEWSLETTER))
    messages = {m["sender"]: m for m in daemon.wait_settled(3)["messages"]}
    assert messages["dev@ops.acme.example"]["steps"][PAGE]["state"] == STEP_DONE
    assert messages["boss@personal.example"]["steps"][PAGE]["state"] == STEP_DONE
    assert PAGE not in messages["drifter@elsewhere.example"]["steps"]
    assert messages["dev@ops.acme.example"]["verdict"]["tenant"] == \
        "a tenant (the tenant domain acme.example, organization Acme Hosting in Zendesk)"

    zendesk.add_organization("Beta Cloud", ["beta.example"])              # refreshed while running
    wait_for(lambda: "Zendesk: 2 organization(s)" in daemon.cli("status").stdout, what="the refresh")
    assert daemon.stop() == 0

    zendesk.set_down(True)                                                 # a restart during an outage
    daemon.start()
    daemon.send(make_message(sender="ops@beta.example", message_id="<o@beta>", **NEWSLETTER))

    def decided():
        return next((m for m in daemon.status()["messages"] if m["sender"] == "ops@beta.example" and m["verdict"]),
                    None)
    wait_for(decided, what="the mail decided with Zendesk down")
    beta = decided()
    wait_for(lambda: decided()["steps"].get(PAGE, {}).get("state") == STEP_DONE,
             what="paged while Zendesk is down: paging never waits on it")
    assert beta["verdict"]["tenant"] == "a tenant (the tenant domain beta.example, organization Beta Cloud in Zendesk)"
    wait_for(lambda: daemon.metric("emergencyd_directory_refreshes_total", outcome=REFRESH_FAILED) >= 1,
             what="a failed refresh counted")
    assert "Zendesk: 2 organization(s)" in daemon.cli("status").stdout
