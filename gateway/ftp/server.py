"""Build the FTP server from the configuration: one configured handler class per server.

pyftpdlib is configured through class attributes; mutating FTPHandler itself would leak
settings between servers (and tests), so each server gets fresh subclasses instead.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from typing import Any

from pyftpdlib.ioloop import IOLoop
from pyftpdlib.servers import ThreadedFTPServer

from gateway import proxy_protocol
from gateway.config import GatewayConfig
from gateway.ftp.handler import GatewayDTPHandler, GatewayHandler
from gateway.ftp.tls import GatewayImplicitTLSHandler, GatewayTLSDTPHandler, GatewayTLSHandler, ssl_context
from gateway.guard import Guard
from gateway.metrics import Metrics
from gateway.storage import Authenticate
from gateway.usage.session import Record

log = logging.getLogger("gateway.ftp")

#: Commands dropped when active mode is disabled.
_ACTIVE_COMMANDS = ("PORT", "EPRT")


def handler_class(
    cfg: GatewayConfig,
    authenticate: Authenticate,
    metrics: Metrics | None = None,
    guard: Guard | None = None,
    implicit: bool = False,
    record_usage: Callable[[list[Record]], None] | None = None,
) -> type[GatewayHandler]:
    """A GatewayHandler subclass carrying this configuration (FTPS ones when TLS is on)."""
    low, high = cfg.listen.passive_ports
    base: type[GatewayHandler] = GatewayHandler
    dtp_base: type[GatewayDTPHandler] = GatewayDTPHandler
    tls_attrs: dict[str, Any] = {}
    if cfg.tls.enabled:
        base = GatewayImplicitTLSHandler if implicit else GatewayTLSHandler
        dtp_base = GatewayTLSDTPHandler
        tls_attrs = {
            "ssl_context": ssl_context(cfg.tls.certfile, cfg.tls.keyfile),
            "tls_required": cfg.tls.mode == "required",
            "require_session_reuse": cfg.tls.require_session_reuse,
            "tls_files": (cfg.tls.certfile, cfg.tls.keyfile),
        }
    commands = dict(base.proto_cmds)
    if not cfg.listen.active_mode:
        for name in _ACTIVE_COMMANDS:
            commands.pop(name, None)
    dtp = type("ConfiguredDTPHandler", (dtp_base,), {"timeout": cfg.limits.data_timeout})
    attrs = {
        **tls_attrs,
        "authenticate": staticmethod(authenticate),
        "metrics": metrics,
        "guard": guard,
        "record_usage": staticmethod(record_usage) if record_usage is not None else None,
        "login_grace": cfg.guard.login_grace,
        "proto_cmds": commands,
        "dtp_handler": dtp,
        "passive_ports": list(range(low, high + 1)),
        "masquerade_address": cfg.listen.masquerade_address,
        "proxy_trusted": cfg.listen.proxy_protocol.trusted,
        "proxy_timeout": cfg.listen.proxy_protocol.header_timeout,
        "timeout": cfg.limits.idle_timeout,
        "max_login_attempts": cfg.limits.max_login_attempts,
        "auth_failed_timeout": cfg.limits.failed_login_delay,
    }
    return type("ConfiguredHandler", (base,), attrs)


class GatewayFTPServer(ThreadedFTPServer):  # type: ignore[misc]
    """pyftpdlib's threaded server with an exact connection limit, shared between listeners."""

    group: list[GatewayFTPServer]  # the listeners whose sessions count together

    def _accept_new_cons(self) -> bool:
        # pyftpdlib compares the sessions already running with `<=`, which lets
        # max_cons + 1 in; limits.max_connections is the total, the new one included.
        return bool(sum(server._map_len() for server in self.group) < self.max_cons)

    def handle_accepted(self, sock: socket.socket, addr: tuple[str, int]) -> None:
        if not proxy_protocol.trusted(addr[0], self.handler.proxy_trusted):
            super().handle_accepted(sock, addr)
            return
        # From a trusted balancer: the client's address is in the PROXY header, read on the
        # session's own thread (a slow one then delays no other accept). The per-address
        # checks wait for it (GatewayHandler.greet_proxied); only the total is checked here.
        # Otherwise as pyftpdlib's FTPServer/ThreadedFTPServer.handle_accepted.
        handler: GatewayHandler | None = None
        try:
            handler = self.handler(sock, self, ioloop=self.ioloop)
            if not handler.connected:
                return
            if not self._accept_new_cons():
                handler.remote_ip = ""  # not in ip_map yet: close() must not take the balancer's out
                handler.handle_max_cons()
                return
            self.ioloop.unregister(handler._fileno)
            thread = self._start_task(target=self._loop, args=(handler,), name="ftpd")
            thread.name = repr(addr)
            thread.start()
            with self._lock:
                self._active_tasks.append(thread)
        except Exception:
            log.exception("accepting a connection from %s failed", addr[0])
            if handler is not None:
                handler.close()


def share_limits(servers: list[GatewayFTPServer]) -> None:
    """Make the control and implicit FTPS listeners count sessions (total, per IP) together."""
    for server in servers:
        server.group = servers
        server.ip_map = servers[0].ip_map  # pyftpdlib's list of client addresses, one per session


def build_server(
    cfg: GatewayConfig,
    authenticate: Authenticate,
    sock: socket.socket | None = None,
    metrics: Metrics | None = None,
    guard: Guard | None = None,
    implicit: bool = False,
    record_usage: Callable[[list[Record]], None] | None = None,
) -> GatewayFTPServer:
    """A ThreadedFTPServer (one thread per session) listening as configured, or on ``sock``.

    ``implicit``: the implicit FTPS listener (tls.implicit_port) instead of the control port.
    """
    if sock is not None:
        address: Any = sock
    else:
        address = (cfg.listen.address, cfg.tls.implicit_port if implicit else cfg.listen.port)
    handler = handler_class(cfg, authenticate, metrics, guard, implicit, record_usage)
    # Own IOLoop and stop flag: pyftpdlib's defaults (IOLoop.instance(), class-level _exit
    # and _lock) are process-wide, so stopping one server would stop every other one.
    server = GatewayFTPServer(address, handler, ioloop=IOLoop())
    server.group = [server]
    server._exit, server._lock = threading.Event(), threading.Lock()
    server.draining = threading.Event()  # set on SIGTERM: sessions end once idle (421)
    server.join_timeout = 1  # at shutdown, per session thread still blocked in a backend call
    server.max_cons = cfg.limits.max_connections
    server.max_cons_per_ip = cfg.limits.max_connections_per_ip
    return server
