"""Composition: wires the FTP front end to the SFTP and legacy FTP backends per the config.

The gateway process: its listeners, the login policy around ``gateway.edges.logins`` (guard,
audit, metrics, usage record), readiness, reload, drain and signals. The only module
(besides the CLI) that imports both ``gateway.ftp`` and ``gateway.backends``.

Over 400 lines: the login policy and the process life cycle share the gateway's state (the
config a reload replaces, the guard, the backends); the logins themselves are in
``gateway.edges.logins``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import errno
import functools
import logging
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator

from gateway import config
from gateway.backends.sftp.backend import key_problem, known_hosts_problem
from gateway.config import GatewayConfig, Phase, RouteConfig
from gateway.core import errors, logs
from gateway.core.checksums import Limits
from gateway.core.passwords import verify_password
from gateway.core.routing import acceptable_user, match_route
from gateway.core.storage import Login, Refused
from gateway.edges import auth_external, workers
from gateway.edges.logins import Logins, RootUnusable, serving
from gateway.edges.metrics_http import Admin, MetricsListener
from gateway.edges.workers import GuardBus
from gateway.features.guard import Guard
from gateway.features.metrics import Metrics
from gateway.features.usage.store import StoreError, UsageStore, active_users, headcount
from gateway.ftp.server import METRIC_COMMANDS, build_server, share_limits
from gateway.ftp.tls import session_reuse_supported

log = logging.getLogger("gateway")
shadow_log = logging.getLogger("gateway.shadow")


def _headcount(database: str) -> tuple[dict[str, int], int] | None:
    """What ``ftpgw_users`` shows, from the usage database (None until it can be read)."""
    try:
        return headcount(database, time.time())
    except StoreError:
        return None


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


#: Login outcomes other than "ok", as the ftpgw_logins_total{result} label.
_LOGIN_RESULTS: dict[type[errors.GatewayError], str] = {
    errors.LoginRefused: "bad_credentials",
    RootUnusable: "root_unusable",
    errors.BackendUnavailable: "backend_unavailable",
    errors.ConnectionLost: "backend_unavailable",
    errors.HostKeyMismatch: "host_key_mismatch",
    errors.BackendTimeout: "backend_unavailable",
    errors.TooManySessions: "too_many_sessions",
}


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


#: Who hears of a refused login in progress on this thread (``Gateway.authenticate``'s
#: ``refused``: the session's usage record); a context variable, so each session's own.
_REFUSED: contextvars.ContextVar[Refused | None] = contextvars.ContextVar("refused", default=None)


class Gateway(Logins):
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
        self.usage = UsageStore(report.database, report.retention_days) if report.database else None
        record = self.usage.add if self.usage is not None else None
        super().__init__(cfg, Metrics(METRIC_COMMANDS, cfg.report.per_user_metrics))
        if report.database and report.per_user_metrics:  # their failed logins under their names
            with contextlib.suppress(StoreError):
                since = time.time() - report.retention_days * 86400
                self.metrics.known_users(active_users(report.database, since, report.per_user_metrics))
        self.config_path, self._adapt = config_path, adapt  # for reloads (adapt: a worker's share)
        self.metrics.start_at_zero(cfg.backends, (route.name for route in cfg.routes))
        low, high = cfg.listen.passive_ports
        self.metrics.passive_ports.set(high - low + 1)
        for route in cfg.routes:  # a restart counts as a phase change: it is how many deploy one
            self.metrics.route_phase_changed.labels(route.name).set_to_current_time()
        # With workers: N, the guards of all workers share their failures and unbans.
        bus = GuardBus(workers.siblings, lambda event: self.guard.apply(event)) if workers.siblings else None
        self.guard = Guard(cfg.guard, publish=bus.publish if bus is not None else None)
        sums = Limits(cfg.limits.checksum_max_mib * 2**20, cfg.limits.checksums_at_once)
        with ListenError.naming("FTP", cfg.listen.address, cfg.listen.port, "listen.port"):
            self.server = build_server(
                cfg, self.authenticate, sock, self.metrics, self.guard, False, record, sums
            )
        self.servers = [self.server]
        if cfg.tls.enabled and cfg.tls.implicit_port is not None:
            with ListenError.naming(
                "implicit FTPS", cfg.listen.address, cfg.tls.implicit_port, "tls.implicit_port"
            ):
                implicit = build_server(
                    cfg, self.authenticate, implicit_sock, self.metrics, self.guard, True, record, sums
                )
            self.servers.append(implicit)
            share_limits(self.servers)
        self._readiness: list[str] = ["starting: backends not checked yet"]
        self.metrics_port: int | None = None
        self._listener: MetricsListener | None = None
        if cfg.metrics.enabled:  # the checks only feed /readyz
            m = cfg.metrics
            with ListenError.naming("metrics", m.address, m.port, "metrics.port"):
                admin = Admin(self.guard.bans, self._unban)
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
            self.loop.submit(self._check_backends_forever())
            self.metrics.watch_backend_connections(self._connection_counts)
            if (database := cfg.report.database) is not None:
                self.metrics.watch_usage(functools.partial(_headcount, database))
        self._stop = threading.Event()
        self._drain_deadline: float | None = None
        self._signals: list[int] = []  # appended by on_signal, handled by serve_forever

    async def _check_backends_forever(self) -> None:
        """Refresh the /readyz verdict: every backend probed every READY_INTERVAL seconds."""
        while True:
            backends = self.backends  # a reload may replace the dict meanwhile
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
            for name, backend in self.backends.items():
                for state in backend.connection_states():
                    counts[name, state] = counts.get((name, state), 0) + 1
            return counts

        try:
            return self.loop.run(count(), 2.0)
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

    def authenticate(
        self, user: str, password: str, client_ip: str, tls: bool = False, refused: Refused | None = None
    ) -> Login:
        """Route ``user``, log in on its backend and resolve its root (counted and audited).

        ``refused`` is told why, if the login of a user with a route is refused.
        """
        label = "yes" if tls else "no"
        # The guard first: a banned address (or user from it) never reaches a backend, and
        # attempts in flight count, so parallel sessions cannot outrun it (see gateway.features.guard).
        if not self.guard.begin_attempt(client_ip, user):
            self._refused(client_ip, user, "banned", "-", label)  # before routing, for the metric and audit
            if refused is not None and (route := self._route_of(user, client_ip)) is not None:
                refused("banned", route.name, route.phase)  # the usage record of a partner's banned job
            raise errors.Banned()
        failed = False
        token = _REFUSED.set(refused)
        try:
            return self._attempt(user, password, client_ip, tls, label)
        except errors.LoginRefused as err:
            failed = not isinstance(err, RootUnusable | errors.Retired)  # a wrong password, user or route
            raise
        finally:
            _REFUSED.reset(token)
            if banned_for := self.guard.end_attempt(client_ip, user, failed):
                self.metrics.guard_bans.inc()
                scope = "address" if self.guard.ban_remaining(client_ip) else "user"
                logs.audit.warning(
                    "ban: client_ip=%s user=%s scope=%s seconds=%d reason=failed_logins",
                    client_ip,
                    logs.quote(user),
                    scope,
                    banned_for,
                )

    def _attempt(self, user: str, password: str, client_ip: str, tls: bool, label: str) -> Login:
        if not acceptable_user(user, self.cfg.limits.user_names):
            # Refused before any route or backend sees it: another spelling of a user that
            # the backend would log in as that user (see gateway.core.routing) must not reach
            # the catch-all route, a pooled connection, a usage row or a metric of its own.
            self._refused(client_ip, user, "bad_user_name", "-", label)
            raise errors.LoginRefused()
        route = self._route_of(user, client_ip)
        if route is None:
            # As costly as a password check: with routes chosen by group, only a known
            # user has a route, and a quick refusal would tell unknown names from known.
            verify_password(password, None)
            self._refused(client_ip, user, "no_route", "-", label)
            raise errors.LoginRefused()
        credentials = None
        if route.auth == "mapped":
            # The password first, for the same reason: a retired route's notice would
            # otherwise answer a known user of its group at once, without the password.
            try:
                credentials = self._credentials(route, user, password, None)
            except errors.LoginRefused:
                self._refused(client_ip, user, "bad_credentials", route.name, label)
                raise
        self._refuse_if_retired(route, user, client_ip, label)
        decision = None
        if route.auth == "external":
            decision = self._ask_external(user, password, client_ip, tls, route.name, label)
            if decision.route and decision.route != route.name:
                route = self._route_named(decision.route, user, client_ip, label)
                self._refuse_if_retired(route, user, client_ip, label)
        try:
            login = self.login(route, user, password, decision, credentials)
        except errors.GatewayError as err:
            result = _LOGIN_RESULTS.get(type(err), "refused")
            refused = isinstance(err, errors.LoginRefused)
            detail = "" if refused else f"backend={serving(route)} error={err.text!r}"
            self._refused(client_ip, user, result, route.name, label, detail)
            raise
        self.metrics.logins.labels("ok", route.name, label).inc()
        detail = f"backend={login.backend_name} root={logs.quote(login.root)}"  # the one that served
        logs.login_audit(client_ip, user, "ok", route.name, detail)
        return login

    def _refuse_if_retired(self, route: RouteConfig, user: str, client_ip: str, label: str) -> None:
        if route.phase == Phase.RETIRED:
            # Migrated: FTP is off for these users; the notice says where to go instead.
            self._refused(client_ip, user, "retired", route.name, label)
            notice = route.banner or "FTP is no longer available for this account; use SFTP."
            raise errors.Retired(notice, route=route.name)

    def _unban(self, address: str) -> int:
        """Lift the guard's bans of ``address`` (``ftp-sftp-gateway unban``), audited."""
        lifted = self.guard.unban(address)
        logs.audit.warning("unban: client_ip=%s bans_lifted=%d by=operator", address, lifted)
        return lifted

    def _route_of(self, user: str, client_ip: str) -> RouteConfig | None:
        """The route ``user`` logs in on, if the name is acceptable and a route matches."""
        if not acceptable_user(user, self.cfg.limits.user_names):
            return None
        local = self.cfg.users.get(user)
        return match_route(self.cfg.routes, user, client_ip, local.groups if local else frozenset())

    def _refused(
        self, client_ip: str, user: str, result: str, route: str, tls: str, detail: str = ""
    ) -> None:
        self.metrics.logins.labels(result, route, tls).inc()
        if result != "retired":
            self.metrics.failed_login(user, result)
        logs.login_audit(client_ip, user, result, route, detail)
        phase = next((r.phase for r in self.cfg.routes if r.name == route), None)
        if phase is not None and (listener := _REFUSED.get()) is not None:
            listener(result, route, phase)

    def _ask_external(
        self, user: str, password: str, client_ip: str, tls: bool, route: str, label: str
    ) -> auth_external.Decision:
        """The external authority's decision; refusals count like wrong passwords."""
        assert self.cfg.external_auth is not None  # config.parse insists on it
        try:
            decision = auth_external.ask(self.cfg.external_auth, user, password, client_ip, tls)
        except auth_external.ExternalAuthError as err:
            log.error("external auth failed for user %s from %s: %s", logs.quote(user), client_ip, err)
            self._refused(client_ip, user, "auth_unavailable", route, label, f"error={str(err)!r}")
            raise errors.BackendUnavailable() from err
        if not decision.allow:
            self._refused(client_ip, user, "bad_credentials", route, label, "by=external")
            raise errors.LoginRefused()
        return decision

    def _route_named(self, name: str, user: str, client_ip: str, label: str) -> RouteConfig:
        for route in self.cfg.routes:
            if route.name == name:
                return route
        log.error(
            "external auth chose route %s, which is not configured (user %s)",
            logs.quote(name),
            logs.quote(user),
        )
        self._refused(client_ip, user, "auth_unavailable", "-", label, "error='unknown route'")
        raise errors.BackendUnavailable()

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
            self.close_backends()
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
        backends = {}
        for name, backend_cfg in new.backends.items():
            current = self.backends.get(name)
            if current is not None and current.cfg == backend_cfg:
                backends[name] = current
            else:
                backends[name] = self._make_backend(backend_cfg)
        # Replaced backends keep serving the sessions that use them (their pools close idle
        # connections by themselves); closed at shutdown.
        self._old_backends += [b for name, b in self.backends.items() if backends.get(name) is not b]
        self.backends = backends
        phases = {route.name: route.phase for route in self.cfg.routes}
        for route in new.routes:
            if phases.get(route.name) != route.phase:
                before = phases.get(route.name, "(new)")
                log.info("reload: route %s: phase %s -> %s", route.name, before, route.phase)
                self.metrics.route_phase_changed.labels(route.name).set_to_current_time()
        self.cfg = dataclasses.replace(new, **{name: getattr(self.cfg, name) for name in fixed})
        self.guard.cfg = new.guard
        self.metrics.start_at_zero(new.backends, (route.name for route in new.routes))
        self.metrics.config_reloads.labels("ok").inc()
        log.info("reloaded %s: %d route(s), %d backend(s)", self.config_path, len(new.routes), len(backends))
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
