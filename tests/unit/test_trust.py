"""Sender trust: the Authentication-Results parser, the trusted-block rule, the paging rule,
emergencyd's own DKIM check with dkimpy, and the whole path through the real daemon."""
from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emergencyd.escalation.dkim_check import (
    check_dkim,
    decide_trust,
    resolver_lookup,
    verify_signatures,
)
from emergencyd.escalation.policy import classify
from emergencyd.escalation.policy_config import PolicyError, parse_policy, parse_trust
from emergencyd.escalation.records import Envelope
from emergencyd.escalation.trust import TrustPolicy, page_hold, peer_trusted
from emergencyd.parsers.auth_results import (
    DkimCheck,
    from_domain,
    parse_authentication_results,
    sender_trust,
)
from emergencyd.parsers.message import parse_message
from tests.harness import make_message, signed

OURS = "mx.ours.example"

# Real-world shapes (values as the MTAs write them; addresses and keys changed).
GMAIL = ("mx.google.com;\r\n       dkim=pass header.i=@tenant.example header.s=20230601 header.b=AbCdEf12;\r\n"
         "       spf=pass (google.com: domain of alice@tenant.example designates 192.0.2.7 as permitted sender)"
         " smtp.mailfrom=alice@tenant.example;\r\n"
         "       dmarc=pass (p=REJECT sp=REJECT dis=NONE) header.from=tenant.example")
MICROSOFT_365 = ("spf=pass (sender IP is 192.0.2.9) smtp.mailfrom=tenant.example; dkim=pass (signature was verified)"
                 " header.d=tenant.example;dmarc=pass action=none header.from=tenant.example;compauth=pass reason=100")
OPENDMARC = f"{OURS}; dmarc=fail (p=reject dis=none) header.from=tenant.example"
OPENDKIM = f"{OURS};\r\n\tdkim=fail reason=\"signature verification failed\" (2048-bit key;\r\n" \
           "\tunprotected) header.d=tenant.example header.i=@tenant.example header.a=rsa-sha256 header.s=mail"
SPF_MILTER = f"{OURS}; spf=fail (mailfrom) smtp.mailfrom=tenant.example (client-ip=198.51.100.66; helo=x)"
OUTSIDE = "from attacker.example (attacker.example [198.51.100.66]) by mx.ours.example (Postfix) with ESMTP"


def headers(*pairs: tuple[str, str], sender: str = "alice@tenant.example") -> tuple[tuple[str, str], ...]:
    return tuple(pairs) + (("From", f"Alice <{sender}>"), ("Subject", "Apps down"))


# -- one field -------------------------------------------------------------------------------


def test_gmail_field_with_comments_and_properties():
    parsed = parse_authentication_results(GMAIL)
    assert parsed.authserv_id == "mx.google.com"
    assert [(r.method, r.result) for r in parsed.results] == [("dkim", "pass"), ("spf", "pass"), ("dmarc", "pass")]
    assert parsed.results[0].prop("header.i") == "@tenant.example"
    assert parsed.results[2].prop("header.from") == "tenant.example"
    assert "p=REJECT" in parsed.results[2].comment


def test_microsoft_365_field_has_no_authserv_id_and_is_never_ours():
    parsed = parse_authentication_results(MICROSOFT_365)
    assert parsed.authserv_id is None
    assert [r.method for r in parsed.results] == ["spf", "dkim", "dmarc", "compauth"]
    trust = sender_trust(headers(("Authentication-Results", MICROSOFT_365)), [OURS, "spf=pass"])
    assert (trust.dmarc, trust.verified) == (None, None)


def test_version_quoted_strings_and_semicolons_inside_comments_and_quotes():
    parsed = parse_authentication_results(
        '"mx.ours.example" 1; dkim/1=pass (a comment; with = and (nested; parens)) header.d=tenant.example '
        'reason="quoted; still one result"; dmarc=pass header.from=tenant.example')
    assert parsed.authserv_id == OURS
    assert [(r.method, r.result) for r in parsed.results] == [("dkim", "pass"), ("dmarc", "pass")]
    assert parsed.results[0].prop("header.d") == "tenant.example"


