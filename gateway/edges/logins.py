"""Logging a routed user in: the backends, the credentials a route presents to them, the
route's root and home checked, a shadow phase's second login; ``open_pair`` for sync.

No listeners and no guard (``gateway.edges.app`` adds them): what ``sync`` and ``check-config
--connect`` need to reach the backends as a session would.
"""

from __future__ import annotations

import dataclasses
import logging

from gateway.backends.ftp.backend import FTPBackend
from gateway.backends.sftp.backend import SFTPBackend
from gateway.backends.sftp.files import Budget
from gateway.backends.sftp.loop import BackgroundLoop
from gateway.config import LEGACY_PHASES, BackendConfig, GatewayConfig, Phase, RouteConfig
from gateway.core import errors, logs, paths
from gateway.core.passwords import verify_password
from gateway.core.routing import render_root
from gateway.core.storage import Kind, Login, ShadowProblems, Storage
from gateway.edges import auth_external
from gateway.features.metrics import Metrics
from gateway.features.shadow import ShadowStorage

log = logging.getLogger("gateway")
shadow_log = logging.getLogger("gateway.shadow")


class RootUnusable(errors.LoginRefused):
    """The backend accepted the login but the route's root is missing or not a directory."""


#: Either kind of backend: both log users in, probe, count their pooled connections, close.
Backend = SFTPBackend | FTPBackend
#: What a login presents to its backend: (account, password, private key file).
Credentials = tuple[str, str | None, str | None]


def serving(route: RouteConfig) -> str:
    """The backend that serves the route's users in its phase: the legacy one in legacy and shadow."""
    if route.phase in LEGACY_PHASES and route.legacy:
        return route.legacy
    return route.backend


