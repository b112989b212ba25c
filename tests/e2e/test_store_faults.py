"""The store failing under the real daemon: corrupt, locked, read-only, full.

What must hold whatever the fault: a 250 only for mail that is committed, a 4xx
(451 4.3.0) so the sending MTA keeps the mail and retries, nothing half-written, and
a store the daemon cannot use is refused at start with exit code 3 and the file's
name, and is never rewritten, moved or deleted.

The stores are made by `emergencyd inject` (the same durable path as SMTP), so each
test starts from a real, migrated store file.
"""
from __future__ import annotations

import ctypes
import json
import os
import resource
import shutil
import signal
import smtplib
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import (
    RECIPIENT,
    DaemonProcess,
    base_env,
    make_message,
    run_cli,
    write_config,
)
from tests.raw_smtp import RawSmtp, code, codes


def is_store_failure(reply: list[str]) -> bool:
    """One reply line, 451 4.3.0: a temporary failure, so the sending MTA keeps the mail and retries."""
    return len(reply) == 1 and reply[0].startswith("451 4.3.0 ")


@pytest.fixture
def daemon_for(tmp_path):
    """daemon_for(config, preexec_fn=None) -> a DaemonProcess, not started; every one is killed afterwards."""
    made: list[DaemonProcess] = []

    def make(config: Path, *, preexec_fn=None) -> DaemonProcess:
        daemon = DaemonProcess(config=config, env=base_env(), log_path=tmp_path / "daemon.log",
                               preexec_fn=preexec_fn)
        made.append(daemon)
        return daemon

    yield make
    for daemon in made:
        if daemon.proc and daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait(10)


def seeded_store(tmp_path: Path, count: int = 1, *, body_lines: int = 3) -> tuple[Path, Path]:
    """A dry-run config and its store, holding `count` messages put in by `emergencyd inject`."""
    config = write_config(tmp_path, dry_run=True)
    files = []
    for i in range(count):
        path = tmp_path / f"seed{i}.eml"
        path.write_bytes(make_message(message_id=f"<seed{i}@example.net>", subject=f"Seed {i}",
                                      body="\r\n".join(f"line {n} of seed {i}" for n in range(body_lines))))
        files.append(str(path))
    run_cli(config, "inject", *files)
    return config, tmp_path / "var" / "store.sqlite3"


def refused_start(daemon: DaemonProcess) -> str:
    """Start a daemon that must refuse to start; its output. Fails the test if it becomes ready."""
    try:
        daemon.start()
    except RuntimeError:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait(10)
            pytest.fail(f"the daemon neither started nor exited:\n{daemon.log_text()}")
        return daemon.log_text()
    daemon.stop()
    pytest.fail(f"the daemon started on a store it cannot use:\n{daemon.log_text()[-3000:]}")


def assert_clear_store_error(daemon: DaemonProcess, output: str, store: Path) -> None:
    assert daemon.proc.returncode == 3, output
    assert f"emergencyd: cannot open store {store}: " in output, output
    assert "Traceback" not in output, output


