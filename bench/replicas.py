"""Replicas on PostgreSQL: SMTP ingest against SQLite in the same run, and the take-over after a kill -9.

    .venv/bin/python bench/replicas.py [--messages N] [--connections K] [--body-kb KB] [--lease-seconds S]
                                       [--json FILE]

Needs Debian's postgresql package (a throwaway cluster is started, as the test suite's: tests/postgres.py).

1. Ingest, dry run, the same N mails over K SMTP connections each time, one after the other:
   emergencyd on SQLite (the baseline), on PostgreSQL, and two replicas on one PostgreSQL database with the
   connections split between them (two MX hosts). msg/s and the 250's p50/p99, as bench/smtp_ingest.py.
2. Take-over: two replicas with dry_run off against the HTTPS fakes and one IMAP mailbox (a throwaway Dovecot),
   lease_seconds S (the shipped 20 by default). 40 P1s are sent over SMTP, the escalating replica is killed with
   SIGKILL after the 5th trigger reaches the fake PagerDuty, and at once one more P1 goes to the survivor over
   SMTP and one into the mailbox. Measured from the kill: when the survivor holds the lease, when it is logged in
   to the mailbox, and when every P1 is paged. Ticket and trigger counts show that nothing was done twice.

Figures only: nothing is asserted.
"""
from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.ingest_mail import mail_for  # noqa: E402
from bench.smtp_ingest import (  # noqa: E402
    LoadResult,
    add_session_args,
    bench_session,
    run_benchmark,
    run_load,
    smtp_row,
    start_emergencyd,
    stop_daemon,
)
from tests.dovecot import Dovecot, dovecot_binary  # noqa: E402
from tests.fakes.pagerduty import FakePagerDuty  # noqa: E402
from tests.fakes.tls import TestCA  # noqa: E402
from tests.fakes.zendesk import FakeZendesk  # noqa: E402
from tests.harness import (  # noqa: E402
    API_TOKEN,
    ZENDESK_EMAIL,
    ZENDESK_TOKEN,
    base_env,
    imap_table,
    live_env,
    make_message,
)
from tests.postgres import PASSWORD, Postgres, postgres_bin_dir  # noqa: E402


def store_table(dsn: str | None) -> str:
    return f'backend = "postgresql"\ndsn = "{dsn}"\n' if dsn else ""


def replica_table(name: str, lease_seconds: float) -> str:
    return f'[replica]\nname = "{name}"\nlease_seconds = {lease_seconds}\n'


