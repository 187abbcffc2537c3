"""Configuration: YAML file -> frozen dataclasses, every problem reported with its dotted key.

Pure core (stdlib + yaml). ``load`` reads with ``yaml.safe_load`` only, rejects unknown keys,
and collects *all* problems before raising ``ConfigError``, so an operator fixes a broken
file in one pass (like ``sshd -t``). Nothing invalid is silently replaced by a default.
"""

from __future__ import annotations

import contextvars
import dataclasses
import enum
import ipaddress
import os
import re
import shutil
import ssl
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from gateway import names, passwords

T = TypeVar("T")
_MISSING: Any = object()
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
LOG_LEVELS = ("debug", "info", "warning", "error")
AUTH_MODES = ("passthrough", "mapped", "external")


#: Migration phases of a route (legacy and shadow need a legacy FTP backend, type: ftp).
class Phase(enum.StrEnum):
    """A route's migration phase (README, "Migration phases"); equal to its name as a string."""

    LEGACY = "legacy"  # the legacy FTP server serves the route
    SHADOW = "shadow"  # ... and every write is replayed on SFTP
    SFTP = "sftp"  # the SFTP backend serves it
    RETIRED = "retired"  # FTP logins are refused with the route's notice


PHASES = tuple(Phase)
#: The phases in which the legacy server serves the route.
LEGACY_PHASES = frozenset({Phase.LEGACY, Phase.SHADOW})
#: TLS 1.2 cipher suites of every TLS listener (OpenSSL names): forward secrecy (ECDHE) and
#: AEAD only, Mozilla's "intermediate" profile without DHE. No CBC-SHA1 (Lucky13-class
#: padding oracles), no static RSA key exchange (no forward secrecy). TLS 1.3 suites are
#: OpenSSL's defaults, all of them AEAD with forward secrecy.
TLS12_CIPHERS = ":".join(
    f"ECDHE-{auth}-{cipher}"
    for cipher in ("AES128-GCM-SHA256", "AES256-GCM-SHA384", "CHACHA20-POLY1305")
    for auth in ("ECDSA", "RSA")
)


class ConfigError(Exception):
    """The configuration is invalid; ``problems`` lists every ``key: message``."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class ProxyProtocolConfig:
    """PROXY protocol v1/v2 headers from load balancers (gateway.proxy_protocol)."""

    trusted: tuple[Network, ...] = ()  # peers that must send the header; empty: off
    header_timeout: float = 5.0


@dataclass(frozen=True)
class ListenConfig:
    """The FTP control listener and its data-connection settings."""

    address: str = "127.0.0.1"
    port: int = 2121
    passive_ports: tuple[int, int] = (30000, 30100)
    masquerade_address: str | None = None
    active_mode: bool = True
    proxy_protocol: ProxyProtocolConfig = field(default_factory=ProxyProtocolConfig)


@dataclass(frozen=True)
class ListingConfig:
    """How LIST and NLST show a directory."""

    dotfiles: str = "hidden"  # hidden (as vsftpd and ls: only with -a) | shown


@dataclass(frozen=True)
class UploadsConfig:
    """What happens to uploads that did not complete."""

    #: Seconds a cut upload's data stays on the backend for a resume (SIZE, REST, APPE).
    partial_ttl: int = 86400


@dataclass(frozen=True)
class LimitsConfig:
    """Session limits and timeouts (seconds)."""

    max_connections: int = 256
    max_connections_per_ip: int = 20
    max_login_attempts: int = 3
    idle_timeout: int = 300
    data_timeout: int = 300
    failed_login_delay: float = 3.0
    transfer_buffer_mib: int = 128
    drain_timeout: float = 30.0
    checksum_max_mib: int = 16384  # HASH/XSHA*: the most a checksum reads (MiB)
    checksums_at_once: int = 2  # ... and how many the process computes at once
    #: A regular expression every login name must match whole (see gateway.routing).
    user_names: str = r"[A-Za-z0-9_][A-Za-z0-9_.-]*"


@dataclass(frozen=True)
class GuardConfig:
    """The brute-force guard (gateway.guard) and limits on sessions that have not logged in."""

    enabled: bool = True
    max_failures: int = 5  # failed logins of one user from one address within `window` before a ban
    #: ... of any users from one address before the address is banned (default: 4 x max_failures)
    max_failures_per_address: int = 20
    allow: tuple[Network, ...] = ()  # networks never scored or banned (partners' NAT addresses)
    window: float = 600.0
    ban_time: float = 900.0  # doubled for each earlier ban within `forget_after`
    max_ban_time: float = 86400.0
    forget_after: float = 86400.0
    login_grace: float = 30.0  # seconds from connect to login; NOOP does not extend it
    max_unauthenticated: int = 64  # sessions not logged in yet, in total
    max_unauthenticated_per_ip: int = 8  # ... from one address (IPv6: one /64)
    count_waiting_after: float = 5.0  # seconds before a session counts in those two caps


@dataclass(frozen=True)
class PoolConfig:
    """Reuse of SSH connections across FTP logins of the same backend user."""

    enabled: bool = True
    max_sessions: int = 8  # SFTP channels per SSH connection (OpenSSH MaxSessions is 10)
    idle_timeout: float = 60.0
    reverify_after: float = 300.0
    max_startups: int = 8  # concurrent SSH handshakes (OpenSSH MaxStartups starts at 10)
    max_connections_per_user: int = 16  # SSH connections per backend account (open and opening)


@dataclass(frozen=True)
class ServiceAccount:
    """A backend account that reaches every user's tree, for ``sync --route/--all``."""

    user: str
    password: str | None = field(default=None, repr=False)
    key_file: str | None = None  # sftp only
    #: Where a user's tree is, as this account sees it; ``{user}`` is a whole path component.
    root: str = "/home/{user}"


