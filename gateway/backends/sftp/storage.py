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

Uploads with STOR are atomic by default: the data goes to a hidden name in the same
directory and is renamed over the final name only after the backend confirmed the close,
so a failed or aborted upload never leaves a truncated file under the final name. What a
failed binary upload got onto the backend is kept under a hidden name of its user (the
partial, gateway.storage.partial_name) for ``partial_ttl`` seconds: SIZE, REST+STOR and
APPE of that name continue it, and it is renamed over the final name once complete.
Resumed uploads without a partial, and STOU, write in place.

Over 400 lines: the atomic-upload and resume rules work on this session's state (its
partials, the replacements it left in place) and are still here; moving them next to
``files.py`` and ``replacements.py`` into one module of their own is the next split.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import stat as statmod
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Iterator
from typing import Any, TypeVar, cast

import asyncssh
from asyncssh import constants as fx

from gateway import errors, logs
from gateway.backends.sftp.errors import translate
from gateway.backends.sftp.files import Budget, Discard, Report, SFTPReadStream, SFTPWriteStream, no_report
from gateway.backends.sftp.loop import BackgroundLoop
from gateway.backends.sftp.pool import Lease
from gateway.backends.sftp.replacements import FailedReplacements, Version
from gateway.storage import UPLOAD_TEMP_PREFIX, Attrs, Entry, Kind, is_upload_in_progress, partial_name

T = TypeVar("T")
log = logging.getLogger("gateway.sftp")

_NAME_MAX = 255

_KIND_BY_TYPE = {
    fx.FILEXFER_TYPE_REGULAR: Kind.FILE,
    fx.FILEXFER_TYPE_DIRECTORY: Kind.DIR,
    fx.FILEXFER_TYPE_SYMLINK: Kind.SYMLINK,
    fx.FILEXFER_TYPE_SOCKET: Kind.SOCKET,
    fx.FILEXFER_TYPE_CHAR_DEVICE: Kind.CHAR_DEVICE,
    fx.FILEXFER_TYPE_BLOCK_DEVICE: Kind.BLOCK_DEVICE,
    fx.FILEXFER_TYPE_FIFO: Kind.FIFO,
}
_MAX_BLOCK = 256 * 1024
_LIST_BATCH = 512  # directory entries fetched per round trip to the loop
_OPEN_FLAGS = {
    "w": fx.FXF_WRITE | fx.FXF_CREAT | fx.FXF_TRUNC,
    "a": fx.FXF_WRITE | fx.FXF_CREAT,
    "r+": fx.FXF_WRITE,
}


def temporary_name(path: str) -> str:
    """A hidden name in the directory of ``path`` for its upload in progress."""
    directory, _, name = path.rpartition("/")
    raw = f"{UPLOAD_TEMP_PREFIX}{secrets.token_hex(4)}-{name}".encode("utf-8", "surrogateescape")
    return f"{directory}/{raw[:_NAME_MAX].decode('utf-8', 'surrogateescape')}"


async def _drop(sftp: asyncssh.SFTPClient, fh: asyncssh.SFTPClientFile, temp: str) -> None:
    """Close and remove a temporary upload file (best effort)."""
    with contextlib.suppress(asyncssh.Error, OSError):
        await fh.close()
    await _remove_quietly(sftp, temp)


async def _remove_quietly(sftp: asyncssh.SFTPClient, path: str) -> None:
    """Remove ``path`` if it is there and may be removed (best effort)."""
    with contextlib.suppress(asyncssh.Error, OSError):
        await sftp.remove(path)


async def _absent_is_none(
    request: Awaitable[asyncssh.SFTPAttrs], hidden_too: bool = True
) -> asyncssh.SFTPAttrs | None:
    """The attributes a stat returns, None if there is no such file (or, if ``hidden_too``,
    it is not the user's to see)."""
    try:
        return await request
    except asyncssh.SFTPNoSuchFile:
        return None
    except asyncssh.SFTPPermissionDenied:
        if hidden_too:
            return None
        raise


async def _nothing() -> None:
    """An awaitable with no result (a request not sent)."""


