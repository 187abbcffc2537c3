"""Checksums of backend files for HASH (draft-bryan-ftpext-hash) and XSHA256/XSHA512/XSHA1/XMD5/XCRC.

Pure core over the storage interface. OpenSSH's sftp-server has no hash extension, so the
file is read through the backend and hashed here: bounded in size (``limits.checksum_max_mib``)
and in how many run at once in the process (``limits.checksums_at_once``), since each one
reads a whole file. ProFTPD's mod_digest is the reference for the replies.
"""

from __future__ import annotations

import hashlib
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from gateway.core import errors
from gateway.core.storage import Kind, Storage

#: The algorithms in their IANA names (OPTS HASH, the HASH reply) as FEAT lists them.
ALGORITHMS = ("SHA-256", "SHA-512", "SHA-1", "MD5", "CRC32")
#: The older per-algorithm commands (ProFTPD, FileZilla Server, Serv-U).
X_COMMANDS = {
    "XSHA256": "SHA-256",
    "XSHA512": "SHA-512",
    "XSHA1": "SHA-1",
    "XSHA": "SHA-1",
    "XMD5": "MD5",
    "XCRC": "CRC32",
}
_CHUNK = 1 << 20


class _Hash(Protocol):
    def update(self, data: bytes, /) -> None: ...

    def hexdigest(self) -> str: ...


class _Crc32:
    """CRC-32 (as zlib computes it) behind the hashlib interface."""

    def __init__(self) -> None:
        self._value = 0

    def update(self, data: bytes, /) -> None:
        self._value = zlib.crc32(data, self._value)

    def hexdigest(self) -> str:
        return f"{self._value:08x}"


_NEW: dict[str, Callable[[], _Hash]] = {
    "SHA-256": hashlib.sha256,
    "SHA-512": hashlib.sha512,
    "SHA-1": hashlib.sha1,
    "MD5": hashlib.md5,
    "CRC32": _Crc32,
}


class Busy(errors.GatewayError):
    """Every checksum place of the process is taken: try again later (the draft's 450)."""

    code = 450
    text = "Too many checksums being computed; try again later."


class TooBig(errors.GatewayError):
    """The range is larger than the configured maximum (ProFTPD answers HASH with 556)."""

    code = 556
    text = "File too large to checksum here."


class NotAFile(errors.GatewayError):
    """Only regular files have checksums (the draft's 553 for HASH)."""

    code = 553
    text = "Not a regular file."


@dataclass
class Limits:
    """Process-wide bounds on checksum work (thread-safe)."""

    max_bytes: int
    at_once: int

    def __post_init__(self) -> None:
        self._places = threading.BoundedSemaphore(self.at_once)

    def compute(
        self, storage: Storage, path: str, algorithm: str, start: int = 0, end: int | None = None
    ) -> str:
        """The hex digest of bytes ``start`` to ``end`` (exclusive; None: the end of the file)."""
        attrs = storage.stat(path)
        if attrs.kind is not Kind.FILE:
            raise NotAFile()
        stop = attrs.size if end is None else end
        if not 0 <= start <= stop <= attrs.size:
            raise errors.BadArgument(f"Range {start}-{stop} is not within the file (size {attrs.size}).")
        if stop - start > self.max_bytes:
            raise TooBig()
        if not self._places.acquire(blocking=False):
            raise Busy()
        try:
            return _digest(storage, path, algorithm, start, stop)
        finally:
            self._places.release()


def _digest(storage: Storage, path: str, algorithm: str, start: int, stop: int) -> str:
    digest = _NEW[algorithm]()
    stream = storage.open_read(path)
    try:
        stream.seek(start)
        left = stop - start
        while left > 0:
            chunk = bytes(stream.read(min(_CHUNK, left)))[:left]
            if not chunk:
                raise errors.BackendFailure("The file got shorter while its checksum was computed.")
            digest.update(chunk)
            left -= len(chunk)
    finally:
        stream.close()
    return digest.hexdigest()
