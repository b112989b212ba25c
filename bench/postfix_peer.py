"""A throwaway Postfix on 127.0.0.1: the durability peer of the SMTP ingest benchmark.

Postfix answers 250 only after cleanup(8) has fsynced the queue file (its default, no
setting turns it off), the promise emergencyd makes. This instance has its own config,
queue and Maildir under a directory of the benchmark's; the system instance
(/etc/postfix) is neither changed nor started. Mail for emergency@example.org goes
through the queue to local(8), into a Maildir, so Postfix does its whole job meanwhile,
as emergencyd escalates meanwhile.

Needs Debian's `postfix` package and root (Postfix's master starts as root and drops to
the `postfix` user). Nothing here leaves 127.0.0.1: mail for other domains goes to the
`error` transport, and the client's name is not looked up.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

INSTALL_HINT = ('apt-get install -y postfix   (as root; non-interactively, first: echo "postfix '
                'postfix/main_mailer_type select Local only" | debconf-set-selections)')
STOP_TIMEOUT = 10.0
COMMAND_TIMEOUT = 60.0
DRAIN_POLL = 0.1
MAILDIR_NEW = "new"          # the maildir folder of delivered, unread mail
# Postfix's commands live in /usr/sbin, which a user's PATH often lacks.
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


class PostfixUnavailable(RuntimeError):
    """Postfix cannot run here; the message says what to do."""


def missing_requirements() -> str | None:
    """Why a throwaway Postfix cannot run on this machine, or None."""
    tools = [t for t in ("postfix", "postconf", "postalias") if shutil.which(t, path=SEARCH_PATH) is None]
    if tools or not Path("/etc/postfix/master.cf").exists():
        return f"Postfix is not installed ({', '.join(tools) or '/etc/postfix/master.cf'} missing): {INSTALL_HINT}"
    if os.geteuid() != 0:
        return "a throwaway Postfix needs root (its master starts as root, then drops privileges)"
    return None


def free_port() -> int:
    """A port free on 127.0.0.1 now (Postfix has no port 0; the window before it binds is tiny)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _traversable_by_all(path: Path) -> bool:
    """Postfix's daemons run as `postfix` and local(8) as `nobody`: every parent must let them through."""
    for parent in [path, *path.parents]:
        if not os.stat(parent).st_mode & 0o001:
            return False
    return True


