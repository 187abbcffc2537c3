"""SFTP storage: the core storage interface implemented on one asyncssh SFTP session.

Every public method is blocking and runs its coroutine on the shared background loop;
asyncssh exceptions never leave this module untranslated.
"""

from __future__ import annotations

import asyncio
import secrets
import stat as statmod
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from typing import TypeVar, cast

import asyncssh
from asyncssh import constants as fx

from gateway import errors
from gateway.backends.sftp.errors import translate
from gateway.backends.sftp.files import Budget, Report, SFTPReadStream, SFTPWriteStream, no_report
from gateway.backends.sftp.loop import BackgroundLoop
from gateway.backends.sftp.pool import Lease
from gateway.storage import Attrs, Entry, Kind

T = TypeVar("T")

_KIND_BY_TYPE = {
    fx.FILEXFER_TYPE_REGULAR: Kind.FILE,
    fx.FILEXFER_TYPE_DIRECTORY: Kind.DIR,
    fx.FILEXFER_TYPE_SYMLINK: Kind.SYMLINK,
}
_MAX_BLOCK = 256 * 1024
_LIST_BATCH = 512  # directory entries fetched per round trip to the loop
_OPEN_FLAGS = {
    "w": fx.FXF_WRITE | fx.FXF_CREAT | fx.FXF_TRUNC,
    "a": fx.FXF_WRITE | fx.FXF_CREAT,
    "r+": fx.FXF_WRITE,
}


def _kind(a: asyncssh.SFTPAttrs) -> Kind:
    """File type from the v4+ type field, else from the S_IFMT bits of the v3 permissions."""
    if a.type in _KIND_BY_TYPE:
        return _KIND_BY_TYPE[a.type]
    mode = a.permissions or 0
    for test, kind in (
        (statmod.S_ISREG, Kind.FILE),
        (statmod.S_ISDIR, Kind.DIR),
        (statmod.S_ISLNK, Kind.SYMLINK),
    ):
        if test(mode):
            return kind
    return Kind.OTHER


def to_attrs(a: asyncssh.SFTPAttrs, longname: str = "") -> Attrs:
    """Storage attrs from SFTP attrs; owner/group names from an OpenSSH ``ls -l`` longname."""
    fields = longname.split(None, 8)
    from_longname = len(fields) == 9
    return Attrs(
        kind=_kind(a),
        size=a.size or 0,
        mtime=a.mtime,
        mode=(a.permissions or 0) & 0o7777,
        uid=a.uid or 0,
        gid=a.gid or 0,
        nlink=a.nlink or (int(fields[1]) if from_longname and fields[1].isdigit() else 1),
        owner=fields[2] if from_longname else a.owner,
        group=fields[3] if from_longname else a.group,
    )


