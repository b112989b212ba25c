"""Soak: the live daemon takes seeded mail over SMTP while it is killed -9 at random moments.

    .venv/bin/python bench/soak.py [--messages 500] [--runs 5] [--first-seed 1] [--kill-every 2 6] [--replicas 2]

Each run (seeds first-seed, first-seed+1, ...) gets its own store and fresh HTTPS fakes
of Zendesk and PagerDuty in this process, and runs tests/soak.py: several SMTP client
threads send the run's mail as a sending MTA would (re-sending whatever did not get a
250), a second delivery of some, and the daemon is killed -9 and restarted every few
seconds until all is acknowledged, then once or more while it drains. Then it checks:
nothing acknowledged lost, nothing settled wrongly, no second ticket, incident, note or
comment. A baseline run (the first seed, never killed) comes first for comparison.
Exit status 1 if any run found a problem. See bench/README.md ("Soak").
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.smtp_ingest import (  # noqa: E402
    _fmt,
    add_session_args,
    bench_session,
    header,
    run_benchmark,
)
from tests.fakes.pagerduty import FakePagerDuty  # noqa: E402
from tests.fakes.tls import TestCA  # noqa: E402
from tests.fakes.zendesk import FakeZendesk  # noqa: E402
from tests.harness import API_TOKEN, ZENDESK_EMAIL, ZENDESK_TOKEN  # noqa: E402
from tests.postgres import PASSWORD, Postgres, postgres_bin_dir  # noqa: E402
from tests.soak import SoakResult, SoakSettings, run_soak  # noqa: E402

COLUMNS = (  # title, width, value
    ("run", 10, lambda r: r.settings.seed if r.settings.kills_while_sending != 0 else "baseline"),
    ("mails", 6, lambda r: r.settings.messages),
    ("sent", 6, lambda r: r.sent),
    ("250", 6, lambda r: r.acknowledged),
    ("re-sent", 8, lambda r: r.resent),
    ("2nd", 5, lambda r: r.second_deliveries),
    ("no-250", 7, lambda r: r.figures.get("deliveries_stored", 0) - r.acknowledged),
    ("kills", 6, lambda r: r.kills),
    ("tickets", 10, lambda r: f"{r.figures.get('tickets')}/{r.figures.get('expected_tickets')}"),
    ("incidents", 10, lambda r: f"{r.figures.get('incidents')}/{r.figures.get('expected_incidents')}"),
    ("comm.", 6, lambda r: r.figures.get("comments")),
    ("suppr.", 7, lambda r: r.figures.get("suppressed")),
    ("dup", 4, lambda r: r.figures.get("duplicates")),
    ("lost", 5, lambda r: r.figures.get("lost")),
    ("probl.", 7, lambda r: len(r.problems)),
    ("wall s", 7, lambda r: r.wall_seconds),
    ("drain s", 8, lambda r: r.drain_seconds),
)


def one_run(settings: SoakSettings, workdir: Path, ca: TestCA, cluster: Postgres | None, replicas: int) -> SoakResult:
    workdir.mkdir()
    ca_file = ca.write_ca_pem(workdir)
    postgres = (cluster.new_database(), PASSWORD) if cluster is not None else None
    with FakeZendesk(ca=ca, email=ZENDESK_EMAIL, token=ZENDESK_TOKEN) as zendesk, \
            FakePagerDuty(ca=ca, api_token=API_TOKEN) as pagerduty:
        result = run_soak(settings, workdir, zendesk, pagerduty, ca_file, postgres=postgres, replicas=replicas)
        result.problems += [f"fake: {e!r}" for e in zendesk.errors + pagerduty.errors]
    return result


def report(info: dict, results: list[SoakResult], args) -> str:
    out = header(info, "emergencyd soak: kill -9 at random moments while mail arrives and escalates") + [
        "",
        f"{args.clients} SMTP clients, {args.rate:g} first deliveries/s, a kill every "
        f"{args.kill_every[0]:g}-{args.kill_every[1]:g} s until all is acknowledged, then "
        f"{args.drain_kills} while draining" + (f"; {args.replicas} replicas on one PostgreSQL database, each kill"
                                                 " hitting one of them" if args.replicas > 1 else ""),
        "",
        "".join(f"{title:>{width}}" for title, width, _ in COLUMNS),
    ]
    for result in results:
        out.append("".join(_fmt(value(result), width) for _, width, value in COLUMNS))
    out += [
        "",
        "sent: SMTP transactions tried; 250: answered 250; re-sent: tried again after no 250 (dropped by a",
        "  kill, refused while restarting, 4xx); 2nd: second deliveries of acknowledged mail (answered 250);",
        "  no-250: deliveries the store committed whose 250 never reached the client (the kill came between).",
        "tickets, incidents: found/expected (one ticket per incident mail and per other tenant's report; one",
        "  PagerDuty incident per incident); comm.: public comments from replies and forwards; suppr.: noise.",
        "dup: second tickets for one external_id plus second incidents for one dedup_key; lost: acknowledged",
        "  and not in the store; probl.: every failed check (states, notes, links, comments); wall s: first",
        "  delivery to settled; drain s: last 250 to settled (kills while draining included).",
    ]
    for result in results:
        for problem in result.problems[:20]:
            out.append(f"PROBLEM seed {result.settings.seed}: {problem}")
        if len(result.problems) > 20:
            out.append(f"PROBLEM seed {result.settings.seed}: ... and {len(result.problems) - 20} more")
    return "\n".join(out)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=500, help="distinct mails per run (500)")
    parser.add_argument("--runs", type=int, default=5, help="runs, one seed each (5)")
    parser.add_argument("--first-seed", type=int, default=1, help="seed of the first run (1)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent SMTP client threads (4)")
    parser.add_argument("--rate", type=float, default=25.0, help="first deliveries a second (25)")
    parser.add_argument("--kill-every", type=float, nargs=2, default=(2.0, 6.0), metavar=("MIN", "MAX"),
                        help="seconds between kills, uniform (2 6)")
    parser.add_argument("--drain-kills", type=int, default=2, help="kills after the last 250, while draining (2)")
    parser.add_argument("--settle-timeout", type=float, default=600.0,
                        help="give up waiting for the daemon to settle after S seconds (600)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the run without kills")
    parser.add_argument("--replicas", type=int, default=1,
                        help="1: one daemon on SQLite (the default); 2 or more: replicas on one PostgreSQL database "
                             "(a throwaway cluster), each kill -9 hitting one of them at random")
    add_session_args(parser, tmpdir="the stores and daemon logs", keep="stores, daemon logs")
    args = parser.parse_args(argv)
    if args.messages < 1 or args.runs < 1 or not 0 < args.kill_every[0] <= args.kill_every[1]:
        parser.error("--messages and --runs must be at least 1, and 0 < --kill-every MIN <= MAX")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    base = SoakSettings(seed=args.first_seed, messages=args.messages, clients=args.clients, rate=args.rate,
                        kill_every=tuple(args.kill_every), kills_while_draining=args.drain_kills,
                        settle_timeout=args.settle_timeout)
    plans = [replace(base, seed=args.first_seed + n) for n in range(args.runs)]
    if not args.no_baseline:
        plans.insert(0, replace(base, kills_while_sending=0, kills_while_draining=0))
    with bench_session("emergencyd-soak-", args.tmpdir, args.keep) as (stack, workdir, info, others):
        ca = TestCA()
        cluster = None
        if args.replicas > 1:
            bin_dir = postgres_bin_dir()
            if bin_dir is None:
                print("--replicas needs PostgreSQL: apt-get install -y postgresql", file=sys.stderr)
                return 2
            cluster = Postgres(bin_dir).start()
            stack.callback(cluster.cleanup)
            stack.callback(cluster.stop)
        results = []
        for number, settings in enumerate(plans):
            began = time.monotonic()
            result = one_run(settings, workdir / f"run{number}-seed{settings.seed}", ca, cluster, args.replicas)
            results.append(result)
            print(f"  seed {settings.seed}: {result.kills} kills, {len(result.problems)} problems, "
                  f"{time.monotonic() - began:.1f}s", file=sys.stderr, flush=True)
        info["others_cores"] = others.cores()
        print(report(info, results, args))
        if args.json:
            doc = {"machine": info, "runs": [{**asdict(r), "ok": r.ok} for r in results]}
            args.json.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    run_benchmark(main)
