"""SFTP storage: the core storage interface implemented on one asyncssh SFTP session.

Every public method is blocking and runs its coroutine on the shared background loop;
asyncssh exceptions never leave this module untranslated.

A lost backend connection (or an SFTP channel the backend ended alone) does not end the
FTP session: the next operation leases a new SFTP channel with the login's credential
(``relogin``), and an operation that can safely run twice (a stat, a listing, an open,
setting times or mode) is retried once on it when the connection dies under it. mkdir,
rmdir, remove, rename and STOU's exclusive create are not: the first attempt may have
happened, and a second would report a false error. A request that timed out makes the
connection suspect: the next operation starts on a new one.

Uploads: STOR is atomic by default and a cut upload can be resumed; those rules live in
``gateway.backends.sftp.uploads`` (mixed in as ``AtomicUploads``), the streams in
``files.py``, the attribute conversion in ``attrs.py``.

Just over 400 lines: the session's plumbing (reconnect, retry, timeouts) and every storage
operation that runs on it.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Iterator
from typing import Any, TypeVar, cast

import asyncssh
from asyncssh import constants as fx

from gateway.backends.sftp.attrs import to_attrs
from gateway.backends.sftp.errors import translate
from gateway.backends.sftp.files import Budget, Discard, Report, SFTPReadStream, SFTPWriteStream, no_report
from gateway.backends.sftp.loop import BackgroundLoop
from gateway.backends.sftp.pool import Lease
from gateway.backends.sftp.uploads import AtomicUploads, FailedReplacements, remove_quietly
from gateway.core import errors
from gateway.core.storage import Attrs, Entry, Kind, is_upload_in_progress

T = TypeVar("T")
log = logging.getLogger("gateway.sftp")

_MAX_BLOCK = 256 * 1024
_LIST_BATCH = 512  # directory entries fetched per round trip to the loop
_OPEN_FLAGS = {
    "w": fx.FXF_WRITE | fx.FXF_CREAT | fx.FXF_TRUNC,
    "a": fx.FXF_WRITE | fx.FXF_CREAT,
    "r+": fx.FXF_WRITE,
}


class SFTPStorage(AtomicUploads):
    """A logged-in SFTP session for one FTP user (implements gateway.core.storage.Storage)."""

    def __init__(
        self,
        loop: BackgroundLoop,
        lease: Lease,
        timeout: float,
        release: Callable[[Lease], None],
        budget: Budget,
        report: Report = no_report,
        relogin: Callable[[], Lease] | None = None,
        atomic_uploads: bool = True,
        failed: FailedReplacements | None = None,
        owner: str = "",
        partial_ttl: float = 86400.0,
    ) -> None:
        self._loop, self._timeout, self._release, self._budget = loop, timeout, release, budget
        self._report, self._relogin, self._atomic = report, relogin, atomic_uploads
        self._failed = failed if failed is not None else FailedReplacements()
        # Whose partials this session continues (the FTP login: backend accounts may be shared).
        self._owner, self._partial_ttl = owner, partial_ttl
        self._user = lease.owner.user
        self._use(lease)
        self._block = min(_MAX_BLOCK, self._sftp.limits.max_read_len or 32768)
        self._wblock = min(_MAX_BLOCK, self._sftp.limits.max_write_len or 32768)
        self._closed = False
        self._gone = False  # the backend refused to take the session back: it cannot go on
        self._suspect = False  # a request timed out: the next command starts on a new channel

    def _use(self, lease: Lease) -> None:
        self._lease, self._sftp, self._lost = lease, lease.sftp, lease.is_lost

    # --- plumbing

    def _observe(self, op: str, seconds: float | None, err: errors.GatewayError | None) -> None:
        """Count one operation. A request that timed out makes the connection suspect: a
        blackholed path looks alive to TCP for many minutes, so the next command starts on a
        new connection rather than wait out another timeout on this one."""
        if isinstance(err, errors.BackendTimeout):
            self._suspect = True
        self._report(op, seconds, err)

    def _connected(self) -> None:
        """Reconnect first if the connection (or the session's channel) is lost or suspect."""
        if self._lost() or self._suspect:
            self._reconnect()

    def _reconnect(self) -> None:
        """Replace the lost (or suspect) connection with a new lease for the same login."""
        if self._relogin is None or self._gone:
            raise errors.ConnectionLost()
        suspect = self._suspect
        if suspect:
            # No new leases on the suspect connection, this one's included: marked on the
            # loop before the lease below is chosen there (callbacks run in order).
            self._loop.loop.call_soon_threadsafe(setattr, self._lease.owner, "stale", True)
        try:
            lease = self._relogin()
        except (errors.LoginRefused, errors.HostKeyMismatch) as err:
            # A changed password or a changed host key: the session must not go on.
            self._gone = True
            raise errors.BackendUnavailable() from err
        except errors.GatewayError as err:
            raise errors.BackendDown() from err
        old = self._lease
        self._use(lease)
        self._suspect = False
        self._loop.loop.call_soon_threadsafe(self._release, old)
        log.info("backend connection %s: reconnected for the same login", "timed out" if suspect else "lost")

    def _run(self, op: str, make: Callable[[], Awaitable[T]], retry: bool = True) -> T:
        """Run ``make()`` on the loop; reconnect first if the connection is gone, and once
        more and run it again (``retry``: only for operations that may run twice) if it dies
        under the operation."""
        self._connected()
        try:
            return self._call(op, make)
        except errors.ConnectionLost:
            if not retry:
                raise
            self._reconnect()
            return self._call(op, make)

    def _call(self, op: str, make: Callable[[], Awaitable[T]]) -> T:
        async def guarded() -> T:
            started = time.perf_counter()
            try:
                result = await make()
            except Exception as exc:
                err = translate(exc)
                self._observe(op, time.perf_counter() - started, err)
                raise err from exc
            self._observe(op, time.perf_counter() - started, None)
            return result

        try:
            return self._loop.run(guarded(), self._timeout)
        except errors.BackendTimeout as err:  # cancelled on the loop: guarded() saw no error
            self._observe(op, None, err)
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
        """False once the session cannot go on; a lost connection is replaced when next used."""
        return not self._gone

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
        base = path.rstrip("/")
        # scandir is an async generator: advanced one batch per call, closed in `finally`.
        names: AsyncGenerator[asyncssh.SFTPName, None] | None = None

        def start() -> None:
            nonlocal names
            if names is not None:
                self._close_later(names)
            names = cast("AsyncGenerator[asyncssh.SFTPName, None]", self._sftp.scandir(path))

        async def target(filename: str) -> str | None:
            try:
                return str(await self._sftp.readlink(f"{base}/{filename}"))
            except asyncssh.SFTPError:
                return None

        async def batch() -> list[Entry]:
            assert names is not None
            found: list[tuple[str, Attrs]] = []
            async for name in names:
                filename = str(name.filename)
                if filename not in (".", ".."):
                    found.append((filename, to_attrs(name.attrs, str(name.longname or ""))))
                    if len(found) >= _LIST_BATCH:
                        break
            # Uploads left behind when a backend or the gateway died mid-transfer, and
            # partials nobody resumed in time: removed when seen.
            expired = [n for n, a in found if is_upload_in_progress(n) and self._expired(a)]
            await asyncio.gather(*(remove_quietly(self._sftp, f"{base}/{n}") for n in expired))
            # Symlink targets for the whole batch at once: pipelined, one round trip.
            links = [n for n, a in found if a.kind is Kind.SYMLINK]
            targets = dict(zip(links, await asyncio.gather(*map(target, links)), strict=True))
            return [Entry(n, a, targets.get(n)) for n, a in found]

        try:
            self._connected()
            start()
            try:
                chunk = self._call("readdir", batch)
            except errors.ConnectionLost:
                self._reconnect()  # nothing listed yet: start again on the new connection
                start()
                chunk = self._call("readdir", batch)
            while chunk:
                yield from chunk
                chunk = self._call("readdir", batch)  # half-way through: no second start
        finally:
            if names is not None:
                self._close_later(names)

    def _close_later(self, names: AsyncGenerator[asyncssh.SFTPName, None]) -> None:
        # Close the directory handle, also when the client abandons the listing, without
        # waiting: the cyclic garbage collector may finalise a listing generator on any
        # thread (the loop's own, another session's), which must not block on it.
        self._loop.loop.call_soon_threadsafe(lambda: self._loop.loop.create_task(names.aclose()))

    # --- files

    def open_read(self, path: str, known: Attrs | None = None) -> SFTPReadStream:
        """Open a regular file for download (550 before any 150 for anything else); with
        ``known`` attributes of a regular file (the SIZE or MDTM just before), without a stat."""

        async def opened() -> tuple[asyncssh.SFTPClientFile, int]:
            size = known.size if known is not None and known.kind is Kind.FILE else None
            if size is None:
                # stat first: opening a FIFO or device would block the backend's sftp-server.
                attrs = to_attrs(await self._sftp.stat(path))
                if attrs.kind is not Kind.FILE:
                    raise errors.NotRegularFile()
                size = attrs.size
            # The size is a read-ahead hint: a file changed since still reads to its end.
            return await self._sftp.open(path, fx.FXF_READ, encoding=None, block_size=None), size

        fh, size = self._run("open", opened)
        return SFTPReadStream(
            self._loop, fh, path, self._timeout, size, self._block, self._budget, report=self._observe
        )

    def open_write(
        self, path: str, mode: str, resumable: bool = False, told: int | None = None
    ) -> SFTPWriteStream:
        """Open for upload: "w" truncates, "a" appends at the current size, "r+" resumes.

        "w" is atomic when configured, "a" and "r+" continue a kept partial (see the module
        docstring).
        """
        if mode == "w" and self._atomic:
            stream = self._open_atomic(path, resumable)
            if stream is not None:
                return stream
        elif self._atomic:
            stream = self._continue_partial(path, mode, resumable, told)
            if stream is not None:
                return stream
            self._check_resume(path, mode)

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
        return self._writer(fh, path, offset, truncate=mode == "r+")

    def _writer(
        self,
        fh: asyncssh.SFTPClientFile,
        path: str,
        offset: int,
        commit: Callable[[], Coroutine[Any, Any, None]] | None = None,
        discard: Discard | None = None,
        truncate: bool = False,
        resumable: bool = False,
    ) -> SFTPWriteStream:
        return SFTPWriteStream(
            self._loop,
            fh,
            path,
            self._timeout,
            offset,
            self._wblock,
            self._budget,
            refine=self._write_failure(path),
            report=self._observe,
            commit=commit,
            discard=discard,
            truncate=truncate,
            resumable=resumable,
        )

    def create_unique(self, directory: str, prefix: str) -> SFTPWriteStream:
        """Create a new, uniquely named file in ``directory`` (O_EXCL on the backend)."""
        flags = fx.FXF_WRITE | fx.FXF_CREAT | fx.FXF_EXCL
        for _ in range(10):
            path = f"{directory.rstrip('/')}/{prefix}{secrets.token_hex(4)}"

            async def create(path: str = path) -> asyncssh.SFTPClientFile:
                return await self._sftp.open(path, flags, encoding=None, block_size=None)

            try:
                fh = self._run("open", create, retry=False)
            except (errors.BackendFailure, errors.AlreadyExists):
                if self._lstat_or_none(path) is None:
                    raise
                continue
            return self._writer(fh, path, 0)
        raise errors.AlreadyExists("No usable unique file name found.")

    # --- namespace

    def mkdir(self, path: str) -> None:
        """Create a directory."""
        try:
            self._run("mkdir", lambda: self._sftp.mkdir(path), retry=False)
        except errors.BackendFailure:
            if self._lstat_or_none(path) is not None:
                raise errors.AlreadyExists() from None
            raise

    def rmdir(self, path: str) -> None:
        """Remove an empty directory."""
        try:
            self._run("rmdir", lambda: self._sftp.rmdir(path), retry=False)
        except errors.BackendFailure:
            found = self._lstat_or_none(path)
            if found is not None:
                raise (errors.NotEmpty() if found.kind is Kind.DIR else errors.NotADirectory()) from None
            raise

    def remove(self, path: str) -> None:
        """Remove a file or symlink."""
        try:
            self._run("remove", lambda: self._sftp.remove(path), retry=False)
        except errors.BackendFailure:
            if (found := self._lstat_or_none(path)) is not None and found.kind is Kind.DIR:
                raise errors.IsADirectory() from None
            raise

    def rename(self, src: str, dst: str) -> None:
        """Rename, replacing ``dst`` atomically (posix-rename@openssh.com when offered)."""
        try:
            self._run("rename", lambda: self._sftp.posix_rename(src, dst), retry=False)
        except errors.Unsupported:
            # Plain SFTPv3 RENAME refuses an existing target: remove it first (not atomic).
            if (found := self._lstat_or_none(dst)) is not None and found.kind is not Kind.DIR:
                self.remove(dst)
            self._run("rename", lambda: self._sftp.rename(src, dst), retry=False)

    def chmod(self, path: str, mode: int) -> None:
        """Set permission bits."""
        self._run("setstat", lambda: self._sftp.chmod(path, mode))

    def set_mtime(self, path: str, mtime: int) -> None:
        """Set the modification time (SFTP v3 sets both times: the access time becomes it too)."""
        self._run("setstat", lambda: self._sftp.utime(path, (mtime, mtime)))

    def chown(self, path: str, uid: int, gid: int) -> None:
        """Set owner and group (the server allows it to root only)."""
        self._run("setstat", lambda: self._sftp.chown(path, uid, gid))

    def close(self) -> None:
        """End the session: its channel closes, the connection goes back to the pool."""
        if not self._closed:
            self._closed = True
            self._loop.loop.call_soon_threadsafe(self._release, self._lease)