class Logins:
    """The backends and how a routed user logs in to them (no listeners, no guard)."""

    def __init__(self, cfg: GatewayConfig, metrics: Metrics) -> None:
        self.cfg, self.metrics = cfg, metrics
        self.loop = BackgroundLoop().start()
        self.budget = Budget(cfg.limits.transfer_buffer_mib * 2**20)
        self.backends = {name: self._make_backend(b) for name, b in cfg.backends.items()}
        self._old_backends: list[Backend] = []  # replaced by reloads; closed at shutdown

    def _make_backend(self, cfg: BackendConfig) -> Backend:
        if cfg.type == "ftp":
            return FTPBackend(cfg, self.metrics)
        return SFTPBackend(self.loop, cfg, self.budget, self.metrics, self.cfg.uploads.partial_ttl)

    def use(self, cfg: GatewayConfig) -> None:
        """Take a reloaded config. A backend whose settings changed is replaced; the old one
        keeps serving the sessions that use it (its pool closes idle connections by itself)
        and is closed at shutdown."""
        backends = {}
        for name, backend_cfg in cfg.backends.items():
            current = self.backends.get(name)
            same = current is not None and current.cfg == backend_cfg
            backends[name] = current if same and current is not None else self._make_backend(backend_cfg)
        self._old_backends += [b for name, b in self.backends.items() if backends.get(name) is not b]
        self.backends, self.cfg = backends, cfg

    def close_backends(self) -> None:
        """Close every backend (also those a reload replaced) and stop the background loop."""
        for backend in [*self.backends.values(), *self._old_backends]:
            backend.close()
        self.loop.stop()

    def login(
        self,
        route: RouteConfig,
        user: str,
        password: str,
        decision: auth_external.Decision | None = None,
        credentials: Credentials | None = None,
    ) -> Login:
        """Log ``user`` in on the route's backend for its phase and check its root.

        ``credentials``: what ``credentials()`` already returned for this login, if it ran.
        """
        account, secret, key = credentials or self.credentials(route, user, password, decision)
        # phase legacy: the organisation's FTP server still serves this route, in the
        # user's FTP home there; shadow: the same, with every write replayed on SFTP.
        on_legacy = route.legacy is not None and serving(route) == route.legacy
        backend_name = serving(route)
        backend = self.backends.get(backend_name)
        if backend is None:  # removed by a reload while this login was under way
            raise errors.BackendUnavailable()
        storage: Storage = backend.login(account, secret, key, owner=user)
        problems = ShadowProblems()
        if route.phase == Phase.SHADOW:
            storage = self._shadowed(route, user, storage, (account, secret, key), problems)
        root = storage.home() if on_legacy else render_root(route.root, user, storage.home())
        # The login directory: "/" of the tree, or the route's home inside it (a server that
        # logged users in at /home/u without a chroot: root "/", home "~").
        home = root if on_legacy or route.home is None else render_root(route.home, user, storage.home())
        for what, path in (("root", root), ("home", home))[: 1 if home == root else 2]:
            try:
                if paths.to_virtual(root, path) is None:
                    raise errors.NotFound("outside the route's root")
                if storage.stat(path).kind is not Kind.DIR:
                    raise errors.NotADirectory()
            except errors.StorageError as err:
                storage.close()
                log.error(
                    "route %s: %s %s of user %s unusable on backend %s: %s",
                    route.name,
                    what,
                    logs.quote(path),
                    logs.quote(user),
                    backend_name,
                    err.text,
                )
                if err.fatal:
                    raise
                raise RootUnusable() from err
        return Login(
            storage,
            root,
            route.name,
            backend_name,
            route.banner,
            route.read_only,
            route.commands,
            route.phase,
            problems,
            home=home,
            # In the legacy phases the legacy server has the clients' own bytes: no translation.
            name_encoding=None if on_legacy else route.name_encoding,
        )

    def credentials(
        self, route: RouteConfig, user: str, password: str, decision: auth_external.Decision | None
    ) -> Credentials:
        """(backend account, password, key file) this login presents to the backend."""
        if decision is not None and decision.backend_user:
            # The external authority named the backend account, and its key or password
            # (without either, the FTP password logs in to that account).
            key = decision.backend_key_file
            secret = decision.backend_password if decision.backend_password is not None else password
            return decision.backend_user, None if key else secret, key
        if route.auth == "mapped":
            # A gateway-local user: the gateway checks the password, the backend sees only
            # the mapped account's own credential (a key or a password from a file).
            local = self.cfg.users.get(user)
            # The hash check runs for unknown users too (against a dummy): same time.
            if not verify_password(password, local.password_hash if local else None) or local is None:
                raise errors.LoginRefused()
            return local.backend_user, local.backend_password, local.backend_key_file
        # passthrough: exactly one backend attempt with the FTP credentials.
        return user, password, None

    def _shadowed(
        self,
        route: RouteConfig,
        user: str,
        legacy: Storage,
        creds: Credentials,
        problems: ShadowProblems,
    ) -> Storage:
        """The legacy session with its writes replayed on SFTP (legacy alone if SFTP fails)."""

        def report(op: str, path: str, problem: str) -> None:
            self.metrics.shadow_mismatches.labels(route.name, op).inc()
            problems.add(op)  # taken by the session's usage record
            quoted = logs.quote(path), logs.quote(user)
            shadow_log.warning("shadow %s %s for user %s: %s", op, *quoted, problem)

        sftp_backend = self.backends.get(route.backend)
        try:
            if sftp_backend is None:
                raise errors.BackendUnavailable()
            sftp = sftp_backend.login(*creds)
            sftp_root = render_root(route.root, user, sftp.home())
        except errors.GatewayError as err:
            report(
                "login", route.root, f"SFTP login failed: {err.code} {err.text}; this session is not shadowed"
            )
            return legacy
        return ShadowStorage(legacy, legacy.home(), sftp, sftp_root, report, route.name_encoding)


def open_pair(logins: Logins, route: RouteConfig, user: str, password: str) -> tuple[Login, Login]:
    """(legacy login, SFTP login) of ``user`` on ``route``, for `ftp-sftp-gateway sync`."""
    legacy = logins.login(dataclasses.replace(route, phase=Phase.LEGACY.value), user, password)
    try:
        return legacy, logins.login(dataclasses.replace(route, phase=Phase.SFTP.value), user, password)
    except BaseException:
        legacy.storage.close()
        raise
