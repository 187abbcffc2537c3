"""The backends, routes, gateway-local users and external authority sections of a config."""

from __future__ import annotations

import os
import shutil
import urllib.parse
from pathlib import Path
from typing import Any

from gateway.config.files import _fingerprints, _known_hosts_file, _readable_file, _secret
from gateway.config.model import (
    AUTH_MODES,
    LEGACY_PHASES,
    PHASES,
    BackendConfig,
    ExternalAuthConfig,
    LocalUser,
    Phase,
    PoolConfig,
    RouteConfig,
    ServiceAccount,
)
from gateway.config.reader import (
    _MISSING,
    _NAME_RE,
    MAX_SECONDS,
    _at_least,
    _duration,
    _named_sections,
    _networks,
    _one_of,
    _port,
    _printable,
    _root_template,
    _Section,
)
from gateway.core import names, passwords


def _ftp_backend(name: str, s: _Section, base_dir: Path) -> BackendConfig:
    """A legacy FTP server (``type: ftp``): host, port, optional FTPS."""
    ca_file = s.optional_str("ca_file", _readable_file(base_dir))
    tls = s.optional_str("tls", _one_of(("explicit", "implicit")))
    if ca_file is not None and tls is None:
        s.problem("ca_file", "only used with FTPS: set tls: explicit or implicit")
    return BackendConfig(
        name=name,
        host=s.typed("host", str, "", lambda v: None if v.strip() else "must not be empty", required=True),
        port=s.typed("port", int, 990 if tls == "implicit" else 21, _port),
        type="ftp",
        tls=tls,
        ca_file=str(base_dir / ca_file) if ca_file else None,
        connect_timeout=s.typed("connect_timeout", float, 10.0, _duration),
        operation_timeout=s.typed("operation_timeout", float, 30.0, _duration),
        service=_service(s.raw("service", None), f"{s.path}.service", s.problems, base_dir, keys=False),
    )


def _service(data: Any, path: str, problems: list[str], base_dir: Path, keys: bool) -> ServiceAccount | None:
    """``backends.NAME.service``: the account sync uses for every user of a route."""
    if data is None:
        return None
    s = _Section(data, path, problems)
    user = s.typed("user", str, "", lambda v: None if _NAME_RE.match(v) else "must be an account name", True)
    root = s.typed("root", str, "/home/{user}", _service_root)
    key_file = s.optional_str("key_file", _readable_file(base_dir)) if keys else None
    if keys and "key_file" in s.data and ("password_file" in s.data or "password_env" in s.data):
        s.problem("key_file", "set either a key or a password, not both")
    password = None if key_file or (keys and "key_file" in s.data) else _secret(s, "password", base_dir)
    s.finish()
    if not user or not (password or key_file):
        return None
    return ServiceAccount(user, password, str(base_dir / key_file) if key_file else None, root)


def _service_root(value: str) -> str | None:
    # sync lists the directory above {user} to find a route's users: it must be a whole
    # component, and absolute (the service account's own home says nothing about users).
    parts = value.split("/")
    if not value.startswith("/") or parts.count("{user}") != 1 or value.count("{user}") != 1:
        return "must be an absolute path with {user} as one whole component, e.g. /home/{user}"
    return None


def _backends(data: Any, problems: list[str], base_dir: Path) -> dict[str, BackendConfig]:
    if not data:
        problems.append("backends: must be a mapping of at least one backend name to its settings")
        return {}
    out = {}
    for name, s in _named_sections(data, "backends", "backend", problems):
        kind = s.typed("type", str, "sftp", _one_of(("sftp", "ftp")))
        if kind == "ftp":
            out[name] = _ftp_backend(name, s, base_dir)
            s.finish()
            continue
        out[name] = BackendConfig(
            name=name,
            host=s.typed(
                "host", str, "", lambda v: None if v.strip() else "must not be empty", required=True
            ),
            port=s.typed("port", int, 22, _port),
            known_hosts=str(base_dir / known_hosts) if (known_hosts := s.optional_str("known_hosts")) else "",
            host_key_fingerprints=_fingerprints(s),
            connect_timeout=s.typed("connect_timeout", float, 10.0, _duration),
            operation_timeout=s.typed("operation_timeout", float, 30.0, _duration),
            keepalive_interval=s.typed("keepalive_interval", int, 30, _at_least(0, MAX_SECONDS)),
            atomic_uploads=s.typed("atomic_uploads", bool, True),
            pool=_pool(s.raw("pool", None), f"backends.{name}.pool", problems),
            service=_service(
                s.raw("service", None), f"backends.{name}.service", problems, base_dir, keys=True
            ),
        )
        if out[name].known_hosts and (problem := _known_hosts_file(out[name].known_hosts)):
            s.problem("known_hosts", problem)
        elif (
            not out[name].known_hosts and not out[name].host_key_fingerprints and "known_hosts" not in s.data
        ):
            # Host keys are always verified: there is no way to connect without either.
            s.problem("known_hosts", "required key is missing (or pin host_key_fingerprints: [SHA256:...])")
        s.finish()
    return out


