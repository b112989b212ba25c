"""systemd integration: sd_notify over a real NOTIFY_SOCKET datagram socket."""
from __future__ import annotations

import socket
import time

from tests.harness import DaemonProcess, live_env, make_message, write_config


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
