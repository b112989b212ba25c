"""rspamd asked directly ([spam] rspamd_url), a real scanner (tests/rspamd.py): reject suppresses as spam,
add header holds the page for a ticket tagged suspected-spam, a clean answer changes nothing, and rspamd
down, slow or garbled never holds a decision. Each decision with its pair."""
from __future__ import annotations

import asyncio
import http.server
import json
import threading
import time
import tomllib
from datetime import datetime, timezone

import pytest

from emergencyd.escalation.content import ticket_tags
from emergencyd.escalation.policy import classify
from emergencyd.escalation.policy_config import PolicyError, parse_policy
from emergencyd.escalation.records import PAGE, STEP_DONE, SUPPRESSED
from emergencyd.escalation.rspamd import (
    CheckOutcome,
    SpamCheck,
    ask_rspamd,
    ask_rspamd_now,
)
from emergencyd.parsers.message import parse_message
from tests.harness import ROOT, free_port, make_message, run_cli, write_config

SHIPPED = tomllib.loads((ROOT / "config.toml").read_text())["policy"]
NIGHT = datetime(2026, 11, 25, 23, 0, tzinfo=timezone.utc)
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
OUTAGE = make_message(sender="ops@tenant.example", message_id="<outage@tenant.example>", subject="Help",
                      body="Hello, all our apps are down since 02:10, users get errors.")
REJECTED = make_message(sender="bulk@prizes.example", message_id="<gtube@prizes.example>", subject="Hello",
                        body=f"Hello\r\n{GTUBE}")
FLAGGED = (b"From: win@prizes.example\r\nTo: emergency@example.org\r\nSubject: YOU WON!!! CLAIM YOUR PRIZE NOW\r\n"
           b"Content-Type: text/html\r\n\r\n<html><body><a href='http://192.0.2.4/claim'>CLICK HERE</a>: all our apps "
           b"are down</body></html>\r\n")


def classify_with_rspamd(rspamd, raw: bytes, trust: dict | None = None):
    result = ask_rspamd_now(raw, SpamCheck(rspamd.url, 30))
    assert result.outcome is CheckOutcome.ANSWERED, result
    return classify(parse_message(raw), received_at=NIGHT, mail_from=None, own_addresses=("emergency@example.org",),
                    policy=parse_policy(SHIPPED, trust), spam=result.verdict)


def test_rspamds_actions_become_verdicts(rspamd):
    check = SpamCheck(rspamd.url, 30)
    answers = {name: ask_rspamd_now(raw, check).verdict for name, raw in
               (("outage", OUTAGE), ("rejected", REJECTED), ("flagged", FLAGGED))}
    assert (answers["rejected"].action, answers["rejected"].spam) == ("reject", True)
    assert (answers["flagged"].action, answers["flagged"].spam) == ("add header", True)
    assert answers["outage"].action in ("no action", "greylist") and answers["outage"].spam is False
    assert answers["flagged"].score == pytest.approx(rspamd.check(FLAGGED)["score"])
    assert "HTTP_TO_IP" in answers["flagged"].symbols


def test_rspamds_reject_suppresses_the_mail_as_spam(rspamd):
    verdict = classify_with_rspamd(rspamd, REJECTED)
    assert (verdict.suppressed, verdict.category, verdict.page) == (True, "noise:spam", False)
    assert verdict.reason.startswith("spam: rspamd says 'reject'")
    assert verdict.as_dict()["spam"]["action"] == "reject"


def test_a_verified_tenants_mail_is_not_suppressed_though_rspamd_rejects_it(rspamd):
    signed = (b"Authentication-Results: mx.example.org; dmarc=pass header.from=prizes.example\r\n"
              b"Received: from outside by mx.example.org\r\n") + REJECTED
    verdict = classify_with_rspamd(rspamd, signed, {"trusted_authserv_ids": ["mx.example.org"],
                                                    "tenant_domains": ["prizes.example"]})
    assert (verdict.suppressed, verdict.page, verdict.trust.verified) == (False, True, True)


def test_rspamds_add_header_holds_the_page_of_a_rule_match(rspamd):
    verdict = classify_with_rspamd(rspamd, FLAGGED)
    assert (verdict.severity, verdict.page, verdict.ticket) == ("P1", False, True)   # "all our apps are down"
    assert verdict.page_held.startswith("not paged: suspected spam, rspamd says 'add header'")
    assert "suspected-spam" in ticket_tags(verdict)


def test_forged_tenant_mail_that_rspamd_flags_is_not_paged(rspamd):
    # From a tenant domain, but nothing verifies it: the directory alone does not lift the hold.
    forged = FLAGGED.replace(b"win@prizes.example", b"ops@tenant.example")
    verdict = classify_with_rspamd(rspamd, forged, {"tenant_domains": ["tenant.example"]})
    assert verdict.tenant == "a tenant (the tenant domain tenant.example)"
    assert (verdict.severity, verdict.page, verdict.urgency) == ("P1", False, None)
    assert verdict.page_held.startswith("not paged: suspected spam, rspamd says 'add header'")


def test_a_clean_answer_changes_nothing(rspamd):
    verdict = classify_with_rspamd(rspamd, OUTAGE)
    assert (verdict.severity, verdict.page, verdict.urgency, verdict.page_held) == ("P1", True, "high", None)
    assert "suspected-spam" not in ticket_tags(verdict)


