"""pyftpdlib's AbstractedFS implemented over the core storage interface.

Every path pyftpdlib hands us is a backend path under the route root, produced by our own
lexical ``ftp2fs``; nothing here touches the gateway's local disk (pyftpdlib's defaults call
os.path.realpath, pwd and grp, which would describe the wrong machine).
"""

from __future__ import annotations

import posixpath
from typing import Any

from pyftpdlib.filesystems import AbstractedFS

from gateway.core import errors, paths
from gateway.core.storage import Attrs, Kind, ReadStream, Storage, WriteStream
from gateway.ftp import policy

_ABSENT = (errors.NotFound, errors.PermissionDenied, errors.NotADirectory)


class GatewayFS(AbstractedFS):  # type: ignore[misc]
    """Virtual FTP tree rooted at the route's backend root, served by ``Storage``."""

    def __init__(self, root: str, cmd_channel: Any) -> None:
        super().__init__(root, cmd_channel)
        self.storage: Storage = cmd_channel.storage
        self._attrs: dict[tuple[str, bool], Attrs] = {}
        #: The file the last upload completed: a regular file for the MFMT that follows it.
        self.written: str | None = None
        self._mtimes: dict[str, int] = {}  # times MFMT set in this sequence (kept with _attrs)
        #: SITE UMASK: the bits new files and directories leave out (None: the backend decides).
        self.umask: int | None = None
        self._resuming: str | None = None  # the path the current REST+STOR or APPE resumes
        #: Partial sizes SIZE gave the client in this session, by path (what APPE continues).
        self.told: dict[str, int] = {}

    def forget(self, cmd: str = "") -> None:
        """Drop attrs cached by earlier commands, unless ``cmd`` continues their transfer's
        sequence (policy.KEEPS_ATTRS: SIZE, MDTM, PASV, ... before RETR; MFMT after STOR)."""
        if cmd not in policy.KEEPS_ATTRS:
            self._attrs.clear()
            self._mtimes.clear()
            self.written = None
        self._resuming = None

    def attrs(self, path: str, follow: bool = True) -> Attrs:
        """stat/lstat of a backend path, cached for the current command's sequence (forget)."""
        key = (path, follow)
        if key not in self._attrs:
            self._attrs[key] = self.storage.stat(path) if follow else self.storage.lstat(path)
        return self._attrs[key]

    # --- path translation (pure, see gateway.core.paths)

    def ftpnorm(self, ftppath: str) -> str:
        return paths.resolve(self.cwd, ftppath)

    def ftp2fs(self, ftppath: str) -> str:
        return paths.to_backend(self.root, self.ftpnorm(ftppath))

    def fs2ftp(self, fspath: str) -> str:
        return paths.to_virtual(self.root, posixpath.normpath(fspath)) or "/"

    def validpath(self, path: str) -> bool:
        return paths.to_virtual(self.root, path) is not None

    def realpath(self, path: str) -> str:
        return path

    # --- files

    def open(self, filename: str, mode: str) -> ReadStream | WriteStream:
        known = self._attrs.get((filename, True))  # from the SIZE or MDTM just before
        self.forget()
        if mode == "rb":
            return self.storage.open_read(filename, known)  # its attrs are used up: forget()
        new = self.umask is not None and not self.lexists(filename)
        # TYPE I: the bytes are the client's file as it is, so a cut upload can be resumed
        # from what arrived (TYPE A changed line ends: sizes are not the client's).
        binary = self.cmd_channel._current_type == "i"
        told = self.told.pop(filename, None)
        stream = self.storage.open_write(filename, mode.replace("b", ""), resumable=binary, told=told)
        if mode != "wb":
            self._resuming = filename
        return self._with_umask(stream, 0o666) if new else stream

    def mkstemp(
        self, suffix: str = "", prefix: str = "", dir: str | None = None, mode: str = "wb"
    ) -> WriteStream:
        return self._with_umask(self.storage.create_unique(dir or self.root, prefix), 0o666)

    def _with_umask(self, stream: WriteStream, base: int) -> WriteStream:
        if self.umask is None:
            return stream
        return _ModeOnClose(stream, self.storage, base & ~self.umask)

    # --- directories and names

    def chdir(self, path: str) -> None:
        if self.attrs(path).kind is not Kind.DIR:
            raise errors.NotADirectory()
        self.cwd = self.fs2ftp(path)

    def mkdir(self, path: str) -> None:
        self.storage.mkdir(path)
        if self.umask is not None:
            self.storage.chmod(path, 0o777 & ~self.umask)

    def rmdir(self, path: str) -> None:
        self.storage.rmdir(path)

    def remove(self, path: str) -> None:
        self.storage.remove(path)

    def rename(self, src: str, dst: str) -> None:
        self.storage.rename(src, dst)

    def chmod(self, path: str, mode: int) -> None:
        self.storage.chmod(path, mode)

    def utime(self, path: str, timeval: float) -> None:
        self.storage.set_mtime(path, int(timeval))
        # pyftpdlib's MFMT reads the time back for its reply: answer from what was just set.
        self._mtimes[path] = int(timeval)

    def listdir(self, path: str) -> list[str]:
        return sorted(entry.name for entry in self.storage.list_dir(path))

    # --- predicates: "absent" is False, any other backend failure propagates

    def _kind(self, path: str, follow: bool = True) -> Kind | None:
        try:
            return self.attrs(path, follow).kind
        except _ABSENT:
            return None

    def isfile(self, path: str) -> bool:
        return path == self.written or self._kind(path) is Kind.FILE

    def isdir(self, path: str) -> bool:
        return self._kind(path) is Kind.DIR

    def islink(self, path: str) -> bool:
        return self._kind(path, follow=False) is Kind.SYMLINK

    def lexists(self, path: str) -> bool:
        return self._kind(path, follow=False) is not None

    def getsize(self, path: str) -> int:
        # pyftpdlib checks a REST position against the size of what STOR resumes: the
        # user's kept partial upload of the file when there is one.
        if path == self._resuming:
            return self.resume_size(path)
        return self.attrs(path).size

    def resume_size(self, path: str) -> int:
        """The size an upload of ``path`` resumes from: this user's kept partial's, else the file's."""
        kept = self.partial_size(path)
        return kept if kept is not None else self.attrs(path).size

    def partial_size(self, path: str) -> int | None:
        """The size of this user's kept partial upload of ``path`` (None: none); the file's
        own attributes, fetched in the same round trip, serve the rest of the command."""
        attrs, kept = self.storage.stat_for_resume(path)
        if attrs is not None:
            self._attrs[(path, True)] = attrs
        return kept

    def getmtime(self, path: str) -> float:
        if path in self._mtimes:
            return float(self._mtimes[path])
        mtime = self.attrs(path).mtime
        if mtime is None:
            raise errors.BackendFailure("Modification time not available.")
        return float(mtime)


class _ModeOnClose:
    """A new file's upload that sets the file's mode (SITE UMASK) once the backend has it whole.

    The backend applies its own umask when it creates a file; vsftpd creates files with
    0666 and directories with 0777 minus the session's umask, so the mode is set explicitly,
    before the client hears 226.
    """

    def __init__(self, stream: WriteStream, storage: Storage, mode: int) -> None:
        self._stream, self._storage, self._mode = stream, storage, mode
        self.name, self.closed = stream.name, False

    def write(self, data: bytes) -> int:
        return self._stream.write(data)

    def seek(self, offset: int) -> None:
        self._stream.seek(offset)

    def close(self) -> None:
        self.closed = True
        self._stream.close()
        self._storage.chmod(self.name, self._mode)

    def abort(self) -> None:
        self.closed = True
        self._stream.abort()
