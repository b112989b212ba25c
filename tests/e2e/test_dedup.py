"""Deduplication as incidents really arrive: threads, storms, repeats and loops, through the fakes."""
import re
import smtplib
from collections import Counter
from datetime import datetime, timedelta, timezone

from emergencyd.escalation.records import PAGE, PENDING, STEP_DONE, STEP_PENDING, RelationKind
from tests.harness import RECIPIENT, make_message

FAST_ZENDESK = 'requests_per_minute = 60000\n'
ZENDESK_INCIDENT = "incident"     # the Zendesk ticket type of another tenant's report, under the problem


def tenant_mail(tenant: int, n: int, *, subject: str = "All our apps are down",
                body: str = "Our apps return 502 for every route since 02:10.", extra: str = "") -> bytes:
    return make_message(subject=subject, body=body, sender=f"ops@tenant{tenant}.example",
                        message_id=f"<t{tenant}-{n}-{subject.replace(' ', '')[:20]}@tenant{tenant}.example>",
                        extra_headers=extra)


def triggers(pagerduty):
    return [e for e in pagerduty.events() if e["event_action"] == "trigger"]


def public_comments(zendesk, ticket_id):
    return [c for c in zendesk.comments(ticket_id) if c["public"]]


def follow_up_references(zendesk, tickets) -> Counter:
    """Each follow-up's reference in the public comments of these tickets: queued follow-ups to one
    ticket share one comment, so references, not comments, count the mails."""
    return Counter(ref for t in tickets for c in public_comments(zendesk, t["id"])
                   for ref in re.findall(r"\[ref (emergencyd-[0-9a-f]+)\]", c["body"]))


def inject_all(daemon, tmp_path, messages: list[bytes], received_at: list[datetime] | None = None) -> None:
    """Through `inject`, the same durable path as SMTP, with each mail's own receive time."""
    files = []
    for i, raw in enumerate(messages):
        path = tmp_path / f"m{i:04d}.eml"
        path.write_bytes(raw)
        files.append(path)
    if received_at is None:
        daemon.cli("inject", *map(str, files))
        return
    for path, at in zip(files, received_at):
        daemon.cli("inject", "--received-at", at.isoformat(), str(path))


def test_a_reply_a_forward_and_a_ticket_reference_become_comments(live_daemon, zendesk, pagerduty):
    daemon = live_daemon(policy=True)
    daemon.send(make_message(subject="Database is down", body="Our database is down since 10:00.",
                             message_id="<orig@tenant.example>"))
    [first] = daemon.wait_settled(1)["messages"]
    ticket_id = first["ticket_id"]

    daemon.send(make_message(subject="Re: Database is down", message_id="<reply@tenant.example>",
                             body="Still down.\n\nOn Fri, 27 Nov 2026, ops wrote:\n> Our database is down",
                             extra_headers="In-Reply-To: <orig@tenant.example>\r\n"))
    daemon.send(make_message(subject="Fwd: Database is down", message_id="<fwd@colleague.example>",
                             sender="lead@tenant.example", body="Forwarding: any news on this?",
                             extra_headers="References: <orig@tenant.example> <reply@tenant.example>\r\n"))
    daemon.send(make_message(subject=f"Update on [#{ticket_id}]", message_id="<ref@tenant.example>",
                             body="We have restarted our app, no change."))
    doc = daemon.wait_settled(4)
    relations = {m["message_id"]: m for m in doc["messages"]}
    for mid in ("reply@tenant.example", "fwd@colleague.example", "ref@tenant.example"):
        assert relations[mid]["relation"] == RelationKind.THREAD, relations[mid]
        assert relations[mid]["ticket_id"] == ticket_id
        assert relations[mid]["steps"]["page"]["result"]["skipped"]      # looked: the incident is open
    assert len(zendesk.tickets()) == 1 and len(triggers(pagerduty)) == 1
    comments = public_comments(zendesk, ticket_id)[1:]
    assert [c["body"].split("\n")[0] for c in comments] == [
        "Still down.", "Forwarding: any news on this?", "We have restarted our app, no change."]
    assert "> Our database is down" not in comments[0]["body"]          # quoted history trimmed
    authors = {u["id"]: u["email"] for u in zendesk.users()}
    assert [authors[c["author_id"]] for c in comments] == [
        "tenant@example.net", "lead@tenant.example", "tenant@example.net"]


