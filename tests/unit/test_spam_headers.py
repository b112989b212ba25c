"""The relay's spam filter as a second opinion ([trust] relay_spam_headers): its X-Spam* fields count
only where its Authentication-Results would (above the Received line of the hop from outside), a
sender's own never do, and mail it calls spam gets a ticket tagged suspected-spam and no page unless
it is a verified tenant's. Each decision with its pair: the same words that must still page."""
from __future__ import annotations

import tomllib
from datetime import datetime, timezone

import pytest

from emergencyd.escalation.content import describe_verdict, ticket_tags
from emergencyd.escalation.policy import classify
from emergencyd.escalation.policy_config import parse_policy
from emergencyd.parsers.message import parse_message
from emergencyd.parsers.spam_headers import SpamVerdict, relay_spam_verdict
from tests.harness import OUTAGE, ROOT, make_message

SHIPPED = tomllib.loads((ROOT / "config.toml").read_text())["policy"]
NIGHT = datetime(2026, 11, 25, 23, 0, tzinfo=timezone.utc)
FROM_OUTSIDE = "Received: from mail.sender.example (mail.sender.example [192.0.2.7]) by mx.example.org\r\n"
RSPAMD_SPAM = ("X-Spamd-Result: default: True [9.40 / 15.00]; R_SPF_FAIL(1.00)[-all]; FUZZY_DENIED(5.20)[1:abc:1.0];"
               " MIME_GOOD(-0.10)[text/plain]; BAYES_SPAM(3.30)[99.9%]\r\nX-Spam: Yes\r\n")
SA_SPAM = "X-Spam-Flag: YES\r\nX-Spam-Status: Yes, score=7.1 required=5.0 tests=FREEMAIL_FROM,\r\n\tHTML_MESSAGE,URIBL_BLACK autolearn=no\r\n"
TRUST = {"relay_spam_headers": True, "tenant_domains": ["tenant.gov.example"]}


def headers_of(raw: bytes) -> tuple[tuple[str, str], ...]:
    return parse_message(raw).headers


def verdict_of(raw: bytes, trust: dict | None = TRUST):
    return classify(parse_message(raw), received_at=NIGHT, mail_from=None, own_addresses=("emergency@example.org",),
                    policy=parse_policy(SHIPPED, trust))


# ---------------------------------------------------------------------------
# The fields and where they count
# ---------------------------------------------------------------------------

def test_rspamd_and_spamassassin_fields_are_read():
    rspamd = relay_spam_verdict(headers_of((RSPAMD_SPAM + FROM_OUTSIDE).encode() + make_message()))
    assert (rspamd.field, rspamd.spam, rspamd.score, rspamd.required) == ("X-Spamd-Result", True, 9.4, 15.0)
    assert rspamd.symbols[:3] == ("FUZZY_DENIED", "BAYES_SPAM", "R_SPF_FAIL")      # highest score first
    sa = relay_spam_verdict(headers_of((SA_SPAM + FROM_OUTSIDE).encode() + make_message()))
    assert (sa.field, sa.spam, sa.score, sa.required) == ("X-Spam-Status", True, 7.1, 5.0)
    assert sa.symbols == ("FREEMAIL_FROM", "HTML_MESSAGE", "URIBL_BLACK")
    assert "score 7.1 of 5" in sa.reason
    ham = relay_spam_verdict(headers_of(("X-Spam-Status: No, score=-0.1 required=5.0 tests=none\r\n"
                                         + FROM_OUTSIDE).encode() + make_message()))
    assert (ham.spam, ham.symbols) == (False, ())
    assert relay_spam_verdict(headers_of(make_message())) is None
    assert relay_spam_verdict(headers_of(("X-Spam-Flag: maybe\r\nX-Spamd-Result: garbage\r\n"
                                          + FROM_OUTSIDE).encode() + make_message())) is None


@pytest.mark.parametrize("senders_own", ["X-Spam-Status: No, score=-5.0 required=5.0\r\n", "X-Spam: No\r\n",
                                         "X-Spam-Flag: NO\r\n", "X-Spamd-Result: default: False [-5.00 / 15.00]\r\n"])
