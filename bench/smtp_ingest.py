"""SMTP ingest benchmark: emergencyd against the fsync floor, and end to end to PagerDuty.

    .venv/bin/python bench/smtp_ingest.py [--messages N] [--connections K [K ...]] [--body-kb KB]
                                          [--senders one|many] [--postfix] [--no-live] [--json FILE]

Three measurements, one after the other in the same run (never at the same time:
they would fight over the same cores and the same disk); with --postfix, a throwaway
Postfix (bench/postfix_peer.py) is a fourth, the peer that fsyncs before its 250 too:

1. floor: bench/fsync_floor_server.py, a bare aiosmtpd server that writes and fsyncs
   each message (and its directory) before answering 250;
2. emergencyd in dry_run mode: commits to SQLite (WAL, synchronous=FULL) before 250,
   and escalates in dry_run meanwhile, as it would in production;
3. emergencyd with dry_run off, against FakeZendesk and FakePagerDuty running in this
   process: latency from the end of DATA to the trigger event reaching PagerDuty.

1 and 2 get the same N messages over K concurrent SMTP connections (threads, one
smtplib connection each, many messages per connection). Figures only: nothing is
asserted. See bench/README.md for what each figure means.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shutil
import signal
import smtplib
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.ingest_mail import SENDERS_TEXT, log_dump, mail_for  # noqa: E402
from bench.postfix_peer import peer_lines  # noqa: E402
from emergencyd.escalation.records import NEW, PENDING, dedup_key_of  # noqa: E402
from tests.harness import (  # noqa: E402
    API_TOKEN,
    RECIPIENT,
    ZENDESK_EMAIL,
    ZENDESK_TOKEN,
    DaemonProcess,
    base_env,
    live_env,
    make_message,
    write_config,
)

SENDER = "noc@tenant-acme.example.net"   # envelope sender; each From: is its own tenant
FLOOR_SERVER = Path(__file__).resolve().parent / "fsync_floor_server.py"
SMTP_TIMEOUT = 60.0


# --- messages -------------------------------------------------------------------

def build_message(run: str, index: int, *, body_kb: float | None = None,
                  sender: str | None = None) -> tuple[str, bytes]:
    """A realistic ~1.5 KB tenant alert with a unique Message-ID; returns (dedup_key, bytes).

    body_kb: pad the log excerpt until the whole mail is about that many KB (real alerts
    carry log dumps). sender: the From: address (default: one of its own per index).
    """
    mid = f"{run}.{index:06d}@mail.tenant-acme.example.net"
    host = f"web-{index % 17:02d}"
    extra = (
        f"Received: from mail.tenant-acme.example.net (mail.tenant-acme.example.net [198.51.100.{index % 250 + 1}])\r\n"
        f"\tby mx1.example.org with ESMTPS id {index:08x}; Fri, 27 Nov 2026 02:15:01 +0000\r\n"
        "Return-Path: <noc@tenant-acme.example.net>\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Transfer-Encoding: 8bit\r\n"
        "X-Mailer: Alertmanager/0.27\r\n"
        "X-Priority: 1 (Highest)\r\n"
    )
    body = (
        "Hello,\r\n\r\n"
        f"Our production application on {host}.tenant-acme.example.net has been returning HTTP 502\r\n"
        "to most requests since 02:10 UTC. The load balancer marks every backend unhealthy and\r\n"
        "our customers cannot log in or place orders. We have not deployed anything tonight.\r\n\r\n"
        "What we see:\r\n"
        f"  - health checks failing on {host} and its two siblings since 02:09:41\r\n"
        "  - upstream connect timeouts in the proxy log (about 1200 per minute)\r\n"
        "  - the database replica lag alert fired at 02:08 and cleared at 02:11\r\n\r\n"
        "Excerpt from the proxy log:\r\n"
        "  02:10:03 upstream timed out (110: Connection timed out) while connecting to upstream\r\n"
        "  02:10:04 no live upstreams while connecting to upstream, client: 203.0.113.45\r\n"
        "  02:10:04 no live upstreams while connecting to upstream, client: 203.0.113.77\r\n\r\n"
        f"Incident reference on our side: ACME-INC-{20000 + index}. Please call the on-call\r\n"
        "number in our contract if you need access to the machines.\r\n\r\n"
        "-- \r\nAcme Network Operations Centre\r\n+1 555 0100 (24/7)\r\n"
    )
    subject = f"URGENT: production down on {host} (ACME-INC-{20000 + index})"
    sender = sender or f"noc{index}@tenant-acme.example.net"
    raw = make_message(subject=subject, body=body, sender=sender, message_id=f"<{mid}>", extra_headers=extra)
    if body_kb:
        body += log_dump(int(body_kb * 1024) - len(raw), host)
        raw = make_message(subject=subject, body=body, sender=sender, message_id=f"<{mid}>", extra_headers=extra)
    return dedup_key_of("mid:" + mid), raw


# --- the SMTP load ----------------------------------------------------------------

@dataclass
class Sample:
    key: str
    start: float      # time.monotonic() just before smtplib's data()
    end: float        # time.monotonic() when data() returned (the 250 was read)
    code: int


@dataclass
class LoadResult:
    samples: list[Sample] = field(default_factory=list)
    rejected: int = 0
    errors: list[str] = field(default_factory=list)
    started: float = 0.0
    finished: float = 0.0
    server_cpu: float | None = None   # CPU seconds the server used from the start to the end of the load
    server_cpu_at_start: float | None = None   # the server's CPU seconds so far when the load began

    @property
    def accepted(self) -> list[Sample]:
        return [s for s in self.samples if s.code == 250]


def _send_one(client: smtplib.SMTP, raw: bytes, sender: str = SENDER) -> tuple[float, float, int]:
    client.ehlo_or_helo_if_needed()
    code, _ = client.mail(sender)
    if code != 250:
        client.rset()
        return 0.0, 0.0, code
    code, _ = client.rcpt(RECIPIENT)
    if code not in (250, 251):
        client.rset()
        return 0.0, 0.0, code
    start = time.monotonic()
    try:
        code, _ = client.data(raw)
    except smtplib.SMTPDataError as exc:
        code = exc.smtp_code
    return start, time.monotonic(), code


def run_load(port: int, messages: list[tuple], connections: int,
             warmup: list[tuple] | None = None, server_pid: int | None = None,
             on_answer=None, server_cpu=None) -> LoadResult:
    """Send `messages` over `connections` concurrent connections; message i goes on connection i % K.

    A message is (key, raw) or (key, raw, envelope sender). Each connection first sends its
    warm-up message (untimed), then all wait on a barrier, so the clock starts with every
    connection open and warm. on_answer(sample), if given, is called in the sending thread
    after each 250 (to act at the Nth answer). server_cpu(), if given, reads the server's CPU
    seconds instead of /proc of server_pid (a server of several processes).
    """
    result = LoadResult()
    lock = threading.Lock()
    barrier = threading.Barrier(connections + 1)
    shares = [messages[i::connections] for i in range(connections)]

    def worker(number: int) -> None:
        local: list[Sample] = []
        rejected = 0
        try:
            with smtplib.SMTP("127.0.0.1", port, local_hostname="bench.localhost", timeout=SMTP_TIMEOUT) as client:
                client.ehlo_or_helo_if_needed()
                if warmup:
                    _send_one(client, *warmup[number % len(warmup)][1:])
                barrier.wait()
                for key, *mail in shares[number]:
                    start, end, code = _send_one(client, *mail)
                    if code == 250:
                        local.append(Sample(key, start, end, code))
                        if on_answer is not None:
                            on_answer(local[-1])
                    else:
                        rejected += 1
        except threading.BrokenBarrierError:
            pass
        except Exception as exc:   # reported, not raised: a figure, not a test
            barrier.abort()
            with lock:
                result.errors.append(f"connection {number}: {type(exc).__name__}: {exc}")
        with lock:
            result.samples.extend(local)
            result.rejected += rejected

    threads = [threading.Thread(target=worker, args=(n,), name=f"smtp-{n}", daemon=True)
               for n in range(connections)]
    for t in threads:
        t.start()
    try:
        barrier.wait(timeout=SMTP_TIMEOUT)
    except threading.BrokenBarrierError:
        pass
    result.started = time.monotonic()
    read_cpu = server_cpu or (lambda: cpu_seconds(server_pid))
    cpu_before = result.server_cpu_at_start = read_cpu()
    for t in threads:
        while t.is_alive():
            t.join(0.2)
    cpu_after = read_cpu()
    ends = [s.end for s in result.samples]
    result.finished = max(ends) if ends else result.started
    if cpu_before is not None and cpu_after is not None:
        result.server_cpu = cpu_after - cpu_before
    return result


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds used so far by process `pid` (all its threads), from /proc."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def cpu_seconds_with_children(pid: int) -> float | None:
    """cpu_seconds of `pid` and of its children alive now: emergencyd and its worker processes."""
    try:
        children = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (OSError, ValueError):
        children = []
    own = cpu_seconds(pid)
    return None if own is None else own + sum(cpu_seconds(c) or 0.0 for c in children)


def cpu_ms_per_mail(result: LoadResult, cpu_now: float | None, mails: int) -> float | None:
    """The server's CPU from the start of the load until now, per mail."""
    if cpu_now is None or result.server_cpu_at_start is None or not mails:
        return None
    return round(1000 * (cpu_now - result.server_cpu_at_start) / mails, 2)