def test_no_result_and_garbage():
    assert parse_authentication_results(f"{OURS}; none") == parse_authentication_results(f"{OURS};none")
    assert parse_authentication_results(f"{OURS}; none").results == ()
    for garbage in ("", "   ", ";;;", "(((", '"unterminated', "\x00\xff", "=;=;=", "a" * 100_000, ")(" * 5000):
        parsed = parse_authentication_results(garbage)       # no exception, nothing trusted by accident
        assert parsed is None or parsed.authserv_id is None or not parsed.results


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.text(alphabet=st.sampled_from(list('mx.ours.example; =()"\\/@dkimpassfail \r\n\t')), max_size=200),
       st.integers(min_value=0, max_value=3))
def test_any_field_value_parses_without_error_and_only_our_id_can_verify(value, position):
    fields = [("Received", OUTSIDE)] * 3
    fields.insert(position, ("Authentication-Results", value))
    trust = sender_trust(headers(*fields), [OURS])
    parsed = parse_authentication_results(value)
    if trust.authserv_id is not None:
        assert position == 0 and parsed.authserv_id == OURS
    assert trust.verified is None or trust.authserv_id == OURS


def test_from_domain_needs_exactly_one_address():
    assert from_domain((("From", "Alice <Alice@Tenant.Example>"),)) == "tenant.example"
    assert from_domain((("From", "a@tenant.example"), ("From", "b@other.example"))) is None
    assert from_domain((("From", "a@tenant.example, b@other.example"),)) is None
    assert from_domain((("Subject", "x"),)) is None


# -- which fields count --------------------------------------------------------------------


def test_our_fields_above_the_first_received_count_and_the_topmost_result_wins():
    trust = sender_trust(headers(("Authentication-Results", OPENDMARC), ("Authentication-Results", OPENDKIM),
                                 ("Authentication-Results", SPF_MILTER), ("Received", OUTSIDE),
                                 ("Authentication-Results", f"{OURS}; dmarc=pass header.from=tenant.example")),
                         [OURS])
    assert (trust.spf, trust.dkim, trust.dmarc, trust.dmarc_policy) == ("fail", "fail", "fail", "reject")
    assert trust.verified is False and trust.authserv_id == OURS
    assert "DMARC fail for tenant.example (reported by mx.ours.example)" in trust.reason


def test_a_forged_field_below_a_received_line_from_outside_is_ignored():
    forged = headers(("Received", OUTSIDE), ("Authentication-Results", f"{OURS}; dmarc=pass header.from=tenant.example"))
    trust = sender_trust(forged, [OURS])
    assert (trust.dmarc, trust.verified, trust.authserv_id) == (None, None, None)
    assert trust.reason == "no Authentication-Results from a trusted authserv-id"


def test_another_authserv_id_never_counts_even_on_top():
    trust = sender_trust(headers(("Authentication-Results", "evil.example; dmarc=pass header.from=tenant.example")),
                         [OURS])
    assert trust.verified is None


def test_no_trusted_ids_trust_nothing():
    assert sender_trust(headers(("Authentication-Results", OPENDMARC)), []).dmarc is None


def test_gmail_shape_below_its_own_received_lines_needs_own_received_fields():
    shape = headers(("Delivered-To", "emergency@example.org"), ("Received", "by 2002:a05:6520:1:b0:1 with SMTP id x"),
                    ("X-Received", "by 2002:a05:1"), ("Return-Path", "<alice@tenant.example>"),
                    ("Received", "from mail.tenant.example by mx.google.com with ESMTPS id y"),
                    ("Received-SPF", "pass (google.com: ...)"), ("Authentication-Results", GMAIL))
    assert sender_trust(shape, ["mx.google.com"]).verified is None            # below the first Received
    trust = sender_trust(shape, ["mx.google.com"], own_received_fields=2)
    assert (trust.verified, trust.dmarc, trust.spf) == (True, "pass", "pass")
    assert trust.reason == "DMARC pass for tenant.example (reported by mx.google.com)"


