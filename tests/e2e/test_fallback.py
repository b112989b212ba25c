"""The fallback alert: PagerDuty failing past the deadline gets one mail through a real SMTP relay.

End to end through the daemon subprocess, the HTTPS fakes and a recording relay on loopback
(tests/fakes/smtp_relay.py). The page itself still goes out once when PagerDuty returns.
"""
import json
import re
import smtplib

import pytest

from emergencyd.daemon.config.model import ConfigError, load_config
from emergencyd.escalation.records import (
    DONE,
    FALLBACK_ALERT,
    PAGE,
    PENDING,
    STEP_DONE,
    STEP_FAILED,
    STEP_PENDING,
    SUPPRESSED,
)
from emergencyd.escalation.retry import classify
from tests.fakes.smtp_relay import FakeRelay
from tests.harness import live_env, make_message, run_cli, write_config

FROM = "emergencyd@example.org"
TO = "oncall-fallback@example.org"
RELAY_USER = "emergencyd-relay"
RELAY_PASSWORD = "relay-secret-6d2f91"


def fallback_table(relay: FakeRelay, *, ca_file=None, username: str | None = None, after_seconds: int = 1) -> str:
    lines = ["[fallback]", "enabled = true", f'relay = "{relay.address}"', f'from_address = "{FROM}"',
             f'to = ["{TO}"]', f"after_seconds = {after_seconds}", "timeout_seconds = 5"]
    lines += [f'ca_file = "{ca_file}"'] if ca_file else ["starttls = false   # loopback relay"]
    lines += [f'username = "{username}"'] if username else []
    return "\n".join(lines) + "\n"




SENT = 'emergencyd_fallback_alerts_total{outcome="sent"}'
FAILED = 'emergencyd_fallback_alerts_total{outcome="failed"}'
OVERDUE = "emergencyd_escalations_page_overdue"


def only_message(daemon) -> dict:
    [message] = daemon.status()["messages"]
    return message


def test_pagerduty_down_past_the_deadline_mails_once_then_pages_once(live_daemon, zendesk, pagerduty, ca, ca_file):
    pagerduty.set_down(True)
    with FakeRelay(ca=ca, username=RELAY_USER, password=RELAY_PASSWORD) as relay:
        # 3 s: the mail reports the page's last error, so its first attempt must have failed by then, even
        # with the worker processes still starting on a busy machine.
        daemon = live_daemon(extra=fallback_table(relay, ca_file=ca_file, username=RELAY_USER, after_seconds=3),
                             env={**live_env(), "EMERGENCYD_FALLBACK_PASSWORD": RELAY_PASSWORD})
        assert daemon.metric(SENT) == 0 and daemon.metric(OVERDUE) == 0
        assert 'role="fallback_ca"' in daemon.http_get("/metrics")[1]   # the relay's CA expires too
        daemon.send(make_message(subject="Apps down", body="All our apps return 502 since 02:10."))
        [mail] = relay.wait_for(1)
        message = only_message(daemon)
        assert message["steps"][FALLBACK_ALERT]["state"] == STEP_DONE
        assert message["state"] == PENDING and message["steps"][PAGE]["state"] == STEP_PENDING

        assert mail.tls and mail.login == RELAY_USER
        assert mail.mail_from == FROM and mail.rcpt_tos == (TO,)
        alert = mail.message
        assert alert["Subject"] == "[emergencyd] PAGE NOT DELIVERED: Apps down"
        assert alert["Auto-Submitted"] == "auto-generated"
        assert alert["Message-ID"] == f"<{message['dedup_key']}.fallback@example.org>"
        body = alert.get_content()
        for expected in ("P1", "tenant@example.net", "HTTP 503", message["dedup_key"],
                         f"{zendesk.url}/agent/tickets/{message['ticket_id']}", message["received_at"][:19]):
            assert expected in body, (expected, body)
        assert daemon.metric(SENT) == 1
        daemon.wait_for(lambda: daemon.metric(OVERDUE) == 1, what="the overdue gauge")

        # The alert, delivered back to the emergency address, is noise: never a page, never a fallback.
        daemon.send(mail.content, sender=FROM)
        pagerduty.set_down(False)
        looped, paged = daemon.wait_settled(2)["messages"]
        assert looped["state"] == SUPPRESSED and FALLBACK_ALERT not in looped["steps"]
        assert paged["state"] == DONE
        [incident] = pagerduty.incidents()
        assert incident["dedup_key"] == paged["dedup_key"]
        assert len([e for e in pagerduty.events() if e["event_action"] == "trigger"]) == 1
        assert len(relay.accepted()) == 1
        daemon.wait_for(lambda: daemon.metric(OVERDUE) == 0, what="the overdue gauge back to 0")
        assert daemon.metric(SENT) == 1
    assert RELAY_PASSWORD not in daemon.log_text()


