"""The login policy: who may log in, composed around ``gateway.edges.logins``.

The guard first (bans, attempts in flight), then the login name, the route, the credential
mode (passthrough, mapped, external), a retired route's notice, and the backend login;
every outcome counted (``ftpgw_logins_total``), audited and told to the session's usage
record, and failures scored by the guard.
"""

from __future__ import annotations

import contextvars
import logging

from gateway.config import GatewayConfig, Phase, RouteConfig
from gateway.core import errors, logs
from gateway.core.passwords import verify_password
from gateway.core.routing import acceptable_user, match_route
from gateway.core.storage import Login, Refused
from gateway.edges import auth_external
from gateway.edges.logins import Logins, RootUnusable, serving
from gateway.features.guard import Guard
from gateway.features.metrics import Metrics

log = logging.getLogger("gateway")


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


#: Who hears of a refused login in progress on this thread (``Access.authenticate``'s
#: ``refused``: the session's usage record); a context variable, so each session's own.
_REFUSED: contextvars.ContextVar[Refused | None] = contextvars.ContextVar("refused", default=None)


class Access:
    """Authenticates FTP logins: the policy around ``Logins.login`` (the guard, routes, modes)."""

    def __init__(self, logins: Logins, guard: Guard, metrics: Metrics) -> None:
        self.logins, self.guard, self.metrics = logins, guard, metrics

    @property
    def cfg(self) -> GatewayConfig:
        """The running configuration (a reload replaces it in ``logins``)."""
        return self.logins.cfg

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
                credentials = self.logins.credentials(route, user, password, None)
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
            login = self.logins.login(route, user, password, decision, credentials)
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

    def unban(self, address: str) -> int:
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
