"""Prometheus metrics: the objects both sides feed (served by ``gateway.edges.metrics_http``).

One ``Metrics`` per gateway process, on its own registry (tests run several gateways in one
process). Labels stay low-cardinality: FTP verbs outside pyftpdlib's command table are
folded into ``OTHER``, reply codes into classes (``2xx``), user names appear only in the
``ftpgw_user_*`` series, when ``report.per_user_metrics`` allows them, for that many users.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from gateway import __version__
from gateway.config import PHASES, Phase
from gateway.core.errors import GatewayError

# The *_created series double the series count and no dashboard here reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

_TRANSFER_SECONDS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 1800, 3600)
_OP_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

#: Users beyond ``report.per_user_metrics`` share this ``user`` label value.
OTHER_USERS = "_other"
#: The store-derived gauges are read from SQLite at most this often (seconds).
USAGE_CACHE_SECONDS = 15.0

#: (backend, state) -> number of pooled SSH connections in that state.
ConnectionCounts = dict[tuple[str, str], int]


#: Users by their latest phase, and users on plain FTP (or None when they cannot be read).
Headcount = Callable[[], tuple[dict[str, int], int] | None]


def error_kind(err: GatewayError) -> str:
    """The ``kind`` label of an error: its class name in snake case (a small, fixed set)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(err).__name__).lower()


