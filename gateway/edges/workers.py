"""Several worker processes on one listening socket (``workers: N``), for more than one core.

One Python process is bound by its GIL at about one core. The supervisor binds the FTP
port once, forks N workers that all accept on it (the kernel hands each new connection to
one of them) and restarts a worker that dies. Each worker owns a slice of the passive port
range, so a data connection always reaches the process that announced the port, and runs
its own background loop, connection pool and transfer budget (its share of the configured
totals). Forking happens before any thread exists.

The workers' guards share what they learn (gateway.features.guard): each worker has a Unix datagram
socket in a directory only the gateway's user may enter, made by the supervisor, and sends
every failed login and unban to the sockets of the others (``GuardBus``).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import logging
import math
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from gateway.config import GatewayConfig, passive_share
from gateway.features.guard import Event

log = logging.getLogger("gateway.workers")

#: Turns a freshly read config into what this process runs (a worker's share of it).
Adapt = Callable[[GatewayConfig], GatewayConfig]
#: Serves ``cfg`` on the control socket (and the implicit FTPS one) until SIGTERM, applying
#: ``Adapt`` to configs it reloads; returns the exit status (the CLI's _serve_one).
Serve = Callable[[GatewayConfig, socket.socket, socket.socket | None, Adapt], int]


def worker_config(cfg: GatewayConfig, index: int) -> GatewayConfig:
    """The configuration worker ``index`` runs with: its passive ports, its share of totals."""
    n = cfg.workers
    listen = dataclasses.replace(cfg.listen, passive_ports=passive_share(cfg.listen.passive_ports, n, index))
    limits = dataclasses.replace(
        cfg.limits,
        max_connections=math.ceil(cfg.limits.max_connections / n),
        transfer_buffer_mib=math.ceil(cfg.limits.transfer_buffer_mib / n),
    )
    # Each worker has its own guard: the total cap on sessions not logged in is shared out
    # (failures and unbans are shared through the GuardBus, so bans are the same in all).
    guard = dataclasses.replace(cfg.guard, max_unauthenticated=math.ceil(cfg.guard.max_unauthenticated / n))
    # Each worker serves its own /metrics, on the configured port plus its index.
    port = cfg.metrics.port + index if cfg.metrics.port else 0
    metrics = dataclasses.replace(cfg.metrics, port=port)
    return dataclasses.replace(cfg, listen=listen, limits=limits, metrics=metrics, guard=guard, workers=1)


@dataclass(frozen=True)
class Siblings:
    """Where this worker's guard hears the others, and where theirs are."""

    own: str
    others: tuple[str, ...]
    instance: str  # the same in every worker of one supervisor: which instance they are


#: Set in a worker process right after the fork (None in a single process).
siblings: Siblings | None = None
#: Seconds a guard event may wait for room in a sibling's queue before it is dropped.
_SEND_TIMEOUT = 0.2


class GuardBus:
    """Carries guard events between the worker processes (see the module doc)."""

    def __init__(self, where: Siblings, apply: Callable[[Event], None]) -> None:
        self._others, self._apply = where.others, apply
        with contextlib.suppress(FileNotFoundError):
            os.unlink(where.own)  # left by this worker's predecessor
        self._inbox = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._inbox.bind(where.own)
        self._outbox = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._outbox.settimeout(_SEND_TIMEOUT)
        threading.Thread(target=self._listen, name="guard-bus", daemon=True).start()

    def publish(self, event: Event) -> None:
        """Send ``event`` to every other worker (one that is restarting misses it)."""
        data = json.dumps(event).encode()
        # No lock: sendto on one datagram socket is safe from many threads, and a session
        # must not wait behind another one's send to a sibling whose queue is full.
        for path in self._others:
            try:
                self._outbox.sendto(data, path)
            except (FileNotFoundError, ConnectionRefusedError):
                pass  # that worker is restarting: it starts with a clean slate anyway
            except OSError as err:
                log.warning("guard event for worker %s dropped: %s", path, err)

    def _listen(self) -> None:
        while True:
            try:
                data = self._inbox.recv(4096)
                event = json.loads(data)
            except OSError:
                return
            except ValueError:
                continue
            if isinstance(event, dict):
                try:
                    self._apply(event)
                except Exception:  # a bad event (or one before the guard exists) must not end the bus
                    log.exception("guard event from a sibling worker not applied")


