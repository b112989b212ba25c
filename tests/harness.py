"""Runs the real daemon as a subprocess, the way an operator does, for end-to-end tests.

The daemon listens on port 0 and says where in its "ready" log line, so tests never
race for free ports. Its whole stderr is kept in a file, so tests can grep it.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import dkim
from prometheus_client.parser import text_string_to_metric_families

from emergencyd.daemon.ops.logs import parse_line
from emergencyd.escalation.records import DONE, Envelope

ROOT = Path(__file__).resolve().parent.parent
RECIPIENT = "emergency@example.org"
ZENDESK_EMAIL = "bot@example.org"
ZENDESK_TOKEN = "zd-test-token-5c1e7d"
ROUTING_KEY = "R0UT1NGKEY0123456789abcdef012345"   # 32 characters, like a real one
API_TOKEN = "pd-rest-token-9f8e7d"
SECRETS = (ZENDESK_TOKEN, ROUTING_KEY, API_TOKEN)

READY_EVENT = "emergencyd ready"   # its fields say where it listens: smtp ("off" without SMTP), metrics


def write_config(directory: Path, *, dry_run: bool, zendesk_url: str = "https://example.zendesk.com",
                 pagerduty_url: str = "https://events.pagerduty.com", ca_file: Path | None = None,
                 extra: str = "", escalation: str = "", store: str = "", policy: bool = False,
                 busy_timeout_ms: int = 300, extra_zendesk: str = "", imap: str = "",
                 smtp_enabled: bool = True, metrics: str = "", smtp: str = "") -> Path:
    """A test config on port 0; policy=True appends the shipped [policy] from config.toml.

    `imap` is the body of an [imap] table (IMAP is enabled when it is given).
    """
    ca_line = f'ca_file = "{ca_file}"' if ca_file else ""
    head_start = "" if "ticket_head_start_seconds" in escalation else "ticket_head_start_seconds = 1.0\n"
    text = f"""
dry_run = {str(dry_run).lower()}
{extra}
[smtp]
enabled = {str(smtp_enabled).lower()}
listen = "127.0.0.1:0"
recipients = ["{RECIPIENT}", "Second@Example.org"]
max_message_bytes = 200000
{smtp}

[store]
path = "var/store.sqlite3"
busy_timeout_ms = {busy_timeout_ms}
{store}

[zendesk]
url = "{zendesk_url}"
email = "{ZENDESK_EMAIL}"
timeout_seconds = 3
{ca_line}
{extra_zendesk}
[pagerduty]
events_url = "{pagerduty_url}"
api_url = "{pagerduty_url}"
from_email = "oncall@example.org"
timeout_seconds = 3
{ca_line}

[escalation]
retry_initial_seconds = 0.2
retry_max_seconds = 1.0
{head_start}poll_interval_seconds = 0.1
{escalation}

[metrics]
listen = "127.0.0.1:0"
{metrics}
"""
    if imap:
        text += f"\n[imap]\nenabled = true\n{imap}\n"
    if policy:
        text += shipped_policy()
    path = directory / "config.toml"
    path.write_text(text)
    return path


def shipped_policy() -> str:
    """The [policy] part of the shipped config.toml, which keeps it last."""
    shipped = (ROOT / "config.toml").read_text()
    return shipped[shipped.index("\n[policy]\n"):]


@dataclass
class DaemonProcess:
    config: Path
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen | None = None
    smtp_port: int = 0
    metrics_port: int = 0
    logs: list[str] = field(default_factory=list)
    preexec_fn: Callable[[], None] | None = None   # run in the child before exec (limits, privileges)
    wrapper: tuple[str, ...] = ()                   # a command that execs the daemon (a namespace, say)

    def start(self, timeout: float = 15.0) -> "DaemonProcess":
        log = open(self.log_path, "ab")
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.proc = subprocess.Popen(
            [*self.wrapper, sys.executable, "-m", "emergencyd.daemon.cli", "run", "--config", str(self.config)],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=self.preexec_fn)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready = next((r for r in log_records(self._new_log()) if r["event"] == READY_EVENT), None)
            if ready:
                self.smtp_port = 0 if ready["smtp"] == "off" else int(ready["smtp"].rsplit(":", 1)[1])
                self.metrics_port = int(ready["metrics"].rsplit(":", 1)[1])
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited {self.proc.returncode}:\n{self.log_text()}")
            time.sleep(0.02)
        raise RuntimeError(f"daemon not ready in {timeout}s:\n{self.log_text()}")

    def _new_log(self) -> str:
        with open(self.log_path, "rb") as f:
            f.seek(self._log_offset)
            return f.read().decode("utf-8", "replace")

    def log_text(self) -> str:
        return self.log_path.read_text("utf-8", "replace") if self.log_path.exists() else ""

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def send(self, message: bytes | str, *, sender: str = "tenant@example.net",
             recipients: tuple[str, ...] = (RECIPIENT,)) -> dict:
        """Send with smtplib; returns smtplib's refused dict (raises on any refusal of the whole mail)."""
        with smtplib.SMTP("127.0.0.1", self.smtp_port, timeout=10) as client:
            return client.sendmail(sender, list(recipients), message)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return run_cli(self.config, *args, env=self.env, check=check)

    def status(self) -> dict:
        return json.loads(self.cli("status", "--json", "--limit", "1000").stdout)

    def http_get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def metric(self, series: str, **labels: str) -> float:
        """One sample of /metrics: `series` is a name, or a name with its labels as /metrics writes them
        (`emergencyd_smtp_auth_total{result="failure"}`); labels may also be given as keywords."""
        name, _, written = series.partition("{")
        labels = {**dict(re.findall(r'(\w+)="([^"]*)"', written)), **labels}
        for family in text_string_to_metric_families(self.http_get("/metrics")[1]):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return sample.value
        raise AssertionError(f"{name}{labels or ''} is not in /metrics")

    def rejected(self, reason: str) -> float:
        """emergencyd_messages_rejected_total for one reason."""
        return self.metric("emergencyd_messages_rejected_total", reason=reason)

    def wait_for(self, predicate, timeout: float = 20.0, interval: float = 0.1, what: str = "condition"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}\n--- daemon log ---\n"
                             f"{self.log_text()[-5000:]}")

    def wait_settled(self, count: int, timeout: float = 20.0) -> dict:
        """Until `count` messages exist and none is new or pending."""
        def settled():
            doc = self.status()
            counts = doc["counts"]
            total = sum(counts.values())
            if total >= count and not counts.get("new") and not counts.get("pending"):
                return doc
            return None
        return self.wait_for(settled, timeout, what=f"{count} settled escalations")


