"""The shipped policy: each rule with realistic tenant wording, what it must not match, and the routing table."""
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from emergencyd.daemon.config.model import ConfigError, load_config
from emergencyd.escalation.hours import Window
from emergencyd.escalation.policy import classify
from emergencyd.escalation.policy_config import PolicyError, parse_policy
from emergencyd.parsers.message import parse_message
from tests.harness import ROOT

LONDON = ZoneInfo("Europe/London")
POLICY = load_config(ROOT / "config.toml", environ={}).policy
OURS = ("emergency@example.org",)
# A Wednesday in hours, a Saturday in waking hours, a Wednesday night.
IN_HOURS = datetime(2026, 11, 25, 11, 0, tzinfo=LONDON)
WAKING = datetime(2026, 11, 28, 11, 0, tzinfo=LONDON)
OVERNIGHT = datetime(2026, 11, 25, 23, 0, tzinfo=LONDON)


def mail(subject: str, body: str = "", sender: str = "dev@tenant.gov.example", headers: str = "") -> bytes:
    return (f"From: Dev <{sender}>\r\nTo: emergency@example.org\r\nSubject: {subject}\r\n"
            f"Message-ID: <{abs(hash((subject, body)))}@tenant.gov.example>\r\n{headers}"
            f"Content-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n").encode()


def verdict_of(raw: bytes, at: datetime = IN_HOURS, mail_from: str | None = "dev@tenant.gov.example"):
    return classify(parse_message(raw), received_at=at, mail_from=mail_from, own_addresses=OURS, policy=POLICY)


@pytest.mark.parametrize("subject, body, category, severity", [
    ("URGENT: all our apps are down", "Every app in our org returns 502 since 02:10.", "apps_not_served", "P1"),
    ("Service unavailable", "Our production apps are not being served, users see 503 Service Unavailable.",
     "apps_not_served", "P1"),
    ("Site down", "Hi, our live site is down for everyone, we changed nothing.", "apps_not_served", "P1"),
    ("Possible security breach", "We think one of our apps has been compromised via the platform.",
     "security_breach", "P1"),
    ("Leaked credentials", "Our service key credentials leaked in a public repo, we need them rotated now.",
     "security_breach", "P1"),
    ("Emergency fix blocked",
     "We need to deploy an emergency fix but cf push fails: the API is returning 503. Please help urgently.",
     "emergency_fix_blocked", "P1"),
    ("Hotfix", "We cannot push our hotfix, cf api times out.", "emergency_fix_blocked", "P1"),
    ("P1 on our production service", "Our live payment service has a P1 we cannot fix without you.",
     "production_p1", "P1"),
    ("Users cannot access the service", "Citizens can't log in since the platform change.", "production_p1", "P1"),
    ("failure pushing app", "cf push fails with: Error: invalid mode 0444", "cannot_push", "P2"),
    ("Deploys failing", "We are unable to deploy to staging or production since this morning.", "cannot_push", "P2"),
    ("CVE in buildpack", "Is the platform affected by CVE-2026-12345 in the Ruby buildpack?",
     "upstream_vulnerability", "P2"),
    ("Error rates", "We see elevated error rates on all routes since 10:00.", "elevated_error_rates", "P2"),
    ("Postgres", "Our database is down, the app logs say connection refused.", "component_failure", "P2"),
    ("Slow", "The app is extremely slow since the platform upgrade, pages take 30 seconds.",
     "substantial_degradation", "P2"),
    ("Flaky", "Some requests fail intermittently with 502, maybe 1 in 50.", "intermittent_degradation", "P3"),
    ("Cosmetic issue", "Minor: the logs page shows the wrong timezone, no immediate impact.",
     "minor_component", "P4"),
])
def test_each_rule_with_realistic_wording(subject, body, category, severity):
    verdict = verdict_of(mail(subject, body))
    assert (verdict.category, verdict.severity) == (category, severity), verdict.rules
    assert verdict.rules and verdict.rules[0].category == category
    assert verdict.rules[0].matched      # the text it matched is kept, for the explanation


@pytest.mark.parametrize("subject, body", [
    ("Question", "Not urgent, just a question about pushing apps."),
    ("Quick question", "How do I add a user to our org?"),
    ("Access request", "Could you add a new space for our team? No rush."),
    ("Billing", "Where can I find last month's invoice?"),
])
def test_questions_and_requests_are_not_incidents(subject, body):
    verdict = verdict_of(mail(subject, body))
    assert verdict.severity is None and verdict.category == "question_or_request"
    assert not verdict.page and verdict.zendesk_priority == "low"


@pytest.mark.parametrize("subject, body, not_category", [
    ("Test", "This is a test: our apps are down (not really).", "apps_not_served"),
    ("Resolved", "Not urgent: our apps are down for maintenance tonight, no impact.", "apps_not_served"),
    ("Breach of SLA?", "Not urgent, this is a test of the address.", "security_breach"),
    ("Question about hotfixes", "Is it possible to push a hotfix without downtime? Just a question.",
     "emergency_fix_blocked"),
])
def test_phrasings_the_p1_rules_must_not_match(subject, body, not_category):
    verdict = verdict_of(mail(subject, body))
    assert verdict.category != not_category and verdict.severity != "P1"