def _pool(data: Any, path: str, problems: list[str]) -> PoolConfig:
    s = _Section(data, path, problems)
    d = PoolConfig()
    cfg = PoolConfig(
        enabled=s.typed("enabled", bool, d.enabled),
        max_sessions=s.typed("max_sessions", int, d.max_sessions, _at_least(1, 1000)),
        idle_timeout=s.typed("idle_timeout", float, d.idle_timeout, _duration),
        reverify_after=s.typed("reverify_after", float, d.reverify_after, _duration),
        max_startups=s.typed("max_startups", int, d.max_startups, _at_least(1, 1000)),
        max_connections_per_user=s.typed(
            "max_connections_per_user", int, d.max_connections_per_user, _at_least(1, 10000)
        ),
    )
    s.finish()
    return cfg


def _commands(s: _Section) -> frozenset[str] | None:
    value = s.raw("commands", None)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) and v.isalpha() for v in value):
        s.problem("commands", f"must be a list of FTP verbs like [RETR, LIST, NLST], got {value!r}")
        return None
    return frozenset(v.upper() for v in value)


def _notice(s: _Section) -> str | None:
    notice, banner = s.optional_str("notice", _printable), s.optional_str("banner", _printable)
    if notice is not None and banner is not None:
        s.problem("banner", "set notice or its older name banner, not both")
    return notice if notice is not None else banner


def _phase(s: _Section, backends: dict[str, BackendConfig]) -> str:
    phase = s.typed("phase", str, Phase.SFTP.value, _one_of(PHASES))
    legacy = s.data.get("legacy")
    if legacy is not None and (
        not isinstance(legacy, str) or legacy not in backends or backends[legacy].type != "ftp"
    ):
        ftp_names = sorted(n for n, b in backends.items() if b.type == "ftp")
        s.problem(
            "legacy", f"{legacy!r} is not an FTP backend (type: ftp ones: {', '.join(ftp_names) or 'none'})"
        )
    if phase in LEGACY_PHASES and legacy is None:
        s.problem("legacy", f"phase {phase} needs the legacy FTP backend named here")
    return phase


def _routes(data: Any, backends: dict[str, BackendConfig], problems: list[str]) -> tuple[RouteConfig, ...]:
    if not isinstance(data, list) or not data:
        problems.append("routes: must be a list of at least one route (first match wins)")
        return ()
    out = []
    for index, body in enumerate(data):
        s = _Section(body, f"routes[{index}]", problems)
        raw_match = s.raw("match")
        match = _Section(None if raw_match is _MISSING else raw_match, f"routes[{index}].match", problems)
        user = match.typed("user", str, "*", lambda v: None if v else "must not be empty")
        group = match.optional_str("group")
        networks = _networks(match)
        match.finish()
        permissions = _Section(s.raw("permissions", None), f"routes[{index}].permissions", problems)
        read_only = permissions.typed("read_only", bool, False)
        commands = _commands(permissions)
        permissions.finish()
        backend = s.typed("backend", str, "", required=True)
        if backend and backends and backend not in backends:
            s.problem("backend", f"unknown backend {backend!r} (defined: {', '.join(sorted(backends))})")
        elif backend in backends and backends[backend].type != "sftp":
            s.problem("backend", f"{backend!r} is an FTP backend: name it in `legacy`, the SFTP one here")
        out.append(
            RouteConfig(
                name=s.typed(
                    "name", str, f"route{index}", lambda v: None if _NAME_RE.match(v) else "bad name"
                ),
                user=user,
                backend=backend,
                auth=s.typed("auth", str, "passthrough", _one_of(AUTH_MODES)),
                root=s.typed("root", str, "~", _root_template),
                home=s.optional_str("home", _root_template),
                banner=_notice(s),
                phase=_phase(s, backends),
                legacy=s.optional_str("legacy"),
                group=group,
                networks=networks,
                read_only=read_only,
                commands=commands,
                name_encoding=s.optional_str("name_encoding", names.encoding_problem),
            )
        )
        s.finish()
    first: dict[str, int] = {}
    for index, route in enumerate(out):
        if route.name in first:
            problems.append(
                f"routes[{index}].name: duplicate name {route.name!r} (routes[{first[route.name]}])"
            )
        first.setdefault(route.name, index)
    return tuple(out)


