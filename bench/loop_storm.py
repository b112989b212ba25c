"""Loop storm benchmark: one tenant's monitoring loops, and another tenant's P1 arrives meanwhile.

    .venv/bin/python bench/loop_storm.py [--storm loop|bounces] [--mails 600] [--body-kb 20]
                                         [--connections 8] [--p1-after 200] [--zendesk-rpm 90] [--json FILE]

emergencyd runs live (dry_run = false, the shipped policy) against FakeZendesk and
FakePagerDuty in this process, as in bench/storm.py. One sender mails N alerts of ~20 KB
(subjects differing only in a counter, a hex id and a time; bodies a log dump) over K SMTP
connections as fast as they are accepted; right after the Mth 250, another tenant's P1
("All our apps are down") goes on a connection of its own. Measured: that P1's end of DATA
to its trigger at the fake PagerDuty, the storm's 250 latency and rate, the daemon's
event-loop lag (its /metrics histogram), what the loop became in PagerDuty and Zendesk, and
the drain. Figures only: nothing is asserted. See bench/README.md ("Loop storm benchmark").

With --storm bounces the burst is N delivery reports instead, each from a mail system of its own
with a null envelope sender (a mass mailing bouncing back): every one a first mail of its sender,
all noise, none to be paged.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import histogram  # noqa: E402
from bench.smtp_ingest import (  # noqa: E402
    Cleanup,
    _fmt,
    _ms,
    add_session_args,
    bench_session,
    header,
    percentile,
    run_benchmark,
    run_load,
    stop_daemon,
)
from bench.storm import (  # noqa: E402
    drain,
    log_problems,
    pagerduty_figures,
    relations_of,
    send_canary,
    start_live_with_fakes,
    zendesk_figures,
)
from tests.harness import make_message  # noqa: E402

LAG_METRIC = "emergencyd_event_loop_lag_seconds"
LOOP_SENDER = "alerts@monitoring.tenant-loop.example"
P1_SENDER = "ops@othercorp.example"
RETURNED_TO = "newsletter@tenant-loop.example"   # the bounces' mailing went out from here
P1_PAGE_TIMEOUT = 30.0     # seconds after the P1's DATA to wait for its page before the drain
SEND_P1_TIMEOUT = 120.0    # the P1 thread gives up if the Mth 250 never comes


# --- the mail -----------------------------------------------------------------------

LOG_LINE = ("2026-11-27T02:{minute:02d}:{second:02d}.{ms:03d}Z checkout-api-7f9c8d6b5-{pod} ERROR "
            "upstream request failed status=50{digit} method=POST path=/api/v1/cart/{cart:08x}/checkout "
            "duration_ms={duration} trace_id={trace:016x}\r\n")


def log_dump(size: int, seed: int) -> str:
    """About `size` bytes of an application's error log, different in every mail."""
    lines, total, n = [], 0, 0
    while total < size:
        line = LOG_LINE.format(minute=14 + n // 600, second=n // 10 % 60, ms=(n * 37) % 1000,
                               pod=f"{(seed * 7 + n) % 46656:03x}", digit=(2, 3, 4)[n % 3],
                               cart=(seed * 1_000_003 + n * 7919) & 0xFFFFFFFF, duration=3000 + n % 997,
                               trace=(seed << 20) ^ (n * 2654435761))
        lines.append(line)
        total += len(line)
        n += 1
    return "".join(lines)