def log_records(text: str) -> list[dict]:
    """The daemon's JSON log lines as dicts (other lines, such as a crash's raw traceback, skipped)."""
    return [r for r in map(parse_line, text.splitlines()) if r is not None]


def run_cli(config: Path, *args: str, env: dict[str, str] | None = None,
            check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "emergencyd.daemon.cli", *args, "--config", str(config)],
                            cwd=ROOT, env=env or base_env(), capture_output=True, text=True, timeout=60)
    if check and result.returncode != 0:
        raise AssertionError(f"emergencyd {' '.join(args)} exited {result.returncode}:\n"
                             f"{result.stdout}\n{result.stderr}")
    return result


def base_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMERGENCYD_")}
    env.update(overrides)
    return env


def live_env() -> dict[str, str]:
    return base_env(EMERGENCYD_ZENDESK_TOKEN=ZENDESK_TOKEN, EMERGENCYD_PAGERDUTY_ROUTING_KEY=ROUTING_KEY,
                    EMERGENCYD_PAGERDUTY_API_TOKEN=API_TOKEN)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_running(pid: int) -> bool:
    """Alive: not gone, and not a zombie waiting for a reaper (a container's init may never reap one)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def require_tool(name: str) -> str:
    """A missing system tool fails the test in CI and skips it elsewhere, saying why."""
    import pytest
    path = shutil.which(name)
    if path:
        return path
    message = f"{name} is not installed (make test installs it when run as root)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def smtp_envelope(source: str = "smtp") -> Envelope:
    """The envelope of a tenant's mail as SMTP gives it, received now: for the store's own tests."""
    return Envelope(source=source, mail_from="tenant@example.net", rcpt_to=("emergency@example.org",),
                    peer="127.0.0.1:5000", helo="mx.example.net", tls=False, received_at=time.time())


def make_message(subject: str = "Apps down", body: str = "Our production app returns 502 since 02:10.",
                 sender: str = "tenant@example.net", message_id: str | None = "<m1@example.net>",
                 extra_headers: str = "") -> bytes:
    mid = f"Message-ID: {message_id}\r\n" if message_id else ""
    return (f"From: Tenant <{sender}>\r\nTo: {RECIPIENT}\r\nSubject: {subject}\r\n{mid}"
            f"Date: Fri, 27 Nov 2026 02:15:00 +0000\r\n{extra_headers}"
            f"Content-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n").encode()


# --- shared by several test modules -------------------------------------------------------

# A tenant's plain outage report, and a newsletter no rule matches: the two sides of every trust test.
NEWSLETTER = dict(subject="Our November newsletter", body="Ten tips for a calmer inbox, and our winter sale.")
OUTAGE = dict(subject="Help", body="Hello, all our apps are down since 02:10, users get errors.")

# IMAP settings that make the tests' reconnects quick.
FAST = {"reconnect_initial_seconds": 0.2, "reconnect_max_seconds": 1.0, "command_timeout_seconds": 10}


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))   # a TOML basic string


def imap_table(dovecot, tmp_path: Path, *, tls: bool = True, password: str | None = None, **settings) -> str:
    """The body of an [imap] table for this Dovecot; a setting given as None is left out."""
    secret = tmp_path / "imap-password"
    secret.write_text((dovecot.password if password is None else password) + "\n")
    secret.chmod(0o600)
    values: dict[str, object] = {
        "host": dovecot.host, "port": dovecot.imaps_port if tls else dovecot.imap_port,
        "username": dovecot.username, "password_file": secret, "tls": tls,
        **({"ca_file": dovecot.ca_file} if tls else {}), **FAST, **settings}
    return "\n".join(f"{key} = {_toml(value)}" for key, value in values.items() if value is not None)


def oauth2_imap(dovecot, tmp_path: Path, identity, provider: str, grant: str, ca_file: Path,
                imap: dict[str, object] | None = None, **oauth2: object) -> str:
    """[imap] with auth = "oauth2" (and `imap`'s settings) and its [imap.oauth2] table for the identity
    fixture's fakes (tests/fakes/oauth2.py); each secret in a file of its own."""
    from tests.fakes.oauth2 import CLIENT_ID, CLIENT_SECRET, TENANT
    values: dict[str, object] = {"provider": provider, "grant": grant, "ca_file": str(ca_file), **oauth2}
    secrets = {"service_account": identity.service_account_key()} if grant == "service_account" else {}
    if grant != "service_account":
        values["client_id"] = CLIENT_ID
    if grant == "client_credentials" or provider in ("google", "generic") and grant == "refresh_token":
        secrets["client_secret"] = CLIENT_SECRET
    if grant == "refresh_token":
        secrets["refresh_token"] = identity.refresh_token
    if provider == "microsoft":
        values["tenant"], values["authority"] = TENANT, identity.url
    else:
        values.setdefault("token_url", f"{identity.url}/token")
    for name, value in secrets.items():
        path = tmp_path / f"oauth2-{name}"
        path.write_text(value)
        path.chmod(0o600)
        values[f"{name}_file"] = str(path)
    table = "\n".join(f"{key} = {json.dumps(value)}" for key, value in values.items())
    return imap_table(dovecot, tmp_path, password_file=None, auth="oauth2", **(imap or {})) + \
        f"\n\n[imap.oauth2]\n{table}"


class NotifySocket:
    """What systemd does: a datagram socket the service sends its notifications to."""

    def __init__(self, path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.received: list[dict[str, str]] = []

    def drain(self) -> None:
        while True:
            try:
                data = self.sock.recv(4096)
            except (TimeoutError, socket.timeout):
                return
            self.received.append(dict(line.split("=", 1) for line in data.decode().splitlines()))

    def wait_for(self, key: str, timeout: float = 15.0, after: int = 0) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in self.received[after:]:
                if key in message:
                    return message
            self.drain()
        raise AssertionError(f"no {key} notification in {timeout}s; got {self.received}")

    def close(self) -> None:
        self.sock.close()


TICKET_UPDATE = r"/api/v2/tickets/\d+\.json"


# Long enough for several of the test daemon's runner rounds (poll_interval_seconds = 0.1) and a retry's backoff.
QUIET_SECONDS = 1.5


def assert_quiet(zendesk, pagerduty, seconds: float = QUIET_SECONDS) -> None:
    """Nothing more reaches Zendesk or PagerDuty for a while: a late repeat would show here."""
    before = (len(zendesk.requests), len(pagerduty.requests))
    time.sleep(seconds)
    assert (len(zendesk.requests), len(pagerduty.requests)) == before, "a call came after the run had settled"


def assert_one_of_everything(daemon, zendesk, pagerduty):
    [message] = daemon.wait_settled(1, timeout=30)["messages"]
    assert message["state"] == DONE, message
    assert_quiet(zendesk, pagerduty)
    [ticket] = zendesk.tickets()
    [incident] = pagerduty.incidents()
    assert ticket["id"] == message["ticket_id"] and incident["dedup_key"] == message["dedup_key"]
    notes = [c["body"] for c in zendesk.comments(ticket["id"]) if not c["public"]]
    assert len([n for n in notes if "MAIL FROM:" in n]) == 1
    assert len([n for n in notes if message["dedup_key"] in n and "PagerDuty" in n]) == 1
    assert len([n for n in incident["notes"] if f"/agent/tickets/{ticket['id']}" in n["content"]]) == 1
    return message


def signed(private: bytes, body: str = "All our apps are down.", *, message: bytes | None = None,
           selector: bytes = b"sel") -> bytes:
    """A tenant's mail DKIM-signed for tenant.example with `private` (the conftest's signing_key)."""
    message = message or make_message(sender="alice@tenant.example", body=body)
    return dkim.sign(message, selector, b"tenant.example", private,
                     include_headers=[b"from", b"to", b"subject", b"date", b"message-id"]) + message


PATIENCE_SECONDS = 10     # how long a condition may take to come true before a test gives up


def wait_until(condition: Callable[[], bool], what: str, patience: float = PATIENCE_SECONDS) -> None:
    """Poll until `condition()` holds; fail naming `what` past `patience` seconds (a bound, not a timing)."""
    deadline = time.monotonic() + patience
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting for {what}")
        time.sleep(0.002)