async def _replace(sftp: asyncssh.SFTPClient, src: str, dst: str) -> None:
    """Rename ``src`` over ``dst``: atomic with posix-rename@openssh.com, else remove + rename."""
    try:
        await sftp.posix_rename(src, dst)
    except asyncssh.SFTPOpUnsupported:
        # Plain SFTPv3 RENAME refuses an existing target (not atomic, like rename()).
        with contextlib.suppress(asyncssh.SFTPNoSuchFile):
            await sftp.remove(dst)
        await sftp.rename(src, dst)


def _may_replace(old: asyncssh.SFTPAttrs, new: asyncssh.SFTPAttrs) -> bool:
    """True if the new file may be renamed over ``old``: the same owner and group, and
    ``old`` writable by its owner.

    A rename needs only the directory's permission, so without this check atomic uploads
    would let a user replace a file that is not theirs or that is read-only (0644 owned by
    another account in a shared directory), and would change a replaced file's owner or
    group. In place, the backend applies its own permission check and keeps both.
    """
    if old.uid is None or new.uid is None:  # a server that does not tell owners
        return bool((old.permissions or 0) & 0o222)
    return old.uid == new.uid and old.gid == new.gid and bool((old.permissions or 0) & 0o200)


def _kind(a: asyncssh.SFTPAttrs) -> Kind:
    """File type from the v4+ type field, else from the S_IFMT bits of the v3 permissions."""
    if a.type in _KIND_BY_TYPE:
        return _KIND_BY_TYPE[a.type]
    mode = a.permissions or 0
    for test, kind in (
        (statmod.S_ISREG, Kind.FILE),
        (statmod.S_ISDIR, Kind.DIR),
        (statmod.S_ISLNK, Kind.SYMLINK),
        (statmod.S_ISFIFO, Kind.FIFO),
        (statmod.S_ISSOCK, Kind.SOCKET),
        (statmod.S_ISCHR, Kind.CHAR_DEVICE),
        (statmod.S_ISBLK, Kind.BLOCK_DEVICE),
    ):
        if test(mode):
            return kind
    return Kind.OTHER


