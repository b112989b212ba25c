"""A recording DNS server on loopback for the DKIM key lookups: UDP and TCP on one port, in a thread.

It answers TXT queries from a table set by the test (`set_txt`), NXDOMAIN for any other
name, and records every query. Faults: `drop(name)` never answers that name (the
resolver's timeout path), `servfail(name)` answers SERVFAIL (as a validating resolver
does for a bogus DNSSEC answer), and `max_udp_bytes` caps UDP replies whatever the query's EDNS
size says, so a long record comes back truncated and the client must ask again over TCP.
Messages are built and read with dnspython's message API, as a real server's would be.
"""
from __future__ import annotations

import selectors
import socket
import struct
import threading
from dataclasses import dataclass

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from dns.rdtypes.ANY.TXT import TXT

TTL = 300


@dataclass(frozen=True)
class Query:
    name: str            # lower-case, with the trailing dot
    rdtype: str          # "TXT", "A", ...
    transport: str       # "udp" or "tcp"


class FakeDns:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._txt: dict[str, list[bytes]] = {}
        self._dropped: set[str] = set()
        self._servfail: set[str] = set()
        self._queries: list[Query] = []
        self.max_udp_bytes: int | None = None
        self._udp, self._tcp = _bind_pair()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="fake-dns", daemon=True)

    # -- life ------------------------------------------------------------------------------

    def __enter__(self) -> "FakeDns":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stopping.set()
        self._thread.join(5)
        self._udp.close()
        self._tcp.close()

    @property
    def port(self) -> int:
        return self._udp.getsockname()[1]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    # -- control and inspection ------------------------------------------------------------

    def set_txt(self, name: str, value: str | bytes) -> None:
        """One TXT record, split into strings of 255 bytes as a zone file would store it."""
        data = value.encode() if isinstance(value, str) else value
        with self._lock:
            self._txt[_key(name)] = [data[i:i + 255] for i in range(0, len(data), 255)] or [b""]

    def drop(self, name: str) -> None:
        """Queries for this name get no answer at all."""
        with self._lock:
            self._dropped.add(_key(name))

    def servfail(self, name: str) -> None:
        with self._lock:
            self._servfail.add(_key(name))

    def queries(self, name: str | None = None) -> list[Query]:
        with self._lock:
            return [q for q in self._queries if name is None or q.name == _key(name)]

    # -- serving ---------------------------------------------------------------------------

    def _serve(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._udp, selectors.EVENT_READ)
            selector.register(self._tcp, selectors.EVENT_READ)
            while not self._stopping.is_set():
                for key, _ in selector.select(timeout=0.05):
                    if key.fileobj is self._udp:
                        self._serve_udp()
                    else:
                        self._serve_tcp()

    def _serve_udp(self) -> None:
        wire, peer = self._udp.recvfrom(65535)
        query = self._parse(wire, "udp")
        if query is None:
            return
        response = self._answer(query)
        if response is not None:
            self._udp.sendto(_to_wire(response, self._udp_limit(query)), peer)

    def _serve_tcp(self) -> None:
        connection, _ = self._tcp.accept()
        with connection:
            connection.settimeout(2)
            try:
                (length,) = struct.unpack("!H", _read(connection, 2))
                query = self._parse(_read(connection, length), "tcp")
                response = self._answer(query) if query is not None else None
                if response is not None:
                    wire = response.to_wire(max_size=65535)     # not the query's EDNS size: that is UDP's
                    connection.sendall(struct.pack("!H", len(wire)) + wire)
            except (OSError, ConnectionError):
                pass              # the client went away; nothing to answer

    def _parse(self, wire: bytes, transport: str) -> dns.message.Message | None:
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None
        if query.question:
            question = query.question[0]
            with self._lock:
                self._queries.append(Query(question.name.to_text().lower(),
                                           dns.rdatatype.to_text(question.rdtype), transport))
        return query

    def _answer(self, query: dns.message.Message) -> dns.message.Message | None:
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if not query.question:
            response.set_rcode(dns.rcode.FORMERR)
            return response
        question = query.question[0]
        name = question.name.to_text().lower()
        with self._lock:
            if name in self._dropped:
                return None
            strings = self._txt.get(name)
            failing = name in self._servfail
        if failing:
            response.set_rcode(dns.rcode.SERVFAIL)
        elif strings is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif question.rdtype == dns.rdatatype.TXT:
            rdata = TXT(dns.rdataclass.IN, dns.rdatatype.TXT, strings)
            response.answer.append(dns.rrset.from_rdata(question.name, TTL, rdata))
        return response                      # a name with TXT only: NOERROR, no answer, for other types

    def _udp_limit(self, query: dns.message.Message) -> int:
        limit = max(512, query.payload) if query.edns >= 0 else 512
        return min(limit, self.max_udp_bytes) if self.max_udp_bytes else limit


def _key(name: str) -> str:
    return name.lower().rstrip(".") + "."


def _bind_pair() -> tuple[socket.socket, socket.socket]:
    """A UDP port on 127.0.0.1 and the same TCP port, as a resolver expects (retried if TCP's is taken)."""
    for _ in range(20):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            tcp.bind(udp.getsockname())
        except OSError:
            udp.close()
            tcp.close()
            continue
        tcp.listen(8)
        return udp, tcp
    raise OSError("no port free for both UDP and TCP on 127.0.0.1")


def _to_wire(response: dns.message.Message, limit: int) -> bytes:
    """The response, or its header and question with TC set when it does not fit (RFC 1035 4.2.1)."""
    try:
        return response.to_wire(max_size=limit)
    except dns.exception.TooBig:
        response.answer.clear()
        response.flags |= dns.flags.TC
        return response.to_wire(max_size=limit)


def _read(connection: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = connection.recv(count - len(data))
        if not chunk:
            raise ConnectionError("closed early")
        data += chunk
    return data
