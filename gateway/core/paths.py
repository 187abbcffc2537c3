"""Virtual FTP paths: argument checks, lexical normalisation and confinement under a root.

Pure core. The FTP client sees a virtual tree whose "/" is the route's backend root. Every
client path is resolved lexically ("..", ".", repeated "/" collapse; ".." never climbs above
"/") and then joined under the root, so no argument can name a backend path outside it.
Symlinks are the backend's business: the real containment boundary is the backend account
or its ChrootDirectory (see docs/security.md, "Security model").
"""

from __future__ import annotations

import posixpath

from gateway.core.errors import BadArgument

# RFC 959 ends every command with CRLF; a bare CR, LF or a NUL inside an argument is either
# an injection attempt (a second command or a forged reply line echoed back in 257/550
# texts, cf. bpo-30119) or garbage. Such arguments are refused before anything is done.
_FORBIDDEN = ("\r", "\n", "\0")


def check_argument(arg: str) -> str:
    """Return ``arg`` unchanged, or raise BadArgument if it holds CR, LF or NUL."""
    if any(ch in arg for ch in _FORBIDDEN):
        raise BadArgument("Syntax error: CR, LF and NUL are not allowed in arguments.")
    return arg


def resolve(cwd: str, arg: str) -> str:
    """Resolve a client path argument against the virtual cwd; result is absolute, clamped."""
    check_argument(arg)
    joined = arg if arg.startswith("/") else f"{cwd}/{arg}"
    parts: list[str] = []
    for part in joined.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    return "/" + "/".join(parts)


def to_backend(root: str, virtual: str) -> str:
    """Map a normalised virtual path to the backend path under ``root``."""
    if virtual == "/":
        return root
    return posixpath.join(root, virtual.lstrip("/")) if root != "/" else virtual


def to_virtual(root: str, backend: str) -> str | None:
    """Map a backend path back to the virtual tree, or None if it lies outside ``root``."""
    if root == "/":
        return backend if backend.startswith("/") else None
    if backend == root:
        return "/"
    prefix = root.rstrip("/") + "/"
    if backend.startswith(prefix):
        return "/" + backend[len(prefix) :]
    return None
