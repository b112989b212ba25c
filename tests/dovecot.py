"""A real, throwaway Dovecot IMAP server on 127.0.0.1 for tests (never a mock).

`Dovecot(ca)` writes its own dovecot.conf into a fresh directory and runs
`dovecot -F -c DIR/dovecot.conf`: one user (`alerts@example.com`), maildir storage,
mailboxes INBOX and Processed (auto-created), a plain IMAP port and an IMAPS port whose
certificate comes from the test CA (`TestCA`), so clients verify it with `ca_file`.

It works as root (Dovecot refuses to run login/mail processes as root, so they run as the
package's `dovecot`/`dovenull` users and the directory is made reachable by them) and as a
normal user (everything runs as that user).

The test side talks to it with stdlib imaplib (`append`, `append_many`, `uids`, `fetch_all`,
...), a client separate from the code under test. `deliver` drops a message into a maildir the
way a local delivery agent does (it works while Dovecot is stopped, too), and
`set_mailbox_writable(mailbox, False)` makes a mailbox refuse new mail (MOVE/COPY into it fail).
Dovecot's own log is in `log_path` (`log_text()`); the `dovecot` fixture prints it when a test
fails.
"""
from __future__ import annotations

import grp
import imaplib
import itertools
import os
import pwd
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Self

from tests.fakes.tls import TestCA
from tests.harness import free_port

HOST = "127.0.0.1"
USERNAME = "alerts@example.com"
PASSWORD = "imap-test-pw-4b7a1c"
MAILBOXES = ("INBOX", "Processed")
MAILDIR_NEW = "new"      # the maildir folder of delivered, unseen mail

_BIND_FAILED = re.compile(r"bind\(.*\) failed|Address already in use")


def _two_free_ports() -> tuple[int, int]:
    first = free_port()
    while True:
        second = free_port()
        if second != first:
            return first, second


def dovecot_binary() -> str:
    """The dovecot program; require_tool("dovecot") fails (CI) or skips the test without it.

    Debian puts it in /usr/sbin, which a normal user's PATH often lacks, so look there too.
    """
    from tests.harness import require_tool
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])
    return shutil.which("dovecot", path=search) or require_tool("dovecot")


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.2)
        try:
            probe.connect(str(path))
            return True
        except OSError:
            return False


class DovecotError(RuntimeError):
    pass


