"""Composition: wires the FTP front end to the SFTP and legacy FTP backends per the config.

The gateway process: its listeners, readiness, reload, drain and signals, composed of
``Logins`` (the backends, ``gateway.edges.logins``) and ``Access`` (the login policy: guard,
routes, audit, ``gateway.edges.access``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import functools
import logging
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence

from gateway import config
from gateway.backends.sftp.backend import key_problem, known_hosts_problem
from gateway.config import GatewayConfig
from gateway.core.checksums import Limits
from gateway.edges import workers
from gateway.edges.access import Access
from gateway.edges.logins import Logins
from gateway.edges.metrics_http import Admin, MetricsListener
from gateway.edges.workers import GuardBus
from gateway.features.guard import Event, Guard
from gateway.features.metrics import Metrics
from gateway.features.shared_guard import SharedGuard
from gateway.features.usage.store import StoreError, UsageStore, active_users, headcount
from gateway.ftp.server import METRIC_COMMANDS, build_server, share_limits
from gateway.ftp.tls import session_reuse_supported

log = logging.getLogger("gateway")


def _headcount(database: str, password: str | None) -> tuple[dict[str, int], int] | None:
    """What ``ftpgw_users`` shows, from the usage database (None until it can be read)."""
    try:
        return headcount(database, time.time(), password)
    except StoreError:
        return None


def _fan_out(publishers: Sequence[Callable[[Event], None]]) -> Callable[[Event], None]:
    """One guard publisher that hands each event to all of ``publishers``."""

    def publish(event: Event) -> None:
        for publisher in publishers:
            publisher(event)

    return publish


def backend_problems(cfg: GatewayConfig) -> list[str]:
    """Problems only the adapters can see (``key: message``), e.g. a host key missing."""
    problems = [
        f"backends.{name}.known_hosts: {problem}"
        for name, backend in cfg.backends.items()
        if backend.type == "sftp" and (problem := known_hosts_problem(backend))
    ]
    problems += [
        f"users.{name}.backend_key_file: {problem}"
        for name, local in cfg.users.items()
        if local.backend_key_file and (problem := key_problem(local.backend_key_file))
    ]
    if cfg.tls.require_session_reuse and not session_reuse_supported():
        problems.append(
            "tls.require_session_reuse: this pyOpenSSL cannot tell resumed sessions (set it false)"
        )
    return problems


#: Seconds between two background checks of every backend (for /readyz).
READY_INTERVAL = 15.0


class ListenError(Exception):
    """A listener cannot bind: which one (FTP, implicit FTPS, metrics), where, why, and the key."""

    @staticmethod
    @contextlib.contextmanager
    def naming(what: str, address: str, port: int, key: str) -> Iterator[None]:
        """Turn an OSError while opening this listener into a ListenError that names it."""
        try:
            yield
        except OSError as err:
            reason = err.strerror or str(err) or type(err).__name__
            if err.errno == errno.EADDRINUSE or "already in use" in reason.lower():
                reason = f"the port is in use (by what: `ss -ltnp`); change {key} or stop the other server"
            raise ListenError(f"cannot listen on {address} port {port} ({what}): {reason}") from err


class Gateway:
    """A configured gateway: background SFTP loop, backends and the FTP server."""

    def __init__(
        self,
        cfg: GatewayConfig,
        sock: socket.socket | None = None,
        implicit_sock: socket.socket | None = None,
        config_path: str | None = None,
        adapt: Callable[[GatewayConfig], GatewayConfig] = lambda cfg: cfg,
    ) -> None:
        # The usage store first: a database it cannot open stops the start with its reason.
        report = cfg.report
        self.usage = (
            UsageStore(report.database, report.retention_days, report.password) if report.database else None
        )
        record = self.usage.add if self.usage is not None else None
        self.metrics = Metrics(METRIC_COMMANDS, cfg.report.per_user_metrics)
        self.logins = Logins(cfg, self.metrics)  # the backends; a reload replaces its config
        if report.database and report.per_user_metrics:  # their failed logins under their names
            with contextlib.suppress(StoreError):
                since = time.time() - report.retention_days * 86400
                users = active_users(report.database, since, report.per_user_metrics, report.password)
                self.metrics.known_users(users)
        self.config_path, self._adapt = config_path, adapt  # for reloads (adapt: a worker's share)
        self.metrics.start_at_zero(cfg.backends, (route.name for route in cfg.routes))
        low, high = cfg.listen.passive_ports
        self.metrics.passive_ports.set(high - low + 1)
        for route in cfg.routes:  # a restart counts as a phase change: it is how many deploy one
            self.metrics.route_phase_changed.labels(route.name).set_to_current_time()
        # With workers: N, the guards of all workers share their failures and unbans; with
        # guard.shared, so do the instances, through the PostgreSQL record.
        bus = GuardBus(workers.siblings, lambda event: self.guard.apply(event)) if workers.siblings else None
        self.shared_guard: SharedGuard | None = None
        if cfg.guard.shared and cfg.guard.enabled and report.database:
            self.shared_guard = SharedGuard(
                cfg.guard,
                report.database,
                report.password,
                lambda event, age: self.guard.apply(event, age),
                workers.siblings.instance if workers.siblings else None,
                self.metrics.guard_store_errors.inc,
            )
        publishers = [p.publish for p in (bus, self.shared_guard) if p is not None]
        self.guard = Guard(cfg.guard, publish=_fan_out(publishers) if publishers else None)
        if self.shared_guard is not None:
            self.shared_guard.start()
        self.access = Access(self.logins, self.guard, self.metrics)
        sums = Limits(cfg.limits.checksum_max_mib * 2**20, cfg.limits.checksums_at_once)
        with ListenError.naming("FTP", cfg.listen.address, cfg.listen.port, "listen.port"):
            self.server = build_server(
                cfg, self.access.authenticate, sock, self.metrics, self.guard, False, record, sums
            )
        self.servers = [self.server]
        if cfg.tls.enabled and cfg.tls.implicit_port is not None:
            with ListenError.naming(
                "implicit FTPS", cfg.listen.address, cfg.tls.implicit_port, "tls.implicit_port"
            ):
                implicit = build_server(
                    cfg, self.access.authenticate, implicit_sock, self.metrics, self.guard, True, record, sums
                )
            self.servers.append(implicit)
            share_limits(self.servers)
        self._readiness: list[str] = ["starting: backends not checked yet"]
        self.metrics_port: int | None = None
        self._listener: MetricsListener | None = None
        if cfg.metrics.enabled:  # the checks only feed /readyz
            m = cfg.metrics
            with ListenError.naming("metrics", m.address, m.port, "metrics.port"):
                admin = Admin(self.guard.bans, self.access.unban)
                self._listener = MetricsListener(
                    self.metrics.registry,
                    m.address,
                    m.port,
                    lambda: self._readiness,
                    m.basic_auth,
                    m.tls,
                    admin,
                )
                self.metrics_port = self._listener.port
            self.logins.loop.submit(self._check_backends_forever())
            self.metrics.watch_backend_connections(self._connection_counts)
            if (database := cfg.report.database) is not None:
                self.metrics.watch_usage(functools.partial(_headcount, database, cfg.report.password))
        self._stop = threading.Event()
        self._drain_deadline: float | None = None
        self._signals: list[int] = []  # appended by on_signal, handled by serve_forever

    @property
    def cfg(self) -> GatewayConfig:
        """The running configuration (``reload`` replaces it)."""
        return self.logins.cfg

    async def _check_backends_forever(self) -> None:
        """Refresh the /readyz verdict: every backend probed every READY_INTERVAL seconds."""
        while True:
            backends = self.logins.backends  # a reload may replace the dict meanwhile
            names = list(backends)
            try:
                results = await asyncio.gather(*(backends[n].probe() for n in names))
            except Exception as exc:  # never let the check die: /readyz would freeze
                log.exception("backend check failed")
                results = [f"check failed ({exc.__class__.__name__})"] * len(names)
            self._readiness = [f"backend {n}: {why}" for n, why in zip(names, results, strict=True) if why]
            for name, why in zip(names, results, strict=True):
                self.metrics.backend_up.labels(name).set(0 if why else 1)
            for problem in self._readiness:
                log.warning("not ready: %s", problem)
            await asyncio.sleep(READY_INTERVAL)

    def _connection_counts(self) -> dict[tuple[str, str], int]:
        """Pooled connections per (backend, state), read on the loop (at scrape time)."""

        async def count() -> dict[tuple[str, str], int]:
            counts: dict[tuple[str, str], int] = {}
            for name, backend in self.logins.backends.items():
                for state in backend.connection_states():
                    counts[name, state] = counts.get((name, state), 0) + 1
            return counts

        try:
            return self.logins.loop.run(count(), 2.0)
        except Exception:  # a stuck loop must not hang the scrape; /readyz tells the rest
            return {}

    @property
    def implicit_address(self) -> tuple[str, int] | None:
        """The (host, port) of the implicit FTPS listener, if there is one."""
        if len(self.servers) < 2:
            return None
        host, port = self.servers[1].socket.getsockname()[:2]
        return str(host), int(port)

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) the FTP server listens on."""
        host, port = self.server.socket.getsockname()[:2]
        return str(host), int(port)

    def serve_forever(self) -> None:
        """Serve until ``stop`` is called, or a ``drain`` has finished (thread-safe)."""
        try:
            while not self._stop.is_set():
                for server in self.servers:
                    server.serve_forever(timeout=0.2 / len(self.servers), blocking=False, handle_exit=False)
                while self._signals:
                    self._handle_signal(self._signals.pop(0))
                if self._drain_deadline is not None and self._drained():
                    break
        finally:
            for server in self.servers:
                server.close_all()
            if self.usage is not None:
                self.usage.close()  # after close_all: the sessions' last records are queued
            if self.shared_guard is not None:
                self.shared_guard.close()
            self.logins.close_backends()
            if self._listener is not None:
                self._listener.stop()

    def on_signal(self, signum: int, frame: object = None) -> None:
        """Signal handler: only records the signal; ``serve_forever`` acts on it.

        A handler runs between two bytecodes of the main thread, which may hold a lock
        (pyftpdlib's task list, a logging stream): taking one here could deadlock.
        """
        self._signals.append(signum)

    def _handle_signal(self, signum: int) -> None:
        if signum == signal.SIGHUP:
            self.reload()
            return
        log.info("signal %d: stopping", signum)
        self.drain()

    def reload(self) -> bool:
        """Re-read the config file: new logins use it, running sessions keep their route.

        An invalid file is refused (logged, counted) and the running config kept. Settings
        of the listeners, limits, TLS, metrics, log, report, uploads and workers need a restart.
        """
        if self.config_path is None:
            log.warning("reload: this gateway was not started from a config file")
            return False
        try:
            new = self._adapt(config.load(self.config_path))
            if problems := backend_problems(new):
                raise config.ConfigError(problems)
        except config.ConfigError as err:
            self.metrics.config_reloads.labels("failed").inc()
            log.error("reload refused, the running config stays: %s", "; ".join(err.problems))
            return False
        except Exception:  # a bug in the checks must not take the running gateway down
            self.metrics.config_reloads.labels("failed").inc()
            log.exception("reload failed, the running config stays")
            return False
        fixed = ("listen", "limits", "tls", "metrics", "log", "report", "uploads", "workers")
        if stale := [name for name in fixed if getattr(new, name) != getattr(self.cfg, name)]:
            log.warning("reload: changes to %s take effect after a restart", ", ".join(stale))
        phases = {route.name: route.phase for route in self.cfg.routes}
        for route in new.routes:
            if phases.get(route.name) != route.phase:
                before = phases.get(route.name, "(new)")
                log.info("reload: route %s: phase %s -> %s", route.name, before, route.phase)
                self.metrics.route_phase_changed.labels(route.name).set_to_current_time()
        self.logins.use(dataclasses.replace(new, **{name: getattr(self.cfg, name) for name in fixed}))
        self.guard.cfg = new.guard
        self.metrics.start_at_zero(new.backends, (route.name for route in new.routes))
        self.metrics.config_reloads.labels("ok").inc()
        log.info(
            "reloaded %s: %d route(s), %d backend(s)", self.config_path, len(new.routes), len(new.backends)
        )
        return True

    def drain(self) -> None:
        """Stop accepting; idle sessions get 421, transfers may finish until drain_timeout.

        Call it on the serving thread; a second call stops at once.
        """
        if self._drain_deadline is not None:
            log.warning("second stop request: closing %d session(s) now", self.sessions_open())
            self.stop()
            return
        self._drain_deadline = time.monotonic() + self.cfg.limits.drain_timeout
        self.metrics.draining.set(1)
        for server in self.servers:
            server.draining.set()
            server.close()  # the listening socket: new connections are refused from now on
        log.info(
            "draining: %d session(s) open, running transfers get up to %.0f s",
            self.sessions_open(),
            self.cfg.limits.drain_timeout,
        )

    def _drained(self) -> bool:
        open_now = self.sessions_open()
        if open_now == 0:
            log.info("drained: every session has ended")
            return True
        if time.monotonic() >= (self._drain_deadline or 0):
            log.warning("drain_timeout reached: closing %d session(s) with transfers running", open_now)
            return True
        time.sleep(0.1)  # nothing to accept any more: the poll above no longer waits
        return False

    def sessions_open(self) -> int:
        """FTP sessions still running (each has its own thread)."""
        # A copy without pyftpdlib's lock: its holder may be joining threads for seconds.
        threads = [t for server in self.servers for t in list(server._active_tasks)]
        return sum(1 for thread in threads if thread.is_alive())

    def stop(self) -> None:
        """Ask ``serve_forever`` to return (thread-safe)."""
        self._stop.set()
