"""Storm benchmark: many tenants mail about the same platform outage at once.

    .venv/bin/python bench/storm.py [--tenants 200] [--per-tenant 10] [--zendesk-rpm 90]
                                    [--connections 8] [--drain-timeout 2400] [--json FILE]

Quick mode, for iteration: --tenants 20 --per-tenant 10 --zendesk-rpm 6000

emergencyd runs as a subprocess with dry_run = false and the shipped policy, wired to
FakeZendesk and FakePagerDuty in this process (as bench/smtp_ingest.py's third run).
It gets tenants x per-tenant mails about one outage over K concurrent SMTP connections,
as fast as it accepts them, and the benchmark measures: the time to the page, the
number of PagerDuty incidents and trigger events, the time to accept everything, the
time to drain (every escalation done), the daemon's memory, and how the Zendesk calls
were paced against `[zendesk] requests_per_minute`. Figures only: nothing is asserted.
See bench/README.md ("Storm benchmark").
"""
from __future__ import annotations

import argparse
import bisect
import json
import os
import random
import re
import smtplib
import sys
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.smtp_ingest import (  # noqa: E402
    SMTP_TIMEOUT,
    Cleanup,
    _escalation_backlog,
    _fmt,
    _send_one,
    add_session_args,
    bench_session,
    cpu_seconds,
    header,
    percentile,
    run_benchmark,
    run_load,
    start_emergencyd,
    stop_daemon,
)
from emergencyd.escalation.pacing import Pacer  # noqa: E402
from emergencyd.escalation.records import STEP_FAILED, STEP_PENDING  # noqa: E402
from tests.harness import (  # noqa: E402
    API_TOKEN,
    ZENDESK_EMAIL,
    ZENDESK_TOKEN,
    live_env,
    log_records,
    make_message,
    run_cli,
)

PROGRESS_EVERY = 30.0     # seconds between progress lines while draining
PEEK_EVERY = 0.5          # seconds between read-only looks at the store while draining
SAMPLE_EVERY = 0.5        # seconds between RSS samples
ZENDESK_INCIDENT = "incident"  # the Zendesk ticket type of a report joined to a problem
STORM_DIRECTORY = "storm"     # the run's folder under the work directory


# --- the storm ------------------------------------------------------------------

SUBJECTS = (
    "All our apps are down",
    "Apps down?",
    "URGENT: site is down",
    "502 Bad Gateway on all our apps",
    "Production is down",
    "Still down - any news?",
)
FIRST_BODIES = (
    "Hello,\n\nAll our apps are down since {at} UTC: every route of {app}.{domain} returns\n"
    "502 Bad Gateway. We have not deployed anything today and our own health checks pass\n"
    "inside the containers, so it looks like the platform's router.\n\n"
    "Proxy log:\n"
    "  {at}:03 upstream prematurely closed connection while reading response header\n"
    "  {at}:04 no live upstreams while connecting to upstream, client: 203.0.113.{ip}\n\n"
    "Our customers cannot log in. Please call us on +44 20 7946 0{ip:03d}.\n",

    "Hi support,\n\nIs there a platform problem? {app} and our other apps are not being served:\n"
    "every request gets 503 Service Unavailable from your router since about {at} UTC.\n"
    "Nothing changed on our side. Our status page is red and the phones are ringing.\n\n"
    "  $ curl -sI https://{app}.{domain}/health\n"
    "  HTTP/1.1 503 Service Unavailable\n  server: gorouter\n\n"
    "Thanks,\n{name}\n",

    "Our production site is down. {app}.{domain} and api.{domain} time out for everyone,\n"
    "from several networks (office, 4G, our monitoring in two regions). Started at {at} UTC.\n"
    "This is a P1 for us: we are a shop and it is our busiest evening.\n\n"
    "Monitoring says:\n  [{at}] CRITICAL https://{app}.{domain}/ - connection timed out (10 s)\n"
    "  [{at}] CRITICAL https://api.{domain}/ping - 502 Bad Gateway\n\n{name}\n",
)
FOLLOW_UP_BODIES = (
    "Still down on our side, {minutes} minutes now. All our apps are unreachable and our customers\n"
    "are calling. Any ETA? We can help with logs or a call.\n\n{name}\n",

    "Any update? The site is down for all our customers (502 Bad Gateway on every route of\n"
    "{app}.{domain}). Our management is asking for a status every 15 minutes.\n\n{name}\n",

    "Apps are down in every space of our org; the router answers 503 Service Unavailable.\n"
    "We restarted {app} twice, no change. Please confirm you are working on it.\n\n{name}\n",

    "URGENT - production is down for {minutes} minutes. {app}.{domain} gives 502 Bad Gateway.\n"
    "We are losing orders. Is there an incident on your side?\n\n{name}\n",
)
FIRST_NAMES = ("Alex", "Sam", "Priya", "Jonas", "Maria", "Kenji", "Fatima", "Luca", "Olu", "Chen")
MAILERS = ("Microsoft Outlook 16.0", "Mozilla Thunderbird 128.5", "Apple Mail (2.3774)", "Gmail")