def test_matching_is_case_insensitive_and_unicode_aware():
    verdict = verdict_of(mail("ALL OUR APPS ARE DOWN", "We can\u2019t deploy"))
    assert verdict.category == "apps_not_served"
    fullwidth = verdict_of(mail("ｓｅｃｕｒｉｔｙ ｂｒｅａｃｈ", ""))       # NFKC folds full-width letters
    assert fullwidth.category == "security_breach"


def test_a_test_of_the_address_is_not_an_incident():
    verdict = verdict_of(mail("Test", "This is a test: our apps are down (not really)."), at=OVERNIGHT)
    assert verdict.category == "test_message" and not verdict.page


def test_a_forwarded_bounce_gets_a_ticket_but_no_page():
    verdict = verdict_of(mail("Fwd: Returned mail: see transcript for details",
                              "Forward the message.\n\n> From: Mail Delivery Subsystem <MAILER-DAEMON>"), at=OVERNIGHT)
    assert verdict.category == "forwarded_bounce" and verdict.ticket and not verdict.page


def test_quoted_history_does_not_decide():
    body = "Thanks, all fine now.\n\nOn Tue, 24 Nov 2026 at 10:00, Dev wrote:\n> all our apps are down"
    assert verdict_of(mail("Re: outage", body)).category != "apps_not_served"


def test_every_rule_that_fired_is_reported_and_the_first_decides():
    verdict = verdict_of(mail("Emergency fix blocked", "All our apps are down and we cannot push the urgent fix."))
    fired = [hit.rule for hit in verdict.rules]
    assert fired[0] == "apps-not-served" and "emergency-fix-blocked" in fired and "cannot-push" in fired
    assert verdict.reason == "rule apps-not-served matched 'apps are down' in the body"


def test_unclassified_mail_from_a_real_sender_is_a_possible_p1():
    verdict = verdict_of(mail("Hello", "Please call me back on 01234 567890 about our service."), at=OVERNIGHT)
    assert (verdict.category, verdict.severity, verdict.page, verdict.urgency) == ("unclassified", "P1", True, "high")
    assert "missed P1" in verdict.reason and verdict.rules == ()


def test_unclassified_severity_is_configurable(tmp_path):
    shipped = (ROOT / "config.toml").read_text()
    config = tmp_path / "config.toml"
    config.write_text(shipped.replace('unclassified_severity = "P1"', 'unclassified_severity = "P3"'))
    policy = load_config(config, environ={}).policy
    verdict = classify(parse_message(mail("Hello", "call me")), received_at=OVERNIGHT, mail_from=None,
                       own_addresses=OURS, policy=policy)
    assert verdict.severity == "P3" and not verdict.page


def test_noise_is_recognised_first_and_never_pages():
    bounce = mail("Undelivered Mail Returned to Sender", "all our apps are down", sender="MAILER-DAEMON@mx.example",
                  headers="Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n")
    verdict = verdict_of(bounce, at=OVERNIGHT, mail_from="")
    assert verdict.suppressed and not verdict.page and not verdict.ticket
    assert verdict.category == "noise:bounce" and verdict.reason.startswith("bounce:")
    auto = verdict_of(mail("Automatic reply: all our apps are down", "I am out of the office.",
                           headers="Auto-Submitted: auto-replied\r\n"), at=OVERNIGHT)
    assert auto.suppressed and auto.category == "noise:auto_reply" and not auto.page


NOTICES = ROOT / "tests" / "fixtures" / "noise"


@pytest.mark.parametrize("name", ["notice_returned_mail_ordinary_sender.eml",
                                  "notice_antivirus_gateway_encoded_subject.eml",
                                  "notice_ndr_mailbox_batv_return_path.eml", "notice_gateway_re_wrapper_french.eml",
                                  "list_notice_unsubscribed.eml", "list_notice_moderation_german.eml"])
def test_notices_no_header_marks_never_page_at_night(name):
    raw = (NOTICES / name).read_bytes()
    verdict = classify(parse_message(raw), received_at=OVERNIGHT, mail_from=None, own_addresses=OURS, policy=POLICY)
    assert verdict.suppressed and not verdict.page and verdict.category in ("noise:bounce", "noise:list_notice")


@pytest.mark.parametrize("name", ["human_our_mails_bounce_site_down.eml", "human_relay_monitor_alert.eml",
                                  "human_list_post_about_moderation.eml"])
def test_a_tenants_mail_in_the_words_of_those_notices_pages(name):
    raw = (NOTICES / name).read_bytes()
    verdict = classify(parse_message(raw), received_at=OVERNIGHT, mail_from=None, own_addresses=OURS, policy=POLICY)
    assert not verdict.suppressed and verdict.page and verdict.severity == "P1", verdict.reason


