"""Configuration: YAML file -> frozen dataclasses, every problem reported with its dotted key.

Pure core (stdlib + yaml). ``load`` reads with ``yaml.safe_load`` only, rejects unknown keys,
and collects *all* problems before raising ``ConfigError``, so an operator fixes a broken
file in one pass (like ``sshd -t``). Nothing invalid is silently replaced by a default.

The package: ``model`` (the dataclasses), ``reader`` (one section read, its problems),
``files`` (file checks and secrets), ``routes`` (backends, routes, users, external auth),
``sections`` (the other sections and the whole document); here, the public entry points.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from pathlib import Path
from typing import Any

import yaml

from gateway.config.files import _SECRET_SOURCES
from gateway.config.model import (
    AUTH_MODES,
    LEGACY_PHASES,
    LOG_LEVELS,
    PHASES,
    TLS12_CIPHERS,
    BackendConfig,
    BasicAuth,
    ConfigError,
    ExternalAuthConfig,
    GatewayConfig,
    GuardConfig,
    LimitsConfig,
    ListenConfig,
    ListingConfig,
    LocalUser,
    LogConfig,
    MetricsConfig,
    Network,
    Phase,
    PoolConfig,
    ProxyProtocolConfig,
    ReportConfig,
    RouteConfig,
    ServiceAccount,
    TLSConfig,
    TLSFiles,
    UploadsConfig,
    is_postgres,
    passive_share,
)
from gateway.config.reader import _Section
from gateway.config.sections import _parse

__all__ = [
    "AUTH_MODES",
    "LEGACY_PHASES",
    "LOG_LEVELS",
    "PHASES",
    "TLS12_CIPHERS",
    "BackendConfig",
    "BasicAuth",
    "ConfigError",
    "ExternalAuthConfig",
    "GatewayConfig",
    "GuardConfig",
    "LimitsConfig",
    "ListenConfig",
    "ListingConfig",
    "LocalUser",
    "LogConfig",
    "MetricsConfig",
    "Network",
    "Phase",
    "PoolConfig",
    "ProxyProtocolConfig",
    "ReportConfig",
    "RouteConfig",
    "ServiceAccount",
    "TLSConfig",
    "TLSFiles",
    "UploadsConfig",
    "document",
    "is_postgres",
    "load",
    "parse",
    "passive_share",
    "redacted",
]


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
    secret(report, "report", "password")
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
