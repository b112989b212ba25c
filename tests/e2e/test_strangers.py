"""Only tenants' emergencies page: the tenant directory, and a stranger's mail that no rule matches
gets a ticket tagged unknown-sender instead of a page. Each decision comes with its pair: the same
kind of mail that must still page."""
from __future__ import annotations

import tomllib
from datetime import datetime, timezone

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from emergencyd.escalation.content import describe_verdict, ticket_tags
from emergencyd.escalation.policy import classify
from emergencyd.escalation.policy_config import PolicyError, parse_policy
from emergencyd.escalation.records import DONE, PAGE, STEP_DONE
from emergencyd.parsers.message import parse_message
from tests.harness import NEWSLETTER, OUTAGE, ROOT, make_message, run_cli, write_config

SHIPPED = tomllib.loads((ROOT / "config.toml").read_text())["policy"]
NIGHT = datetime(2026, 11, 25, 23, 0, tzinfo=timezone.utc)
DIRECTORY = {"tenant_domains": ["tenant.gov.example"], "tenant_addresses": ["Ops.Lead@Personal.example"]}
STRANGERS_PAGE = "page"    # trust.stranger_unclassified: a stranger's unclassified mail pages


def verdict_of(trust: dict | None, sender: str, **mail: str):
    raw = make_message(sender=sender, **mail)
    return classify(parse_message(raw), received_at=NIGHT, mail_from=None, own_addresses=("emergency@example.org",),
                    policy=parse_policy(SHIPPED, trust))


def test_a_strangers_mail_that_no_rule_matches_is_a_ticket_and_no_page():
    verdict = verdict_of(DIRECTORY, "news@shop.example", **NEWSLETTER)
    assert (verdict.page, verdict.urgency, verdict.ticket, verdict.severity) == (False, None, True, None)
    document = verdict.as_dict()
    assert document["tenant"] == "not a tenant (news@shop.example is not in the directory)"
    assert 'stranger_unclassified = "ticket"' in document["stranger"]
    assert "unknown-sender" in ticket_tags(verdict)
    assert describe_verdict(verdict).endswith(document["stranger"])
    assert verdict.zendesk_priority == parse_policy(SHIPPED).route(None, verdict.window).zendesk_priority


def test_a_strangers_real_emergency_still_pages_as_its_rule_says():
    verdict = verdict_of(DIRECTORY, "researcher@security.example", **OUTAGE)
    assert (verdict.page, verdict.urgency, verdict.severity) == (True, "high", "P1")
    assert verdict.stranger is None and verdict.tenant.startswith("not a tenant")
    assert "unknown-sender" not in ticket_tags(verdict)


@pytest.mark.parametrize("sender, why", [
    ("dev@tenant.gov.example", "a tenant (the tenant domain tenant.gov.example)"),
    ("dev@apps.tenant.gov.example", "a tenant (the tenant domain tenant.gov.example)"),
    ("ops.lead@personal.example", "a tenant (the tenant address ops.lead@personal.example)"),
])
def test_a_tenants_mail_that_no_rule_matches_still_pages(sender, why):
    verdict = verdict_of(DIRECTORY, sender, **NEWSLETTER)
    assert (verdict.page, verdict.severity) == (True, "P1")
    assert verdict.tenant == why and verdict.stranger is None


def test_a_lookalike_domain_is_a_stranger():
    verdict = verdict_of(DIRECTORY, "dev@eviltenant.gov.example", **NEWSLETTER)
    assert verdict.page is False and verdict.stranger is not None


def test_with_an_empty_directory_every_unmatched_mail_pages_as_before():
    verdict = verdict_of(None, "news@shop.example", **NEWSLETTER)
    assert (verdict.page, verdict.severity, verdict.tenant, verdict.stranger) == (True, "P1", None, None)


def test_stranger_unclassified_page_restores_the_page():
    verdict = verdict_of({**DIRECTORY, "stranger_unclassified": STRANGERS_PAGE}, "news@shop.example", **NEWSLETTER)
    assert (verdict.page, verdict.severity, verdict.stranger) == (True, "P1", None)