# The routing table, cell by cell, as the manual's table gives it.
ROUTING = [
    # severity, window, page urgency, Zendesk priority, respond within
    ("P1", IN_HOURS, "high", "urgent", timedelta(minutes=20)),
    ("P1", WAKING, "high", "urgent", timedelta(minutes=40)),
    ("P1", OVERNIGHT, "high", "urgent", timedelta(minutes=40)),
    ("P2", IN_HOURS, "high", "high", timedelta(minutes=30)),
    ("P2", WAKING, "low", "high", None),
    ("P2", OVERNIGHT, "low", "high", None),
    ("P3", IN_HOURS, "low", "normal", timedelta(hours=2)),
    ("P3", WAKING, None, "normal", None),
    ("P3", OVERNIGHT, None, "normal", None),
    ("P4", IN_HOURS, None, "low", None),
    ("P4", WAKING, None, "low", None),
    ("P4", OVERNIGHT, None, "low", None),
]
SAMPLES = {
    "P1": mail("Outage", "All our apps are down."),
    "P2": mail("Deploys failing", "We are unable to deploy since this morning."),
    "P3": mail("Flaky", "Some requests fail intermittently."),
    "P4": mail("Cosmetic", "A minor issue with no immediate impact."),
}


@pytest.mark.parametrize("severity, at, urgency, priority, within", ROUTING)
def test_routing_table(severity, at, urgency, priority, within):
    verdict = verdict_of(SAMPLES[severity], at=at)
    assert verdict.severity == severity
    assert (verdict.page, verdict.urgency, verdict.zendesk_priority) == (urgency is not None, urgency, priority)
    if within is not None:
        assert verdict.respond_by == at + within


def test_targets_outside_hours_count_working_time():
    friday_evening = datetime(2026, 11, 27, 18, 0, tzinfo=LONDON)
    p2 = verdict_of(SAMPLES["P2"], at=friday_evening)
    assert p2.respond_by == datetime(2026, 11, 30, 9, 30, tzinfo=LONDON)     # Monday, 30 working minutes in
    p4 = verdict_of(SAMPLES["P4"], at=datetime(2026, 11, 27, 16, 0, tzinfo=LONDON))
    assert p4.respond_by == datetime(2026, 11, 30, 16, 0, tzinfo=LONDON)     # one business day
    assert p4.update_every == timedelta(hours=16) and p4.working_time


def test_the_window_comes_from_the_receive_time_including_bank_holidays():
    boxing_day_observed = datetime(2026, 12, 28, 10, 0, tzinfo=LONDON)     # a Monday, closed
    verdict = verdict_of(SAMPLES["P2"], at=boxing_day_observed)
    assert verdict.window == Window.OUT_OF_HOURS_WAKING and verdict.urgency == "low"
    utc_instant = datetime(2026, 3, 30, 8, 30, tzinfo=timezone.utc)       # 09:30 BST, a Monday
    assert verdict_of(SAMPLES["P1"], at=utc_instant).window == Window.IN_HOURS


def test_generic_subjects_become_descriptive():
    verdict = verdict_of(mail("failure pushing app", "Hi team,\n\ncf push fails with:\nError: invalid mode 0444\n"))
    assert verdict.ticket_subject == "failure pushing app: invalid mode 0444"
    specific = verdict_of(mail("Deploy of payments-api fails with invalid mode 0444", "see subject"))
    assert specific.ticket_subject == "Deploy of payments-api fails with invalid mode 0444"


@pytest.mark.parametrize("change, message", [
    (("severity = \"P2\"", "severity = \"P9\""), "severity: expected P1, P2, P3, P4 or 'none'"),
    (("respond_within = \"20m\"", "respond_within = \"soon\""), "policy.routing.P1.in_hours.respond_within"),
    (("urgency = \"low\",  zendesk_priority = \"high\"", "urgency = \"loud\", zendesk_priority = \"high\""),
     "urgency: expected high, low or none"),
    (("timezone = \"Europe/London\"", "timezone = \"Mars/Olympus\""), "policy.timezone: unknown time zone"),
    (("extra_closures = []", "extra_closures = [\"2026-13-01\"]"), "policy.extra_closures"),
    (("fields = [\"subject\", \"body\"]", "fields = [\"subjct\"]"), "fields: 'subjct' is not one of"),
])
def test_policy_errors_name_the_key(tmp_path, change, message):
    shipped = (ROOT / "config.toml").read_text()
    assert change[0] in shipped
    config = tmp_path / "config.toml"
    config.write_text(shipped.replace(change[0], change[1], 1))
    with pytest.raises(ConfigError) as info:
        load_config(config, environ={})
    assert message in str(info.value)


def test_a_bad_regex_is_named():
    with pytest.raises(PolicyError, match=r"policy.rules\[0\] \(x\).regexes: '\(' is not a valid regex"):
        parse_policy({"rules": [{"name": "x", "category": "c", "severity": "P1", "regexes": ["("]}],
                      "routing": {}})


def test_without_a_policy_every_mail_pages_as_the_mailing_list_did():
    verdict = classify(parse_message(mail("Hello", "hi")), received_at=OVERNIGHT, mail_from=None,
                       own_addresses=OURS, policy=parse_policy(None))
    assert verdict.page and verdict.urgency == "high" and verdict.severity == "P1"
