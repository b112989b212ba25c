"""A real, throwaway PostgreSQL cluster on 127.0.0.1 for tests (never a mock), as tests/dovecot.py is for IMAP.

`Postgres().start()` runs Debian's `initdb` into a fresh directory and starts the server with `pg_ctl` on a free
port, listening on 127.0.0.1 and on a Unix socket in the same directory, with password logins for one role
(`emergencyd`, password PASSWORD) that owns one database (`emergencyd`). As root, the cluster belongs to the
package's `postgres` user (the server refuses to run as root); as a normal user, to that user. `stop()` stops it
fast; `cleanup()` removes the directory. The server's log is in `log_path` (`log_tail()`).

The test side asks it with `psql` (`query`), a client separate from the code under test.
"""
from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Self

from tests.harness import free_port

HOST = "127.0.0.1"
ROLE = DATABASE = "emergencyd"
PASSWORD = "pg-test-pw-7c2e9a"      # a test secret, like the Zendesk token: never to appear in logs
START_SECONDS = 30.0


class PostgresError(RuntimeError):
    pass


def postgres_bin_dir() -> Path | None:
    """Debian's versioned binaries (/usr/lib/postgresql/N/bin), the newest; None when the package is missing."""
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
                      key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    return versions[-1].parent if versions else None


class Postgres:
    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.directory = Path(tempfile.mkdtemp(prefix="emergencyd-pg-"))
        self.data = self.directory / "data"
        self.log_path = self.directory / "postgres.log"
        self.port = free_port()
        self._user = "postgres" if os.geteuid() == 0 else None
        self._databases = 0

    @property
    def dsn(self) -> str:
        """A libpq DSN without the password (it comes from the environment or a file, as in production)."""
        return f"host={HOST} port={self.port} dbname={DATABASE} user={ROLE}"

    def start(self) -> Self:
        first = not self.data.exists()
        if first:
            self._init()
        self._run(self._tool("pg_ctl"), "-D", self.data, "-l", self.log_path, "-w", "-t", str(int(START_SECONDS)),
                  "-o", f"-p {self.port} -k {self.directory} -c listen_addresses={HOST}", "start")
        if first:
            self._psql("postgres", f"CREATE DATABASE {DATABASE} OWNER {ROLE}")
        return self

    def new_database(self) -> str:
        """A fresh, empty database owned by the role, for one test; its DSN (without the password)."""
        self._databases += 1
        name = f"{DATABASE}_{self._databases}"
        self._psql("postgres", f"CREATE DATABASE {name} OWNER {ROLE}")
        return f"host={HOST} port={self.port} dbname={name} user={ROLE}"

    def make_standby(self) -> "Postgres":
        """A second cluster streaming from this one (pg_basebackup -R), started on a port of its own."""
        standby = Postgres(self.bin_dir)
        if standby._user is not None:
            owner = pwd.getpwnam(standby._user)
            os.chown(standby.directory, owner.pw_uid, owner.pw_gid)
        standby._run(standby._tool("pg_basebackup"), "-D", standby.data, "-R", "-X", "stream", "-c", "fast",
                     "-d", f"host={HOST} port={self.port} user={ROLE} password={PASSWORD}")
        return standby.start()

    def promote(self) -> None:
        """A standby becomes a primary that takes writes."""
        self._run(self._tool("pg_ctl"), "-D", self.data, "-w", "promote")

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run(self._tool("pg_ctl"), "-D", self.data, "-m", "fast", "-w", "stop", check=False)

    def cleanup(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)

    def query(self, sql: str) -> str:
        """The result of `sql` as psql prints it unaligned, rows on lines, fields split by |."""
        return self._psql(DATABASE, sql)

    def query_database(self, dsn: str, sql: str) -> str:
        """`query` on the database that `dsn` (one of new_database's) names."""
        return self._psql(dsn.split("dbname=", 1)[1].split()[0], sql)

    def _psql(self, database: str, sql: str) -> str:
        result = subprocess.run([str(self._tool("psql")), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                                 "-h", HOST, "-p", str(self.port), "-U", ROLE, "-d", database, "-c", sql],
                                env={**os.environ, "PGPASSWORD": PASSWORD}, capture_output=True, text=True,
                                timeout=30)
        if result.returncode != 0:
            raise PostgresError(f"psql failed: {result.stderr.strip()}")
        return result.stdout.strip()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no PostgreSQL log)"

    def _init(self) -> None:
        password_file = self.directory / "password"
        password_file.write_text(PASSWORD + "\n")
        if self._user is not None:   # the cluster's files belong to the user the server runs as
            owner = pwd.getpwnam(self._user)
            for path in (self.directory, password_file):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        try:
            self._run(self._tool("initdb"), "-D", self.data, "-U", ROLE, "--pwfile", password_file,
                      "--auth-local=scram-sha-256", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8")
        finally:
            password_file.unlink()

    def _tool(self, name: str) -> Path:
        return self.bin_dir / name

    def _run(self, *argv: object, check: bool = True) -> subprocess.CompletedProcess:
        command = [str(a) for a in argv]
        if self._user is not None:
            command = ["runuser", "-u", self._user, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=START_SECONDS + 30,
                                cwd=self.directory)
        if check and result.returncode != 0:
            raise PostgresError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()}\n"
                                f"{self.log_tail()}")
        return result
