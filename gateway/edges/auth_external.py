"""External authentication (``auth: external``): a command or an HTTP endpoint decides.

The gateway sends ``{"user", "password", "client_ip", "tls"}`` as JSON (on the command's
stdin, or as the body of a POST) and expects a JSON object back:

* ``{"allow": false}``: refused (530, counted by the guard like a wrong password);
* ``{"allow": true}``: the FTP credentials log in to the route's backend (passthrough);
* optionally ``"route": NAME`` to use another configured route, and ``"backend_user"`` with
  ``"backend_password"`` or ``"backend_key_file"`` for the account to log in as.

The password travels only on stdin or in the request body: never in argv, the environment
or a URL, which other local users or proxies could see.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.config import ExternalAuthConfig


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an error: the answer must come from the configured endpoint itself."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


#: No proxy (http_proxy would see the password) and no redirects.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())

#: Largest answer read from the command or endpoint.
_MAX_ANSWER = 64 * 1024


class ExternalAuthError(Exception):
    """The command or endpoint failed or answered nonsense (the login gets 421)."""


@dataclass(frozen=True)
class Decision:
    """What the external authority said (secrets have no repr)."""

    allow: bool
    route: str | None = None
    backend_user: str | None = None
    backend_password: str | None = field(default=None, repr=False)
    backend_key_file: str | None = None


def ask(cfg: ExternalAuthConfig, user: str, password: str, client_ip: str, tls: bool) -> Decision:
    """Ask the configured command or endpoint about one login."""
    request = json.dumps({"user": user, "password": password, "client_ip": client_ip, "tls": tls}).encode()
    answer = _run(cfg, request) if cfg.command else _post(cfg, request)
    try:
        doc = json.loads(answer)
    except ValueError as err:
        raise ExternalAuthError("answer is not JSON") from err
    decision = _decision(doc)
    if decision.backend_key_file is not None:
        # The authority may only pick among keys the operator put aside for it.
        key_dir = Path(cfg.key_dir).resolve() if cfg.key_dir else None
        if key_dir is None or not Path(decision.backend_key_file).resolve().is_relative_to(key_dir):
            raise ExternalAuthError("backend_key_file outside external_auth.key_dir")
    return decision


def _run(cfg: ExternalAuthConfig, request: bytes) -> bytes:
    # A minimal environment: the gateway's own (secrets named by *_env settings among
    # them) is none of the command's business.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
    try:
        done = subprocess.run(
            list(cfg.command), input=request, capture_output=True, timeout=cfg.timeout, check=False, env=env
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise ExternalAuthError(f"command failed: {err.__class__.__name__}") from err
    if done.returncode != 0:
        raise ExternalAuthError(f"command exited with status {done.returncode}")
    return done.stdout[:_MAX_ANSWER]


def _post(cfg: ExternalAuthConfig, request: bytes) -> bytes:
    headers = {"Content-Type": "application/json"}
    req = urllib.request.Request(str(cfg.url), data=request, headers=headers, method="POST")
    try:
        with _OPENER.open(req, timeout=cfg.timeout) as resp:
            return bytes(resp.read(_MAX_ANSWER))
    except urllib.error.HTTPError as err:
        raise ExternalAuthError(f"endpoint answered HTTP {err.code}") from err
    except (OSError, ValueError) as err:
        raise ExternalAuthError(f"endpoint unreachable: {err.__class__.__name__}") from err


def _decision(doc: Any) -> Decision:
    if not isinstance(doc, dict) or not isinstance(doc.get("allow"), bool):
        raise ExternalAuthError('answer must be a JSON object with a boolean "allow"')
    texts = {key: doc.get(key) for key in ("route", "backend_user", "backend_password", "backend_key_file")}
    if any(value is not None and not isinstance(value, str) for value in texts.values()):
        raise ExternalAuthError("route, backend_user, backend_password, backend_key_file must be strings")
    if texts["backend_password"] is not None and texts["backend_key_file"] is not None:
        raise ExternalAuthError("answer has both backend_password and backend_key_file")
    return Decision(doc["allow"], **texts)