def ingest_row(name: str, workdir: Path, stack, messages, warmup, connections: int, *, dsn: str | None,
               replicas: int) -> dict:
    env = {**base_env(), "EMERGENCYD_STORE_PASSWORD": PASSWORD}
    daemons = [start_emergencyd(workdir / f"{name}-{n}", stack, env=env, dry_run=True, store=store_table(dsn),
                                extra=replica_table(f"r{n}", 20)) for n in range(replicas)]
    results: list[LoadResult] = [LoadResult() for _ in daemons]
    share = connections // replicas

    def load(n: int) -> None:
        results[n] = run_load(daemons[n].smtp_port, messages[n::replicas], share, warmup,
                              server_pid=daemons[n].proc.pid)
    threads = [threading.Thread(target=load, args=(n,)) for n in range(replicas)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for daemon in daemons:
        stop_daemon(daemon)
    merged = LoadResult(samples=[s for r in results for s in r.samples], rejected=sum(r.rejected for r in results),
                        errors=[e for r in results for e in r.errors],
                        started=min(r.started for r in results), finished=max(r.finished for r in results))
    return smtp_row(name, merged, len(messages), connections)


def take_over(workdir: Path, stack, dsn: str, lease_seconds: float, dovecot: Dovecot) -> dict:
    ca = TestCA()
    zendesk = stack.enter_context(FakeZendesk(ca=ca, email=ZENDESK_EMAIL, token=ZENDESK_TOKEN))
    pagerduty = stack.enter_context(FakePagerDuty(ca=ca, api_token=API_TOKEN))
    (workdir / "ca").mkdir()
    ca_file = ca.write_ca_pem(workdir / "ca")
    env = {**live_env(), "EMERGENCYD_STORE_PASSWORD": PASSWORD}
    fast = "requests_per_minute = 60000\n"
    daemons = []
    for name in ("a", "b"):
        directory = workdir / f"takeover-{name}"
        directory.mkdir(parents=True)
        daemons.append(start_emergencyd(
            directory, stack, env=env, dry_run=False, policy=True, zendesk_url=zendesk.url,
            pagerduty_url=pagerduty.url, ca_file=ca_file, extra_zendesk=fast, store=store_table(dsn),
            imap=imap_table(dovecot, directory),
            extra="[dedup]\nmax_new_pages_per_minute = 100000\n" + replica_table(name, lease_seconds)))
    survivor = daemons[1]
    for n in range(40):
        daemons[n % 2].send(make_message(subject=f"Tenant {n}: all our apps are down",
                                         sender=f"ops@tenant{n}.example", message_id=f"<p1-{n}@bench.example>"))
    while len(pagerduty.events()) < 5:
        time.sleep(0.001)
    daemons[0].kill9()
    killed = time.monotonic()
    survivor.send(make_message(subject="Tenant 99: all our apps are down", sender="ops@tenant99.example",
                               message_id="<p1-after-kill@bench.example>"))
    dovecot.append(make_message(subject="Tenant 98: all our apps are down", sender="ops@tenant98.example",
                                message_id="<p1-by-imap@bench.example>"))
    lease_at = imap_at = all_paged_at = None
    deadline = killed + 10 * lease_seconds + 60
    while time.monotonic() < deadline and all_paged_at is None:
        if lease_at is None and survivor.metric("emergencyd_escalator_lease_held") == 1:
            lease_at = time.monotonic() - killed
        if imap_at is None and survivor.metric("emergencyd_imap_connected") == 1:
            imap_at = time.monotonic() - killed
        doc = survivor.status()
        paged = [m for m in doc["messages"] if m["paged_at"]]
        if len(doc["messages"]) == 42 and len(paged) == 42:
            all_paged_at = time.monotonic() - killed
        time.sleep(0.05)
    tickets = zendesk.tickets()
    triggers = [e for e in pagerduty.events() if e["event_action"] == "trigger"]
    stop_daemon(survivor)
    return {"lease_seconds": lease_seconds, "lease_taken_s": None if lease_at is None else round(lease_at, 2),
            "imap_taken_s": None if imap_at is None else round(imap_at, 2),
            "all_paged_s": None if all_paged_at is None else round(all_paged_at, 2),
            "tickets": len(tickets), "distinct_external_ids": len({t["external_id"] for t in tickets}),
            "triggers": len(triggers), "incidents": len(pagerduty.incidents())}


def report(info: dict, rows: list[dict], takeover: dict, args) -> str:
    lines = [f"replicas benchmark, {info.get('cpu', '?')} ({info.get('nproc', '?')} cores), "
             f"{args.messages} mails of ~{args.body_kb} KB, {args.connections} SMTP connections, dry run",
             f"{'store':34} {'msg/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'rejected':>9}"]
    baseline = rows[0]["msg_per_s"] or 0
    for r in rows:
        ratio = f"  {r['msg_per_s'] / baseline:.2f}x SQLite" if baseline and r["msg_per_s"] else ""
        lines.append(f"{r['name']:34} {r['msg_per_s'] or 0:8.1f} {r['p50_ms'] or 0:8.2f} {r['p99_ms'] or 0:8.2f} "
                     f"{r['rejected']:9d}{ratio}")
    lines.append(f"take-over (lease_seconds {takeover['lease_seconds']}): kill -9 of the escalating replica -> "
                 f"survivor holds the lease after {takeover['lease_taken_s']} s, the IMAP mailbox after "
                 f"{takeover['imap_taken_s']} s, all 42 P1s (one by IMAP, one by SMTP after the kill) paged after "
                 f"{takeover['all_paged_s']} s; {takeover['tickets']} tickets ({takeover['distinct_external_ids']} "
                 f"external_ids), {takeover['triggers']} triggers, {takeover['incidents']} incidents")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--connections", type=int, default=8, help="SMTP connections (even: split over two)")
    parser.add_argument("--body-kb", type=float, default=6.0)
    parser.add_argument("--lease-seconds", type=float, default=20.0, help="for the take-over (the shipped 20)")
    add_session_args(parser, tmpdir="the stores and the cluster", keep="the logs")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        print("PostgreSQL is not installed: apt-get install -y postgresql", file=sys.stderr)
        return 2
    run = f"replicas{int(time.time())}"
    with bench_session("emergencyd-replicas-", args.tmpdir, args.keep) as (stack, workdir, info, _):
        cluster = Postgres(bin_dir).start()
        stack.callback(cluster.cleanup)
        stack.callback(cluster.stop)
        messages = [mail_for(run, i, body_kb=args.body_kb, senders="many") for i in range(args.messages)]
        warmup = [mail_for(f"{run}-warmup", 900_000 + i, body_kb=args.body_kb, senders="many")
                  for i in range(args.connections)]
        rows = [ingest_row("SQLite, one replica", workdir, stack, messages, warmup, args.connections,
                           dsn=None, replicas=1),
                ingest_row("PostgreSQL, one replica", workdir, stack, messages, warmup, args.connections,
                           dsn=cluster.new_database(), replicas=1),
                ingest_row("PostgreSQL, two replicas", workdir, stack, messages, warmup, args.connections,
                           dsn=cluster.new_database(), replicas=2)]
        dovecot = Dovecot(TestCA(), dovecot=dovecot_binary()).start()
        stack.callback(dovecot.cleanup)
        stack.callback(dovecot.stop)
        takeover = take_over(workdir, stack, cluster.new_database(), args.lease_seconds, dovecot)
        print(report(info, rows, takeover, args))
        if args.json:
            import json
            args.json.write_text(json.dumps({"machine": info, "rows": rows, "take_over": takeover}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    run_benchmark(main)
