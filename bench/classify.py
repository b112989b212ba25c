"""Classify benchmark: classify() per mail, the rules in one pass against the per-phrase regexes, same run.

    .venv/bin/python bench/classify.py [--mails N] [--baseline-mails N] [--json FILE]

Synthetic tenant mails of 2 KB, 6 KB and 20 KB (prose, log lines, now and then a sentence a rule
knows; fixed seed), parsed once (parse_message timed apart), then classified with:
1. the shipped policy (about 164 phrases);
2. the shipped policy plus 46 generated rules of 40 phrases each: about 2,000 phrases.
Each under the one-pass matcher (escalation/matcher.py), and as a baseline under the old per-phrase
regex algorithm (tests/regex_matcher.py) over the first --baseline-mails of the same mails.
Figures only: nothing is asserted.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import random
import sys
import time
import tomllib
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import emergencyd.escalation.policy as policy_module  # noqa: E402
from bench.smtp_ingest import percentile  # noqa: E402
from emergencyd.escalation.policy import classify  # noqa: E402
from emergencyd.escalation.policy_config import parse_policy  # noqa: E402
from emergencyd.parsers.message import parse_message  # noqa: E402
from tests.regex_matcher import regex_evaluate, regex_rules  # noqa: E402

SEED = 20261127
SIZES_KB = (2, 6, 20)
AT = datetime.fromisoformat("2026-11-25T23:00:00+00:00")
SUBJECTS = ["Help", "Urgent", "Problem with our app", "failure pushing app", "Slow responses on the payments service",
            "Question about routes", "Errors since the upgrade", "Re: ticket 4711", "incident", "Logs attached"]
PROSE = ("we noticed that the service started behaving differently after the morning deploy and the team "
         "has been looking at the logs since then without finding an obvious cause in our own code "
         "the load balancer shows requests arriving but some of them take much longer than usual "
         "we have not changed the configuration of the space nor the bindings to the database "
         "could it be related to the maintenance announced last week on the status page "
         "our users are mostly civil servants working from home so the traffic pattern is steady").split()
SENTENCES = ["Our production apps are down since 02:10.", "cf push fails with an error from the cloud controller.",
             "We see elevated error rates on every route.", "Could you add a user to our org?",
             "The app is extremely slow since the platform upgrade.", "Some requests fail intermittently.",
             "We think one of our apps has been compromised.", "Minor: the logs page shows the wrong timezone."]
LOG = ("2026-11-27T02:{m:02}:{s:02}.{ms:03}Z [APP/PROC/WEB/{i}] {level} {method} /api/v{v}/{path}/{id} {status} "
       "{took}ms vcap_request_id={hex} response_time:{rt:.6f} app_id:{hex2}")
EXTRA_RULES, PHRASES_PER_EXTRA_RULE = 46, 40


def tenant_body(rng: random.Random, size: int) -> str:
    """Greeting, maybe a sentence a rule knows (start or end), then prose and log blocks up to `size` bytes."""
    sentence = rng.choice(SENTENCES + [""] * 4)
    parts = ["Hi team,", sentence if rng.random() < 0.7 else ""]
    while sum(len(p) + 1 for p in parts) < size:
        if rng.random() < 0.5:
            parts.append(" ".join(rng.choice(PROSE) for _ in range(rng.randint(20, 60))).capitalize() + ".")
        else:
            parts.append("\n".join(log_line(rng) for _ in range(rng.randint(3, 12))))
    if not parts[1]:
        parts.append(sentence)
    return "\n\n".join([*parts, "Thanks,\nA tenant"])[:size]


def log_line(rng: random.Random) -> str:
    return LOG.format(m=rng.randrange(60), s=rng.randrange(60), ms=rng.randrange(1000), i=rng.randrange(4),
                      level=rng.choice(["OUT", "ERR"]), method=rng.choice(["GET", "POST", "PUT"]),
                      v=rng.randint(1, 3), path=rng.choice(["orders", "payments", "users", "health"]),
                      id=rng.randrange(10 ** 6), status=rng.choice([200, 200, 201, 404, 500, 502, 503]),
                      took=rng.randrange(2000), hex=f"{rng.getrandbits(128):032x}", rt=rng.random() * 3,
                      hex2=f"{rng.getrandbits(64):016x}")


def tenant_mail(rng: random.Random, index: int, size_kb: int) -> bytes:
    return (f"From: Dev <dev{index}@tenant.gov.example>\r\nTo: emergency@example.org\r\n"
            f"Subject: {rng.choice(SUBJECTS)}\r\nMessage-ID: <bench-{size_kb}-{index}@tenant.gov.example>\r\n"
            f"Date: Fri, 27 Nov 2026 02:15:00 +0000\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
            f"{tenant_body(rng, size_kb * 1024)}\r\n").encode()


def policy_tables() -> dict[str, dict]:
    shipped = tomllib.loads((ROOT / "config.toml").read_text())["policy"]
    rng = random.Random(SEED)
    vocabulary = sorted(set(PROSE)) + [f"{rng.choice(PROSE)[:4]}{rng.randrange(1000)}" for _ in range(400)]
    big = copy.deepcopy(shipped)
    for n in range(EXTRA_RULES):
        phrases = [" ".join(rng.choice(vocabulary) for _ in range(rng.randint(2, 4)))
                   for _ in range(PHRASES_PER_EXTRA_RULE)]
        big["rules"].append({"name": f"generated-{n}", "category": f"generated_{n}", "severity": "P3",
                             "fields": ["subject", "body"], "phrases": phrases})
    return {"shipped": shipped, "2,000 phrases": big}


def phrase_count(table: dict) -> int:
    return sum(len(r.get(k, [])) for r in table["rules"] for k in ("phrases", "unless", "requires"))


@contextlib.contextmanager
def per_phrase_regexes(table: dict):
    """classify() with the old evaluate_rules: one regex per phrase, searched field by field."""
    rules = regex_rules(table)
    one_pass = policy_module.evaluate_rules
    policy_module.evaluate_rules = lambda parsed, policy: regex_evaluate(parsed, rules)
    try:
        yield
    finally:
        policy_module.evaluate_rules = one_pass


def time_each(fn, items, repeat: int = 1) -> list[float]:
    times = []
    for _ in range(repeat):
        for item in items:
            began = time.perf_counter()
            fn(item)
            times.append(time.perf_counter() - began)
    return times


def summary(times: list[float]) -> dict[str, float]:
    ms = [t * 1000 for t in times]
    return {"n": len(ms), "p50_ms": percentile(ms, 50), "p99_ms": percentile(ms, 99), "max_ms": max(ms)}


def synthetic_mails(count: int) -> dict[int, list[bytes]]:
    """`count` tenant mails of each size in SIZES_KB, the same for every run (fixed seed)."""
    rng = random.Random(SEED)
    return {kb: [tenant_mail(rng, i, kb) for i in range(count)] for kb in SIZES_KB}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mails", type=int, default=200, help="mails per size (default 200)")
    parser.add_argument("--repeat", type=int, default=3, help="passes over them for the one-pass rows (default 3)")
    parser.add_argument("--baseline-mails", type=int, default=20, help="mails per size for the baseline (default 20)")
    parser.add_argument("--json", type=Path, help="also write the figures to FILE")
    args = parser.parse_args()
    raws = synthetic_mails(args.mails)
    rows: list[tuple[str, dict]] = []
    parsed = {}
    for kb in SIZES_KB:
        parsed[kb] = [parse_message(raw) for raw in raws[kb]]
        rows.append((f"parse_message, {kb} KB", summary(time_each(parse_message, raws[kb]))))
    for name, table in policy_tables().items():
        policy = parse_policy(table)

        def run(mail, policy=policy):
            classify(mail, received_at=AT, mail_from=mail.sender, own_addresses=("emergency@example.org",),
                     policy=policy)
        label = f"{name} ({phrase_count(table)})"
        policy.calendar.holiday_name(AT.date())   # the bank holidays load at first use, as a worker's start does
        for kb in SIZES_KB:
            rows.append((f"classify, {label}, {kb} KB", summary(time_each(run, parsed[kb], args.repeat))))
            with per_phrase_regexes(table):
                rows.append((f"  baseline: per-phrase regexes, {kb} KB",
                             summary(time_each(run, parsed[kb][:args.baseline_mails]))))
    print(f"classify() per mail, parse excluded (ms); {args.mails} mails per size, baseline over "
          f"{args.baseline_mails}")
    print(f"{'':58}{'n':>6}{'p50':>10}{'p99':>10}{'max':>10}")
    for name, s in rows:
        print(f"{name:58}{s['n']:>6}{s['p50_ms']:>10.3f}{s['p99_ms']:>10.3f}{s['max_ms']:>10.3f}")
    machine = {"nproc": os.cpu_count(), "python": sys.version.split()[0], "load": os.getloadavg()[0]}
    print(f"machine: nproc={machine['nproc']}  python {machine['python']}  load {machine['load']:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "rows": dict(rows)}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
