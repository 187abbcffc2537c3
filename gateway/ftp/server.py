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

from gateway.config import GatewayConfig
from gateway.core.checksums import Limits
from gateway.core.storage import Authenticate
from gateway.features.guard import Guard, SourceCounts
from gateway.features.metrics import Metrics
from gateway.features.usage.session import Record
from gateway.ftp.data import GatewayDTPHandler
from gateway.ftp.handler import GatewayHandler
from gateway.ftp.tls import GatewayImplicitTLSHandler, GatewayTLSDTPHandler, GatewayTLSHandler, ssl_context

log = logging.getLogger("gateway.ftp")

#: Verbs counted by name in ftpgw_commands_total (any other as OTHER): every command the
#: gateway knows, the FTPS ones (AUTH, PBSZ, PROT) included whether TLS is on or not, and
#: CCC, which it refuses: clients that try to drop TLS are worth seeing.
METRIC_COMMANDS = frozenset({*GatewayTLSHandler.proto_cmds, "CCC"})

#: Commands dropped when active mode is disabled.
_ACTIVE_COMMANDS = ("PORT", "EPRT")


def handler_class(
    cfg: GatewayConfig,
    authenticate: Authenticate,
    metrics: Metrics | None = None,
    guard: Guard | None = None,
    implicit: bool = False,
    record_usage: Callable[[list[Record]], None] | None = None,
    checksum_limits: Limits | None = None,
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
            "ssl_context": ssl_context(cfg.tls.certfile, cfg.tls.keyfile, cfg.tls.ciphers),
            "tls_required": cfg.tls.mode == "required",
            "require_session_reuse": cfg.tls.require_session_reuse,
            "context_args": (cfg.tls.certfile, cfg.tls.keyfile, cfg.tls.ciphers),
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
        "show_dotfiles": cfg.listing.dotfiles == "shown",
        **({"checksum_limits": checksum_limits} if checksum_limits is not None else {}),
        "timeout": cfg.limits.idle_timeout,
        "max_login_attempts": cfg.limits.max_login_attempts,
        "auth_failed_timeout": cfg.limits.failed_login_delay,
    }
    return type("ConfiguredHandler", (base,), attrs)


class SessionSlots:
    """FTP sessions open now, in total and per client address, shared by the listeners (thread-safe).

    An IPv6 /64 counts as one address, as in the guard: one end site holds a whole /64, and
    counting exact addresses would let it open ``max_connections_per_ip`` sessions per
    address. Sessions are counted from accept to their handler's close, not by threads: a
    session whose client is gone frees its place at once, however long its thread winds down.
    """

    def __init__(self, total: int, per_address: int) -> None:
        self.total, self.per_address = total, per_address
        self._open = 0
        self._by_source = SourceCounts()
        self._lock = threading.Lock()

    def enter(self) -> bool:
        """Take a place in the total; False when all ``total`` are taken."""
        with self._lock:
            if self._open >= self.total:
                return False
            self._open += 1
            return True

    def leave(self) -> None:
        """Give back a place taken with ``enter``."""
        with self._lock:
            self._open -= 1

    def enter_address(self, address: str) -> str | None:
        """Take a place of ``address``'s source; the key to give back, or None when it has none left."""
        return self._by_source.enter(address, self.per_address)

    def leave_address(self, key: str) -> None:
        """Give back a place taken with ``enter_address``."""
        self._by_source.leave(key)


class GatewayFTPServer(ThreadedFTPServer):  # type: ignore[misc]
    """pyftpdlib's threaded server with exact session limits, shared between listeners."""

    slots: SessionSlots  # shared by the control and implicit FTPS listeners (share_limits)

    def _accept_new_cons(self) -> bool:
        # pyftpdlib asks this before every PASV/PORT too, and with one thread per session
        # it counts sessions there: the session that takes the last place could then never
        # open a data connection. Sessions are admitted in handle_accepted instead.
        return True

    def handle_accepted(self, sock: socket.socket, addr: tuple[str, int]) -> None:
        # As pyftpdlib's FTPServer/ThreadedFTPServer.handle_accepted, with the limits counted
        # by SessionSlots. From a trusted balancer the client's address is in the PROXY
        # header, read on the session's own thread (a slow one then delays no other accept):
        # the per-address checks and the greeting wait for it (GatewayHandler.greet_proxied).
        handler: GatewayHandler | None = None
        try:
            handler = self.handler(sock, self, ioloop=self.ioloop)
            if not handler.connected:
                return
            if not handler.take_slot():
                handler.handle_max_cons()
                return
            if not handler.proxied:
                if not handler.take_address_slot():
                    return  # 421 on its way; closed by this loop once sent
                handler.handle()
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
    """Make the control and implicit FTPS listeners count sessions (total, per address) together."""
    for server in servers:
        server.slots = servers[0].slots


def build_server(
    cfg: GatewayConfig,
    authenticate: Authenticate,
    sock: socket.socket | None = None,
    metrics: Metrics | None = None,
    guard: Guard | None = None,
    implicit: bool = False,
    record_usage: Callable[[list[Record]], None] | None = None,
    checksum_limits: Limits | None = None,
) -> GatewayFTPServer:
    """A ThreadedFTPServer (one thread per session) listening as configured, or on ``sock``.

    ``implicit``: the implicit FTPS listener (tls.implicit_port) instead of the control port.
    """
    if sock is not None:
        address: Any = sock
    else:
        address = (cfg.listen.address, cfg.tls.implicit_port if implicit else cfg.listen.port)
    handler = handler_class(cfg, authenticate, metrics, guard, implicit, record_usage, checksum_limits)
    # Own IOLoop and stop flag: pyftpdlib's defaults (IOLoop.instance(), class-level _exit
    # and _lock) are process-wide, so stopping one server would stop every other one.
    server = GatewayFTPServer(address, handler, ioloop=IOLoop())
    server.slots = SessionSlots(cfg.limits.max_connections, cfg.limits.max_connections_per_ip)
    server._exit, server._lock = threading.Event(), threading.Lock()
    server.draining = threading.Event()  # set on SIGTERM: sessions end once idle (421)
    server.join_timeout = 1  # at shutdown, per session thread still blocked in a backend call
    return server
