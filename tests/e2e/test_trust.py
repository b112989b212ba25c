"""Sender trust through the real daemon: forged and verified tenants, an outside peer's fields, and emergencyd's
own DKIM check asking the configured resolver. The parts alone are tested in tests/unit/test_trust.py."""
from __future__ import annotations

import json

from emergencyd.escalation.records import PAGE, STEP_DONE, RelationKind
from tests.fakes.dns import Query
from tests.harness import make_message, signed

OURS = "mx.ours.example"

OPENDMARC = f"{OURS}; dmarc=fail (p=reject dis=none) header.from=tenant.example"
OUTSIDE = "from attacker.example (attacker.example [198.51.100.66]) by mx.ours.example (Postfix) with ESMTP"


TRUST = f'[trust]\ntrusted_authserv_ids = ["{OURS}"]\ntenant_domains = ["tenant.example"]\n'


def mail(subject: str, *top: tuple[str, str], sender: str = "alice@tenant.example", mid: str = "") -> bytes:
    """A mail as our relay hands it over: its own fields on top, then the sender's."""
    head = "".join(f"{name}: {value}\r\n" for name, value in top)
    return head.encode() + make_message(subject=subject, body="Hello, see the subject line.", sender=sender,
                                        message_id=f"<{mid or subject.replace(' ', '-')}@tenant.example>")


def by_subject(doc: dict) -> dict[str, dict]:
    return {m["message_id"].split("@")[0]: m for m in doc["messages"]}


def test_spoofed_tenant_gets_a_flagged_ticket_and_no_page_and_forged_fields_are_ignored(live_daemon, zendesk,
                                                                                       pagerduty):
    daemon = live_daemon(policy=True, extra=TRUST)
    daemon.send(mail("Spoofed tenant", ("Authentication-Results", OPENDMARC), ("Received", OUTSIDE)))
    daemon.send(mail("Forged below received", ("Received", OUTSIDE),
                     ("Authentication-Results", f"{OURS}; dmarc=pass header.from=tenant.example")))
    daemon.send(mail("Forged other id", ("Authentication-Results", "evil.example; dmarc=fail header.from=x.example"),
                     ("Received", OUTSIDE)), sender="bob@tenant.example")
    # The real Alice, about the same thing: the forgery must not have made this a mere repeat.
    daemon.send(mail("Spoofed tenant", ("Authentication-Results", f"{OURS}; dmarc=pass header.from=tenant.example"),
                     ("Received", OUTSIDE), mid="Verified-tenant"))
    messages = by_subject(daemon.wait_settled(4))

    spoofed = messages["Spoofed-tenant"]
    assert spoofed["verdict"]["sender_trust"]["verified"] is False and PAGE not in spoofed["steps"]
    assert "a likely forgery" in spoofed["decision"] and "unverified sender" in spoofed["decision"]
    ticket = zendesk.find_ticket(external_id=spoofed["dedup_key"])
    assert {"unverified-sender", "page-held", "p1"} <= set(ticket["tags"]) and ticket["priority"] == "urgent"
    body, *notes = [c["body"] for c in zendesk.comments(ticket["id"])]
    assert body.startswith("[emergencyd] UNVERIFIED SENDER: DMARC fail for tenant.example (reported by "
                           "mx.ours.example): the From address may be forged.")
    assert any("Sender trust: fail: DMARC fail for tenant.example" in note for note in notes)
    assert pagerduty.incidents_with_key(spoofed["dedup_key"]) == []

    assert spoofed["relation"] == RelationKind.ALONE  # opened no incident for real reports to fold into
    for subject in ("Forged-below-received", "Forged-other-id"):      # nothing trusted: pages as before
        message = messages[subject]
        assert message["verdict"]["sender_trust"]["outcome"] == "none", subject
        assert len(pagerduty.incidents_with_key(message["dedup_key"])) == 1, subject
        tags = set(zendesk.find_ticket(external_id=message["dedup_key"])["tags"])
        assert not tags & {"unverified-sender", "sender-verified", "page-held"}, subject
    verified = messages["Verified-tenant"]
    assert verified["relation"] == RelationKind.FIRST and verified["steps"][PAGE]["state"] == STEP_DONE
    assert verified["verdict"]["sender_trust"]["reason"] == "DMARC pass for tenant.example (reported by mx.ours.example)"
    assert "sender-verified" in zendesk.find_ticket(external_id=verified["dedup_key"])["tags"]
    [incident] = pagerduty.incidents_with_key(verified["dedup_key"])
    assert incident["log"][0]["payload"]["custom_details"]["sender_trust"].startswith("DMARC pass")

    _, metrics = daemon.http_get("/metrics")
    for line in ('emergencyd_sender_trust_total{result="fail"} 1.0', 'emergencyd_sender_trust_total{result="none"} 2.0',
                 'emergencyd_sender_trust_total{result="pass"} 1.0', "emergencyd_pages_held_total 1.0"):
        assert line in metrics