def test_a_reference_to_a_ticket_that_is_not_ours_comments_on_it(live_daemon, zendesk, pagerduty):
    existing = zendesk.seed_ticket(subject="Quota question", description="How much memory do we have?")
    daemon = live_daemon(policy=True)
    daemon.send(make_message(subject=f"Re: Quota question [#{existing['id']}]", body="Thanks, that helps."))
    [message] = daemon.wait_settled(1)["messages"]
    assert message["relation"] == RelationKind.THREAD and message["ticket_id"] == existing["id"]
    assert len(zendesk.tickets()) == 1 and triggers(pagerduty) == []
    assert public_comments(zendesk, existing["id"])[-1]["body"].startswith("Thanks, that helps.")


def test_a_reply_that_raises_the_severity_pages_again(live_daemon, zendesk, pagerduty):
    daemon = live_daemon(policy=True)
    daemon.send(make_message(subject="Slow responses", body="Some requests fail intermittently.",
                             message_id="<p3@tenant.example>"))
    daemon.wait_settled(1)
    pages_before = len(pagerduty.incidents())     # a P3 pages at low urgency in hours, or not at all out of hours
    daemon.send(make_message(subject="Re: Slow responses", message_id="<p1@tenant.example>",
                             body="Now all our apps are down.", extra_headers="In-Reply-To: <p3@tenant.example>\r\n"))
    doc = daemon.wait_settled(2)
    reply = next(m for m in doc["messages"] if m["message_id"] == "p1@tenant.example")
    assert reply["relation"] == RelationKind.THREAD and "raises the severity" in reply["relation_reason"]
    assert reply["steps"][PAGE]["state"] == STEP_DONE
    assert len(pagerduty.incidents()) == pages_before + 1
    assert len(zendesk.tickets()) == 1


def test_a_storm_gives_one_page_one_problem_and_an_incident_ticket_per_tenant(
        tmp_path, live_daemon, zendesk, pagerduty):
    daemon = live_daemon(policy=True, extra_zendesk=FAST_ZENDESK)
    # 200 mails from 20 tenants, interleaved as they would arrive, over SMTP.
    mails = [tenant_mail(t, n, subject=["All our apps are down", "Apps down?", "URGENT: site is down"][n % 3])
             for n in range(10) for t in range(20)]
    with smtplib.SMTP("127.0.0.1", daemon.smtp_port, timeout=10) as client:
        for n, raw in enumerate(mails):
            assert client.sendmail(f"ops@tenant{n % 20}.example", [RECIPIENT], raw) == {}
    doc = daemon.wait_settled(200, timeout=120)
    assert sum(doc["counts"].values()) == 200 and doc["counts"] == {"done": 200}     # none lost

    [incident] = pagerduty.incidents()
    tickets = zendesk.tickets()
    problems = [t for t in tickets if t["type"] == "problem"]
    incidents = [t for t in tickets if t["type"] == ZENDESK_INCIDENT]
    assert len(problems) == 1 and len(incidents) == 19 and len(tickets) == 20
    assert {t["problem_id"] for t in incidents} == {problems[0]["id"]}
    assert len({t["requester_id"] for t in tickets}) == 20          # one ticket per tenant
    messages = daemon.status()["messages"]
    relations = Counter(m["relation"] for m in messages)
    assert relations == {"first": 1, "incident": 19, "repeat": 180}
    # Every repeat is on its tenant's ticket once, in at most one comment per repeat.
    assert follow_up_references(zendesk, tickets) == Counter(
        m["dedup_key"] for m in messages if m["relation"] == RelationKind.REPEAT)
    assert sum(len(public_comments(zendesk, t["id"])) - 1 for t in tickets) <= 180
    [group] = daemon.status()["groups"]
    assert group["problem_ticket_id"] == problems[0]["id"] and len(group["incident_ticket_ids"]) == 19
    assert group["reports"] == 200 and len(group["tenants"]) == 20
    assert group["dedup_key"] == incident["dedup_key"]
    last = triggers(pagerduty)[-1]["payload"]["custom_details"]
    assert last["reports"] >= 2 and len(last["tenants"]) >= 2


