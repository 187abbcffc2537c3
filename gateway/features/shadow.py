"""Phase ``shadow``: the legacy FTP server serves the user, every write is replayed on SFTP.

Reads come from the legacy backend and the client's replies follow it; each write (upload,
append, delete, rename, mkdir, rmdir, chmod, mtime) is then repeated on the SFTP backend.
A failure on the SFTP side never fails the client's command: it is reported. After each
upload both copies are compared (size, and SHA-256 of the SFTP copy against the bytes the
client sent) and a mismatch is reported.
"""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Callable, Iterator
from typing import Any

from gateway.core import errors, names
from gateway.core.storage import Attrs, Entry, Passthrough, Storage, WriteStream

#: Called with (operation, backend path, what went wrong) when the SFTP copy diverges.
Report = Callable[[str, str, str], None]


class ShadowStorage:
    """Legacy storage with its writes replayed on an SFTP storage (implements Storage)."""

    def __init__(
        self,
        legacy: Storage,
        legacy_root: str,
        sftp: Storage,
        sftp_root: str,
        report: Report,
        name_encoding: str | None = None,
    ) -> None:
        self.legacy, self.sftp, self._report = legacy, sftp, report
        self._legacy_root, self._sftp_root = legacy_root, sftp_root
        self._name_encoding = name_encoding  # the route's: SFTP names are what the bytes mean

    def _mirror(self, path: str) -> str:
        relative = names.recode(posixpath.relpath(path, self._legacy_root), self._name_encoding)
        return posixpath.normpath(posixpath.join(self._sftp_root, "" if relative == "." else relative))

    def _replay(self, op: str, path: str, action: Callable[[], Any]) -> None:
        try:
            action()
        except errors.GatewayError as err:
            self._report(op, path, f"SFTP {err.code} {err.text}")

    # --- reads: the legacy server

    def site(self, command: str) -> tuple[int, list[str]]:
        """SITE commands go to the legacy server, which serves this phase."""
        if not isinstance(self.legacy, Passthrough):
            raise errors.Unsupported()
        return self.legacy.site(command)

    def raw_listing(self, command: str, directory: str) -> list[str]:
        """Listings come from the legacy server, which serves this phase."""
        if not isinstance(self.legacy, Passthrough):
            raise errors.Unsupported()
        return self.legacy.raw_listing(command, directory)

    @property
    def alive(self) -> bool:
        """The client's session lives as long as the legacy connection."""
        return self.legacy.alive

    def home(self) -> str:
        """The legacy login directory."""
        return self.legacy.home()

    def stat(self, path: str) -> Attrs:
        """From the legacy server."""
        return self.legacy.stat(path)

    def lstat(self, path: str) -> Attrs:
        """From the legacy server."""
        return self.legacy.lstat(path)

    def list_dir(self, path: str) -> Iterator[Entry]:
        """From the legacy server."""
        return self.legacy.list_dir(path)

    def open_read(self, path: str, known: Attrs | None = None) -> Any:
        """From the legacy server."""
        return self.legacy.open_read(path, known)

    # --- writes: legacy first (its result is the client's), then SFTP

    def open_write(
        self, path: str, mode: str, resumable: bool = False, told: int | None = None
    ) -> ShadowWriteStream:
        """Upload to both; the legacy one decides, the SFTP one is compared (and not kept if cut)."""
        primary = self.legacy.open_write(path, mode)
        mirror = self._mirror(path)
        return ShadowWriteStream(self, primary, lambda: self._open_copy(mirror, mode), mirror, mode)

    def create_unique(self, directory: str, prefix: str) -> WriteStream:
        """STOU: on the legacy server, replayed under the name it got."""
        primary = self.legacy.create_unique(directory, prefix)
        mirror = self._mirror(primary.name)
        return ShadowWriteStream(self, primary, lambda: self._open_copy(mirror, "w"), mirror, "w")

    def _open_copy(self, mirror: str, mode: str) -> WriteStream | None:
        """The SFTP side of an upload; missing parent directories are created (they may
        predate the shadow phase: `sync` copies their other files)."""
        try:
            try:
                return self.sftp.open_write(mirror, mode)
            except errors.NotFound:
                self._make_parents(posixpath.dirname(mirror))
                return self.sftp.open_write(mirror, mode)
        except errors.GatewayError as err:
            self._report("upload", mirror, f"SFTP open: {err.code} {err.text}")
            return None

    def _make_parents(self, directory: str) -> None:
        missing = []
        while directory not in (self._sftp_root, "/") and directory.startswith(self._sftp_root):
            try:
                self.sftp.stat(directory)
                break
            except errors.NotFound:
                missing.append(directory)
                directory = posixpath.dirname(directory)
        for path in reversed(missing):
            self.sftp.mkdir(path)

    def mkdir(self, path: str) -> None:
        """MKD on both."""
        self.legacy.mkdir(path)
        self._replay("mkdir", self._mirror(path), lambda: self.sftp.mkdir(self._mirror(path)))

    def rmdir(self, path: str) -> None:
        """RMD on both."""
        self.legacy.rmdir(path)
        self._replay("rmdir", self._mirror(path), lambda: self.sftp.rmdir(self._mirror(path)))

    def remove(self, path: str) -> None:
        """DELE on both."""
        self.legacy.remove(path)
        self._replay("delete", self._mirror(path), lambda: self.sftp.remove(self._mirror(path)))

    def rename(self, src: str, dst: str) -> None:
        """RNFR/RNTO on both."""
        self.legacy.rename(src, dst)
        mirror = self._mirror(dst)
        self._replay("rename", mirror, lambda: self.sftp.rename(self._mirror(src), mirror))

    def stat_for_resume(self, path: str) -> tuple[Attrs | None, int | None]:
        """The legacy file's attributes; never a partial: the legacy server keeps a cut
        upload under its final name."""
        return self.legacy.stat_for_resume(path)

    def chmod(self, path: str, mode: int) -> None:
        """SITE CHMOD on both."""
        self.legacy.chmod(path, mode)
        self._replay("chmod", self._mirror(path), lambda: self.sftp.chmod(self._mirror(path), mode))

    def set_mtime(self, path: str, mtime: int) -> None:
        """MFMT on both."""
        self.legacy.set_mtime(path, mtime)
        self._replay("mtime", self._mirror(path), lambda: self.sftp.set_mtime(self._mirror(path), mtime))

    def chown(self, path: str, uid: int, gid: int) -> None:
        """The legacy FTP side has no command for it."""
        raise errors.Unsupported()

    def close(self) -> None:
        """End both sessions."""
        self.legacy.close()
        self.sftp.close()