@pytest.mark.parametrize("trust, message", [
    ({"stranger_unclassified": "ignore"}, 'trust.stranger_unclassified: expected one of "ticket", "page"'),
    ({"tenant_addresses": ["ops.example"]}, "trust.tenant_addresses: 'ops.example' is not an address"),
    ({"tenant_adresses": ["a@b.example"]}, "tenant_adresses"),
])
def test_the_directory_config_is_validated(trust, message):
    with pytest.raises(PolicyError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_policy(SHIPPED, trust)


def test_check_config_says_what_the_directory_is(tmp_path):
    for name in ("empty", "known"):
        (tmp_path / name).mkdir()
    empty = write_config(tmp_path / "empty", dry_run=True, policy=True)
    said = run_cli(empty, "check-config").stdout
    assert "tenant directory: empty: every sender counts as a tenant" in said
    known = write_config(tmp_path / "known", dry_run=True, policy=True,
                         extra='[trust]\ntenant_domains = ["tenant.gov.example"]\n')
    assert "tenant directory: 1 domain(s), 0 address(es); a stranger's mail that no rule matches gets a ticket, " \
           "no page" in run_cli(known, "check-config").stdout


def test_through_the_daemon_a_strangers_newsletter_is_a_ticket_and_a_tenants_unmatched_mail_pages(
        live_daemon, zendesk, pagerduty):
    daemon = live_daemon(policy=True, extra='[trust]\ntenant_domains = ["tenant.gov.example"]\n')
    daemon.send(make_message(sender="news@shop.example", message_id="<news@shop.example>", **NEWSLETTER))
    daemon.send(make_message(sender="dev@tenant.gov.example", message_id="<t@tenant.gov.example>",
                             subject="Odd behaviour", body="Something looks off with our space, can you check?"))
    messages = {m["sender"]: m for m in daemon.wait_settled(2)["messages"]}
    stranger, tenant = messages["news@shop.example"], messages["dev@tenant.gov.example"]
    assert stranger["state"] == DONE and PAGE not in stranger["steps"]
    assert "unknown-sender" in zendesk.ticket(stranger["ticket_id"])["tags"]
    notes = [c["body"] for c in zendesk.comments(stranger["ticket_id"]) if not c["public"]]
    assert any("Sender: not a tenant (news@shop.example is not in the directory)" in n for n in notes), notes
    assert tenant["steps"][PAGE]["state"] == STEP_DONE
    assert [i["dedup_key"] for i in pagerduty.incidents()] == [tenant["page_key"]]
    assert daemon.metric("emergencyd_stranger_mail_ticketed_total") == 1
    text = daemon.cli("status").stdout
    assert "tenant directory: 1 domain(s), 0 address(es)" in text


def _tenant_domain_by_scan(domain: str | None, tenant_domains: tuple[str, ...]) -> str | None:
    """The directory's domain look-up as a scan of the list: the reference for the indexed one."""
    if not domain:
        return None
    return next((t for t in tenant_domains if domain == t or domain.endswith("." + t)), None)


_LABELS = ["tenant", "gov", "example", "apps", "x", "xtenant", "ample", "e", "-", "a.b"]


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(domains=st.lists(st.lists(st.sampled_from(_LABELS), min_size=1, max_size=3).map(".".join), max_size=6),
       asked=st.lists(st.sampled_from(_LABELS + [""]), max_size=4).map(".".join))
@example(domains=["gov.example", "tenant.gov.example"], asked="apps.tenant.gov.example")   # the first listed wins
@example(domains=["example"], asked="ample")                                              # a label, not a suffix
def test_the_directorys_domain_look_up_is_the_scan_of_the_list(domains, asked):
    from emergencyd.escalation.trust import TrustPolicy, tenant_domain_of
    assert tenant_domain_of(asked, TrustPolicy(tenant_domains=tuple(domains))) == \
        _tenant_domain_by_scan(asked, tuple(domains))