def storm_messages(run: str, tenants: int, per_tenant: int, seed: int = 1) -> list[tuple[str, bytes]]:
    """tenants x per_tenant mails, (key, raw), in the order they would arrive.

    Each tenant notices the outage at a random moment in the first two minutes, then
    writes again every one to four minutes; the mails of all tenants are interleaved by
    those (virtual) times. One sender per tenant, a unique Message-ID per mail, no
    In-Reply-To: every mail stands alone, as most people write them in an outage.
    """
    rng = random.Random(seed)
    timed: list[tuple[float, int, int]] = []
    for t in range(tenants):
        at = rng.uniform(0, 120)
        for n in range(per_tenant):
            timed.append((at, t, n))
            at += rng.uniform(60, 240)
    timed.sort()
    messages = []
    for at, t, n in timed:
        domain = f"tenant{t:03d}.example"
        name = f"{FIRST_NAMES[t % len(FIRST_NAMES)]} (Tenant {t:03d} ops)"
        minutes = int(at // 60) + 5
        clock = f"02:{(10 + minutes) % 60:02d}"
        fields = dict(at=clock, app=("shop", "portal", "api-gw", "checkout")[t % 4], domain=domain,
                      ip=t % 250 + 1, name=name, minutes=minutes)
        template = FIRST_BODIES[t % len(FIRST_BODIES)] if n == 0 else \
            FOLLOW_UP_BODIES[(t + n) % len(FOLLOW_UP_BODIES)]
        body = template.format(**fields).replace("\n", "\r\n")
        subject = SUBJECTS[(t + n) % len(SUBJECTS)] if n else SUBJECTS[t % 3]
        extra = (f"Received: from mail.{domain} (mail.{domain} [198.51.100.{t % 250 + 1}])\r\n"
                 f"\tby mx1.example.org with ESMTPS id {t:04x}{n:04x}; Fri, 27 Nov 2026 02:15:01 +0000\r\n"
                 f"X-Mailer: {MAILERS[t % len(MAILERS)]}\r\nMIME-Version: 1.0\r\n")
        raw = make_message(subject=subject, body=body, sender=f"ops@{domain}",
                           message_id=f"<{run}.t{t:03d}.{n:03d}@mail.{domain}>", extra_headers=extra)
        messages.append((f"t{t}-{n}", raw))
    return messages


CANARY_SENDER = "security@othercorp.example"


def canary_message(run: str) -> tuple[str, bytes]:
    """An unrelated P1 (security breach, paged at high urgency) from a tenant outside the storm."""
    message_id = f"{run}.canary@mail.othercorp.example"
    body = ("We found our admin credentials leaked on a paste site an hour ago and now see unauthorised\r\n"
            "access to our space from an address we do not know (192.0.2.77). We have rotated what we\r\n"
            "can; please lock the account and call us.\r\n\r\nOthercorp security team\r\n")
    raw = make_message(subject="Security breach: credentials leaked", body=body, sender=CANARY_SENDER,
                       message_id=f"<{message_id}>")
    return message_id, raw


def send_canary(port: int, raw: bytes) -> tuple[float, int]:
    """One mail on its own connection; (monotonic time just before data(), reply code)."""
    with smtplib.SMTP("127.0.0.1", port, local_hostname="bench.localhost", timeout=SMTP_TIMEOUT) as client:
        start, _, code = _send_one(client, raw)
    return start, code


# --- watching the daemon ----------------------------------------------------------

def proc_status_kb(pid: int, key: str) -> int | None:
    """A `kB` field of /proc/PID/status (VmRSS, VmHWM), or None once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


class Sampler(threading.Thread):
    """Samples the daemon's VmRSS every SAMPLE_EVERY seconds, in the background."""

    def __init__(self, pid: int) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.pid = pid
        self.samples: list[tuple[float, int]] = []   # (monotonic, kB)
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            kb = proc_status_kb(self.pid, "VmRSS")
            if kb is not None:
                self.samples.append((time.monotonic(), kb))
            self._stop_event.wait(SAMPLE_EVERY)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(5)

    def peak(self) -> tuple[float, int] | None:
        return max(self.samples, key=lambda s: s[1]) if self.samples else None

    def at(self, moment: float) -> int | None:
        """The last sample at or before `moment`."""
        before = [kb for t, kb in self.samples if t <= moment]
        return before[-1] if before else None


def status_counts(config: Path) -> dict[str, int] | None:
    """`emergencyd status --json` counts by state (None if the command failed)."""
    result = run_cli(config, "status", "--json", "--limit", "1", env=live_env(), check=False)
    if result.returncode != 0:
        return None
    try:
        return json.loads(result.stdout)["counts"]
    except (ValueError, KeyError):
        return None


def unfinished(counts: dict[str, int]) -> int:
    return counts.get("new", 0) + counts.get("pending", 0)


# --- figures ----------------------------------------------------------------------

def max_in_window(stamps: list[float], width: float = 60.0) -> tuple[int, float | None]:
    """The most stamps in any half-open window [t, t + width) starting at a stamp, and that t."""
    ordered = sorted(stamps)
    best, best_at = 0, None
    for i, start in enumerate(ordered):
        count = bisect.bisect_left(ordered, start + width, lo=i) - i
        if count > best:
            best, best_at = count, start
    return best, best_at


NUMBER = re.compile(r"/\d+")
INCIDENT_ID = re.compile(r"/incidents/\w+")


def zendesk_kind(req) -> str:
    body = req.json if isinstance(req.json, dict) else {}
    if req.method == "POST" and req.path == "/api/v2/tickets.json":
        return "ticket create"
    if req.method == "PUT" and re.fullmatch(r"/api/v2/tickets/\d+\.json", req.path):
        comment = (body.get("ticket") or {}).get("comment") or {}
        return "public comment" if comment.get("public", True) else "private note"
    if req.path == "/api/v2/users/create_or_update.json":
        return "user create_or_update"
    return f"{req.method} {NUMBER.sub('/N', req.path)}"


def zendesk_figures(zendesk, rpm: int, began: float) -> dict:
    requests = zendesk.requests
    stamps = sorted(r.received_at for r in requests)
    span = stamps[-1] - stamps[0] if len(stamps) > 1 else 0.0
    window, window_at = max_in_window(stamps)
    burst = int(Pacer(rpm)._capacity)   # the daemon's bucket size for this rate (private, read only)
    tickets = zendesk.tickets()
    problems = [t for t in tickets if t["type"] == "problem"]
    incidents = [t for t in tickets if t["type"] == ZENDESK_INCIDENT]
    problem_ids = {p["id"] for p in problems}
    public = private = 0
    for ticket in tickets:
        comments = zendesk.comments(ticket["id"])
        public += sum(1 for c in comments if c["public"]) - 1      # the first is the description
        private += sum(1 for c in comments if not c["public"])
    statuses = Counter(r.status for r in requests)
    last_by_kind: dict[str, float] = {}
    for r in requests:
        if CANARY_SENDER in r.body.decode("utf-8", "replace"):
            continue    # the storm's figures, not the canary's
        kind = zendesk_kind(r)
        last_by_kind[kind] = max(last_by_kind.get(kind, r.received_at), r.received_at)
    per_minute = Counter(int((t - began) // 60) for t in stamps)
    return {
        "calls": len(requests),
        "calls_by_kind": dict(Counter(zendesk_kind(r) for r in requests).most_common()),
        "last_call_by_kind_s": {k: round(t - began, 3) for k, t in last_by_kind.items()},  # not the canary's
        "first_call_s": round(stamps[0] - began, 3) if stamps else None,
        "last_call_s": round(stamps[-1] - began, 3) if stamps else None,
        "span_s": round(span, 3),
        "calls_per_minute_avg": round(len(stamps) / (span / 60), 1) if span >= 60 else None,
        "calls_per_minute_max_60s_window": window,
        "max_window_starts_s": None if window_at is None else round(window_at - began, 3),
        "configured_rpm": rpm, "bucket_burst": burst, "window_bound": rpm + burst,
        "calls_per_minute_by_minute": [per_minute.get(m, 0) for m in range(max(per_minute, default=-1) + 1)],
        "status_429": statuses.get(429, 0),
        "statuses": {str(k): v for k, v in sorted(statuses.items(), key=lambda kv: (kv[0] is None, kv[0] or 0))},
        "faults": sum(1 for r in requests if r.fault),
        "tickets": len(tickets), "problem_tickets": len(problems), "incident_tickets": len(incidents),
        "incidents_linked_to_problem": sum(1 for t in incidents if t.get("problem_id") in problem_ids),
        "requesters": len({t["requester_id"] for t in tickets}),
        "public_comments": public, "private_notes": private,
        "errors": [repr(e) for e in zendesk.errors],
    }


def pagerduty_figures(pagerduty, began: float) -> dict:
    enqueue = pagerduty.requests_matching(r"^/v2/enqueue$", "POST")
    triggers = [r for r in enqueue if isinstance(r.json, dict) and r.json.get("event_action") == "trigger"]
    rest = [r for r in pagerduty.requests if not r.path.startswith("/v2/")]
    window, _ = max_in_window([r.received_at for r in rest])
    first = min((r.received_at for r in triggers), default=None)
    return {
        "incidents": len(pagerduty.incidents()),
        "dedup_keys": len({r.json.get("dedup_key") for r in triggers}),
        "trigger_events": len(triggers),
        "other_events": len(enqueue) - len(triggers),
        "first_trigger_s": None if first is None else round(first - began, 3),
        "last_trigger_s": round(max(r.received_at for r in triggers) - began, 3) if triggers else None,
        "rest_calls": len(rest),
        "rest_calls_by_kind": dict(Counter(f"{r.method} {INCIDENT_ID.sub('/incidents/ID', r.path)}"
                                           for r in rest).most_common()),
        "rest_calls_max_60s_window": window,
        "statuses": dict(Counter(str(r.status) for r in pagerduty.requests)),
        "errors": [repr(e) for e in pagerduty.errors],
    }


PROBLEM_LEVELS = {"warning", "error", "critical"}


def log_problems(path: Path) -> dict:
    """Records at level warning/error/critical, grouped by (level, logger, event); and the plain grep."""
    text = path.read_text("utf-8", "replace") if path.exists() else ""
    lines = text.splitlines()
    events = Counter(f"{r['level']} {r.get('logger')} {r['event'][:120]!r}" for r in log_records(text)
                     if r.get("level") in PROBLEM_LEVELS)
    return {
        "lines": len(lines),
        "grep_warning": sum(1 for line in lines if "warning" in line.lower()),
        "grep_error": sum(1 for line in lines if "error" in line.lower()),
        "events": dict(events.most_common()),
        "tracebacks": text.count("Traceback"),
    }


def relations_of(config: Path, total: int, canary_id: str | None = None) -> dict:
    result = run_cli(config, "status", "--json", "--limit", str(total + 10), env=live_env(), check=False)
    if result.returncode != 0:
        return {"error": result.stderr.strip()[-500:]}
    doc = json.loads(result.stdout)
    messages = doc["messages"]
    failed_steps = Counter(name for m in messages for name, s in m["steps"].items() if s["state"] == STEP_FAILED)
    pending_steps = Counter(f"{m['relation']}:{name}" for m in messages for name, s in m["steps"].items()
                            if s["state"] == STEP_PENDING)
    categories = Counter(f"{m['verdict'].get('category')} {m['severity']}" for m in messages if m["verdict"])
    return {
        "counts": doc["counts"],
        "relations": dict(Counter(str(m["relation"]) for m in messages).most_common()),
        "classified": dict(categories.most_common()),
        "groups": [{k: g[k] for k in ("group_id", "reports", "problem_ticket_id") if k in g}
                   | {"tenants": len(g.get("tenants") or []),
                      "incident_tickets": len([t for t in g.get("incident_ticket_ids") or [] if t])}
                   for g in doc["groups"]],
        "failed_steps": dict(failed_steps),
        "pending_steps": dict(pending_steps.most_common()),
        "canary": next(({k: m[k] for k in ("relation", "severity", "page_key", "dedup_key", "state")}
                        for m in messages if canary_id and m["message_id"] == canary_id), None),
    }


# --- the run ----------------------------------------------------------------------

def drain(args, daemon, store: Path, zendesk, began: float, sampler: Sampler) -> dict:
    """Wait until no escalation is new or pending, or the drain timeout; progress lines meanwhile.

    The frequent look is a read-only SQLite peek (cheap); `emergencyd status --json` gives
    the progress lines and confirms the end.
    """
    deadline = began + args.drain_timeout
    next_progress = time.monotonic() + PROGRESS_EVERY
    progress: list[dict] = []
    while True:
        now = time.monotonic()
        if daemon.proc.poll() is not None:
            return {"drained_s": None, "reason": f"the daemon exited with {daemon.proc.returncode}",
                    "progress": progress}
        backlog = _escalation_backlog(store)
        if backlog == 0:
            counts = status_counts(daemon.config)
            if counts is not None and unfinished(counts) == 0:
                return {"drained_s": round(now - began, 3), "counts": counts, "progress": progress}
        if now >= deadline:
            return {"drained_s": None, "reason": f"drain timeout ({args.drain_timeout:g} s) reached",
                    "counts": status_counts(daemon.config), "progress": progress}
        if now >= next_progress:
            next_progress += PROGRESS_EVERY
            counts = status_counts(daemon.config) or {}
            stamps = [r.received_at for r in zendesk.requests]
            recent = sum(1 for t in stamps if t >= now - 60)
            rss = proc_status_kb(daemon.proc.pid, "VmRSS")
            line = {"t_s": round(now - began, 1), "unfinished": unfinished(counts), "counts": counts,
                    "zendesk_calls": len(stamps), "zendesk_calls_last_60s": recent, "rss_kb": rss}
            progress.append(line)
            print(f"  [{_clock(now - began)}] unfinished escalations {unfinished(counts)} "
                  f"({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))}); "
                  f"zendesk calls {len(stamps)} ({recent} in the last 60 s); "
                  f"RSS {_mb(rss)}", file=sys.stderr, flush=True)
        time.sleep(PEEK_EVERY)


def start_live_with_fakes(directory: Path, stack: Cleanup, zendesk_rpm: int, extra: str = ""):
    """emergencyd live (the shipped policy) against HTTPS fakes of Zendesk and PagerDuty in this
    process, its CPU sampled: (daemon, zendesk, pagerduty, sampler)."""
    from tests.fakes.pagerduty import FakePagerDuty
    from tests.fakes.tls import TestCA
    from tests.fakes.zendesk import FakeZendesk

    ca = TestCA()
    zendesk = stack.enter_context(FakeZendesk(ca=ca, email=ZENDESK_EMAIL, token=ZENDESK_TOKEN))
    pagerduty = stack.enter_context(FakePagerDuty(ca=ca, api_token=API_TOKEN))
    directory.mkdir()
    daemon = start_emergencyd(directory, stack, env=live_env(), dry_run=False, policy=True,
                              zendesk_url=zendesk.url, pagerduty_url=pagerduty.url,
                              ca_file=ca.write_ca_pem(directory),
                              extra_zendesk=f"requests_per_minute = {zendesk_rpm}\n", extra=extra)
    sampler = Sampler(daemon.proc.pid)
    sampler.start()
    stack.callback(sampler.stop)
    return daemon, zendesk, pagerduty, sampler


def bench_storm(args, workdir: Path, stack: Cleanup, run: str) -> dict:
    directory = workdir / STORM_DIRECTORY
    daemon, zendesk, pagerduty, sampler = start_live_with_fakes(
        directory, stack, args.zendesk_rpm,
        # write_config puts `extra` before [smtp]: a table of its own is fine there.
        extra="" if args.max_new_pages is None else f"[dedup]\nmax_new_pages_per_minute = {args.max_new_pages}\n")
    pid = daemon.proc.pid
    store = directory / "var" / "store.sqlite3"

    messages = storm_messages(run, args.tenants, args.per_tenant)
    sizes = [len(raw) for _, raw in messages]
    rss_start = proc_status_kb(pid, "VmRSS")
    cpu_start = cpu_seconds(pid)
    print(f"storm: {len(messages)} mails from {args.tenants} tenants over {args.connections} connections, "
          f"zendesk {args.zendesk_rpm}/min ...", file=sys.stderr, flush=True)
    result = run_load(daemon.smtp_port, messages, args.connections, server_pid=pid)
    began = result.started
    accepted = result.accepted
    accept_s = result.finished - began
    rss_accepted = proc_status_kb(pid, "VmRSS")
    cpu_accepted = cpu_seconds(pid)
    canary_id = canary_sent = None
    if args.canary:
        canary_id, canary_raw = canary_message(run)
        canary_sent, code = send_canary(daemon.smtp_port, canary_raw)
        print(f"  canary (unrelated P1) sent at {canary_sent - began:.1f}s: {code}", file=sys.stderr, flush=True)
    print(f"  accepted {len(accepted)}/{len(messages)} in {accept_s:.1f}s; draining (up to "
          f"{args.drain_timeout:g}s after the burst began) ...", file=sys.stderr, flush=True)

    drained = drain(args, daemon, store, zendesk, began, sampler)
    ended = time.monotonic()
    cpu_end = cpu_seconds(pid)
    hwm = proc_status_kb(pid, "VmHWM")
    rss_end = proc_status_kb(pid, "VmRSS")
    relations = relations_of(daemon.config, len(messages) + 1, canary_id)
    sampler.stop()
    peak = sampler.peak()
    stop_daemon(daemon)

    latencies = [s.end - s.start for s in accepted]

    def share(cpu_a, cpu_b, seconds):
        return None if None in (cpu_a, cpu_b) or seconds <= 0 else round(100 * (cpu_b - cpu_a) / seconds)

    drain_seconds = ended - result.finished
    canary = None
    if args.canary:
        key = (relations.get("canary") or {}).get("page_key") or (relations.get("canary") or {}).get("dedup_key")
        paged = min((r.received_at for r in pagerduty.requests_matching(r"^/v2/enqueue$", "POST")
                     if isinstance(r.json, dict) and r.json.get("event_action") == "trigger"
                     and key and r.json.get("dedup_key") == key), default=None)
        canary = {"sent_s": round(canary_sent - began, 3), "record": relations.get("canary"),
                  "paged_s": None if paged is None else round(paged - began, 3),
                  "page_latency_s": None if paged is None else round(paged - canary_sent, 3)}
    return {
        "mails": len(messages), "tenants": args.tenants, "per_tenant": args.per_tenant,
        "connections": args.connections, "zendesk_rpm": args.zendesk_rpm, "max_new_pages": args.max_new_pages,
        "message_bytes": {"min": min(sizes), "max": max(sizes)},
        "smtp": {"accepted": len(accepted), "rejected": result.rejected, "errors": result.errors,
                 "last_250_s": round(accept_s, 3),
                 "msg_per_s": round(len(accepted) / accept_s, 1) if accept_s > 0 else None,
                 "p50_ms": _ms(percentile(latencies, 50)), "p99_ms": _ms(percentile(latencies, 99)),
                 "max_ms": _ms(max(latencies) if latencies else None)},
        "drain": drained,
        "pagerduty": pagerduty_figures(pagerduty, began),
        "zendesk": zendesk_figures(zendesk, args.zendesk_rpm, began),
        "store": relations,
        "rss_kb": {"start": rss_start, "last_250": rss_accepted, "end": rss_end, "hwm": hwm,
                   "peak_sampled": peak[1] if peak else None,
                   "peak_sampled_at_s": round(peak[0] - began, 1) if peak else None,
                   "samples": [(round(t - began, 1), kb) for t, kb in sampler.samples[::10]]},
        "cpu": {"accept_percent": share(cpu_start, cpu_accepted, accept_s),
                "drain_percent": share(cpu_accepted, cpu_end, drain_seconds),
                "total_s": None if None in (cpu_start, cpu_end) else round(cpu_end - cpu_start, 1)},
        "log": log_problems(daemon.log_path),
        "observed_s": round(ended - began, 1),
        "canary": canary,
    }


# --- report -----------------------------------------------------------------------

def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def _mb(kb: int | None) -> str:
    return "-" if kb is None else f"{kb / 1024:.0f} MB"


def _clock(seconds: float) -> str:
    return f"{int(seconds // 60):3d}m{seconds % 60:04.1f}s"


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s" if value < 120 else f"{value:.1f} s ({value / 60:.1f} min)"


def report(info: dict, f: dict) -> str:
    smtp, pd, zd, store, drained = f["smtp"], f["pagerduty"], f["zendesk"], f["store"], f["drain"]
    canary = f.get("canary")
    expected_tickets = f"1 + {f['tenants'] - 1}" + (" + 1 canary problem" if canary else "")
    expected_incidents = 2 if canary else 1
    expected_comments = f["tenants"] * (f["per_tenant"] - 1)
    accepted_label = f"last 250 ({smtp['accepted']}/{f['mails']} accepted)"
    out = header(info, "emergencyd storm benchmark") + [
        "",
        f"storm     {f['mails']} mails from {f['tenants']} tenants ({f['per_tenant']} each, "
        f"{f['message_bytes']['min']}-{f['message_bytes']['max']} bytes) about one outage, "
        f"over {f['connections']} SMTP connections",
        f"config    dry_run=false, shipped policy, busy_timeout_ms=5000, zendesk requests_per_minute="
        f"{f['zendesk_rpm']} (bucket burst {zd['bucket_burst']}), [dedup] max_new_pages_per_minute="
        + (f"{f['max_new_pages']} (not the shipped default)" if f["max_new_pages"] is not None else "shipped default"),
        "",
        "timeline, from the start of the burst:",
        f"  {'page (first trigger at the fake PagerDuty)':<44}{_secs(pd['first_trigger_s'])}",
        f"  {accepted_label:<44}{_secs(smtp['last_250_s'])}"
        f"   {_fmt(smtp['msg_per_s'], 0)} msg/s, data() p50 {_fmt(smtp['p50_ms'], 0, 1)} ms, "
        f"p99 {_fmt(smtp['p99_ms'], 0, 1)} ms, max {_fmt(smtp['max_ms'], 0, 1)} ms",
        f"  {'last ticket created (every tenant has one)':<44}{_secs(zd['last_call_by_kind_s'].get('ticket create'))}",
        f"  {'last Zendesk call':<44}{_secs(zd['last_call_s'])}",
        f"  {'drained (status: none new or pending)':<44}"
        + (_secs(drained['drained_s']) if drained.get("drained_s") is not None
           else f"NOT DRAINED: {drained.get('reason')}, after {_secs(f['observed_s'])}"),
    ]
    if canary:
        out.append(f"  canary: an unrelated P1 (security breach) sent at {_secs(canary['sent_s'])}, paged at "
                   f"{_secs(canary['paged_s'])}: {_secs(canary['page_latency_s'])} after it was sent"
                   + ("" if canary["paged_s"] is not None else " (NOT PAGED)"))
    out += [
        "",
        f"PagerDuty incidents {pd['incidents']} (expected {expected_incidents}), trigger events {pd['trigger_events']} "
        f"(dedup keys {pd['dedup_keys']}), other events {pd['other_events']}; last trigger at "
        f"{_secs(pd['last_trigger_s'])}",
        f"          REST API calls {pd['rest_calls']} (max {pd['rest_calls_max_60s_window']} in a 60 s window, "
        f"not paced): {', '.join(f'{k} {v}' for k, v in pd['rest_calls_by_kind'].items()) or '-'}",
        f"Zendesk   tickets {zd['tickets']} = {zd['problem_tickets']} problem + {zd['incident_tickets']} incident "
        f"(expected {expected_tickets}); {zd['incidents_linked_to_problem']} linked to the problem; "
        f"{zd['requesters']} requesters",
        f"          public comments {zd['public_comments']} (expected {expected_comments}), private notes "
        f"{zd['private_notes']}",
        f"          calls {zd['calls']}: {', '.join(f'{k} {v}' for k, v in zd['calls_by_kind'].items())}",
        "          calls per minute: "
        + (f"average {zd['calls_per_minute_avg']:.1f} over {zd['span_s'] / 60:.1f} min (first to last call)"
           if zd["calls_per_minute_avg"] is not None else
           f"no average, all calls came within {zd['span_s']:.1f} s")
        + f", max {zd['calls_per_minute_max_60s_window']} in any 60 s window; configured "
        f"{zd['configured_rpm']}/min, bucket {zd['bucket_burst']}: at most {zd['window_bound']} in a window",
        f"          429s: {zd['status_429']} (the fake never answers 429; it only sends X-Rate-Limit headers); "
        f"statuses {', '.join(f'{k}: {v}' for k, v in zd['statuses'].items())}",
    ]
    if "relations" in store:
        out.append(f"store     {', '.join(f'{k} {v}' for k, v in sorted(store['counts'].items()))}; relations "
                   f"{', '.join(f'{k} {v}' for k, v in store['relations'].items())}")
        out.append(f"          classified: {', '.join(f'{k} {v}' for k, v in store['classified'].items())}"
                   + (f"; failed steps: {store['failed_steps']}" if store["failed_steps"] else ""))
        if store["pending_steps"]:
            out.append(f"          steps still pending (relation:step): "
                       f"{', '.join(f'{k} {v}' for k, v in store['pending_steps'].items())}")
    rss, cpu = f["rss_kb"], f["cpu"]
    out += [
        f"daemon    RSS {_mb(rss['start'])} before the burst, {_mb(rss['last_250'])} at the last 250, "
        f"{_mb(rss['end'])} at the end; peak sampled {_mb(rss['peak_sampled'])} (at "
        f"{_fmt(rss['peak_sampled_at_s'], 0)} s), VmHWM {_mb(rss['hwm'])}",
        f"          CPU {_fmt(cpu['accept_percent'], 0)}% of a core while accepting, {_fmt(cpu['drain_percent'], 0)}%"
        f" while draining; {_fmt(cpu['total_s'], 0)} s in all",
    ]
    log = f["log"]
    out.append(f"log       {log['lines']} lines; grep -i: 'warning' {log['grep_warning']}, 'error' "
               f"{log['grep_error']}; tracebacks {log['tracebacks']}")
    for event, count in list(log["events"].items())[:8]:
        out.append(f"          {count:5d} x {event[:110]}")
    problems = []
    if smtp["rejected"]:
        problems.append(f"{smtp['rejected']} mails not answered 250")
    problems += smtp["errors"]
    problems += [f"fake Zendesk: {e}" for e in zd["errors"]] + [f"fake PagerDuty: {e}" for e in pd["errors"]]
    if drained.get("drained_s") is None:
        counts = drained.get("counts") or {}
        problems.append(f"not drained: {drained.get('reason')}; unfinished {unfinished(counts)} ({counts})")
    out += [f"WARNING {p}" for p in problems]
    return "\n".join(out)


# --- main -------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tenants", type=int, default=200, help="tenants writing about the outage (200)")
    parser.add_argument("--per-tenant", type=int, default=10, help="mails from each tenant (10)")
    parser.add_argument("--zendesk-rpm", type=int, default=90,
                        help="[zendesk] requests_per_minute (90, the shipped default)")
    parser.add_argument("--connections", type=int, default=8, help="concurrent SMTP connections (8)")
    parser.add_argument("--drain-timeout", type=float, default=2400.0,
                        help="seconds after the burst began to wait for every escalation (2400 = 40 min)")
    parser.add_argument("--max-new-pages", type=int, metavar="N",
                        help="set [dedup] max_new_pages_per_minute (default: not set, the shipped 10)")
    parser.add_argument("--canary", action="store_true",
                        help="after the last 250, send one unrelated P1 (a security breach) and time its page")
    add_session_args(parser, tmpdir="the store and its log", keep="daemon log, store")
    args = parser.parse_args(argv)
    if min(args.tenants, args.per_tenant, args.connections, args.zendesk_rpm, args.max_new_pages or 1) < 1:
        parser.error("--tenants, --per-tenant, --connections and --zendesk-rpm must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run = f"storm{os.getpid()}-{int(time.time())}"
    with bench_session("emergencyd-storm-", args.tmpdir, args.keep) as (stack, workdir, info, others):
        figures = bench_storm(args, workdir, stack, run)
        info["others_cores"] = others.cores()
        print(report(info, figures))
        if args.json:
            args.json.write_text(json.dumps({"machine": info, **figures}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    run_benchmark(main)