class ShadowWriteStream:
    """An upload written to the legacy server and, as a copy, to SFTP.

    The copy is opened once the legacy server has taken the upload (its first write, or its
    close for an empty file): one the legacy server refuses leaves nothing on SFTP, not even
    the parent directories the copy would create.
    """

    def __init__(
        self,
        owner: ShadowStorage,
        primary: WriteStream,
        open_copy: Callable[[], WriteStream | None],
        mirror: str,
        mode: str,
    ) -> None:
        self.owner, self.primary, self.mirror = owner, primary, mirror
        self.secondary: WriteStream | None = None
        self._open_copy: Callable[[], WriteStream | None] | None = open_copy
        self.name, self.closed, self._mode = primary.name, False, mode
        self._digest, self._sent, self._offset = hashlib.sha256(), 0, 0

    def seek(self, offset: int) -> None:
        """REST on both."""
        self._offset = offset
        self.primary.seek(offset)

    def _copy(self) -> WriteStream | None:
        """The SFTP copy, opened (at the upload's offset) the first time it is needed."""
        if self._open_copy is not None:
            opener, self._open_copy = self._open_copy, None
            self.secondary = opener()
            if self.secondary is not None and self._offset:
                self.secondary.seek(self._offset)
        return self.secondary

    def write(self, data: bytes) -> int:
        """Legacy first (its errors are the client's), then the copy."""
        written = self.primary.write(data)
        self._digest.update(data)
        self._sent += len(data)
        if (copy := self._copy()) is not None:
            try:
                copy.write(data)
            except errors.GatewayError as err:
                self.owner._report("upload", self.mirror, f"SFTP write: {err.code} {err.text}")
                copy.abort()
                self.secondary = None
        return written

    def close(self) -> None:
        """Finish both; the client's 226 depends on the legacy server only."""
        if self.closed:
            return
        self.closed = True
        try:
            self.primary.close()
        except errors.GatewayError:
            if self.secondary is not None:
                self.secondary.abort()
            raise
        if (copy := self._copy()) is None:
            return
        try:
            copy.close()
        except errors.GatewayError as err:
            self.owner._report("upload", self.mirror, f"SFTP close: {err.code} {err.text}")
            return
        self._compare()

    def _compare(self) -> None:
        """Size of both stored copies; for a whole-file upload, SHA-256 of the SFTP copy too."""
        try:
            legacy_size = self.owner.legacy.stat(self.name).size
            sftp_size = self.owner.sftp.stat(self.mirror).size
        except errors.GatewayError as err:
            self.owner._report("compare", self.mirror, f"stat failed: {err.code} {err.text}")
            return
        if legacy_size != sftp_size:
            self.owner._report("compare", self.mirror, f"size legacy {legacy_size} != sftp {sftp_size}")
            return
        if self._mode != "w" or self._offset:
            return  # appended or resumed: the bytes sent are not the whole file
        copy = hashlib.sha256()
        try:
            stream = self.owner.sftp.open_read(self.mirror)
            try:
                while chunk := stream.read(256 * 1024):
                    copy.update(chunk)
            finally:
                stream.close()
        except errors.GatewayError as err:  # the client's upload succeeded: report only
            self.owner._report("compare", self.mirror, f"read-back failed: {err.code} {err.text}")
            return
        if copy.hexdigest() != self._digest.hexdigest():
            self.owner._report(
                "compare", self.mirror, "SHA-256 of the SFTP copy differs from what was uploaded"
            )

    def abort(self) -> None:
        """Give up on both."""
        if not self.closed:
            self.closed = True
            self.primary.abort()
            if self.secondary is not None:
                self.secondary.abort()