def test_two_incidents_at_once_give_two_pages(live_daemon, zendesk, pagerduty):
    daemon = live_daemon(policy=True)
    daemon.send(tenant_mail(1, 1))
    daemon.send(tenant_mail(2, 1, subject="Database is down", body="Our database is down, connection refused."))
    daemon.send(tenant_mail(3, 1))
    daemon.wait_settled(3)
    assert len(pagerduty.incidents()) == 2
    assert sorted(t["type"] for t in zendesk.tickets()) == [ZENDESK_INCIDENT, "problem", "problem"]


def test_past_the_new_page_cap_pages_wait_their_minute_and_are_never_dropped(live_daemon, zendesk, pagerduty):
    daemon = live_daemon(policy=True, extra="[dedup]\nmax_new_pages_per_minute = 2\n")
    incidents = [("All our apps are down", "Our apps return 502 for every route."),
                 ("Database is down", "Our database is down, connection refused."),
                 ("Security breach", "We have a serious security breach in our space."),
                 ("Cannot push an emergency fix", "We cannot push an emergency fix: the API is down.")]
    for tenant, (subject, body) in enumerate(incidents, 1):
        daemon.send(tenant_mail(tenant, 1, subject=subject, body=body))
    daemon.wait_for(lambda: len(zendesk.tickets()) == 4 and len(triggers(pagerduty)) == 2, 20,
                    what="4 tickets, 2 pages")
    messages = daemon.status()["messages"]
    waiting = [m for m in messages if m["steps"][PAGE]["state"] == STEP_PENDING]
    assert len(waiting) == 2 and all(m["state"] == PENDING for m in waiting)   # waiting, not failed nor dropped
    first_page = min(m["paged_at"] for m in messages if m["paged_at"])
    for m in waiting:                                     # each is due again once the minute of the cap is over
        due = datetime.fromisoformat(m["steps"][PAGE]["next_attempt_at"])
        assert timedelta(seconds=55) < due - datetime.fromisoformat(first_page) < timedelta(seconds=62), m
    assert daemon.metric("emergencyd_pages_deferred_total") == 2
    assert len(triggers(pagerduty)) == 2


def test_the_same_subject_after_the_window_is_a_new_incident(tmp_path, live_daemon, zendesk, pagerduty):
    daemon = live_daemon(policy=True)
    start = datetime.now(timezone.utc) - timedelta(hours=2)
    inject_all(daemon, tmp_path, [tenant_mail(1, 1), tenant_mail(2, 1), tenant_mail(3, 1)],
               [start, start + timedelta(minutes=20), start + timedelta(minutes=51)])
    doc = daemon.wait_settled(3)
    # The three are decided side by side: which of the first two opens their incident is not fixed.
    first, second, third = sorted(doc["messages"], key=lambda m: m["id"])
    assert Counter(m["relation"] for m in (first, second)) == {RelationKind.FIRST: 1, RelationKind.INCIDENT: 1}
    assert first["page_key"] is not None and first["page_key"] == second["page_key"]
    assert third["relation"] == RelationKind.FIRST and third["page_key"] != first["page_key"]
    assert len(pagerduty.incidents()) == 2


def test_a_mail_loop_pages_once_and_paces_zendesk(tmp_path, live_daemon, zendesk, pagerduty):
    per_minute = 3000     # 50 a second, burst 20: fast enough for a test, slow enough to see the pacing
    daemon = live_daemon(policy=True, extra_zendesk=f"requests_per_minute = {per_minute}\n")
    mails = [make_message(subject=f"Automatic notification {n}", body="Our app is down: 502 Bad Gateway.",
                          sender="alerts@looping.example", message_id=f"<loop-{n}@looping.example>")
             for n in range(500)]
    inject_all(daemon, tmp_path, mails)
    doc = daemon.wait_settled(500, timeout=120)
    assert doc["counts"] == {"done": 500}
    assert len(pagerduty.incidents()) == 1 and len(triggers(pagerduty)) == 1
    assert len(zendesk.tickets()) == 1
    relations = Counter(m["relation"] for m in doc["messages"])
    assert relations["storm"] >= 480
    [ticket] = zendesk.tickets()
    # 499 follow-ups, each referenced once; those that queued behind a comment went in it.
    assert follow_up_references(zendesk, [ticket]) == Counter(
        m["dedup_key"] for m in doc["messages"] if m["relation"] != RelationKind.FIRST)
    comments = public_comments(zendesk, ticket["id"])
    assert len(comments) < 500
    assert any("more mail(s) from the same sender followed" in c["body"] for c in comments)
    stamps = sorted(r.received_at for r in zendesk.requests)
    busiest = max(sum(1 for t in stamps[i:i + 200] if t - stamps[i] < 1.0) for i in range(len(stamps)))
    assert busiest <= per_minute / 60 + 20 + 1      # the rate plus the bucket's burst
    _, metrics = daemon.http_get("/metrics")
    assert 'emergencyd_relations_total{relation="storm"}' in metrics


