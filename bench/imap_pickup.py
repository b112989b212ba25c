"""IMAP pick-up benchmark: mail appended to a real Dovecot, to the page, and a backlog drained.

    .venv/bin/python bench/imap_pickup.py [--messages 200] [--poll-messages 30] [--poll-interval 1]
                                          [--backlog 1000] [--backlog-pad-kb 0] [--json FILE]

A throwaway Dovecot (tests/dovecot.py) on loopback, emergencyd as a subprocess taking mail
from its INBOX over IMAPS, FakeZendesk and FakePagerDuty in this process. In order:

1. pick-up latency with IDLE, and its baseline through SMTP, in one daemon (dry_run off):
   one message at a time, alternately by SMTP (end of DATA) and by IMAP (APPEND from a
   second, persistent client), each timed to its trigger event reaching the fake PagerDuty;
2. backlog drain: N messages appended to INBOX while no daemon runs; first a bare stdlib
   imaplib client takes them (UID FETCH in batches, write and fsync each to a file, UID MOVE):
   the floor; then the same N again for emergencyd in dry_run: time from its ready line until
   every message is committed, and until INBOX is empty; its peak RSS, duplicates, pages;
3. pick-up latency with polling: Dovecot restarted without IDLE in its capabilities, a new
   daemon with `poll_interval_seconds` from --poll-interval, each APPEND at a random moment
   of the poll cycle.

Figures only: nothing is asserted. See bench/README.md ("IMAP pick-up benchmark").
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import imaplib
import json
import os
import random
import re
import smtplib
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.smtp_ingest import (  # noqa: E402
    SMTP_TIMEOUT,
    Cleanup,
    _escalation_backlog,
    _fmt,
    _ms,
    _send_one,
    add_session_args,
    bench_session,
    build_message,
    cpu_seconds,
    header,
    percentile,
    run_benchmark,
    start_emergencyd,
    stop_daemon,
)
from bench.storm import log_problems, proc_status_kb  # noqa: E402
from emergencyd.escalation.records import dedup_key_of  # noqa: E402
from tests.harness import (  # noqa: E402
    API_TOKEN,
    ZENDESK_EMAIL,
    ZENDESK_TOKEN,
    base_env,
    live_env,
    log_records,
)

IMAP_TIMEOUT = 30.0
PAGE_TIMEOUT = 15.0        # seconds to wait for one message's page before counting it missing
SETTLE_TIMEOUT = 10.0      # seconds to wait for the rest of one escalation before the next message
PEEK_EVERY = 0.05          # seconds between looks at the store and at INBOX while draining
FETCH_BATCH = 50           # the floor's UID FETCH batch, as the daemon's batch_messages default
# Every message its own tenant's own incident, at once: no new-page cap, no per-sender limit
# (the distinct From: addresses already keep the sender limit away; this says so).
DEDUP = "[dedup]\nmax_new_pages_per_minute = 100000\nsender_limit = 100000\n"
# Three Zendesk calls a message, one message every half second or so: the shipped 90 a minute
# would make the pace, not the pick-up, the figure.
ZENDESK_UNPACED = "requests_per_minute = 100000\n"
# Index ranges of build_message: the same index twice would be the same sender and subject,
# a repeat folded into a comment, not a page.
SMTP_BASE, IDLE_BASE, POLL_BASE, BACKLOG_BASE = 0, 200_000, 400_000, 600_000
STORED_EVENTS = {"message stored", "imap message stored"}


# --- clocks and the daemon's log ----------------------------------------------------

WALL_MINUS_MONOTONIC = time.time() - time.monotonic()


def log_stamp(text: str) -> float:
    """A log record's UTC ISO stamp ("ts") on this process's time.monotonic() scale."""
    wall = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return wall.timestamp() - WALL_MINUS_MONOTONIC


def stored_lines(log_path: Path) -> list[tuple[float, int, int | None]]:
    """(monotonic stamp, message_pk, IMAP uid or None) of every 'stored' event of a daemon log."""
    text = log_path.read_text("utf-8", "replace") if log_path.exists() else ""
    return [(log_stamp(r["ts"]), int(r["message_pk"]), r.get("uid"))
            for r in log_records(text) if r["event"] in STORED_EVENTS]


def ready_stamp(log_path: Path) -> float | None:
    for record in log_records(log_path.read_text("utf-8", "replace")):
        if record["event"] == "emergencyd ready":
            return log_stamp(record["ts"])
    return None


def store_message_ids(path: Path) -> dict[int, str]:
    """{message_pk: Message-ID} from a stopped (or running) daemon's store, read-only."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as conn:
        return {pk: mid for pk, mid in conn.execute("SELECT id, message_id FROM messages")}


# --- the IMAP side ------------------------------------------------------------------

def dovecot_version(binary: str) -> str:
    try:
        return subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout.split()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "?"


class Appender:
    """One logged-in stdlib imaplib connection that APPENDs, so login is never in a timing."""

    def __init__(self, dovecot) -> None:
        self.conn = imaplib.IMAP4(dovecot.host, dovecot.imap_port, timeout=IMAP_TIMEOUT)
        self.conn.login(dovecot.username, dovecot.password)

    def append(self, raw: bytes, mailbox: str = "INBOX") -> tuple[float, float, int]:
        """(monotonic just before the command is sent, when its OK was read, APPENDUID's uid)."""
        start = time.monotonic()
        typ, data = self.conn.append(mailbox, None, None, raw)
        end = time.monotonic()
        if typ != "OK":
            raise RuntimeError(f"APPEND {mailbox}: {typ} {data}")
        match = re.search(rb"APPENDUID \d+ (\d+)", data[0] or b"")
        return start, end, int(match.group(1)) if match else 0

    def count(self, mailbox: str = "INBOX") -> int:
        typ, data = self.conn.status(mailbox, "(MESSAGES)")
        if typ != "OK":
            raise RuntimeError(f"STATUS {mailbox}: {typ} {data}")
        return int(re.search(rb"MESSAGES (\d+)", data[0]).group(1))

    def close(self) -> None:
        with contextlib.suppress(imaplib.IMAP4.error, OSError):
            self.conn.logout()


