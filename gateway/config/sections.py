"""The other sections of a config (listen, limits, guard, tls, metrics, log, listing, uploads,
report) and the whole document put together.
"""

from __future__ import annotations

import importlib.util
import os
import re
import ssl
import urllib.parse
from pathlib import Path
from typing import Any

from gateway.config.files import _readable_file, _secret, _tls_pair_problem, _writable_file
from gateway.config.model import (
    LOG_LEVELS,
    TLS12_CIPHERS,
    BasicAuth,
    GatewayConfig,
    GuardConfig,
    LimitsConfig,
    ListenConfig,
    ListingConfig,
    LogConfig,
    MetricsConfig,
    ProxyProtocolConfig,
    ReportConfig,
    TLSConfig,
    TLSFiles,
    UploadsConfig,
    is_postgres,
)
from gateway.config.reader import (
    MAX_SECONDS,
    _at_least,
    _delay,
    _duration,
    _ip,
    _ipv4,
    _listen_port,
    _networks,
    _one_of,
    _Section,
)
from gateway.config.routes import _backends, _external_auth, _routes, _users


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


def _basic_auth(data: Any, base_dir: Path, problems: list[str]) -> BasicAuth | None:
    if data is None:
        return None
    s = _Section(data, "metrics.basic_auth", problems)
    username = s.typed("username", str, "", lambda v: None if v and ":" not in v else "non-empty, no ':'")
    password = _secret(s, "password", base_dir)
    s.finish()
    return BasicAuth(username, password) if username and password else None


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
        shared=s.typed("shared", bool, d.shared),
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
    location = s.raw("database", None)
    password = None
    s.seen.update(("password_file", "password_env"))  # known keys, checked below
    if isinstance(location, str) and is_postgres(location):
        database: str | None = s.optional_str("database", _postgres_url)
        if "password_file" in s.data or "password_env" in s.data:
            password = _secret(s, "password", base_dir)
    else:
        database = s.optional_str("database", _writable_file(base_dir))
        database = str(base_dir / database) if database else None
        for key in ("password_file", "password_env"):
            if key in s.data:
                s.problem(key, "is only for a PostgreSQL report.database (postgresql://...)")
    ready = _Section(s.raw("ready_after", None), "report.ready_after", problems)
    cfg = ReportConfig(
        database=database,
        password=password,
        retention_days=s.typed("retention_days", int, d.retention_days, _at_least(1, 3650)),
        per_user_metrics=s.typed("per_user_metrics", int, d.per_user_metrics, _at_least(0, 1000)),
        ready_after_transfers=ready.typed("transfers", int, d.ready_after_transfers, _at_least(1, 10**6)),
        ready_after_days=ready.typed("days", float, d.ready_after_days, _days_of_evidence),
    )
    ready.finish()
    s.finish()
    return cfg


def _postgres_url(value: str) -> str | None:
    """Why ``value`` cannot be the PostgreSQL URL of the usage record, or None."""
    parts = urllib.parse.urlsplit(value)
    if parts.password:
        return (
            "must not hold the password (config files are often world-readable): "
            "put it in report.password_file or report.password_env"
        )
    if not parts.hostname or not parts.path.strip("/"):
        return f"must name a host and a database, e.g. postgresql://ftpgw@db.internal/ftpgw, got {value!r}"
    if importlib.util.find_spec("psycopg") is None:
        return "needs the PostgreSQL driver: pip install 'ftp-sftp-gateway[postgres]'"
    return None


def _days_of_evidence(value: float) -> str | None:
    return None if 0 <= value <= 365 else "must be a number of days from 0 to 365"


def _cores() -> int:
    """The cores this process may use: its CPU affinity, capped by a cgroup v2 CPU quota (a
    container limited to 2 CPUs on a 64-core node gets 2)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cores = min(cores, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return cores


def _workers(top: _Section) -> int:
    """``workers``: a number, or ``auto`` for one per core this process may run on (at most 64)."""
    value = top.raw("workers", 1)
    if value == "auto":
        return min(64, _cores())
    if isinstance(value, str):
        top.problem("workers", f"must be a number from 1 to 64, or auto (not {value!r})")
        return 1
    return top.typed("workers", int, 1, _at_least(1, 64))


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
        workers=_workers(top),
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
    if cfg.guard.shared and cfg.guard.enabled and not is_postgres(cfg.report.database or ""):
        problems.append(
            "guard.shared: needs a PostgreSQL report.database (postgresql://...), where the instances "
            "share their failures and bans; without several instances, leave it false"
        )
    low, high = cfg.listen.passive_ports
    if high - low + 1 < cfg.workers:
        problems.append(
            f"workers: {cfg.workers} workers need at least as many passive ports (listen.passive_ports)"
        )
    top.finish()
    return cfg
