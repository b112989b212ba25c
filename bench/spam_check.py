"""What knowing the sender and asking the spam filter add per message: the tenant directory's look-up, the
relay's spam fields, and rspamd asked directly (a throwaway rspamd, offline, as the test suite starts it).

    .venv/bin/python bench/spam_check.py [--mails N] [--directory N] [--json FILE]

Needs Debian's rspamd (scripts/install-system-packages installs it as root). Figures only: nothing is asserted.
The mails are bench/classify.py's synthetic tenant mails (2, 6 and 20 KB, fixed seed).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.classify import SEED, SIZES_KB, synthetic_mails  # noqa: E402
from bench.smtp_ingest import percentile  # noqa: E402
from emergencyd.escalation.rspamd import SpamCheck, ask_rspamd_now  # noqa: E402
from emergencyd.escalation.trust import TrustPolicy, sender_standing  # noqa: E402
from emergencyd.parsers.message import parse_message  # noqa: E402
from emergencyd.parsers.spam_headers import relay_spam_verdict  # noqa: E402
from tests.rspamd import Rspamd  # noqa: E402

RELAY_FIELDS = ("X-Spamd-Result: default: False [2.10 / 15.00]; MIME_GOOD(-0.10)[text/plain]; DATE_IN_PAST(1.00)[3]\r\n"
                "X-Spam: No\r\nReceived: from mail.tenant.gov.example by mx.example.org\r\n")


def summary(seconds: list[float], unit: float = 1e3) -> dict[str, float]:
    ordered = sorted(seconds)
    return {"n": len(ordered), "p50": percentile(ordered, 50) * unit, "p99": percentile(ordered, 99) * unit,
            "max": ordered[-1] * unit}


def timed(fn, items) -> list[float]:
    times = []
    for item in items:
        start = time.perf_counter()
        fn(item)
        times.append(time.perf_counter() - start)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mails", type=int, default=200, help="mails per size (default 200)")
    parser.add_argument("--directory", type=int, default=1000, help="tenant domains and as many addresses (1000)")
    parser.add_argument("--json", type=Path, help="also write the figures to FILE")
    args = parser.parse_args()
    raws = synthetic_mails(args.mails)
    rng = random.Random(SEED)
    directory = TrustPolicy(tenant_domains=tuple(f"tenant{i}.gov.example" for i in range(args.directory)),
                            tenant_addresses=tuple(f"lead{i}@personal.example" for i in range(args.directory)))
    senders = [f"dev{i}@tenant{rng.randrange(args.directory * 2)}.gov.example" for i in range(2000)] + \
              [f"lead{rng.randrange(args.directory * 2)}@personal.example" for _ in range(2000)]
    rows: list[tuple[str, str, dict]] = [
        ("tenant directory look-up", "us", summary(timed(lambda s: sender_standing(s, directory), senders), 1e6))]
    relayed = [parse_message(RELAY_FIELDS.encode() + raw).headers for raw in raws[6]]
    rows.append(("relay's spam fields, 6 KB mail", "us",
                 summary(timed(lambda h: relay_spam_verdict(h), relayed), 1e6)))
    scanner = Rspamd()
    try:
        scanner.start()
        check = SpamCheck(scanner.url, 30)
        for raw in raws[2][:5]:
            ask_rspamd_now(raw, check)                          # warm: its first answers compile more
        for kb in SIZES_KB:
            rows.append((f"rspamd /checkv2, {kb} KB, one at a time", "ms",
                         summary(timed(lambda raw: ask_rspamd_now(raw, check), raws[kb]))))
        with ThreadPoolExecutor(8) as pool:
            start = time.perf_counter()
            times = list(pool.map(lambda raw: timed(lambda r: ask_rspamd_now(r, check), [raw])[0], raws[6]))
            elapsed = time.perf_counter() - start
        rows.append(("rspamd /checkv2, 6 KB, 8 at once", "ms", {**summary(times), "per_s": len(times) / elapsed}))
    finally:
        scanner.stop()
    print(f"{'':44}{'unit':>6}{'n':>7}{'p50':>10}{'p99':>10}{'max':>10}")
    for name, unit, s in rows:
        rate = f"   {s['per_s']:.0f} mails/s" if "per_s" in s else ""
        print(f"{name:44}{unit:>6}{s['n']:>7}{s['p50']:>10.3f}{s['p99']:>10.3f}{s['max']:>10.3f}{rate}")
    machine = {"nproc": os.cpu_count(), "python": sys.version.split()[0], "load": os.getloadavg()[0]}
    print(f"machine: nproc={machine['nproc']}  python {machine['python']}  load {machine['load']:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "rows": {n: s for n, _, s in rows}}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
