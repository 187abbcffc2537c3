"""Routing: which configured route serves a login, and the backend root it gets.

Pure core. First matching route wins; user patterns are shell-style globs matched
case-sensitively, optionally with a group (of a gateway-local user) and client networks.
The user name is substituted into the root template, so it is checked first: a name that
could climb out of its template ("..", "/", control characters) never matches any route.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import posixpath

from gateway.config import RouteConfig


def is_safe_user(user: str) -> bool:
    """True if ``user`` can be placed in a path template and a log line as it is."""
    return (
        0 < len(user) <= 256
        and user.isprintable()
        and "/" not in user
        and "\\" not in user
        and user not in (".", "..")
    )


def match_route(
    routes: tuple[RouteConfig, ...],
    user: str,
    client_ip: str | None = None,
    groups: frozenset[str] = frozenset(),
) -> RouteConfig | None:
    """The first route whose user pattern, group and client networks all match, or None.

    Without ``client_ip`` (an operator's command, no client) network conditions are ignored.
    """
    if not is_safe_user(user):
        return None
    address = ipaddress.ip_address(client_ip) if client_ip else None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # an IPv4 client on a dual-stack listener
    for route in routes:
        if not fnmatch.fnmatchcase(user, route.user):
            continue
        if route.group is not None and route.group not in groups:
            continue
        if route.networks and address is not None and not any(address in net for net in route.networks):
            continue
        return route
    return None


def render_root(template: str, user: str, home: str) -> str:
    """The absolute backend root for ``user``; ``~`` stands for the backend login directory."""
    rendered = template.replace("{user}", user)
    if rendered == "~":
        rendered = home
    elif rendered.startswith("~/"):
        rendered = posixpath.join(home, rendered[2:])
    return "/" + posixpath.normpath(rendered).lstrip("/")
