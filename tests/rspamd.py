"""A real, throwaway rspamd on 127.0.0.1 for tests (never a mock).

`Rspamd()` copies Debian's /etc/rspamd into a fresh directory (the system one is never changed),
points its scanner at a free port, and starts `rspamd -f` on it, offline: DNS goes to a port where
nothing answers, and the modules that need the network or redis (RBLs, SURBL, fuzzy, SPF/DKIM/DMARC,
greylisting, rate limits, neural, reputation) are off; what is left are its local rules (MIME,
headers, HTML, URLs, regexps, GTUBE). It compiles its regexps at start: ready in 10-30 s on two
cores, so the suite starts one per session. As root its workers run as the package's _rspamd user.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import requests

from tests.harness import free_port, require_tool

_OFF = ("rbl", "surbl", "fuzzy_check", "spf", "dkim", "dmarc", "arc", "asn", "greylist", "ratelimit",
        "history_redis", "neural", "reputation", "url_reputation", "emails", "phishing", "dkim_signing")
START_SECONDS = 90


class Rspamd:
    def __init__(self) -> None:
        self.binary = require_tool("rspamd")
        self.root = Path(tempfile.mkdtemp(prefix="emergencyd-rspamd-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> "Rspamd":
        conf = self.root / "conf"
        shutil.copytree("/etc/rspamd", conf)
        local = conf / "local.d"
        local.mkdir(exist_ok=True)
        for name in ("run", "db", "log"):
            (self.root / name).mkdir()
        (local / "options.inc").write_text('dns { nameserver = ["127.0.0.1:9"]; timeout = 0.1s; retransmits = 0; }\n'
                                           "local_addrs = [];\n")
        (local / "logging.inc").write_text(f'type = "file";\nfilename = "{self.root}/log/rspamd.log";\n'
                                           'level = "warning";\n')
        (local / "worker-normal.inc").write_text(f'bind_socket = "127.0.0.1:{self.port}";\ncount = 1;\n')
        (local / "worker-controller.inc").write_text(f'bind_socket = "127.0.0.1:{free_port()}";\ncount = 1;\n')
        (local / "worker-proxy.inc").write_text("enabled = false;\n")
        for module in _OFF:
            (local / f"{module}.conf").write_text("enabled = false;\n")
        user = []
        if os.geteuid() == 0:
            for name in ("run", "db", "log"):
                shutil.chown(self.root / name, "_rspamd", "_rspamd")
            self.root.chmod(0o755)
            user = ["-u", "_rspamd", "-g", "_rspamd"]
        self.process = subprocess.Popen(
            [self.binary, "-f", *user, "-c", str(conf / "rspamd.conf"), f"--var=CONFDIR={conf}",
             f"--var=LOCAL_CONFDIR={conf}", f"--var=DBDIR={self.root}/db", f"--var=RUNDIR={self.root}/run",
             f"--var=LOGDIR={self.root}/log"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"rspamd exited with {self.process.returncode}: {self.log_tail()}")
            try:
                if requests.get(self.url + "/ping", timeout=1).text.strip() == "pong":
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"rspamd did not answer /ping within {START_SECONDS} s: {self.log_tail()}")

    def check(self, raw: bytes) -> dict:
        """The scanner's own answer, asked by the test side."""
        return requests.post(self.url + "/checkv2", data=raw, timeout=30).json()

    def log_tail(self) -> str:
        path = self.root / "log" / "rspamd.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else "(no log)"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        shutil.rmtree(self.root, ignore_errors=True)