def alert_mail(sender: str, counter: int, minute: int) -> bytes:
    """A monitoring loop's mail: only the counter, the trace id and the time change."""
    subject = (f"Alert #{counter}: checkout-api 5xx above threshold at 10:{minute:02d}:07 UTC,"
               f" trace {counter * 7919:08x}")
    return make_message(subject=subject, sender=sender, body="The error rate of checkout-api is above its threshold.",
                        message_id=f"<alert-{counter}@{sender.split('@')[1]}>")


def test_a_monitoring_loop_under_the_sender_limit_is_one_incident(tmp_path, live_daemon, zendesk, pagerduty):
    daemon = live_daemon(policy=True, extra_zendesk=FAST_ZENDESK)
    # 10 mails, not more than the sender limit: the storm rule does not fold them, the loop key does.
    loop = [alert_mail("alerts@tenant1.example", 1041 + n, n) for n in range(10)]
    # Another tenant's loop of the same shape, its own counters: today's fingerprint keeps it apart.
    other = [alert_mail("alerts@tenant2.example", 7001 + n, n) for n in range(3)]
    inject_all(daemon, tmp_path, loop[:1] + other[:1] + loop[1:] + other[1:])
    daemon.wait_settled(13)
    # A third tenant, later, with the very subject of the loop's first mail: another report of that incident.
    (tmp_path / "later").mkdir()
    inject_all(daemon, tmp_path / "later", [alert_mail("ops@tenant3.example", 1041, 0)])
    doc = daemon.wait_settled(14)
    assert doc["counts"] == {"done": 14}
    by_sender = {}
    for message in sorted(doc["messages"], key=lambda m: m["id"]):
        by_sender.setdefault(message["message_id"].split("@")[1], []).append(message)
    first, *repeats = by_sender["tenant1.example"]
    assert first["relation"] == RelationKind.FIRST and first["steps"][PAGE]["state"] == STEP_DONE
    assert [m["relation"] for m in repeats] == [RelationKind.REPEAT] * 9
    assert {m["ticket_id"] for m in repeats} == {first["ticket_id"]}
    assert [m["relation"] for m in by_sender["tenant2.example"]] == [RelationKind.FIRST, RelationKind.REPEAT, RelationKind.REPEAT]
    [third] = by_sender["tenant3.example"]
    assert third["relation"] == RelationKind.INCIDENT

    # One page per loop: PagerDuty saw two trigger keys, tenant 3 re-sending tenant 1's.
    keys = Counter(e["dedup_key"] for e in triggers(pagerduty))
    assert set(keys) == {first["page_key"], by_sender["tenant2.example"][0]["page_key"]}
    assert keys[first["page_key"]] == 2                        # the loop's first mail, then tenant 3's report
    assert keys[by_sender["tenant2.example"][0]["page_key"]] == 1
    assert len(pagerduty.incidents()) == 2
    # One ticket per tenant: the loop's nine later mails are comments on its ticket.
    tickets = {t["id"]: t for t in zendesk.tickets()}
    assert len(tickets) == 3
    comments = "\n".join(c["body"] for c in public_comments(zendesk, first["ticket_id"]))
    assert all(f"[ref {m['dedup_key']}]" in comments for m in repeats)
    assert tickets[third["ticket_id"]]["type"] == ZENDESK_INCIDENT
    assert tickets[third["ticket_id"]]["problem_id"] == first["ticket_id"]


