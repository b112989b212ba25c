"""The policy end to end: what reaches Zendesk and PagerDuty for each (severity, window), and for noise."""
import json
import signal

from emergencyd.escalation.records import PAGE
from tests.harness import make_message

# Receive times replayed with `inject --received-at`: Wednesday 11:00, Saturday 11:00, Wednesday 23:00.
WINDOWS = {"in_hours": "2026-11-25T11:00:00+00:00", "out_of_hours_waking": "2026-11-28T11:00:00+00:00",
           "out_of_hours_overnight": "2026-11-25T23:00:00+00:00"}
BODIES = {"P1": "All our apps are down.", "P2": "We are unable to deploy since this morning.",
          "P3": "Some requests fail intermittently.", "P4": "A minor issue with no immediate impact."}
# (severity, window) -> (PagerDuty event severity or None for no page, Zendesk priority)
EXPECTED = {
    ("P1", "in_hours"): ("critical", "urgent"), ("P1", "out_of_hours_waking"): ("critical", "urgent"),
    ("P1", "out_of_hours_overnight"): ("critical", "urgent"),
    ("P2", "in_hours"): ("critical", "high"), ("P2", "out_of_hours_waking"): ("warning", "high"),
    ("P2", "out_of_hours_overnight"): ("warning", "high"),
    ("P3", "in_hours"): ("warning", "normal"), ("P3", "out_of_hours_waking"): (None, "normal"),
    ("P3", "out_of_hours_overnight"): (None, "normal"),
    ("P4", "in_hours"): (None, "low"), ("P4", "out_of_hours_waking"): (None, "low"),
    ("P4", "out_of_hours_overnight"): (None, "low"),
}
# The fields of each line `emergencyd classify` prints (the verdict's, and the file it read).
CLASSIFY_FIELDS = {"file", "suppressed", "reason", "category", "severity", "window", "page", "urgency",
                   "zendesk_priority", "respond_by", "rules", "sender_trust", "page_held"}


def test_routing_table_through_the_fakes(tmp_path, live_daemon, zendesk, pagerduty):
    daemon = live_daemon(policy=True)
    for (severity, window) in EXPECTED:
        eml = tmp_path / f"{severity}-{window}.eml"
        eml.write_bytes(make_message(subject=f"{severity} {window}", body=BODIES[severity],
                                     message_id=f"<{severity}-{window}@tenant.example>"))
        daemon.cli("inject", "--received-at", WINDOWS[window], str(eml))
    doc = daemon.wait_settled(len(EXPECTED), timeout=40)
    by_subject = {m["subject"]: m for m in doc["messages"]}
    for (severity, window), (page_severity, priority) in EXPECTED.items():
        message = by_subject[f"{severity} {window}"]
        assert (message["severity"], message["window"]) == (severity, window)
        ticket = zendesk.find_ticket(external_id=message["dedup_key"])
        assert ticket["priority"] == priority, (severity, window)
        assert {severity.lower(), f"window-{window.replace('_', '-')}"} <= set(ticket["tags"])
        incidents = pagerduty.incidents_with_key(message["dedup_key"])
        if page_severity is None:
            assert incidents == [], (severity, window)
            assert PAGE not in message["steps"]
        else:
            [incident] = incidents
            assert incident["log"][0]["payload"]["severity"] == page_severity, (severity, window)
    note = next(c["body"] for c in zendesk.comments(by_subject["P1 out_of_hours_overnight"]["ticket_id"])
                if "emergencyd: P1" in c["body"])
    assert "P1 (apps not served), out of hours (overnight): respond by 23:40 UTC (Wed 25 Nov), update hourly" in note
    assert "rule apps-not-served matched 'apps are down' in the body" in note


