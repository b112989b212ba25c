"""Two replicas on one PostgreSQL database (docs/deployment.md, "Two hosts"): each takes mail, one escalates.

Mail is spread over both replicas' SMTP listeners, a fifth of it delivered to both (two MX hosts both
reached), with replies, follow-ups, a monitoring loop and auto-replies among it. Whatever replica took a
mail, and whichever escalates: one ticket per ticket-holding escalation, one trigger per incident, every
reply on its thread's ticket. Then the escalating replica is killed with SIGKILL mid-run: the other takes
the lease over once it expires and finishes the work, with no ticket or page made twice.
"""
import threading
from collections import Counter

from emergencyd.escalation.records import DONE, PAGE, STEP_DONE, SUPPRESSED, RelationKind
from tests.harness import imap_table, live_env, make_message, wait_until
from tests.postgres import DATABASE, HOST, PASSWORD, ROLE

FAST = 'requests_per_minute = 60000\n'
NO_PAGE_CAP = "[dedup]\nmax_new_pages_per_minute = 100000\n"
LOOP_SENDER = "alerts@loop.example"


def replica_pair(live_daemon, dsn: str, **config):
    store = f'backend = "postgresql"\ndsn = "{dsn}"\n'
    env = {**live_env(), "EMERGENCYD_STORE_PASSWORD": PASSWORD}
    return [live_daemon(replica=name, store=store, policy=True, extra_zendesk=FAST, extra=NO_PAGE_CAP,
                        env=env, **config) for name in ("a", "b")]


def first_mail(tenant: int) -> bytes:
    return make_message(subject=f"Tenant {tenant}: all our apps are down", sender=f"ops@tenant{tenant}.example",
                        body=f"Every app of tenant {tenant} returns 502 since 02:10.",
                        message_id=f"<first-{tenant}@tenant{tenant}.example>")


def reply(tenant: int, n: int) -> bytes:
    return make_message(subject=f"Re: Tenant {tenant}: all our apps are down", sender=f"ops@tenant{tenant}.example",
                        body=f"Still down (update {n}).", message_id=f"<reply-{tenant}-{n}@tenant{tenant}.example>",
                        extra_headers=f"In-Reply-To: <first-{tenant}@tenant{tenant}.example>\r\n")


def loop_alert(n: int) -> bytes:
    return make_message(subject=f"Alert #{1000 + n}: checkout-api 5xx above threshold", sender=LOOP_SENDER,
                        body="checkout-api 5xx rate 12% (threshold 5%)", message_id=f"<loop-{n}@loop.example>")


def auto_reply(n: int) -> bytes:
    return make_message(subject="Automatic reply: out of office", sender=f"away{n}@tenant{n}.example",
                        body="I am out of the office until Monday.", message_id=f"<away-{n}@tenant{n}.example>",
                        extra_headers="Auto-Submitted: auto-replied\r\n")


def send_spread(replicas, mails: list[bytes], *, to_both_every: int = 5) -> None:
    """Each mail to one replica in turn, every `to_both_every`-th to both, four SMTP clients at once."""
    jobs = [(i, raw) for i, raw in enumerate(mails)]
    lock = threading.Lock()
    failures: list[BaseException] = []

    def client() -> None:
        while True:
            with lock:
                if not jobs:
                    return
                i, raw = jobs.pop(0)
            try:
                targets = replicas if i % to_both_every == 0 else [replicas[i % len(replicas)]]
                for replica in targets:
                    replica.send(raw, sender="mx@relay.example")
            except BaseException as exc:   # reported below
                failures.append(exc)
    clients = [threading.Thread(target=client) for _ in range(4)]
    for c in clients:
        c.start()
    for c in clients:
        c.join(120)
    assert not failures, failures[:3]


def settled(replica, count: int) -> dict:
    return replica.wait_settled(count, timeout=90)


def assert_once_each(doc: dict, zendesk, pagerduty, *, crashed: bool = False) -> None:
    """Every step ran once: one ticket per escalation that made one, one trigger per page step done (the
    reports of one incident share its dedup_key: PagerDuty keeps one incident), one incident per page key.
    After a crash, a trigger sent just before it may be sent again with its dedup_key (the step's record
    of it was lost with the process): PagerDuty folds it into the same incident, so it pages no one twice."""
    tickets = Counter(t["external_id"] for t in zendesk.tickets())
    assert tickets and max(tickets.values()) == 1, tickets.most_common(3)
    paged = [m["page_key"] for m in doc["messages"]
             if m["steps"].get(PAGE, {}).get("state") == STEP_DONE and not m["steps"][PAGE]["result"].get("skipped")]
    triggers = [e["dedup_key"] for e in pagerduty.events() if e["event_action"] == "trigger"]
    if crashed:
        assert set(triggers) == set(paged) and len(triggers) >= len(paged)
    else:
        assert Counter(triggers) == Counter(paged)
    assert sorted(i["dedup_key"] for i in pagerduty.incidents()) == sorted(set(paged))