class Postfix:
    """One instance: setup(), start(), wait_drained(), stop(); cpu_seconds() sums its processes."""

    def __init__(self, base: Path, recipient_domain: str, port: int | None = None) -> None:
        self.base = base
        self.config = base / "etc"
        self.queue = base / "queue"
        self.maildir = base / "Maildir"
        self.domain = recipient_domain
        self.port = port or free_port()
        self.started = False

    def _postconf(self, *args: str) -> None:
        self._run("postconf", "-c", str(self.config), *args)

    @staticmethod
    def _run(*command: str) -> None:
        result = subprocess.run(command, capture_output=True, text=True, timeout=COMMAND_TIMEOUT,
                                env={**os.environ, "PATH": SEARCH_PATH})
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} exited {result.returncode}: {result.stderr.strip()[-2000:]}")

    def setup(self) -> "Postfix":
        problem = missing_requirements()
        if problem:
            raise PostfixUnavailable(problem)
        for directory in (self.config, self.queue, self.base / "data", self.maildir):
            directory.mkdir(parents=True, exist_ok=True)
        self.base.chmod(0o755)
        if not _traversable_by_all(self.base):
            raise PostfixUnavailable(f"{self.base}: a parent directory is closed to other users; Postfix's "
                                     "daemons (user postfix, nobody) could not reach their queue: use --tmpdir")
        shutil.copy("/etc/postfix/master.cf", self.config / "master.cf")
        (self.config / "main.cf").write_text("compatibility_level = 3.6\n")
        aliases = self.config / "aliases"
        self._postconf(
            "-e", f"queue_directory={self.queue}", f"data_directory={self.base / 'data'}",
            "myhostname=localhost", "mydomain=localdomain", f"mydestination=localhost, {self.domain}",
            "inet_interfaces=127.0.0.1", "inet_protocols=ipv4", "mynetworks=127.0.0.0/8",
            f"alias_maps=hash:{aliases}", f"alias_database=hash:{aliases}", "local_recipient_maps=$alias_maps",
            # Nothing leaves the machine: other domains bounce to `error`, no DNS for the client's name.
            "default_transport=error", "relay_transport=error", "smtpd_peername_lookup=no", "biff=no",
            "smtpd_relay_restrictions=permit_mynetworks, reject_unauth_destination",
            f"maillog_file_prefixes={self.base}", f"maillog_file={self.base / 'maillog'}")
        # smtpd only on 127.0.0.1:PORT, not on port 25; no chroot (the throwaway queue has no etc/ copies).
        self._postconf("-M#", "smtp/inet")
        self._postconf("-Me", f"127.0.0.1:{self.port}/inet=127.0.0.1:{self.port} inet n - n - - smtpd")
        self._postconf("-F", "*/*/chroot = n")
        # A root-owned alias database makes local(8) write the Maildir as default_privs (nobody).
        aliases.write_text(f"emergency: {self.maildir}/\npostmaster: root\n")
        self._run("postalias", str(aliases))
        shutil.chown(self.base / "data", user="postfix")
        shutil.chown(self.maildir, user="nobody")
        return self

    def start(self, timeout: float = 20.0) -> "Postfix":
        self._run("postfix", "-c", str(self.config), "start")
        self.started = True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                if s.recv(512).startswith(b"220"):
                    return self
            time.sleep(0.1)
        raise RuntimeError(f"Postfix did not greet on 127.0.0.1:{self.port} within {timeout:g}s; see "
                           f"{self.base / 'maillog'}")

    def pids(self) -> list[int]:
        """Every process of this instance: each carries MAIL_CONFIG=<our config dir> in its environment."""
        marker = f"MAIL_CONFIG={self.config}".encode()
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    if marker in (entry / "environ").read_bytes().split(b"\0"):
                        found.append(int(entry.name))
        return found

    def cpu_seconds(self) -> float | None:
        """CPU used so far by the instance's processes alive now (one that exited took its share along)."""
        from bench.smtp_ingest import cpu_seconds
        values = [cpu_seconds(pid) for pid in self.pids()]
        return sum(v for v in values if v is not None) if values else None

    def queued(self) -> int:
        return sum(1 for name in ("incoming", "active", "deferred", "maildrop")
                   for _ in (self.queue / name).rglob("*") if _.is_file())

    def delivered(self) -> int:
        return sum(1 for _ in (self.maildir / MAILDIR_NEW).glob("*")) if (self.maildir / MAILDIR_NEW).exists() else 0

    def wait_drained(self, timeout: float) -> float | None:
        """Seconds until the queue is empty (every message delivered or bounced), None at the timeout."""
        began = time.monotonic()
        while time.monotonic() - began < timeout:
            if self.queued() == 0:
                return time.monotonic() - began
            time.sleep(DRAIN_POLL)
        return None

    def stop(self) -> None:
        """`postfix stop`, then wait until none of its processes is left; `abort` and SIGKILL if need be."""
        if not self.started:
            return
        self.started = False
        with contextlib.suppress(RuntimeError, subprocess.SubprocessError):
            self._run("postfix", "-c", str(self.config), "stop")
        if self._wait_gone(STOP_TIMEOUT):
            return
        with contextlib.suppress(RuntimeError, subprocess.SubprocessError):
            self._run("postfix", "-c", str(self.config), "abort")
        if not self._wait_gone(STOP_TIMEOUT / 2):
            for pid in self.pids():   # ours only: found by our own MAIL_CONFIG
                with contextlib.suppress(OSError):
                    os.kill(pid, 9)

    def _wait_gone(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.pids():
                return True
            time.sleep(0.2)
        return False


def postfix_version() -> str:
    try:
        return subprocess.run(["postconf", "-h", "mail_version"], capture_output=True, text=True, timeout=10,
                              env={**os.environ, "PATH": SEARCH_PATH}).stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def peer_lines(rows: list[dict]) -> list[str]:
    """The targets against Postfix, when it ran: dry-run msg/s against Postfix's at the most
    connections, and dry-run p50 against Postfix's with one connection."""
    from bench.smtp_ingest import _fmt
    out = []
    for peer in (r for r in rows if r["name"].startswith("Postfix")):
        dry = next((r for r in rows if r["name"] == "emergencyd dry-run"
                    and r["connections"] == peer["connections"]), None)
        if dry is None:
            continue
        ratio = (dry["msg_per_s"] / peer["msg_per_s"]) if dry["msg_per_s"] and peer["msg_per_s"] else None
        out.append(f"against Postfix x{peer['connections']}: dry-run msg/s {_fmt(ratio, 0, 2)}x Postfix's, "
                   f"p50 {_fmt(dry['p50_ms'], 0, 2)} ms vs {_fmt(peer['p50_ms'], 0, 2)} ms; Postfix's queue "
                   f"empty {_fmt(peer.get('queue_drained_after_s'), 0, 2)} s after its last 250, "
                   f"{peer.get('delivered')} delivered to the Maildir")
    return out


# --- the benchmark row --------------------------------------------------------------

DRAIN_TIMEOUT = 120.0


def bench_postfix(workdir: Path, stack, messages, warmup, connections: int) -> dict:
    """smtp_ingest's load against a fresh throwaway Postfix; the row, and how long its queue took
    to empty after the last 250 (local delivery runs meanwhile, as emergencyd's escalation does)."""
    from bench.smtp_ingest import cpu_ms_per_mail, run_load, smtp_row
    from tests.harness import RECIPIENT

    workdir.chmod(0o711)   # Postfix's daemons (users postfix, nobody) must reach its queue inside
    postfix = Postfix(workdir / f"postfix-{connections}", RECIPIENT.split("@", 1)[1]).setup()
    stack.callback(postfix.stop)
    postfix.start()
    result = run_load(postfix.port, messages, connections, warmup, server_cpu=postfix.cpu_seconds)
    drained = postfix.wait_drained(DRAIN_TIMEOUT)
    cpu = cpu_ms_per_mail(result, postfix.cpu_seconds(), len(result.accepted))
    delivered = postfix.delivered()
    postfix.stop()
    return smtp_row(f"Postfix {postfix_version()}", result, len(messages), connections,
                    queue_drained_after_s=None if drained is None else round(drained, 2), delivered=delivered,
                    cpu_ms_per_mail=cpu)