def loop_mail(run: str, index: int, body_kb: float) -> tuple[str, bytes, str]:
    """Alert `index` of the loop: (key, raw, envelope sender). Only the counter, the hex id and
    the time differ between subjects, as a monitoring system's do."""
    second = index * 7
    stamp = f"02:{14 + second // 3600 % 46:02d}:{second // 60 % 60:02d}"
    alert_id = f"{((index + 1) * 2654435761) & 0xFFFFFFFF:08x}"
    subject = (f"ALERT #{10423 + index} checkout-api: HTTP 5xx rate 12.4% above threshold "
               f"(id {alert_id}) at {stamp}")
    head = (f"Alert #{10423 + index} fired at {stamp} UTC.\r\n\r\nRule: http_5xx_rate{{service=\"checkout-api\"}} "
            "> 5% for 1m\r\nCurrent value: 12.4%\r\nRunbook: https://wiki.tenant-loop.example/runbooks/5xx\r\n\r\n"
            "Last log lines:\r\n")
    mid = f"{run}.loop{index:05d}@monitoring.tenant-loop.example"
    raw = make_message(subject=subject, body=head, sender=LOOP_SENDER, message_id=f"<{mid}>")
    body = head + log_dump(int(body_kb * 1024) - len(raw), index)
    raw = make_message(subject=subject, body=body, sender=LOOP_SENDER, message_id=f"<{mid}>",
                       extra_headers="X-Mailer: Alertmanager/0.27\r\n")
    return f"loop-{index}", raw, LOOP_SENDER


def bounce_mail(run: str, index: int, body_kb: float) -> tuple[str, bytes, str]:
    """A delivery report from mail system `index` (a sender of its own), quoting the returned mail:
    (key, raw, envelope sender ""). About `body_kb` KB."""
    host = f"mx{index:04d}.isp{index % 97:02d}.example"
    mid = f"{run}.dsn{index:05d}@{host}"
    rcpt = f"user{index}@customer{index % 211}.example"
    head = (f"From: MAILER-DAEMON@{host} (Mail Delivery System)\r\nTo: {RETURNED_TO}\r\n"
            f"Subject: Undelivered Mail Returned to Sender\r\nDate: Fri, 27 Nov 2026 02:15:01 +0000\r\n"
            f"Message-ID: <{mid}>\r\nAuto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n"
            'Content-Type: multipart/report; report-type=delivery-status; boundary="dsn"\r\n\r\n')
    notice = (f"--dsn\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nThis is the mail system at host {host}."
              f"\r\n\r\nI'm sorry to have to inform you that your message could not be delivered.\r\n\r\n"
              f"<{rcpt}>: host {host}[203.0.113.{index % 250 + 1}] said: 550 5.1.1 User unknown\r\n\r\n")
    status = (f"--dsn\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; {host}\r\n\r\n"
              f"Final-Recipient: rfc822; {rcpt}\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n")
    returned = (f"--dsn\r\nContent-Type: message/rfc822\r\n\r\nFrom: {RETURNED_TO}\r\nTo: {rcpt}\r\n"
                "Subject: Maintenance window on Saturday\r\n\r\n")
    size = int(body_kb * 1024) - len(head) - len(notice) - len(status) - len(returned) - len("\r\n--dsn--\r\n")
    raw = head + notice + status + returned + log_dump(max(size, 0), index) + "\r\n--dsn--\r\n"
    return f"dsn-{index}", raw.encode(), ""


STORMS = {"loop": loop_mail, "bounces": bounce_mail}


def p1_mail(run: str) -> tuple[str, bytes]:
    """Another tenant's real P1; (Message-ID without <>, raw)."""
    mid = f"{run}.p1@mail.othercorp.example"
    raw = make_message(subject="All our apps are down", sender=P1_SENDER, message_id=f"<{mid}>",
                       body="All our production apps return 502 since 02:10, customers cannot reach us")
    return mid, raw


# --- the run ------------------------------------------------------------------------

class P1AfterNth:
    """Sends the P1 on its own connection from a thread of its own, as soon as the Nth 250 of the
    storm has come back (on_answer runs in the storm's sending threads)."""

    def __init__(self, port: int, raw: bytes, after: int) -> None:
        self.port, self.raw, self.after = port, raw, after
        self.answered = 0
        self.lock = threading.Lock()
        self.due = threading.Event()
        self.sent_at: float | None = None
        self.code: int | None = None
        self.error: str | None = None
        self.gave_up = False
        self.thread = threading.Thread(target=self._send, name="p1", daemon=True)
        self.thread.start()

    def on_answer(self, _sample) -> None:
        with self.lock:
            self.answered += 1
            if self.answered == self.after:
                self.due.set()

    def _send(self) -> None:
        if not self.due.wait(SEND_P1_TIMEOUT) or self.gave_up:
            self.error = f"the storm never reached {self.after} answers"
            return
        try:
            self.sent_at, self.code = send_canary(self.port, self.raw)
        except Exception as exc:   # reported, not raised: a figure, not a test
            self.error = f"{type(exc).__name__}: {exc}"

    def join(self, timeout: float) -> None:
        """Once the storm is over: the P1 has been sent, or never will be."""
        with self.lock:
            if self.answered < self.after:
                self.gave_up = True
                self.due.set()
        self.thread.join(timeout)