def test_a_senders_own_field_changes_nothing(senders_own):
    # Below the Received line of the hop from outside: the sender wrote it, it is not read at all.
    forged_ham = (SA_SPAM + FROM_OUTSIDE).encode() + make_message(extra_headers=senders_own)
    assert relay_spam_verdict(headers_of(forged_ham)).spam is True
    forged_only = FROM_OUTSIDE.encode() + make_message(extra_headers=senders_own.replace("No", "Yes")
                                                       .replace("NO", "YES").replace("False", "True"))
    assert relay_spam_verdict(headers_of(forged_only)) is None


def test_a_relay_that_writes_its_own_received_first_is_read_below_it():
    raw = ("Received: from mx.example.org by relay.example.org\r\n" + SA_SPAM + FROM_OUTSIDE).encode() + make_message()
    assert relay_spam_verdict(headers_of(raw)) is None
    assert relay_spam_verdict(headers_of(raw), own_received_fields=1).spam is True


def test_within_the_block_a_spam_field_wins_over_a_clean_one_below_it():
    raw = ("X-Spam: No\r\n" + SA_SPAM + FROM_OUTSIDE).encode() + make_message()
    assert relay_spam_verdict(headers_of(raw)) == SpamVerdict("X-Spam-Status", True, 7.1, 5.0,
                                                               ("FREEMAIL_FROM", "HTML_MESSAGE", "URIBL_BLACK"))


# ---------------------------------------------------------------------------
# What it does to a decision, in pairs
# ---------------------------------------------------------------------------

def test_a_strangers_outage_report_flagged_as_spam_is_a_ticket_and_no_page():
    raw = (RSPAMD_SPAM + FROM_OUTSIDE).encode() + make_message(sender="win@prizes.example", **OUTAGE)
    verdict = verdict_of(raw)
    assert (verdict.severity, verdict.page, verdict.ticket) == ("P1", False, True)
    assert verdict.page_held.startswith("not paged: suspected spam, the relay's spam filter says spam in X-Spamd-Result")
    document = verdict.as_dict()
    assert {"suspected-spam", "page-held"} <= set(ticket_tags(verdict))
    assert document["spam"]["symbols"][0] == "FUZZY_DENIED"
    assert "suspected spam" in describe_verdict(verdict)


def test_the_same_report_without_the_flag_pages():
    raw = ("X-Spam: No\r\n" + FROM_OUTSIDE).encode() + make_message(sender="win@prizes.example", **OUTAGE)
    verdict = verdict_of(raw)
    assert (verdict.severity, verdict.page, verdict.urgency, verdict.page_held) == ("P1", True, "high", None)
    assert "suspected-spam" not in ticket_tags(verdict)


def test_a_verified_tenants_mail_pages_though_the_filter_calls_it_spam():
    authenticated = ("Authentication-Results: mx.example.org; dkim=pass header.d=tenant.gov.example;"
                     " dmarc=pass header.from=tenant.gov.example\r\n")
    raw = (authenticated + SA_SPAM + FROM_OUTSIDE).encode() + make_message(sender="dev@tenant.gov.example", **OUTAGE)
    verdict = verdict_of(raw, {**TRUST, "trusted_authserv_ids": ["mx.example.org"]})
    assert (verdict.page, verdict.page_held, verdict.trust.verified) == (True, None, True)
    unverified = verdict_of((SA_SPAM + FROM_OUTSIDE).encode() + make_message(sender="dev@tenant.gov.example",
                                                                              **OUTAGE))
    assert unverified.page is False and unverified.page_held.startswith("not paged: suspected spam")


def test_without_relay_spam_headers_the_flag_is_not_read():
    raw = (RSPAMD_SPAM + FROM_OUTSIDE).encode() + make_message(sender="win@prizes.example", **OUTAGE)
    verdict = verdict_of(raw, {"tenant_domains": ["tenant.gov.example"]})
    assert (verdict.page, verdict.page_held, verdict.trust) == (True, None, None)


# ---------------------------------------------------------------------------
# Through the daemon: SMTP from the relay, the fake Zendesk and PagerDuty
# ---------------------------------------------------------------------------