class SFTPStorage:
    """A logged-in SFTP session for one FTP user (implements gateway.storage.Storage)."""

    def __init__(
        self,
        loop: BackgroundLoop,
        lease: Lease,
        timeout: float,
        release: Callable[[Lease], None],
        budget: Budget,
        report: Report = no_report,
    ) -> None:
        self._loop, self._lease, self._sftp = loop, lease, lease.sftp
        self._timeout, self._release, self._budget, self._report = timeout, release, budget, report
        self._lost = lease.owner.is_lost
        self._block = min(_MAX_BLOCK, self._sftp.limits.max_read_len or 32768)
        self._wblock = min(_MAX_BLOCK, self._sftp.limits.max_write_len or 32768)
        self._closed = False

    # --- plumbing

    def _run(self, op: str, make: Callable[[], Awaitable[T]]) -> T:
        async def guarded() -> T:
            started = time.perf_counter()
            try:
                result = await make()
            except Exception as exc:
                err = translate(exc)
                self._report(op, time.perf_counter() - started, err)
                raise err from exc
            self._report(op, time.perf_counter() - started, None)
            return result

        if self._lost():
            raise errors.ConnectionLost()
        try:
            return self._loop.run(guarded(), self._timeout)
        except errors.BackendTimeout as err:  # cancelled on the loop: guarded() saw no error
            self._report(op, None, err)
            raise

    def _write_failure(self, path: str) -> Callable[[errors.GatewayError], errors.GatewayError]:
        """Refines upload failures: OpenSSH reports ENOSPC as a bare FX_FAILURE."""

        def refine(err: errors.GatewayError) -> errors.GatewayError:
            if not isinstance(err, errors.BackendFailure):
                return err
            try:
                vfs = self._run("statvfs", lambda: self._sftp.statvfs(path.rsplit("/", 1)[0] or "/"))
            except errors.GatewayError:
                return err
            return errors.NoSpace() if vfs.bavail * vfs.frsize < self._wblock else err

        return refine

    def _lstat_or_none(self, path: str) -> Attrs | None:
        try:
            return self.lstat(path)
        except (errors.NotFound, errors.PermissionDenied):
            return None

    @property
    def alive(self) -> bool:
        """False once the SSH connection is gone."""
        return not self._lost()

    def home(self) -> str:
        """The backend login directory."""
        return self._lease.home

    # --- metadata

    def stat(self, path: str) -> Attrs:
        """Attributes, following symlinks."""
        return to_attrs(self._run("stat", lambda: self._sftp.stat(path)))

    def lstat(self, path: str) -> Attrs:
        """Attributes of the path itself."""
        return to_attrs(self._run("lstat", lambda: self._sftp.lstat(path)))

    def list_dir(self, path: str) -> Iterator[Entry]:
        """Entries streamed from READDIR with their attrs (no stat per entry), batch by batch."""
        # scandir is an async generator: advanced one batch per call, closed in `finally`.
        names = cast("AsyncGenerator[asyncssh.SFTPName, None]", self._sftp.scandir(path))
        base = path.rstrip("/")

        async def target(filename: str) -> str | None:
            try:
                return str(await self._sftp.readlink(f"{base}/{filename}"))
            except asyncssh.SFTPError:
                return None

        async def batch() -> list[Entry]:
            found: list[tuple[str, Attrs]] = []
            async for name in names:
                filename = str(name.filename)
                if filename not in (".", ".."):
                    found.append((filename, to_attrs(name.attrs, str(name.longname or ""))))
                    if len(found) >= _LIST_BATCH:
                        break
            # Symlink targets for the whole batch at once: pipelined, one round trip.
            links = [n for n, a in found if a.kind is Kind.SYMLINK]
            targets = dict(zip(links, await asyncio.gather(*map(target, links)), strict=True))
            return [Entry(n, a, targets.get(n)) for n, a in found]

        try:
            while chunk := self._run("readdir", batch):
                yield from chunk
        finally:
            # Close the directory handle, also when the client abandons the listing, without
            # waiting: the cyclic garbage collector may finalise this generator on any
            # thread (the loop's own, another session's), which must not block on it.
            self._loop.loop.call_soon_threadsafe(lambda: self._loop.loop.create_task(names.aclose()))

    # --- files

    def open_read(self, path: str) -> SFTPReadStream:
        """Open a regular file for download (550 before any 150 for anything else)."""

        async def opened() -> tuple[asyncssh.SFTPClientFile, asyncssh.SFTPAttrs]:
            # stat first: opening a FIFO or device would block the backend's sftp-server.
            attrs = await self._sftp.stat(path)
            if to_attrs(attrs).kind is not Kind.FILE:
                raise errors.NotRegularFile()
            return await self._sftp.open(path, fx.FXF_READ, encoding=None, block_size=None), attrs

        fh, attrs = self._run("open", opened)
        return SFTPReadStream(
            self._loop,
            fh,
            path,
            self._timeout,
            attrs.size or 0,
            self._block,
            self._budget,
            report=self._report,
        )

    def open_write(self, path: str, mode: str) -> SFTPWriteStream:
        """Open for upload: "w" truncates, "a" appends at the current size, "r+" resumes."""

        async def opened() -> tuple[asyncssh.SFTPClientFile, int]:
            fh = await self._sftp.open(path, _OPEN_FLAGS[mode], encoding=None, block_size=None)
            offset = 0
            if mode == "a":
                try:
                    offset = (await fh.stat()).size or 0
                except BaseException:
                    await fh.close()
                    raise
            return fh, offset

        try:
            fh, offset = self._run("open", opened)
        except errors.BackendFailure:
            if (found := self._lstat_or_none(path)) is not None and found.kind is Kind.DIR:
                raise errors.IsADirectory() from None
            raise
        return SFTPWriteStream(
            self._loop,
            fh,
            path,
            self._timeout,
            offset,
            self._wblock,
            self._budget,
            refine=self._write_failure(path),
            report=self._report,
        )

    def create_unique(self, directory: str, prefix: str) -> SFTPWriteStream:
        """Create a new, uniquely named file in ``directory`` (O_EXCL on the backend)."""
        flags = fx.FXF_WRITE | fx.FXF_CREAT | fx.FXF_EXCL
        for _ in range(10):
            path = f"{directory.rstrip('/')}/{prefix}{secrets.token_hex(4)}"

            async def create(path: str = path) -> asyncssh.SFTPClientFile:
                return await self._sftp.open(path, flags, encoding=None, block_size=None)

            try:
                fh = self._run("open", create)
            except (errors.BackendFailure, errors.AlreadyExists):
                if self._lstat_or_none(path) is None:
                    raise
                continue
            return SFTPWriteStream(
                self._loop,
                fh,
                path,
                self._timeout,
                0,
                self._wblock,
                self._budget,
                refine=self._write_failure(path),
                report=self._report,
            )
        raise errors.AlreadyExists("No usable unique file name found.")

    # --- namespace

    def mkdir(self, path: str) -> None:
        """Create a directory."""
        try:
            self._run("mkdir", lambda: self._sftp.mkdir(path))
        except errors.BackendFailure:
            if self._lstat_or_none(path) is not None:
                raise errors.AlreadyExists() from None
            raise

    def rmdir(self, path: str) -> None:
        """Remove an empty directory."""
        try:
            self._run("rmdir", lambda: self._sftp.rmdir(path))
        except errors.BackendFailure:
            found = self._lstat_or_none(path)
            if found is not None:
                raise (errors.NotEmpty() if found.kind is Kind.DIR else errors.NotADirectory()) from None
            raise

    def remove(self, path: str) -> None:
        """Remove a file or symlink."""
        try:
            self._run("remove", lambda: self._sftp.remove(path))
        except errors.BackendFailure:
            if (found := self._lstat_or_none(path)) is not None and found.kind is Kind.DIR:
                raise errors.IsADirectory() from None
            raise

    def rename(self, src: str, dst: str) -> None:
        """Rename, replacing ``dst`` atomically (posix-rename@openssh.com when offered)."""
        try:
            self._run("rename", lambda: self._sftp.posix_rename(src, dst))
        except errors.Unsupported:
            # Plain SFTPv3 RENAME refuses an existing target: remove it first (not atomic).
            if (found := self._lstat_or_none(dst)) is not None and found.kind is not Kind.DIR:
                self.remove(dst)
            self._run("rename", lambda: self._sftp.rename(src, dst))

    def chmod(self, path: str, mode: int) -> None:
        """Set permission bits."""
        self._run("setstat", lambda: self._sftp.chmod(path, mode))

    def set_mtime(self, path: str, mtime: int) -> None:
        """Set the modification time (SFTP v3 sets both times: the access time becomes it too)."""
        self._run("setstat", lambda: self._sftp.utime(path, (mtime, mtime)))

    def close(self) -> None:
        """End the session: its channel closes, the connection goes back to the pool."""
        if not self._closed:
            self._closed = True
            self._loop.loop.call_soon_threadsafe(self._release, self._lease)
