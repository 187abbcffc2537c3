"""The configuration model: frozen dataclasses, one per section, and their constants.

Pure: what ``gateway.config.parse`` returns. Every field has the default that
docs/configuration.md gives.
"""

from __future__ import annotations

import enum
import ipaddress
import posixpath
from dataclasses import dataclass, field

LOG_LEVELS = ("debug", "info", "warning", "error")
AUTH_MODES = ("passthrough", "mapped", "external")


#: Migration phases of a route (legacy and shadow need a legacy FTP backend, type: ftp).
class Phase(enum.StrEnum):
    """A route's migration phase (docs/migration.md, "Migration phases"); equal to its name as a string."""

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
    """PROXY protocol v1/v2 headers from load balancers (gateway.core.proxy_protocol)."""

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
    #: A regular expression every login name must match whole (see gateway.core.routing).
    user_names: str = r"[A-Za-z0-9_][A-Za-z0-9_.-]*"


@dataclass(frozen=True)
class GuardConfig:
    """The brute-force guard (gateway.features.guard) and limits on sessions that have not logged in."""

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
    shared: bool = False  # failures and bans shared with other instances through report.database


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

    @property
    def users_dir(self) -> str:
        """The directory that holds the users' trees: ``root`` up to ``{user}`` (absolute)."""
        return posixpath.normpath(self.root.split("{user}")[0] or "/")


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
    #: (gateway.core.names); None: names are bytes, passed as they are.
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


def is_postgres(location: str) -> bool:
    """True when a report.database names a PostgreSQL database (a URL), not an SQLite file."""
    return location.startswith(("postgresql://", "postgres://"))


@dataclass(frozen=True)
class ReportConfig:
    """The usage store behind `ftp-sftp-gateway report` (no recording without a database)."""

    database: str | None = None  # an SQLite file, or a PostgreSQL URL (several instances)
    retention_days: int = 90
    per_user_metrics: int = 0  # users that get their own ftpgw_user_* series (0: none)
    #: The evidence a "ready" verdict needs: clean transfers over SFTP, over at least so many days.
    ready_after_transfers: int = 5
    ready_after_days: float = 3.0
    password: str | None = field(default=None, repr=False)  # the PostgreSQL role's (password_file/_env)


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