def test_two_replicas_on_one_database_make_one_ticket_and_one_page_per_incident(
        live_daemon, zendesk, pagerduty, postgres_cluster):
    a, b = replica_pair(live_daemon, postgres_cluster.new_database())
    assert [r.metric("emergencyd_escalator_lease_held") for r in (a, b)] == [1, 0]   # a started first
    firsts = [first_mail(t) for t in range(50)]
    send_spread([a, b], firsts)
    settled(a, 50)
    later = [reply(t, n) for t in range(50) for n in range(3)] + [loop_alert(n) for n in range(60)] + \
        [auto_reply(n) for n in range(40)]
    send_spread([b, a], later)
    doc = settled(b, 300)
    messages = {m["message_id"]: m for m in doc["messages"]}
    assert len(messages) == 300
    assert sum(m["deliveries"] for m in messages.values()) == 300 + 60     # a fifth reached both replicas
    assert Counter(m["state"] for m in messages.values()) == {DONE: 260, SUPPRESSED: 40}
    for t in range(50):
        parent = messages[f"first-{t}@tenant{t}.example"]
        for n in range(3):
            answer = messages[f"reply-{t}-{n}@tenant{t}.example"]
            assert answer["relation"] == RelationKind.THREAD and answer["ticket_id"] == parent["ticket_id"], answer
    assert_once_each(doc, zendesk, pagerduty)
    loop = [m for m in messages.values() if m["sender"] == LOOP_SENDER]
    loop_incidents = {m["page_key"] for m in loop} & {i["dedup_key"] for i in pagerduty.incidents()}
    assert len(loop_incidents) == 1, Counter((m["relation"], m["page_key"]) for m in loop)   # one loop, one page
    assert sum(r.metric("emergencyd_messages_received_total", source="smtp") for r in (a, b)) == 300 + 60 - \
        sum(r.metric("emergencyd_messages_duplicate_total", source="smtp") for r in (a, b))


def test_the_other_replica_takes_over_when_the_escalating_one_is_killed(
        live_daemon, zendesk, pagerduty, postgres_cluster):
    a, b = replica_pair(live_daemon, postgres_cluster.new_database())
    send_spread([a, b], [first_mail(t) for t in range(40)])
    wait_until(lambda: len(pagerduty.events()) >= 5, "the first pages from replica a")
    a.kill9()
    assert b.status()["escalating"]["replica"] == "a"
    wait_until(lambda: b.metric("emergencyd_escalator_lease_held") == 1, "replica b to take the lease", patience=20)
    doc = settled(b, 40)
    assert doc["escalating"]["replica"] == "b" and "escalating replica: b" in b.cli("status").stdout
    assert {m["state"] for m in doc["messages"]} == {DONE}
    assert_once_each(doc, zendesk, pagerduty, crashed=True)
    assert len(zendesk.tickets()) == 40


def test_one_replica_holds_the_mailbox_and_the_other_takes_it_over_when_that_one_is_killed(
        live_daemon, zendesk, pagerduty, postgres_cluster, dovecot, tmp_path):
    a, b = replica_pair(live_daemon, postgres_cluster.new_database(), imap=imap_table(dovecot, tmp_path))
    dovecot.append_many([first_mail(t) for t in range(10)])
    settled(a, 10)
    wait_until(lambda: len(dovecot.uids("INBOX")) == 0, "the mailbox emptied by the escalating replica")
    assert [r.metric("emergencyd_imap_connected") for r in (a, b)] == [1, 0]     # one replica holds the mailbox
    assert b.http_get("/readyz")[0] == 200                                          # and the other is ready
    a.kill9()
    dovecot.append_many([first_mail(t) for t in range(10, 20)])
    doc = settled(b, 20)
    wait_until(lambda: len(dovecot.uids("INBOX")) == 0, "the mailbox emptied by the replica that took over")
    assert b.metric("emergencyd_imap_connected") == 1
    assert {m["state"] for m in doc["messages"]} == {DONE} and {m["source"] for m in doc["messages"]} == {"imap"}
    assert_once_each(doc, zendesk, pagerduty, crashed=True)


def test_the_replicas_follow_a_promoted_standby_and_finish_the_work(live_daemon, zendesk, pagerduty, postgres):
    standby = postgres.make_standby()
    try:
        # Synchronous replication: a commit (and so a 250) waits until the standby has it, so a failover
        # loses no accepted mail.
        postgres.query("ALTER SYSTEM SET synchronous_standby_names = '*'")
        postgres.query("SELECT pg_reload_conf()")
        both = f"host={HOST},{HOST} port={postgres.port},{standby.port}"
        a, b = replica_pair(live_daemon, f"{both} dbname={DATABASE} user={ROLE} target_session_attrs=read-write")
        send_spread([a, b], [first_mail(t) for t in range(20)])
        settled(a, 20)
        postgres.stop()                 # the primary is lost
        standby.promote()
        for replica in (a, b):
            wait_until(lambda: replica.http_get("/readyz")[0] == 200, "ready on the promoted standby", patience=30)
        send_spread([a, b], [first_mail(t) for t in range(20, 40)])
        doc = settled(b, 40)
        assert {m["state"] for m in doc["messages"]} == {DONE}
        assert_once_each(doc, zendesk, pagerduty, crashed=True)
        assert standby.query("SELECT count(*) FROM messages") == "40"
    finally:
        standby.stop()
        standby.cleanup()