def test_a_page_before_the_deadline_needs_no_fallback(live_daemon, zendesk, pagerduty):
    with FakeRelay() as relay:
        # A deadline the page meets even on a loaded machine (a first ticket and page once took over a second).
        daemon = live_daemon(extra=fallback_table(relay, after_seconds=20))
        daemon.send(make_message())
        [message] = daemon.wait_settled(1)["messages"]
        assert message["state"] == DONE and len(pagerduty.incidents()) == 1
        fallback = message["steps"]["fallback_alert"]
        assert fallback["state"] == STEP_DONE and fallback["result"]["skipped"].startswith("not needed")
        assert relay.accepted() == [] and daemon.metric(SENT) == 0


def test_mail_that_does_not_page_never_falls_back(live_daemon, zendesk, pagerduty):
    pagerduty.set_down(True)
    with FakeRelay() as relay:
        daemon = live_daemon(extra=fallback_table(relay), policy=True)
        daemon.send(make_message(subject="Quick question", body="How do I add a user to our org?",
                                 message_id="<q@example.net>"))
        daemon.send(make_message(subject="Out of office", body="I am away until Monday.",
                                 message_id="<ooo@example.net>", extra_headers="Auto-Submitted: auto-replied\r\n"))
        messages = daemon.wait_settled(2)["messages"]
        assert sorted(m["state"] for m in messages) == [DONE, SUPPRESSED]
        assert all(PAGE not in m["steps"] and FALLBACK_ALERT not in m["steps"] for m in messages)
        assert pagerduty.requests == [] and relay.accepted() == []


def test_a_451_from_the_relay_is_retried_and_a_550_is_recorded(live_daemon, zendesk, pagerduty):
    pagerduty.set_down(True)
    with FakeRelay() as relay:
        relay.inject_reply("451 4.3.0 try again later")
        daemon = live_daemon(extra=fallback_table(relay))
        daemon.send(make_message())
        [mail] = relay.wait_for(1)
        assert relay.refused() == ["451 4.3.0 try again later"]
        fallback = only_message(daemon)["steps"]["fallback_alert"]
        assert fallback["state"] == STEP_DONE and fallback["attempts"] == 2

        relay.inject_reply("550 5.7.1 relaying denied")
        daemon.send(make_message(subject="Database gone", body="Our database lost its data.",
                                 message_id="<m2@example.net>"))
        daemon.wait_for(lambda: daemon.metric(FAILED) == 1, what="the fallback refused for good")
        second = next(m for m in daemon.status()["messages"] if m["subject"] == "Database gone")
        assert second["steps"][FALLBACK_ALERT]["state"] == STEP_FAILED
        assert "SMTP 550" in second["steps"][FALLBACK_ALERT]["last_error"]
        assert len(relay.accepted()) == 1 and daemon.metric(SENT) == 1


def test_killed_after_the_fallback_was_committed_sends_no_second_mail(live_daemon, zendesk, pagerduty):
    pagerduty.set_down(True)
    with FakeRelay() as relay:
        daemon = live_daemon(extra=fallback_table(relay))
        daemon.send(make_message())
        relay.wait_for(1)
        daemon.wait_for(lambda: only_message(daemon)["steps"][FALLBACK_ALERT]["state"] == STEP_DONE,
                        what="the fallback committed")
        daemon.kill9()
        daemon.start()
        pagerduty.set_down(False)
        [message] = daemon.wait_settled(1)["messages"]
        assert message["state"] == DONE and len(pagerduty.incidents()) == 1
        assert len(relay.accepted()) == 1