def test_page_dmarc_fail_pages_the_spoof_and_fields_from_an_outside_peer_never_count(tmp_path, live_daemon,
                                                                                     zendesk, pagerduty):
    daemon = live_daemon(policy=True, extra=TRUST + 'page_dmarc_fail = true\ntrusted_relays = ["192.0.2.0/24"]\n')
    eml = tmp_path / "spoof.eml"
    eml.write_bytes(mail("Injected spoof", ("Authentication-Results", OPENDMARC), ("Received", OUTSIDE)))
    daemon.cli("inject", str(eml))            # the operator's file: its relay's fields count
    daemon.send(mail("Spoof by an outside client", ("Authentication-Results", OPENDMARC), ("Received", OUTSIDE)))
    messages = by_subject(daemon.wait_settled(2))

    injected = messages["Injected-spoof"]
    assert injected["verdict"]["sender_trust"]["verified"] is False and injected["verdict"]["page_held"] is None
    assert "unverified-sender" in zendesk.find_ticket(external_id=injected["dedup_key"])["tags"]
    assert len(pagerduty.incidents_with_key(injected["dedup_key"])) == 1
    outside = messages["Spoof-by-an-outside-client"]    # 127.0.0.1 is not in trusted_relays here
    assert outside["verdict"]["sender_trust"]["reason"] == "no Authentication-Results from a trusted authserv-id"
    assert len(pagerduty.incidents_with_key(outside["dedup_key"])) == 1


def test_own_dkim_check_in_the_daemon_asks_the_configured_resolver_and_a_dns_fault_still_pages(
        live_daemon, zendesk, pagerduty, fake_dns, signing_key):
    private, record = signing_key
    fake_dns.set_txt("sel._domainkey.tenant.example", record)
    fake_dns.drop("gone._domainkey.tenant.example")
    daemon = live_daemon(policy=True, extra=f'[trust]\nverify_dkim = true\ndkim_dns_server = "{fake_dns.address}"\n'
                                            'dkim_timeout_seconds = 1\ntenant_domains = ["tenant.example"]\n')
    daemon.send(signed(private, message=mail("Signed", sender="alice@tenant.example")))
    altered = signed(private, message=mail("Altered", sender="bob@tenant.example"))
    daemon.send(altered.replace(b"see the subject line", b"ignore the subject line"))
    daemon.send(signed(private, message=mail("Key lookup dropped", sender="carol@tenant.example"), selector=b"gone"))
    messages = by_subject(daemon.wait_settled(3))

    verified = messages["Signed"]
    assert verified["verdict"]["sender_trust"]["dkim_checked"] == "pass"
    assert verified["verdict"]["sender_trust"]["reason"] == \
        "DKIM pass for tenant.example, signed by tenant.example (checked by emergencyd)"
    assert "sender-verified" in zendesk.find_ticket(external_id=verified["dedup_key"])["tags"]
    assert fake_dns.queries("sel._domainkey.tenant.example") == \
        [Query("sel._domainkey.tenant.example.", "TXT", "udp")] * 2          # the signed mail and the altered one
    for subject, result in (("Altered", "fail"), ("Key-lookup-dropped", "temperror")):
        message = messages[subject]                  # not verified, so it pages as the routing table says
        trust = message["verdict"]["sender_trust"]
        assert (trust["verified"], trust["dkim_checked"]) == (None, result), subject
        assert f"own DKIM check {result}" in trust["reason"], subject
        tags = set(zendesk.find_ticket(external_id=message["dedup_key"])["tags"])
        assert not tags & {"unverified-sender", "sender-verified", "page-held"}, subject
    for message in messages.values():
        assert message["steps"][PAGE]["state"] == STEP_DONE
        assert len(pagerduty.incidents_with_key(message["dedup_key"])) == 1
    assert [q.transport for q in fake_dns.queries("gone._domainkey.tenant.example")] == ["udp"]


def test_classify_decides_as_the_daemon_did_dkim_check_included(start_daemon, fake_dns, signing_key, tmp_path):
    """One decider (escalation/decider.py): `emergencyd classify` on a file gives what the daemon decided for the
    same file handed over with `inject`, its own DKIM check included (it once judged the headers alone)."""
    private, record = signing_key
    fake_dns.set_txt("sel._domainkey.tenant.example", record)
    trust = (f'[trust]\nverify_dkim = true\ndkim_dns_server = "{fake_dns.address}"\ndkim_timeout_seconds = 2\n'
             'tenant_domains = ["tenant.example"]\n')
    daemon = start_daemon(policy=True, extra=trust)
    files = {"Signed": signed(private, message=mail("Signed", sender="alice@tenant.example"))}
    altered = signed(private, message=mail("Altered", sender="bob@tenant.example"))
    files["Altered"] = altered.replace(b"see the subject line", b"ignore the subject line")
    paths = []
    for name, raw in files.items():
        path = tmp_path / f"{name}.eml"
        path.write_bytes(raw)
        paths.append(str(path))
    at = "2026-11-25T23:00:00+00:00"
    daemon.cli("inject", "--received-at", at, *paths)
    stored = by_subject(daemon.wait_settled(2))
    answers = [json.loads(line) for line in daemon.cli("classify", "--at", at, "--offline", *paths).stdout.splitlines()]
    assert len(answers) == 2
    for name, answer in zip(files, answers):
        verdict = stored[name]["verdict"]
        assert answer["sender_trust"] == verdict["sender_trust"], name
        assert (answer["severity"], answer["page"], answer["page_held"]) == \
            (verdict["severity"], verdict["page"], verdict["page_held"]), name
    assert answers[0]["sender_trust"]["dkim_checked"] == "pass"
    assert answers[1]["sender_trust"]["dkim_checked"] == "fail"