def listen_sockets(cfg: GatewayConfig) -> tuple[socket.socket, socket.socket | None]:
    """The FTP control socket and the implicit FTPS one (if any), listening, for the workers."""
    family = socket.AF_INET6 if ":" in cfg.listen.address else socket.AF_INET
    control = socket.create_server((cfg.listen.address, cfg.listen.port), family=family, backlog=1024)
    if not cfg.tls.enabled or cfg.tls.implicit_port is None:
        return control, None
    try:
        implicit = socket.create_server(
            (cfg.listen.address, cfg.tls.implicit_port), family=family, backlog=1024
        )
    except OSError:
        control.close()
        raise
    return control, implicit


def supervise(cfg: GatewayConfig, sock: socket.socket, implicit: socket.socket | None, serve: Serve) -> int:
    """Fork ``cfg.workers`` workers on ``sock``; restart any that dies until SIGTERM/SIGINT."""
    children: dict[int, tuple[int, float]] = {}  # pid -> (worker index, start time)
    stopping = False
    delay = 1.0  # before a restart; grows while workers die young
    bus = Path(tempfile.mkdtemp(prefix="ftp-sftp-gateway-workers-"))  # mode 0700
    inboxes = [str(bus / f"guard-{index}.sock") for index in range(cfg.workers)]

    def spawn(index: int) -> None:
        # Signals stay blocked across fork, so a worker never runs the supervisor's handler.
        pid = os.fork()
        if pid == 0:  # the worker
            global siblings
            others = tuple(p for i, p in enumerate(inboxes) if i != index)
            siblings = Siblings(inboxes[index], others, f"{socket.gethostname()}/{bus.name}")
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGHUP, remember_reload)  # until the worker's gateway takes it
            _die_with_parent()
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
            status = 1
            try:
                status = serve(
                    worker_config(cfg, index), sock, implicit, lambda new: worker_config(new, index)
                )
            except Exception:
                log.exception("worker %d failed", index)
            finally:
                os._exit(status)
        children[pid] = (index, time.monotonic())

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        # The workers drain (a second signal stops them at once); without this copy of the
        # listening socket the port closes as soon as they have closed theirs.
        sock.close()
        if implicit is not None:
            implicit.close()
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def reload(signum: int, frame: FrameType | None) -> None:
        for pid in children:  # each worker re-reads the file (kill -HUP / systemctl reload)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGHUP)

    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, reload)
    for index in range(cfg.workers):
        spawn(index)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
    log.info("%d workers serving on %s:%d", cfg.workers, *sock.getsockname()[:2])
    while children:
        pid, code = os.wait()
        index, started = children.pop(pid)
        if stopping:
            continue
        delay = 1.0 if time.monotonic() - started > 30 else min(delay * 2, 30.0)
        log.error(
            "worker %d (pid %d) exited with status %d: restarting it in %.0f s",
            index, pid, os.waitstatus_to_exitcode(code), delay,
        )  # fmt: skip
        time.sleep(delay)
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        if not stopping:
            spawn(index)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
    sock.close()
    if implicit is not None:
        implicit.close()
    shutil.rmtree(bus, ignore_errors=True)
    return 0


_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}

#: SIGHUPs that arrived before this process's gateway was up (it reloads for them then).
early_reloads: list[int] = []


def remember_reload(signum: int, frame: FrameType | None) -> None:
    """SIGHUP handler until the gateway takes over: a reload asked for during start-up is kept."""
    early_reloads.append(signum)


def _die_with_parent() -> None:
    """Ask Linux to send this worker SIGTERM if the supervisor dies (even by SIGKILL)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