class IdleClient:
    """A bare IDLE client on a raw socket (stdlib imaplib has no IDLE before Python 3.14): Dovecot's
    own delay from an APPEND to the `* n EXISTS` it pushes, with no emergencyd in the way."""

    def __init__(self, dovecot, mailbox: str, *, examine: bool = False) -> None:
        self.sock = socket.create_connection((dovecot.host, dovecot.imap_port), timeout=IMAP_TIMEOUT)
        self.file = self.sock.makefile("rb")
        self.tags = 0
        self.file.readline()   # greeting
        self.command(f'LOGIN "{dovecot.username}" "{dovecot.password}"')
        self.command(f'{"EXAMINE" if examine else "SELECT"} "{mailbox}"')

    def _send(self, line: str) -> str:
        self.tags += 1
        tag = f"b{self.tags}"
        self.sock.sendall(f"{tag} {line}\r\n".encode())
        return tag

    def _until(self, predicate) -> bytes:
        while True:
            line = self.file.readline()
            if not line:
                raise RuntimeError("IDLE client: connection closed")
            if predicate(line):
                return line

    def command(self, line: str) -> None:
        tag = self._send(line).encode()
        answer = self._until(lambda text: text.startswith(tag + b" "))
        if not answer.startswith(tag + b" OK"):
            raise RuntimeError(f"IDLE client: {line.split()[0]}: {answer!r}")

    def time_push(self, append) -> tuple[float, float]:
        """IDLE, then append() (returns when it was sent); (sent, monotonic when EXISTS was read)."""
        tag = self._send("IDLE").encode()
        self._until(lambda text: text.startswith(b"+"))
        sent = append()
        self._until(lambda text: re.match(rb"\* \d+ EXISTS", text) is not None)
        pushed = time.monotonic()
        self.sock.sendall(b"DONE\r\n")
        self._until(lambda text: text.startswith(tag + b" "))
        return sent, pushed

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._send("LOGOUT")
            self.sock.close()


class IdleObserver(threading.Thread):
    """A second, read-only (EXAMINE) session on the daemon's mailbox, idling throughout and
    noting when each `* n EXISTS` arrives: when Dovecot told IDLE sessions, whatever the daemon
    then did with it."""

    def __init__(self, dovecot, mailbox: str) -> None:
        super().__init__(name="idle-observer", daemon=True)
        self.client = IdleClient(dovecot, mailbox, examine=True)
        self.exists: list[float] = []
        self.stopping = False

    def run(self) -> None:
        self.client.sock.settimeout(None)
        try:
            self.client._send("IDLE")
            while True:
                line = self.client.file.readline()
                if not line:
                    return
                if re.match(rb"\* \d+ EXISTS", line):
                    self.exists.append(time.monotonic())
        except (OSError, ValueError):
            return

    def stop(self) -> None:
        if not self.stopping:
            self.stopping = True
            with contextlib.suppress(OSError):
                self.client.sock.shutdown(socket.SHUT_RDWR)
            self.client.sock.close()
            self.join(5)


def dovecot_idle_floor(dovecot, run: str, samples: int) -> dict:
    """APPEND -> EXISTS pushed to a bare IDLE client, in a mailbox of its own (the daemon reads INBOX)."""
    mailbox = "IdleFloor"
    appender = Appender(dovecot)
    appender.conn.create(mailbox)
    client = IdleClient(dovecot, mailbox)
    delays = []
    try:
        for i in range(samples + 1):
            raw = build_message(f"{run}-floor", 800_000 + i)[1]
            sent, pushed = client.time_push(lambda raw=raw: appender.append(raw, mailbox)[0])
            if i:
                delays.append(pushed - sent)
    finally:
        client.close()
        appender.close()
    return {"samples": len(delays), "p50_ms": _ms(percentile(delays, 50)), "p99_ms": _ms(percentile(delays, 99)),
            "min_ms": _ms(min(delays, default=None)), "max_ms": _ms(max(delays, default=None))}


def imap_table(dovecot, *, poll_interval: float, batch: int = FETCH_BATCH) -> str:
    """The [imap] table: the daemon reads INBOX over IMAPS, verified with the test CA."""
    return (f'host = "{dovecot.host}"\nport = {dovecot.imaps_port}\nusername = "{dovecot.username}"\n'
            f'tls = true\nca_file = "{dovecot.ca_file}"\nidle = true\n'
            f"poll_interval_seconds = {poll_interval:g}\nbatch_messages = {batch}\n")


def with_password(env: dict[str, str], dovecot) -> dict[str, str]:
    return {**env, "EMERGENCYD_IMAP_PASSWORD": dovecot.password}


# --- pick-up latency ----------------------------------------------------------------

@dataclass
class Probe:
    key: str
    start: float                  # monotonic, just before the SMTP data() or the IMAP APPEND
    page: float | None = None     # the fake PagerDuty received its trigger
    append_ok: float | None = None
    uid: int | None = None
    stored: float | None = None   # the daemon's "stored" log line (after its commit)
    pushed: float | None = None   # a passive IDLE observer of the same mailbox got its EXISTS
    delay: float = 0.0            # the random wait before it (polling)


@dataclass
class Route:
    """One way in (a row of the table), measured one message at a time."""
    name: str
    probes: list[Probe] = field(default_factory=list)   # the first one is the warm-up, not counted
    missing: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def counted(self) -> list[Probe]:
        return self.probes[1:]


