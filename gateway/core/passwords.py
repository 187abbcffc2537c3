"""Password hashes for gateway-local users (``auth: mapped``): salted scrypt, standard library.

Format: ``scrypt$N$r$p$<salt, base64>$<hash, base64>``, what ``ftp-sftp-gateway
hash-password`` prints. N = 2**14 costs about 50 ms and 16 MiB per check: slow enough
against offline guessing, and online guessing is bounded by the guard.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

_N, _R, _P = 2**14, 8, 1
_SALT_BYTES, _HASH_BYTES = 16, 32
#: A hash of nothing in particular: unknown users are checked against it, so the reply
#: takes as long as for a known user (no user enumeration by timing).
_DUMMY = "scrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="


def hash_password(password: str, salt: bytes | None = None) -> str:
    """The encoded scrypt hash of ``password`` with a new random salt."""
    salt = salt or os.urandom(_SALT_BYTES)
    digest = _scrypt(password, salt, _N, _R, _P)
    return f"scrypt${_N}${_R}${_P}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def hash_problem(encoded: str) -> str | None:
    """Why ``encoded`` is not a usable hash (for config validation), or None."""
    try:
        _parse(encoded)
    except ValueError as err:
        return f"{err} (make one with `ftp-sftp-gateway hash-password`)"
    return None


def verify_password(password: str, encoded: str | None) -> bool:
    """True if ``password`` matches ``encoded`` (None: an unknown user, checked all the same)."""
    n, r, p, salt, expected = _parse(encoded or _DUMMY)
    ok = hmac.compare_digest(_scrypt(password, salt, n, r, p), expected)
    return ok and encoded is not None


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    data = password.encode("utf-8", "surrogateescape")
    return hashlib.scrypt(data, salt=salt, n=n, r=r, p=p, maxmem=256 * 2**20, dklen=_HASH_BYTES)


def _parse(encoded: str) -> tuple[int, int, int, bytes, bytes]:
    parts = encoded.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        raise ValueError("not a scrypt$N$r$p$salt$hash string")
    try:
        n, r, p = (int(x) for x in parts[1:4])
        salt, digest = base64.b64decode(parts[4], validate=True), base64.b64decode(parts[5], validate=True)
    except ValueError as err:
        raise ValueError("malformed scrypt hash") from err
    if n < 2**14 or n & (n - 1) or not (1 <= r <= 64 and 1 <= p <= 16) or len(digest) != _HASH_BYTES:
        raise ValueError("scrypt parameters too weak or out of range (N >= 16384, a power of 2)")
    if 128 * n * r > 128 * 2**20:
        raise ValueError("scrypt parameters too costly (128 * N * r over 128 MiB per login)")
    return n, r, p, salt, digest
