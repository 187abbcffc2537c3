"""``check-config --connect``: reach every backend as the gateway would, and say what answered.

A config can be valid and still useless: a host key that changed, a legacy server that moved,
a service account whose password expired. This opens a real connection to each backend (the
SSH key exchange with host key verification; the FTP greeting), logs in with each service
account, and with a user name logs that user in through their route, exactly as a session
would (root and home checked, the shadow copy's SFTP login too).
"""

from __future__ import annotations

from collections.abc import Iterator

from gateway.config import BackendConfig, GatewayConfig, Phase
from gateway.core import errors
from gateway.core.routing import match_route
from gateway.core.storage import Kind
from gateway.edges.logins import Logins

#: Seconds on top of a backend's connect_timeout before its probe counts as hung.
_SLACK = 5.0


def check(
    cfg: GatewayConfig, logins: Logins, user: str | None, password: str | None
) -> Iterator[tuple[bool, str]]:
    """(fine, what happened) for every backend, service account and the user's login."""
    for name, backend in cfg.backends.items():
        where = f"backends.{name} ({backend.type} {backend.host}:{backend.port})"
        try:
            problem = logins.loop.run(logins.backends[name].probe(), backend.connect_timeout + _SLACK)
        except errors.BackendTimeout:
            problem = "no answer"
        if problem is not None:
            yield False, f"{where}: {problem}"
            continue
        yield (
            True,
            f"{where}: " + ("answers, host key verified" if backend.type == "sftp" else "greets with 220"),
        )
        if backend.service is not None:
            yield _service(name, backend, logins)
    if user is not None:
        yield _user(cfg, logins, user, password or "")


def _service(name: str, backend: BackendConfig, logins: Logins) -> tuple[bool, str]:
    """Log in with the backend's service account and count the user trees it sees."""
    service = backend.service
    assert service is not None
    where = f"backends.{name}.service ({service.user})"
    try:
        storage = logins.backends[name].login(service.user, service.password, service.key_file)
    except errors.GatewayError as err:
        return False, f"{where}: cannot log in: {err.reply()}"
    parent = service.users_dir
    try:
        trees = sum(1 for entry in storage.list_dir(parent) if entry.attrs.kind is Kind.DIR)
    except errors.GatewayError as err:
        return False, f"{where}: logged in, but cannot list {parent}: {err.reply()}"
    finally:
        storage.close()
    return True, f"{where}: logged in, {trees} directories in {parent} (users' trees for sync)"


def _user(cfg: GatewayConfig, logins: Logins, user: str, password: str) -> tuple[bool, str]:
    """Log ``user`` in through their route, as an FTP session would."""
    local = cfg.users.get(user)
    route = match_route(cfg.routes, user, groups=local.groups if local else frozenset())
    if route is None:
        return False, f"user {user}: no route matches (a login would get 530)"
    where = f"user {user} (route {route.name}, phase {route.phase})"
    if route.phase == Phase.RETIRED:
        return False, f"{where}: the route is retired: FTP logins are refused"
    try:
        login = logins.login(route, user, password)
    except errors.GatewayError as err:
        return False, f"{where}: {err.reply()}"
    login.storage.close()
    if login.shadow_problems.take():  # the SFTP side of a shadow login failed (logged above)
        return False, f"{where}: logged in on {login.backend_name}, but the shadow copies' SFTP login failed"
    return True, f"{where}: logged in on backend {login.backend_name}, root {login.root}"
