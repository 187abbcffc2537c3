"""Prometheus metrics and health: the objects both sides feed, and the HTTP listener.

The listener serves ``/metrics`` (Prometheus text), ``/healthz`` (the process answers) and
``/readyz`` (every backend reachable with its known host key, from a cached background check).

One ``Metrics`` per gateway process, on its own registry (tests run several gateways in one
process). Labels stay low-cardinality: FTP verbs outside pyftpdlib's command table are
folded into ``OTHER``, reply codes into classes (``2xx``), user names never appear.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, make_wsgi_app

from gateway import __version__

_TRANSFER_SECONDS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 1800, 3600)


class Metrics:
    """The gateway's metrics (names documented in README, "Metrics")."""

    def __init__(self, known_commands: Iterable[str] = ()) -> None:
        self.registry = r = CollectorRegistry()
        self.known_commands = frozenset(known_commands)
        self.sessions_active = Gauge("ftpgw_sessions_active", "FTP sessions connected now", registry=r)
        self.sessions = Counter(
            "ftpgw_sessions", "FTP sessions ended, by whether they logged in", ["result"], registry=r
        )
        self.logins = Counter(
            "ftpgw_logins", "FTP login attempts by result and route", ["result", "route"], registry=r
        )
        self.commands = Counter(
            "ftpgw_commands", "FTP commands by verb and reply class", ["command", "code_class"], registry=r
        )
        self.transfers = Counter(
            "ftpgw_transfers", "File transfers by direction and result", ["direction", "result"], registry=r
        )
        self.transfer_bytes = Counter(
            "ftpgw_transfer_bytes",
            "Bytes moved over FTP data connections",
            ["direction", "backend"],
            registry=r,
        )
        self.transfer_seconds = Histogram(
            "ftpgw_transfer_duration_seconds",
            "Duration of file transfers",
            ["direction"],
            buckets=_TRANSFER_SECONDS,
            registry=r,
        )
        self.backend_connects = Counter(
            "ftpgw_backend_connects",
            "New SSH connections to backends by result",
            ["backend", "result"],
            registry=r,
        )
        Info("ftpgw_build", "Gateway version", registry=r).info({"version": __version__})
        self._server: WSGIServer | None = None

    def command(self, verb: str, code: int) -> None:
        """Count one FTP command and the class of its reply."""
        name = verb if verb in self.known_commands else "OTHER"
        self.commands.labels(name, f"{code // 100}xx").inc()

    def transfer(self, receiving: bool, completed: bool, nbytes: int, seconds: float, backend: str) -> None:
        """Count one finished or failed transfer; its bytes are counted exactly once, here."""
        direction = "upload" if receiving else "download"
        self.transfers.labels(direction, "ok" if completed else "failed").inc()
        self.transfer_bytes.labels(direction, backend).inc(nbytes)
        self.transfer_seconds.labels(direction).observe(seconds)

    def serve(self, address: str, port: int, readiness: Callable[[], list[str]]) -> int:
        """Start the HTTP listener in a daemon thread; returns its port.

        ``readiness`` returns the reasons the gateway is not ready (empty when it is).
        """
        metrics_app = make_wsgi_app(self.registry)

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
            path = environ.get("PATH_INFO", "")
            if path == "/healthz":
                start_response("200 OK", [("Content-Type", "text/plain")])
                return [b"ok\n"]
            if path == "/readyz":
                problems = readiness()
                status = "503 Service Unavailable" if problems else "200 OK"
                start_response(status, [("Content-Type", "text/plain")])
                return ["".join(f"{p}\n" for p in problems or ["ready"]).encode()]
            result: list[bytes] = metrics_app(environ, start_response)
            return result

        server_class = _Server6 if ":" in address else _Server
        server = make_server(address, port, app, server_class, handler_class=_QuietHandler)
        threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
        self._server = server
        return int(server.server_port)

    def stop(self) -> None:
        """Stop the listener."""
        if self._server is not None:
            threading.Thread(target=self._server.shutdown, daemon=True).start()
            self._server.server_close()


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not worth a log line each."""
