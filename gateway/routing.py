"""Routing: which configured route serves a login, and the backend root it gets.

Pure core. First matching route wins; user patterns are shell-style globs matched
case-sensitively. The user name is substituted into the root template, so it is checked
first: a name that could climb out of its template ("..", "/", control characters) never
matches any route.
"""

from __future__ import annotations

import fnmatch
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


def match_route(routes: tuple[RouteConfig, ...], user: str) -> RouteConfig | None:
    """The first route whose pattern matches ``user``, or None."""
    if not is_safe_user(user):
        return None
    for route in routes:
        if fnmatch.fnmatchcase(user, route.user):
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