@dataclass(frozen=True)
class BackendConfig:
    """One backend server: SFTP (the target) or a legacy FTP server (``type: ftp``)."""

    name: str
    host: str
    port: int = 22
    type: str = "sftp"
    tls: str | None = None  # ftp only: explicit | implicit (null: plain FTP)
    ca_file: str | None = None  # ftp only: CA bundle for the legacy server's certificate
    known_hosts: str = ""
    host_key_fingerprints: tuple[str, ...] = ()  # pinned "SHA256:..." keys, instead of or besides known_hosts
    connect_timeout: float = 10.0
    operation_timeout: float = 30.0
    keepalive_interval: int = 30
    atomic_uploads: bool = True  # sftp only: STOR writes a temporary name, renamed once complete
    pool: PoolConfig = field(default_factory=PoolConfig)
    service: ServiceAccount | None = None


@dataclass(frozen=True)
class RouteConfig:
    """A routing rule: which users go to which backend, how they log in, where "/" is."""

    name: str
    user: str
    backend: str
    auth: str = "passthrough"
    root: str = "~"
    home: str | None = None  # the login directory inside root (None: root itself)
    banner: str | None = None  # the 230 text: `notice` (or its older name `banner`)
    phase: str = Phase.SFTP.value
    legacy: str | None = None  # the legacy FTP backend (phases legacy and shadow)
    group: str | None = None  # match only gateway-local users in this group
    networks: tuple[Network, ...] = ()  # match client addresses
    read_only: bool = False
    commands: frozenset[str] | None = None  # allowed FTP verbs (None: all)
    #: The clients' encoding of names, translated to the UTF-8 names of the SFTP backend
    #: (gateway.names); None: names are bytes, passed as they are.
    name_encoding: str | None = None


@dataclass(frozen=True)
class LocalUser:
    """A gateway-local FTP user (``auth: mapped``) and the backend account it logs in as."""

    name: str
    password_hash: str = field(repr=False)
    backend_user: str
    backend_password: str | None = field(default=None, repr=False)
    backend_key_file: str | None = None
    groups: frozenset[str] = frozenset()


@dataclass(frozen=True)
class ExternalAuthConfig:
    """The command or HTTP endpoint that decides ``auth: external`` logins."""

    command: tuple[str, ...] = ()
    url: str | None = None
    timeout: float = 5.0
    key_dir: str | None = None  # the only place backend_key_file answers may point into


@dataclass(frozen=True)
class LogConfig:
    """Logging level and format, and the xferlog transfer log (None: off)."""

    level: str = "info"
    format: str = "text"
    transfer_log: str | None = None


@dataclass(frozen=True)
class BasicAuth:
    """HTTP basic auth credentials (the password never appears in a repr)."""

    username: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class TLSFiles:
    """A PEM certificate (chain) and its private key."""

    certfile: str
    keyfile: str


@dataclass(frozen=True)
class TLSConfig:
    """FTPS: explicit (AUTH TLS on the control port) and, with implicit_port, implicit."""

    mode: str = "off"  # off | optional | required
    certfile: str = ""
    keyfile: str = ""
    implicit_port: int | None = None
    require_session_reuse: bool = False
    ciphers: str = TLS12_CIPHERS  # TLS 1.2 suites (OpenSSL cipher string)

    @property
    def enabled(self) -> bool:
        """True when clients can use TLS."""
        return self.mode != "off"