class Metrics:
    """The gateway's metrics (names documented in docs/operations.md, "Metrics")."""

    def __init__(self, known_commands: Iterable[str] = (), per_user: int = 0) -> None:
        self.registry = r = CollectorRegistry()
        self.known_commands = frozenset(known_commands)
        self.sessions_active = Gauge("ftpgw_sessions_active", "FTP sessions connected now", registry=r)
        self.guard_store_errors = Counter(
            "ftpgw_guard_shared_errors",
            "Times the shared guard store (guard.shared) could not be reached or written",
            registry=r,
        )
        self.sessions = Counter(
            "ftpgw_sessions", "FTP sessions ended, by whether they logged in", ["result"], registry=r
        )
        self.logins = Counter(
            "ftpgw_logins",
            "FTP login attempts by result, route and whether the control channel was TLS",
            ["result", "route", "tls"],
            registry=r,
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
        self.data_connections = Counter(
            "ftpgw_data_connections",
            "FTP data connections by mode (pasv, epsv, port, eprt) and result",
            ["mode", "result"],
            registry=r,
        )
        self.passive_ports_in_use = Gauge(
            "ftpgw_passive_ports_in_use",
            "Passive data listeners open now (each holds a port of listen.passive_ports)",
            registry=r,
        )
        self.passive_ports = Gauge(
            "ftpgw_passive_ports",
            "Ports in this process's passive range (listen.passive_ports; with workers, its share)",
            registry=r,
        )
        self.route_phase_changed = Gauge(
            "ftpgw_route_phase_changed_timestamp_seconds",
            "When the route's phase last changed: the process start, or a reload that changed it",
            ["route"],
            registry=r,
        )
        self.tls_sessions = Counter(
            "ftpgw_tls_sessions", "TLS handshakes completed, by channel (control, data)", ["kind"], registry=r
        )
        self.backend_connects = Counter(
            "ftpgw_backend_connects",
            "New SSH connections to backends by result",
            ["backend", "result"],
            registry=r,
        )
        self.backend_ops = Histogram(
            "ftpgw_backend_op_duration_seconds",
            "Duration of SFTP operations (and logins) on the backends",
            ["backend", "op"],
            buckets=_OP_SECONDS,
            registry=r,
        )
        self.backend_errors = Counter(
            "ftpgw_backend_errors",
            "Failed SFTP operations by what the backend reported (not_found, backend_failure, ...)",
            ["backend", "kind"],
            registry=r,
        )
        self.backend_up = Gauge(
            "ftpgw_backend_up",
            "1 if the backend answered the last check with a trusted host key, else 0",
            ["backend"],
            registry=r,
        )
        self.shadow_mismatches = Counter(
            "ftpgw_shadow_mismatches",
            "Shadow phase: SFTP copies that failed or differ from the legacy server's, by operation",
            ["route", "op"],
            registry=r,
        )
        self.guard_bans = Counter("ftpgw_guard_bans", "Client addresses banned by the guard", registry=r)
        self.checksums = Counter(
            "ftpgw_checksums",
            "HASH and XSHA256/XSHA512/XSHA1/XMD5/XCRC requests by algorithm and result (ok, busy, ...)",
            ["algorithm", "result"],
            registry=r,
        )
        self.config_reloads = Counter(
            "ftpgw_config_reloads", "Configuration reloads by result", ["result"], registry=r
        )
        self.draining = Gauge("ftpgw_draining", "1 while shutting down (no new sessions)", registry=r)
        self.phase_logins = Counter(
            "ftpgw_phase_logins",
            "Logins by the route's migration phase and TLS (phase retired: refused logins)",
            ["phase", "tls"],
            registry=r,
        )
        self.phase_transfers = Counter(
            "ftpgw_phase_transfers",
            "File transfers by the route's migration phase and TLS",
            ["phase", "tls"],
            registry=r,
        )
        self._per_user, self._users, self._users_lock = per_user, set[str](), threading.Lock()
        if per_user:
            self.user_logins = Counter(
                "ftpgw_user_logins",
                f"Logins per user and TLS (the first {per_user} users; the rest as user={OTHER_USERS})",
                ["user", "tls"],
                registry=r,
            )
            self.user_transfers = Counter(
                "ftpgw_user_transfers",
                "File transfers per user and result (users as in ftpgw_user_logins)",
                ["user", "result"],
                registry=r,
            )
            self.user_failed_logins = Counter(
                "ftpgw_user_failed_logins",
                "Failed logins per user and kind (users who logged in before; the rest as user="
                f"{OTHER_USERS})",
                ["user", "result"],
                registry=r,
            )
        Info("ftpgw_build", "Gateway version", registry=r).info({"version": __version__})
        self._connection_counts: Callable[[], ConnectionCounts] = dict
        r.register(_BackendConnections(lambda: self._connection_counts()))

    def start_at_zero(self, backends: Iterable[str], routes: Iterable[str]) -> None:
        """Create the series alerts watch at 0, so that their first event is an increase."""
        for direction in ("upload", "download"):
            for result in ("ok", "failed"):
                self.transfers.labels(direction, result)
        for backend in backends:
            for result in ("ok", "auth_failed", "host_key_mismatch", "error"):
                self.backend_connects.labels(backend, result)
        for route in routes:
            for result in ("ok", "bad_credentials", "host_key_mismatch", "backend_unavailable"):
                self.logins.labels(result, route, "no")
        for result in ("ok", "failed"):
            self.config_reloads.labels(result)

    def watch_usage(self, headcount: Headcount) -> None:
        """Report ``ftpgw_users`` and ``ftpgw_users_plain_ftp`` from what ``headcount()`` reads
        (the usage database's: users by phase, users on plain FTP; None when unreadable)."""
        self.registry.register(_UsageView(headcount))

    def _user_label(self, user: str, allocate: bool = True) -> str:
        with self._users_lock:
            if allocate and user not in self._users and len(self._users) < self._per_user:
                self._users.add(user)
            return user if user in self._users else OTHER_USERS

    def phase_login(self, phase: str, tls: bool, user: str) -> None:
        """Count one login (or a refusal by a retired route) by phase, TLS and maybe user."""
        self.phase_logins.labels(phase, "yes" if tls else "no").inc()
        if self._per_user:
            # A retired refusal comes before any password check: the name is the client's
            # to choose, so it never takes one of the capped per-user slots.
            label = self._user_label(user, allocate=phase != Phase.RETIRED)
            self.user_logins.labels(label, "yes" if tls else "no").inc()

    def known_users(self, users: Iterable[str]) -> None:
        """Give ``users`` (who logged in before, e.g. from the usage record) their series now:
        after a restart, a user locked out since shows under their own name."""
        if self._per_user:
            for user in users:
                self._user_label(user)

    def failed_login(self, user: str, result: str) -> None:
        """Count a failed login of a user with a route, under their name if they have a series.

        Never allocates one: the name of a failed login is the client's to choose.
        """
        if self._per_user:
            self.user_failed_logins.labels(self._user_label(user, allocate=False), result).inc()

    def phase_transfer(self, phase: str, tls: bool, user: str, completed: bool) -> None:
        """Count one file transfer by phase, TLS and maybe user."""
        self.phase_transfers.labels(phase, "yes" if tls else "no").inc()
        if self._per_user:
            self.user_transfers.labels(self._user_label(user), "ok" if completed else "failed").inc()

    def watch_backend_connections(self, counts: Callable[[], ConnectionCounts]) -> None:
        """Report ``ftpgw_backend_connections`` from ``counts``, called at each scrape."""
        self._connection_counts = counts

    def backend_op(
        self, backend: str, op: str, seconds: float | None, err: GatewayError | None = None
    ) -> None:
        """Observe one backend operation (if timed); a failed one also counts as an error."""
        if seconds is not None:
            self.backend_ops.labels(backend, op).observe(seconds)
        if err is not None:
            self.backend_errors.labels(backend, error_kind(err)).inc()

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


class _BackendConnections(Collector):
    """``ftpgw_backend_connections{backend,state}``: read from the pools at scrape time."""

    def __init__(self, counts: Callable[[], ConnectionCounts]) -> None:
        self._counts = counts

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield self._family()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = self._family()
        for (backend, state), n in sorted(self._counts().items()):
            family.add_metric([backend, state], n)
        yield family

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "ftpgw_backend_connections",
            "Pooled SSH connections to the backends: active (serving sessions) or idle",
            labels=["backend", "state"],
        )


class _UsageView(Collector):
    """Users per phase and users on plain FTP, read from the usage database (cached)."""

    def __init__(self, headcount: Headcount) -> None:
        self._headcount = headcount
        self._lock = threading.Lock()
        self._read_at = -USAGE_CACHE_SECONDS
        self._phases: dict[str, int] = {}
        self._plain = 0

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield from self._families()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            if time.monotonic() - self._read_at >= USAGE_CACHE_SECONDS:
                self._read_at = time.monotonic()
                # Not written yet, or unreadable: the writer logs why; the gauges show 0.
                if (counted := self._headcount()) is not None:
                    self._phases, self._plain = counted
        yield from self._families(self._phases, self._plain)

    @staticmethod
    def _families(phases: dict[str, int] | None = None, plain: int = 0) -> Iterator[GaugeMetricFamily]:
        users = GaugeMetricFamily(
            "ftpgw_users",
            "Users who logged in (or were refused as retired) in the last 7 days, by their latest phase",
            labels=["phase"],
        )
        for phase in PHASES:
            users.add_metric([phase], (phases or {}).get(phase, 0))
        yield users
        yield GaugeMetricFamily(
            "ftpgw_users_plain_ftp", "Users who logged in without TLS in the last 24 hours", value=plain
        )