class _Answering(http.server.BaseHTTPRequestHandler):
    body, delay = b"", 0.0

    def do_POST(self):  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        time.sleep(self.delay)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_scanner():
    """An HTTP server on 127.0.0.1 that answers /checkv2 with a given body after a given delay."""
    servers = []

    def start(body: bytes, delay: float = 0.0) -> str:
        handler = type("Handler", (_Answering,), {"body": body, "delay": delay})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"
    yield start
    for server in servers:
        server.shutdown()


@pytest.mark.parametrize("answer, outcome", [
    (b"<html>busy</html>", CheckOutcome.GARBLED),
    (b'{"action": "quarantine please", "score": 1, "required_score": 15}', CheckOutcome.GARBLED),
    (b'{"score": 1}', CheckOutcome.GARBLED),
])
def test_garbage_from_the_scanner_is_no_verdict(fake_scanner, answer, outcome):
    result = asyncio.run(ask_rspamd(OUTAGE, SpamCheck(fake_scanner(answer), 5)))
    assert (result.outcome, result.verdict) == (outcome, None)


def test_a_slow_or_absent_scanner_is_given_up_on(fake_scanner):
    slow = asyncio.run(ask_rspamd(OUTAGE, SpamCheck(fake_scanner(b"{}", delay=5), 0.2)))
    assert (slow.outcome, slow.verdict) == (CheckOutcome.TIMEOUT, None)
    absent = asyncio.run(ask_rspamd(OUTAGE, SpamCheck(f"http://127.0.0.1:{free_port()}", 5)))
    assert (absent.outcome, absent.verdict) == (CheckOutcome.UNREACHABLE, None)


@pytest.mark.parametrize("spam, message", [
    ({"rspamd_url": "127.0.0.1:11333"}, "spam.rspamd_url: expected an http:// or https:// URL"),
    ({"rspamd_url": "http://127.0.0.1:11333", "timeout_seconds": 0}, "spam.timeout_seconds"),
    ({"rspamd": "x"}, "spam.rspamd: unknown key"),
])
def test_the_spam_table_is_validated(spam, message):
    with pytest.raises(PolicyError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_policy(SHIPPED, None, spam)


def test_classify_asks_the_configured_rspamd_unless_offline(tmp_path, rspamd):
    import json
    config = write_config(tmp_path, dry_run=True, policy=True,
                          extra=f'[spam]\nrspamd_url = "{rspamd.url}"\ntimeout_seconds = 10\n')
    (tmp_path / "gtube.eml").write_bytes(REJECTED)
    asked = json.loads(run_cli(config, "classify", str(tmp_path / "gtube.eml")).stdout)
    assert (asked["suppressed"], asked["category"], asked["rspamd"]["action"]) == (True, "noise:spam", "reject")
    offline = json.loads(run_cli(config, "classify", "--offline", str(tmp_path / "gtube.eml")).stdout)
    assert offline["suppressed"] is False and "rspamd" not in offline


def test_through_the_daemon_rspamd_rejects_spam_and_the_outage_pages(live_daemon, zendesk, pagerduty, rspamd):
    daemon = live_daemon(policy=True, extra=f'[spam]\nrspamd_url = "{rspamd.url}"\ntimeout_seconds = 10\n')
    daemon.send(REJECTED)
    daemon.send(OUTAGE)
    daemon.send(FLAGGED, sender="win@prizes.example")
    messages = {m["sender"]: m for m in daemon.wait_settled(3)["messages"]}
    rejected, outage, flagged = (messages[s] for s in ("bulk@prizes.example", "ops@tenant.example",
                                                       "win@prizes.example"))
    assert rejected["state"] == SUPPRESSED and not rejected["steps"]
    assert outage["steps"][PAGE]["state"] == STEP_DONE
    assert [i["dedup_key"] for i in pagerduty.incidents()] == [outage["page_key"]]
    assert daemon.metric("emergencyd_messages_suppressed_total", kind="spam") == 1
    assert daemon.metric("emergencyd_spam_checks_total", outcome="answered") == 3
    # The held page's ticket, its note, status and the readiness details all say what rspamd said.
    assert PAGE not in flagged["steps"] and "suspected-spam" in zendesk.ticket(flagged["ticket_id"])["tags"]
    notes = [c["body"] for c in zendesk.comments(flagged["ticket_id"]) if not c["public"]]
    assert any("Spam check: rspamd says 'add header'" in note for note in notes), notes
    text = daemon.cli("status").stdout
    assert "rspamd, for the mail below: answered 3" in text and "spam check: rspamd says 'reject'" in text
    status, body = daemon.http_get("/readyz")
    assert status == 200 and json.loads(body)["details"]["rspamd"].startswith("ok (answered")


def test_through_the_daemon_an_absent_rspamd_holds_nothing(live_daemon, zendesk, pagerduty):
    daemon = live_daemon(policy=True, extra=f'[spam]\nrspamd_url = "http://127.0.0.1:{free_port()}"\n')
    daemon.send(OUTAGE)
    (outage,) = daemon.wait_settled(1)["messages"]
    assert outage["steps"][PAGE]["state"] == STEP_DONE
    assert daemon.metric("emergencyd_spam_checks_total", outcome="unreachable") == 1
    assert "rspamd: unreachable: decided without it" in daemon.cli("status").stdout
    status, body = daemon.http_get("/readyz")      # the daemon works without it: still ready, and says so
    ready = json.loads(body)
    assert status == 200 and ready["ready"] and "unreachable since" in ready["details"]["rspamd"]
