"""Deciding benchmark: a backlog of first mails, each from a tenant of its own, and a P1 stored last.

    .venv/bin/python bench/decide_backlog.py [--mails 1000] [--body-kb 6] [--runs 2] [--json FILE]

What a restart after an outage, or a replica taking over, finds: N mails stored with
`emergencyd inject` while no daemon ran, each the first mail of a sender of its own (a
question about an invoice: a ticket, no page), and last of all another tenant's P1.
Then emergencyd starts in dry run with the shipped policy, and the store is watched
(read-only, every 20 ms) from READY=1 on: when the P1 is decided, when every mail is
decided, and when every escalation is finished. Every mail is a first mail, so none is
a storm's background work: each waits only for its turn. Figures only: nothing is
asserted. See bench/README.md ("Deciding benchmark").
"""
from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.smtp_ingest import (  # noqa: E402
    add_session_args,
    bench_session,
    header,
    run_benchmark,
    start_emergencyd,
    stop_daemon,
)
from emergencyd.escalation.records import DONE, NEW, PENDING  # noqa: E402
from tests.harness import base_env, make_message, run_cli  # noqa: E402

INJECT_AT_ONCE = 250          # files per `inject` run
WATCH_SECONDS = 0.02
GIVE_UP_SECONDS = 600.0


def backlog(directory: Path, run: str, mails: int, body_kb: float) -> list[Path]:
    """The files to inject: N first mails, then the P1."""
    directory.mkdir(parents=True)
    files = []
    for n in range(mails):
        body = "Hello, we have a question about last month's invoice for our workspace. " * 4
        raw = make_message(subject=f"Question about invoice {n}", sender=f"billing@tenant{n:05d}.example",
                           body=body, message_id=f"<{run}.{n}@tenant{n:05d}.example>")
        raw = make_message(subject=f"Question about invoice {n}", sender=f"billing@tenant{n:05d}.example",
                           body=body + "Line item details follow.\r\n" * max(int((body_kb * 1024 - len(raw)) / 27), 0),
                           message_id=f"<{run}.{n}@tenant{n:05d}.example>")
        files.append(directory / f"{n:05d}.eml")
        files[-1].write_bytes(raw)
    files.append(directory / "p1.eml")
    files[-1].write_bytes(make_message(subject="All our apps are down", sender="ops@othercorp.example",
                                       body="All our production apps return 502 since 02:10.",
                                       message_id=f"<{run}.p1@othercorp.example>"))
    return files


def watch(store: Path, p1_pk: int, total: int, started: float) -> dict:
    """Seconds from READY to the P1's decision, to all decided, to all finished."""
    figures: dict[str, float | None] = {"p1_decided_s": None, "all_decided_s": None, "all_finished_s": None}
    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    try:
        while time.monotonic() - started < GIVE_UP_SECONDS:
            now = time.monotonic() - started
            if figures["p1_decided_s"] is None and db.execute(
                    "SELECT state FROM escalations WHERE message_pk = ?", (p1_pk,)).fetchone()[0] != NEW:
                figures["p1_decided_s"] = now
            counts = dict(db.execute("SELECT state, COUNT(*) FROM escalations GROUP BY state").fetchall())
            if figures["all_decided_s"] is None and not counts.get(NEW):
                figures["all_decided_s"] = now
            if not counts.get(NEW) and not counts.get(PENDING):
                figures["all_finished_s"] = now
                figures["done"] = counts.get(DONE, 0) / total
                return figures
            time.sleep(WATCH_SECONDS)
    finally:
        db.close()
    return figures


def one_run(args, workdir: Path, stack, index: int) -> dict:
    directory = workdir / f"run{index}"
    run = f"backlog{os.getpid()}-{index}"
    files = backlog(directory / "mail", run, args.mails, args.body_kb)
    daemon = start_emergencyd(directory / "daemon", stack, env=base_env(), dry_run=True, policy=True)
    stop_daemon(daemon)        # the store exists, with its schema: the backlog goes in while no daemon runs
    stored = []
    for at in range(0, len(files), INJECT_AT_ONCE):
        stored += run_cli(daemon.config, "inject", *map(str, files[at:at + INJECT_AT_ONCE])).stdout.split("\n")
    p1_pk = int([line for line in stored if line.strip()][-1].rsplit(" ", 1)[1])
    daemon.start()
    started = time.monotonic()
    figures = watch(directory / "daemon" / "var" / "store.sqlite3", p1_pk, len(files), started)
    stop_daemon(daemon)
    return figures


def report(info: dict, args, runs: list[dict]) -> str:
    def seconds(value) -> str:
        return "-" if value is None else f"{value:.2f} s"
    out = header(info, "emergencyd deciding benchmark") + [
        "",
        f"backlog   {args.mails} first mails of ~{args.body_kb:g} KB, each from a tenant of its own, then another "
        "tenant's P1; stored with `inject` before the start; dry run, shipped policy",
        "",
        "run   P1 decided   all decided   all finished   decided per second",
    ]
    for number, figures in enumerate(runs, 1):
        decided = figures.get("all_decided_s")
        rate = f"{(args.mails + 1) / decided:.0f}" if decided else "-"
        out.append(f"{number:<5} {seconds(figures['p1_decided_s']):>10}   {seconds(decided):>11}   "
                   f"{seconds(figures['all_finished_s']):>12}   {rate:>18}")
    out.append("(seconds from READY=1)")
    return "\n".join(out)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mails", type=int, default=1000, help="first mails before the P1 (1000)")
    parser.add_argument("--body-kb", type=float, default=6.0, help="size of each mail, KB (6)")
    parser.add_argument("--runs", type=int, default=2, help="runs, one after the other (2)")
    add_session_args(parser, tmpdir="the stores", keep="the stores and the daemon's logs")
    args = parser.parse_args(argv)
    if min(args.mails, args.runs) < 1:
        parser.error("--mails and --runs must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with bench_session("emergencyd-decide-", args.tmpdir, args.keep) as (stack, workdir, info, others):
        runs = []
        for index in range(args.runs):
            print(f"run {index + 1}: storing {args.mails + 1} mails, then deciding ...", file=sys.stderr, flush=True)
            runs.append(one_run(args, workdir, stack, index))
        info["others_cores"] = others.cores()
        print(report(info, args, runs))
        if args.json:
            args.json.write_text(json.dumps({"machine": info, "runs": runs}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    run_benchmark(main)