@dataclass(frozen=True)
class MetricsConfig:
    """The Prometheus /metrics listener (loopback by default: metrics are not public)."""

    enabled: bool = True
    address: str = "127.0.0.1"
    port: int = 9102
    basic_auth: BasicAuth | None = None  # protects /metrics; /healthz and /readyz stay open
    tls: TLSFiles | None = None


@dataclass(frozen=True)
class ReportConfig:
    """The usage store behind `ftp-sftp-gateway report` (no recording without a database)."""

    database: str | None = None
    retention_days: int = 90
    per_user_metrics: int = 0  # users that get their own ftpgw_user_* series (0: none)
    #: The evidence a "ready" verdict needs: clean transfers over SFTP, over at least so many days.
    ready_after_transfers: int = 5
    ready_after_days: float = 3.0


@dataclass(frozen=True)
class GatewayConfig:
    """The whole validated configuration."""

    listen: ListenConfig = field(default_factory=ListenConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    backends: dict[str, BackendConfig] = field(default_factory=dict)
    routes: tuple[RouteConfig, ...] = ()
    log: LogConfig = field(default_factory=LogConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    tls: TLSConfig = field(default_factory=TLSConfig)
    guard: GuardConfig = field(default_factory=GuardConfig)
    users: dict[str, LocalUser] = field(default_factory=dict)
    external_auth: ExternalAuthConfig | None = None
    report: ReportConfig = field(default_factory=ReportConfig)
    listing: ListingConfig = field(default_factory=ListingConfig)
    uploads: UploadsConfig = field(default_factory=UploadsConfig)
    workers: int = 1
    #: Where each secret came from: ("metrics.basic_auth.password_file", "/etc/..."), for
    #: ``document`` (a file name or a variable name, never the secret).
    secret_sources: tuple[tuple[str, str], ...] = field(default=(), compare=False)


def passive_share(ports: tuple[int, int], workers: int, index: int) -> tuple[int, int]:
    """The slice of the passive port range that worker ``index`` of ``workers`` listens on."""
    low, high = ports
    size = (high - low + 1) // workers
    first = low + index * size
    return first, (high if index == workers - 1 else first + size - 1)


class _Section:
    """Reads one mapping, recording problems under dotted keys and flagging unknown keys."""

    def __init__(self, data: Any, path: str, problems: list[str]) -> None:
        self.path, self.problems, self.seen = path, problems, set[str]()
        if data is None:
            data = {}
        if not isinstance(data, dict):
            problems.append(f"{path or 'config'}: must be a mapping, got {type(data).__name__}")
            data = {}
        self.data: dict[Any, Any] = data

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def problem(self, name: str, message: str) -> None:
        self.problems.append(f"{self.key(name)}: {message}")

    def raw(self, name: str, default: Any = _MISSING) -> Any:
        self.seen.add(name)
        if name in self.data:
            return self.data[name]
        if default is _MISSING:
            self.problem(name, "required key is missing")
        return default

    def typed(
        self,
        name: str,
        kind: type[T],
        default: T,
        check: Callable[[T], str | None] | None = None,
        required: bool = False,
    ) -> T:
        value = self.raw(name, _MISSING if required else default)
        if value is _MISSING:
            return default
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            self.problem(name, f"must be {kind.__name__}, got {value!r}")
            return default
        if check is not None:
            message = check(value)
            if message:
                self.problem(name, message)
                return default
        return value

    def optional_str(self, name: str, check: Callable[[str], str | None] | None = None) -> str | None:
        value = self.raw(name, None)
        if value is None:
            return None
        if not isinstance(value, str):
            self.problem(name, f"must be a string or null, got {value!r}")
            return None
        message = check(value) if check else None
        if message:
            self.problem(name, message)
            return None
        return value

    def finish(self) -> None:
        for unknown in sorted(set(map(str, self.data)) - self.seen):
            known = ", ".join(sorted(self.seen))
            self.problems.append(f"{self.key(unknown)}: unknown key (known keys here: {known})")


def _port(value: int) -> str | None:
    return None if 1 <= value <= 65535 else "must be a TCP port 1-65535"


def _listen_port(value: int) -> str | None:
    return None if 0 <= value <= 65535 else "must be a TCP port 1-65535 (0 picks a free port)"


#: Upper bound for every duration: a day. Larger values are mistakes (and an infinite one
#: would overflow the timeouts it is passed to).
MAX_SECONDS = 86400


def _duration(value: float) -> str | None:
    return None if 0 < value <= MAX_SECONDS else f"must be a number of seconds above 0, at most {MAX_SECONDS}"


def _delay(value: float) -> str | None:
    return None if 0 <= value <= MAX_SECONDS else f"must be a number of seconds from 0 to {MAX_SECONDS}"


def _at_least(low: int, high: int = 10**6) -> Callable[[int], str | None]:
    return lambda value: None if low <= value <= high else f"must be from {low} to {high}"


def _printable(value: str) -> str | None:
    return None if value.isprintable() else "must be one line of printable text (no CR, LF or tabs)"


def _ip(value: str) -> str | None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return f"{value!r} is not an IP address"
    return None


def _ipv4(value: str) -> str | None:
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        return f"{value!r} is not an IPv4 address (PASV replies carry IPv4 only)"
    return None


def _one_of(choices: tuple[str, ...]) -> Callable[[str], str | None]:
    return lambda value: None if value in choices else f"must be one of {', '.join(choices)}"


def _root_template(value: str) -> str | None:
    if not (value == "~" or value.startswith("~/") or value.startswith("/")):
        return 'must be an absolute backend path, "~" (the login directory) or start with "~/"'
    rest = value.replace("{user}", "")
    if "{" in rest or "}" in rest:
        return "the only placeholder is {user}"
    if ".." in value.split("/") or not value.isprintable():
        return 'must not contain ".." or control characters'
    return None


_FINGERPRINT_RE = re.compile(r"^SHA256:[A-Za-z0-9+/]{43}$")


def _fingerprints(s: _Section) -> tuple[str, ...]:
    value = s.raw("host_key_fingerprints", [])
    if not isinstance(value, list) or not all(isinstance(v, str) and _FINGERPRINT_RE.match(v) for v in value):
        s.problem(
            "host_key_fingerprints",
            "must be a list of SHA256:... fingerprints as `ssh-keygen -lf` prints them "
            f"(e.g. `ssh-keyscan HOST | ssh-keygen -lf -`), got {value!r}",
        )
        return ()
    return tuple(value)


def _known_hosts_file(value: str) -> str | None:
    path = Path(value)
    if not path.is_file():
        return (
            f"file not found: {value} (create it, e.g. "
            "`ssh-keyscan -p PORT HOST > FILE`, and check the fingerprints)"
        )
    if not os.access(path, os.R_OK):
        return f"file not readable: {value}"
    lines = [
        ln for ln in path.read_text(errors="replace").splitlines() if ln.strip() and not ln.startswith("#")
    ]
    if not lines:
        return f"file has no host keys: {value} (host keys are always verified)"
    return None


def _passive_ports(section: _Section) -> tuple[int, int]:
    default = ListenConfig.passive_ports
    value = section.raw("passive_ports", default)
    ok = (
        isinstance(value, list | tuple)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    )
    if not ok:
        section.problem("passive_ports", f"must be a list of two ports [first, last], got {value!r}")
        return default
    low, high = value
    if not (1024 <= low <= high <= 65535):
        section.problem("passive_ports", "needs 1024 <= first <= last <= 65535")
        return default
    return (low, high)


def _listen(data: Any, problems: list[str]) -> ListenConfig:
    s = _Section(data, "listen", problems)
    d = ListenConfig()
    cfg = ListenConfig(
        address=s.typed("address", str, d.address, _ip),
        port=s.typed("port", int, d.port, _listen_port),
        passive_ports=_passive_ports(s),
        masquerade_address=s.optional_str("masquerade_address", _ipv4),
        active_mode=s.typed("active_mode", bool, d.active_mode),
        proxy_protocol=_proxy_protocol(s.raw("proxy_protocol", None), problems),
    )
    s.finish()
    return cfg


def _proxy_protocol(data: Any, problems: list[str]) -> ProxyProtocolConfig:
    s = _Section(data, "listen.proxy_protocol", problems)
    cfg = ProxyProtocolConfig(
        trusted=_networks(s, "trusted"),
        header_timeout=s.typed("header_timeout", float, ProxyProtocolConfig.header_timeout, _duration),
    )
    s.finish()
    return cfg


def _limits(data: Any, problems: list[str]) -> LimitsConfig:
    s = _Section(data, "limits", problems)
    d = LimitsConfig()
    cfg = LimitsConfig(
        max_connections=s.typed("max_connections", int, d.max_connections, _at_least(1)),
        max_connections_per_ip=s.typed("max_connections_per_ip", int, d.max_connections_per_ip, _at_least(1)),
        max_login_attempts=s.typed("max_login_attempts", int, d.max_login_attempts, _at_least(1, 100)),
        idle_timeout=s.typed("idle_timeout", int, d.idle_timeout, _at_least(1, MAX_SECONDS)),
        data_timeout=s.typed("data_timeout", int, d.data_timeout, _at_least(1, MAX_SECONDS)),
        failed_login_delay=s.typed("failed_login_delay", float, d.failed_login_delay, _delay),
        transfer_buffer_mib=s.typed("transfer_buffer_mib", int, d.transfer_buffer_mib, _at_least(1, 1 << 20)),
        drain_timeout=s.typed("drain_timeout", float, d.drain_timeout, _delay),
        checksum_max_mib=s.typed("checksum_max_mib", int, d.checksum_max_mib, _at_least(0, 1 << 24)),
        checksums_at_once=s.typed("checksums_at_once", int, d.checksums_at_once, _at_least(1, 64)),
        user_names=s.typed("user_names", str, d.user_names, _user_names),
    )
    s.finish()
    return cfg


def _user_names(value: str) -> str | None:
    try:
        re.compile(value)
    except re.error as err:
        return f"not a regular expression: {err}"
    return None


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


def _named_sections(data: Any, key: str, what: str, problems: list[str]) -> Iterator[tuple[str, _Section]]:
    """(name, section) for each entry of a mapping of names to settings (``backends``, ``users``)."""
    if not isinstance(data, dict):
        problems.append(f"{key}: must be a mapping of {what} names to their settings")
        return
    for name, body in data.items():
        if not isinstance(name, str) or not _NAME_RE.match(name):
            problems.append(f"{key}.{name}: {what} names use letters, digits, '_', '.', '-'")
            continue
        yield name, _Section(body, f"{key}.{name}", problems)


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


def _networks(s: _Section, key: str = "network") -> tuple[Network, ...]:
    value = s.raw(key, [])
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        s.problem(key, f"must be a CIDR (10.0.0.0/8) or a list of them, got {value!r}")
        return ()
    out = []
    for text in values:
        try:
            out.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            s.problem(key, f"{text!r} is not a network like 192.0.2.0/24 or 2001:db8::/32")
    return tuple(out)


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


def _log(data: Any, problems: list[str], base_dir: Path) -> LogConfig:
    s = _Section(data, "log", problems)
    transfer_log = s.optional_str("transfer_log", _writable_file(base_dir))
    cfg = LogConfig(
        level=s.typed("level", str, "info", _one_of(LOG_LEVELS)),
        format=s.typed("format", str, "text", _one_of(("text", "json"))),
        transfer_log=str(base_dir / transfer_log) if transfer_log else None,
    )
    s.finish()
    return cfg


def _writable_file(base_dir: Path) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        path = base_dir / value
        if not value.strip():
            return "must not be empty (null turns it off)"
        if path.is_dir():
            return f"{path} is a directory (name a file in it)"
        if path.exists() and not os.access(path, os.W_OK):
            return f"file {path} is not writable by this user"
        if not path.parent.is_dir() or not os.access(path.parent, os.W_OK):
            return f"directory {path.parent} does not exist or is not writable"
        return None

    return check


def _readable_file(base_dir: Path) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        path = base_dir / value
        return None if path.is_file() and os.access(path, os.R_OK) else f"cannot read file {path}"

    return check


def _secret(s: _Section, name: str, base_dir: Path) -> str | None:
    """A secret from ``NAME_file`` (a file's content) or ``NAME_env`` (an environment variable).

    Secrets never sit in the config itself, which is often world-readable and versioned.
    One trailing line break is dropped (files and Kubernetes secrets usually end with one).
    """
    file_key, env_key = f"{name}_file", f"{name}_env"
    file_name = s.optional_str(file_key)
    env_name = s.optional_str(env_key)
    if (file_name is None) == (env_name is None):
        s.problem(file_key, f"set exactly one of {file_key} or {env_key}")
        return None
    if (sources := _SECRET_SOURCES.get()) is not None:
        source = (file_key, str(base_dir / file_name)) if file_name is not None else (env_key, str(env_name))
        sources[s.key(source[0])] = source[1]
    if file_name is not None:
        try:
            value = (base_dir / file_name).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            reason = err.strerror if isinstance(err, OSError) else "not UTF-8 text"
            s.problem(file_key, f"cannot read {base_dir / file_name}: {reason}")
            return None
    else:
        value = os.environ.get(str(env_name), "")
    value = value.removesuffix("\n").removesuffix("\r")
    if not value:
        s.problem(file_key if file_name else env_key, f"the {name} is empty or unset")
        return None
    return value


def _basic_auth(data: Any, base_dir: Path, problems: list[str]) -> BasicAuth | None:
    if data is None:
        return None
    s = _Section(data, "metrics.basic_auth", problems)
    username = s.typed("username", str, "", lambda v: None if v and ":" not in v else "non-empty, no ':'")
    password = _secret(s, "password", base_dir)
    s.finish()
    return BasicAuth(username, password) if username and password else None


def _tls_pair_problem(cert: str, key: str) -> str | None:
    """Why ``cert`` and ``key`` cannot serve TLS (not PEM, not a pair, encrypted), or None."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)

    def no_passphrase() -> str:
        raise ValueError("encrypted")

    try:
        context.load_cert_chain(cert, key, password=no_passphrase)
    except (ssl.SSLError, ValueError, OSError) as err:
        if isinstance(err, ValueError) or "encrypted" in str(err):
            return "the key is encrypted (use an unencrypted key file, readable only by the gateway)"
        return f"not a PEM certificate and matching private key ({err.__class__.__name__}: {err})"
    return None


def _tls_files(data: Any, path: str, base_dir: Path, problems: list[str]) -> TLSFiles | None:
    if data is None:
        return None
    s = _Section(data, path, problems)
    cert = s.typed("certfile", str, "", _readable_file(base_dir), required=True)
    key = s.typed("keyfile", str, "", _readable_file(base_dir), required=True)
    s.finish()
    if not (cert and key):
        return None
    files = TLSFiles(str(base_dir / cert), str(base_dir / key))
    if problem := _tls_pair_problem(files.certfile, files.keyfile):
        s.problem("keyfile", problem)
        return None
    return files


TLS_MODES = ("required", "optional", "off")


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


def _guard(data: Any, problems: list[str]) -> GuardConfig:
    s = _Section(data, "guard", problems)
    d = GuardConfig()
    max_failures = s.typed("max_failures", int, d.max_failures, _at_least(1, 1000))
    cfg = GuardConfig(
        enabled=s.typed("enabled", bool, d.enabled),
        max_failures=max_failures,
        max_failures_per_address=s.typed(
            "max_failures_per_address", int, 4 * max_failures, _at_least(1, 10000)
        ),
        allow=_networks(s, "allow"),
        window=s.typed("window", float, d.window, _duration),
        ban_time=s.typed("ban_time", float, d.ban_time, _duration),
        max_ban_time=s.typed("max_ban_time", float, d.max_ban_time, _duration),
        forget_after=s.typed("forget_after", float, d.forget_after, _duration),
        login_grace=s.typed("login_grace", float, d.login_grace, _duration),
        max_unauthenticated=s.typed("max_unauthenticated", int, d.max_unauthenticated, _at_least(1)),
        count_waiting_after=s.typed("count_waiting_after", float, d.count_waiting_after, _delay),
        max_unauthenticated_per_ip=s.typed(
            "max_unauthenticated_per_ip", int, d.max_unauthenticated_per_ip, _at_least(1)
        ),
    )
    s.finish()
    if cfg.max_ban_time < cfg.ban_time:
        problems.append("guard.max_ban_time: must be at least guard.ban_time")
    if cfg.max_failures_per_address < cfg.max_failures:
        problems.append("guard.max_failures_per_address: must be at least guard.max_failures")
    return cfg


def _tls(data: Any, problems: list[str], base_dir: Path) -> TLSConfig:
    if data is None:
        return TLSConfig()
    s = _Section(data, "tls", problems)
    # A tls section without a mode means TLS is wanted: required, the secure choice.
    mode = s.typed("mode", str, "required", _one_of(TLS_MODES))
    implicit_port = s.raw("implicit_port", None)
    reuse = s.typed("require_session_reuse", bool, False)
    ciphers = s.typed("ciphers", str, TLS12_CIPHERS, _cipher_string)
    pair = {key: value for key in ("certfile", "keyfile") if (value := s.raw(key, None)) is not None}
    s.finish()
    if mode == "off":
        if reuse:
            s.problem("require_session_reuse", "needs TLS (tls.mode required or optional)")
        return TLSConfig()
    bad_port = (
        not isinstance(implicit_port, int) or isinstance(implicit_port, bool) or _listen_port(implicit_port)
    )
    if implicit_port is not None and bad_port:
        s.problem(
            "implicit_port",
            f"must be a port (usually 990; 0 picks a free one) or null, got {implicit_port!r}",
        )
        implicit_port = None
    files = _tls_files(pair, "tls", base_dir, problems)
    if files is None:
        return TLSConfig()
    return TLSConfig(mode, files.certfile, files.keyfile, implicit_port, reuse, ciphers)


def _cipher_string(value: str) -> str | None:
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ciphers(value)
    except ssl.SSLError:
        return f"{value!r} names no cipher suite OpenSSL knows (see `openssl ciphers -v 'STRING'`)"
    return None


def _metrics(data: Any, problems: list[str], base_dir: Path) -> MetricsConfig:
    s = _Section(data, "metrics", problems)
    d = MetricsConfig()
    cfg = MetricsConfig(
        enabled=s.typed("enabled", bool, d.enabled),
        address=s.typed("address", str, d.address, _ip),
        port=s.typed("port", int, d.port, _listen_port),
        basic_auth=_basic_auth(s.raw("basic_auth", None), base_dir, problems),
        tls=_tls_files(s.raw("tls", None), "metrics.tls", base_dir, problems),
    )
    s.finish()
    return cfg


def _listing(data: Any, problems: list[str]) -> ListingConfig:
    s = _Section(data, "listing", problems)
    cfg = ListingConfig(
        dotfiles=s.typed("dotfiles", str, ListingConfig.dotfiles, _one_of(("hidden", "shown")))
    )
    s.finish()
    return cfg


def _uploads(data: Any, problems: list[str]) -> UploadsConfig:
    s = _Section(data, "uploads", problems)
    # At least a minute: a shorter time would remove data of uploads that are still running
    # slowly; at most 30 days (kept partials hold backend disk space).
    cfg = UploadsConfig(
        partial_ttl=s.typed("partial_ttl", int, UploadsConfig.partial_ttl, _at_least(60, 30 * 86400))
    )
    s.finish()
    return cfg


def _report(data: Any, problems: list[str], base_dir: Path) -> ReportConfig:
    s = _Section(data, "report", problems)
    d = ReportConfig()
    database = s.optional_str("database", _writable_file(base_dir))
    ready = _Section(s.raw("ready_after", None), "report.ready_after", problems)
    cfg = ReportConfig(
        database=str(base_dir / database) if database else None,
        retention_days=s.typed("retention_days", int, d.retention_days, _at_least(1, 3650)),
        per_user_metrics=s.typed("per_user_metrics", int, d.per_user_metrics, _at_least(0, 1000)),
        ready_after_transfers=ready.typed("transfers", int, d.ready_after_transfers, _at_least(1, 10**6)),
        ready_after_days=ready.typed("days", float, d.ready_after_days, _days_of_evidence),
    )
    ready.finish()
    s.finish()
    return cfg


def _days_of_evidence(value: float) -> str | None:
    return None if 0 <= value <= 365 else "must be a number of days from 0 to 365"


def parse(data: Any, base_dir: str | os.PathLike[str] | None = None) -> GatewayConfig:
    """Validate a parsed YAML document; raise ConfigError listing every problem.

    Relative file names (known_hosts, log and TLS files) are taken relative to ``base_dir``, the directory of
    the config file (default: the current directory).
    """
    problems: list[str] = []
    top = _Section(data, "", problems)
    base = Path(base_dir or ".").absolute()
    sources: dict[str, str] = {}
    token = _SECRET_SOURCES.set(sources)
    try:
        cfg = _parse(top, base, problems)
    finally:
        _SECRET_SOURCES.reset(token)
    if problems:
        raise ConfigError(problems)
    return dataclasses.replace(cfg, secret_sources=tuple(sorted(sources.items())))


#: The secret sources ``parse`` is collecting (``_secret`` records each).
_SECRET_SOURCES: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "secret_sources", default=None
)


def _parse(top: _Section, base: Path, problems: list[str]) -> GatewayConfig:
    backends = _backends(top.raw("backends"), problems, base)
    cfg = GatewayConfig(
        listen=_listen(top.raw("listen", None), problems),
        limits=_limits(top.raw("limits", None), problems),
        backends=backends,
        routes=_routes(top.raw("routes"), backends, problems),
        log=_log(top.raw("log", None), problems, base),
        metrics=_metrics(top.raw("metrics", None), problems, base),
        tls=_tls(top.raw("tls", None), problems, base),
        guard=_guard(top.raw("guard", None), problems),
        users=_users(top.raw("users", None), problems, base),
        external_auth=_external_auth(top.raw("external_auth", None), problems, base),
        report=_report(top.raw("report", None), problems, base),
        listing=_listing(top.raw("listing", None), problems),
        uploads=_uploads(top.raw("uploads", None), problems),
        workers=top.typed("workers", int, 1, _at_least(1, 64)),
    )
    for name in cfg.users:
        if not re.fullmatch(cfg.limits.user_names, name):
            problems.append(
                f"users.{name}: does not match limits.user_names ({cfg.limits.user_names}): "
                "rename the user or widen the pattern"
            )
    for index, route in enumerate(cfg.routes):
        if route.auth == "mapped" and not top.raw("users", None):  # not: all of them have problems
            problems.append(f"routes[{index}].auth: 'mapped' needs gateway-local users in `users`")
        if route.auth == "external" and cfg.external_auth is None:
            problems.append(f"routes[{index}].auth: 'external' needs an `external_auth` section")
    low, high = cfg.listen.passive_ports
    if high - low + 1 < cfg.workers:
        problems.append(
            f"workers: {cfg.workers} workers need at least as many passive ports (listen.passive_ports)"
        )
    top.finish()
    return cfg


def redacted(value: Any) -> Any:
    """``value`` (a config dataclass) as plain data, every secret field (repr=False) redacted."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: (f.repr, getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {
            name: redacted(v) if shown or v is None else "<redacted>"  # an unset secret is null
            for name, (shown, v) in fields.items()
        }
    if isinstance(value, dict):
        return {str(k): redacted(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redacted(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted(redacted(v) for v in value)
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return str(value)
    return value


#: Keys of a legacy FTP backend (``type: ftp``); the other BackendConfig fields are SFTP's.
_FTP_BACKEND_KEYS = (
    "type",
    "host",
    "port",
    "tls",
    "ca_file",
    "connect_timeout",
    "operation_timeout",
    "service",
)


def document(cfg: GatewayConfig) -> dict[str, Any]:
    """The effective config as a document ``parse`` accepts (``check-config --print``):
    every default written out, file names absolute, and each secret as the file or variable
    it came from, never its value."""
    doc: dict[str, Any] = redacted(cfg)
    sources = dict(cfg.secret_sources)
    del doc["secret_sources"]

    def secret(section: dict[str, Any], path: str, name: str) -> None:
        section.pop(name, None)
        for key in (f"{name}_file", f"{name}_env"):
            if f"{path}.{key}" in sources:
                section[key] = sources[f"{path}.{key}"]

    def drop_nulls(section: dict[str, Any]) -> None:
        for key in [k for k, v in section.items() if v is None]:
            del section[key]

    for name, backend in doc["backends"].items():
        del backend["name"]
        if backend["type"] == "ftp":
            for key in set(backend) - set(_FTP_BACKEND_KEYS):
                del backend[key]
        else:
            del backend["tls"], backend["ca_file"]
        if backend["service"] is not None:
            secret(backend["service"], f"backends.{name}.service", "password")
            drop_nulls(backend["service"])
        drop_nulls(backend)
    for route in doc["routes"]:
        route["match"] = {
            "user": route.pop("user"),
            "group": route.pop("group"),
            "network": route.pop("networks"),
        }
        route["permissions"] = {"read_only": route.pop("read_only"), "commands": route.pop("commands")}
        route["notice"] = route.pop("banner")
        drop_nulls(route["match"])
        drop_nulls(route["permissions"])
        drop_nulls(route)
    for name, user in doc["users"].items():
        del user["name"]
        user["password_hash"] = cfg.users[name].password_hash  # as in the file it came from
        secret(user, f"users.{name}", "backend_password")
        drop_nulls(user)
    if doc["metrics"]["basic_auth"] is not None:
        secret(doc["metrics"]["basic_auth"], "metrics.basic_auth", "password")
    report = doc["report"]
    report["ready_after"] = {
        "transfers": report.pop("ready_after_transfers"),
        "days": report.pop("ready_after_days"),
    }
    return doc


def load(path: str | os.PathLike[str]) -> GatewayConfig:
    """Read and validate a YAML config file (``yaml.safe_load`` only)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError([f"{path}: cannot read config file: {err.strerror}"]) from err
    except UnicodeDecodeError as err:
        raise ConfigError([f"{path}: not UTF-8 text (byte {err.start}): save it as UTF-8"]) from err
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError([f"{path}: not valid YAML: {err}"]) from err
    return parse(data, Path(path).absolute().parent)