def triggers(pagerduty) -> list:
    return [r for r in pagerduty.requests_matching(r"^/v2/enqueue$", "POST")
            if isinstance(r.json, dict) and r.json.get("event_action") == "trigger"]


def is_about(trigger, message_id: str) -> bool:
    """The trigger pages for that message: the daemon puts its Message-ID in custom_details."""
    details = (trigger.json.get("payload") or {}).get("custom_details") or {}
    return message_id in str(details.get("message_id") or "")


def wait_p1_page(pagerduty, p1_id: str, timeout: float) -> tuple[float | None, str | None]:
    """(when the P1's first trigger reached the fake, its dedup_key), waiting up to `timeout`. Found
    in the fake's own record, not with `emergencyd status`, whose runs would take the daemon's CPU."""
    deadline = time.monotonic() + timeout
    while True:
        found = next((r for r in triggers(pagerduty) if is_about(r, p1_id)), None)
        if found is not None or time.monotonic() >= deadline:
            return (found.received_at, found.json.get("dedup_key")) if found else (None, None)
        time.sleep(0.02)


def loop_lag_windows(readings: dict) -> dict:
    """Lag during the burst (before -> last 250 and P1 paged) and over the whole run (-> drained)."""
    return {"burst": histogram.summary(histogram.between(readings["before"], readings.get("burst"))),
            "whole_run": histogram.summary(histogram.between(readings["before"], readings.get("end")))}


def bench_loop_storm(args, workdir: Path, stack: Cleanup, run: str) -> dict:
    directory = workdir / "loop-storm"
    daemon, zendesk, pagerduty, sampler = start_live_with_fakes(directory, stack, args.zendesk_rpm)
    messages = [STORMS[args.storm](run, i, args.body_kb) for i in range(args.mails)]
    p1_id, p1_raw = p1_mail(run)
    sizes = [len(raw) for _, raw, _ in messages]
    lag = {"before": histogram.read_histogram(daemon.metrics_port, LAG_METRIC)}
    print(f"{args.storm} storm: {len(messages)} mails of {min(sizes)}-{max(sizes)} bytes from {_senders(args.storm)} over "
          f"{args.connections} connections; the P1 after the {args.p1_after}th 250 ...", file=sys.stderr, flush=True)

    p1 = P1AfterNth(daemon.smtp_port, p1_raw, args.p1_after)
    result = run_load(daemon.smtp_port, messages, args.connections, server_pid=daemon.proc.pid,
                      on_answer=p1.on_answer)
    began = result.started
    p1.join(SEND_P1_TIMEOUT)
    paged, p1_key = (None, None) if p1.sent_at is None else \
        wait_p1_page(pagerduty, p1_id, p1.sent_at + P1_PAGE_TIMEOUT - time.monotonic())
    lag["burst"] = histogram.read_histogram(daemon.metrics_port, LAG_METRIC)
    print(f"  accepted {len(result.accepted)}/{len(messages)} in {result.finished - began:.1f}s; P1 paged "
          f"{'-' if paged is None else f'{paged - p1.sent_at:.2f}s'} after its DATA; draining (up to "
          f"{args.drain_timeout:g}s after the burst began) ...", file=sys.stderr, flush=True)

    drained = drain(args, daemon, directory / "var" / "store.sqlite3", zendesk, began, sampler)
    lag["end"] = histogram.read_histogram(daemon.metrics_port, LAG_METRIC)
    relations = relations_of(daemon.config, len(messages) + 1, p1_id)
    record = relations.get("canary") or {}
    if paged is None:   # paged after the wait, during the drain?
        paged, p1_key = wait_p1_page(pagerduty, p1_id, 0)
    sampler.stop()
    stop_daemon(daemon)
    return figures(args, result, p1, paged, p1_key or record.get("page_key") or record.get("dedup_key"), record,
                   drained, lag, pagerduty, zendesk, relations, sizes, log_problems(daemon.log_path))