def to_attrs(a: asyncssh.SFTPAttrs, longname: str = "") -> Attrs:
    """Storage attrs from SFTP attrs; the link count from an OpenSSH ``ls -l`` longname (v3 has none)."""
    fields = longname.split(None, 8)
    links = fields[1] if len(fields) == 9 and fields[1].isdigit() else "1"
    return Attrs(
        kind=_kind(a),
        size=a.size or 0,
        mtime=a.mtime,
        mode=(a.permissions or 0) & 0o7777,
        uid=a.uid or 0,
        gid=a.gid or 0,
        nlink=a.nlink or int(links),
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
            await asyncio.gather(*(_remove_quietly(self._sftp, f"{base}/{n}") for n in expired))
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
            report=self._observe,
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

    # --- partials: a failed upload's data, kept for a resume

    def _partial(self, path: str) -> str | None:
        """Where this user's partial of ``path`` is kept (None: partials are not kept here)."""
        return partial_name(path, self._owner) if self._atomic else None

    def _expired(self, attrs: Attrs | asyncssh.SFTPAttrs) -> bool:
        """True if an upload's file has not been written to for ``partial_ttl`` seconds."""
        return attrs.mtime is not None and attrs.mtime < time.time() - self._partial_ttl

    def stat_for_resume(self, path: str) -> tuple[Attrs | None, int | None]:
        """The attributes of ``path`` and the size of this user's partial of it, both
        requests in one round trip (SIZE asks for both: a partial is rare, SIZE is not).
        An expired partial is removed and counts as none."""
        kept = self._partial(path)

        async def both() -> tuple[asyncssh.SFTPAttrs | None, asyncssh.SFTPAttrs | None]:
            sftp = self._sftp
            found, partial = await asyncio.gather(
                _absent_is_none(sftp.stat(path)),
                _absent_is_none(sftp.lstat(kept)) if kept is not None else _nothing(),
            )
            if partial is not None and kept is not None and self._expired(partial):
                await _remove_quietly(sftp, kept)
                partial = None
            return found, partial

        found, partial = self._run("stat", both)
        size = (partial.size or 0) if partial is not None and _kind(partial) is Kind.FILE else None
        return (to_attrs(found) if found is not None else None), size

    def _continue_partial(
        self, path: str, mode: str, resumable: bool, told: int | None
    ) -> SFTPWriteStream | None:
        """A resume (REST+STOR: "r+", APPE: "a") of this user's partial of ``path``, renamed
        over ``path`` once complete; None if there is no partial to resume.

        The file now at ``path`` must be one the rename may replace, as for any atomic
        upload (``_may_replace``); if it is not (someone else's file appeared meanwhile),
        the partial is dropped and the resume refused: the client sends the whole file.

        REST names its offset; APPE does not, the client sends from the size it was told.
        An APPE therefore continues the partial only if SIZE gave this session exactly its
        size (``told``): a SIZE answered just before the failed upload's session had kept
        it (the client sees the old size or none) would otherwise append the whole file, or
        its tail from the old size, to the partial. A resume of a partial that SIZE showed
        and that is gone since (completed elsewhere, expired) is refused too.
        """
        kept = self._partial(path)
        code = 554 if mode == "r+" else 550
        if kept is None:
            return None

        async def opened() -> tuple[asyncssh.SFTPClientFile, int] | None:
            sftp = self._sftp
            partial, target = await asyncio.gather(
                _absent_is_none(sftp.lstat(kept), hidden_too=False),
                _absent_is_none(sftp.lstat(path), hidden_too=False),
            )
            if partial is not None and _kind(partial) is not Kind.FILE:
                partial = None
            elif partial is not None and self._expired(partial):
                await _remove_quietly(sftp, kept)
                partial = None
            if partial is None:
                if told is not None:
                    raise errors.ResumeRefused(errors.RESUME_UNKNOWN, code=code)
                return None
            if mode == "a" and told != partial.size:
                raise errors.ResumeRefused(errors.RESUME_UNKNOWN, code=code)
            if target is not None and (_kind(target) is not Kind.FILE or not _may_replace(target, partial)):
                await _remove_quietly(sftp, kept)
                raise errors.ResumeRefused(code=code)
            fh = await sftp.open(kept, fx.FXF_WRITE, encoding=None, block_size=None)
            return fh, (partial.size or 0) if mode == "a" else 0

        found = self._run("open", opened)
        if found is None:
            return None
        fh, offset = found
        sftp, user, failed = self._sftp, self._user, self._failed

        async def commit() -> None:
            await _replace(sftp, kept, path)
            failed.forget(user, path)

        def discard(keep: int | None, stalled: bool) -> None:
            if keep is not None:
                self._dispose(stalled, "setstat", lambda: self._sftp.truncate(kept, keep))
            else:
                self._dispose(stalled, "remove", lambda: _remove_quietly(self._sftp, kept))

        return self._writer(fh, path, offset, commit, discard, truncate=mode == "r+", resumable=resumable)

    def _dispose(self, stalled: bool, op: str, make: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run a failed upload's clean-up: on a new connection if the old one was lost; not
        waited for if it stalled (the client hears of its failed upload at once)."""
        if stalled:
            self._loop.submit(make())
            return
        with contextlib.suppress(errors.GatewayError):
            self._run(op, make, retry=False)

    def _check_resume(self, path: str, mode: str) -> None:
        """Refuse a resume onto the version a failed atomic upload of ``path`` left there.

        With atomic uploads a failed STOR leaves the previous version whole, where a plain
        FTP server leaves the partial new file; a client resuming from SIZE would append
        the rest of the new file to the old one (gateway/backends/sftp/replacements.py).
        554 makes lftp send the whole file again ("Switching to NOREST mode").
        """
        left = self._failed.left_in_place(self._user, path)
        if left is None:
            return
        found = self._lstat_or_none(path)
        if found is not None and (found.size, found.mtime) == left:
            raise errors.ResumeRefused(code=554 if mode == "r+" else 550)
        self._failed.forget(self._user, path)  # changed since: whatever is there now is meant

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

    def _open_atomic(self, path: str, resumable: bool) -> SFTPWriteStream | None:
        """A write stream to a temporary name renamed to ``path`` on close, or None when the
        upload has to go straight to ``path`` (a symlink, special file, read-only file or
        file of another owner or group there, or a directory the user may not create files
        in)."""
        write_new = fx.FXF_WRITE | fx.FXF_CREAT | fx.FXF_EXCL

        async def opened() -> tuple[asyncssh.SFTPClientFile | None, str, Version | None]:
            temp = temporary_name(path)
            sftp = self._sftp
            # Both requests go out at once: one round trip.
            found, fh = await asyncio.gather(
                sftp.lstat(path),
                sftp.open(temp, write_new, encoding=None, block_size=None),
                return_exceptions=True,
            )
            if isinstance(fh, BaseException):
                raise fh
            try:
                if isinstance(found, asyncssh.SFTPNoSuchFile):
                    return fh, temp, None
                if isinstance(found, BaseException):
                    raise found
                kind = _kind(found)
                if kind is Kind.DIR:
                    raise errors.IsADirectory()
                if kind is Kind.FILE:
                    mode = (found.permissions or 0o644) & 0o7777
                    # The new file keeps the old one's permission bits; the temporary file
                    # shows whose it would be (the login's uid, its group or the directory's).
                    mine, _ = await asyncio.gather(fh.stat(), fh.chmod(mode))
                    if _may_replace(found, mine):
                        return fh, temp, (found.size or 0, found.mtime)
            except BaseException:
                await _drop(sftp, fh, temp)
                raise
            # A symlink, special file, or a file the rename must not replace: in place.
            await _drop(sftp, fh, temp)
            return None, temp, None

        try:
            fh, temp, replaced = self._run("open", opened)
        except errors.PermissionDenied:
            # The directory refuses new files (the existing file may still be writable):
            # write in place, as without atomic uploads.
            log.info("atomic upload not possible here (no permission to create files): writing in place")
            return None
        if fh is None:
            return None
        sftp = self._sftp  # the connection the data goes over; it must also do the rename
        user, failed, kept = self._user, self._failed, self._partial(path)
        only_copy = False  # the target is gone and the rename did not happen: keep the data

        async def commit() -> None:
            nonlocal only_copy
            # The whole file is stored: a partial of an earlier attempt is obsolete (SIZE
            # would show its size). Its removal goes out with the rename: one round trip.
            obsolete = _remove_quietly(sftp, kept) if kept is not None else asyncio.sleep(0)
            try:
                await asyncio.gather(sftp.posix_rename(temp, path), obsolete)
            except asyncssh.SFTPOpUnsupported:
                # Plain SFTPv3 RENAME refuses an existing target (not atomic, like rename()).
                with contextlib.suppress(asyncssh.SFTPNoSuchFile):
                    await sftp.remove(path)
                only_copy = True
                await sftp.rename(temp, path)
                only_copy = False
            failed.forget(user, path)

        def discard(keep: int | None, stalled: bool) -> None:
            if replaced is not None:
                # Also when the partial is kept: should it go (expired, removed), a
                # resume must still not glue the new file's end to the old version.
                failed.remember(user, path, replaced)
            if only_copy:
                log.error(
                    "upload of %s: old file removed, rename failed: the new data is in %s",
                    logs.quote(path),
                    logs.quote(temp),
                )
            elif kept is not None and keep:
                self._dispose(stalled, "rename", lambda: self._keep(temp, kept, keep))
            else:
                self._dispose(stalled, "remove", lambda: self._forget_upload(temp, kept))

        return self._writer(fh, path, 0, commit, discard, resumable=resumable)

    async def _keep(self, temp: str, kept: str, size: int) -> None:
        """Keep the first ``size`` bytes of a failed upload as its partial (replacing an older one)."""
        sftp = self._sftp
        await sftp.truncate(temp, size)
        await _replace(sftp, temp, kept)

    async def _forget_upload(self, temp: str, kept: str | None) -> None:
        """Remove a failed upload's temporary file and the partial of an earlier attempt."""
        await asyncio.gather(
            _remove_quietly(self._sftp, temp),
            _remove_quietly(self._sftp, kept) if kept is not None else asyncio.sleep(0),
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
