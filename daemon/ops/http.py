"""/metrics, /healthz and /readyz on the daemon's own loop, and the status page at / when it is on: a tiny
HTTP/1.1 server.

Only GET of these paths, one request per connection; anything else is 404/405.
Bounded reads and a timeout, so a slow or hostile client cannot hold it.
"""
from __future__ import annotations

import asyncio
import json
import logging
from typing import Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from emergencyd.daemon.config.model import HostPort
from emergencyd.daemon.ops.metrics import Metrics

log = logging.getLogger("emergencyd.http")

ReadyCheck = Callable[[], Awaitable[dict[str, str]]]   # check name -> "ok" or why not
GaugeRefresh = Callable[[], Awaitable[None]]            # reads what the gauges show from the store
Details = Callable[[], dict[str, str]]                  # what /readyz also shows, never making it fail
Page = Callable[[], Awaitable[str]]                     # the status page's HTML
# The page runs no script and loads nothing: a subject a tenant wrote can do nothing even if escaping failed.
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
                "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
REQUEST_TIMEOUT_SECONDS = 5.0
REFRESH_TIMEOUT_SECONDS = 2.0   # a wedged store must not hang the scrape: its gauges keep their last values
PAGE_TIMEOUT_SECONDS = 5.0      # the status page reads the store and the checks
MAX_HEADER_BYTES = 8192


async def start_http(listen: HostPort, metrics: Metrics, readiness: ReadyCheck,
                     refresh: GaugeRefresh, details: Details, page: Page | None = None) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        headers: dict[str, str] = {}
        try:
            method, path = await asyncio.wait_for(_read_request(reader), REQUEST_TIMEOUT_SECONDS)
            if path == "/" and page is not None and method in ("GET", "HEAD"):
                status, content_type, body = await _status_page(page)
                headers = PAGE_HEADERS
            else:
                status, content_type, body = await _route(method, path, metrics, readiness, refresh, details)
        except (asyncio.TimeoutError, ValueError, asyncio.LimitOverrunError, asyncio.IncompleteReadError):
            status, content_type, body = 400, "text/plain", b"bad request\n"
        try:
            writer.write(_response(status, content_type, body, headers))
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, listen.host, listen.port, limit=MAX_HEADER_BYTES)


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str]:
    request_line = (await reader.readuntil(b"\r\n")).decode("latin-1").strip()
    parts = request_line.split()
    if len(parts) != 3:
        raise ValueError("malformed request line")
    total = 0
    while True:   # skip headers; nothing here needs them
        line = await reader.readuntil(b"\r\n")
        total += len(line)
        if total > MAX_HEADER_BYTES:
            raise ValueError("headers too large")
        if line == b"\r\n":
            break
    return parts[0], parts[1].split("?", 1)[0]


async def _route(method: str, path: str, metrics: Metrics, readiness: ReadyCheck,
                 refresh: GaugeRefresh, details: Details) -> tuple[int, str, bytes]:
    if path not in ("/metrics", "/healthz", "/readyz"):
        return 404, "text/plain", b"not found\n"
    if method not in ("GET", "HEAD"):
        return 405, "text/plain", b"method not allowed\n"
    if path == "/metrics":
        await _refreshed(refresh)
        return 200, CONTENT_TYPE_LATEST, generate_latest(metrics.registry)
    if path == "/healthz":
        return 200, "text/plain", b"ok\n"
    checks = await readiness()
    ready = all(v == "ok" for v in checks.values())
    body = json.dumps({"ready": ready, "checks": checks, "details": details()}, sort_keys=True).encode() + b"\n"
    return (200 if ready else 503), "application/json", body


async def _status_page(page: Page) -> tuple[int, str, bytes]:
    """The page, or a 503 saying why: a wedged store must not hang the on-call's browser."""
    try:
        return 200, "text/html; charset=utf-8", (await asyncio.wait_for(page(), PAGE_TIMEOUT_SECONDS)).encode()
    except Exception as exc:
        log.warning("status page not served", extra={"error": repr(exc)})
        return 503, "text/plain; charset=utf-8", f"status page unavailable: {type(exc).__name__}\n".encode()


async def _refreshed(refresh: GaugeRefresh) -> None:
    try:
        await asyncio.wait_for(refresh(), REFRESH_TIMEOUT_SECONDS)
    except Exception as exc:   # the scrape still answers; the store's own checks say what is wrong
        log.warning("metrics served with the store's gauges as last read", extra={"error": repr(exc)})


def _response(status: int, content_type: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
              503: "Service Unavailable"}[status]
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n{extra}"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    return head.encode("latin-1") + body
