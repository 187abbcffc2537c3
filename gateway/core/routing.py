"""Routing: which configured route serves a login, and the backend root it gets.

Pure core. First matching route wins; user patterns are shell-style globs matched
case-sensitively, optionally with a group (of a gateway-local user) and client networks.
The user name is substituted into the root template, so it is checked first: a name that
could climb out of its template ("..", "/", control characters) never matches any route.

Login names are also checked against what backends make of them (``acceptable_user``): a
route for "bob" must not be escaped by another spelling of bob that the backend logs in
as bob all the same.
"""

from __future__ import annotations

import fnmatch
import functools
import ipaddress
import posixpath
import re

from gateway.config import RouteConfig

#: Characters no login name may hold, whatever ``limits.user_names`` allows. OpenSSH's sshd
#: ends a login name at ":" (BSD auth styles, auth2.c: "bob:x" authenticates as bob), some
#: builds at "/" (Solaris roles); winbind takes "DOMAIN\\bob" for bob. A route for bob
#: would not match such a spelling, while the backend logs it in as bob.
_ALIASING = (":", "/", "\\")


def is_safe_user(user: str) -> bool:
    """True if ``user`` can be placed in a path template and a log line as it is."""
    return (
        0 < len(user) <= 256
        and user.isprintable()
        and not any(ch in user for ch in _ALIASING)
        and user not in (".", "..")
    )


@functools.lru_cache(maxsize=8)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def acceptable_user(user: str, pattern: str) -> bool:
    """True if ``user`` may log in: a safe name that ``pattern`` (limits.user_names) matches whole.

    The default pattern (letters, digits, "_", ".", "-") leaves out "@" too, which Kerberos
    and SSSD may strip ("bob@REALM" is bob).
    """
    return is_safe_user(user) and _compiled(pattern).fullmatch(user) is not None


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