def test_dmarc_about_another_domain_is_not_this_messages():
    trust = sender_trust(headers(("Authentication-Results", f"{OURS}; dmarc=pass header.from=other.example")), [OURS])
    assert (trust.dmarc, trust.verified) == (None, None)


def test_aligned_dkim_pass_verifies_without_dmarc_and_an_unaligned_one_does_not():
    aligned = sender_trust(headers(("Authentication-Results", f"{OURS}; dkim=pass header.d=tenant.example")), [OURS],
                           )
    assert aligned.verified is True and aligned.dkim_domains == ("tenant.example",)
    unaligned = sender_trust(headers(("Authentication-Results", f"{OURS}; dkim=pass header.d=esp.example")), [OURS])
    assert unaligned.verified is None and unaligned.dkim == "pass"


# -- what trust does to a page -------------------------------------------------------------


def spoofed(policy: str = "reject"):
    return sender_trust(headers(("Authentication-Results",
                                 f"{OURS}; dmarc=fail (p={policy}) header.from=tenant.example")), [OURS])


def test_dmarc_fail_of_a_tenant_domain_holds_the_page_unless_configured():
    policy = TrustPolicy(trusted_authserv_ids=(OURS,), tenant_domains=("tenant.example",))
    alice = "alice@tenant.example"
    assert "DMARC fail for the tenant domain tenant.example" in page_hold(spoofed(), policy, alice)
    assert page_hold(spoofed(), TrustPolicy((OURS,), tenant_domains=("tenant.example",), page_dmarc_fail=True),
                     alice) is None
    assert page_hold(spoofed("none"), policy, alice) is None     # the tenant says its own mail may fail
    assert page_hold(spoofed(), TrustPolicy((OURS,), tenant_domains=("other.example",)), alice) is None


def test_page_unverified_false_pages_only_verified_tenants():
    policy = TrustPolicy((OURS,), tenant_domains=("tenant.example",), page_unverified=False)
    verified = sender_trust(headers(("Authentication-Results", f"{OURS}; dmarc=pass header.from=tenant.example")),
                            [OURS])
    unknown = sender_trust(headers(), [OURS])
    assert page_hold(verified, policy, "alice@tenant.example") is None
    assert "not verified as a tenant" in page_hold(unknown, policy, "alice@tenant.example")


def freemail(dmarc: str):
    return sender_trust(headers(("Authentication-Results", f"{OURS}; dmarc={dmarc} (p=reject) header.from=gmail.example"),
                                sender="ops.lead@gmail.example"), [OURS])


def test_a_tenant_address_outside_the_tenant_domains_is_a_tenant_for_trust_too():
    # The directory's addresses count as its domains do: a forged tenant address is held, a verified one pages.
    lead = "ops.lead@gmail.example"
    policy = TrustPolicy((OURS,), tenant_domains=("tenant.example",), tenant_addresses=(lead,))
    assert page_hold(freemail("fail"), policy, lead) == \
        "not paged: DMARC fail for the tenant address ops.lead@gmail.example, a likely forgery " \
        "([trust] page_dmarc_fail = false)"
    assert page_hold(freemail("fail"), policy, "someone.else@gmail.example") is None   # a stranger: as before
    strict = TrustPolicy((OURS,), tenant_addresses=(lead,), page_unverified=False)
    assert page_hold(freemail("pass"), strict, lead) is None
    assert "not verified as a tenant" in page_hold(freemail("pass"), strict, "someone.else@gmail.example")
    assert parse_policy(None, {"trusted_authserv_ids": [OURS], "tenant_addresses": [lead],
                               "page_unverified": False}).trust.page_unverified is False