def figures(args, result, p1, paged, p1_key, record, drained, lag, pagerduty, zendesk, relations, sizes,
            log) -> dict:
    began = result.started
    accepted = result.accepted
    latencies = [s.end - s.start for s in accepted]
    accept_s = result.finished - began
    events = [r.json for r in triggers(pagerduty)]
    loop_keys = {t.get("dedup_key") for t in events if t.get("dedup_key") != p1_key}
    incidents = pagerduty.incidents()
    return {
        "storm": args.storm, "mails": len(sizes), "connections": args.connections, "p1_after": args.p1_after,
        "zendesk_rpm": args.zendesk_rpm, "message_bytes": {"min": min(sizes), "max": max(sizes)},
        "smtp": {"accepted": len(accepted), "rejected": result.rejected, "errors": result.errors,
                 "last_250_s": round(accept_s, 3),
                 "msg_per_s": round(len(accepted) / accept_s, 1) if accept_s > 0 else None,
                 "p50_ms": _ms(percentile(latencies, 50)), "p99_ms": _ms(percentile(latencies, 99)),
                 "max_ms": _ms(max(latencies, default=None))},
        "p1": {"sent_s": None if p1.sent_at is None else round(p1.sent_at - began, 3), "code": p1.code,
               "error": p1.error, "record": record, "paged_s": None if paged is None else round(paged - began, 3),
               "page_latency_s": None if paged is None or p1.sent_at is None else round(paged - p1.sent_at, 3)},
        "loop": {"dedup_keys": len(loop_keys),
                 "trigger_events": sum(1 for t in events if t.get("dedup_key") != p1_key),
                 "incidents": sum(1 for i in incidents if i["dedup_key"] != p1_key)},
        "event_loop_lag": loop_lag_windows(lag),
        "drain": drained,
        "pagerduty": pagerduty_figures(pagerduty, began),
        "zendesk": zendesk_figures(zendesk, args.zendesk_rpm, began),
        "store": relations,
        "log": log,
    }


# --- report -------------------------------------------------------------------------

def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def _senders(storm: str) -> str:
    return f"one looping sender ({LOOP_SENDER})" if storm == "loop" else "a mail system of its own each, envelope <>"


