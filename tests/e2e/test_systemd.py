"""systemd integration: the unit file as systemd-analyze judges it, and sd_notify over a real socket."""
from __future__ import annotations

import re
import subprocess
import time

from tests.harness import (
    ROOT,
    DaemonProcess,
    NotifySocket,
    live_env,
    make_message,
    require_tool,
    write_config,
)

UNIT = ROOT / "systemd" / "emergencyd.service"
MAX_EXPOSURE = 2.0


def installed_unit(tmp_path):
    """The unit as installed: ExecStart must name an executable that exists, here this checkout's."""
    text = UNIT.read_text().replace("/opt/emergencyd/.venv/bin/emergencyd", str(ROOT / ".venv" / "bin" / "emergencyd"))
    path = tmp_path / "emergencyd.service"
    path.write_text(text)
    return path


def test_unit_file_verifies(tmp_path):
    analyze = require_tool("systemd-analyze")
    result = subprocess.run([analyze, "verify", str(installed_unit(tmp_path))], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "emergencyd.service" not in result.stderr, result.stderr   # no warnings about the unit


def test_unit_file_is_hardened(tmp_path):
    analyze = require_tool("systemd-analyze")
    result = subprocess.run([analyze, "security", "--offline=yes", str(installed_unit(tmp_path))],
                            capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for emergencyd\.service: ([\d.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout


def test_unit_file_speaks_notify_with_a_watchdog_and_all_credentials():
    text = UNIT.read_text()
    for line in ("Type=notify", "Restart=on-failure", "DynamicUser=yes", "StateDirectory=emergencyd",
                 "AmbientCapabilities=CAP_NET_BIND_SERVICE"):
        assert f"\n{line}\n" in text, line
    assert re.search(r"\nWatchdogSec=\d+s\n", text)
    credentials = set(re.findall(r"\nLoadCredential=([\w-]+):", text))
    assert credentials == {"zendesk-token", "pagerduty-routing-key", "pagerduty-api-token", "imap-password",
                           "fallback-password", "smtp-users"}


def test_ready_watchdog_status_and_stopping(tmp_path, zendesk, pagerduty, ca_file):
    notify = NotifySocket(tmp_path / "notify.sock")
    config = write_config(tmp_path, dry_run=False, zendesk_url=zendesk.url, pagerduty_url=pagerduty.url,
                          ca_file=ca_file, policy=True)
    env = {**live_env(), "NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "600000"}   # pet every 0.3 s
    daemon = DaemonProcess(config=config, env=env, log_path=tmp_path / "daemon.log").start()
    try:
        ready = notify.wait_for("READY")
        assert ready["READY"] == "1"
        assert "0 escalations pending" in ready["STATUS"] and "last page none" in ready["STATUS"]
        first = len(notify.received)
        notify.wait_for("WATCHDOG", after=first)
        pets = sum("WATCHDOG" in m for m in notify.received)
        deadline = time.monotonic() + 10
        while sum("WATCHDOG" in m for m in notify.received) < pets + 3 and time.monotonic() < deadline:
            notify.drain()
        assert sum("WATCHDOG" in m for m in notify.received) >= pets + 3, notify.received   # it keeps petting

        daemon.send(make_message())
        daemon.wait_settled(1)
        status = notify.wait_for("STATUS", after=len(notify.received))
        deadline = time.monotonic() + 10
        while "last page none" in status["STATUS"] and time.monotonic() < deadline:   # refreshed with the pets
            status = notify.wait_for("STATUS", after=len(notify.received))
        assert "last page 20" in status["STATUS"], status
        assert len(pagerduty.incidents()) == 1
        before_stop = len(notify.received)
        assert daemon.stop() == 0
        assert notify.wait_for("STOPPING", after=before_stop)["STOPPING"] == "1"
    finally:
        daemon.stop()
        notify.close()


def test_without_notify_socket_nothing_is_required(start_daemon):
    daemon = start_daemon(dry_run=True)
    assert daemon.http_get("/healthz")[0] == 200
    assert "sd_notify failed" not in daemon.log_text()