@pytest.mark.parametrize("exc, retryable", [
    (smtplib.SMTPDataError(451, b"4.3.0 try later"), True),
    (smtplib.SMTPDataError(554, b"5.6.0 rejected"), False),
    (smtplib.SMTPAuthenticationError(454, b"4.7.0 temporary auth failure"), True),
    (smtplib.SMTPAuthenticationError(535, b"5.7.8 bad credentials"), False),
    (smtplib.SMTPRecipientsRefused({"a@example.org": (450, b"mailbox busy")}), True),
    (smtplib.SMTPRecipientsRefused({"a@example.org": (550, b"no such user")}), False),
    (smtplib.SMTPServerDisconnected("Connection unexpectedly closed"), True),
    (smtplib.SMTPConnectError(-1, b"no greeting"), True),
    (ConnectionRefusedError(111, "Connection refused"), True),
])
def test_relay_replies_are_classified_like_every_other_call(exc, retryable):
    assert classify(exc).retryable is retryable


def load_with(tmp_path, fallback: str, environ: dict[str, str] | None = None):
    path = tmp_path / "config.toml"
    path.write_text(f"[smtp]\nrecipients = [\"emergency@example.org\"]\n[fallback]\n{fallback}\n")
    return load_config(path, environ=environ or {})


def test_the_fallback_config_is_off_by_default_and_validated(tmp_path):
    assert load_with(tmp_path, "").fallback.enabled is False
    full = ('enabled = true\nrelay = "smtp.example.org:587"\nfrom_address = "e@example.org"\n'
            'to = ["oncall@example.org"]\nusername = "e"')
    config = load_with(tmp_path, full, {"EMERGENCYD_FALLBACK_PASSWORD": RELAY_PASSWORD}).fallback
    assert config.starttls and config.after_seconds == 120 and config.relay.port == 587
    assert RELAY_PASSWORD not in repr(config)
    for bad, error in [
        ('enabled = true\nrelay = "smtp.example.org:587"', "relay, from_address and to are required"),
        (full.replace('username = "e"', "starttls = false"), "only allowed for a loopback relay"),
        (full, "username and a password"),
        (full.replace('"oncall@example.org"', '"oncall"'), "fallback.to: 'oncall' is not an email address"),
        ("enabled = false\nafter = 10", "fallback.after: unknown key"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(error)):
            load_with(tmp_path, bad)
    plain = full.replace("smtp.example.org", "127.0.0.1").replace('username = "e"', "starttls = false")
    assert load_with(tmp_path, plain).fallback.starttls is False


def test_classify_knows_the_daemons_own_addresses_the_fallback_sender_included(tmp_path):
    """`classify` decides with the daemon's own addresses: the fallback alert's copy coming back is a loop."""
    config = write_config(tmp_path, dry_run=True, policy=True, extra=(
        '[fallback]\nenabled = true\nrelay = "127.0.0.1:2526"\nstarttls = false\n'
        'from_address = "emergencyd@example.org"\nto = ["oncall@example.org"]\n'))
    back = tmp_path / "back.eml"
    back.write_bytes(make_message(sender="emergencyd@example.org", subject="EMERGENCY: all our apps are down",
                                  body="All our apps are down since 02:10."))
    verdict = json.loads(run_cli(config, "classify", "--offline", str(back)).stdout)
    assert verdict["suppressed"] is True and verdict["category"] == "noise:loop", verdict
    other = tmp_path / "other.eml"
    other.write_bytes(make_message(sender="ops@tenant.example", subject="EMERGENCY: all our apps are down",
                                   body="All our apps are down since 02:10."))
    assert json.loads(run_cli(config, "classify", "--offline", str(other)).stdout)["page"] is True
