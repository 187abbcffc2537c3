"""Prometheus metrics: the objects both sides feed, and the /metrics HTTP listener.

One ``Metrics`` per gateway process, on its own registry (tests run several gateways in one
process). Labels stay low-cardinality: FTP verbs outside pyftpdlib's command table are
folded into ``OTHER``, reply codes into classes (``2xx``), user names never appear.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_wsgi_server

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

    def serve(self, address: str, port: int) -> int:
        """Start the /metrics listener in a daemon thread; returns its port."""
        server, _ = start_wsgi_server(port, addr=address, registry=self.registry)
        self._server = server
        return int(server.server_port)

    def stop(self) -> None:
        """Stop the listener."""
        if self._server is not None:
            threading.Thread(target=self._server.shutdown, daemon=True).start()
            self._server.server_close()
