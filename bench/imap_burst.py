"""The burst part of bench/imap_pickup.py: distinct P1s from many tenants APPENDed within seconds.

    .venv/bin/python bench/imap_pickup.py --skip idle --skip backlog --skip poll --burst 25

N P1s, each from a tenant of its own and about its own outage, APPENDed to the Dovecot INBOX
evenly spaced over S seconds, to a live emergencyd with the shipped Zendesk pacing (90 a
minute) and `[dedup] max_new_pages_per_minute` lifted: every one is a new incident and must
page. Timed from just before each APPEND to its trigger at the fake PagerDuty. Unlike the
one-at-a-time rows, the escalations overlap and share Zendesk's pace, so the page's wait for
its ticket (up to `ticket_head_start_seconds`) is part of the figure.
"""
from __future__ import annotations

import time
from pathlib import Path

from bench.imap_pickup import (
    PAGE_TIMEOUT,
    Appender,
    Probe,
    Route,
    Triggers,
    attach_stored,
    daemon_log_summary,
    imap_table,
    route_row,
    settle,
    with_password,
)
from bench.smtp_ingest import (
    Cleanup,
    _fmt,
    build_message,
    start_emergencyd,
    stop_daemon,
)
from bench.storm import max_in_window
from emergencyd.escalation.pacing import Pacer
from tests.harness import live_env

BURST_BASE = 700_000   # build_message indexes of its own (see imap_pickup's *_BASE)


def burst_mail(run: str, tenant: int) -> tuple[str, bytes]:
    """Tenant `tenant`'s P1: smtp_ingest's alert, from a domain of its own."""
    return build_message(f"{run}-burst", BURST_BASE + tenant, sender=f"noc@tenant{tenant:03d}.example.net")


def refill_seconds(rpm: int) -> float:
    """How long the daemon's Zendesk bucket takes to fill up from empty (its capacity at rpm a minute)."""
    return Pacer(rpm)._capacity * 60.0 / rpm   # private, read only: the daemon's own bucket size


def start_burst_daemon(directory: Path, stack: Cleanup, args, dovecot, zendesk, pagerduty, ca):
    return start_emergencyd(
        directory, stack, env=with_password(live_env(), dovecot), dry_run=False,
        zendesk_url=zendesk.url, pagerduty_url=pagerduty.url, ca_file=ca.write_ca_pem(directory),
        extra=f"[dedup]\nmax_new_pages_per_minute = {args.burst_max_new_pages}\n",
        extra_zendesk=f"requests_per_minute = {args.burst_zendesk_rpm}\n",
        imap=imap_table(dovecot, poll_interval=args.poll_interval))


def append_evenly(appender: Appender, route: Route, messages: list[tuple[str, bytes]], seconds: float) -> None:
    """APPEND message i at i * seconds / N from now; late ones go at once (a slow APPEND delays the next)."""
    spacing = seconds / len(messages)
    began = time.monotonic()
    for i, (key, raw) in enumerate(messages):
        time.sleep(max(0.0, began + i * spacing - time.monotonic()))
        start, ok, uid = appender.append(raw)
        route.probes.append(Probe(key, start, append_ok=ok, uid=uid))


def wait_pages(route: Route, triggers: Triggers, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for probe in route.probes:
        probe.page = triggers.wait(probe.key, max(0.0, deadline - time.monotonic()))
        route.missing += probe.page is None


def bench_burst(args, workdir: Path, stack: Cleanup, run: str, dovecot, zendesk, pagerduty, ca) -> tuple[dict, dict]:
    """One warm-up P1 (opens the connections, then the bucket refills), then the burst."""
    directory = workdir / "burst"
    directory.mkdir()
    daemon = start_burst_daemon(directory, stack, args, dovecot, zendesk, pagerduty, ca)
    store = directory / "var" / "store.sqlite3"
    route = Route(f"IMAP burst: {args.burst} P1s in {args.burst_seconds:g} s")
    appender = Appender(dovecot)
    stack.callback(appender.close)
    triggers = Triggers(pagerduty)
    try:
        warmup_key, warmup_raw = burst_mail(run, args.burst)
        start, ok, uid = appender.append(warmup_raw)
        route.probes.append(Probe(warmup_key, start, append_ok=ok, uid=uid,
                                  page=triggers.wait(warmup_key, PAGE_TIMEOUT)))
        settle(store)
        time.sleep(refill_seconds(args.burst_zendesk_rpm))   # the burst starts with a full bucket
        calls_before = len(zendesk.requests)
        burst = Route(route.name)
        append_evenly(appender, burst, [burst_mail(run, t) for t in range(args.burst)], args.burst_seconds)
        wait_pages(burst, triggers, PAGE_TIMEOUT)
        route.probes += burst.probes
        route.missing += burst.missing
        left_in_inbox = appender.count()
    finally:
        appender.close()
    stop_daemon(daemon)
    attach_stored([route], directory, daemon.log_path)
    calls = zendesk.requests[calls_before:]
    window, _ = max_in_window([r.received_at for r in calls])
    info = {"spacing_s": round(args.burst_seconds / args.burst, 3), "zendesk_rpm": args.burst_zendesk_rpm,
            "bucket_burst": int(Pacer(args.burst_zendesk_rpm)._capacity),
            "max_new_pages": args.burst_max_new_pages, "zendesk_calls": len(calls),
            "zendesk_calls_max_60s_window": window, "distinct_pages": len({p.key for p in route.counted if p.page}),
            "log": daemon_log_summary(daemon)}
    return route_row(route, left_in_inbox=left_in_inbox), info


def burst_lines(row: dict, info: dict) -> list[str]:
    """Lines under imap_pickup's table for the burst row."""
    return [
        "",
        f"burst: {row['messages']} distinct P1s from as many tenants, one APPEND every {info['spacing_s']:g} s, to a "
        f"live daemon with [zendesk] requests_per_minute = {info['zendesk_rpm']} (bucket {info['bucket_burst']}) and "
        f"[dedup] max_new_pages_per_minute = {info['max_new_pages']}",
        f"  APPEND -> page: p50 {_fmt(row['p50_ms'], 0, 1)} ms, p99 {_fmt(row['p99_ms'], 0, 1)} ms (target <= 1000), "
        f"max {_fmt(row['max_ms'], 0, 1)} ms, mean {_fmt(row['mean_ms'], 0, 1)} ms; paged {row['paged']}/"
        f"{row['messages']}, {info['distinct_pages']} distinct dedup keys",
        f"  to commit p50 {_fmt(row['to_commit_p50_ms'], 0, 1)} ms, p99 {_fmt(row['to_commit_p99_ms'], 0, 1)} ms; "
        f"commit -> page p50 {_fmt(row['commit_to_page_p50_ms'], 0, 1)} ms, p99 "
        f"{_fmt(row['commit_to_page_p99_ms'], 0, 1)} ms",
        f"  Zendesk calls from the first APPEND to the end: {info['zendesk_calls']}, at most "
        f"{info['zendesk_calls_max_60s_window']} in a 60 s window",
    ]