class Triggers:
    """First trigger time by dedup_key at the fake PagerDuty, reading only requests not seen yet
    (the fakes share this process: a full scan every few ms would take their CPU)."""

    def __init__(self, pagerduty) -> None:
        self.pagerduty = pagerduty
        self.seen = 0
        self.first: dict[str, float] = {}

    def refresh(self) -> None:
        requests = self.pagerduty.requests
        for r in requests[self.seen:]:
            if r.method == "POST" and r.path == "/v2/enqueue" and isinstance(r.json, dict) \
                    and r.json.get("event_action") == "trigger" and r.json.get("dedup_key"):
                self.first.setdefault(r.json["dedup_key"], r.received_at)
        self.seen = len(requests)

    def wait(self, key: str, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        while True:
            self.refresh()
            if key in self.first or time.monotonic() >= deadline:
                return self.first.get(key)
            time.sleep(0.005)


def settle(store: Path) -> None:
    """Until the rest of the escalation (notes after the page) is done: the next starts idle."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while _escalation_backlog(store) and time.monotonic() < deadline:
        time.sleep(0.01)


class SmtpSender:
    """One persistent smtplib session; timed from just before data(), as smtp_ingest does."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.client: smtplib.SMTP | None = None

    def send(self, raw: bytes) -> float | None:
        for _ in range(2):
            try:
                if self.client is None:
                    self.client = smtplib.SMTP("127.0.0.1", self.port, local_hostname="bench.localhost",
                                               timeout=SMTP_TIMEOUT)
                start, _, code = _send_one(self.client, raw)
                return start if code == 250 else None
            except smtplib.SMTPServerDisconnected:
                self.client = None
        return None

    def close(self) -> None:
        if self.client is not None:
            with contextlib.suppress(smtplib.SMTPException, OSError):
                self.client.quit()


def probe_smtp(route: Route, sender: SmtpSender, triggers: Triggers, store: Path, message: tuple[str, bytes]) -> None:
    key, raw = message
    start = sender.send(raw)
    if start is None:
        route.errors.append(f"{key}: not answered 250")
        return
    probe = Probe(key, start, page=triggers.wait(key, PAGE_TIMEOUT))
    route.missing += probe.page is None
    route.probes.append(probe)
    settle(store)


def probe_imap(route: Route, appender: Appender, triggers: Triggers, store: Path, message: tuple[str, bytes],
               timeout: float, delay: float = 0.0) -> None:
    key, raw = message
    if delay:
        time.sleep(delay)
    start, ok, uid = appender.append(raw)
    probe = Probe(key, start, append_ok=ok, uid=uid, delay=delay, page=triggers.wait(key, timeout))
    route.missing += probe.page is None
    route.probes.append(probe)
    settle(store)


def attach_stored(routes: list[Route], daemon_dir: Path, log_path: Path) -> None:
    """Each probe's commit time, from the daemon's 'stored' log line (matched by Message-ID)."""
    try:
        ids = store_message_ids(daemon_dir / "var" / "store.sqlite3")
    except sqlite3.Error:
        return
    stamp_by_key = {dedup_key_of("mid:" + ids[pk].strip("<>")): t
                    for t, pk, _ in stored_lines(log_path) if ids.get(pk)}
    for route in routes:
        for probe in route.probes:
            probe.stored = stamp_by_key.get(probe.key)


def route_row(route: Route, **extra) -> dict:
    counted = route.counted
    paged = [p for p in counted if p.page is not None]
    latency = [p.page - p.start for p in paged]
    to_commit = [p.stored - p.start for p in counted if p.stored is not None]
    commit_to_page = [p.page - p.stored for p in paged if p.stored is not None]
    append = [p.append_ok - p.start for p in counted if p.append_ok is not None]
    pushed = [p.pushed - p.start for p in counted if p.pushed is not None]
    worst = sorted(paged, key=lambda p: p.page - p.start)[-3:][::-1]
    return {
        "name": route.name, "messages": len(counted), "paged": len(paged), "missing": route.missing,
        "p50_ms": _ms(percentile(latency, 50)), "p99_ms": _ms(percentile(latency, 99)),
        "min_ms": _ms(min(latency, default=None)), "max_ms": _ms(max(latency, default=None)),
        "mean_ms": _ms(sum(latency) / len(latency) if latency else None),
        "to_commit_p50_ms": _ms(percentile(to_commit, 50)), "to_commit_p99_ms": _ms(percentile(to_commit, 99)),
        "to_commit_max_ms": _ms(max(to_commit, default=None)),
        "commit_to_page_p50_ms": _ms(percentile(commit_to_page, 50)),
        "commit_to_page_p99_ms": _ms(percentile(commit_to_page, 99)),
        "append_p50_ms": _ms(percentile(append, 50)), "append_p99_ms": _ms(percentile(append, 99)),
        "push_p50_ms": _ms(percentile(pushed, 50)), "push_p99_ms": _ms(percentile(pushed, 99)),
        "push_max_ms": _ms(max(pushed, default=None)),
        "slowest": [{"key": p.key, "uid": p.uid, "ms": _ms(p.page - p.start),
                     "to_commit_ms": _ms(None if p.stored is None else p.stored - p.start),
                     "to_push_ms": _ms(None if p.pushed is None else p.pushed - p.start),
                     "delay_ms": _ms(p.delay)} for p in worst],
        "latencies_ms": [_ms(v) for v in latency],
        "errors": route.errors, **extra,
    }


def daemon_log_summary(daemon) -> dict:
    """storm.py's warning/error summary, and the EXISTS pushes aioimaplib logged as ignored: new
    mail the server announced outside any command the daemon was waiting on."""
    summary = log_problems(daemon.log_path)
    summary["events"] = dict(list(summary["events"].items())[:10])
    lines = daemon.log_text().splitlines()
    summary["ignored_exists"] = sum(1 for line in lines if "ignored untagged response" in line and "EXISTS" in line)
    return summary


def start_live_daemon(directory: Path, stack: Cleanup, args, dovecot, zendesk, pagerduty, ca):
    """dry_run off against the fakes, reading the mailbox; unpaced and uncapped (see DEDUP)."""
    return start_emergencyd(directory, stack, env=with_password(live_env(), dovecot), dry_run=False,
                            zendesk_url=zendesk.url, pagerduty_url=pagerduty.url,
                            ca_file=ca.write_ca_pem(directory), extra=DEDUP, extra_zendesk=ZENDESK_UNPACED,
                            imap=imap_table(dovecot, poll_interval=args.poll_interval))


def bench_idle(args, workdir: Path, stack: Cleanup, run: str, dovecot, zendesk, pagerduty, ca) -> tuple[list[dict], dict]:
    """SMTP and IMAP-with-IDLE probes, alternately, against one live daemon."""
    directory = workdir / "idle"
    directory.mkdir()
    floor = dovecot_idle_floor(dovecot, run, args.idle_floor) if args.idle_floor else None
    daemon = start_live_daemon(directory, stack, args, dovecot, zendesk, pagerduty, ca)
    store = directory / "var" / "store.sqlite3"
    smtp, idle = Route("SMTP (baseline)"), Route("IMAP with IDLE")
    sender = SmtpSender(daemon.smtp_port)
    appender = Appender(dovecot)
    triggers = Triggers(pagerduty)
    observer = IdleObserver(dovecot, "INBOX")
    stack.callback(observer.stop)
    observer.start()
    stack.callback(sender.close)
    stack.callback(appender.close)
    try:
        for i in range(args.messages + 1):
            probe_smtp(smtp, sender, triggers, store, build_message(f"{run}-smtp", SMTP_BASE + i))
            probe_imap(idle, appender, triggers, store, build_message(f"{run}-idle", IDLE_BASE + i), PAGE_TIMEOUT)
            if (i + 1) % 50 == 0:
                print(f"    {i + 1}/{args.messages + 1} each", file=sys.stderr, flush=True)
        left_in_inbox = appender.count()
    finally:
        sender.close()
        appender.close()
        observer.stop()
    for probe in idle.probes:   # one message at a time: the first EXISTS after its APPEND is its own
        probe.pushed = next((t for t in observer.exists if t >= probe.start), None)
    hwm = proc_status_kb(daemon.proc.pid, "VmHWM")
    stop_daemon(daemon)
    attach_stored([smtp, idle], directory, daemon.log_path)
    info = {"vm_hwm_kb": hwm, "left_in_inbox": left_in_inbox, "log": daemon_log_summary(daemon),
            "dovecot_idle_floor": floor}
    return [route_row(smtp), route_row(idle, left_in_inbox=left_in_inbox)], info


def bench_poll(args, workdir: Path, stack: Cleanup, run: str, dovecot, zendesk, pagerduty, ca) -> tuple[dict, dict]:
    """IMAP probes against a Dovecot without IDLE: the daemon polls every --poll-interval seconds."""
    from tests.dovecot import DovecotError
    restart_failure = None
    try:
        dovecot.set_idle_enabled(False)   # restarts it on the same ports, IDLE no longer advertised
    except DovecotError as exc:   # reported, then one more start (with IDLE off already)
        restart_failure = str(exc)[-3000:]
        print(f"  Dovecot did not come back: {str(exc).splitlines()[0]}; starting it once more",
              file=sys.stderr, flush=True)
        dovecot.start()
    directory = workdir / "poll"
    directory.mkdir()
    daemon = start_live_daemon(directory, stack, args, dovecot, zendesk, pagerduty, ca)
    store = directory / "var" / "store.sqlite3"
    poll = Route(f"IMAP polling every {args.poll_interval:g} s")
    appender = Appender(dovecot)
    triggers = Triggers(pagerduty)
    stack.callback(appender.close)
    rng = random.Random(7)
    try:
        for i in range(args.poll_messages + 1):
            # The previous page came just after a poll; a random wait puts this APPEND at a random
            # point of the poll cycle, as real mail arrives.
            delay = rng.uniform(0, args.poll_interval) if i else 0.0
            probe_imap(poll, appender, triggers, store, build_message(f"{run}-poll", POLL_BASE + i),
                       args.poll_interval + PAGE_TIMEOUT, delay)
            if (i + 1) % 25 == 0:
                print(f"    {i + 1}/{args.poll_messages + 1}", file=sys.stderr, flush=True)
        left_in_inbox = appender.count()
    finally:
        appender.close()
    stop_daemon(daemon)
    attach_stored([poll], directory, daemon.log_path)
    connected = next((r for r in log_records(daemon.log_text()) if r["event"] == "imap connected"), None)
    info = {"log": daemon_log_summary(daemon), "connected": connected,
            "dovecot_restart_failure": restart_failure}
    return route_row(poll, left_in_inbox=left_in_inbox, poll_interval_s=args.poll_interval), info


# --- backlog drain ------------------------------------------------------------------

def padded(raw: bytes, pad_kb: int) -> bytes:
    """The message with pad_kb KB more body (proxy log lines), for the memory bound."""
    if not pad_kb:
        return raw
    line = b"  02:10:04 no live upstreams while connecting to upstream, client: 203.0.113.45\r\n"
    return raw + line * (pad_kb * 1024 // len(line) + 1)


def append_all(dovecot, messages: list[bytes]) -> float:
    """APPEND every message on one connection; returns the seconds it took."""
    appender = Appender(dovecot)
    try:
        began = time.monotonic()
        for raw in messages:
            appender.append(raw)
        return time.monotonic() - began
    finally:
        appender.close()


def imap_floor(dovecot, directory: Path, batch: int) -> dict:
    """The least an IMAP intake can do: IMAPS login, UID SEARCH, then per batch a UID FETCH of the
    bodies (BODY.PEEK[]), each written to its own file and fsynced (and the directory), and a UID MOVE."""
    directory.mkdir(parents=True)
    dir_fd = os.open(directory, os.O_RDONLY)
    began = time.monotonic()
    conn = imaplib.IMAP4_SSL(dovecot.host, dovecot.imaps_port, ssl_context=dovecot.client_ssl_context(),
                             timeout=IMAP_TIMEOUT)
    written = 0
    try:
        conn.login(dovecot.username, dovecot.password)
        typ, data = conn.select("INBOX")
        if typ != "OK":
            raise RuntimeError(f"SELECT INBOX: {typ} {data}")
        logged_in = time.monotonic()
        typ, data = conn.uid("SEARCH", "ALL")
        uids = [int(u) for u in data[0].split()]
        for i in range(0, len(uids), batch):
            chunk = uids[i:i + batch]
            uid_text = ",".join(str(u) for u in chunk)
            typ, data = conn.uid("FETCH", uid_text, "(UID BODY.PEEK[])")
            if typ != "OK":
                raise RuntimeError(f"UID FETCH: {typ} {data}")
            for item in data:
                if not isinstance(item, tuple):
                    continue
                uid = int(re.search(rb"UID (\d+)", item[0]).group(1))
                with open(directory / f"{uid}.eml", "wb") as f:
                    f.write(item[1])
                    f.flush()
                    os.fsync(f.fileno())
                os.fsync(dir_fd)
                written += 1
            typ, data = conn.uid("MOVE", uid_text, "Processed")
            if typ != "OK":
                raise RuntimeError(f"UID MOVE: {typ} {data}")
        ended = time.monotonic()
        typ, data = conn.status("INBOX", "(MESSAGES)")
        left = int(re.search(rb"MESSAGES (\d+)", data[0]).group(1))
    finally:
        with contextlib.suppress(imaplib.IMAP4.error, OSError):
            conn.logout()
        os.close(dir_fd)
    return {"seconds": round(ended - began, 3), "login_s": round(logged_in - began, 3), "written": written,
            "msg_per_s": round(written / (ended - began), 1) if ended > began else None, "left_in_inbox": left}


def store_figures(path: Path) -> dict:
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as conn:
        one = lambda sql, *a: conn.execute(sql, a).fetchone()[0]  # noqa: E731
        return {
            "rows": one("SELECT COUNT(*) FROM messages"),
            "distinct_message_ids": one("SELECT COUNT(DISTINCT message_id) FROM messages"),
            "redeliveries": one("SELECT COALESCE(SUM(deliveries - 1), 0) FROM messages"),
            "sources": dict(conn.execute("SELECT source, COUNT(*) FROM messages GROUP BY source").fetchall()),
            "states": dict(conn.execute("SELECT state, COUNT(*) FROM escalations GROUP BY state").fetchall()),
            "severities": {str(k): v for k, v in
                           conn.execute("SELECT severity, COUNT(*) FROM escalations GROUP BY severity").fetchall()},
            "relations": {str(k): v for k, v in
                          conn.execute("SELECT relation, COUNT(*) FROM escalations GROUP BY relation").fetchall()},
            "p1": one("SELECT COUNT(*) FROM escalations WHERE severity = 'P1'"),
            "page_steps": one("SELECT COUNT(*) FROM steps WHERE name = 'page'"),
            "page_steps_done": one("SELECT COUNT(*) FROM steps WHERE name = 'page' AND state = 'done'"),
            "page_step_states": dict(conn.execute(
                "SELECT state, COUNT(*) FROM steps WHERE name = 'page' GROUP BY state").fetchall()),
        }


def committed(path: Path) -> int | None:
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as conn:
            return conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
    except sqlite3.Error:
        return None


def bench_backlog(args, workdir: Path, stack: Cleanup, run: str, dovecot) -> dict:
    messages = [padded(build_message(f"{run}-backlog", BACKLOG_BASE + i)[1], args.backlog_pad_kb)
                for i in range(args.backlog)]
    sizes = [len(m) for m in messages]

    print(f"  appending {len(messages)} for the floor ...", file=sys.stderr, flush=True)
    append_floor_s = append_all(dovecot, messages)
    floor = imap_floor(dovecot, workdir / "imap-floor", FETCH_BATCH)
    print(f"  floor: {floor['seconds']:.1f}s; appending {len(messages)} for emergencyd ...",
          file=sys.stderr, flush=True)
    append_s = append_all(dovecot, messages)

    directory = workdir / "backlog"
    watcher = Appender(dovecot)   # STATUS INBOX while it drains (a client of its own, as the floor's was)
    stack.callback(watcher.close)
    started = time.monotonic()
    daemon = start_emergencyd(directory, stack, env=with_password(base_env(), dovecot), dry_run=True,
                              extra=DEDUP, smtp_enabled=False,
                              imap=imap_table(dovecot, poll_interval=args.poll_interval))
    pid = daemon.proc.pid
    ready = ready_stamp(daemon.log_path) or time.monotonic()
    rss_ready = proc_status_kb(pid, "VmRSS")
    cpu_ready = cpu_seconds(pid)
    store = directory / "var" / "store.sqlite3"
    all_committed = inbox_empty = escalated = None
    deadline = time.monotonic() + args.drain_timeout
    rss_samples: list[tuple[float, int]] = []   # (seconds since ready, VmRSS kB)
    rss_committed = None
    while time.monotonic() < deadline and daemon.proc.poll() is None:
        now = time.monotonic()
        rss = proc_status_kb(pid, "VmRSS")
        if rss is not None:
            rss_samples.append((round(now - ready, 2), rss))
        if all_committed is None and (committed(store) or 0) >= len(messages):
            all_committed = now
            rss_committed = rss
        if inbox_empty is None and watcher.count() == 0:
            inbox_empty = now
        if escalated is None and all_committed is not None and _escalation_backlog(store) == 0:
            escalated = now
        if all_committed and inbox_empty and escalated:
            break
        time.sleep(PEEK_EVERY)
    watcher.close()
    cpu_end = cpu_seconds(pid)
    hwm = proc_status_kb(pid, "VmHWM")
    rss_end = proc_status_kb(pid, "VmRSS")
    exited = daemon.proc.poll()
    stop_daemon(daemon)
    stamps = stored_lines(daemon.log_path)
    connected = next((log_stamp(r["ts"]) for r in log_records(daemon.log_text()) if r["event"] == "imap connected"),
                     None)
    figures = store_figures(store)

    def since_ready(t):
        return None if t is None else round(t - ready, 3)

    drain_s = None if all_committed is None else all_committed - ready
    return {
        "messages": len(messages), "bytes": {"min": min(sizes), "max": max(sizes), "total": sum(sizes)},
        "append": {"floor_s": round(append_floor_s, 3), "daemon_s": round(append_s, 3),
                   "msg_per_s": round(len(messages) / append_s, 1) if append_s > 0 else None},
        "floor": floor,
        "daemon": {
            "dry_run": True, "start_to_ready_s": round(ready - started, 3),
            "connected_s": since_ready(connected),
            "first_stored_s": since_ready(stamps[0][0] if stamps else None),
            "last_stored_s": since_ready(stamps[-1][0] if stamps else None),
            "all_committed_s": since_ready(all_committed), "inbox_empty_s": since_ready(inbox_empty),
            "escalations_done_s": since_ready(escalated),
            "msg_per_s": round(len(messages) / drain_s, 1) if drain_s else None,
            "msg_per_s_to_empty": round(len(messages) / (inbox_empty - ready), 1) if inbox_empty else None,
            "stored_lines": len(stamps),
            "rss_kb": {"ready": rss_ready, "all_committed": rss_committed,
                       "max_sampled": max((kb for _, kb in rss_samples), default=None), "end": rss_end,
                       "hwm": hwm, "samples": rss_samples[::5]},
            "cpu_s": None if None in (cpu_ready, cpu_end) else round(cpu_end - cpu_ready, 2),
            "exited_early": exited, "timed_out": all_committed is None or inbox_empty is None,
            "store": figures, "log": daemon_log_summary(daemon),
        },
    }


# --- report -------------------------------------------------------------------------

def _mb(kb: int | None) -> str:
    return "-" if kb is None else f"{kb / 1024:.1f} MB"


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def report(info: dict, pickup: list[dict], idle_info: dict, poll_info: dict | None, backlog: dict | None,
           args) -> str:
    out = header(info, "emergencyd IMAP pick-up benchmark") + [
        f"dovecot   {info['dovecot']} (throwaway, maildir, mail_fsync=never); the daemon reads INBOX over IMAPS,",
        "          the benchmark APPENDs over plain IMAP on loopback (one persistent imaplib connection)",
        "",
        "pick-up latency, one message at a time, to the trigger at the fake PagerDuty (dry_run off)",
        f"{'':30}{'messages':>9}{'paged':>7}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}"
        f"{'commit p50':>12}{'page p50':>10}",
    ]
    for r in pickup:
        out.append(f"{r['name']:30}{_fmt(r['messages'], 9)}{_fmt(r['paged'], 7)}{_fmt(r['p50_ms'], 9, 1)}"
                   f"{_fmt(r['p99_ms'], 9, 1)}{_fmt(r['max_ms'], 9, 1)}"
                   f"{_fmt(r['to_commit_p50_ms'], 12, 1)}{_fmt(r['commit_to_page_p50_ms'], 10, 1)}")
    out += [
        "",
        "latency: from just before smtplib's data() (SMTP) or imaplib's APPEND is sent, to the fake PagerDuty",
        "  receiving that message's trigger event; each message sent once the previous one's escalation had",
        "  finished (after one unmeasured warm-up message per row). SMTP and IDLE rows alternate in one daemon.",
        "commit p50: to the daemon's 'stored' log line (after its commit; ms stamps); page p50: from there to",
        "  the trigger.",
    ]
    idle = next((r for r in pickup if r["name"] == "IMAP with IDLE"), None)
    floor = idle_info.get("dovecot_idle_floor")
    if floor:
        out.append(f"Dovecot alone, APPEND -> '* n EXISTS' pushed to a bare IDLE client: p50 {_fmt(floor['p50_ms'], 0, 1)} "
                   f"ms, min {_fmt(floor['min_ms'], 0, 1)}, max {_fmt(floor['max_ms'], 0, 1)} over {floor['samples']}")
    if idle and idle["push_p50_ms"] is not None:
        out.append(f"IDLE row, a second (passive) IDLE session on INBOX got each EXISTS ('push') after p50 "
                   f"{_fmt(idle['push_p50_ms'], 0, 1)} ms, p99 {_fmt(idle['push_p99_ms'], 0, 1)}, max "
                   f"{_fmt(idle['push_max_ms'], 0, 1)} (its 500 ms timer can start at an earlier change, such as the "
                   "daemon's previous MOVE)")
    if idle and idle["append_p50_ms"] is not None:
        out.append(f"APPEND round trip (command sent to its OK), IDLE row: p50 {idle['append_p50_ms']:.1f} ms, "
                   f"p99 {_fmt(idle['append_p99_ms'], 0, 1)} ms")
    poll = next((r for r in pickup if r.get("poll_interval_s") is not None), None)
    if poll:
        out.append(f"polling: poll_interval_seconds = {poll['poll_interval_s']:g}; each APPEND at a random moment "
                   f"(0-{poll['poll_interval_s']:g} s after the previous page), so the wait for the next poll "
                   f"averages about {poll['poll_interval_s'] / 2:g} s; mean {_fmt(poll['mean_ms'], 0, 0)} ms")
    if poll_info and poll_info.get("connected"):
        out.append(f"polling run: the daemon logged 'imap connected' with idle={poll_info['connected'].get('idle')}")
    for r in pickup:
        slow = ", ".join(f"{s['ms']:.0f} (" + "".join(
            f"{label} {s[k]:.0f}, " for label, k in (("push", "to_push_ms"), ("commit", "to_commit_ms"))
            if s[k] is not None).rstrip(", ") + ")" for s in r["slowest"])
        out.append(f"slowest 3, {r['name']}: {slow or '-'} ms")
    if backlog:
        d, fl = backlog["daemon"], backlog["floor"]
        st = d["store"]
        b = backlog["bytes"]
        n = backlog["messages"]
        out += [
            "",
            f"backlog drain: {n} messages ({b['min']}-{b['max']} bytes, {b['total'] / 1e6:.1f} MB) in INBOX before "
            f"the start; appended in {backlog['append']['daemon_s']:.1f} s ({_fmt(backlog['append']['msg_per_s'], 0)} "
            "msg/s, not timed below)",
            f"{'':52}{'seconds':>9}{'msg/s':>9}",
            f"{'floor: imaplib, FETCH x' + str(FETCH_BATCH) + ', fsync each, MOVE':52}{_fmt(fl['seconds'], 9, 2)}"
            f"{_fmt(fl['msg_per_s'], 9)}",
            f"{'emergencyd dry-run: ready -> all committed':52}{_fmt(d['all_committed_s'], 9, 2)}"
            f"{_fmt(d['msg_per_s'], 9)}",
            f"{'emergencyd dry-run: ready -> INBOX empty':52}{_fmt(d['inbox_empty_s'], 9, 2)}"
            f"{_fmt(d['msg_per_s_to_empty'], 9)}",
            "",
            f"floor: from connect (login took {fl['login_s'] * 1000:.0f} ms) to the last MOVE's OK; {fl['written']} "
            f"files written, {fl['left_in_inbox']} left in INBOX",
            f"emergencyd: start -> ready {_s(d['start_to_ready_s'])}; from ready: imap connected {_s(d['connected_s'])}, "
            f"first stored {_s(d['first_stored_s'])}, last stored {_s(d['last_stored_s'])}, every dry-run "
            f"escalation done {_s(d['escalations_done_s'])} (polled every {PEEK_EVERY * 1000:.0f} ms)",
            f"store: {st['rows']} messages, {st['distinct_message_ids']} distinct Message-IDs, duplicates "
            f"{st['rows'] - st['distinct_message_ids']}, re-deliveries {st['redeliveries']}; P1 {st['p1']}, "
            f"page steps {st['page_steps']} ({', '.join(f'{k} {v}' for k, v in st['page_step_states'].items()) or '-'}); "
            f"relations {', '.join(f'{k} {v}' for k, v in st['relations'].items())}",
            f"daemon memory: VmRSS {_mb(d['rss_kb']['ready'])} at ready, {_mb(d['rss_kb']['all_committed'])} when "
            f"all were committed, {_mb(d['rss_kb']['max_sampled'])} max sampled, {_mb(d['rss_kb']['end'])} at the "
            f"end; VmHWM {_mb(d['rss_kb']['hwm'])} (the IDLE run's daemon, "
            f"one message at a time: {_mb(idle_info.get('vm_hwm_kb'))}); CPU {_fmt(d['cpu_s'], 0, 1)} s",
        ]
    warnings = []
    for r in pickup:
        if r["missing"]:
            warnings.append(f"{r['name']}: {r['missing']} messages not paged within the timeout")
        warnings += [f"{r['name']}: {e}" for e in r["errors"]]
        if r.get("left_in_inbox"):
            warnings.append(f"{r['name']}: {r['left_in_inbox']} messages left in INBOX at the end")
    if poll_info and poll_info.get("dovecot_restart_failure"):
        warnings.append("Dovecot's restart without IDLE failed once (" +
                        poll_info["dovecot_restart_failure"].splitlines()[0][:100] + "); started again")
    if backlog:
        d = backlog["daemon"]
        if d["timed_out"]:
            warnings.append(f"backlog: not drained within {args.drain_timeout:g} s")
        if d["exited_early"] is not None:
            warnings.append(f"backlog: the daemon exited with {d['exited_early']}")
    for name, summary in (("IDLE run", idle_info.get("log")), ("polling run", (poll_info or {}).get("log")),
                          ("backlog run", backlog and backlog["daemon"]["log"])):
        if not summary:
            continue
        if summary.get("ignored_exists"):
            warnings.append(f"{name} log: {summary['ignored_exists']} x aioimaplib 'ignored untagged response' "
                            "for an EXISTS (new mail announced, not acted on until the next push or poll)")
        for event, count in summary["events"].items():
            warnings.append(f"{name} log: {count} x {event[:120]}")
        if summary["tracebacks"]:
            warnings.append(f"{name} log: {summary['tracebacks']} tracebacks")
    out += ([""] if warnings else []) + [f"WARNING {w}" for w in warnings]
    return "\n".join(out)


# --- main ---------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=200,
                        help="messages one at a time for the SMTP and the IDLE rows, each (200)")
    parser.add_argument("--poll-messages", type=int, default=30,
                        help="messages one at a time for the polling row (30; each costs one to two poll intervals)")
    parser.add_argument("--idle-floor", type=int, default=20,
                        help="APPENDs timed to the EXISTS pushed to a bare IDLE client, before the daemon (20; 0: none)")
    parser.add_argument("--poll-interval", type=float, default=1.0, help="[imap] poll_interval_seconds (1)")
    parser.add_argument("--backlog", type=int, default=1000, help="messages in INBOX before the daemon starts (1000)")
    parser.add_argument("--backlog-pad-kb", type=int, default=0,
                        help="make each backlog message this many KB bigger (0: ~1.5 KB each)")
    parser.add_argument("--drain-timeout", type=float, default=120.0,
                        help="seconds after the daemon is ready to wait for the backlog (120)")
    parser.add_argument("--skip", action="append", default=[], choices=("idle", "backlog", "poll"),
                        help="leave a part out (repeatable)")
    parser.add_argument("--burst", type=int, default=0, metavar="N",
                        help="also APPEND N distinct P1s from N tenants evenly within --burst-seconds (0: no burst)")
    parser.add_argument("--burst-seconds", type=float, default=40.0, help="the burst's length (40)")
    parser.add_argument("--burst-zendesk-rpm", type=int, default=90,
                        help="[zendesk] requests_per_minute of the burst's daemon (90, the shipped default)")
    parser.add_argument("--burst-max-new-pages", type=int, default=1000,
                        help="[dedup] max_new_pages_per_minute of the burst's daemon (1000: every P1 pages)")
    add_session_args(parser, tmpdir="the stores and the floor's files", keep="daemon logs, stores")
    args = parser.parse_args(argv)
    if args.burst < 0 or args.burst_seconds <= 0 or min(args.burst_zendesk_rpm, args.burst_max_new_pages) < 1:
        parser.error("--burst must be at least 0, --burst-seconds above 0, the burst's rates at least 1")
    if min(args.messages, args.poll_messages, args.backlog) < 1 or args.poll_interval < 0.1:
        parser.error("--messages, --poll-messages and --backlog must be at least 1, --poll-interval at least 0.1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from tests.dovecot import Dovecot, dovecot_binary
    from tests.fakes.pagerduty import FakePagerDuty
    from tests.fakes.tls import TestCA
    from tests.fakes.zendesk import FakeZendesk

    run = f"imap{os.getpid()}-{int(time.time())}"
    with bench_session("emergencyd-imap-bench-", args.tmpdir, args.keep) as (stack, workdir, info, others):
        binary = dovecot_binary()
        info["dovecot"] = dovecot_version(binary)
        ca = TestCA()
        dovecot = Dovecot(ca, dovecot=binary)
        stack.callback(dovecot.cleanup)
        dovecot.start()
        zendesk = stack.enter_context(FakeZendesk(ca=ca, email=ZENDESK_EMAIL, token=ZENDESK_TOKEN))
        pagerduty = stack.enter_context(FakePagerDuty(ca=ca, api_token=API_TOKEN))
        pickup: list[dict] = []
        idle_info: dict = {}
        poll_info = backlog = None
        if "idle" not in args.skip:
            began = time.monotonic()
            print(f"pick-up: {args.messages} + 1 by SMTP and by IMAP (IDLE), alternately ...", file=sys.stderr, flush=True)
            rows, idle_info = bench_idle(args, workdir, stack, run, dovecot, zendesk, pagerduty, ca)
            pickup += rows
            print(f"  {time.monotonic() - began:.1f}s", file=sys.stderr, flush=True)
        if "backlog" not in args.skip:
            began = time.monotonic()
            print(f"backlog: {args.backlog} messages ...", file=sys.stderr, flush=True)
            backlog = bench_backlog(args, workdir, stack, run, dovecot)
            print(f"  {time.monotonic() - began:.1f}s", file=sys.stderr, flush=True)
        burst_text: list[str] = []
        if args.burst:   # before polling, which restarts Dovecot without IDLE
            from bench.imap_burst import bench_burst, burst_lines
            began = time.monotonic()
            print(f"burst: {args.burst} P1s appended within {args.burst_seconds:g} s ...", file=sys.stderr, flush=True)
            row, burst_info = bench_burst(args, workdir, stack, run, dovecot, zendesk, pagerduty, ca)
            pickup.append(row)
            burst_text = burst_lines(row, burst_info)
            print(f"  {time.monotonic() - began:.1f}s", file=sys.stderr, flush=True)
        if "poll" not in args.skip:
            began = time.monotonic()
            print(f"pick-up: {args.poll_messages} + 1 by IMAP, polling every {args.poll_interval:g} s ...",
                  file=sys.stderr, flush=True)
            row, poll_info = bench_poll(args, workdir, stack, run, dovecot, zendesk, pagerduty, ca)
            pickup.append(row)
            print(f"  {time.monotonic() - began:.1f}s", file=sys.stderr, flush=True)
        fake_errors = [repr(e) for e in zendesk.errors + pagerduty.errors]
        info["others_cores"] = others.cores()
        text = report(info, pickup, idle_info, poll_info, backlog, args)
        if burst_text:
            text += "\n" + "\n".join(burst_text)
        if fake_errors:
            text += "\n" + "\n".join(f"WARNING fake: {e}" for e in fake_errors)
        print(text)
        if args.json:
            doc = {"machine": info, "pickup": pickup, "idle_run": idle_info, "poll_run": poll_info,
                   "burst_run": burst_info if args.burst else None,
                   "backlog": backlog, "fake_errors": fake_errors}
            args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    run_benchmark(main)