def test_classify_carries_trust_into_the_verdict():
    raw = (f"Authentication-Results: {OPENDMARC}\r\nReceived: {OUTSIDE}\r\n").encode() + make_message(
        sender="alice@tenant.example", body="All our apps are down.")
    policy = parse_policy(None, {"trusted_authserv_ids": [OURS], "tenant_domains": ["tenant.example"]})
    verdict = classify(parse_message(raw), received_at=datetime(2026, 11, 25, 11, tzinfo=timezone.utc),
                       mail_from=None, own_addresses=(), policy=policy)
    assert verdict.severity == "P1" and verdict.page is False and verdict.urgency is None
    document = verdict.as_dict()
    assert document["sender_trust"]["verified"] is False and "likely forgery" in document["page_held"]


def test_peer_trust_is_for_the_relay_only():
    relays = ("127.0.0.0/8", "::1/128")
    assert peer_trusted("smtp", "127.0.0.1:40000", relays) and peer_trusted("smtp", "::1:40000", relays)
    assert not peer_trusted("smtp", "198.51.100.66:40000", relays) and not peer_trusted("smtp", "", relays)
    assert peer_trusted("imap", "", relays) and peer_trusted("inject", "", relays)


def test_trust_config_is_validated():
    assert parse_trust(None) == TrustPolicy()
    with pytest.raises(PolicyError, match="trust.trusted_ids: unknown key"):
        parse_trust({"trusted_ids": [OURS]})
    with pytest.raises(PolicyError, match="trust.page_unverified: false would page no one"):
        parse_trust({"page_unverified": False})
    with pytest.raises(PolicyError, match="trust.trusted_relays"):
        parse_trust({"trusted_relays": ["nowhere"]})
    with pytest.raises(PolicyError, match="trust.own_received_fields"):
        parse_trust({"own_received_fields": -1})
    assert parse_trust({"trusted_authserv_ids": ["MX.Ours.Example"]}).trusted_authserv_ids == (OURS,)
    assert parse_trust({"dkim_dns_server": "127.0.0.1:53"}).dkim_dns_server == ("127.0.0.1", 53)
    assert parse_trust({"dkim_dns_server": "[::1]:5353"}).dkim_dns_server == ("::1", 5353)
    for bad in ("localhost:53", "127.0.0.1", "::1:53", "127.0.0.1:0", "127.0.0.1:65536", 53):
        with pytest.raises(PolicyError, match="trust.dkim_dns_server: expected HOST:PORT with an IP address"):
            parse_trust({"dkim_dns_server": bad})


# -- our own DKIM check, with real dkimpy signatures ------------------------------------------


def dns_answering(record: bytes):
    """A local DNS answer function: the selector's TXT record, nothing else."""
    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        return record if name == b"sel._domainkey.tenant.example." else None
    return dnsfunc


def test_dkim_pass_and_tampering_and_missing_key(signing_key):
    private, record = signing_key
    message = signed(private)
    assert verify_signatures(message, timeout=2, dnsfunc=dns_answering(record)) == \
        DkimCheck("pass", ("tenant.example",))
    tampered = message.replace(b"All our apps are down.", b"All fine, ignore this.")
    assert verify_signatures(tampered, timeout=2, dnsfunc=dns_answering(record)).result == "fail"
    assert verify_signatures(message, timeout=2, dnsfunc=lambda name, timeout=5: None).result == "fail"  # no key
    malformed = b"DKIM-Signature: v=1; a=rsa-sha256; d=tenant.example; s=sel\r\n" + make_message()
    assert verify_signatures(malformed, timeout=2, dnsfunc=dns_answering(record)).result == "permerror"
    assert verify_signatures(b"\x00garbage", timeout=2, dnsfunc=dns_answering(record)).result in ("none", "permerror")


def test_dkim_dns_failure_is_temperror_never_a_crash(signing_key):
    private, _ = signing_key

    def broken(name: bytes, timeout: float = 5) -> bytes:
        raise OSError("network unreachable")
    assert verify_signatures(signed(private), timeout=2, dnsfunc=broken).result == "temperror"


