"""An SMTP client on a bare socket, for protocol abuse that smtplib refuses to send.

It sends exactly the bytes it is given (bare LF, bare CR, NUL, smuggling sequences,
pipelined commands) and keeps every reply line it reads, so tests assert on the
server's real reply codes and texts. It can also speak as a load balancer would: a PROXY
header (v1 text or v2 binary) before the SMTP session, from a chosen local source address.
"""
from __future__ import annotations

import ipaddress
import socket
import sqlite3
import ssl
import struct
from pathlib import Path

from tests.harness import RECIPIENT


class RawSmtp:
    def __init__(self, port: int, *, timeout: float = 20.0, proxy: bytes = b"", source: str | None = None):
        """`proxy` is sent first, as a load balancer's PROXY header; `source` is the local address to connect from."""
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                             source_address=(source, 0) if source else None)
        self._buffer = b""
        self.transcript: list[str] = []   # every reply line read, in order
        if proxy:
            self.send(proxy)
        self.greeting = self.reply()

    def __enter__(self) -> "RawSmtp":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def end_input(self) -> None:
        """Half-close: the server sees end of file, as when a client dies mid-DATA."""
        self.sock.shutdown(socket.SHUT_WR)

    def _line(self) -> str | None:
        while b"\r\n" not in self._buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                if self._buffer:
                    raise AssertionError(f"connection closed inside a reply line: {self._buffer!r}")
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\r\n", 1)
        text = line.decode("utf-8", "replace")
        self.transcript.append(text)
        return text

    def reply(self) -> list[str]:
        """The lines of one whole reply (all of a multiline one); [] once the server has closed."""
        lines: list[str] = []
        while True:
            line = self._line()
            if line is None:
                if lines:
                    raise AssertionError(f"connection closed inside a multiline reply: {lines}")
                return lines
            lines.append(line)
            if len(line) < 4 or line[3] != "-":
                return lines

    def command(self, data: bytes) -> list[str]:
        """Send one command (with whatever line ending it carries) and read its reply."""
        self.send(data)
        return self.reply()

    def starttls(self, context: ssl.SSLContext) -> None:
        """STARTTLS, which must be accepted, then the TLS handshake on the same socket."""
        assert code(self.command(b"STARTTLS\r\n")) == 220, self.transcript
        self.sock = context.wrap_socket(self.sock, server_hostname="127.0.0.1")

    def replies_until_closed(self) -> list[list[str]]:
        """Every reply still to come, until the server closes the connection."""
        replies = []
        while reply := self.reply():
            replies.append(reply)
        return replies

    def start_data(self, *, sender: str = "tenant@example.net", recipient: str = RECIPIENT,
                   eol: bytes = b"\r\n") -> None:
        """EHLO, MAIL, RCPT, DATA, each of which must be accepted; then the message may follow."""
        assert code(self.command(b"EHLO mx.example.net" + eol)) == 250, self.transcript
        assert code(self.command(b"MAIL FROM:<" + sender.encode() + b">" + eol)) == 250, self.transcript
        assert code(self.command(b"RCPT TO:<" + recipient.encode() + b">" + eol)) == 250, self.transcript
        assert code(self.command(b"DATA" + eol)) == 354, self.transcript


def code(reply: list[str]) -> int:
    assert reply, "no reply: the server closed the connection"
    return int(reply[-1][:3])


def codes(replies: list[list[str]]) -> list[int]:
    return [code(r) for r in replies]


def proxy_v1(source: str, source_port: int, destination: str = "127.0.0.1", destination_port: int = 25) -> bytes:
    family = "TCP6" if ipaddress.ip_address(source).version == 6 else "TCP4"
    return f"PROXY {family} {source} {destination} {source_port} {destination_port}\r\n".encode("ascii")


PROXY_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def proxy_v2(source: str, source_port: int, destination: str = "127.0.0.1", destination_port: int = 25, *,
             version_command: int = 0x21) -> bytes:
    """The binary header HAProxy's send-proxy-v2 writes: version 2, PROXY, TCP over IPv4 (0x11) or IPv6 (0x21)."""
    src, dst = ipaddress.ip_address(source), ipaddress.ip_address(destination)
    addresses = src.packed + dst.packed + struct.pack("!HH", source_port, destination_port)
    family_protocol = 0x21 if src.version == 6 else 0x11
    return PROXY_V2_SIGNATURE + struct.pack("!BBH", version_command, family_protocol, len(addresses)) + addresses


def dot_stuff(message: bytes) -> bytes:
    """RFC 5321 4.5.2 transparency, as a sending MTA applies it to CRLF lines."""
    return b"\r\n".join(b"." + line if line.startswith(b".") else line for line in message.split(b"\r\n"))


def as_received(data: bytes) -> bytes:
    """What a server keeps of DATA lines (CRLF-split, without the final '.' line): one leading dot removed."""
    return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in data.split(b"\r\n"))


def stored_raw(store_path: Path) -> dict[str, bytes]:
    """message_id -> the stored bytes, read straight from the store file (read-only)."""
    conn = sqlite3.connect(f"file:{store_path}?mode=ro", uri=True)
    try:
        return {mid: raw for mid, raw in conn.execute("SELECT message_id, raw FROM messages ORDER BY id")}
    finally:
        conn.close()


def stored_envelopes(store_path: Path) -> list[dict]:
    """The committed envelopes (peer, tls, mail_from), read straight from the store file (read-only)."""
    conn = sqlite3.connect(f"file:{store_path}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT peer, tls, mail_from FROM messages ORDER BY id").fetchall()
    finally:
        conn.close()
    return [{"peer": peer, "tls": bool(tls), "mail_from": mail_from} for peer, tls, mail_from in rows]


def done_steps(store_path: Path, message_id: str) -> set[str]:
    """The steps of one message that the store has committed as done, read straight from the file (read-only).

    The store is the truth: a kill -9 can land between a commit and its log line.
    """
    if not store_path.exists():
        return set()
    conn = sqlite3.connect(f"file:{store_path}?mode=ro", uri=True, timeout=5)
    try:
        rows = conn.execute("SELECT s.name FROM steps s JOIN messages m ON m.id = s.message_pk"
                            " WHERE m.message_id = ? AND s.state = 'done'", (message_id,)).fetchall()
    finally:
        conn.close()
    return {name for (name,) in rows}