def _users(data: Any, problems: list[str], base_dir: Path) -> dict[str, LocalUser]:
    if data is None:
        return {}
    out = {}
    for name, s in _named_sections(data, "users", "user", problems):
        password_hash = s.typed("password_hash", str, "", passwords.hash_problem, required=True)
        backend_user = s.typed("backend_user", str, name, lambda v: None if _NAME_RE.match(v) else "bad name")
        key_file = s.optional_str("backend_key_file", _readable_file(base_dir))
        groups = s.raw("groups", [])
        if not isinstance(groups, list) or not all(isinstance(g, str) and g for g in groups):
            s.problem("groups", f"must be a list of group names, got {groups!r}")
            groups = []
        has_password = "backend_password_file" in s.data or "backend_password_env" in s.data
        has_key = "backend_key_file" in s.data  # an unreadable one is its own problem, above
        if has_key and has_password:
            s.problem("backend_key_file", "set either a key or a password for the backend, not both")
        password = _secret(s, "backend_password", base_dir) if has_password or not has_key else None
        s.finish()
        if password_hash and (password or key_file):
            key = str(base_dir / key_file) if key_file else None
            out[name] = LocalUser(name, password_hash, backend_user, password, key, frozenset(groups))
    return out


def _external_auth(data: Any, problems: list[str], base_dir: Path) -> ExternalAuthConfig | None:
    if data is None:
        return None
    s = _Section(data, "external_auth", problems)
    command = s.raw("command", None)
    url = s.optional_str("url", _auth_url)
    timeout = s.typed("timeout", float, 5.0, _duration)
    key_dir = s.optional_str(
        "key_dir", lambda v: None if (base_dir / v).is_dir() else f"no directory {base_dir / v}"
    )
    s.finish()
    if command is not None and (
        not isinstance(command, list) or not command or not all(isinstance(a, str) and a for a in command)
    ):
        s.problem("command", f"must be a list: the program and its arguments, got {command!r}")
        command = None
    elif command is not None:
        # A relative program is taken relative to the config file, like every other path.
        program = base_dir / command[0] if "/" in command[0] else shutil.which(command[0])
        if program is None or not os.access(program, os.X_OK):
            s.problem("command", f"{command[0]} is not an executable program (give its full path)")
        else:
            command = [str(program), *command[1:]]
    if (command is None) == (url is None):
        s.problem("command", "set exactly one of command or url")
        return None
    return ExternalAuthConfig(
        tuple(command or ()), url, timeout, str(base_dir / key_dir) if key_dir else None
    )


def _auth_url(value: str) -> str | None:
    # The request carries the user's password: plain HTTP only to this machine.
    parsed = urllib.parse.urlsplit(value)
    if parsed.username or parsed.password or parsed.query:
        return "must not carry credentials or a query (they would show in --print and logs)"
    if parsed.scheme == "https" and parsed.hostname:
        return None
    if parsed.scheme == "http" and parsed.hostname in ("127.0.0.1", "::1", "localhost"):
        return None
    return "must be an https:// URL (http:// only to 127.0.0.1, ::1 or localhost: passwords are sent)"
