"""Several worker processes on one listening socket (``workers: N``), for more than one core.

One Python process is bound by its GIL at about one core. The supervisor binds the FTP
port once, forks N workers that all accept on it (the kernel hands each new connection to
one of them) and restarts a worker that dies. Each worker owns a slice of the passive port
range, so a data connection always reaches the process that announced the port, and runs
its own background loop, connection pool and transfer budget (its share of the configured
totals). Forking happens before any thread exists.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import signal
import socket
import time
from collections.abc import Callable
from types import FrameType

from gateway.config import GatewayConfig, passive_share

log = logging.getLogger("gateway.workers")

#: Serves ``cfg`` on ``sock`` until SIGTERM; returns the exit status (the CLI's _serve).
Serve = Callable[[GatewayConfig, socket.socket], int]


def worker_config(cfg: GatewayConfig, index: int) -> GatewayConfig:
    """The configuration worker ``index`` runs with: its passive ports, its share of totals."""
    n = cfg.workers
    listen = dataclasses.replace(cfg.listen, passive_ports=passive_share(cfg.listen.passive_ports, n, index))
    limits = dataclasses.replace(
        cfg.limits,
        max_connections=math.ceil(cfg.limits.max_connections / n),
        transfer_buffer_mib=math.ceil(cfg.limits.transfer_buffer_mib / n),
    )
    return dataclasses.replace(cfg, listen=listen, limits=limits, workers=1)


def listen_socket(cfg: GatewayConfig) -> socket.socket:
    """The FTP control socket, bound and listening, to be shared by the workers."""
    family = socket.AF_INET6 if ":" in cfg.listen.address else socket.AF_INET
    return socket.create_server((cfg.listen.address, cfg.listen.port), family=family, backlog=1024)


def supervise(cfg: GatewayConfig, sock: socket.socket, serve: Serve) -> int:
    """Fork ``cfg.workers`` workers on ``sock``; restart any that dies until SIGTERM/SIGINT."""
    children: dict[int, int] = {}  # pid -> worker index
    stopping = False

    def spawn(index: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            status = 1
            try:
                status = serve(worker_config(cfg, index), sock)
            finally:
                os._exit(status)
        children[pid] = index

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    for index in range(cfg.workers):
        spawn(index)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("%d workers serving on %s:%d", cfg.workers, *sock.getsockname()[:2])
    status = 0
    while children:
        pid, code = os.wait()
        index = children.pop(pid)
        if stopping:
            continue
        log.error("worker %d (pid %d) exited with status %d: restarting it", index, pid, code)
        status = 1
        time.sleep(1)  # no tight loop when a worker cannot start
        spawn(index)
    sock.close()
    return 0 if stopping else status