async def test_dkim_check_is_bounded_and_leaves_the_loop_free(signing_key):
    private, record = signing_key

    def slow(name: bytes, timeout: float = 5) -> bytes:
        time.sleep(1.0)
        return record
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1
    task = asyncio.create_task(ticker())
    result = await check_dkim(signed(private), timeout=0.3, dnsfunc=slow)
    task.cancel()
    assert result.result == "temperror" and "no answer within 0.3 s" in result.detail
    assert ticks >= 5      # the loop kept running while the check waited on DNS


async def test_decide_trust_uses_own_dkim_and_ignores_headers_from_an_outside_peer(signing_key):
    private, record = signing_key
    raw = f"Authentication-Results: {OPENDMARC}\r\n".encode() + signed(private)
    parsed = parse_message(raw)
    policy = TrustPolicy((OURS,), verify_dkim=True, tenant_domains=("tenant.example",))

    async def read_raw() -> bytes:
        return raw
    outside = Envelope("smtp", "alice@tenant.example", ("emergency@example.org",), peer="198.51.100.66:4000")
    trust = await decide_trust(outside, parsed, policy, read_raw, dnsfunc=dns_answering(record))
    assert (trust.verified, trust.dmarc, trust.dkim_checked) == (True, None, "pass")
    assert trust.reason == "DKIM pass for tenant.example, signed by tenant.example (checked by emergencyd)"
    relay = Envelope("smtp", "alice@tenant.example", ("emergency@example.org",), peer="127.0.0.1:4000")
    trust = await decide_trust(relay, parsed, policy, read_raw, dnsfunc=dns_answering(record))
    assert trust.verified is False      # our MTA's DMARC fail outranks a signature it did not align


def test_dkim_keys_from_the_configured_resolver(signing_key, fake_dns):
    private, record = signing_key
    fake_dns.set_txt("sel._domainkey.tenant.example", record)
    # A key record over 512 bytes (a long n= note): the UDP answer is truncated, TCP brings it.
    fake_dns.set_txt("long._domainkey.tenant.example", record.replace(b"k=rsa;", b"k=rsa; n=" + b"x" * 800 + b";"))
    fake_dns.max_udp_bytes = 512
    fake_dns.drop("gone._domainkey.tenant.example")
    fake_dns.servfail("bogus._domainkey.tenant.example")
    lookup = resolver_lookup(("127.0.0.1", fake_dns.port))

    assert verify_signatures(signed(private), timeout=2, dnsfunc=lookup) == DkimCheck("pass", ("tenant.example",))
    assert verify_signatures(signed(private, selector=b"long"), timeout=2, dnsfunc=lookup).result == "pass"
    assert verify_signatures(signed(private, selector=b"none"), timeout=2, dnsfunc=lookup).result == "fail"  # NXDOMAIN
    assert verify_signatures(signed(private, selector=b"gone"), timeout=0.3, dnsfunc=lookup).result == "temperror"
    assert verify_signatures(signed(private, selector=b"bogus"), timeout=2, dnsfunc=lookup).result == "temperror"
    assert [(q.name, q.rdtype, q.transport) for q in fake_dns.queries()] == [
        ("sel._domainkey.tenant.example.", "TXT", "udp"), ("long._domainkey.tenant.example.", "TXT", "udp"),
        ("long._domainkey.tenant.example.", "TXT", "tcp"), ("none._domainkey.tenant.example.", "TXT", "udp"),
        ("gone._domainkey.tenant.example.", "TXT", "udp"), ("bogus._domainkey.tenant.example.", "TXT", "udp")]


# -- end to end: the real daemon over SMTP, with the Zendesk and PagerDuty fakes --------------

def mail(subject: str, *top: tuple[str, str], sender: str = "alice@tenant.example", mid: str = "") -> bytes:
    """A mail as our relay hands it over: its own fields on top, then the sender's."""
    head = "".join(f"{name}: {value}\r\n" for name, value in top)
    return head.encode() + make_message(subject=subject, body="Hello, see the subject line.", sender=sender,
                                        message_id=f"<{mid or subject.replace(' ', '-')}@tenant.example>")
