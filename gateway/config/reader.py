"""Reading one section of a config document: typed values, each problem recorded with its
dotted key, unknown keys flagged; the value checks the sections share.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from gateway.config.model import Network

T = TypeVar("T")
_MISSING: Any = object()
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


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