# --- figures ----------------------------------------------------------------------

def percentile(values: list[float], p: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def row(name: str, messages: int, connections: int, count: int, seconds: float,
        latencies: list[float], **extra) -> dict:
    return {
        "name": name, "messages": messages, "connections": connections, "completed": count,
        "seconds": round(seconds, 4),
        "msg_per_s": round(count / seconds, 1) if seconds > 0 else None,
        "p50_ms": _ms(percentile(latencies, 50)), "p99_ms": _ms(percentile(latencies, 99)),
        "min_ms": _ms(min(latencies) if latencies else None),
        "max_ms": _ms(max(latencies) if latencies else None), **extra,
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def smtp_row(name: str, result: LoadResult, sent: int, connections: int, **extra) -> dict:
    accepted = result.accepted
    seconds = result.finished - result.started
    cpu = None if result.server_cpu is None or seconds <= 0 else round(100 * result.server_cpu / seconds)
    return row(name, sent, connections, len(accepted), seconds, [s.end - s.start for s in accepted],
               rejected=result.rejected, errors=result.errors, server_cpu_percent=cpu, **extra)


# --- the three runs -------------------------------------------------------------

class Cleanup(contextlib.ExitStack):
    """Everything started is stopped, in reverse order, however the run ends."""


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def stop_daemon(daemon: DaemonProcess) -> None:
    if daemon.proc is None:
        return
    try:
        daemon.stop(timeout=15)
    except subprocess.TimeoutExpired:
        daemon.proc.kill()
        daemon.proc.wait(10)


def start_floor(directory: Path, stack: Cleanup) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, str(FLOOR_SERVER), str(directory / "spool")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT, text=True)
    stack.callback(stop_process, proc)
    line = proc.stdout.readline()   # "ready PORT"; the pipe on stdin ends it if we die
    if not line.startswith("ready "):
        raise RuntimeError(f"floor server did not start: {line!r} (exit {proc.poll()})")
    return proc, int(line.split()[1])


def start_emergencyd(directory: Path, stack: Cleanup, *, env: dict[str, str], **config_args) -> DaemonProcess:
    directory.mkdir(parents=True, exist_ok=True)
    # The shipped lock timeout: the tests' short one turns a busy moment into 451s.
    config = write_config(directory, busy_timeout_ms=5000, **config_args)
    daemon = DaemonProcess(config=config, env=env, log_path=directory / "daemon.log")
    stack.callback(stop_daemon, daemon)
    try:
        return daemon.start()
    except BaseException:
        print(daemon.log_text()[-4000:], file=sys.stderr)
        raise


def bench_floor(workdir: Path, stack: Cleanup, messages, warmup, connections: int) -> dict:
    directory = workdir / f"floor-{connections}"
    directory.mkdir()
    proc, port = start_floor(directory, stack)
    result = run_load(port, messages, connections, warmup, server_pid=proc.pid)
    stop_process(proc)
    files = len(list((directory / "spool").glob("*.eml")))
    return smtp_row("floor (fsync per message)", result, len(messages), connections, files_written=files)


def bench_dry_run(workdir: Path, stack: Cleanup, messages, warmup, connections: int) -> dict:
    directory = workdir / f"dry-run-{connections}"
    daemon = start_emergencyd(directory, stack, env=base_env(), dry_run=True)
    pid = daemon.proc.pid
    result = run_load(daemon.smtp_port, messages, connections, warmup,
                      server_cpu=lambda: cpu_seconds_with_children(pid))
    store = directory / "var" / "store.sqlite3"
    backlog = _escalation_backlog(store)
    decided = _wait_decided(store, DECIDE_TIMEOUT)
    cpu = cpu_ms_per_mail(result, cpu_seconds_with_children(pid), len(result.accepted))
    stop_daemon(daemon)
    return smtp_row("emergencyd dry-run", result, len(messages), connections,
                    escalations_unfinished_at_end=backlog, decided_after_s=decided, cpu_ms_per_mail=cpu)


DECIDE_TIMEOUT = 120.0


def _wait_decided(path: Path, timeout: float) -> float | None:
    """Seconds from now until no mail waits to be decided (a page the new-page cap holds is decided,
    only not sent yet), None at the timeout."""
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        if _escalations_in(path, NEW) == 0:
            return round(time.monotonic() - began, 2)
        time.sleep(0.05)
    return None


def _escalation_backlog(path: Path) -> int | None:
    """Escalations not yet done when the last 250 came back."""
    return _escalations_in(path, NEW, PENDING)


def _escalations_in(path: Path, *states: str) -> int | None:
    """How many escalations are in one of `states` (a read-only peek at the store); None if it cannot be read."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as conn:
            return conn.execute(f"SELECT COUNT(*) FROM escalations WHERE state IN ({', '.join('?' * len(states))})",
                                states).fetchone()[0]
    except sqlite3.Error:
        return None


def bench_pagerduty(args, workdir: Path, stack: Cleanup, run: str) -> tuple[dict, dict]:
    from tests.fakes.pagerduty import FakePagerDuty
    from tests.fakes.tls import TestCA
    from tests.fakes.zendesk import FakeZendesk

    directory = workdir / "live"
    directory.mkdir()
    ca = TestCA()
    zendesk = stack.enter_context(FakeZendesk(ca=ca, email=ZENDESK_EMAIL, token=ZENDESK_TOKEN))
    pagerduty = stack.enter_context(FakePagerDuty(ca=ca, api_token=API_TOKEN))
    # Each message is its own tenant's own incident; lift the new-page cap, which would
    # otherwise (rightly) hold a burst of 200 new incidents to 10 a minute.
    daemon = start_emergencyd(directory, stack, env=live_env(), dry_run=False, zendesk_url=zendesk.url,
                              extra="[dedup]\nmax_new_pages_per_minute = 100000\n",
                              pagerduty_url=pagerduty.url, ca_file=ca.write_ca_pem(directory))

    def first_triggers() -> dict[str, float]:
        found: dict[str, float] = {}
        for req in pagerduty.requests_matching(r"^/v2/enqueue$", "POST"):
            event = req.json if isinstance(req.json, dict) else {}
            if event.get("event_action") == "trigger" and event.get("dedup_key"):
                key = event["dedup_key"]
                found[key] = min(found.get(key, req.received_at), req.received_at)
        return found

    def wait_pages(keys: set[str], timeout: float) -> dict[str, float]:
        deadline = time.monotonic() + timeout
        while True:
            found = first_triggers()
            if keys <= found.keys() or time.monotonic() >= deadline:
                return found
            time.sleep(0.02)

    # Unloaded: one message at a time, each sent once the previous escalation has finished
    # (the first opens the HTTPS connections and is not counted).
    store = directory / "var" / "store.sqlite3"
    idle: list[float] = []
    # Probes come from tenants of their own: the same tenant and subject again would be
    # deduplicated into a comment, and never page.
    probes = [build_message(f"{run}-idle", 900_000 + i) for i in range(args.idle_probes + 1)]
    for number, (key, raw) in enumerate(probes):
        with smtplib.SMTP("127.0.0.1", daemon.smtp_port, local_hostname="bench.localhost",
                          timeout=SMTP_TIMEOUT) as client:
            start, _, code = _send_one(client, raw)
        if code != 250:
            continue
        page_at = wait_pages({key}, 10.0).get(key)
        if page_at is not None and number > 0:
            idle.append(page_at - start)
        settle_deadline = time.monotonic() + 10.0   # the rest of its escalation too, so the next starts idle
        while _escalation_backlog(store) and time.monotonic() < settle_deadline:
            time.sleep(0.02)

    # Loaded: the burst.
    messages = [build_message(f"{run}-live", i) for i in range(args.live_messages)]
    connections = args.connections[0]
    result = run_load(daemon.smtp_port, messages, connections, server_pid=daemon.proc.pid)
    accepted = result.accepted
    keys = {s.key for s in accepted}
    found = wait_pages(keys, args.page_timeout)
    latencies = [found[s.key] - s.start for s in accepted if s.key in found]
    last_page = max((found[k] for k in keys if k in found), default=result.started)
    first_page = min((found[k] for k in keys if k in found), default=None)
    last_250 = result.finished
    stop_daemon(daemon)
    figures = row("emergencyd to PagerDuty", len(messages), connections, len(latencies),
                  last_page - result.started, latencies, pages_expected=len(keys), pages_arrived=len(latencies),
                  rejected=result.rejected, errors=result.errors, smtp=smtp_row(
                      "emergencyd live, SMTP accept", result, len(messages), connections),
                  fake_errors=[repr(e) for e in zendesk.errors + pagerduty.errors],
                  first_page_after_start_ms=_ms(None if first_page is None else first_page - result.started),
                  last_250_after_start_ms=_ms(last_250 - result.started))
    idle_figures = {"probes": len(idle), "p50_ms": _ms(percentile(idle, 50)),
                    "max_ms": _ms(max(idle) if idle else None)}
    return figures, idle_figures


# --- machine and report -----------------------------------------------------------

def machine(workdir: Path) -> dict:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        nproc = len(os.sched_getaffinity(0))
    except AttributeError:
        nproc = os.cpu_count()
    import aiosmtpd
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "nproc": nproc, "cpu": cpu, "python": platform.python_version(),
        "implementation": platform.python_implementation(), "kernel": platform.release(),
        "sqlite": sqlite3.sqlite_version, "aiosmtpd": getattr(aiosmtpd, "__version__", "?"),
        "filesystem": filesystem_of(workdir), "commit": git_describe(),
    }


class OtherLoad:
    """CPU used on the machine by processes other than this one and its (waited-for) children."""

    def __init__(self) -> None:
        self._start = (time.monotonic(), self._machine_busy(), self._ours())

    @staticmethod
    def _machine_busy() -> float:
        try:
            fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
            user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in fields[:7])
            return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError):
            return 0.0

    @staticmethod
    def _ours() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def cores(self) -> float:
        """Average cores used by others since construction; call once every child has been waited for."""
        began, busy, ours = self._start
        elapsed = time.monotonic() - began
        others = (self._machine_busy() - busy) - (self._ours() - ours)
        return round(max(others, 0.0) / elapsed, 2) if elapsed > 0 else 0.0


def filesystem_of(path: Path) -> str:
    """Type and device of the mount holding `path` (fsync on tmpfs costs nothing)."""
    best = ("", "?", "?")
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            device, mount, kind = line.split()[:3]
            if str(path.resolve()).startswith(mount.rstrip("/") + "/") and len(mount) >= len(best[0]):
                best = (mount, kind, device)
    return f"{best[1]} on {best[2]} ({best[0] or '?'})"


def git_describe() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return f"{rev}{' (dirty)' if dirty else ''}" if rev else "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def _fmt(value, width: int, digits: int = 1) -> str:
    if value is None:
        return "-".rjust(width)
    if isinstance(value, float):
        return f"{value:{width}.{digits}f}"
    return str(value).rjust(width)


def header(info: dict, title: str) -> list[str]:
    """The machine and the run, as every benchmark here prints them first."""
    return [
        title,
        f"date      {info['date']}",
        f"machine   nproc={info['nproc']}  cpu={info['cpu']}  kernel={info['kernel']}",
        f"python    {info['implementation']} {info['python']}  sqlite {info['sqlite']}  aiosmtpd {info['aiosmtpd']}",
        f"disk      {info['filesystem']}",
        f"commit    {info['commit']}",
        f"others    other processes used {info['others_cores']:.2f} of {info['nproc']} cores on average during the run"
        + ("  (figures are pessimistic)" if info['others_cores'] > 0.1 else ""),
    ]


def report(info: dict, rows: list[dict], idle: dict | None, args) -> str:
    out = header(info, "emergencyd SMTP ingest benchmark") + [
        "",
        f"{'':28}{'messages':>9}{'connections':>12}{'msg/s':>9}{'p50 ms':>9}{'p99 ms':>9}",
    ]
    for r in rows:
        out.append(f"{r['name']:28}{_fmt(r['messages'], 9)}{_fmt(r['connections'], 12)}"
                   f"{_fmt(r['msg_per_s'], 9)}{_fmt(r['p50_ms'], 9, 2)}{_fmt(r['p99_ms'], 9, 2)}")
    out.append("")
    out.append(f"mail: {args.sizes}, {SENDERS_TEXT[args.senders]}")
    out.append("latency, SMTP rows: smtplib data() call, i.e. DATA, the 354 reply, sending the body and")
    out.append("  the final '.', until the 250 arrives (the body transfer is included).")
    out.append("msg/s, SMTP rows: messages answered 250 / (last 250 - start, all connections open).")
    pd = next((r for r in rows if r["name"] == "emergencyd to PagerDuty"), None)
    if pd:
        out.append("latency, PagerDuty row: from time.monotonic() just before data() (our 'end of DATA') to the")
        out.append("  fake PagerDuty receiving that message's trigger event (matched by dedup_key).")
        out.append("msg/s, PagerDuty row: pages arrived / (last page - start of the burst).")
        out.append(f"pages arrived: {pd['pages_arrived']}/{pd['pages_expected']} "
                   f"(waited up to {args.page_timeout:g}s); SMTP accept in that run: "
                   f"{_fmt(pd['smtp']['msg_per_s'], 0)} msg/s, p50 {_fmt(pd['smtp']['p50_ms'], 0, 2)} ms, "
                   f"p99 {_fmt(pd['smtp']['p99_ms'], 0, 2)} ms")
        out.append("fakes: FakeZendesk and FakePagerDuty in this process, "
                   + "(they set TCP_NODELAY, as a real service's front end does)")
        if pd.get("first_page_after_start_ms") is not None:
            out.append(f"burst timeline: last 250 at {pd['last_250_after_start_ms'] / 1000:.2f}s, first page at "
                       f"{pd['first_page_after_start_ms'] / 1000:.2f}s, last page at {pd['seconds']:.2f}s "
                       f"after the burst began; fastest page {_fmt(pd['min_ms'], 0, 0)} ms")
        if idle and idle["probes"]:
            out.append(f"unloaded, one message at a time to PagerDuty: p50 {_fmt(idle['p50_ms'], 0, 2)} ms, "
                       f"max {_fmt(idle['max_ms'], 0, 2)} ms over {idle['probes']} messages")
    cpu = [f"{r['name'].split(' (')[0]} x{r['connections']} {r['server_cpu_percent']}%" for r in rows
           if r.get("server_cpu_percent") is not None]
    if cpu:
        out.append(f"server CPU during the load (100% = one core): {', '.join(cpu)}")
    per_mail = [f"{r['name'].split(' (')[0]} x{r['connections']} {r['cpu_ms_per_mail']} ms" for r in rows
                if r.get("cpu_ms_per_mail") is not None]
    if per_mail:
        out.append("server CPU per mail, from the start of the load until every mail was delivered (Postfix: its")
        out.append("  processes alive at the end) or decided (emergencyd: the daemon and its workers): "
                   + ", ".join(per_mail))
    out += peer_lines(rows)
    for dry in (r for r in rows if r["name"] == "emergencyd dry-run"):
        if dry.get("escalations_unfinished_at_end") is not None:
            out.append(f"dry-run x{dry['connections']}: {dry['escalations_unfinished_at_end']} escalations still "
                       "unfinished when the last 250 came back (escalation catches up after the burst).")
    for r in rows:
        problems = list(r.get("errors") or [])
        if r.get("rejected"):
            problems.insert(0, f"{r['rejected']} messages not answered 250")
        if r.get("fake_errors"):
            problems += [f"fake: {e}" for e in r["fake_errors"]]
        for problem in problems:
            out.append(f"WARNING {r['name']} x{r['connections']}: {problem}")
    return "\n".join(out)


# --- main -------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=2000, help="messages for the floor and dry-run (2000)")
    parser.add_argument("--connections", type=int, nargs="+", default=[8], metavar="K",
                        help="concurrent SMTP connections (8); several values, e.g. 8 1: a run of each")
    parser.add_argument("--body-kb", type=float, metavar="KB",
                        help="pad each mail with a log dump to about KB KB (default: ~1.5 KB, no padding)")
    parser.add_argument("--senders", choices=("one", "many"), default="many",
                        help="one envelope sender and From: for every mail, or one of its own each (many)")
    parser.add_argument("--postfix", action="store_true",
                        help="add a throwaway Postfix (needs the postfix package and root) as a row")
    parser.add_argument("--no-live", action="store_true", help="leave out the run to the fake PagerDuty")
    parser.add_argument("--live-messages", type=int, default=200,
                        help="messages for the run to the fake PagerDuty (200)")
    parser.add_argument("--idle-probes", type=int, default=5,
                        help="messages sent one at a time to PagerDuty before the burst (5)")
    parser.add_argument("--page-timeout", type=float, default=60.0,
                        help="seconds to wait for every page after the burst (60)")
    add_session_args(parser, tmpdir="the spool and stores", keep="daemon logs, stores")
    args = parser.parse_args(argv)
    if args.messages < 1 or min(args.connections) < 1 or args.live_messages < 1:
        parser.error("--messages, --connections and --live-messages must be at least 1")
    if args.postfix:
        from bench.postfix_peer import missing_requirements
        problem = missing_requirements()
        if problem:
            parser.error(f"--postfix: {problem}")
    return args


def _terminate(signum, frame):
    raise SystemExit(128 + signum)   # unwinds through the cleanup stack


@contextlib.contextmanager
def bench_session(prefix: str, tmpdir: Path | None, keep: bool):
    """Signals that unwind, a work dir removed at the end (or kept), the machine's description,
    and the load of other processes from now on: what every benchmark here starts with."""
    signal.signal(signal.SIGINT, signal.default_int_handler)   # even if started with SIGINT ignored
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    workdir = Path(tempfile.mkdtemp(prefix=prefix, dir=tmpdir))
    with Cleanup() as stack:
        if keep:
            stack.callback(print, f"kept {workdir}", file=sys.stderr)
        else:
            stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        yield stack, workdir, machine(workdir), OtherLoad()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run = f"bench{os.getpid()}-{int(time.time())}"
    with bench_session("emergencyd-bench-", args.tmpdir, args.keep) as (stack, workdir, info, others):
        messages = [mail_for(run, i, body_kb=args.body_kb, senders=args.senders) for i in range(args.messages)]
        warmup = [mail_for(f"{run}-warmup", 900_000 + i, body_kb=args.body_kb, senders=args.senders)
                  for i in range(max(args.connections))]
        sizes = [len(raw) for _, raw, _ in messages]
        args.sizes = f"{args.messages} messages of {min(sizes)}-{max(sizes)} bytes"
        print(f"{args.sizes} over {' and '.join(map(str, args.connections))} connections"
              + ("" if args.no_live else f"; then {args.live_messages} to the fake PagerDuty") + " ...",
              file=sys.stderr, flush=True)
        rows = []
        for connections in args.connections:
            for name, bench in smtp_benches(args):
                began = time.monotonic()
                rows.append(bench(workdir, stack, messages, warmup, connections))
                print(f"  {name} x{connections}: {time.monotonic() - began:.1f}s", file=sys.stderr, flush=True)
        idle = None
        if not args.no_live:
            began = time.monotonic()
            live, idle = bench_pagerduty(args, workdir, stack, run)
            rows.append(live)
            print(f"  to PagerDuty: {time.monotonic() - began:.1f}s", file=sys.stderr, flush=True)
        info["others_cores"] = others.cores()
        if args.postfix:
            from bench.postfix_peer import postfix_version
            info["postfix"] = postfix_version()
        print(report(info, rows, idle, args))
        if args.json:
            doc = {"machine": info, "message_bytes": {"min": min(sizes), "max": max(sizes)},
                   "rows": rows, "unloaded_to_pagerduty": idle}
            args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


def smtp_benches(args) -> list[tuple[str, object]]:
    """The SMTP servers each connection count is run against, in this order."""
    benches = []
    if args.postfix:
        from bench.postfix_peer import bench_postfix
        benches.append(("Postfix", bench_postfix))
    return benches + [("dry-run", bench_dry_run), ("floor", bench_floor)]


def add_session_args(parser: argparse.ArgumentParser, *, tmpdir: str, keep: str) -> None:
    """--json, --tmpdir and --keep, which every benchmark takes (bench_session uses the last two)."""
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the figures as JSON")
    parser.add_argument("--tmpdir", type=Path, help=f"where {tmpdir} go (default: the system's temp dir); "
                        "use the disk you mean to measure, not a tmpfs")
    parser.add_argument("--keep", action="store_true", help=f"keep the temp dir ({keep})")


def run_benchmark(main) -> None:
    """The command-line entry of each benchmark: its exit code, or 130 after Ctrl-C (all stopped)."""
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    run_benchmark(main)
