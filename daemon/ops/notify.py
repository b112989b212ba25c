"""sd_notify(3) with the standard library: READY, WATCHDOG, STATUS and STOPPING for systemd.

Outside systemd ($NOTIFY_SOCKET unset) every call does nothing. A name starting with
"@" is an abstract socket, as systemd documents.
"""
from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger("emergencyd.notify")


class SystemdNotifier:
    def __init__(self, environ: Mapping[str, str] | None = None):
        environ = os.environ if environ is None else environ
        address = environ.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self._socket: socket.socket | None = None
        if self._address:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        usec = environ.get("WATCHDOG_USEC", "")
        pid = environ.get("WATCHDOG_PID", "")
        # WATCHDOG_PID names the process the watchdog is meant for; a child must not take it over.
        applies = usec.isdigit() and (not pid or pid == str(os.getpid()))
        self.watchdog_seconds = int(usec) / 1_000_000 if applies and int(usec) > 0 else None

    @property
    def enabled(self) -> bool:
        return self._socket is not None

    def send(self, **fields: str | int) -> None:
        """send(READY=1, STATUS="...") -> 'READY=1\\nSTATUS=...'; failures are logged, never raised."""
        if self._socket is None:
            return
        text = "\n".join(f"{key}={str(value).replace(chr(10), ' ')}" for key, value in fields.items())
        try:
            self._socket.sendto(text.encode("utf-8"), self._address)
        except OSError as exc:
            log.warning("sd_notify failed", extra={"error": str(exc)})

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
