"""The file checks of a config: known_hosts, readable and writable files, TLS pairs, and
secrets read from files or environment variables (their sources kept for ``--print``).
"""

from __future__ import annotations

import contextvars
import os
import ssl
from collections.abc import Callable
from pathlib import Path

from gateway.config.reader import _FINGERPRINT_RE, _Section


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


#: The secret sources ``parse`` is collecting (``_secret`` records each).
_SECRET_SOURCES: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "secret_sources", default=None
)


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