def test_noise_gets_no_ticket_and_no_page_and_is_counted(tmp_path, live_daemon, zendesk, pagerduty):
    daemon = live_daemon(policy=True)
    bounce = make_message(subject="Undelivered Mail Returned to Sender", body="All our apps are down.",
                          sender="MAILER-DAEMON@mx.example", message_id="<bounce@mx.example>",
                          extra_headers="Auto-Submitted: auto-replied\r\n")
    daemon.send(bounce, sender="")
    auto = make_message(subject="Out of office: apps down", body="I am away until Monday.",
                        message_id="<ooo@tenant.example>", extra_headers="Auto-Submitted: auto-replied\r\n")
    daemon.send(auto)
    doc = daemon.wait_settled(2)
    assert doc["counts"] == {"suppressed": 2}
    reasons = sorted(m["suppressed_reason"] for m in doc["messages"])
    assert reasons[0].startswith("auto_reply:") and reasons[1].startswith("bounce:")
    assert zendesk.tickets() == [] and pagerduty.events() == []
    _, metrics = daemon.http_get("/metrics")
    assert 'emergencyd_messages_suppressed_total{kind="bounce"} 1.0' in metrics
    assert 'emergencyd_messages_suppressed_total{kind="auto_reply"} 1.0' in metrics
    assert "Suppressed as bounce" in daemon.cli("status").stdout


def test_classify_explains_each_file(tmp_path, start_daemon):
    daemon = start_daemon(policy=True)
    p1 = tmp_path / "p1.eml"
    p1.write_bytes(make_message(subject="help", body="Hi,\nAll our apps are down: 502 Bad Gateway everywhere."))
    broken = tmp_path / "broken.eml"
    broken.write_bytes(b"\x00\x01\x02")
    result = daemon.cli("classify", "--at", "2026-12-28T02:00", str(p1), str(broken), str(tmp_path / "missing"),
                        check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    first, second, third = (json.loads(line) for line in result.stdout.splitlines())
    assert CLASSIFY_FIELDS <= set(first)
    assert first["sender_trust"] is None and first["page_held"] is None     # no [trust] table: nothing to tell
    assert (first["severity"], first["window"], first["urgency"]) == ("P1", "out_of_hours_overnight", "high")
    assert first["respond_by"] == "2026-12-28T02:40:00+00:00"
    assert first["rules"][0] == {"rule": "apps-not-served", "field": "body", "matched": "apps are down",
                                 "category": "apps_not_served", "severity": "P1"}
    assert second["file"].endswith("broken.eml") and "severity" in second      # unparseable, still decided
    assert "cannot read" in third["error"]
    text = daemon.cli("classify", "--text", "--at", "2026-12-28T02:00", str(p1)).stdout
    assert "P1 (apps not served), out of hours (overnight)" in text and "ticket subject: help: " in text


def test_sighup_reloads_the_policy_and_keeps_it_on_a_bad_file(tmp_path, start_daemon):
    daemon = start_daemon(policy=True)
    config = daemon.config
    good = config.read_text()
    started_at = daemon.metric("emergencyd_config_last_reload_success_timestamp_seconds")
    config.write_text(good.replace('unclassified_severity = "P1"', 'unclassified_severity = "P4"'))
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_for(lambda: "reloaded policy" in daemon.log_text(), what="the reload")
    assert daemon.metric("emergencyd_config_last_reload_successful") == 1
    assert daemon.metric("emergencyd_config_last_reload_success_timestamp_seconds") > started_at
    daemon.send(make_message(subject="Hello", body="Please call us back.", message_id="<after-reload@x>"))
    [message] = daemon.wait_settled(1)["messages"]
    assert message["severity"] == "P4" and PAGE not in message["steps"]

    reloaded = config.read_text()
    config.write_text(good.replace("[policy.routing]", "[policy.routing]\nP9.in_hours = {}"))
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_for(lambda: "reload refused" in daemon.log_text(), what="the refusal")
    assert "policy.routing.P9: unknown severity" in daemon.log_text()
    assert daemon.metric("emergencyd_config_last_reload_successful") == 0
    config.write_text(reloaded)      # so that `status` can read it; the daemon is not told
    daemon.send(make_message(subject="Hello again", body="Please call us back.", message_id="<after-bad@x>"))
    doc = daemon.wait_settled(2)
    assert {m["severity"] for m in doc["messages"]} == {"P4"}     # the last good policy still runs
    assert daemon.proc.poll() is None