class Dovecot:
    """One throwaway Dovecot instance. start() / stop() / restart() / kill(); see module doc."""

    def __init__(self, ca: TestCA | None = None, *, idle: bool = True, dovecot: str = "dovecot",
                 oauth2_introspection_url: str | None = None) -> None:
        self.ca = ca or TestCA()
        # With a URL: SASL XOAUTH2 and OAUTHBEARER too, each token checked at login by POSTing
        # "token=..." to it (RFC 7662 introspection, as ../shared/recipes/throwaway-dovecot-oauth2.sh).
        self.oauth2_introspection_url = oauth2_introspection_url
        self.binary = dovecot
        self.username = USERNAME
        self.password = PASSWORD
        self.host = HOST
        self.imap_port = 0
        self.imaps_port = 0
        self.idle_enabled = idle
        self.login_throttling = True   # Dovecot's own delay and penalty after a failed login
        self.proc: subprocess.Popen | None = None
        self.start_seconds: float | None = None   # how long the last start() took
        self.events: list[str] = []                # lifecycle with timings, shown in log_tail()
        self._capabilities: list[str] | None = None    # Dovecot's own list, learnt from a first start
        self.left_out_capabilities: set[str] = set()    # not advertised (before and after login)
        self._saved_modes: dict[Path, int] = {}   # set_mailbox_writable(False) restores these
        self.is_root = os.geteuid() == 0

        # tmp_path is 0700 under /tmp/pytest-of-root: the dovecot users could not reach it
        self.dir = Path(tempfile.mkdtemp(prefix="emergencyd-dovecot-"))
        self.dir.chmod(0o755)
        for sub in ("run", "state", "mail"):
            (self.dir / sub).mkdir()
            (self.dir / sub).chmod(0o755)
        self.log_path = self.dir / "dovecot.log"
        self.stderr_path = self.dir / "dovecot.stderr"
        self.config_path = self.dir / "dovecot.conf"
        self.mail_root = self.dir / "mail"
        self.ca_file = self.ca.write_ca_pem(self.dir)
        self._write_tls_files()
        (self.dir / "passwd").write_text(f"{USERNAME}:{{PLAIN}}{PASSWORD}::::::\n")
        (self.dir / "passwd").chmod(0o644)
        if self.is_root:
            self._user, self._group, self._login_user = "dovecot", "dovecot", "dovenull"
            uid, gid = pwd.getpwnam("dovecot").pw_uid, grp.getgrnam("dovecot").gr_gid
            os.chown(self.mail_root, uid, gid)
        else:
            self._user = pwd.getpwuid(os.geteuid()).pw_name
            self._group = grp.getgrgid(os.getegid()).gr_name
            self._login_user = self._user

    # --- files -------------------------------------------------------------------------------

    def _write_tls_files(self) -> None:
        self.ca.write_server_pem(self.dir / "cert.pem", self.dir / "key.pem")   # valid for 127.0.0.1
        (self.dir / "key.pem").chmod(0o600)   # read by the (root) config process only

    def _write_config(self) -> None:
        d = self.dir
        capability = ""
        throttling = anvil_penalty = oauth2_passdb = ""
        mechanisms = "plain login"
        if self.oauth2_introspection_url:
            mechanisms += " xoauth2 oauthbearer"
            (d / "oauth2.conf.ext").write_text(
                f"introspection_mode = post\nintrospection_url = {self.oauth2_introspection_url}\n"
                "username_attribute = username\nactive_attribute = active\nactive_value = true\n")
            (d / "oauth2.conf.ext").chmod(0o644)
            oauth2_passdb = f"passdb {{\n  driver = oauth2\n  mechanisms = xoauth2 oauthbearer\n" \
                            f"  args = {d}/oauth2.conf.ext\n}}"
        if not self.login_throttling:
            throttling = "auth_failure_delay = 0"
            # No per-IP penalty: at mode 0 anvil's penalty socket is not created, and the auth
            # process, finding none, goes without. A socket left by an earlier run would make it
            # retry for seconds (connection refused), so it goes too.
            anvil_penalty = "  unix_listener anvil-auth-penalty {\n    mode = 0\n  }\n"
            (d / "run" / "anvil-auth-penalty").unlink(missing_ok=True)
        left_out = self.left_out_capabilities | (set() if self.idle_enabled else {"IDLE"})
        if left_out:
            if self._capabilities is None:
                raise DovecotError("capability list unknown: start Dovecot with every capability once first")
            # an explicit list (no leading "+") replaces Dovecot's built-in one, before and after login
            capability = f"imap_capability = {' '.join(c for c in self._capabilities if c.upper() not in left_out)}"
        self.config_path.write_text(f"""\
# throwaway test instance written by tests/dovecot.py; no include of /etc/dovecot
base_dir = {d}/run
state_dir = {d}/state
instance_name = emergencyd-test-{d.name}
log_path = {d}/dovecot.log
protocols = imap
listen = {HOST}
default_internal_user = {self._user}
default_internal_group = {self._group}
default_login_user = {self._login_user}
first_valid_uid = 0
auth_mechanisms = {mechanisms}
disable_plaintext_auth = no
mail_fsync = never
shutdown_clients = yes
ssl = yes
ssl_cert = <{d}/cert.pem
ssl_key = <{d}/key.pem
{capability}
{throttling}
{oauth2_passdb}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {d}/passwd
}}
userdb {{
  driver = static
  args = uid={self._user} gid={self._group} home={d}/mail/%u
}}
mail_location = maildir:~/Maildir
namespace inbox {{
  inbox = yes
  separator = /
  mailbox Processed {{
    auto = create
  }}
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = {HOST}
    port = {self.imap_port}
  }}
  inet_listener imaps {{
    address = {HOST}
    port = {self.imaps_port}
    ssl = yes
  }}
}}
service anvil {{
  chroot =
{anvil_penalty}}}
service stats {{
  unix_listener stats-reader {{
    user = {self._user}
    mode = 0600
  }}
  unix_listener stats-writer {{
    user = {self._user}
    mode = 0600
  }}
}}
""")

    # --- lifecycle ---------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 10.0) -> Self:
        """Start on new free ports the first time, on the same ports afterwards."""
        if self.running:
            return self
        began = time.monotonic()
        fresh_ports = not self.imap_port
        attempts = 5
        for attempt in range(attempts):
            if fresh_ports:
                self.imap_port, self.imaps_port = _two_free_ports()
            self._write_config()
            try:
                self._launch(timeout)
                self.start_seconds = time.monotonic() - began
                self._event(f"started in {self.start_seconds * 1000:.0f} ms, pid {self.proc.pid}, "
                            f"imap {self.imap_port}, imaps {self.imaps_port}, idle={self.idle_enabled}")
                return self
            except _BindFailed:
                self._event(f"bind failed on {self.imap_port}/{self.imaps_port} (attempt {attempt + 1})")
                if attempt == attempts - 1:
                    raise DovecotError(f"could not bind IMAP ports after {attempts} attempts\n{self.log_tail()}")
                if not fresh_ports:   # restart on the same ports: somebody else has one, wait a bit
                    time.sleep(0.2)
        raise AssertionError("unreachable")

    def _launch(self, timeout: float) -> None:
        log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.stderr_path, "ab") as err:
            # own process group, so kill() and cleanup reach every Dovecot child by this pgid
            self.proc = subprocess.Popen([self.binary, "-F", "-c", str(self.config_path)],
                                         stdin=subprocess.DEVNULL, stdout=err, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                text = self._log_since(log_offset) + self.stderr_path.read_text("utf-8", "replace")
                self.proc = None
                if _BIND_FAILED.search(text):
                    raise _BindFailed()
                raise DovecotError(f"dovecot exited during start:\n{text[-5000:]}")
            if _BIND_FAILED.search(self._log_since(log_offset)):
                self._kill_group(signal.SIGKILL)   # it exits by itself too, in ~20 ms
                self.proc = None
                raise _BindFailed()
            if self._greets(self.imap_port, tls=False) and self._greets(self.imaps_port, tls=True):
                return
            if time.monotonic() > deadline:
                self._kill_group(signal.SIGKILL)
                self.proc = None
                raise DovecotError(f"dovecot gave no '* OK' greeting in {timeout}s\n{self.log_tail()}")
            time.sleep(0.01)

    def _greets(self, port: int, *, tls: bool) -> bool:
        """True once the port answers with the IMAP "* OK" greeting (over verified TLS for IMAPS)."""
        try:
            raw = socket.create_connection((HOST, port), timeout=0.5)
        except OSError:
            return False
        sock = raw
        try:
            if tls:
                sock = self.client_ssl_context().wrap_socket(raw, server_hostname=HOST)
            sock.settimeout(0.5)   # whoever else holds the port (a lost race) may never greet
            data = b""
            while b"\r\n" not in data:
                chunk = sock.recv(4096)
                if not chunk:
                    return False
                data += chunk
            return data.startswith(b"* OK")
        except (OSError, ssl.SSLError):
            return False
        finally:
            sock.close()   # wrap_socket() detaches raw: closing raw would leave the SSLSocket open
            raw.close()

    def stop(self, grace: float = 0.3) -> None:
        """SIGTERM to every Dovecot process, SIGKILL to what is left after `grace` seconds.

        Signalling the master alone is not enough: `dovecot -F` then exits after a second but
        leaves its imap processes, and their clients, connected. SIGTERM to the whole process
        group ends them in ~10 ms, but the master sometimes sleeps a second or more waiting to
        reap a child, hence the SIGKILL. Clients see the connection close (no "* BYE").
        """
        if self.proc is None:
            return
        began, how = time.monotonic(), "had exited"
        if self.proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.proc.wait(grace)
                how = "SIGTERM"
            except subprocess.TimeoutExpired:
                how = f"SIGTERM, SIGKILL after {grace}s"
        self._kill_group(signal.SIGKILL)
        self._event(f"stopped ({how}) in {(time.monotonic() - began) * 1000:.0f} ms")
        self.proc = None

    def kill(self) -> None:
        """SIGKILL Dovecot and all its processes at once: a crash, no goodbye to clients."""
        if self.proc is None:
            return
        self._kill_group(signal.SIGKILL)
        self._event("killed (SIGKILL)")
        self.proc = None

    def _signal_group(self, sig: int) -> None:
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, sig)   # the group Popen(start_new_session=True) made
            except (ProcessLookupError, PermissionError):
                pass

    def _kill_group(self, sig: int) -> None:
        if self.proc is None:
            return
        self._signal_group(sig)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self._event(f"pid {self.proc.pid} still there 10 s after signal {sig}")
        self._wait_sockets_released()

    def _wait_sockets_released(self, patience: float = 10.0) -> None:
        """Until no process of the old instance answers on its Unix sockets. The master is reaped at once, but
        a child dying under load may still hold one, and a new master that can connect to it refuses to start
        ("Dovecot is already running?")."""
        deadline = time.monotonic() + patience
        while time.monotonic() < deadline:
            if not any(_answers(path) for path in (self.dir / "run").rglob("*") if path.is_socket()):
                return
            time.sleep(0.02)
        self._event(f"a socket of the old instance still answers {patience:g} s after it was stopped")

    def restart(self) -> Self:
        """Stop and start again on the same ports with the same mail (clients are disconnected)."""
        self.stop()
        return self.start()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.cleanup()

    # --- settings that need a restart ---------------------------------------------------------

    def set_idle_enabled(self, enabled: bool) -> None:
        """Advertise IDLE or not (before and after login); restarts Dovecot if it runs.

        Without IDLE, `imap_capability` lists Dovecot's own capabilities minus IDLE, so a client
        that honours CAPABILITY must fall back to polling (Dovecot still answers an IDLE command).
        """
        if enabled == self.idle_enabled:
            return
        was_running = self.running
        self._learn_capabilities()
        self.idle_enabled = enabled
        if was_running:
            self.restart()
        else:
            self.stop()   # it was only started to learn the capability list

    def leave_out_capability(self, name: str) -> None:
        """Stop advertising a capability (SASL-IR, say), before and after login; restarts Dovecot if it runs."""
        was_running = self.running
        self._learn_capabilities()
        self.left_out_capabilities.add(name.upper())
        if was_running:
            self.restart()
        else:
            self.stop()

    def _learn_capabilities(self) -> None:
        """Dovecot's own capability list, from a start with every capability (the first one)."""
        if self._capabilities is None:
            if not self.running:
                self.start()
            self._capabilities = self.capabilities()

    def set_login_throttling(self, enabled: bool) -> None:
        """False: a wrong password is refused at once, every time; restarts Dovecot if it runs.

        By default Dovecot answers a failed login after 2 s, and repeated failures from one IP
        after up to 15 s (its auth penalty). That throttles any client, however fast it retries;
        without it (as with providers that answer at once) only the client's own pacing counts.
        """
        if enabled == self.login_throttling:
            return
        self.login_throttling = enabled
        if self.running:
            self.restart()

    # --- the test's own IMAP client (stdlib imaplib) ------------------------------------------

    def client(self, *, tls: bool = False) -> imaplib.IMAP4:
        """A logged-in stdlib imaplib client; use as a context manager."""
        if tls:
            conn = imaplib.IMAP4_SSL(HOST, self.imaps_port, ssl_context=self.client_ssl_context(), timeout=10)
        else:
            conn = imaplib.IMAP4(HOST, self.imap_port, timeout=10)
        conn.login(USERNAME, PASSWORD)
        return conn

    def client_ssl_context(self) -> ssl.SSLContext:
        """Verifies the IMAPS certificate, trusting only the test CA."""
        return ssl.create_default_context(cafile=str(self.ca_file))

    def capabilities(self) -> list[str]:
        """CAPABILITY after login."""
        with self.client() as conn:
            typ, data = conn.capability()
            _ok(typ, data, "CAPABILITY")
            return data[0].decode().split()

    def append(self, raw: bytes, mailbox: str = "INBOX") -> int:
        """APPEND a message from another client; returns its UID (from APPENDUID)."""
        with self.client() as conn:
            typ, data = conn.append(mailbox, None, None, raw)
            _ok(typ, data, f"APPEND {mailbox}")
            match = re.search(rb"APPENDUID (\d+) (\d+)", data[0] or b"")
            return int(match.group(2)) if match else 0

    def append_many(self, raws: list[bytes], mailbox: str = "INBOX") -> list[int]:
        """APPEND every message in order over one connection (fast for big backlogs); their UIDs."""
        uids = []
        with self.client() as conn:
            for raw in raws:
                typ, data = conn.append(mailbox, None, None, raw)
                _ok(typ, data, f"APPEND {mailbox}")
                match = re.search(rb"APPENDUID (\d+) (\d+)", data[0] or b"")
                uids.append(int(match.group(2)) if match else 0)
        return uids

    def uids(self, mailbox: str = "INBOX") -> list[int]:
        with self.client() as conn:
            self._examine(conn, mailbox)
            typ, data = conn.uid("SEARCH", "ALL")
            _ok(typ, data, "UID SEARCH")
            return sorted(int(u) for u in data[0].split())

    def fetch_all(self, mailbox: str = "INBOX") -> dict[int, bytes]:
        """{uid: raw message} in UID order, without setting \\Seen."""
        with self.client() as conn:
            self._examine(conn, mailbox)
            typ, data = conn.uid("FETCH", "1:*", "(UID BODY.PEEK[])")
            _ok(typ, data, "UID FETCH")
            messages: dict[int, bytes] = {}
            for item in data:
                if isinstance(item, tuple):
                    match = re.search(rb"UID (\d+)", item[0])
                    messages[int(match.group(1))] = item[1]
            return dict(sorted(messages.items()))

    def uidvalidity(self, mailbox: str = "INBOX") -> int:
        with self.client() as conn:
            typ, data = conn.status(mailbox, "(UIDVALIDITY)")
            _ok(typ, data, "STATUS")
            return int(re.search(rb"UIDVALIDITY (\d+)", data[0]).group(1))

    def flags(self, mailbox: str = "INBOX") -> dict[int, str]:
        """{uid: flags string} e.g. {1: '\\Seen'}."""
        with self.client() as conn:
            self._examine(conn, mailbox)
            typ, data = conn.uid("FETCH", "1:*", "(UID FLAGS)")
            _ok(typ, data, "UID FETCH FLAGS")
            result = {}
            for line in data:
                if isinstance(line, bytes):
                    match = re.search(rb"UID (\d+) FLAGS \(([^)]*)\)|FLAGS \(([^)]*)\) UID (\d+)", line)
                    if match:
                        uid = match.group(1) or match.group(4)
                        result[int(uid)] = (match.group(2) if match.group(1) else match.group(3)).decode()
            return result

    def reset_uidvalidity(self, mailbox: str = "INBOX", *, deliver: tuple[bytes, ...] = ()) -> int:
        """Make the mailbox's UIDVALIDITY change, the way a server rebuild does; returns the new one.

        The messages stay, but get new UIDs under the new UIDVALIDITY. Dovecot is stopped while
        its dovecot-uidlist and index files for the mailbox are removed, then started again on
        the same ports (connected clients are disconnected, as a real rebuild would).
        `deliver`: messages put into the mailbox while Dovecot is down (so no client sees them
        before the new UIDVALIDITY); the renumbering may put them before or after the others.
        """
        before = self.uidvalidity(mailbox)
        self.stop()
        folder = self._maildir_folder(mailbox)
        removed = False
        for path in folder.glob("dovecot*"):
            if path.is_file() and (path.name == "dovecot-uidlist" or path.name.startswith("dovecot.index")):
                path.unlink()
                removed = True
        if not removed:
            raise DovecotError(f"no dovecot-uidlist/index files for {mailbox} in {folder}")
        for raw in deliver:
            self.deliver(raw, mailbox)
        self.start()
        after = self.uidvalidity(mailbox)
        if after == before:
            raise DovecotError(f"UIDVALIDITY of {mailbox} did not change ({before})")
        return after

    # --- the mail files themselves -------------------------------------------------------------

    _delivered = itertools.count(1)

    def _maildir_folder(self, mailbox: str) -> Path:
        """Maildir++ layout: INBOX is the Maildir itself, other mailboxes are .Name folders."""
        maildir = self.mail_root / USERNAME / "Maildir"
        return maildir if mailbox.upper() == "INBOX" else maildir / ("." + mailbox.replace("/", "."))

    def deliver(self, raw: bytes, mailbox: str = "INBOX") -> Path:
        """Put a message into the mailbox's maildir the way a local delivery agent does.

        Written to tmp/ and renamed into new/, owned like Dovecot's own files; Dovecot gives it
        a UID when it next looks at the mailbox. The mailbox must exist already.
        """
        folder = self._maildir_folder(mailbox)
        if not (folder / MAILDIR_NEW).is_dir():
            raise DovecotError(f"mailbox {mailbox} has no maildir at {folder}")
        name = f"{time.time_ns() // 1000}.M{next(self._delivered)}P{os.getpid()}.emergencyd-test,S={len(raw)}"
        staged = folder / "tmp" / name
        staged.write_bytes(raw)
        staged.chmod(0o600)
        if self.is_root:
            os.chown(staged, pwd.getpwnam(self._user).pw_uid, grp.getgrnam(self._group).gr_gid)
        final = folder / MAILDIR_NEW / name
        staged.rename(final)
        return final

    def set_mailbox_writable(self, mailbox: str, writable: bool) -> None:
        """False: the mailbox's maildir directories become read-only, so Dovecot cannot add mail
        to it (APPEND, COPY and MOVE into it fail with NO); True restores their modes.

        Dovecot's mail processes never run as root (see the module doc), so the modes bind them.
        The mailbox must exist already (select it once, e.g. with uids()).
        """
        folder = self._maildir_folder(mailbox)
        dirs = [folder] + [folder / sub for sub in ("cur", MAILDIR_NEW, "tmp")]
        if not all(d.is_dir() for d in dirs):
            raise DovecotError(f"mailbox {mailbox} has no maildir at {folder}")
        saved = self._saved_modes
        for d in dirs:
            if writable:
                if d in saved:
                    d.chmod(saved.pop(d))
            else:
                saved.setdefault(d, d.stat().st_mode & 0o7777)
                d.chmod(0o555)

    @staticmethod
    def _examine(conn: imaplib.IMAP4, mailbox: str) -> None:
        typ, data = conn.select(mailbox, readonly=True)
        _ok(typ, data, f"EXAMINE {mailbox}")

    # --- logs ---------------------------------------------------------------------------------

    def log_text(self) -> str:
        text = self.log_path.read_text("utf-8", "replace") if self.log_path.exists() else ""
        if self.stderr_path.exists() and self.stderr_path.stat().st_size:
            text += "\n--- dovecot stderr ---\n" + self.stderr_path.read_text("utf-8", "replace")
        return text

    def log_tail(self, chars: int = 5000) -> str:
        return ("--- dovecot lifecycle ---\n" + "\n".join(self.events) +
                f"\n--- dovecot log ({self.log_path}) ---\n{self.log_text()[-chars:]}")

    def _event(self, text: str) -> None:
        self.events.append(f"{time.strftime('%H:%M:%S')} {text}")

    def _log_since(self, offset: int) -> str:
        if not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")


class _BindFailed(Exception):
    pass


def _ok(typ: str, data, what: str) -> None:
    if typ != "OK":
        raise DovecotError(f"{what} failed: {typ} {data}")