def report(info: dict, f: dict) -> str:
    smtp, p1, loop, zd, pd, drained = f["smtp"], f["p1"], f["loop"], f["zendesk"], f["pagerduty"], f["drain"]
    lag = f["event_loop_lag"]
    out = header(info, "emergencyd loop storm benchmark") + [
        "",
        f"storm     {f['mails']} {f['storm']} mails of {f['message_bytes']['min']}-{f['message_bytes']['max']} bytes "
        f"from {_senders(f['storm'])} over {f['connections']} SMTP connections; after the "
        f"{f['p1_after']}th 250, another tenant's P1 on its own connection",
        f"config    dry_run=false, shipped policy, busy_timeout_ms=5000, zendesk requests_per_minute="
        f"{f['zendesk_rpm']}",
        "",
        f"P1        end of DATA -> trigger at the fake PagerDuty: {_s(p1['page_latency_s'])}   (target <= 1 s)"
        + ("" if p1["page_latency_s"] is not None else "  NOT PAGED"),
        f"          sent {_s(p1['sent_s'])} after the burst began, paged at {_s(p1['paged_s'])}; "
        f"{p1['record'].get('relation')} {p1['record'].get('severity')} ({p1['record'].get('state')} at the end)",
        f"storm     250s: {smtp['accepted']}/{f['mails']} in {_s(smtp['last_250_s'])}, {_fmt(smtp['msg_per_s'], 0)} "
        f"msg/s; data() p50 {_fmt(smtp['p50_ms'], 0, 1)} ms, p99 {_fmt(smtp['p99_ms'], 0, 1)} ms (target <= 100), "
        f"max {_fmt(smtp['max_ms'], 0, 1)} ms",
        f"loop lag  burst (until the last 250 and the P1's page): {histogram.describe(lag['burst'])}",
        f"          whole run (until drained): {histogram.describe(lag['whole_run'])}",
        f"the loop  PagerDuty incidents {loop['incidents']}, trigger dedup_keys {loop['dedup_keys']} "
        f"(target: {1 if f['storm'] == 'loop' else 0}), trigger events {loop['trigger_events']}",
        f"Zendesk   tickets {zd['tickets']} (P1 included), public comments {zd['public_comments']}, private notes "
        f"{zd['private_notes']}; calls {zd['calls']}: {', '.join(f'{k} {v}' for k, v in zd['calls_by_kind'].items())}",
        f"          max {zd['calls_per_minute_max_60s_window']} calls in a 60 s window (configured "
        f"{zd['configured_rpm']}/min + bucket {zd['bucket_burst']})",
        "drain     " + (f"drained {_s(drained['drained_s'])} after the burst began "
                         f"({_s(drained['drained_s'] - smtp['last_250_s'])} after the last 250)"
                         if drained.get("drained_s") is not None else
                         f"NOT DRAINED: {drained.get('reason')}; {drained.get('counts')}"),
    ]
    store = f["store"]
    if "relations" in store:
        out.append(f"store     relations {', '.join(f'{k} {v}' for k, v in store['relations'].items())}; "
                   f"classified {', '.join(f'{k} {v}' for k, v in store['classified'].items())}")
    log = f["log"]
    out.append(f"log       {log['lines']} lines; tracebacks {log['tracebacks']}")
    for event, count in list(log["events"].items())[:6]:
        out.append(f"          {count:5d} x {event[:110]}")
    problems = smtp["errors"] + ([f"{smtp['rejected']} mails not answered 250"] if smtp["rejected"] else [])
    problems += [f"P1: {p1['error']}"] if p1["error"] else []
    problems += [f"fake Zendesk: {e}" for e in zd["errors"]] + [f"fake PagerDuty: {e}" for e in pd["errors"]]
    return "\n".join(out + [f"WARNING {p}" for p in problems])


# --- main ---------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--storm", choices=sorted(STORMS), default="loop",
                        help="loop: one sender's alerts (the default); bounces: delivery reports from as many senders")
    parser.add_argument("--mails", type=int, default=600, help="mails in the storm (600)")
    parser.add_argument("--body-kb", type=float, default=20.0, help="size of each alert, KB (20)")
    parser.add_argument("--connections", type=int, default=8, help="concurrent SMTP connections (8)")
    parser.add_argument("--p1-after", type=int, default=200, help="send the P1 right after this many 250s (200)")
    parser.add_argument("--zendesk-rpm", type=int, default=90,
                        help="[zendesk] requests_per_minute (90, the shipped default)")
    parser.add_argument("--drain-timeout", type=float, default=300.0,
                        help="seconds after the burst began to wait for every escalation (300)")
    add_session_args(parser, tmpdir="the store and its log", keep="daemon log, store")
    args = parser.parse_args(argv)
    if min(args.mails, args.connections, args.zendesk_rpm, args.p1_after) < 1 or args.p1_after > args.mails:
        parser.error("--mails, --connections, --zendesk-rpm and --p1-after must be at least 1, "
                     "--p1-after at most --mails")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run = f"loop{os.getpid()}-{int(time.time())}"
    with bench_session("emergencyd-loop-storm-", args.tmpdir, args.keep) as (stack, workdir, info, others):
        found = bench_loop_storm(args, workdir, stack, run)
        info["others_cores"] = others.cores()
        print(report(info, found))
        if args.json:
            args.json.write_text(json.dumps({"machine": info, **found}, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    run_benchmark(main)