def corrupt_page(store: Path, table: str) -> None:
    """Overwrite the root page of `table` with a pattern: the header and the schema stay valid."""
    conn = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    try:
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        root = conn.execute("SELECT rootpage FROM sqlite_master WHERE type = 'table' AND name = ?",
                            (table,)).fetchone()[0]
    finally:
        conn.close()
    with open(store, "r+b") as f:
        f.seek((root - 1) * page_size)
        f.write(b"\xde\xad\xbe\xef" * (page_size // 4))


# -- a corrupt store at start --------------------------------------------------------------------------

@pytest.mark.parametrize("damage", ["garbage", "truncated", "header"])
def test_a_corrupt_store_stops_the_start_and_is_left_byte_for_byte(tmp_path, daemon_for, damage):
    config, store = seeded_store(tmp_path, count=20, body_lines=400)
    data = store.read_bytes()
    assert len(data) > 8 * 4096   # a real store of many pages, so "truncated" cuts through its b-trees
    if damage == "garbage":
        store.write_bytes(b"this is not a database\n" * 200)
    elif damage == "truncated":
        store.write_bytes(data[:len(data) // 2])
    else:   # the 100-byte database header overwritten
        store.write_bytes(b"\x00" * 100 + data[100:])
    before, mode = store.read_bytes(), store.stat().st_mode

    daemon = daemon_for(config)
    output = refused_start(daemon)
    assert_clear_store_error(daemon, output, store)
    # No silent data loss: the corrupt file is still there, unchanged, for recovery.
    assert store.read_bytes() == before and store.stat().st_mode == mode
    status = run_cli(config, "status", check=False)
    assert status.returncode == 3 and str(store) in status.stderr and "Traceback" not in status.stderr
    assert store.read_bytes() == before


def test_a_store_with_a_corrupt_page_stops_the_start(tmp_path, daemon_for):
    config, store = seeded_store(tmp_path, count=2)
    corrupt_page(store, "steps")
    before = store.read_bytes()
    daemon = daemon_for(config)
    output = refused_start(daemon)
    assert_clear_store_error(daemon, output, store)
    assert store.read_bytes() == before


def test_status_on_a_store_with_a_corrupt_page_is_a_clear_error(tmp_path):
    config, store = seeded_store(tmp_path, count=2)
    corrupt_page(store, "messages")
    result = run_cli(config, "status", "--json", check=False)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 3 and str(store) in result.stderr


# -- a store locked by another process -----------------------------------------------------------------

def test_a_store_locked_at_start_answers_451_until_released_then_takes_the_retry_once(tmp_path, daemon_for):
    config, store = seeded_store(tmp_path)
    locker = sqlite3.connect(store, isolation_level=None)
    assert locker.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    locker.execute("BEGIN EXCLUSIVE")   # another process holds the write lock from before the start
    try:
        daemon = daemon_for(config).start()   # readers are not blocked in WAL mode: it starts
        status, body = daemon.http_get("/readyz")
        # The probe meets the lock itself, or waits behind this process's own writer that meets it
        # ("... (waited for another writer in this process)"): either way, the same cause.
        assert status == 503 and '"store": "not writable: database is locked' in body, body
        message = make_message(message_id="<during-lock@example.net>")
        with RawSmtp(daemon.smtp_port) as client:
            client.start_data()
            # busy_timeout_ms = 300 (harness config): the commit gives up and the sender is told to retry.
            assert is_store_failure(client.command(message + b".\r\n")), client.transcript
            # The session is still usable: a new transaction is refused the same way, not with a 5xx.
            assert code(client.command(b"RSET\r\n")) == 250
            client.start_data()
            assert is_store_failure(client.command(message + b".\r\n")), client.transcript
            assert codes([client.command(b"QUIT\r\n")]) == [221]
        doc = daemon.status()   # readers still see the store while it is locked
        assert [m["message_id"] for m in doc["messages"]] == ["seed0@example.net"]
    finally:
        locker.execute("ROLLBACK")
        locker.close()

    # Released: the sending MTA's retry is accepted, and it is the first delivery, not a
    # duplicate of a half-written earlier attempt.
    assert daemon.send(message) == {}
    doc = daemon.wait_settled(2)
    by_id = {m["message_id"]: m for m in doc["messages"]}
    assert set(by_id) == {"seed0@example.net", "during-lock@example.net"}
    assert by_id["during-lock@example.net"]["deliveries"] == 1
    assert sum(doc["counts"].values()) == 2
    assert daemon.http_get("/readyz")[0] == 200
    assert daemon.rejected("store_failure") == 2
    assert daemon.proc.poll() is None


def test_a_new_store_locked_before_its_schema_exists_stops_the_start(tmp_path, daemon_for):
    """Creating the schema needs the write lock: past busy_timeout the start fails with exit 3, not a hang."""
    config = write_config(tmp_path, dry_run=True)
    store = tmp_path / "var" / "store.sqlite3"
    store.parent.mkdir()
    locker = sqlite3.connect(store, isolation_level=None)   # a rollback-journal database, no schema
    locker.execute("BEGIN EXCLUSIVE")
    try:
        daemon = daemon_for(config)
        output = refused_start(daemon)
        assert_clear_store_error(daemon, output, store)
        assert "database is locked" in output
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    daemon.start()   # the lock gone, the same store starts and takes mail
    assert daemon.send(make_message()) == {}
    assert len(daemon.wait_settled(1)["messages"]) == 1


# -- a read-only store --------------------------------------------------------------------------------

PR_CAPBSET_DROP = 24
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 1, 2


class ReadOnly:
    """Makes store paths read-only for the daemon, also when the tests run as root (as in CI).

    Root ignores file modes through CAP_DAC_OVERRIDE. As root, the daemon is started with
    that capability (and CAP_DAC_READ_SEARCH) dropped from its bounding set, so the modes
    bind it like any service user; where that is not allowed, `chattr +i` is used instead.
    """

    def __init__(self, scratch: Path):
        self._prctl = ctypes.CDLL(None, use_errno=True).prctl   # resolved before any fork
        self.preexec_fn = None
        self.technique = "chmod"
        self._immutable: list[Path] = []
        self._modes: dict[Path, int] = {}
        if os.geteuid() != 0:
            return
        if self._probe_capability_drop(scratch):
            self.preexec_fn, self.technique = self._drop_dac_override, "chmod, CAP_DAC_OVERRIDE dropped"
        elif self._probe_chattr(scratch):
            self.technique = "chattr +i"
        else:
            message = "as root, neither dropping CAP_DAC_OVERRIDE nor chattr +i works here"
            if os.environ.get("CI"):
                pytest.fail(message)
            pytest.skip(message)

    def _drop_dac_override(self) -> None:
        for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
            if self._prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), f"prctl(PR_CAPBSET_DROP, {cap})")

    def _probe_capability_drop(self, scratch: Path) -> bool:
        probe = scratch / "capability-probe"
        probe.write_bytes(b"")
        probe.chmod(0o444)
        try:
            result = subprocess.run([sys.executable, "-c", "import sys; open(sys.argv[1], 'ab')", str(probe)],
                                    preexec_fn=self._drop_dac_override, capture_output=True, timeout=30, check=False)
        except (OSError, subprocess.SubprocessError):
            return False
        finally:
            probe.unlink()
        return result.returncode != 0 and b"PermissionError" in result.stderr

    def _probe_chattr(self, scratch: Path) -> bool:
        chattr = shutil.which("chattr")
        if not chattr:
            return False
        probe = scratch / "chattr-probe"
        probe.write_bytes(b"")
        ok = subprocess.run([chattr, "+i", str(probe)], check=False, capture_output=True).returncode == 0
        if ok:
            subprocess.run([chattr, "-i", str(probe)], check=True)
        probe.unlink()
        return ok

    def protect(self, path: Path) -> None:
        if self.technique == "chattr +i":
            subprocess.run(["chattr", "+i", str(path)], check=True)
            self._immutable.append(path)
        else:
            self._modes.setdefault(path, path.stat().st_mode & 0o7777)
            path.chmod(0o555 if path.is_dir() else 0o444)

    def release(self, path: Path) -> None:
        if path in self._immutable:
            subprocess.run(["chattr", "-i", str(path)], check=True)
            self._immutable.remove(path)
        if path in self._modes:
            path.chmod(self._modes.pop(path))

    def release_all(self) -> None:
        for path in list(self._immutable) + list(self._modes):
            self.release(path)


@pytest.fixture
def read_only(tmp_path):
    scratch = tmp_path / "probe"
    scratch.mkdir()
    helper = ReadOnly(scratch)
    yield helper
    helper.release_all()   # pytest must be able to remove the directory, chattr +i included


@pytest.mark.parametrize("which", ["directory", "directory and file"])
def test_a_read_only_store_directory_stops_the_start(tmp_path, daemon_for, read_only, which):
    config, store = seeded_store(tmp_path)
    if which == "directory and file":
        read_only.protect(store)
    read_only.protect(store.parent)   # no -wal or -shm file can be created next to the store
    before = store.read_bytes()
    daemon = daemon_for(config, preexec_fn=read_only.preexec_fn)
    output = refused_start(daemon)
    assert_clear_store_error(daemon, output, store)   # SQLite's reason varies with the technique
    assert store.read_bytes() == before
    assert sorted(p.name for p in store.parent.iterdir()) == [store.name]


def test_a_read_only_store_file_is_refused_at_start(tmp_path, daemon_for, read_only):
    """SQLite would open a read-only file read-only and stay so after the file is fixed: the
    daemon would answer 451 until restarted. It refuses to start instead, naming the file."""
    config, store = seeded_store(tmp_path)
    read_only.protect(store)
    before = store.read_bytes()
    daemon = daemon_for(config, preexec_fn=read_only.preexec_fn)
    with pytest.raises(RuntimeError):
        daemon.start()
    assert_clear_store_error(daemon, daemon.log_text(), store)
    assert store.read_bytes() == before


# -- a full disk ---------------------------------------------------------------------------------------

def test_a_full_disk_answers_451_stores_nothing_and_the_retry_succeeds(tmp_path, daemon_for):
    """"Disk full" as RLIMIT_FSIZE on the daemon: a write past the limit fails (EFBIG; SIGXFSZ is
    ignored), as a write to a full filesystem fails with ENOSPC. The WAL cannot grow to hold a big
    message: its commit fails and the sender is told 451, while small mail still fits.
    """
    limit = 1_000_000
    config, store = seeded_store(tmp_path)
    config.write_text(config.read_text().replace("max_message_bytes = 200000", "max_message_bytes = 4000000"))
    assert store.stat().st_size < limit // 4

    def file_size_limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        # Hard limit left open, so the test can "free space" by raising the soft one later.
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    daemon = daemon_for(config, preexec_fn=file_size_limit).start()
    daemon.wait_settled(1)
    big = make_message(message_id="<big@example.net>", subject="Apps down, full logs attached",
                       body=("z" * 76 + "\r\n") * 20_000)
    assert limit < len(big) < 4_000_000

    with RawSmtp(daemon.smtp_port) as client:
        client.start_data()
        assert is_store_failure(client.command(big + b".\r\n")), client.transcript
        assert code(client.command(b"QUIT\r\n")) == 221
    assert daemon.proc.poll() is None
    assert [m["message_id"] for m in daemon.status()["messages"]] == ["seed0@example.net"]
    status, body = daemon.http_get("/readyz")      # the no-op write still passes: the failed commit counts
    assert status == 503 and "the last commit of mail failed" in json.loads(body)["checks"]["store"], body

    # The daemon keeps running and small mail still fits.
    assert daemon.send(make_message(message_id="<small@example.net>")) == {}
    daemon.wait_settled(2)
    assert daemon.http_get("/readyz")[0] == 200

    # Space freed: the sending MTA's retry of the big message is stored, once and whole.
    resource.prlimit(daemon.proc.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    with smtplib.SMTP("127.0.0.1", daemon.smtp_port, timeout=30) as client:
        assert client.sendmail("tenant@example.net", [RECIPIENT], big) == {}
    doc = daemon.wait_settled(3)
    by_id = {m["message_id"]: m for m in doc["messages"]}
    assert set(by_id) == {"seed0@example.net", "small@example.net", "big@example.net"}
    assert by_id["big@example.net"]["deliveries"] == 1
    assert daemon.rejected("store_failure") == 1
    assert daemon.stop() == 0

    conn = sqlite3.connect(store)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        [(raw,)] = conn.execute("SELECT raw FROM messages WHERE message_id = 'big@example.net'").fetchall()
    finally:
        conn.close()
    assert raw == big