def test_kill_9_in_the_middle_of_a_storm_changes_nothing(tmp_path, live_daemon, zendesk, pagerduty):
    daemon = live_daemon(policy=True, extra_zendesk=FAST_ZENDESK)
    mails = [tenant_mail(t, n) for n in range(4) for t in range(10)]
    inject_all(daemon, tmp_path, mails)
    daemon.wait_for(lambda: len(zendesk.tickets()) >= 3, what="the storm to be under way")
    daemon.kill9()
    daemon.start()
    doc = daemon.wait_settled(40, timeout=60)
    assert doc["counts"] == {"done": 40}
    assert len(pagerduty.incidents()) == 1
    tickets = zendesk.tickets()
    assert len(tickets) == 10 and sorted(Counter(t["type"] for t in tickets).values()) == [1, 9]
    assert len({t["external_id"] for t in tickets}) == 10
    assert follow_up_references(zendesk, tickets) == Counter(
        m["dedup_key"] for m in doc["messages"] if m["relation"] == RelationKind.REPEAT)
    assert sum(follow_up_references(zendesk, tickets).values()) == 30


def test_a_follow_up_to_a_resolved_incident_opens_a_new_one(live_daemon, zendesk, pagerduty):
    daemon = live_daemon(policy=True)
    daemon.send(tenant_mail(1, 1))
    [first] = daemon.wait_settled(1)["messages"]
    daemon.send(tenant_mail(1, 2, body="Still down, any news?"))          # still open: a comment only
    daemon.wait_settled(2)
    assert len(pagerduty.incidents()) == 1
    pagerduty.resolve(first["page_key"])
    daemon.send(tenant_mail(1, 3, body="It is down again!"))
    doc = daemon.wait_settled(3)
    follow_up = max(doc["messages"], key=lambda m: m["id"])
    assert follow_up["relation"] == RelationKind.REPEAT
    assert follow_up["steps"]["page"]["result"]["reopened"] is True
    incidents = pagerduty.incidents()
    assert [i["status"] for i in incidents] == ["resolved", "triggered"]
    assert incidents[1]["dedup_key"] == first["page_key"]
    notes = [c["body"] for c in zendesk.comments(first["ticket_id"]) if not c["public"]]
    assert any("had already resolved the incident" in n and incidents[0]["html_url"] in n for n in notes)


def test_zendesk_encoded_ids_are_learnt_from_replies(live_daemon, zendesk, pagerduty):
    daemon = live_daemon(policy=True)
    daemon.send(make_message(subject="Database is down", body="Our database is down.", message_id="<o@t.example>"))
    [first] = daemon.wait_settled(1)["messages"]
    # A reply to Zendesk's notification: threaded by References, carrying the encoded id.
    daemon.send(make_message(subject="Re: Database is down", message_id="<r1@t.example>",
                             body="Any news?\n\n[7ZVQ3M-J7K4]", extra_headers="References: <o@t.example>\r\n"))
    # A later mail whose client dropped the headers: only the encoded id ties it to the ticket.
    daemon.send(make_message(subject="Database", message_id="<r2@t.example>", sender="cto@t.example",
                             body="Please escalate this. [7ZVQ3M-J7K4]"))
    doc = daemon.wait_settled(3)
    last = next(m for m in doc["messages"] if m["message_id"] == "r2@t.example")
    assert last["relation"] == RelationKind.THREAD and last["ticket_id"] == first["ticket_id"]
    assert len(zendesk.tickets()) == 1 and len(pagerduty.incidents()) == 1


def test_a_new_incident_pages_while_a_storm_is_still_draining(live_daemon, zendesk, pagerduty):
    # Zendesk paced to one call a second: the storm's 250 mails take minutes to reach it.
    daemon = live_daemon(policy=True, extra_zendesk="requests_per_minute = 60\n")
    with smtplib.SMTP("127.0.0.1", daemon.smtp_port, timeout=10) as client:
        for n in range(250):
            client.sendmail(f"ops@tenant{n % 25}.example", [RECIPIENT], tenant_mail(n % 25, n // 25))
        client.sendmail("ciso@other.example", [RECIPIENT],
                        make_message(subject="Possible security breach", sender="ciso@other.example",
                                     body="We think an attacker has compromised our space.",
                                     message_id="<breach@other.example>"))
    incidents = daemon.wait_for(lambda: len(pagerduty.incidents()) == 2 and pagerduty.incidents(),
                                what="the second incident's page")
    assert {i["log"][0]["payload"]["custom_details"]["category"] for i in incidents} == {
        "apps_not_served", "security_breach"}
    # The page did not queue behind the storm: Zendesk has barely started on it.
    assert len(zendesk.requests) < 100
