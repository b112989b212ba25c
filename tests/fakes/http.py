"""Base for the HTTPS fakes: a threaded TLS server that records requests and injects faults.

A subclass implements `route(req) -> Response` (its API logic, called under
`self.state_lock`) and may override `common_headers`, `error_body` and
`default_success_status`. Everything else lives here:

* every request is recorded (`.requests`), including the fault it received;
* faults can be injected per path regex / method and for a number of requests:
  status codes, delays, dropped connections, malformed bodies, an outage, and holds.

Faults that answer instead of the API (status, drop, malformed, down) never call
`route`, so they never change the fake's state. Delay and hold call `route` first
(the state changes) and only withhold the response.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import sys
import threading
import time
from dataclasses import dataclass, field
from email.message import Message
from email.utils import formatdate
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .tls import TestCA

JSON_TYPE = "application/json; charset=utf-8"


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def json_response(status: int, obj: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(status, json.dumps(obj).encode(), {"Content-Type": JSON_TYPE, **(headers or {})})


def http_date(seconds_from_now: float = 0.0) -> str:
    """An RFC 7231 date, e.g. for `Retry-After: <http-date>`."""
    return formatdate(time.time() + seconds_from_now, usegmt=True)


@dataclass
class RecordedRequest:
    method: str
    path: str  # without the query string
    query: dict[str, str]  # first value of each parameter
    query_lists: dict[str, list[str]]  # every value, for repeated parameters like statuses[]
    headers: Message  # case-insensitive .get() / []
    body: bytes
    json: Any  # decoded body, or None if it was empty or not JSON
    received_at: float  # time.monotonic()
    fault: str | None = None  # e.g. "status:429", "drop", "hold"; None if answered normally
    status: int | None = None  # status answered; None if dropped, still held, or the send failed
    # (a client that vanished is not always noticed: TCP may accept the write)


class Hold:
    """Withholds the response to matching requests until `release()`.

    The request has already been applied to the fake's state when `wait_received`
    returns, which is what crash tests need: the side effect exists, the client
    never learned about it.
    """

    def __init__(self) -> None:
        self._released = threading.Event()
        self._arrived = threading.Condition()
        self.received: list[RecordedRequest] = []

    def wait_received(self, timeout: float = 5.0) -> RecordedRequest | None:
        """Block until a held request has been applied; return it (None on timeout)."""
        with self._arrived:
            self._arrived.wait_for(lambda: self.received, timeout)
            return self.received[0] if self.received else None

    def release(self) -> None:
        self._released.set()

    @property
    def released(self) -> bool:
        return self._released.is_set()

    def _note_arrival(self, rec: RecordedRequest) -> None:
        with self._arrived:
            self.received.append(rec)
            self._arrived.notify_all()

    def _wait_for_release(self) -> None:
        self._released.wait()


@dataclass
class _Fault:
    kind: str  # status | delay | drop | malformed | hold
    path: re.Pattern[str] | None
    method: str | None
    times: int | None  # None: until cleared
    status: int | None = None
    body: Any = None
    headers: dict[str, Any] = field(default_factory=dict)  # values may be callables
    seconds: float = 0.0
    hold: Hold | None = None

    def matches(self, method: str, target: str) -> bool:
        if self.method is not None and self.method != method:
            return False
        return self.path is None or self.path.search(target) is not None

    @property
    def label(self) -> str:
        if self.kind == "status":
            return f"status:{self.status}"
        if self.kind == "delay":
            return f"delay:{self.seconds:g}"
        return self.kind


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the real APIs
    server: _TLSServer

    def setup(self) -> None:
        # Handshake here, in the connection's own thread, so a slow or failing
        # client cannot stall the accept loop.
        self.request.settimeout(10)
        # Headers and body go out in two writes: without this, Nagle holds the body
        # for the client's delayed ACK, adding ~40 ms to every answer.
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.request.do_handshake()
        self.request.settimeout(None)
        super().setup()
        self.server.fake._track(self.request, True)

    def finish(self) -> None:
        self.server.fake._track(self.request, False)
        super().finish()

    def _dispatch(self) -> None:
        self.server.fake._serve(self)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _dispatch

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # the recording replaces access logs


class _TLSServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # held requests must not block stop()

    def __init__(self, fake: FakeHTTPSServer, ssl_context: ssl.SSLContext) -> None:
        self.fake = fake
        super().__init__(("127.0.0.1", 0), _Handler)
        self.socket = ssl_context.wrap_socket(
            self.socket, server_side=True, do_handshake_on_connect=False
        )

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that vanish (timeouts, kill -9, rejected certificates) are part of
        # the tests; only unexpected errors deserve a traceback.
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


class FakeHTTPSServer:
    """HTTPS server on 127.0.0.1:<random port>, serving in a daemon thread."""

    def __init__(self, ca: TestCA | None = None) -> None:
        self.ca = ca or TestCA()
        self._server = _TLSServer(self, self.ca.server_ssl_context())
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # guards requests, faults, connections
        self.state_lock = threading.RLock()  # guards the subclass's API state
        self._requests: list[RecordedRequest] = []
        self._faults: list[_Fault] = []
        self._down = False
        self._connections: set[socket.socket] = set()
        self._active_holds: list[Hold] = []  # holds withholding a response right now
        self._stopped = False
        self.errors: list[BaseException] = []  # exceptions raised by `route`: bugs in the fake

    # --- lifecycle -------------------------------------------------------

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> FakeHTTPSServer:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": 0.01},  # also bounds how long stop() waits
                name=f"{type(self).__name__}:{self.port}",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and cut open connections, so clients see the service gone."""
        if self._stopped:
            return
        self._stopped = True
        if self._thread is not None:
            self._server.shutdown()
        self._server.server_close()
        self.clear_faults()  # releases holds, so their threads finish
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            _close_quietly(conn)

    def __enter__(self) -> FakeHTTPSServer:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    # --- recording -------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def requests_matching(self, path: str | None = None, method: str | None = None) -> list[RecordedRequest]:
        """Recorded requests whose path matches the regex `path` (re.search) and `method`."""
        pattern = re.compile(path) if path else None
        return [
            r
            for r in self.requests
            if (method is None or r.method == method) and (pattern is None or pattern.search(r.path))
        ]

    def wait_for_requests(
        self, path: str | None = None, method: str | None = None, count: int = 1, timeout: float = 5.0
    ) -> list[RecordedRequest]:
        deadline = time.monotonic() + timeout
        while True:
            found = self.requests_matching(path, method)
            if len(found) >= count or time.monotonic() >= deadline:
                return found
            time.sleep(0.01)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    # --- fault injection -------------------------------------------------
    # `path` is a regex searched in the request target (path and query string);
    # `method` is an exact upper-case method; `times=None` means until cleared.

    def inject_status(
        self,
        status: int,
        body: Any = None,
        headers: dict[str, Any] | None = None,
        *,
        times: int | None = 1,
        path: str | None = None,
        method: str | None = None,
    ) -> None:
        """Answer `status` instead of the API.

        body: bytes or str are sent as is, anything else as JSON; None means the
        service's own error shape for that status and path (`error_body`).
        headers: a value may be a callable, evaluated when the response is sent, e.g.
        {"Retry-After": lambda: http_date(2)} for a date relative to that moment.
        """
        self._add_fault(
            _Fault("status", *self._filters(path, method), times, status=status, body=body, headers=headers or {})
        )

    def inject_delay(
        self, seconds: float, *, times: int | None = 1, path: str | None = None, method: str | None = None
    ) -> None:
        """Apply the request normally, then wait `seconds` before answering."""
        self._add_fault(_Fault("delay", *self._filters(path, method), times, seconds=seconds))

    def inject_drop(self, *, times: int | None = 1, path: str | None = None, method: str | None = None) -> None:
        """Close the connection without any response.

        (Over TLS a FIN and a RST look the same to requests and httpx2: an unexpected
        EOF, "Remote end closed connection" / "Server disconnected".)
        """
        self._add_fault(_Fault("drop", *self._filters(path, method), times))

    def inject_malformed(
        self,
        *,
        status: int | None = None,
        body: bytes = b"<html><body><h1>200 OK</h1></body></html>",
        content_type: str = "text/html; charset=utf-8",
        times: int | None = 1,
        path: str | None = None,
        method: str | None = None,
    ) -> None:
        """Answer a success status (default: what the endpoint would give) with a non-JSON body."""
        self._add_fault(
            _Fault(
                "malformed",
                *self._filters(path, method),
                times,
                status=status,
                body=body,
                headers={"Content-Type": content_type},
            )
        )

    def set_down(self, down: bool = True) -> None:
        """While down, every request gets 503 (and changes nothing)."""
        with self._lock:
            self._down = down

    def hold(self, *, path: str | None = None, method: str | None = None, times: int | None = 1) -> Hold:
        hold = Hold()
        self._add_fault(_Fault("hold", *self._filters(path, method), times, hold=hold))
        return hold

    def clear_faults(self) -> None:
        """Remove every fault, end an outage, and release all holds."""
        with self._lock:
            holds = [f.hold for f in self._faults if f.hold is not None] + self._active_holds
            self._faults.clear()
            self._active_holds = []
            self._down = False
        for hold in holds:
            hold.release()

    # --- hooks for subclasses --------------------------------------------

    def route(self, req: RecordedRequest) -> Response:
        raise NotImplementedError

    def common_headers(self, req: RecordedRequest) -> dict[str, str]:
        """Headers on every response (faults included), e.g. rate-limit headers."""
        return {}

    def error_body(self, status: int, req: RecordedRequest) -> Any:
        """Body for an injected status without an explicit body (and for `set_down`)."""
        return {"error": HTTPStatus(status).phrase}

    def default_success_status(self, req: RecordedRequest) -> int:
        """The success status of the endpoint; used by `inject_malformed`."""
        return 200

    # --- internals -------------------------------------------------------

    @staticmethod
    def _filters(path: str | None, method: str | None) -> tuple[re.Pattern[str] | None, str | None]:
        return (re.compile(path) if path else None, method.upper() if method else None)

    @staticmethod
    def _encode_body(body: Any) -> tuple[bytes, str]:
        if isinstance(body, bytes):
            return body, "application/octet-stream"
        if isinstance(body, str):
            return body.encode(), "text/plain; charset=utf-8"
        return json.dumps(body).encode(), JSON_TYPE

    def _add_fault(self, fault: _Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def _take_fault(self, method: str, target: str) -> _Fault | None:
        """The first matching fault, with one use consumed. Caller holds self._lock."""
        if self._down:
            return _Fault("down", None, None, None, status=503)
        for fault in self._faults:
            if fault.matches(method, target):
                if fault.times is not None:
                    fault.times -= 1
                    if fault.times <= 0:
                        self._faults.remove(fault)
                if fault.hold is not None:
                    self._active_holds.append(fault.hold)
                return fault
        return None

    def _track(self, conn: socket.socket, active: bool) -> None:
        with self._lock:
            (self._connections.add if active else self._connections.discard)(conn)

    def _serve(self, handler: _Handler) -> None:
        rec = self._record(handler)
        with self._lock:
            fault = self._take_fault(rec.method, handler.path)
            rec.fault = fault.label if fault else None
            self._requests.append(rec)

        if fault is None or fault.kind in ("delay", "hold"):
            response = self._route_safely(rec)
        elif fault.kind == "drop":
            handler.close_connection = True
            _close_quietly(handler.request)
            return
        elif fault.kind == "malformed":
            status = fault.status or self.default_success_status(rec)
            response = Response(status, fault.body, dict(fault.headers))
        else:  # status or down
            status = fault.status or 503
            raw, content_type = self._encode_body(self.error_body(status, rec) if fault.body is None else fault.body)
            response = Response(status, raw, {"Content-Type": content_type, **fault.headers})

        if fault is not None and fault.kind == "delay":
            time.sleep(fault.seconds)
        if fault is not None and fault.hold is not None:
            fault.hold._note_arrival(rec)
            fault.hold._wait_for_release()

        response.headers = {
            name: value() if callable(value) else value
            for name, value in {**self.common_headers(rec), **response.headers}.items()
        }
        rec.status = response.status  # before sending: the client may look at once
        try:
            _send(handler, response)
        except OSError:
            # The client gave up (timeout, crash) while we delayed or held: expected.
            rec.status = None
            handler.close_connection = True

    def _route_safely(self, rec: RecordedRequest) -> Response:
        try:
            with self.state_lock:
                return self.route(rec)
        except Exception as exc:  # a bug in the fake: answer 500, keep it for the test to see
            self.errors.append(exc)
            return Response(500, f"fake server error: {exc!r}".encode(), {"Content-Type": "text/plain"})

    @staticmethod
    def _record(handler: _Handler) -> RecordedRequest:
        split = urlsplit(handler.path)
        query_lists = parse_qs(split.query, keep_blank_values=True)
        body = _read_body(handler)
        try:
            decoded = json.loads(body) if body else None
        except ValueError:
            decoded = None
        return RecordedRequest(
            method=handler.command,
            path=split.path,
            query={k: v[0] for k, v in query_lists.items()},
            query_lists=query_lists,
            headers=handler.headers,
            body=body,
            json=decoded,
            received_at=time.monotonic(),
        )


def _read_body(handler: _Handler) -> bytes:
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(chunks)
            chunks.append(handler.rfile.read(size))
            handler.rfile.readline()  # CRLF after each chunk
    length = int(handler.headers.get("Content-Length") or 0)
    return handler.rfile.read(length) if length else b""


def _send(handler: _Handler, response: Response) -> None:
    handler.send_response(response.status)  # also sends Server and Date
    for name, value in response.headers.items():
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(response.body)))
    handler.end_headers()
    if handler.command != "HEAD":
        handler.wfile.write(response.body)


def _close_quietly(conn: socket.socket) -> None:
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        conn.close()
    except OSError:
        pass
