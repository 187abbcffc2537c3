"""The small HTTP(S) listener behind /metrics, /healthz and /readyz, built to outlast slow clients.

A slowloris client (a few bytes now and then on many sockets) must not take the health
endpoints down: in Kubernetes a failed liveness probe restarts the gateway. So:

* one thread runs an asyncio loop; a connection waiting for its request costs a socket,
  not a thread;
* the whole request (the TLS handshake included) must arrive within ``REQUEST_DEADLINE``
  seconds, however it trickles in; the reply must leave within ``REPLY_DEADLINE``;
* at most ``MAX_WAITING`` connections wait for their request: a newer one pushes the
  oldest out, so a flood of slow sockets cannot keep a probe's fresh connection away;
* cheap answers (the probes, 401, 404) are made on the loop; slow work (rendering
  /metrics, which reads the pools and the usage store) runs on its own threads, at most
  ``MAX_SLOW`` at a time (503 beyond), so a slow scrape never delays a probe.

Every reply closes its connection (``Connection: close``): Prometheus and the kubelet
open one connection per request anyway.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

#: Seconds from accept to a complete request head (TLS handshake included).
REQUEST_DEADLINE = 5.0
#: Seconds to hand the reply to the client.
REPLY_DEADLINE = 10.0
#: Connections waiting for their request at once; beyond, the oldest is closed.
MAX_WAITING = 256
#: Requests being answered off the loop at once (scrapes); beyond, 503.
MAX_SLOW = 8
#: Longest request head accepted (request line and headers).
MAX_HEAD = 8192

_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
log = logging.getLogger("gateway.httpd")


@dataclass(frozen=True)
class Request:
    """A parsed request head: method, path (no query), headers (lower-case names), the query
    string and the client's address."""

    method: str
    path: str
    headers: dict[str, str]
    query: str = ""
    peer: str = ""


@dataclass(frozen=True)
class Response:
    """A complete reply."""

    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = field(default=())

    def encode(self, with_body: bool = True) -> bytes:
        """The reply as bytes on the wire."""
        lines = [
            f"HTTP/1.1 {self.status} {_REASONS.get(self.status, 'Unknown')}",
            f"Content-Type: {self.content_type}",
            f"Content-Length: {len(self.body)}",
            "Connection: close",
            *(f"{name}: {value}" for name, value in self.headers),
        ]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return head + self.body if with_body else head


#: Answers a request: a Response made at once (on the loop), or a callable that makes it
#: on a worker thread (slow work).
Handler = Callable[[Request], "Response | Callable[[], Response]"]


class _BadRequest(Exception):
    pass


def parse_head(head: bytes) -> Request:
    """Parse a request head (up to and including the blank line); _BadRequest if malformed."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise _BadRequest
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, colon, value = line.partition(":")
        if not colon:
            raise _BadRequest
        headers[name.strip().lower()] = value.strip()
    path, _, query = parts[1].partition("?")
    return Request(parts[0], path, headers, query)


class HTTPListener:
    """Serves ``handler`` on ``address``:``port`` (HTTPS with ``tls``) from a daemon thread."""

    def __init__(self, address: str, port: int, handler: Handler, tls: ssl.SSLContext | None = None) -> None:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        # Bound here, so a port in use fails the start with its reason.
        self._sock = socket.create_server((address, port), family=family, backlog=128)
        self.port: int = self._sock.getsockname()[1]
        self._handler, self._tls = handler, tls
        self._loop = asyncio.new_event_loop()
        self._waiting: dict[asyncio.Task[None], None] = {}  # insertion order: oldest first
        self._slow = ThreadPoolExecutor(max_workers=MAX_SLOW, thread_name_prefix="metrics-http-work")
        self._slow_running = 0
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._run, name="metrics-http", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._serve, sock=self._sock, limit=MAX_HEAD)
        )
        self._loop.run_forever()

    def stop(self) -> None:
        """Stop listening and close every connection (returns at once)."""

        def close() -> None:
            if self._server is not None:
                self._server.close()
            for task in asyncio.all_tasks(self._loop):
                task.cancel()
            self._loop.call_later(0.1, self._loop.stop)

        if self._loop.is_running():
            self._loop.call_soon_threadsafe(close)
        else:
            self._sock.close()
        self._slow.shutdown(wait=False, cancel_futures=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._waiting[task] = None
        if len(self._waiting) > MAX_WAITING:
            next(iter(self._waiting)).cancel()  # the oldest: its client had the longest time
        try:
            try:
                async with asyncio.timeout(REQUEST_DEADLINE):
                    if self._tls is not None:
                        await writer.start_tls(self._tls)
                    head = await reader.readuntil(b"\r\n\r\n")
            finally:
                self._waiting.pop(task, None)
            try:
                peer = writer.get_extra_info("peername")
                request: Request | None = dataclasses.replace(parse_head(head), peer=peer[0] if peer else "")
            except _BadRequest:
                request = None
            response = Response(400, b"bad request\n") if request is None else await self._answer(request)
            writer.write(response.encode(with_body=request is None or request.method != "HEAD"))
            async with asyncio.timeout(REPLY_DEADLINE):
                await writer.drain()
            writer.close()
        except (OSError, TimeoutError, ssl.SSLError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            writer.transport.abort()
        except asyncio.CancelledError:
            writer.transport.abort()  # pushed out by newer connections, or the listener stops

    async def _answer(self, request: Request) -> Response:
        admin = request.path.startswith("/admin/")  # the only place that takes a POST
        if request.method not in ("GET", "HEAD") and not (admin and request.method == "POST"):
            allowed = "GET, HEAD, POST" if admin else "GET, HEAD"
            return Response(405, b"method not allowed\n", headers=(("Allow", allowed),))
        try:
            answer = self._handler(request)
            if isinstance(answer, Response):
                return answer
            if self._slow_running >= MAX_SLOW:
                return Response(503, b"busy\n", headers=(("Retry-After", "1"),))
            self._slow_running += 1
            try:
                return await asyncio.get_running_loop().run_in_executor(self._slow, answer)
            finally:
                self._slow_running -= 1
        except Exception:
            log.exception("answering %s %s failed", request.method, request.path)
            return Response(500, b"internal error\n")


def server_context(certfile: str, keyfile: str, ciphers: str) -> ssl.SSLContext:
    """A TLS server context: TLS 1.2 or newer, TLS 1.2 limited to ``ciphers``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(ciphers)
    context.load_cert_chain(certfile, keyfile)
    return context
